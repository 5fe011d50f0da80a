"""The scale table of docs/BENCHMARKS.md, one row per size, each row printed as it completes.
Run through scripts/scale.sh (which says what each column is). With --data DIR a run can be cut
off and started again: finished rows are kept in DIR/rows.md and printed again, and a load cut
off half-way goes on from what its data directory holds.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, fail, fresh_search as search, passage, stop_all, wait_for_jobs  # noqa: E402

HEADER = ("| chunks | load chunks/s | last/first tenth | load/embedder | replace chunks/s | /search p50 | p99 | RSS "
          "| restart | snapshot | size | peak growth | restore | peak growth |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
BATCH = 1000


def load(server, total, state, save, within):
    """Background ingests of BATCH passages until the collection holds `total`; chunks/s over
    this run's part of the load and the last tenth's rate over the first's."""
    collections = [c["name"] for c in server.call("GET", "/v1/collections")["collections"]]
    if "scale" not in collections:
        server.call("POST", "/v1/collections", {"name": "scale"})
    # Jobs resumed after a restart finish first; then the load goes on from what is stored.
    wait_for_jobs(server, "scale", within)
    start = server.call("GET", "/v1/collections/scale")["documents"]
    if start:
        print(f"scale: {total:,}: resuming the load at {start:,} documents", file=sys.stderr, flush=True)
    started = time.time()
    seen = [(started, start)]

    def record():
        seen.append((time.time(), server.call("GET", "/v1/collections/scale")["documents"]))
        state["seen"] = seen
        save()

    # A full job queue (503 with Retry-After) holds a post back until a job has finished.
    for first in range(start - start % BATCH, total, BATCH):
        documents = [{"id": f"d{i}", "text": passage(i)} for i in range(first, min(first + BATCH, total))]
        server.call("POST", "/v1/collections/scale/documents", {"documents": documents, "wait": False}, timeout=within)
        record()
    wait_for_jobs(server, "scale", within, on_poll=record)
    if seen[-1][1] < total:
        fail(f"every job is done but the collection holds {seen[-1][1]:,} of {total:,} documents")

    def reached(n):
        for (t0, n0), (t1, n1) in zip(seen, seen[1:]):
            if n1 >= n:
                return t0 + (t1 - t0) * (n - n0) / max(1, n1 - n0)
        return seen[-1][0]

    loaded = total - start
    if loaded < 10:  # cut off after its last job, before its figures were saved
        return {"rate": float("nan"), "tenths": float("nan"), "resumed_at": start}
    rate = lambda a, b: (b - a) / max(1e-9, reached(b) - reached(a))
    return {"rate": loaded / (seen[-1][0] - started), "tenths": rate(total - loaded // 10, total) / rate(start, start + loaded // 10),
            "resumed_at": start}


def embedder_alone(server):
    sample = [passage(i, "embedder") for i in range(2000)]
    started = time.time()
    for i in range(0, len(sample), 250):
        server.call("POST", "/v1/embeddings", {"input": sample[i:i + 250], "model": "all-minilm-l6-v2"})
    return len(sample) / (time.time() - started)


def replace(server, total, within):
    documents = [{"id": f"d{i * (total // 1000)}", "text": passage(i, "replace")} for i in range(1000)]
    started = time.time()
    server.call("POST", "/v1/collections/scale/documents", {"documents": documents, "wait": False})
    wait_for_jobs(server, "scale", within, every=0.2)
    return len(documents) / (time.time() - started)


def snapshot_and_restore(server):
    before = server.memory("VmRSS")
    server.reset_peak()
    started = time.time()
    taken = server.call("POST", "/admin/collections/scale/snapshot", timeout=3600)
    seconds = time.time() - started
    peak = server.memory("VmHWM") - before
    before = server.memory("VmRSS")
    server.reset_peak()
    started = time.time()
    server.call("POST", "/admin/collections/again/restore", {"snapshot": taken["snapshot"]}, timeout=3600)
    restored = time.time() - started
    return seconds, taken["bytes"] / 2**20, peak, restored, server.memory("VmHWM") - before


def row(args, total, data):
    """One row of the table, measured on `data` (a load there is resumed)."""
    state_path = os.path.join(data, "progress.json")
    state = json.load(open(state_path)) if os.path.exists(state_path) else {}

    def save():
        with open(state_path + ".new", "w") as f:
            json.dump(state, f)
        os.replace(state_path + ".new", state_path)

    server = Server(args.binary, os.path.join(data, "ragway"), f"ragway ({total:,} chunks)")
    server.wait_ready(args.start_limit)
    within = args.load_limit or max(600, total // 20)
    if "load" not in state:
        state["load"] = load(server, total, state, save, within)
        save()
    embedder = embedder_alone(server)
    replaced = replace(server, total, 600)
    p50, p99 = search(server, args.lua)
    rss = server.memory("VmRSS")
    server.kill()
    server = Server(args.binary, os.path.join(data, "ragway"), f"ragway ({total:,} chunks) after kill -9")
    restart = server.wait_ready(args.start_limit)
    kept = server.call("GET", "/v1/collections/scale")["documents"]
    if kept != total:
        fail(f"{kept:,} of {total:,} documents after kill -9")
    existing = [c["name"] for c in server.call("GET", "/v1/collections")["collections"]]
    if "again" in existing:  # a restore of a run cut off after it
        server.call("DELETE", "/v1/collections/again")
    snap, size, snap_peak, restore, restore_peak = snapshot_and_restore(server)
    server.kill()
    loaded = state["load"]
    resumed = f" (resumed at {loaded['resumed_at']:,})" if loaded["resumed_at"] else ""
    return (f"| {total:,} | {loaded['rate']:.1f}{resumed} | {loaded['tenths']:.2f} | {loaded['rate'] / embedder:.2f} "
            f"| {replaced:.1f} | {p50:.1f} ms | {p99:.1f} ms | {rss:,.0f} MiB | {restart:.1f} s | {snap:.1f} s "
            f"| {size:,.0f} MiB | {snap_peak:,.0f} MiB | {restore:.1f} s | {restore_peak:,.0f} MiB |")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("binary")
    parser.add_argument("lua")
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000])
    parser.add_argument("--data", help="keep each size's data and finished rows here, and resume from them")
    parser.add_argument("--load-limit", type=int, help="seconds a load may take (default: 600 or 20 chunks/s)")
    parser.add_argument("--start-limit", type=int, default=600, help="seconds until /readyz answers")
    parser.add_argument("--import", dest="bulk", action="store_true",
                        help="import vectors derived from 20,000 embedded ones (scale_import.py) instead of embedding")
    parser.add_argument("--lines-bin", help="tests' scale-lines binary (--import)")
    args = parser.parse_intermixed_args()
    if args.bulk:
        import scale_import
        args.load_limit = args.load_limit or 2400
        return scale_import.main(args)
    keep = args.data is not None
    root = os.path.abspath(args.data) if keep else tempfile.mkdtemp(prefix="ragway-scale-")
    os.makedirs(root, exist_ok=True)
    rows_path = os.path.join(root, "rows.md")
    done = {}
    if os.path.exists(rows_path):
        for line in open(rows_path):
            done[int(line.split("|")[1].strip().replace(",", ""))] = line.rstrip("\n")
    print(HEADER, flush=True)
    try:
        for total in args.sizes:
            if total not in done:
                data = os.path.join(root, str(total))
                done[total] = row(args, total, data)
                with open(rows_path, "a") as rows:
                    rows.write(done[total] + "\n")
                if not keep:
                    shutil.rmtree(data, ignore_errors=True)
            print(done[total], flush=True)
    finally:
        stop_all()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
