//! Streamed answers: Server-Sent Events on `/query` and OpenAI chunks on chat. The first event
//! carries the mode; a primary failing before its first token is replaced silently
//! (`fallback_llm`); one failing mid-stream is announced and the fallback continues the answer.
//! The remote LLMs are scripted OpenAI-compatible servers (ragway_e2e::ScriptedOpenAi).

use crate::common;

use common::corpus;
use ragway_e2e::{
    answers_in_mode, parse_sse, Script, ScriptedOpenAi, Server, ServerOptions, SseEvent, NO_ANSWER_CACHES,
};
use serde_json::{json, Value};

fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data).unwrap_or(Value::Null)
}

/// The text of an OpenAI chunk stream.
fn chunk_text(body: &str) -> String {
    parse_sse(body)
        .iter()
        .filter_map(|c| {
            data(c)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

fn deltas(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .filter_map(|e| data(e)["text"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_answers_carry_the_mode_and_survive_a_failing_backend() -> anyhow::Result<()> {
    let primary = ScriptedOpenAi::start(Script::Answer("Nine bars of pressure [1].".into())).await?;
    let secondary = ScriptedOpenAi::start(Script::Answer("about nine bars [1].".into())).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        // The same question is asked again under failing backends: no cached answer.
        config_toml: format!(
            "{NO_ANSWER_CACHES}\n[resilience]\nstream_idle_timeout_ms = 700\n\n\
             [[llm]]\nname = \"primary\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"p\"\nmax_retries = 0\n\n\
             [[llm]]\nname = \"secondary\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"s\"\nmax_retries = 0\n",
            primary.base_url, secondary.base_url
        ),
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;
    server.seeded(None, "facts", &corpus()).await?;
    let question = json!({"query": "What pressure is used to brew an espresso?", "top_k": 2, "stream": true});

    // Normal: meta first (with the mode), deltas, done.
    let (status, mode, content_type, body) = server
        .post_stream("/v1/collections/facts/query", &question)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    assert_eq!(mode.as_deref(), Some("normal"));
    let events = parse_sse(&body);
    assert_eq!(events[0].event, "meta");
    assert_eq!(data(&events[0])["mode"], "normal");
    assert_eq!(data(&events[0])["citations"][0]["doc_id"], "espresso");
    assert_eq!(deltas(&events), "Nine bars of pressure [1].");
    let done = data(events.last().ok_or_else(|| anyhow::anyhow!("no events"))?);
    assert_eq!(done["event"], "done");
    assert_eq!(done["mode"], "normal");
    assert_eq!(done["stages"]["llm"], "primary");

    // The primary fails before its first token: the fallback answers, and the first event says so.
    primary.set(Script::Status(500));
    let (_, mode, _, body) = server
        .post_stream("/v1/collections/facts/query", &question)
        .await?;
    let events = parse_sse(&body);
    assert_eq!(mode.as_deref(), Some("fallback_llm"));
    assert_eq!(data(&events[0])["mode"], "fallback_llm");
    assert_eq!(
        data(&events[0])["degraded"],
        json!([{"stage": "llm:primary", "reason": "error"}])
    );
    assert_eq!(deltas(&events), "about nine bars [1].");
    assert!(
        events.iter().all(|e| e.event != "degraded"),
        "switching before the first token is silent"
    );

    // The primary breaks mid-answer: announced, and the fallback continues the same answer.
    primary.set(Script::BreakAfter {
        text: "Espresso is brewed at nine bars".into(),
        words: 3,
    });
    let (_, mode, _, body) = server
        .post_stream("/v1/collections/facts/query", &question)
        .await?;
    let events = parse_sse(&body);
    assert_eq!(
        mode.as_deref(),
        Some("normal"),
        "the first event was sent while the primary was fine"
    );
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let announced = names
        .iter()
        .position(|n| *n == "degraded")
        .ok_or_else(|| anyhow::anyhow!("{names:?}"))?;
    assert_eq!(data(&events[announced])["mode"], "fallback_llm");
    assert_eq!(
        data(&events[announced])["degradation"],
        json!({"stage": "llm:primary", "reason": "error"})
    );
    assert_eq!(deltas(&events), "Espresso is brewed about nine bars [1].");
    let done = data(&events[events.len() - 1]);
    assert_eq!(
        (done["mode"].clone(), done["stages"]["llm"].clone()),
        (json!("fallback_llm"), json!("secondary"))
    );
    assert_eq!(
        done["stages"]["llm_parts"],
        json!(["primary", "secondary"]),
        "issue 38 item 5: both writers are named"
    );
    // The fallback was asked to continue the primary's partial answer.
    let continued = secondary.last_request().unwrap_or_default();
    let last = &continued["messages"][continued["messages"].as_array().map(|m| m.len()).unwrap_or(1) - 1];
    assert_eq!(
        (last["role"].clone(), last["content"].clone()),
        (json!("assistant"), json!("Espresso is brewed "))
    );

    // OpenAI chunks for a collection model: the first chunk carries ragway's mode.
    primary.set(Script::Answer("Nine bars [1].".into()));
    let chat = json!({"model": "facts", "stream": true, "messages": [{"role": "user", "content": "What pressure is used to brew an espresso?"}]});
    let (status, mode, _, body) = server.post_stream("/v1/chat/completions", &chat).await?;
    assert_eq!((status, mode.as_deref()), (200, Some("normal")));
    let chunks = parse_sse(&body);
    assert_eq!(chunks.last().map(|c| c.data.as_str()), Some("[DONE]"));
    let first = data(&chunks[0]);
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["ragway"]["mode"], "normal");
    assert_eq!(chunk_text(&body), "Nine bars [1].");

    // A bare LLM of the pool, streamed: its mode is the LLM's alone, in the header and the count.
    let (normal, errors) = (
        answers_in_mode(&server, "normal").await?,
        answers_in_mode(&server, "error").await?,
    );
    let bare = json!({"model": "secondary", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (status, mode, _, body) = server.post_stream("/v1/chat/completions", &bare).await?;
    assert_eq!((status, mode.as_deref()), (200, Some("normal")));
    assert_eq!(chunk_text(&body), "about nine bars [1].");
    assert_eq!(answers_in_mode(&server, "normal").await? - normal, 1.0);
    assert_eq!(answers_in_mode(&server, "error").await? - errors, 0.0);

    // Its only backend breaks off mid-answer: the stream says so with an OpenAI error object.
    secondary.set(Script::BreakAfter {
        text: "about nine bars".into(),
        words: 1,
    });
    let (status, _, _, body) = server.post_stream("/v1/chat/completions", &bare).await?;
    assert_eq!(status, 200, "the first token was already sent");
    let error = parse_sse(&body)
        .iter()
        .map(data)
        .find(|chunk| chunk.get("error").is_some())
        .ok_or_else(|| anyhow::anyhow!("no error chunk in {body}"))?;
    // Issue 38 item 9: one error body for every stream, a relay's included.
    assert_eq!(
        (error["error"]["code"].as_str(), error["error"]["type"].as_str()),
        (Some("llm_backend_failed"), Some("server_error"))
    );
    // It fails before its first token: a 503, not an empty 200.
    secondary.set(Script::Status(500));
    let (status, mode, _, body) = server.post_stream("/v1/chat/completions", &bare).await?;
    assert_eq!((status, mode.as_deref()), (503, None), "{body}");
    assert!(body.contains("llm_unavailable"), "{body}");

    // The primary stalls after its first words: after the idle timeout the fallback continues,
    // and the stall is announced as a timeout.
    secondary.set(Script::Answer("about nine bars [1].".into()));
    primary.set(Script::StallAfter {
        text: "Espresso is brewed at nine bars".into(),
        words: 2,
    });
    let (_, _, _, body) = server
        .post_stream("/v1/collections/facts/query", &question)
        .await?;
    let events = parse_sse(&body);
    let announced = events
        .iter()
        .find(|e| e.event == "degraded")
        .ok_or_else(|| anyhow::anyhow!("no degraded event: {body}"))?;
    assert_eq!(
        data(announced)["degradation"],
        json!({"stage": "llm:primary", "reason": "timeout"})
    );
    assert_eq!(deltas(&events), "Espresso is about nine bars [1].");
    let done = data(&events[events.len() - 1]);
    assert_eq!(done["mode"], "fallback_llm");
    server.stop().await
}
