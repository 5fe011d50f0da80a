#!/usr/bin/env bash
# Runs every check and test from a fresh clone: fetches the models, then formatting, clippy, and
# the unit, integration and end-to-end tests (which start the real binary) in release mode, each
# test under cargo-nextest's bound (.config/nextest.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is needed: install Rust from https://rustup.rs" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 (with pip) is needed to fetch the models: apt-get install -y python3-pip" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ragway/target}"

source scripts/lib.sh
need_build_tools
scripts/fetch-models.sh
# The shared cache tier's tests start a real redis-server (Debian's package) on a free port.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing redis-server (Debian package) for the cache tests"
    (apt-get install -y -qq redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }) \
      || { echo "apt-get install redis-server failed" >&2; exit 1; }
    # The package starts a system-wide server; the tests start their own.
    (service redis-server stop >/dev/null 2>&1 || true)
  else
    echo "redis-server and redis-cli are needed by the cache tests: apt-get install -y redis-server" >&2
    exit 1
  fi
fi
# The replicas' partition test puts a replica in a network namespace of its own (`ip netns`):
# it needs root and iproute2, and says so when it cannot make one.
if ! command -v ip >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing iproute2 (Debian package) for the partition test"
  (apt-get install -y -qq iproute2 >/dev/null || { apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null; }) \
    || { echo "apt-get install iproute2 failed" >&2; exit 1; }
fi
# The console's test drives Debian's Chromium (with Playwright, from the venv below).
if [ -z "${RAGWAY_CHROMIUM:-}" ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium (Debian package) for the console's browser test"
    (apt-get install -y -qq chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }) \
      || { echo "apt-get install chromium failed" >&2; exit 1; }
  else
    echo "chromium is needed by the console's browser test: apt-get install -y chromium (or set RAGWAY_CHROMIUM)" >&2
    exit 1
  fi
fi
# The cross-encoder fixture's ONNX graph, written from its safetensors like the embedder's.
models="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"
"$models/.onnx-venv/bin/python" scripts/onnx/build_bert_onnx.py rerank/tests/fixtures/tiny-bert-classifier classifier
# The end-to-end tests validate /openapi.json with openapi-spec-validator, fuzz the API with
# schemathesis and drive it with the official openai and MCP SDKs and the RAG frameworks' clients,
# all kept in their own venv (tests/requirements.txt, installed again whenever it changes).
venv="$HOME/.cache/ragway/venv"
wanted=$(sha256sum < tests/requirements.txt)
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$wanted" ] || ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  timeout 1200 "$venv/bin/pip" install --quiet -r tests/requirements.txt
  echo "$wanted" > "$venv/.requirements"
fi
# The Qdrant server backend's tests need a `qdrant` binary (no registry here ships one); without
# one they pass after printing why they skipped (cargo captures that, so it is said here too).
qdrant="${RAGWAY_QDRANT_BIN:-}"
[ -n "$qdrant" ] || { [ -x ../shared/bin/qdrant ] && qdrant=../shared/bin/qdrant; } || qdrant=$(command -v qdrant || true)
if [ -n "$qdrant" ]; then
  echo "qdrant: $qdrant (the Qdrant server tests run against it)"
else
  echo "qdrant: not found (RAGWAY_QDRANT_BIN, ../shared/bin/qdrant, PATH): the Qdrant server tests SKIP"
fi
export RAGWAY_PYTHON="$venv/bin/python"
export RAGWAY_SCHEMATHESIS="$venv/bin/schemathesis"
# The test runner: every test in a process of its own, killed and named if it passes its bound
# (.config/nextest.toml), so a hung test fails the run in minutes.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (the test runner)"
  cargo install --locked cargo-nextest || { echo "cargo install cargo-nextest failed: see https://nexte.st" >&2; exit 1; }
fi
cargo fmt --all -- --check
# Lints in their own pass. (Linting while building, with clippy-driver as the workspace wrapper,
# saves that pass's 3-4 minutes cold but builds our crates at MIR opt level 0: the binary tested
# would not be the one served, so it is not done.)
cargo clippy --release --workspace --all-targets -- -D warnings
# Every target the tests use, in the profile they run in: the end-to-end tests start the real
# binary built here, and nextest then builds nothing more.
cargo build --release --workspace --all-targets
# The tests' temporary directories live under one directory removed when this script ends, so a
# test killed at its bound (its processes go with it: nextest kills its process group) leaves
# no data behind either.
TMPDIR=$(mktemp -d -t ragway-tests-XXXXXX)
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cargo nextest run --release --workspace
