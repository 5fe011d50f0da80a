#!/usr/bin/env bash
# Side by side, in one sitting: the L1-hit `/query` path and a fresh `/search` (every request a
# new question: L1, L2 and L3 all miss) of two ragway binaries, alternating, ROUNDS times each.
#   scripts/bench/paths.sh OLD_BINARY NEW_BINARY [ROUNDS]
# Needs wrk (apt-get install wrk) and the models (scripts/fetch-models.sh). Prints one line per
# binary and round: requests/s, p50 and p99 of each path.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
old=$1 new=$2 rounds=${3:-3}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
here=$(pwd)/scripts/bench
models="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"

start() { # binary data_dir → sets base, pid
  RAGWAY_MODELS="$models" RAGWAY__AUTH__MODE=open RUST_LOG=warn,ragway=info \
    RAGWAY__GENERATION__MAX_TOKENS=16 "$1" --listen 127.0.0.1:0 --data-dir "$2" 2> "$2/log" &
  pid=$!
  started "$pid"
  base="http://$(wait_for_address "$2/log" "$pid" "$1")"
}

post() { curl -sf --max-time 600 "$base$1" -H 'content-type: application/json' -d "$2" > /dev/null; }

seed() { # 200 passages: the paragraphs of this project's docs
  post /v1/collections '{"name": "bench"}'
  python3 - "$base" <<'PY'
import json, pathlib, sys, urllib.request
paragraphs = [p.strip() for f in sorted(pathlib.Path("docs").glob("*.md")) for p in f.read_text().split("\n\n") if len(p.split()) > 12][:200]
body = json.dumps({"documents": [{"id": f"p{i}", "text": p} for i, p in enumerate(paragraphs)]}).encode()
req = urllib.request.Request(sys.argv[1] + "/v1/collections/bench/documents", body, {"content-type": "application/json"})
urllib.request.urlopen(req, timeout=600).read()
PY
  for q in $(seq 0 7); do post /v1/collections/bench/query "{\"query\": \"question $q: how does ragway degrade?\"}"; done
}

measure() { # lua connections → "req/s p50 p99"
  timeout 60 wrk -t2 -c"$2" -d10s --latency -s "$here/$1" "$base" 2>/dev/null | awk '
    /Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
    END {printf "%s %s %s", rps, p50, p99}'
}

for round in $(seq "$rounds"); do
  for which in old new; do
    bin=$old; [ "$which" = new ] && bin=$new
    temp_dir dir paths
    start "$bin" "$dir"
    seed
    l1=$(measure l1-query.lua 32)
    fresh=$(measure fresh-search.lua 2)
    echo "round $round $which | L1-hit /query: $l1 | fresh /search: $fresh"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
