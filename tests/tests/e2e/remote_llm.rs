//! A remote OpenAI-compatible backend, and falling back to the local model when it fails.
//! The remote is a scripted stand-in (see ragway_e2e::ScriptedOpenAi), so it can fail on cue.

use crate::common;

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
    server.seeded(None, "facts", &corpus()).await?;

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

    // The remote's answer takes 5 tokens (the stand-in streams a word a token): cut by
    // `max_tokens` 5 it is `length`, as OpenAI says; with room to spare, `stop`; streamed, the
    // last chunk says the same.
    for (max_tokens, finish) in [(5, "length"), (6, "stop")] {
        let chat = json!({"model": "remote", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Pressure?"}]});
        let reply = server.post("/v1/chat/completions", &chat).await?;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(
            reply.body["choices"][0]["finish_reason"], finish,
            "{:?}",
            reply.body
        );
    }
    let streamed = json!({"model": "remote", "max_tokens": 5, "stream": true, "messages": [{"role": "user", "content": "Pressure, streamed?"}]});
    let (status, _, body) = server.post_sse("/v1/chat/completions", &streamed).await?;
    assert_eq!(status, 200, "{body}");
    let events = ragway_e2e::parse_sse(&body);
    let finishes: Vec<String> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.data).ok())
        .filter_map(|chunk| chunk["choices"][0]["finish_reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(finishes, ["length"], "{events:?}");

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

/// What a tool-using client sends: tools, a forced tool choice, a JSON response format, stop
/// sequences, a seed, an earlier tool call and its result, and an image part.
fn tool_request(stream: bool) -> serde_json::Value {
    json!({
        "model": "remote",
        "stream": stream,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Lyon\"}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "12 C"},
            {"role": "user", "content": "And in Paris?", "name": "ann"}
        ],
        "tools": [{"type": "function", "function": {"name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
        "response_format": {"type": "json_object"},
        "stop": ["\n\n"],
        "seed": 7,
        "n": 2,
        "top_p": 0.5,
        "user": "u-1"
    })
}

fn paris_call() -> serde_json::Value {
    json!([{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}])
}

/// The body the backend received equals the client's but for `model` (the backend's own),
/// `stream`, in a stream `stream_options`, and — the client set no limit — `max_tokens`, the
/// configured one (40 in the tests).
fn assert_relayed_unchanged(sent: &serde_json::Value, asked: &serde_json::Value) {
    let strip = |body: &serde_json::Value| {
        let mut body = body.clone();
        for field in ["model", "stream", "stream_options"] {
            body.as_object_mut().map(|b| b.remove(field));
        }
        body
    };
    let mut sent_stripped = strip(sent);
    if asked["max_tokens"].is_null() && asked["max_completion_tokens"].is_null() {
        assert_eq!(sent["max_tokens"], 40, "the configured limit is sent: {sent}");
        sent_stripped.as_object_mut().map(|b| b.remove("max_tokens"));
    }
    assert_eq!(sent_stripped, strip(asked), "the backend got {sent}");
    assert_eq!(sent["model"], "scripted-model");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_chat_passes_backend_parameters_through_unchanged() -> anyhow::Result<()> {
    let answer = json!({
        "id": "chatcmpl-tools", "object": "chat.completion", "created": 1, "model": "scripted-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": paris_call()}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}
    });
    let remote = ScriptedOpenAi::start(Script::Json(answer)).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: format!(
            "{NO_ANSWER_CACHES}\n[[llm]]\nname = \"remote\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"scripted-model\"\n\n[[llm]]\nname = \"local\"\nkind = \"local\"\nmodel = \"{}\"\n",
            remote.base_url,
            ragway_e2e::models_dir().join("smollm2-135m-instruct").display()
        ),
        env: vec![],
    };
    let server = Server::start(dir.path(), &options).await?;

    let asked = tool_request(false);
    let reply = server.post("/v1/chat/completions", &asked).await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_relayed_unchanged(&remote.last_request().unwrap_or_default(), &asked);
    assert_eq!(reply.body["model"], "scripted-model", "the model that answered");
    assert_eq!(reply.backend_header.as_deref(), Some("remote"));
    assert_eq!(reply.body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(reply.body["choices"][0]["message"]["tool_calls"], paris_call());
    assert_eq!(reply.body["usage"]["total_tokens"], 49);

    // The backend's 4xx for the client's parameters comes back as such, and is not the
    // backend's failure: more of them than the breaker's threshold leave it closed.
    remote.set(Script::Status(400));
    for _ in 0..5 {
        let refused = server.post("/v1/chat/completions", &asked).await?;
        assert_eq!(refused.status, 400, "{:?}", refused.body);
        assert_eq!(refused.body["error"]["code"], "backend_rejected_request");
    }
    remote.set(Script::Answer("fine".into()));
    let after = server.post("/v1/chat/completions", &asked).await?;
    assert_eq!(
        after.status, 200,
        "the breaker opened on the caller's errors: {:?}",
        after.body
    );

    // Where they cannot be honoured, capabilities are refused, not ignored.
    for model in ["local", "notes"] {
        if model == "notes" {
            server.post("/v1/collections", &json!({"name": "notes"})).await?;
        }
        let mut local = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        local["tools"] = asked["tools"].clone();
        let refused = server.post("/v1/chat/completions", &local).await?;
        assert_eq!(refused.status, 400, "{model}: {:?}", refused.body);
        assert_eq!(refused.body["error"]["code"], "unsupported_parameter");
        assert!(refused.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("tools"));
    }
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_plain_chat_relays_the_backends_chunks() -> anyhow::Result<()> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "scripted-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let call = paris_call();
    let chunks = vec![
        chunk(
            json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": ""}}]}),
            serde_json::Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": call[0]["function"]["arguments"]}}]}),
            serde_json::Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "scripted-model",
            "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}}),
    ];
    let remote = ScriptedOpenAi::start(Script::Chunks(chunks.clone())).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: format!(
            "{NO_ANSWER_CACHES}\n[[llm]]\nname = \"remote\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"scripted-model\"\n",
            remote.base_url
        ),
        env: vec![],
    };
    let server = Server::start(dir.path(), &options).await?;
    for include_usage in [false, true] {
        let mut asked = tool_request(true);
        if include_usage {
            asked["stream_options"] = json!({"include_usage": true});
        }
        let (status, _, content_type, text) = server.post_stream("/v1/chat/completions", &asked).await?;
        assert_eq!(status, 200, "{text}");
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        let sent = remote.last_request().unwrap_or_default();
        assert_relayed_unchanged(&sent, &asked);
        assert_eq!(
            sent["stream_options"]["include_usage"], true,
            "usage is always asked for, to count tokens"
        );
        let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
        let got: Vec<serde_json::Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d))
            .collect::<Result<_, _>>()?;
        let shown = if include_usage {
            chunks.len()
        } else {
            chunks.len() - 1
        };
        assert_eq!(got.len(), shown, "the usage chunk only when asked for: {text}");
        for (got, sent) in got.iter().zip(&chunks) {
            assert_eq!(got, sent, "as the backend wrote it, its own model included");
        }
    }
    server.stop().await
}

/// Issue 38 item 1: a silent backend that is the last a request can try, its breaker half-open,
/// and one client with a 300 s deadline: the probe waits only the backend's own first-token
/// limit (1 s here), never the client's deadline, so the patient client gets its answer (quoted
/// passages) within the backend's limits, and another client meanwhile is told the breaker's
/// true state at once — not held behind a probe for 300 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_last_backend_cannot_hold_the_probe_for_a_clients_deadline() -> anyhow::Result<()> {
    let silent = ScriptedOpenAi::start(Script::Hang).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default()
        .with_config(NO_ANSWER_CACHES)
        .with_config(&format!(
            "[resilience]\nbreaker_failures = 1\nbreaker_open_ms = 500\n\n[[llm]]\nname = \"silent\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nmax_retries = 0\nttft_timeout_ms = 1000\n",
            silent.base_url
        ));
    let server = Server::start(dir.path(), &options).await?;
    server.seeded(None, "facts", &corpus()).await?;
    let ask = |n: usize, deadline_ms: u64| {
        let question = json!({"query": format!("question {n}: which volcano erupts in Sicily?"), "deadline_ms": deadline_ms});
        let server = &server;
        async move {
            let started = std::time::Instant::now();
            let reply = server.post("/v1/collections/facts/query", &question).await?;
            anyhow::Ok((reply, started.elapsed()))
        }
    };
    // A 3 s deadline: the patient wait is cut by it past the backend's own 1 s — the backend's
    // slowness, which opens its breaker (one failure).
    let (first, _) = ask(0, 3_000).await?;
    assert_eq!(first.body["mode"], "extractive", "{:?}", first.body);
    let ready = server.get("/readyz").await?;
    assert_eq!(
        ready.body["dependencies"]["llm:silent"], "open",
        "{:?}",
        ready.body
    );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    // Half-open: the patient client takes the probe; another asks 300 ms later.
    let (patient, other) = tokio::join!(ask(1, 300_000), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        ask(2, 300_000).await
    });
    let ((patient, patient_took), (other, other_took)) = (patient?, other?);
    assert_eq!(patient.body["mode"], "extractive", "{:?}", patient.body);
    assert!(
        patient_took < std::time::Duration::from_secs(10),
        "the probe waited {patient_took:?}: longer than the backend's own limit allows"
    );
    assert_eq!(other.body["mode"], "extractive", "{:?}", other.body);
    assert!(
        other.body["degraded"].to_string().contains("breaker_open"),
        "told the true state: {:?}",
        other.body["degraded"]
    );
    assert!(
        other_took < std::time::Duration::from_secs(10),
        "refused at once, not after {other_took:?}"
    );
    server.stop().await
}
