#!/usr/bin/env bash
# The scale table of docs/BENCHMARKS.md: for each SIZE, a fresh embedded ragway with default
# settings loads SIZE synthetic passages (one chunk each) into one collection and is measured:
#   load     chunks/s over the whole load (background ingests of 1,000, as an admin loads a
#            corpus), the last tenth's rate over the first's, and the load over the embedder alone
#            on the same kind of text (/v1/embeddings, 250 a request)
#   replace  chunks/s re-ingesting 1,000 of its documents with new text (one job, until done)
#   search   a fresh /search (every request a new question: L1, L2 and L3 miss), p50 and p99 of
#            one client for 15 s (wrk)
#   rss      the process's resident memory after the load and the searches
#   restart  kill -9, then the time until /readyz answers 200 (every document still there)
#   snapshot seconds, file size and the process's peak memory growth while writing it; restore:
#            seconds to a second collection from that file, and the peak growth
#   scripts/scale.sh BINARY [--data DIR] [--load-limit SECONDS] [SIZE ...]   (default 10000 100000)
#   scripts/scale.sh BINARY --import [SIZE ...]: the import rows instead (POST /import of vectors
#            derived from 20,000 embedded passages; scripts/bench/scale_import.py says how and what
#            each column is). ~2 min at 100k, ~40 min at 1,000,000 (in the background, under timeout).
# Each row is printed as it completes. With --data DIR the run can be cut off (Ctrl-C, a time
# limit) and started again with the same arguments: finished rows are kept in DIR/rows.md, and a
# load cut off half-way goes on from what DIR holds. Without it everything lives in a temporary
# directory that is removed however the run ends; ragway processes are stopped either way.
# A load that takes longer than --load-limit (default: 600 s, or 20 chunks/s), a job that fails,
# or a server that does not start within 600 s ends the run with a message saying which.
# Passage i is 24 words drawn from a 5,000-word vocabulary ("w0".."w4999", Zipf-like) with seed i:
# every run loads the same text. Needs wrk (apt-get install wrk) and the models
# (scripts/fetch-models.sh). At this box's embedder rate (~70-90 passages/s on 2 cores) 10,000
# take ~2 minutes, 100,000 ~20 minutes and 1,000,000 over three hours: run that one with --data,
# in slices of at most 20 minutes (e.g. `timeout 1200 scripts/scale.sh BIN --data D 1000000`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,28p "$0" >&2; exit 2; }
binary=$(readlink -f "$1"); shift
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
export RAGWAY_MODELS="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"
extra=()
if [[ " $* " == *" --import "* ]]; then
  command -v curl >/dev/null || { echo "curl is needed: apt-get install -y curl" >&2; exit 1; }
  target="${CARGO_TARGET_DIR:-$(pwd)/target}"
  cargo build --release -q -p ragway-e2e --bin scale-lines
  extra=(--lines-bin "$target/release/scale-lines")
fi
exec python3 scripts/bench/scale.py "$binary" "$(pwd)/scripts/bench/fresh-search.lua" "${extra[@]}" "$@"
