"""Loads ragway's own documentation (README.md, docs/*.md) into the collection `ragway-docs`.

Usage: python3 scripts/load-sample.py http://127.0.0.1:8080 [server pid]
Waits for the server to answer /healthz first (and gives up if the pid exits). Re-running is
cheap: unchanged documents are skipped by their content hash.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

COLLECTION = "ragway-docs"


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_for(base, pid):
    for _ in range(600):
        if pid and not os.path.exists(f"/proc/{pid}"):
            sys.exit("ragway exited during start-up; see its log above")
        try:
            if call("GET", f"{base}/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    sys.exit("ragway did not come up within 10 minutes")


def main():
    base = sys.argv[1]
    pid = sys.argv[2] if len(sys.argv) > 2 else None
    wait_for(base, pid)
    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md"] + sorted((root / "docs").glob("*.md"))
    status, body = call("POST", f"{base}/v1/collections", {"name": COLLECTION})
    if status not in (201, 409):
        sys.exit(f"cannot create {COLLECTION}: {status} {body}")
    documents = [
        {"id": str(f.relative_to(root)), "text": f.read_text(), "metadata": {"kind": "docs"}}
        for f in files
    ]
    status, body = call("POST", f"{base}/v1/collections/{COLLECTION}/documents", {"documents": documents})
    if status != 200:
        sys.exit(f"cannot load the sample documents: {status} {body}")
    print(f"sample collection {COLLECTION}: {body['indexed']} documents indexed, {body['unchanged']} unchanged")


if __name__ == "__main__":
    main()
