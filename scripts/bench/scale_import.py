"""The import rows of docs/BENCHMARKS.md's scale table (`scripts/scale.sh BIN --import SIZE ...`),
one row per size, each printed as it completes, every wait bounded.

Vectors come from the real embedder without embedding SIZE texts: 20,000 base passages are
embedded once through /v1/embeddings (cached in ~/.cache/ragway/bench), and line j of the import
is document d<j> with a generated text and base vector j mod 20,000 plus Gaussian noise
(sigma 0.02 per value), renormalised (tests/src/bin/scale-lines.rs, streamed into curl as the
import reads it). Per size, on a fresh embedded ragway with default settings:
  import    chunks/s from the request's start until its job is done; seconds until 202
  indexed   seconds from the job's end until Qdrant's optimizers have finished (the log's
            `dense store optimizing`/`optimized` lines balance and stay so for 20 s; the last
            run's end by the log's clock), with the points and indexed vectors it reported
  search    fresh /search p50/p99 (wrk, one client, 15 s) right after the import (optimizers
            running) and again once indexed
  rss       after the searches (of it anonymous memory; the rest is mapped files: vectors, WAL),
            and the peak over the whole run; restart: kill -9 until /readyz is 200, every document still there
  snapshot  seconds, size, peak memory growth; then drop: DELETE of the collection; then restore
            from the snapshot under the same name: seconds, peak memory growth (every document back)
"""

import array
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, fail, fresh_search as search, passage, stop_all, wait_for_jobs  # noqa: E402

