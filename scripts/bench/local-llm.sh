#!/usr/bin/env bash
# The local model side by side with llama.cpp's own server, in one sitting: the same GGUF
# (SmolLM2-135M-Instruct Q4_1), the same RAG prompts, 2 threads each, streamed over HTTP; then
# grounded /query p50 on this ragway and on a baseline binary (RAGWAY_BASELINE=path, e.g. a build
# of an earlier commit) with the same collection.
#   scripts/bench/local-llm.sh [ROUNDS]
# Needs the models (scripts/fetch-models.sh), ../shared/data/trec-dl-5k, and llama-server
# (scripts/bench/llama-server.sh builds it once).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
rounds=${1:-8}
models="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"
gguf="$models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$gguf" ] || { echo "$gguf is missing: run scripts/fetch-models.sh" >&2; exit 1; }
server=$(scripts/bench/llama-server.sh)
build_ragway
bin="$CARGO_TARGET_DIR/release/ragway"
temp_dir dir local-llm
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$server" -m "$gguf" --host 127.0.0.1 --port "$port" -t 2 -tb 2 -c 8192 -np 1 < /dev/null > "$dir/llama.log" 2>&1 &
started $!
for _ in $(seq 300); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$port/health" >/dev/null || { tail -20 "$dir/llama.log" >&2; exit 1; }

serve() { # BINARY NAME VAR: serves BINARY with its own data directory, its base URL in VAR
  RAGWAY_MODELS="$models" RAGWAY__AUTH__MODE=open RUST_LOG=warn,ragway=info \
    "$1" --listen 127.0.0.1:0 --data-dir "$dir/data-$2" > /dev/null 2> "$dir/$2.log" &
  started $!
  printf -v "$3" 'http://%s' "$(wait_for_address "$dir/$2.log" $! "$2")"
}
serve "$bin" ragway ragway
echo "### Streamed chat, one answer at a time ($rounds rounds)"
python3 scripts/bench/local_llm.py chat "$ragway=local" "http://127.0.0.1:$port=smollm2" --rounds "$rounds"
echo "### L4 replay: each prompt shares 3 of 5 passages with the one before"
python3 scripts/bench/local_llm.py replay "$ragway" --rounds 20
urls=("$ragway")
if [ -n "${RAGWAY_BASELINE:-}" ]; then
  serve "$RAGWAY_BASELINE" baseline baseline
  urls+=("$baseline")
fi
echo "### Grounded /query, one at a time (${urls[*]})"
python3 scripts/bench/local_llm.py query "${urls[@]}" --rounds 30
