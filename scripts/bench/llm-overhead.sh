#!/usr/bin/env bash
# The gateway's own overhead on a relayed chat, side by side in one sitting: wrk against a fast
# local OpenAI-compatible upstream (tests/src/bin/fast-openai.rs: a fixed answer at once) straight,
# and the same request through ragway relaying to it, at 1 and 64 connections, ROUNDS times each,
# alternating.
#   scripts/bench/llm-overhead.sh [ROUNDS]
# Needs wrk (apt-get install wrk) and the models (scripts/fetch-models.sh: ragway loads its
# embedder at start-up). Prints one line per round, path and concurrency: requests/s, p50, p99.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
rounds=${1:-3}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
build_ragway -p ragway-e2e --bin fast-openai
bin="$CARGO_TARGET_DIR/release"
here=$(pwd)/scripts/bench
temp_dir dir llm-overhead

"$bin/fast-openai" 127.0.0.1:0 2> "$dir/upstream.log" &
started $!
upstream=$(wait_for_address "$dir/upstream.log" $! fast-openai 30)
cat > "$dir/ragway.toml" <<TOML
[[llm]]
name = "fast"
kind = "openai"
base_url = "http://$upstream/v1"
model = "fast-model"
TOML
RAGWAY_MODELS="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}" RAGWAY__AUTH__MODE=open RUST_LOG=warn,ragway=info \
  "$bin/ragway" --config "$dir/ragway.toml" --listen 127.0.0.1:0 --data-dir "$dir/data" 2> "$dir/ragway.log" &
started $!
gateway=$(wait_for_address "$dir/ragway.log" $! ragway)

measure() { # base connections → "req/s p50 p99"
  local threads=1
  [ "$2" -gt 1 ] && threads=2
  timeout 60 wrk -t"$threads" -c"$2" -d10s --latency -s "$here/chat.lua" "$1/v1/chat/completions" 2>/dev/null | awk '
    /Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
    END {printf "%s %s %s", rps, p50, p99}'
}

# Warm both paths (connections, the breaker's first calls).
measure "http://$upstream" 4 > /dev/null
measure "http://$gateway" 4 > /dev/null
for round in $(seq "$rounds"); do
  for c in 1 64; do
    echo "round $round c=$c direct:  $(measure "http://$upstream" "$c")"
    echo "round $round c=$c ragway:  $(measure "http://$gateway" "$c")"
  done
done
