"""The local model measured from outside, over HTTP, side by side in one sitting.

  chat  URL [URL ...]  streamed /v1/chat/completions on each server in turn (ragway, llama.cpp's
                       server): time to first token and decode tokens/s of RAG prompts no server
                       has seen (prefill), and of a second question over passages seen before
                       (warm: L4 on ragway, the slot's prompt cache on llama-server).
  replay URL           ragway only: a replay of grounded prompts where each shares 3 of its 5
                       passages with the one before (passages in canonical order, as ragway
                       gives them): L4's hit rate (requests, and prompt tokens not prefilled)
                       from /metrics, and TTFT against the same prompts' cold TTFT above.
  query URL [URL ...]  grounded POST /v1/collections/{c}/query p50/p90 on each ragway (the same
                       collection loaded into each first).

Prompts come from ../shared/data/trec-dl-5k (passages and queries). Rows are printed as they
complete; medians over the rounds.
"""
import argparse
import http.client
import json
import statistics
import sys
import time
import urllib.parse
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared/data/trec-dl-5k"
SYSTEM = ("You are ragway, a careful assistant. Answer the question using only the numbered passages. "
          "Cite the passages you use with their numbers in square brackets, like [1]. If the passages "
          "do not contain the answer, say that you do not know.")


def corpus():
    passages = [json.loads(l)["text"] for l in (DATA / "corpus.jsonl").open()]
    queries = [json.loads(l)["text"] for l in (DATA / "queries.jsonl").open()]
    return passages, queries


def messages(tag, passages, question):
    """ragway's grounded prompt (llm/src/prompt.rs) over `passages`: texts, or (doc id, text)."""
    pairs = [p if isinstance(p, tuple) else (f"d{i}", p) for i, p in enumerate(passages)]
    shown = "".join(f"\n\n[{i + 1}] (from {d}) {p.strip()}" for i, (d, p) in enumerate(pairs))
    return [{"role": "system", "content": f"{tag}{SYSTEM}\n\nPassages:{shown}"},
            {"role": "user", "content": f"Question: {question}"}]


def post(base, path, body, timeout=300):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def streamed(base, model, msgs, max_tokens):
    """(ttft s, decode tokens/s, prompt tokens, completion tokens) of one streamed answer."""
    body = {"model": model, "messages": msgs, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    conn, r = post(base, "/v1/chat/completions", body)
    if r.status != 200:
        raise SystemExit(f"{base}: HTTP {r.status}: {r.read()[:300]!r}")
    first = last = None
    usage = None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data:") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[5:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices", []):
            if choice.get("delta", {}).get("content"):
                last = time.perf_counter()
                first = first or last
    conn.close()
    if first is None or usage is None:
        raise SystemExit(f"{base}: no text or no usage in the stream")
    n = usage["completion_tokens"]
    rate = (n - 1) / (last - first) if n > 1 and last > first else float("nan")
    return first - started, rate, usage["prompt_tokens"], n


def chat(args):
    passages, queries = corpus()
    models = dict(u.split("=", 1) if "=" in u else (u, "local") for u in args.urls)
    print("| server | prompt tokens | TTFT cold ms | prefill tokens/s | decode tokens/s | TTFT warm ms |")
    print("|---|---|---|---|---|---|")
    for url, model in models.items():
        streamed(url, model, messages("Warm-up. ", passages[:5], queries[0]), 8)
        cold, prefill, decode, warm, sizes = [], [], [], [], []
        for r in range(args.rounds):
            shown = passages[5 + 5 * r: 10 + 5 * r]
            tag = f"Request {r}. "
            ttft, rate, prompt, _ = streamed(url, model, messages(tag, shown, queries[1 + 2 * r]), args.max_tokens)
            cold.append(ttft)
            prefill.append(prompt / ttft)
            decode.append(rate)
            sizes.append(prompt)
            # Another question over the same passages.
            ttft, _, _, _ = streamed(url, model, messages(tag, shown, queries[2 + 2 * r]), 8)
            warm.append(ttft)
        med = statistics.median
        print(f"| {url} ({model}) | {med(sizes):.0f} | {med(cold) * 1e3:.0f} | {med(prefill):.0f} | "
              f"{med(decode):.1f} | {med(warm) * 1e3:.0f} |", flush=True)


def metric(base, name):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def replay(args):
    passages, queries = corpus()
    url = args.urls[0]
    model = "local"
    # Passage ids: each step keeps 3 of the last 5 (random ones) and adds 2 new.
    import random
    rng = random.Random(7)
    current = list(range(5))
    fresh = 5
    reused_before = metric(url, 'ragway_llm_prefix_tokens_reused_total')
    hits_before = metric(url, 'ragway_cache_requests_total{layer="l4",result="hit"}')
    ttfts, prompt_tokens = [], 0
    for r in range(args.rounds):
        ids = sorted(current)
        ttft, _, prompt, _ = streamed(url, model, messages("", [(f"p{400 + i}", passages[400 + i]) for i in ids], queries[r % len(queries)]), 8)
        ttfts.append(ttft)
        prompt_tokens += prompt
        kept = rng.sample(current, 3)
        current = kept + [fresh, fresh + 1]
        fresh += 2
    reused = metric(url, 'ragway_llm_prefix_tokens_reused_total') - reused_before
    hits = metric(url, 'ragway_cache_requests_total{layer="l4",result="hit"}') - hits_before
    print("| prompts | L4 hits | prompt tokens reused | median TTFT ms |")
    print("|---|---|---|---|")
    print(f"| {args.rounds} | {hits:.0f} ({hits / args.rounds:.0%}) | {reused:.0f} of {prompt_tokens} "
          f"({reused / prompt_tokens:.0%}) | {statistics.median(ttfts) * 1e3:.0f} |", flush=True)


def query(args):
    passages, queries = corpus()
    docs = [{"id": f"p{i}", "text": t} for i, t in enumerate(passages[: args.docs])]
    print("| server | queries | p50 ms | p90 ms | median completion tokens | modes |")
    print("|---|---|---|---|---|---|")
    for url in args.urls:
        conn, r = post(url, "/v1/collections", {"name": "bench"})
        r.read()
        conn.close()
        for start in range(0, len(docs), 100):
            conn, r = post(url, "/v1/collections/bench/documents", {"documents": docs[start:start + 100], "wait": True})
            if r.status not in (200, 201):
                raise SystemExit(f"{url}: ingest HTTP {r.status}: {r.read()[:300]!r}")
            r.read()
            conn.close()
        times, modes, tokens = [], {}, []
        # Questions the chat rounds do not use, each once (L1 stays on: none is asked twice).
        for q in queries[20:][: args.rounds]:
            started = time.perf_counter()
            conn, r = post(url, "/v1/collections/bench/query", {"query": q, "top_k": 5})
            body = json.loads(r.read())
            conn.close()
            times.append(time.perf_counter() - started)
            tokens.append(body.get("usage", {}).get("completion_tokens", 0))
            mode = body.get("mode", f"HTTP {r.status}")
            modes[mode] = modes.get(mode, 0) + 1
        times.sort()
        p = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1e3
        print(f"| {url} | {len(times)} | {p(0.5):.0f} | {p(0.9):.0f} | {statistics.median(tokens):.0f} | {modes} |",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["chat", "replay", "query"])
    parser.add_argument("urls", nargs="+", help="base URLs; for chat URL=MODEL names the model")
    parser.add_argument("--rounds", type=int, default=8, help="chat: at most 16; query: at most 30")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--docs", type=int, default=500)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing")
    {"chat": chat, "replay": replay, "query": query}[args.what](args)


if __name__ == "__main__":
    main()
