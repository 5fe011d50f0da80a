"""`/search/batch` against the same searches sent one by one and all at once, side by side.

    python3 scripts/bench/batch-search.py BINARY [QUERIES_PER_BATCH] [ROUNDS]

Loads 1,000 passages of ../shared/data/trec-dl-5k into a fresh ragway (no answer, embedding or
hit caches, so every search embeds and searches), then per round takes fresh questions (the set's
50 with the round's number, so no round repeats another's) and times, in turn: a batch of N, N
`/search` calls one after another, and N `/search` calls at once. Prints one row per round and the
medians.
"""

import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Server, fail, wait_for_jobs  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "trec-dl-5k")


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    with open(os.path.join(DATA, "corpus.jsonl")) as f:
        passages = [json.loads(line) for line in f][:1000]
    with open(os.path.join(DATA, "queries.jsonl")) as f:
        questions = [json.loads(line)["text"] for line in f]
    off = {f"RAGWAY__CACHE__{layer}__MAX_ENTRIES": "0" for layer in ("L1", "L2", "L3")}
    server = Server(binary, tempfile.mkdtemp(prefix="batch-bench-"), "batch", env=off)
    server.wait_ready(600)
    server.call("POST", "/v1/collections", {"name": "bench"})
    for start in range(0, len(passages), 250):
        docs = [{"id": p["_id"], "text": p["text"]} for p in passages[start:start + 250]]
        server.call("POST", "/v1/collections/bench/documents", {"documents": docs})
    wait_for_jobs(server, "bench", within=1200)

    def search(q):
        reply = server.call("POST", "/v1/collections/bench/search", {"query": q, "top_k": 10})
        if reply.get("mode") != "normal":
            fail(f"a search was not normal: {reply.get('mode')}")

    def timed(work):
        started = time.perf_counter()
        work()
        return (time.perf_counter() - started) * 1000

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=n)
    rows = []
    print(f"{n} queries a round; ms per round: batch | one by one | all at once", flush=True)
    for r in range(rounds + 1):  # round 0 warms up and is not counted
        asked = [f"{questions[(r * n + i) % len(questions)]} ({r}.{i})" for i in range(n)]
        batch = {"queries": [{"query": q, "top_k": 10} for q in asked]}

        def one_batch():
            reply = server.call("POST", "/v1/collections/bench/search/batch", batch)
            if any(res.get("mode") != "normal" for res in reply["results"]):
                fail("a batch result was not normal")

        row = (
            timed(one_batch),
            timed(lambda: [search(q + " ") for q in asked]),
            timed(lambda: list(pool.map(search, [q + "  " for q in asked]))),
        )
        if r > 0:
            rows.append(row)
            print(f"round {r}: {row[0]:.0f} | {row[1]:.0f} | {row[2]:.0f}", flush=True)
    medians = [statistics.median(column) for column in zip(*rows)]
    print(f"median: batch {medians[0]:.0f} ms | one by one {medians[1]:.0f} ms ({medians[1] / medians[0]:.2f}x) "
          f"| all at once {medians[2]:.0f} ms ({medians[2] / medians[0]:.2f}x)", flush=True)


main()
