#!/usr/bin/env bash
# Load and fault harness: 2 ragway replicas on one Qdrant server and one Redis behind nginx, a mixed
# workload from wrk, one replica and then each dependency SIGKILLed and restarted between phases;
# prints QPS, p50/p99, error rate, cache hit rate and mode mix per phase (about 2 minutes, loopback
# only). Arguments go to scripts/loadtest/loadtest.py (--seconds, --connections, --passages, --keep;
# --ha: a three-node Qdrant cluster and Redis with Sentinel, each killed in turn, and a verifier that
# reads every acknowledged document back by id).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ragway/target}"

missing=()
for tool in wrk nginx redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk nginx-light redis-server python3 >/dev/null
  else
    echo "loadtest: missing ${missing[*]}: apt-get install wrk nginx-light redis-server python3" >&2
    exit 1
  fi
fi
qdrant="${RAGWAY_QDRANT_BIN:-../shared/bin/qdrant}"
[ -x "$qdrant" ] || qdrant="$(command -v qdrant || true)"
[ -n "$qdrant" ] || { echo "loadtest: no qdrant binary: set RAGWAY_QDRANT_BIN (Qdrant 1.18), or put it at ../shared/bin/qdrant or on the PATH" >&2; exit 1; }
data="${RAGWAY_LOADTEST_DATA:-../shared/data/trec-dl-5k}"
[ -f "$data/corpus.jsonl" ] || { echo "loadtest: no passages at $data (set RAGWAY_LOADTEST_DATA to a directory with corpus.jsonl and queries.jsonl)" >&2; exit 1; }

scripts/fetch-models.sh
source scripts/lib.sh
build_ragway
exec python3 scripts/loadtest/loadtest.py --ragway "$CARGO_TARGET_DIR/release/ragway" --qdrant "$qdrant" --data "$data" "$@"
