//! Equal-priority LLM backends share the load by requests in flight. The backends are scripted
//! OpenAI-compatible servers (ragway_e2e::ScriptedOpenAi).

mod common;

use std::time::Duration;

use common::corpus;
use ragway_e2e::{Script, ScriptedOpenAi, Server, ServerOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn equal_priority_backends_share_load_by_requests_in_flight() -> anyhow::Result<()> {
    let busy = ScriptedOpenAi::start(Script::Slow {
        text: "from a [1].".into(),
        delay_ms: 1_500,
    })
    .await?;
    let idle = ScriptedOpenAi::start(Script::Answer("from b [1].".into())).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: format!(
            "[[llm]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"a\"\npriority = 0\n\n\
             [[llm]]\nname = \"b\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"b\"\npriority = 0\n",
            busy.base_url, idle.base_url
        ),
        ..Default::default()
    };
    let server = std::sync::Arc::new(Server::start(dir.path(), &options).await?);
    server.post("/v1/collections", &json!({"name": "facts"})).await?;
    server.post("/v1/collections/facts/documents", &corpus()).await?;
    let question = json!({"query": "What pressure is used to brew an espresso?", "top_k": 2});

    // Both idle: the first in the list takes the request, and is busy with it for 1.5 s.
    let first = {
        let (server, question) = (server.clone(), question.clone());
        tokio::spawn(async move { server.post("/v1/collections/facts/query", &question).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Now `a` has a request in flight and `b` none: `b` takes the next one.
    let second = server.post("/v1/collections/facts/query", &question).await?;
    let first = first.await??;
    assert_eq!(first.body["stages"]["llm"], "a", "{:?}", first.body);
    assert_eq!(second.body["stages"]["llm"], "b", "{:?}", second.body);
    // Sharing load is not degrading: both are primary answers.
    assert_eq!(
        (first.body["mode"].clone(), second.body["mode"].clone()),
        (json!("normal"), json!("normal"))
    );
    assert_eq!((busy.calls(), idle.calls()), (1, 1));
    Ok(())
}
