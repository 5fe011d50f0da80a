//! A remote OpenAI-compatible backend, and falling back to the local model when it fails.
//! The remote is a scripted stand-in (see ragway_e2e::ScriptedOpenAi), so it can fail on cue.

mod common;

use common::{corpus, doc_ids};
use ragway_e2e::{Script, ScriptedOpenAi, Server, ServerOptions, NO_ANSWER_CACHES};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn remote_backend_answers_and_local_model_takes_over_when_it_fails() -> anyhow::Result<()> {
    let remote = ScriptedOpenAi::start(Script::Answer("Nine bars of pressure [1].".into())).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        // The same question is asked again once the remote fails: no cached answer.
        config_toml: format!(
            "{NO_ANSWER_CACHES}\n[[llm]]\nname = \"remote\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"scripted-model\"\napi_key_env = \"TEST_REMOTE_KEY\"\n\n[[llm]]\nname = \"local\"\nkind = \"local\"\nmodel = \"{}\"\n",
            remote.base_url,
            ragway_e2e::models_dir().join("smollm2-135m-instruct").display()
        ),
        env: vec![("TEST_REMOTE_KEY".into(), "sk-test".into())],
    };
    let server = Server::start(dir.path(), &options).await?;
    server.post("/v1/collections", &json!({"name": "facts"})).await?;
    server.post("/v1/collections/facts/documents", &corpus()).await?;

    let question = json!({"query": "What pressure is used to brew an espresso?", "top_k": 2});
    let answer = server.post("/v1/collections/facts/query", &question).await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["answer"], "Nine bars of pressure [1].");
    assert_eq!(answer.body["mode"], "normal");
    assert_eq!(answer.body["stages"]["llm"], "remote");
    assert_eq!(
        doc_ids(&answer.body, "citations"),
        ["espresso"],
        "only [1] is cited"
    );
    assert_eq!(answer.body["usage"]["prompt_tokens"], 11);
    // The remote saw the grounded prompt, the configured model and the key.
    let sent = remote.last_request().unwrap_or_default();
    assert_eq!(sent["model"], "scripted-model");
    let passages = sent["messages"][0]["content"].as_str().unwrap_or_default();
    assert!(passages.contains("[1] (from espresso)"), "{passages}");
    let asked = sent["messages"][1]["content"].as_str().unwrap_or_default();
    assert!(asked.starts_with("Question: What pressure"), "{asked}");

    remote.set(Script::Status(500));
    let fallback = server.post("/v1/collections/facts/query", &question).await?;
    assert_eq!(fallback.status, 200, "{:?}", fallback.body);
    assert_eq!(fallback.body["mode"], "fallback_llm");
    assert_eq!(fallback.mode_header.as_deref(), Some("fallback_llm"));
    assert_eq!(fallback.body["stages"]["llm"], "local");
    assert_eq!(
        fallback.body["degraded"],
        json!([{"stage": "llm:remote", "reason": "error"}])
    );
    assert!(!fallback.body["answer"].as_str().unwrap_or_default().is_empty());
    assert!(remote.calls() >= 2);
    server.stop().await
}
