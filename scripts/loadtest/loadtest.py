#!/usr/bin/env python3
"""Load and fault harness (loopback only, bounded: about 2 minutes).

Two ragway replicas share one Qdrant server and one Redis (`store.kind = "qdrant"`, separate empty
data directories) behind nginx (least_conn, passive health checks, a failed request retried on the
other replica) — the shape of docker/compose.yaml, on this machine's processes. wrk drives a mixed
workload (scripts/loadtest/mixed.lua: search, grounded answers, small ingests) through nginx in
phases of equal length; between phases one replica is SIGKILLed and restarted, then Redis, then
Qdrant. Prints one row per phase: QPS, p50/p99, error rate, cache hit rate and mode mix.

Run through scripts/loadtest.sh, which builds ragway and checks the tools.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
COLLECTION = "load"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(raw):
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


def call(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, parse(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, parse(e.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        return 0, str(e)


def wait_until(what, check, seconds=180):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    sys.exit(f"loadtest: {what} did not come up within {seconds} s")


class Process:
    """A child process that can be SIGKILLed and started again the same way. Each runs in a
    process group of its own, and a kill reaches the whole group: nginx's workers die with their
    master instead of being left behind."""

    def __init__(self, name, argv, env=None, log=None):
        self.name, self.argv, self.env, self.log, self.child = name, argv, env, log, None

    def start(self):
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.child = subprocess.Popen(self.argv, env={**os.environ, **(self.env or {})}, stdout=out, stderr=out,
                                      start_new_session=True)

    def kill(self):
        if self.child is None:
            return
        try:
            os.killpg(self.child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.child.wait()


def ready(url):
    return lambda: call("GET", url, timeout=2)[0] == 200


class Stack:
    def __init__(self, args, tmp):
        self.tmp, self.processes = tmp, []
        self.qdrant_http, self.qdrant_grpc, self.redis_port = free_port(), free_port(), free_port()
        self.ports = [free_port(), free_port()]
        self.front = free_port()
        self.qdrant = self.spawn("qdrant", [args.qdrant], {
            "QDRANT__STORAGE__STORAGE_PATH": f"{tmp}/qdrant",
            "QDRANT__SERVICE__HTTP_PORT": str(self.qdrant_http),
            "QDRANT__SERVICE__GRPC_PORT": str(self.qdrant_grpc),
            "QDRANT__TELEMETRY_DISABLED": "true",
        })
        os.makedirs(f"{tmp}/redis")
        self.redis = self.spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                          "--dir", f"{tmp}/redis", "--appendonly", "yes", "--appendfsync", "always"])
        config = f"{tmp}/ragway.toml"
        with open(config, "w") as f:
            f.write("[generation]\nmax_tokens = 8\n")
        env = {
            "RAGWAY__STORE__KIND": "qdrant",
            "RAGWAY__STORE__URL": f"http://127.0.0.1:{self.qdrant_grpc}",
            "RAGWAY__CACHE__REDIS__URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "RAGWAY__AUTH__MODE": "open",
            "RUST_LOG": "warn",
        }
        self.replicas = [
            self.spawn(f"ragway-{i + 1}", [args.ragway, "--listen", f"127.0.0.1:{port}", "--data-dir",
                                           f"{tmp}/ragway-{i + 1}", "--config", config], env)
            for i, port in enumerate(self.ports)
        ]
        self.nginx = self.spawn("nginx", ["nginx", "-p", f"{tmp}/nginx", "-c", self.nginx_conf(),
                                          "-g", "daemon off;"])

    def spawn(self, name, argv, env=None):
        process = Process(name, argv, env, f"{self.tmp}/{name}.log")
        self.processes.append(process)
        return process

    def nginx_conf(self):
        os.makedirs(f"{self.tmp}/nginx/logs")
        servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in self.ports)
        path = f"{self.tmp}/nginx/nginx.conf"
        with open(path, "w") as f:
            f.write(f"""user root;
