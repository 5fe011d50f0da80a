#!/usr/bin/env bash
# From a fresh clone: fetch the models, build ragway, serve it on 127.0.0.1:8080 (RAGWAY_LISTEN to
# change), create the tenant `local` with a new API key, load this project's own docs as its
# collection `ragway-docs`, and print the key with a curl to try. The admin key is
# RAGWAY_ADMIN_KEY, or a new random one printed at the end. Extra arguments go to the ragway
# binary (e.g. --config my.toml). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

command -v cargo >/dev/null || { echo "cargo is needed: install Rust from https://rustup.rs" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 (with pip) is needed to fetch the models: apt-get install -y python3-pip" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ragway/target}"

scripts/fetch-models.sh
build_ragway

listen="${RAGWAY_LISTEN:-127.0.0.1:8080}"
export RAGWAY_ADMIN_KEY="${RAGWAY_ADMIN_KEY:-$(python3 -c 'import secrets; print(secrets.token_hex(24))')}"
"$CARGO_TARGET_DIR/release/ragway" --listen "$listen" "$@" &
server=$!
started "$server"

loaded=$(python3 scripts/load-sample.py "http://$listen" "$server")
echo "$loaded" | grep -v '^RAGWAY_KEY=' || true
key=$(echo "$loaded" | sed -n 's/^RAGWAY_KEY=//p')
auth=""
echo
echo "ragway is serving on http://$listen  (console: http://$listen/console, API docs: http://$listen/docs)"
if [ -n "$key" ]; then
  auth=" -H 'authorization: Bearer $key'"
  echo "Your API key (tenant 'local'): $key"
  echo "Admin key (/admin/*: more tenants, keys, usage): $RAGWAY_ADMIN_KEY"
  echo "Sign in to the console with either key."
fi
cat <<MSG
Ask it about itself:

  curl -s http://$listen/v1/collections/ragway-docs/query$auth \\
    -H 'content-type: application/json' \\
    -d '{"query": "When does ragway answer in keyword_only mode?"}'

MSG
wait "$server"
