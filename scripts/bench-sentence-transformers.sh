#!/usr/bin/env bash
# The side-by-side reference for docs/BENCHMARKS.md: sentence-transformers (PyTorch, 2 threads) on
# the same machine and data as `cargo bench -p ragway-gateway --bench ragway -- embed rerank`.
# Opt-in: torch from PyPI is large (its own venv under ~/.cache/ragway/st-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$HOME/.cache/ragway/st-venv"
models="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"
data="${RAGWAY_TREC_DL:-../shared/data/trec-dl-5k}"
if ! "$venv/bin/python" -c "import sentence_transformers" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "sentence-transformers==5.1.1"
fi
"$venv/bin/python" - "$models" "$data" <<'PY'
import json, statistics, sys, tempfile, time
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import BertConfig, BertForSequenceClassification, AutoTokenizer

torch.set_num_threads(2)
models, data = sys.argv[1], sys.argv[2]
texts = [json.loads(l)["text"] for l in open(f"{data}/corpus.jsonl")][:256]
model = SentenceTransformer(f"{models}/all-minilm-l6-v2", device="cpu")
model.encode(texts[:32], batch_size=32)
rates = []
for _ in range(5):
    t = time.perf_counter(); model.encode(texts, batch_size=32); rates.append(len(texts) / (time.perf_counter() - t))
queries = []
for i in range(200):
    t = time.perf_counter(); model.encode([f"what is the boiling point of water at altitude {i}"]); queries.append((time.perf_counter() - t) * 1e3)
queries.sort()
print(f"| sentence-transformers | {statistics.median(rates):.1f} | {min(rates):.1f} | {max(rates):.1f} | {queries[100]:.2f} | {queries[198]:.2f} |")
with tempfile.TemporaryDirectory() as d:
    config = BertConfig.from_pretrained(f"{models}/all-minilm-l6-v2", num_labels=1)
    BertForSequenceClassification(config).save_pretrained(d)
    AutoTokenizer.from_pretrained(f"{models}/all-minilm-l6-v2").save_pretrained(d)
    ce = CrossEncoder(d, device="cpu", max_length=512)
    pairs = [("what causes left ventricular hypertrophy", p) for p in texts[:20]]
    ce.predict(pairs)
    times = []
    for _ in range(5):
        t = time.perf_counter(); ce.predict(pairs, batch_size=32); times.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(times)
    print(f"| sentence-transformers CrossEncoder | 20 | {20 / ms * 1e3:.1f} | {ms:.0f} |")
PY