HEADER = ("| chunks | import chunks/s | 202 after | indexed after | points/indexed | /search p50 / p99 (optimizing) "
          "| p50 / p99 (indexed) | RSS | restart | snapshot | size | peak growth | restore | peak growth | drop |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
BASE = 20_000


def base_vectors(server):
    path = os.path.expanduser(f"~/.cache/ragway/bench/scale-base-{BASE}.f32")
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    vectors = array.array("f")
    started = time.time()
    for first in range(0, BASE, 250):
        texts = [passage(i, "base") for i in range(first, first + 250)]
        data = server.call("POST", "/v1/embeddings", {"input": texts})["data"]
        for item in data:
            vectors.extend(item["embedding"])
        print(f"scale: base vectors {first + 250:,} of {BASE:,} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    dimension = len(vectors) // BASE
    with open(path + ".new", "wb") as f:
        f.write(dimension.to_bytes(4, "little"))
        vectors.tofile(f)
    os.replace(path + ".new", path)
    return path


def optimizer_runs(server):
    """(runs started, runs ended, last ended line's points and indexed, its time) from the log."""
    text = open(server.log_path, errors="replace").read()
    started = len(re.findall(r"dense store optimizing", text))
    ended = re.findall(r"^(\S+).*dense store optimized.*points=(\d+) indexed=(\d+)", text, re.M)
    return started, len(ended), ended[-1] if ended else None


def indexed(server, within):
    deadline, steady_since = time.time() + within, None
    while time.time() < deadline:
        started, ended, last = optimizer_runs(server)
        if started == ended:
            steady_since = steady_since or time.time()
            if time.time() - steady_since >= 20:
                return last
        else:
            steady_since = None
        time.sleep(2)
    fail(f"Qdrant's optimizers still ran {within} s after the import")


def row(args, total, data, lines_bin):
    shutil.rmtree(data, ignore_errors=True)
    server = Server(args.binary, os.path.join(data, "ragway"), f"ragway ({total:,} imported)")
    server.wait_ready(args.start_limit)
    base = base_vectors(server)
    server.call("POST", "/v1/collections", {"name": "scale"})
    started = time.time()
    generator = subprocess.Popen([lines_bin, base, str(total)], stdout=subprocess.PIPE)
    try:
        out = subprocess.run(["curl", "-sS", "--fail-with-body", "-X", "POST", "-H", "content-type: application/x-ndjson",
                              "-T", "-", f"{server.base}/v1/collections/scale/import"], stdin=generator.stdout,
                             capture_output=True, text=True, timeout=args.load_limit)
    except subprocess.TimeoutExpired:
        generator.kill()
        fail(f"the import's body was not read within {args.load_limit} s")
    generator.wait(timeout=60)
    if out.returncode != 0:
        fail(f"the import was refused: {out.stdout} {out.stderr}")
    accepted = time.time() - started
    wait_for_jobs(server, "scale", args.load_limit, every=0.5)
    done = time.time()
    rate = total / (done - started)
    print(f"scale: {total:,}: imported at {rate:,.0f} chunks/s (202 after {accepted:.1f} s, RSS "
          f"{server.memory('VmRSS'):,.0f} MiB)", file=sys.stderr, flush=True)
    optimizing = search(server, args.lua)
    last = indexed(server, 2400)
    if last:  # the last run's end, by the log's clock
        ended = datetime.datetime.fromisoformat(last[0].replace("Z", "+00:00")).timestamp()
        indexed_after, points = max(0.0, ended - done), f"{int(last[1]):,} / {int(last[2]):,}"
    else:
        indexed_after, points = 0.0, "no run (below 20,000)"
    print(f"scale: {total:,}: indexed {indexed_after:.0f} s after the import ({points})", file=sys.stderr, flush=True)
    p50, p99 = search(server, args.lua)
    rss, anon, peak = server.memory("VmRSS"), server.memory("RssAnon"), server.memory("VmHWM")
    print(f"scale: {total:,}: /search {optimizing[0]:.1f}/{optimizing[1]:.1f} ms while optimizing, {p50:.1f}/{p99:.1f} ms "
          f"indexed; RSS {rss:,.0f} MiB ({anon:,.0f} anonymous; peak {peak:,.0f})", file=sys.stderr, flush=True)
    server.kill()
    server = Server(args.binary, os.path.join(data, "ragway"), f"ragway ({total:,} imported) after kill -9")
    restart = server.wait_ready(args.start_limit)
    print(f"scale: {total:,}: ready {restart:.1f} s after kill -9", file=sys.stderr, flush=True)
    kept = server.call("GET", "/v1/collections/scale")["documents"]
    if kept != total:
        fail(f"{kept:,} of {total:,} documents after kill -9")
    # Snapshot, drop, restore from the snapshot: a machine's disk holds the collection and its
    # snapshot, not two collections as well.
    before = server.memory("VmRSS")
    server.reset_peak()
    started = time.time()
    taken = server.call("POST", "/admin/collections/scale/snapshot", timeout=3600)
    snap, size, snap_peak = time.time() - started, taken["bytes"] / 2**20, server.memory("VmHWM") - before
    print(f"scale: {total:,}: snapshot {snap:.1f} s, {size:,.0f} MiB", file=sys.stderr, flush=True)
    started = time.time()
    server.call("DELETE", "/v1/collections/scale", timeout=600)
    dropped = time.time() - started
    before = server.memory("VmRSS")
    server.reset_peak()
    started = time.time()
    server.call("POST", "/admin/collections/scale/restore", {"snapshot": taken["snapshot"]}, timeout=3600)
    restore, restore_peak = time.time() - started, server.memory("VmHWM") - before
    restored = server.call("GET", "/v1/collections/scale")["documents"]
    if restored != total:
        fail(f"{restored:,} of {total:,} documents after the restore")
    print(f"scale: {total:,}: drop {dropped:.1f} s, restore {restore:.1f} s", file=sys.stderr, flush=True)
    restored = f"{snap:.1f} s | {size:,.0f} MiB | {snap_peak:,.0f} MiB | {restore:.1f} s | {restore_peak:,.0f} MiB"
    dropped = f"{dropped:.1f} s"
    server.kill()
    shutil.rmtree(data, ignore_errors=True)
    return (f"| {total:,} | {rate:,.0f} | {accepted:.1f} s | {indexed_after:.0f} s | {points} "
            f"| {optimizing[0]:.1f} / {optimizing[1]:.1f} ms | {p50:.1f} / {p99:.1f} ms "
            f"| {rss:,.0f} MiB ({anon:,.0f} anonymous; peak {peak:,.0f}) | {restart:.1f} s "
            f"| {restored} | {dropped} |")


def main(args):
    lines_bin = args.lines_bin
    root = tempfile.mkdtemp(prefix="ragway-scale-import-", dir=args.data)
    print(HEADER, flush=True)
    try:
        for total in args.sizes:
            print(row(args, total, os.path.join(root, str(total)), lines_bin), flush=True)
    finally:
        stop_all()
        shutil.rmtree(root, ignore_errors=True)
