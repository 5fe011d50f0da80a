#!/usr/bin/env bash
# Does ingestion slow down as a collection grows? Loads DOCS synthetic passages (one chunk each)
# into one embedded collection, 1,000 per request, and prints the chunks/s of every tenth of the
# load (as the collection's document count grows), the whole load, and what the embedder alone does on the same passages (/v1/embeddings).
#   scripts/bench/ingest-growth.sh BINARY [DOCS]        (default 20000)
# The passages are 24 words drawn with a fixed seed from a 5,000-word vocabulary ("w0".."w4999"
# in Zipf-like frequencies), so every run loads the same text. Needs the models
# (scripts/fetch-models.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=$1 docs=${2:-20000}
models="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"
data=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$data"' EXIT

RAGWAY_MODELS="$models" RAGWAY__AUTH__MODE=open RUST_LOG=warn,ragway=info \
  "$binary" --listen 127.0.0.1:0 --data-dir "$data" 2> "$data/log" &
pid=$!
for _ in $(seq 600); do
  base=$(grep -o 'address=[0-9.:]*' "$data/log" | head -1 | cut -d= -f2 || true)
  [ -n "$base" ] && break
  sleep 0.2
done
[ -n "$base" ] || { echo "$binary did not start: see $data/log" >&2; exit 1; }

python3 - "http://$base" "$docs" "$data" <<'PY'
import json, os, random, statistics, sys, time, urllib.request

base, total, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(7)
vocabulary = [f"w{i}" for i in range(5000)]
weights = [1.0 / (i + 1) for i in range(5000)]

def passages(n):
    return [" ".join(rng.choices(vocabulary, weights, k=24)) for _ in range(n)]

def post(path, body):
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=3600) as response:
        return json.loads(response.read() or b"{}")

def get(path):
    with urllib.request.urlopen(base + path, timeout=60) as response:
        return json.loads(response.read())

post("/v1/collections", {"name": "growth"})
per_request, started = 1000, time.time()
for first in range(0, total, per_request):  # background ingestion jobs, as an admin loads a corpus
    texts = passages(min(per_request, total - first))
    post("/v1/collections/growth/documents", {"documents": [{"id": f"d{first + i}", "text": t} for i, t in enumerate(texts)]})
seen = [(started, 0)]
while seen[-1][1] < total:
    time.sleep(1)
    seen.append((time.time(), get("/v1/collections/growth")["documents"]))
whole = total / (seen[-1][0] - started)

def reached(n):  # when the collection first held n documents (interpolated between polls)
    for (t0, n0), (t1, n1) in zip(seen, seen[1:]):
        if n1 >= n:
            return t0 + (t1 - t0) * (n - n0) / max(1, n1 - n0)
    return seen[-1][0]

tenths = [(total * i // 10, total * (i + 1) // 10) for i in range(10)]
rates = [(b - a) / max(1e-9, reached(b) - reached(a)) for a, b in tenths]
for (a, b), rate in zip(tenths, rates):
    print(f"chunks {a:>8}-{b:<8} {rate:7.1f} chunks/s")
first, last = rates[0], rates[-1]
sample = passages(2000)
t0 = time.time()
for i in range(0, len(sample), 250):
    post("/v1/embeddings", {"input": sample[i:i + 250], "model": "all-minilm-l6-v2"})
embedder = len(sample) / (time.time() - t0)
files = {f: os.path.getsize(os.path.join(data, "collections", f)) for f in os.listdir(os.path.join(data, "collections"))}
print(f"whole load {whole:.1f} chunks/s; last tenth / first tenth {last / first:.2f}; embedder alone {embedder:.1f} texts/s; load / embedder {whole / embedder:.2f}")
print(f"manifest files: {files}")
PY