worker_processes 1;
pid {self.tmp}/nginx/nginx.pid;
error_log {self.tmp}/nginx/error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log off;
  upstream ragway {{
    least_conn;
{servers}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{self.front};
    client_body_temp_path {self.tmp}/nginx/body;
    location / {{
      proxy_pass http://ragway;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 1s;
      proxy_read_timeout 60s;
      proxy_next_upstream error timeout http_502 non_idempotent;
      proxy_next_upstream_tries 2;
    }}
  }}
}}
""")
        return path

    def url(self, path):
        return f"http://127.0.0.1:{self.front}{path}"

    def start(self):
        self.qdrant.start()
        self.redis.start()
        wait_until("qdrant", ready(f"http://127.0.0.1:{self.qdrant_http}/readyz"))
        for replica, port in zip(self.replicas, self.ports):
            replica.start()
            wait_until(replica.name, ready(f"http://127.0.0.1:{port}/healthz"))
        self.nginx.start()
        wait_until("nginx", ready(self.url("/healthz")))

    def stop(self):
        for process in reversed(self.processes):
            process.kill()


def seed(stack, passages):
    status, body = call("POST", stack.url("/v1/collections"), {"name": COLLECTION, "chunk_words": 60})
    if status != 201:
        sys.exit(f"loadtest: cannot create the collection: {status} {body}")
    corpus = os.path.join(args.data, "corpus.jsonl")
    with open(corpus) as f:
        documents = [json.loads(line) for _, line in zip(range(passages), f)]
    for start in range(0, len(documents), 100):
        batch = [{"id": d["_id"], "text": d["text"]} for d in documents[start:start + 100]]
        status, body = call("POST", stack.url(f"/v1/collections/{COLLECTION}/documents"), {"documents": batch}, 300)
        if status != 200:
            sys.exit(f"loadtest: ingest failed: {status} {body}")


def wrk_script(tmp):
    with open(os.path.join(args.data, "queries.jsonl")) as f:
        queries = [json.loads(line)["text"] for line in f]
    clean = [q.replace("\\", " ").replace('"', " ") for q in queries]
    table = ", ".join(json.dumps(q) for q in clean)
    path = f"{tmp}/mixed.lua"
    with open(path, "w") as out, open(os.path.join(HERE, "mixed.lua")) as lua:
        out.write(f'COLLECTION = "{COLLECTION}"\nINGESTS = {args.ingests}\nqueries = {{{table}}}\n')
        out.write(lua.read())
    return path


def run_phase(stack, script):
    try:
        output = subprocess.run(
            ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "10s", "-s", script,
             stack.url("")], capture_output=True, text=True, check=False, timeout=args.seconds + 60).stdout
    except subprocess.TimeoutExpired:
        sys.exit(f"loadtest: wrk did not end within {args.seconds + 60} s")
    line = next((l for l in output.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"loadtest: wrk printed no result:\n{output}")
    return json.loads(line[len("RESULT "):])


def row(phase, result):
    seconds = result["duration_us"] / 1e6
    statuses = {int(k): v for k, v in result["statuses"].items()}
    failed = sum(v for k, v in statuses.items() if k >= 400) + result["socket_errors"]
    total = result["requests"] + result["socket_errors"]
    answers = max(result["answers"], 1)
    modes = ", ".join(f"{m} {100 * c / answers:.0f}%" for m, c in sorted(result["modes"].items(), key=lambda x: -x[1]))
    codes = ", ".join(f"{k}×{v}" for k, v in sorted(statuses.items()) if k >= 400)
    return (f"| {phase} | {result['requests'] / seconds:.1f} | {result['p50_us'] / 1000:.1f} | "
            f"{result['p99_us'] / 1000:.1f} | {100 * failed / max(total, 1):.1f}%"
            f"{' (' + codes + ')' if codes else ''} | {100 * result['cache_hits'] / answers:.0f}% | {modes} |")


def heal(stack, process, check):
    process.start()
    wait_until(process.name, check)


def main():
    # SIGTERM and SIGHUP end the run the way Ctrl-C does: through the clean-up below.
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, lambda number, _: sys.exit(128 + number))
    tmp = tempfile.mkdtemp(prefix="ragway-loadtest-")
    stack = Stack(args, tmp)
    try:
        stack.start()
        seed(stack, args.passages)
        script = wrk_script(tmp)
        qdrant_ready = ready(f"http://127.0.0.1:{stack.qdrant_http}/readyz")
        redis_ready = lambda: subprocess.run(["redis-cli", "-p", str(stack.redis_port), "ping"],
                                             capture_output=True, text=True, timeout=10).stdout.strip() == "PONG"
        replica_two = stack.replicas[1]
        phases = [
            ("before: 2 replicas, Qdrant, Redis", None),
            ("ragway-2 SIGKILLed", replica_two.kill),
            ("ragway-2 restarted", lambda: heal(stack, replica_two, ready(f"http://127.0.0.1:{stack.ports[1]}/healthz"))),
            ("Redis SIGKILLed", stack.redis.kill),
            ("Redis restarted", lambda: heal(stack, stack.redis, redis_ready)),
            ("Qdrant SIGKILLed", stack.qdrant.kill),
            ("Qdrant restarted", lambda: heal(stack, stack.qdrant, qdrant_ready)),
            ("Qdrant restarted, next phase", None),
        ]
        rows = []
        for phase, action in phases:
            if action:
                action()
            print(f"loadtest: {phase} ({args.seconds} s)", file=sys.stderr)
            rows.append(row(phase, run_phase(stack, script)))
        print(f"\n{args.passages} passages, wrk -t2 -c{args.connections}, {args.seconds} s per phase, through nginx; "
              f"of 20 requests {19 - args.ingests} search, 1 query, {args.ingests} ingest:\n")
        print("| phase | QPS | p50 ms | p99 ms | errors | cache hits | modes |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    finally:
        stack.stop()
        if args.keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ragway", required=True, help="the ragway binary")
    parser.add_argument("--qdrant", required=True, help="the qdrant binary")
    parser.add_argument("--data", required=True, help="trec-dl-5k directory (corpus.jsonl, queries.jsonl)")
    parser.add_argument("--passages", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=12, help="per phase")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--ingests", type=int, default=3, choices=range(0, 20),
                        help="of every 20 requests, how many ingest a document (one is /query, the rest /search)")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    main()
