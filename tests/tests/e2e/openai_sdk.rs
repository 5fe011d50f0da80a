//! ragway as the official `openai` Python SDK (PyPI, in the test venv) sees it: models, plain and
//! streamed chat with usage, content parts, `n`, citations where frontends look, embeddings in
//! the SDK's default (base64) and float encodings, `dimensions`; and follow-up questions in a chat
//! over a collection that retrieve the right passages, with the LLM rewrite and with the fallback.
//! The LLM is the scripted OpenAI-compatible stand-in (ragway_e2e::ScriptedOpenAi).

use crate::common;

use std::time::Duration;

use common::corpus;
use ragway_e2e::{Script, ScriptedOpenAi, Server, ServerOptions, NO_ANSWER_CACHES};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "sdk-admin-key";

fn options(llm: &ScriptedOpenAi) -> ServerOptions {
    ServerOptions {
        config_toml: format!(
            "{NO_ANSWER_CACHES}\n[[llm]]\nname = \"scripted\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nmax_retries = 0\n",
            llm.base_url
        ),
        env: vec![("RAGWAY_ADMIN_KEY".into(), ADMIN.into())],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_sdk_works_unchanged() -> anyhow::Result<()> {
    let python = ragway_e2e::python::with("openai");
    let answer = "Etna erupts often [1].";
    let llm = ScriptedOpenAi::start(Script::Answer(answer.into())).await?;
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &options(&llm)).await?;
    server.post("/v1/collections", &json!({"name": "facts"})).await?;
    assert_eq!(
        server
            .post("/v1/collections/facts/documents", &corpus())
            .await?
            .status,
        200
    );
    let args = [
        server.url("/v1"),
        "facts".into(),
        "scripted".into(),
        answer.into(),
    ];
    ragway_e2e::python::check(
        python,
        "openai_sdk/check.py",
        args.to_vec(),
        Duration::from_secs(180),
    )
    .await?;
    Ok(())
}

fn topics() -> Value {
    json!({"documents": [
        {"id": "violin-wood", "text": "The violin is made of spruce for the top and maple for the back, sides and neck. What it is made of shapes its tone."},
        {"id": "violin-strings", "text": "Violin strings were made of gut; today they are made of steel or synthetic cores wound with metal."},
        {"id": "transistor", "text": "The transistor is a semiconductor device that amplifies or switches electrical signals. Transistors are made of silicon, or earlier germanium, doped to form junctions."},
        {"id": "bridges", "text": "Suspension bridges hang their deck from cables slung between towers."}
    ]})
}

/// The document the chat answer over `notes` ranked first (the best-scored of its citations,
/// which are listed in prompt order), and `stages.rewrite`.
async fn follow_up(server: &Server) -> anyhow::Result<(String, String)> {
    let body = json!({"model": "notes", "messages": [
        {"role": "user", "content": "Tell me about the transistor."},
        {"role": "assistant", "content": "It is a semiconductor device."},
        {"role": "user", "content": "What is it made of?"}
    ]});
    let reply = server.post("/v1/chat/completions", &body).await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let citations = reply.body["ragway"]["citations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let best = citations
        .iter()
        .max_by(|a, b| {
            a["score"]
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b["score"].as_f64().unwrap_or(0.0))
        })
        .and_then(|c| c["doc_id"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        reply.body["citations"].as_array().is_some_and(|c| !c.is_empty()),
        "top-level citations: {:?}",
        reply.body
    );
    let rewrite = reply.body["ragway"]["stages"]["rewrite"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if rewrite == "llm" {
        // Two calls to the scripted backend, each reporting 11 prompt tokens: the rewrite (7
        // completion tokens) and the answer (streamed, a token a word: 6). The usage counts
        // both, as the tenant is charged, and names the rewrite's apart.
        let stages = &reply.body["ragway"]["stages"];
        assert_eq!(
            stages["rewrite_usage"],
            json!({"prompt_tokens": 11, "completion_tokens": 7}),
            "{stages:?}"
        );
        assert_eq!(
            reply.body["usage"],
            json!({"prompt_tokens": 22, "completion_tokens": 13, "total_tokens": 35}),
            "{:?}",
            reply.body
        );
    }
    Ok((best, rewrite))
}

#[tokio::test]
async fn a_follow_up_question_retrieves_the_topic_of_the_conversation() -> anyhow::Result<()> {
    // The scripted backend answers every call alike: as the rewriter, its text is the standalone
    // question.
    let llm = ScriptedOpenAi::start(Script::Answer("What is a transistor made of?".into())).await?;
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &options(&llm)).await?;
    server.post("/v1/collections", &json!({"name": "notes"})).await?;
    assert_eq!(
        server
            .post("/v1/collections/notes/documents", &topics())
            .await?
            .status,
        200
    );
    // Alone, the question is about what things are made of: the violins win.
    let alone = server
        .post(
            "/v1/collections/notes/search",
            &json!({"query": "What is it made of?", "top_k": 2}),
        )
        .await?;
    assert!(
        alone.body["hits"][0]["doc_id"]
            .as_str()
            .is_some_and(|d| d.starts_with("violin")),
        "{:?}",
        alone.body
    );

    let calls = llm.calls();
    let (best, rewrite) = follow_up(&server).await?;
    assert_eq!(rewrite, "llm");
    assert_eq!(best, "transistor", "rewritten by the LLM");
    let sent = llm.last_request().unwrap_or_default();
    assert!(
        sent.to_string().contains("It is a semiconductor device."),
        "the answer prompt keeps the recent turns: {sent}"
    );
    assert_eq!(llm.calls(), calls + 2, "one rewrite, one answer");

    let fault = json!({"stage": "llm:scripted", "kind": "error", "duration_s": 60});
    assert_eq!(
        server
            .admin(Method::POST, "/admin/faults", ADMIN, Some(&fault))
            .await?
            .status,
        200
    );
    let (best, rewrite) = follow_up(&server).await?;
    assert_eq!(rewrite, "concat", "the LLM is down: the deterministic fallback");
    assert_eq!(best, "transistor", "by the fallback");
    Ok(())
}
