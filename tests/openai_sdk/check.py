"""Drives ragway with the official `openai` Python SDK, as chat frontends and pipelines do.

Usage: python check.py <base_url of /v1> <collection> <backend> <answer text>
Every check asserts on the SDK's parsed objects; any failure raises (non-zero exit).
"""

import struct
import sys

import openai
from openai import OpenAI

base_url, collection, backend, answer = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key="unused-in-open-mode", max_retries=0)


def refused(code, call):
    try:
        call()
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
        assert e.body and e.body.get("code") == code or (e.body or {}).get("error", {}).get("code") == code, e.body
        return
    raise AssertionError(f"expected a 400 {code}")


ids = {m.id for m in client.models.list()}
assert {collection, backend} <= ids, ids

plain = client.chat.completions.create(model=backend, messages=[{"role": "user", "content": "Hello"}])
assert plain.choices[0].message.content == answer, plain
assert plain.usage.total_tokens > 0

parts = client.chat.completions.create(
    model=backend, messages=[{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "again"}]}]
)
assert parts.choices[0].message.content == answer
image = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
# A remote backend gets what ragway does not interpret as sent (image parts, n, tools, seed, ...);
# a collection (RAG) refuses what it cannot honour.
tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
relayed = client.chat.completions.create(
    model=backend, n=2, seed=1, stop=["\n\n"], tools=[tool], user="someone", messages=[{"role": "user", "content": [image]}]
)
assert relayed.choices[0].message.content == answer, relayed
asked = [{"role": "user", "content": "hi"}]
refused("unsupported_content_part", lambda: client.chat.completions.create(model=collection, messages=[{"role": "user", "content": [image]}]))
refused("unsupported_parameter", lambda: client.chat.completions.create(model=collection, n=2, messages=asked))
refused("unsupported_parameter", lambda: client.chat.completions.create(model=collection, tools=[tool], messages=asked))
one = client.chat.completions.create(model=collection, n=1, user="someone", messages=[{"role": "user", "content": "Which volcano in Sicily erupts often?"}])
assert len(one.choices) == 1

stream = client.chat.completions.create(
    model=backend, stream=True, stream_options={"include_usage": True}, messages=[{"role": "user", "content": "Hello"}]
)
text, usage = "", None
for chunk in stream:
    for choice in chunk.choices:
        text += choice.delta.content or ""
    usage = chunk.usage or usage
assert text.strip() == answer.strip(), repr(text)
assert usage is not None and usage.completion_tokens > 0, usage

rag = client.chat.completions.create(model=collection, messages=[{"role": "user", "content": "Which volcano in Sicily erupts often?"}])
extra = rag.model_extra or {}
cited = [c["doc_id"] for c in extra["ragway"]["citations"]]
assert extra.get("citations") and extra["citations"] == list(dict.fromkeys(cited)), extra
assert extra["ragway"]["mode"] == "normal", extra

default = client.embeddings.create(model="any", input=["espresso pressure", "tcp handshake"])
floats = client.embeddings.create(model="any", input=["espresso pressure", "tcp handshake"], encoding_format="float")
assert len(default.data) == 2 and len(default.data[0].embedding) == 384
def f32(vector):
    # JSON floats are the f32 values' shortest decimals; as f32 again they are exact.
    return struct.unpack(f"{len(vector)}f", struct.pack(f"{len(vector)}f", *vector))


for a, b in zip(default.data, floats.data):
    assert f32(a.embedding) == f32(b.embedding), "base64 and float vectors differ"
client.embeddings.create(model="any", input="x", dimensions=384)
refused("unsupported_dimensions", lambda: client.embeddings.create(model="any", input="x", dimensions=128))
print("openai SDK checks passed")
