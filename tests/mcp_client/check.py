"""Drives ragway's `/mcp` with the official MCP Python SDK (PyPI `mcp`), as an agent does.

Usage: python check.py <url of /mcp> <tenant key> <collection> <answer text> <other tenant's key>
Both ways a client may connect are tried: the initialize handshake most clients use today
(`legacy`) and the SDK's default (`auto`: it probes for the 2026 protocol and falls back).
Every check asserts on the SDK's parsed objects; any failure raises (non-zero exit).
"""

import asyncio
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

url, key, collection, answer, other_key = sys.argv[1:6]


def client(with_key, mode):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {with_key}"}, timeout=120)
    return Client(streamable_http_client(url, http_client=http), mode=mode, cache=None)


async def check(mode):
    async with client(key, mode) as mcp:
        # A 2026-era connection may leave the server anonymous; the handshake always names it.
        assert mode != "legacy" or mcp.server_info.name == "ragway", mcp.server_info
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        assert set(tools) == {"list_collections", "search", "ask"}, tools
        assert set(tools["search"].input_schema["required"]) == {"collection", "query"}, tools["search"]
        assert set(tools["ask"].input_schema["required"]) == {"collection", "question"}, tools["ask"]

        listed = await mcp.call_tool("list_collections", {})
        assert not listed.is_error, listed
        assert [c["name"] for c in listed.structured_content["collections"]] == [collection], listed

        found = await mcp.call_tool("search", {"collection": collection, "query": "Which volcano in Sicily erupts often?", "top_k": 3})
        assert not found.is_error, found
        assert found.structured_content["mode"] == "normal", found.structured_content
        assert found.structured_content["hits"][0]["doc_id"] == "volcanoes", found.structured_content
        assert len(found.structured_content["hits"]) == 3

        asked = await mcp.call_tool("ask", {"collection": collection, "question": "Which volcano in Sicily erupts often?"})
        assert not asked.is_error, asked
        body = asked.structured_content
        assert body["answer"] == answer, body
        assert body["mode"] == "normal", body
        # No explicit citation in the answer: the passages it was written from are cited.
        assert "volcanoes" in [c["doc_id"] for c in body["citations"]], body

        # ragway's refusals are tool errors an agent can read: code, message and HTTP status.
        missing = await mcp.call_tool("search", {"collection": "nope", "query": "volcano"})
        assert missing.is_error, missing
        assert missing.structured_content["error"]["code"] == "collection_not_found", missing
        assert missing.structured_content["status"] == 404, missing
        blank = await mcp.call_tool("ask", {"collection": collection, "question": "   "})
        assert blank.is_error and blank.structured_content["error"]["code"] == "empty_query", blank

        # Arguments outside the tool's schema: an error naming the argument (as a tool error, which
        # the 2026 protocol asks for so that a model can correct itself, or a protocol error).
        try:
            bad = await mcp.call_tool("search", {"collection": collection})
        except MCPError as e:
            assert "query" in str(e), e
        else:
            assert bad.is_error and "query" in str(bad.content), bad

    # Another tenant's key sees none of this tenant's collections.
    async with client(other_key, mode) as mcp:
        listed = await mcp.call_tool("list_collections", {})
        assert listed.structured_content["collections"] == [], listed
        hidden = await mcp.call_tool("search", {"collection": collection, "query": "volcano"})
        assert hidden.is_error and hidden.structured_content["error"]["code"] == "collection_not_found", hidden

    # Without a valid key nothing is served.
    try:
        async with client("rgw_not-a-key", mode) as mcp:
            await mcp.list_tools()
    except BaseException as e:  # the SDK raises its error for the 401 from its task group
        assert "MCPError" in repr(e) or "401" in repr(e), repr(e)
    else:
        raise AssertionError("an unknown key was served")


async def main():
    for mode in ("legacy", "auto"):
        await check(mode)
        print(f"mode {mode}: ok", flush=True)


asyncio.run(main())
