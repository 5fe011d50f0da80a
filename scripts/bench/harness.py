"""What the benchmark scripts share: a ragway process that is stopped however the script ends
(an error, Ctrl-C, SIGTERM), and waits that have a limit and say what never came.

    server = Server(binary, data_dir, "scale")      # listening, or the script fails with its log
    server.wait_ready(600)                          # /readyz 200, or fail
    wait_for_jobs(server, ids, within=3600)         # every job done, or fail naming the one that was not
"""

import atexit
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

ADMIN = "bench-admin-key"
_running = []


def fail(message):
    sys.exit(f"bench: {message}")


@atexit.register
def stop_all():
    """Stops every server this script started (also at exit)."""
    for server in list(_running):
        server.kill()


# SIGTERM and SIGHUP end a run the way Ctrl-C does: the servers it started are stopped.
for _signal in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_signal, lambda number, _frame: sys.exit(128 + number))


class Server:
    """A ragway process on a free port, in a process group of its own, its log in `data/log`."""

    def __init__(self, binary, data, name="ragway", env=None, listen_within=300):
        self.data, self.name = data, name
        os.makedirs(data, exist_ok=True)
        self.log_path = os.path.join(data, "log")
        before = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0  # a restart appends
        env = dict(os.environ, RAGWAY__AUTH__MODE="open", RAGWAY_ADMIN_KEY=ADMIN, RUST_LOG="warn,ragway=info",
                   **(env or {}))
        with open(self.log_path, "a") as log:
            self.started = time.time()
            self.process = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--data-dir", data], env=env,
                                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        _running.append(self)
        self.base = None
        while self.base is None:
            if self.process.poll() is not None:
                fail(f"{name} exited with {self.process.returncode} before it listened; last log lines:\n{self.tail()}")
            if time.time() - self.started > listen_within:
                fail(f"{name} did not listen within {listen_within} s; last log lines:\n{self.tail()}")
            with open(self.log_path) as written:
                written.seek(before)
                found = re.findall(r"address=([0-9.:]+)", written.read())
            self.base = f"http://{found[-1]}" if found else None
            time.sleep(0.1)

    def tail(self, lines=20):
        with open(self.log_path, errors="replace") as log:
            return "".join(log.readlines()[-lines:])

    def call(self, method, path, body=None, timeout=600):
        """The JSON answer; a 429 or 503 with Retry-After (a full job queue) is retried as told
        until `timeout` has passed."""
        headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN}"}
        data = None if body is None else json.dumps(body).encode()
        deadline = time.time() + timeout
        while True:
            request = urllib.request.Request(self.base + path, data, headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as e:
                wait = e.headers.get("retry-after")
                if e.code in (429, 503) and wait and time.time() + float(wait) < deadline:
                    time.sleep(float(wait))
                    continue
                fail(f"{method} {path}: {e.code} {e.read()[:500]!r}")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                fail(f"{method} {path}: no answer within {timeout} s ({e}); last log lines:\n{self.tail()}")

    def wait_ready(self, within=600):
        """Seconds from the start until /readyz answered 200."""
        while time.time() - self.started < within:
            if self.process.poll() is not None:
                fail(f"{self.name} exited with {self.process.returncode}; last log lines:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        return time.time() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        fail(f"{self.name}: /readyz not 200 within {within} s; last log lines:\n{self.tail()}")

    def memory(self, field):  # VmRSS or VmHWM, in MiB
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024

    def reset_peak(self):  # VmHWM from now on (Linux: clear_refs 5)
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as refs:
            refs.write("5")

    def kill(self):
        if self in _running:
            _running.remove(self)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def wait_for_jobs(server, collection, within, on_poll=None, every=1.0):
    """Polls until no job of `collection` is queued or running; fails naming a job that failed or
    was cancelled, or what was still unfinished after `within` seconds. `on_poll()` runs at each
    poll (to record progress)."""
    deadline = time.time() + within
    while True:
        jobs = server.call("GET", f"/v1/collections/{collection}/jobs")["jobs"]
        for job in jobs:
            if job["state"] in ("failed", "cancelled"):
                fail(f"job {job['id']} {job['state']}: {'; '.join(job['errors']) or 'no reason given'}")
        if on_poll:
            on_poll()
        waiting = [job for job in jobs if job["state"] in ("queued", "running")]
        if not waiting:
            return
        if time.time() > deadline:
            done = sum(job["documents_done"] for job in waiting)
            fail(f"{len(waiting)} jobs of {collection} unfinished after {within} s "
                 f"({done} of {sum(job['documents_total'] for job in waiting)} of their documents done)")
        time.sleep(every)


VOCABULARY = [f"w{i}" for i in range(5000)]
_CUMULATIVE = []
for _i in range(5000):
    _CUMULATIVE.append((_CUMULATIVE[-1] if _CUMULATIVE else 0.0) + 1.0 / (_i + 1))


def passage(i, salt=""):
    """Passage `i`: 24 words from a 5,000-word vocabulary in Zipf-like frequencies, the same on
    every run and independent of any other passage (so a resumed load writes the same text)."""
    return " ".join(random.Random(f"{salt}{i}").choices(VOCABULARY, cum_weights=_CUMULATIVE, k=24))


def fresh_search(server, lua, collection="scale"):
    """p50 and p99 (ms) of a fresh /search (scripts/bench/fresh-search.lua), one client for 15 s."""
    try:
        out = subprocess.run(["wrk", "-t1", "-c1", "-d15s", "--latency", "-s", lua, server.base],
                             env=dict(os.environ, COLLECTION=collection), capture_output=True, text=True, check=True,
                             timeout=75).stdout
    except subprocess.TimeoutExpired:
        fail("wrk did not end within 75 s")

    def ms(label):
        value = re.search(rf"^\s+{label}%\s+([0-9.]+)(us|ms|s)", out, re.M)
        number, unit = float(value.group(1)), value.group(2)
        return number / 1000 if unit == "us" else number * 1000 if unit == "s" else number

    return ms("50"), ms("99")
