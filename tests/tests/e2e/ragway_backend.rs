//! One ragway serving its local model as a real OpenAI-compatible backend of another, and the
//! OpenAI-compatible chat endpoint for collections and bare LLMs.

use crate::common;

use common::{corpus, doc_ids};
use ragway_e2e::{Server, ServerOptions, NO_ANSWER_CACHES};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_second_ragway_is_a_real_llm_backend_and_chat_speaks_openai() -> anyhow::Result<()> {
    let upstream_dir = tempfile::tempdir()?;
    let upstream = Server::start(upstream_dir.path(), &ServerOptions::default()).await?;

    // The upstream's pool, as an OpenAI client sees it.
    let models = upstream.get("/v1/models").await?;
    assert_eq!(models.body["object"], "list");
    assert!(models.body["data"]
        .as_array()
        .is_some_and(|d| d.iter().any(|m| m["id"] == "local" && m["ragway_kind"] == "llm")));
    let chat = upstream
        .post(
            "/v1/chat/completions",
            &json!({"model": "local", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 24, "temperature": 0}),
        )
        .await?;
    assert_eq!(chat.status, 200, "{:?}", chat.body);
    assert_eq!(chat.mode_header.as_deref(), Some("normal"));
    assert_eq!(chat.body["object"], "chat.completion");
    let text = chat.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("Paris"), "{text}");
    assert!(chat.body["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0);

    // The local model streams too: OpenAI chunks, token by token.
    let streamed = json!({"model": "local", "stream": true, "max_tokens": 24, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let (status, _, _, body) = upstream.post_stream("/v1/chat/completions", &streamed).await?;
    assert_eq!(status, 200, "{body}");
    let pieces: Vec<String> = ragway_e2e::parse_sse(&body)
        .iter()
        .filter_map(|c| serde_json::from_str::<serde_json::Value>(&c.data).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .filter(|t| !t.is_empty())
        .collect();
    assert!(pieces.len() > 2, "several chunks: {pieces:?}");
    assert!(pieces.concat().contains("Paris"), "{pieces:?}");

    let gateway_dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: format!(
            // The same question is asked again once the upstream is gone: no cached answer.
            "{NO_ANSWER_CACHES}\n[[llm]]\nname = \"upstream\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"local\"\ntimeout_ms = 60000\nmax_retries = 0\n",
            upstream.base
        ),
        ..Default::default()
    };
    let gateway = Server::start(gateway_dir.path(), &options).await?;
    gateway.seeded(None, "facts", &corpus()).await?;

    let question = json!({"query": "What pressure is used to brew an espresso?", "top_k": 2});
    let answer = gateway.post("/v1/collections/facts/query", &question).await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["mode"], "normal");
    assert_eq!(answer.body["stages"]["llm"], "upstream");
    assert!(!answer.body["answer"].as_str().unwrap_or_default().is_empty());
    assert!(
        answer.body["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "usage comes from upstream"
    );

    // Chat over a collection: RAG, with the mode in the header and the `ragway` field.
    let rag_chat = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "facts", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What pressure is used to brew an espresso?"}
            ]}),
        )
        .await?;
    assert_eq!(rag_chat.status, 200, "{:?}", rag_chat.body);
    assert_eq!(rag_chat.mode_header.as_deref(), Some("normal"));
    assert_eq!(rag_chat.body["ragway"]["mode"], "normal");
    let cited: Vec<String> = rag_chat.body["ragway"]["citations"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|x| x["doc_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(cited.contains(&"espresso".to_string()), "{cited:?}");
    let unknown = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await?;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (404, Some("model_not_found"))
    );

    // The upstream goes away: no LLM is left, so the gateway quotes passages.
    upstream.stop().await?;
    let extractive = gateway.post("/v1/collections/facts/query", &question).await?;
    assert_eq!(extractive.status, 200);
    assert_eq!(extractive.body["mode"], "extractive");
    assert_eq!(
        extractive.body["degraded"],
        json!([{"stage": "llm:upstream", "reason": "error"}])
    );
    assert_eq!(
        doc_ids(&extractive.body, "citations").first().map(String::as_str),
        Some("espresso")
    );
    gateway.stop().await
}
