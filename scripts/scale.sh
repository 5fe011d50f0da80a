#!/usr/bin/env bash
# The scale table of docs/BENCHMARKS.md: for each SIZE, a fresh embedded ragway with default
# settings loads SIZE synthetic passages (one chunk each) into one collection and is measured:
#   load     chunks/s over the whole load (background ingests of 1,000, as an admin loads a
#            corpus), the last tenth's rate over the first's, and the load over the embedder alone
#            on the same kind of text (/v1/embeddings, 250 a request)
#   replace  chunks/s re-ingesting 1,000 of its documents with new text (one job, until done)
#   search   a fresh /search (every request a new question: L1, L2 and L3 miss), p50 and p99 of
#            one client for 15 s (wrk)
#   rss      the process's resident memory after the load and the searches
#   restart  kill -9, then the time until /readyz answers 200 (every document still there)
#   snapshot seconds, file size and the process's peak memory growth while writing it; restore:
#            seconds to a second collection from that file, and the peak growth
#   scripts/scale.sh BINARY [SIZE ...]        (default 10000 100000)
# Passages are 24 words drawn with a fixed seed from a 5,000-word vocabulary ("w0".."w4999" in
# Zipf-like frequencies): every run loads the same text. Needs wrk (apt-get install wrk) and the
# models (scripts/fetch-models.sh). At this box's embedder rate (~90 passages/s on 2 cores)
# 100,000 take ~20 minutes and 1,000,000 over three hours.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(readlink -f "$1"); shift
sizes=("${@:-10000 100000}")
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
export RAGWAY_MODELS="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"

python3 - "$binary" "$(pwd)/scripts/bench/fresh-search.lua" ${sizes[@]} <<'PY'
import json, os, random, re, signal, subprocess, sys, tempfile, time, urllib.error, urllib.request

binary, lua, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
ADMIN = "scale-admin-key"
rng = random.Random(7)
vocabulary = [f"w{i}" for i in range(5000)]
weights = [1.0 / (i + 1) for i in range(5000)]

def passages(n):
    return [" ".join(rng.choices(vocabulary, weights, k=24)) for _ in range(n)]

class Server:
    def __init__(self, data):
        self.data = data
        env = dict(os.environ, RAGWAY__AUTH__MODE="open", RAGWAY_ADMIN_KEY=ADMIN, RUST_LOG="warn,ragway=info")
        log = os.path.join(data, "log")
        before = os.path.getsize(log) if os.path.exists(log) else 0  # a restart appends
        self.log = open(log, "a")
        self.started = time.time()
        self.process = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--data-dir", data], env=env, stderr=self.log)
        self.base = None
        while self.base is None:
            if time.time() - self.started > 300 or self.process.poll() is not None:
                sys.exit(f"ragway did not start: see {data}/log")
            with open(log) as written:
                written.seek(before)
                found = re.findall(r"address=([0-9.:]+)", written.read())
            self.base = f"http://{found[-1]}" if found else None
            time.sleep(0.1)

    def call(self, method, path, body=None, timeout=7200):
        headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN}"}
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")

    def ready(self):
        while True:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        return time.time() - self.started
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)

    def memory(self, field):  # VmRSS or VmHWM, in MiB
        for line in open(f"/proc/{self.process.pid}/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024

    def reset_peak(self):  # VmHWM from now on (Linux: clear_refs 5)
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as refs:
            refs.write("5")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

def load(server, total):
    server.call("POST", "/v1/collections", {"name": "scale"})
    started = time.time()
    for first in range(0, total, 1000):
        texts = passages(min(1000, total - first))
        documents = [{"id": f"d{first + i}", "text": t} for i, t in enumerate(texts)]
        server.call("POST", "/v1/collections/scale/documents", {"documents": documents, "wait": False})
    seen = [(started, 0)]
    while seen[-1][1] < total:
        time.sleep(1)
        seen.append((time.time(), server.call("GET", "/v1/collections/scale")["documents"]))
    def reached(n):
        for (t0, n0), (t1, n1) in zip(seen, seen[1:]):
            if n1 >= n:
                return t0 + (t1 - t0) * (n - n0) / max(1, n1 - n0)
        return seen[-1][0]
    rate = lambda a, b: (b - a) / max(1e-9, reached(b) - reached(a))
    return total / (seen[-1][0] - started), rate(total * 9 // 10, total) / rate(0, total // 10)

def embedder_alone(server):
    sample = passages(2000)
    started = time.time()
    for i in range(0, len(sample), 250):
        server.call("POST", "/v1/embeddings", {"input": sample[i:i + 250], "model": "all-minilm-l6-v2"})
    return len(sample) / (time.time() - started)

def replace(server, total):
    texts = passages(1000)
    documents = [{"id": f"d{i * (total // 1000)}", "text": t} for i, t in enumerate(texts)]
    started = time.time()
    accepted = server.call("POST", "/v1/collections/scale/documents", {"documents": documents, "wait": False})
    while server.call("GET", accepted["status_url"])["state"] != "done":
        time.sleep(0.2)
    return len(documents) / (time.time() - started)

def search(server):
    out = subprocess.run(["wrk", "-t1", "-c1", "-d15s", "--latency", "-s", lua, server.base],
                         env=dict(os.environ, COLLECTION="scale"), capture_output=True, text=True, check=True).stdout
    def ms(label):
        value = re.search(rf"^\s+{label}%\s+([0-9.]+)(us|ms|s)", out, re.M)
        number, unit = float(value.group(1)), value.group(2)
        return number / 1000 if unit == "us" else number * 1000 if unit == "s" else number
    return ms("50"), ms("99")

def snapshot_and_restore(server):
    before = server.memory("VmRSS")
    server.reset_peak()
    started = time.time()
    taken = server.call("POST", "/admin/collections/scale/snapshot")
    seconds = time.time() - started
    peak = server.memory("VmHWM") - before
    before = server.memory("VmRSS")
    server.reset_peak()
    started = time.time()
    server.call("POST", "/admin/collections/again/restore", {"snapshot": taken["snapshot"]})
    restored = time.time() - started
    return seconds, taken["bytes"] / 2**20, peak, restored, server.memory("VmHWM") - before

print("| chunks | load chunks/s | last/first tenth | load/embedder | replace chunks/s | /search p50 | p99 | RSS | restart | snapshot | size | peak growth | restore | peak growth |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for total in sizes:
    data = tempfile.mkdtemp(prefix="ragway-scale-")
    server = Server(data)
    server.ready()
    whole, tenths = load(server, total)
    embedder = embedder_alone(server)
    replaced = replace(server, total)
    p50, p99 = search(server)
    rss = server.memory("VmRSS")
    server.kill()
    server = Server(data)
    restart = server.ready()
    kept = server.call("GET", "/v1/collections/scale")["documents"]
    assert kept == total, f"{kept} of {total} documents after kill -9"
    snap, size, snap_peak, restore, restore_peak = snapshot_and_restore(server)
    server.kill()
    print(f"| {total:,} | {whole:.1f} | {tenths:.2f} | {whole / embedder:.2f} | {replaced:.1f} | {p50:.1f} ms | {p99:.1f} ms "
          f"| {rss:,.0f} MiB | {restart:.1f} s | {snap:.1f} s | {size:,.0f} MiB | {snap_peak:,.0f} MiB | {restore:.1f} s | {restore_peak:,.0f} MiB |", flush=True)
    subprocess.run(["rm", "-rf", data])
PY
