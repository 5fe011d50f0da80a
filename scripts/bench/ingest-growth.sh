#!/usr/bin/env bash
# Does ingestion slow down as a collection grows? Loads DOCS synthetic passages (one chunk each)
# into one embedded collection, 1,000 per request, and prints the chunks/s of every tenth of the
# load (as the collection's document count grows), the whole load, and what the embedder alone
# does on the same passages (/v1/embeddings).
#   scripts/bench/ingest-growth.sh BINARY [DOCS] [LIMIT_SECONDS]   (default 20000, ~4 minutes here;
#                                                                   limit: 600 s or 20 chunks/s)
# Passage i is 24 words drawn with seed i from a 5,000-word vocabulary ("w0".."w4999" in Zipf-like
# frequencies), so every run loads the same text. Needs the models (scripts/fetch-models.sh). The
# server and its temporary data are removed however the run ends; a failed job or a load past the
# limit ends it with a message saying which.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { sed -n 2,11p "$0" >&2; exit 2; }
binary=$(readlink -f "$1") docs=${2:-20000}
limit=${3:-$(( docs / 20 > 600 ? docs / 20 : 600 ))}
export RAGWAY_MODELS="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"

exec python3 - "$binary" "$docs" "$limit" <<'PY'
import os, shutil, sys, tempfile, time
sys.path.insert(0, "scripts/bench")
from harness import Server, passage, stop_all, wait_for_jobs

binary, total, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = tempfile.mkdtemp(prefix="ragway-growth-")
try:
    server = Server(binary, data, "ragway")
    server.wait_ready()
    server.call("POST", "/v1/collections", {"name": "growth"})
    per_request, started = 1000, time.time()
    for first in range(0, total, per_request):  # background ingestion jobs, as an admin loads a corpus
        documents = [{"id": f"d{i}", "text": passage(i)} for i in range(first, min(first + per_request, total))]
        server.call("POST", "/v1/collections/growth/documents", {"documents": documents, "wait": False})
    seen = [(started, 0)]
    wait_for_jobs(server, "growth", limit,
                  on_poll=lambda: seen.append((time.time(), server.call("GET", "/v1/collections/growth")["documents"])))
    whole = total / (seen[-1][0] - started)

    def reached(n):  # when the collection first held n documents (interpolated between polls)
        for (t0, n0), (t1, n1) in zip(seen, seen[1:]):
            if n1 >= n:
                return t0 + (t1 - t0) * (n - n0) / max(1, n1 - n0)
        return seen[-1][0]

    tenths = [(total * i // 10, total * (i + 1) // 10) for i in range(10)]
    rates = [(b - a) / max(1e-9, reached(b) - reached(a)) for a, b in tenths]
    for (a, b), rate in zip(tenths, rates):
        print(f"chunks {a:>8}-{b:<8} {rate:7.1f} chunks/s", flush=True)
    sample = [passage(i, "embedder") for i in range(2000)]
    t0 = time.time()
    for i in range(0, len(sample), 250):
        server.call("POST", "/v1/embeddings", {"input": sample[i:i + 250], "model": "all-minilm-l6-v2"})
    embedder = len(sample) / (time.time() - t0)
    collections = os.path.join(data, "collections")
    files = {f: os.path.getsize(os.path.join(collections, f)) for f in os.listdir(collections)}
    print(f"whole load {whole:.1f} chunks/s; last tenth / first tenth {rates[-1] / rates[0]:.2f}; "
          f"embedder alone {embedder:.1f} texts/s; load / embedder {whole / embedder:.2f}")
    print(f"manifest files: {files}")
finally:
    stop_all()
    shutil.rmtree(data, ignore_errors=True)
PY
