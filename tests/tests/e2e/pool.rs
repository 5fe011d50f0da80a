//! Equal-priority LLM backends share the load by requests in flight, and otherwise route a
//! passage set to the same backend (prefix affinity, so its prompt cache can hit). The backends
//! are scripted OpenAI-compatible servers (ragway_e2e::ScriptedOpenAi).

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::corpus;
use ragway_e2e::{Script, ScriptedOpenAi, Server, ServerOptions, NO_ANSWER_CACHES};
use serde_json::json;

async fn two_backends(a: &ScriptedOpenAi, b: &ScriptedOpenAi) -> anyhow::Result<(Server, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        // Questions are asked again: the answer caches would hide the routing.
        config_toml: format!(
            "{NO_ANSWER_CACHES}\n[[llm]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"a\"\npriority = 0\n\n\
             [[llm]]\nname = \"b\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"b\"\npriority = 0\n",
            a.base_url, b.base_url
        ),
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;
    server.seeded(None, "facts", &corpus()).await?;
    Ok((server, dir))
}

#[tokio::test(flavor = "multi_thread")]
async fn equal_priority_backends_share_load_by_requests_in_flight() -> anyhow::Result<()> {
    let slow = |text: &str| Script::Slow {
        text: text.into(),
        delay_ms: 1_500,
    };
    let a = ScriptedOpenAi::start(slow("from a [1].")).await?;
    let b = ScriptedOpenAi::start(slow("from b [1].")).await?;
    let (server, _dir) = two_backends(&a, &b).await?;
    let server = std::sync::Arc::new(server);
    let question = json!({"query": "What pressure is used to brew an espresso?", "top_k": 2});

    // Both idle: one takes the request, and is busy with it for 1.5 s.
    let first = {
        let (server, question) = (server.clone(), question.clone());
        tokio::spawn(async move { server.post("/v1/collections/facts/query", &question).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same passages again, but their backend has a request in flight: the other one takes it.
    let second = server.post("/v1/collections/facts/query", &question).await?;
    let first = first.await??;
    let (one, two) = (&first.body["stages"]["llm"], &second.body["stages"]["llm"]);
    assert_ne!(one, two, "{:?} / {:?}", first.body, second.body);
    // Sharing load is not degrading: both are primary answers.
    assert_eq!(
        (first.body["mode"].clone(), second.body["mode"].clone()),
        (json!("normal"), json!("normal"))
    );
    assert_eq!((a.calls(), b.calls()), (1, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_pool_sends_each_passage_set_to_its_own_backend() -> anyhow::Result<()> {
    let a = ScriptedOpenAi::start(Script::Answer("from a [1].".into())).await?;
    let b = ScriptedOpenAi::start(Script::Answer("from b [1].".into())).await?;
    let (server, _dir) = two_backends(&a, &b).await?;
    // One passage each (top_k 1): six questions, six passage sets.
    let questions = [
        "Which volcano in Sicily erupts often?",
        "How do plants make oxygen from sunlight?",
        "What pressure is used to brew coffee shots?",
        "How is a reliable network connection opened with a handshake?",
        "How long is the running race from the Greek legend?",
        "How do bees tell each other where flowers are?",
    ];
    let mut routes: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for _round in 0..3 {
        for question in questions {
            let reply = server
                .post(
                    "/v1/collections/facts/query",
                    &json!({"query": question, "top_k": 1}),
                )
                .await?;
            assert_eq!(reply.body["mode"], "normal", "{:?}", reply.body);
            let backend = reply.body["stages"]["llm"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            routes.entry(question).or_default().insert(backend);
        }
    }
    // Every passage set always met the same backend, and the sets are spread over both.
    assert!(routes.values().all(|r| r.len() == 1), "{routes:?}");
    let used: BTreeSet<&String> = routes.values().flatten().collect();
    assert_eq!(used.len(), 2, "{routes:?}");
    Ok(())
}
