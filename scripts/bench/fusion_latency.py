"""Issue 27 item 3: what the fusion method costs a fresh /search, side by side. One embedded ragway
serves a collection of trec-dl-5k's passages (imported with the vectors the `storage` benchmark
cached, so nothing is embedded but the queries); its fusion is switched with PATCH between the
old default (rrf, k 60, alpha 0.9) and `adaptive`, alternating, each round `wrk -t1 -c1 -d10s`
of fresh questions (scripts/bench/fresh-search.lua: L1, L2 and L3 miss). p50 and p99 per round,
and the medians.

    python3 scripts/bench/fusion_latency.py BINARY [ROUNDS]     (needs wrk; default 3 rounds)
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, fail, wait_for_jobs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    binary, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
    cache = os.path.expanduser("~/.cache/ragway/bench/trec-dl-5k.vectors.json")
    if not os.path.exists(cache):
        fail(f"{cache} is missing: run `cargo bench -p ragway-gateway --bench ragway -- storage` first")
    vectors = json.load(open(cache))
    corpus = [json.loads(line) for line in open(os.path.join(ROOT, "../shared/data/trec-dl-5k/corpus.jsonl"))]
    with tempfile.TemporaryDirectory() as data:
        server = Server(binary, os.path.join(data, "ragway"), "ragway (fusion latency)")
        server.wait_ready(600)
        server.call("POST", "/v1/collections", {"name": "bench"})
        # One chunk per passage where the default chunking makes one; the others are embedded.
        # (the cache holds one vector per chunk of 120 words, 24 overlapping, in corpus order).
        lines, at = [], 0
        for doc in corpus:
            words = len(doc["text"].split())
            chunks = 1 if words <= 120 else 1 + -(-(words - 120) // 96)
            line = {"id": doc["_id"], "text": doc["text"]}
            if chunks == 1:
                line["vector"] = vectors[at]
            at += chunks
            lines.append(json.dumps(line))
        if at != len(vectors):
            fail(f"the cached vectors ({len(vectors)}) do not match the corpus's chunks ({at})")
        body = ("\n".join(lines)).encode()
        request = urllib.request.Request(f"{server.base}/v1/collections/bench/import", data=body, method="POST",
                                         headers={"content-type": "application/x-ndjson"})
        urllib.request.urlopen(request, timeout=600).read()
        wait_for_jobs(server, "bench", 1800)
        lua = os.path.join(ROOT, "scripts/bench/fresh-search.lua")

        def measure():
            out = subprocess.run(["wrk", "-t1", "-c1", "-d10s", "--latency", "-s", lua, server.base],
                                 env=dict(os.environ, COLLECTION="bench"), capture_output=True, text=True,
                                 check=True, timeout=60).stdout

            def ms(label):
                number, unit = re.search(rf"^\s+{label}%\s+([0-9.]+)(us|ms|s)", out, re.M).groups()
                return float(number) / 1000 if unit == "us" else float(number) * (1000 if unit == "s" else 1)
            return ms("50"), ms("99")

        settings = {"rrf(k=60,alpha=0.9)": {"method": "rrf", "k": 60, "alpha": 0.9}, "adaptive": {"method": "adaptive"}}
        results = {name: [] for name in settings}
        print("| round | fusion | p50 | p99 |\n|---|---|---|---|", flush=True)
        for r in range(rounds):
            for name, fusion in settings.items():
                server.call("PATCH", "/v1/collections/bench", {"fusion": fusion})
                p50, p99 = measure()
                results[name].append((p50, p99))
                print(f"| {r + 1} | {name} | {p50:.2f} ms | {p99:.2f} ms |", flush=True)
        for name, rows in results.items():
            print(f"| median | {name} | {statistics.median(p for p, _ in rows):.2f} ms "
                  f"| {statistics.median(p for _, p in rows):.2f} ms |", flush=True)
        server.kill()


if __name__ == "__main__":
    main()
