#!/usr/bin/env python3
"""Load and fault harness (loopback only, bounded: about 2 minutes).

Two ragway replicas share one Qdrant server and one Redis (`store.kind = "qdrant"`, separate empty
data directories) behind nginx (least_conn, passive health checks, a failed request retried on the
other replica) — the shape of docker/compose.yaml, on this machine's processes. wrk drives a mixed
workload (scripts/loadtest/mixed.lua: search, grounded answers, small ingests) through nginx in
phases of equal length; between phases one replica is SIGKILLed and restarted, then Redis, then
Qdrant. Prints one row per phase: QPS, p50/p99, error rate, cache hit rate and mode mix.

With --ha, the same workload runs on what nothing single may fail needs: the two replicas on a
three-node Qdrant cluster (distributed mode; collections of 2 shards × 2 replicas) and Redis with
failover (a primary and its replica, both fsyncing every write, watched by three sentinels);
between phases a replica, one Qdrant node and the Redis primary are in turn SIGKILLed and brought
back. Beside wrk, a verifier writes documents one at a time (and deletes every fifth one it wrote)
and, at the end, reads each back by id (a search filtered on its own metadata): every acknowledged
document must be found, and no deleted one.

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
import threading
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


def redis_cli(port, *command):
    try:
        return subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True,
                              timeout=10).stdout
    except subprocess.TimeoutExpired:
        return ""


def redis_ready(port):
    return lambda: redis_cli(port, "ping").strip() == "PONG"


def parse_peers(qdrant):
    status, body = call("GET", f"http://127.0.0.1:{qdrant.http}/cluster", timeout=2)
    return (body.get("result", {}).get("peers") or {}) if status == 200 and isinstance(body, dict) else {}


class Stack:
    def __init__(self, args, tmp):
        self.tmp, self.processes, self.ha = tmp, [], args.ha
        self.ports = [free_port(), free_port()]
        self.front = free_port()
        env = {"RAGWAY__AUTH__MODE": "open", "RUST_LOG": "warn"}
        if self.ha:
            env.update(self.qdrant_cluster(args))
            env.update(self.redis_sentinels())
        else:
            env.update(self.qdrant_server(args))
            env.update(self.redis_server())
        config = f"{tmp}/ragway.toml"
        with open(config, "w") as f:
            f.write("[generation]\nmax_tokens = 8\n")
        self.replicas = [
            self.spawn(f"ragway-{i + 1}", [args.ragway, "--listen", f"127.0.0.1:{port}", "--data-dir",
                                           f"{tmp}/ragway-{i + 1}", "--config", config], env)
            for i, port in enumerate(self.ports)
        ]
        self.nginx = self.spawn("nginx", ["nginx", "-p", f"{tmp}/nginx", "-c", self.nginx_conf(),
                                          "-g", "daemon off;"])

    def qdrant_node(self, args, name, extra_env=None, argv=()):
        http, grpc = free_port(), free_port()
        process = self.spawn(name, [args.qdrant, *argv], {
            "QDRANT__STORAGE__STORAGE_PATH": f"{self.tmp}/{name}",
            "QDRANT__SERVICE__HTTP_PORT": str(http),
            "QDRANT__SERVICE__GRPC_PORT": str(grpc),
            "QDRANT__TELEMETRY_DISABLED": "true",
            **(extra_env or {}),
        })
        process.http, process.grpc = http, grpc
        return process

    def qdrant_server(self, args):
        self.qdrants = [self.qdrant_node(args, "qdrant")]
        return {"RAGWAY__STORE__KIND": "qdrant", "RAGWAY__STORE__URL": f"http://127.0.0.1:{self.qdrants[0].grpc}"}

    def qdrant_cluster(self, args):
        """Three nodes in distributed mode: the first with its peer URI, the others joining it."""
        p2p = [free_port() for _ in range(3)]
        self.qdrants = []
        for i, port in enumerate(p2p):
            argv = ["--uri", f"http://127.0.0.1:{port}"]
            if i > 0:
                argv += ["--bootstrap", f"http://127.0.0.1:{p2p[0]}"]
            self.qdrants.append(self.qdrant_node(args, f"qdrant-{i + 1}", {
                "QDRANT__CLUSTER__ENABLED": "true", "QDRANT__CLUSTER__P2P__PORT": str(port)}, argv))
        urls = ", ".join(f'"http://127.0.0.1:{q.grpc}"' for q in self.qdrants)
        return {"RAGWAY__STORE__KIND": "qdrant", "RAGWAY__STORE__URLS": f"[{urls}]"}

    def redis_node(self, name, port, extra=()):
        os.makedirs(f"{self.tmp}/{name}")
        process = self.spawn(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                    "--dir", f"{self.tmp}/{name}", "--appendonly", "yes",
                                    "--appendfsync", "always", *extra])
        process.port = port
        return process

    def redis_server(self):
        self.redises = [self.redis_node("redis", free_port())]
        self.sentinels = []
        return {"RAGWAY__CACHE__REDIS__URL": f"redis://127.0.0.1:{self.redises[0].port}/0"}

    def redis_sentinels(self):
        """A primary and its replica, and three sentinels (quorum 2) that fail the primary over
        once it has not answered for a second."""
        primary = free_port()
        self.redises = [self.redis_node("redis-1", primary),
                        self.redis_node("redis-2", free_port(), ["--replicaof", "127.0.0.1", str(primary)])]
        self.sentinels = []
        for i in range(3):
            port = free_port()
            conf = f"{self.tmp}/sentinel-{i + 1}.conf"
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                        f"sentinel monitor mymaster 127.0.0.1 {primary} 2\n"
                        "sentinel down-after-milliseconds mymaster 1000\n"
                        "sentinel failover-timeout mymaster 5000\n")
            sentinel = self.spawn(f"sentinel-{i + 1}", ["redis-server", conf, "--sentinel"])
            sentinel.port = port
            self.sentinels.append(sentinel)
        sentinels = ", ".join(f'"127.0.0.1:{s.port}"' for s in self.sentinels)
        return {"RAGWAY__CACHE__REDIS__SENTINELS": f"[{sentinels}]", "RAGWAY__CACHE__REDIS__MASTER": "mymaster"}

    def redis_primary(self):
        """The Redis process that is the primary now (as the first sentinel that answers says)."""
        for sentinel in self.sentinels:
            out = subprocess.run(["redis-cli", "-p", str(sentinel.port), "SENTINEL", "get-master-addr-by-name",
                                  "mymaster"], capture_output=True, text=True, timeout=10).stdout.split()
            if len(out) == 2:
                return next(r for r in self.redises if r.port == int(out[1]))
        return self.redises[0]

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
        for qdrant in self.qdrants:
            qdrant.start()
            wait_until(qdrant.name, ready(f"http://127.0.0.1:{qdrant.http}/readyz"))
        for process in self.redises + self.sentinels:
            process.start()
        for process in self.redises + self.sentinels:
            wait_until(process.name, redis_ready(process.port))
        if self.ha:
            wait_until("the Qdrant cluster", lambda: len(parse_peers(self.qdrants[0])) == 3)
            wait_until("the Redis replica", lambda: "master_link_status:up" in redis_cli(
                self.redises[1].port, "INFO", "replication"))
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


class Verifier(threading.Thread):
    """Beside wrk, through nginx: writes one document at a time (its id also in its metadata, so
    that it can be read back by id), deletes every fifth one it wrote, and counts what was
    acknowledged and refused in the phase now running."""

    def __init__(self, stack):
        super().__init__(daemon=True)
        self.stack, self.running, self.phase = stack, True, None
        self.acknowledged, self.deleted, self.refused = [], [], {}

    def run(self):
        base = self.stack.url(f"/v1/collections/{COLLECTION}")
        n = 0
        while self.running:
            n += 1
            doc = f"v-{n}"
            body = {"documents": [{"id": doc, "text": f"Verifier note {doc} about the lighthouse tide tables.",
                                   "metadata": {"vid": doc}}]}
            status, _ = call("POST", f"{base}/documents", body, timeout=30)
            if status == 200:
                self.acknowledged.append(doc)
            else:
                self.refused[self.phase] = self.refused.get(self.phase, 0) + 1
            if n % 5 == 0 and self.acknowledged:
                victim = self.acknowledged[len(self.acknowledged) // 2]
                status, _ = call("DELETE", f"{base}/documents/{victim}", timeout=30)
                if status in (200, 204):
                    self.acknowledged.remove(victim)
                    self.deleted.append(victim)
                else:
                    self.refused[self.phase] = self.refused.get(self.phase, 0) + 1
            time.sleep(0.05)

    def read_back(self):
        """(acknowledged ones not found, deleted ones found) — each read by id."""
        def found(doc):
            for _ in range(3):
                status, body = call("POST", self.stack.url(f"/v1/collections/{COLLECTION}/search"),
                                    {"query": "lighthouse tide tables", "top_k": 1, "filter": {"vid": doc}})
                if status == 200:
                    return any(h.get("doc_id") == doc for h in body.get("hits", []))
                time.sleep(1)
            return None
        missing = [d for d in self.acknowledged if found(d) is not True]
        back = [d for d in self.deleted if found(d) is not False]
        return missing, back


def phases(stack):
    """Each fault and its recovery, in order: (name, what to do before the phase runs)."""
    replica_two = stack.replicas[1]
    replica_back = ("ragway-2 restarted",
                    lambda: heal(stack, replica_two, ready(f"http://127.0.0.1:{stack.ports[1]}/healthz")))
    if not stack.ha:
        redis, qdrant = stack.redises[0], stack.qdrants[0]
        return [
            ("before: 2 replicas, Qdrant, Redis", None),
            ("ragway-2 SIGKILLed", replica_two.kill),
            replica_back,
            ("Redis SIGKILLed", redis.kill),
            ("Redis restarted", lambda: heal(stack, redis, redis_ready(redis.port))),
            ("Qdrant SIGKILLed", qdrant.kill),
            ("Qdrant restarted", lambda: heal(stack, qdrant, ready(f"http://127.0.0.1:{qdrant.http}/readyz"))),
            ("Qdrant restarted, next phase", None),
        ]
    node = stack.qdrants[1]
    killed = {}

    def kill_primary():
        killed["redis"] = stack.redis_primary()
        killed["redis"].kill()

    def primary_back():
        old = killed["redis"]
        heal(stack, old, redis_ready(old.port))
        wait_until("the old primary as a replica", lambda: "master_link_status:up" in redis_cli(
            old.port, "INFO", "replication"))

    return [
        ("before: 2 replicas, 3 Qdrant nodes, Redis + replica + 3 sentinels", None),
        ("ragway-2 SIGKILLed", replica_two.kill),
        replica_back,
        ("Qdrant node 2 SIGKILLed", node.kill),
        ("Qdrant node 2 restarted", lambda: heal(stack, node, ready(f"http://127.0.0.1:{node.http}/readyz"))),
        ("Redis primary SIGKILLed", kill_primary),
        ("old Redis primary back (as a replica)", primary_back),
        ("all back, next phase", None),
    ]


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
        verifier = Verifier(stack) if stack.ha else None
        if verifier:
            verifier.start()
        rows = []
        for phase, action in phases(stack):
            if action:
                action()
            if verifier:
                verifier.phase = phase
            print(f"loadtest: {phase} ({args.seconds} s)", file=sys.stderr)
            refused_before = dict(verifier.refused) if verifier else {}
            rows.append(row(phase, run_phase(stack, script)))
            if verifier:
                rows[-1] += f" {verifier.refused.get(phase, 0) - refused_before.get(phase, 0)} |"
        print(f"\n{args.passages} passages, wrk -t2 -c{args.connections}, {args.seconds} s per phase, through nginx; "
              f"of 20 requests {19 - args.ingests} search, 1 query, {args.ingests} ingest:\n")
        extra = (" verifier writes refused |", "---|") if verifier else ("", "")
        print(f"| phase | QPS | p50 ms | p99 ms | errors | cache hits | modes |{extra[0]}")
        print(f"|---|---|---|---|---|---|---|{extra[1]}")
        print("\n".join(rows))
        if verifier:
            verifier.running = False
            verifier.join(60)
            missing, back = verifier.read_back()
            print(f"\nverifier: {len(verifier.acknowledged)} documents acknowledged and not deleted, "
                  f"{len(missing)} of them not found{': ' + ', '.join(missing[:10]) if missing else ''}; "
                  f"{len(verifier.deleted)} deleted, {len(back)} of them found again"
                  f"{': ' + ', '.join(back[:10]) if back else ''} (each read back by id)")
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
    parser.add_argument("--ha", action="store_true",
                        help="a three-node Qdrant cluster and Redis with Sentinel, a verifier beside wrk")
    args = parser.parse_args()
    main()
