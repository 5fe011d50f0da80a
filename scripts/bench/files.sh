#!/usr/bin/env bash
# How fast files are read: a 60-page document (prose, a table per page) made by LibreOffice as PDF
# and DOCX, read as /files reads them (extraction, then cutting by the embedder's tokens), and
# then uploaded to a ragway and indexed (the job's whole time, embedding included).
#   scripts/bench/files.sh [ROUNDS]      (apt-get install libreoffice-writer-nogui)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
rounds=${1:-5}
models="${RAGWAY_MODELS:-$HOME/.cache/ragway/models}"
command -v soffice >/dev/null || { echo "soffice is needed: apt-get install -y libreoffice-writer-nogui" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
pid=
python3 - "$work/long.html" <<'PY'
import random, sys
random.seed(7)
words = "espresso grinder milk steam shot crema roast bean water pressure temperature cup barista order counter till shift rota delivery supplier invoice".split()
parts = ["<!DOCTYPE html><html><body>"]
for page in range(1, 61):
    style = ' style="page-break-before: always"' if page > 1 else ""
    parts.append(f"<h1{style}>Section {page}</h1>")
    for _ in range(4):
        parts.append("<p>" + " ".join(random.choice(words) for _ in range(70)) + ".</p>")
    rows = "".join(f"<tr><td>item {page}.{r}</td><td>{random.randint(1, 99)}.00</td></tr>" for r in range(4))
    parts.append(f"<table border=1><tr><th>Item</th><th>Price</th></tr>{rows}</table>")
parts.append("</body></html>")
open(sys.argv[1], "w").write("\n".join(parts))
PY
for target in pdf:writer_pdf_Export 'docx:MS Word 2007 XML'; do
  timeout 300 soffice --headless -env:UserInstallation="file://$work/profile" --infilter="HTML (StarWriter)" \
    --convert-to "$target" --outdir "$work" "$work/long.html" >/dev/null 2>&1
done
cargo build --release -q -p ragway-files --example read
cargo build --release -q -p ragway-gateway
"$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/read" \
  "$models/all-minilm-l6-v2" "$rounds" "$work/long.pdf" "$work/long.docx" "$work/long.html"

# End to end: upload the PDF, wait for its job.
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/ragway"
mkdir -p "$work/data"
RAGWAY_MODELS="$models" RAGWAY__AUTH__MODE=open RUST_LOG=warn,ragway=info "$bin" --listen 127.0.0.1:0 --data-dir "$work/data" 2> "$work/data/log" &
pid=$!
started "$pid"
base="http://$(wait_for_address "$work/data/log" "$pid" "$bin")"
curl -sf --max-time 60 "$base/v1/collections" -H 'content-type: application/json' -d '{"name": "bench"}' >/dev/null
for round in $(seq 1 3); do
  cp "$work/long.pdf" "$work/long-$round.pdf"
  t0=$(date +%s.%N)
  job=$(curl -sf --max-time 300 "$base/v1/collections/bench/files" -F "file=@$work/long-$round.pdf" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
  t1=$(date +%s.%N)
  for _ in $(seq 1 1200); do
    state=$(curl -sf --max-time 10 "$base/v1/jobs/$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    [ "$state" = done ] && break
    [ "$state" = failed ] && { echo "job $job failed" >&2; exit 1; }
    sleep 0.2
  done
  [ "$state" = done ] || { echo "job $job not done within 240 s" >&2; exit 1; }
  t2=$(date +%s.%N)
  python3 -c "import sys; n=sys.argv[1]; a,b,c=map(float,sys.argv[2:]); print(f'upload {n}: 202 after {(b-a)*1e3:.0f} ms, indexed after {c-a:.1f} s: {60/(c-a):.1f} pages/s end to end')" "$round" "$t0" "$t1" "$t2"
done
