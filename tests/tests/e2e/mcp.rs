//! `/mcp` as an agent sees it, through the official MCP Python SDK (PyPI `mcp`, in the test venv):
//! the tools and their schemas, a search and an answer with citations and `mode`, ragway's
//! refusals as tool errors, arguments outside a schema refused naming the argument, one tenant's key
//! blind to another's collections, no key no service, the tenant's request rate; and a dense-store
//! fault showing in the mode of a search made through MCP. The LLM is the scripted stand-in
//! (ragway_e2e::ScriptedOpenAi).

use std::process::Command;
use std::time::Duration;

use crate::common::corpus;
use ragway_e2e::{Script, ScriptedOpenAi, Server, ServerOptions, NO_ANSWER_CACHES};
use reqwest::Method;
use serde_json::json;

const ADMIN: &str = "mcp-admin-key";

#[tokio::test(flavor = "multi_thread")]
async fn the_mcp_sdk_lists_searches_and_asks_with_a_tenant_key() -> anyhow::Result<()> {
    let python = ragway_e2e::python::with("mcp, httpx2");
    let answer = "Mount Etna erupts often.";
    let llm = ScriptedOpenAi::start(Script::Answer(answer.into())).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default()
        .with_config(NO_ANSWER_CACHES)
        .with_scripted_llm("scripted", &llm)
        .with_admin(ADMIN);
    let server = Server::start(dir.path(), &options).await?;
    let (_, key) = server.tenant(ADMIN, &json!({"name": "acme"})).await?;
    let (_, other) = server.tenant(ADMIN, &json!({"name": "globex"})).await?;
    server.seeded(Some(&key), "facts", &corpus()).await?;

    // What the SDK reports only as a failed connection: ragway's 401, as on /v1.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let anonymous = server.post("/mcp", &initialize).await?;
    assert_eq!(anonymous.status, 401, "{:?}", anonymous.body);
    assert_eq!(anonymous.error_code(), Some("missing_api_key"));
    let unknown = server
        .call(Method::POST, "/mcp", Some("rgw_unknown"), Some(&initialize))
        .await?;
    assert_eq!(
        unknown.error_code(),
        Some("invalid_api_key"),
        "{:?}",
        unknown.body
    );

    // The tenant's request rate holds on /mcp as on /v1: over it, 429 with Retry-After.
    let (_, slow) = server
        .tenant(
            ADMIN,
            &json!({"name": "slow", "limits": {"requests_per_second": 0.01, "burst": 1}}),
        )
        .await?;
    let http = ragway_e2e::client()?;
    let post = || {
        http.post(server.url("/mcp"))
            .bearer_auth(&slow)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize)
            .send()
    };
    let first = post().await?;
    assert_eq!(first.status(), 200, "{:?}", first.text().await);
    let second = post().await?;
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    let body: serde_json::Value = second.json().await?;
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");

    let args = vec![
        server.url("/mcp"),
        key.clone(),
        "facts".into(),
        answer.into(),
        other,
    ];
    let bound = Duration::from_secs(180);
    ragway_e2e::python::check(python.clone(), "mcp_client/check.py", args, bound).await?;
    assert!(llm.calls() >= 2, "each `ask` reached the LLM");

    // Through MCP as through /v1, an answer says how it was made.
    let fault = json!({"stage": "dense", "kind": "error", "duration_s": 60});
    let injected = server
        .admin(Method::POST, "/admin/faults", ADMIN, Some(&fault))
        .await?;
    assert_eq!(injected.status, 200);
    let probe = r#"
import asyncio, sys, httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
async def main():
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {sys.argv[2]}"}, timeout=120)
    async with Client(streamable_http_client(sys.argv[1], http_client=http), mode="legacy", cache=None) as mcp:
        found = await mcp.call_tool("search", {"collection": "facts", "query": "Which volcano in Sicily erupts often?"})
        assert not found.is_error, found
        assert found.structured_content["mode"] == "keyword_only", found.structured_content
        assert found.structured_content["hits"][0]["doc_id"] == "volcanoes", found.structured_content
asyncio.run(main())
"#;
    let (url, python2) = (server.url("/mcp"), python);
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(python2);
        command.args(["-c", probe, url.as_str(), key.as_str()]);
        ragway_e2e::bounded::output(&mut command, Duration::from_secs(120))
    })
    .await??;
    assert!(
        output.status.success(),
        "a search through MCP with the dense store down:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
