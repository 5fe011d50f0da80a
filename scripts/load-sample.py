"""Loads ragway's own documentation (README.md, docs/*.md) into the collection `ragway-docs`.

Usage: python3 scripts/load-sample.py http://127.0.0.1:8080 [server pid]
Waits for the server to answer /healthz first (and gives up if the pid exits). Re-running is
cheap: unchanged documents are skipped by their content hash.

When the server wants keys (auth.mode = "keys"), it uses the admin key in RAGWAY_ADMIN_KEY to
find or create the tenant `local`, makes it a new API key, loads the documents as that tenant and
prints the key as its last line: `RAGWAY_KEY=<key>`.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

COLLECTION = "ragway-docs"


def call(method, url, body=None, key=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
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


def local_tenant_key(base):
    """A new API key of the tenant `local` (created when missing); None when the server is open."""
    status, ready = call("GET", f"{base}/readyz")
    if ready.get("auth") != "keys":
        return None
    admin = os.environ.get("RAGWAY_ADMIN_KEY")
    if not admin:
        sys.exit("the server wants API keys: set RAGWAY_ADMIN_KEY to its admin key to create one")
    status, body = call("GET", f"{base}/admin/tenants", key=admin)
    if status != 200:
        sys.exit(f"cannot list tenants: {status} {body}")
    tenant = next((t for t in body["tenants"] if t["name"] == "local"), None)
    if tenant is None:
        status, tenant = call("POST", f"{base}/admin/tenants", {"name": "local"}, key=admin)
        if status != 201:
            sys.exit(f"cannot create the tenant `local`: {status} {tenant}")
    status, body = call("POST", f"{base}/admin/tenants/{tenant['id']}/keys", key=admin)
    if status != 201:
        sys.exit(f"cannot create a key: {status} {body}")
    return body["key"]


def main():
    base = sys.argv[1]
    pid = sys.argv[2] if len(sys.argv) > 2 else None
    wait_for(base, pid)
    key = local_tenant_key(base)
    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md"] + sorted((root / "docs").glob("*.md"))
    status, body = call("POST", f"{base}/v1/collections", {"name": COLLECTION}, key=key)
    if status not in (201, 409):
        sys.exit(f"cannot create {COLLECTION}: {status} {body}")
    documents = [
        {"id": str(f.relative_to(root)), "text": f.read_text(), "metadata": {"kind": "docs"}}
        for f in files
    ]
    status, body = call("POST", f"{base}/v1/collections/{COLLECTION}/documents", {"documents": documents}, key=key)
    if status != 200:
        sys.exit(f"cannot load the sample documents: {status} {body}")
    print(f"sample collection {COLLECTION}: {body['indexed']} documents indexed, {body['unchanged']} unchanged")
    if key:
        print(f"RAGWAY_KEY={key}")


if __name__ == "__main__":
    main()
