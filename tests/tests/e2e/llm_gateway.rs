//! The LLM pool as a gateway for plain chat: model groups and their fallback, retries that fit
//! each failure, breakers that come back with the backend, upstream errors passed on as they
//! are, and answers that name who wrote them. The upstreams are scripted OpenAI-compatible
//! stand-ins (ragway_e2e::ScriptedOpenAi) that misbehave on cue: no real provider here can.

use std::time::{Duration, Instant};

use ragway_e2e::{metric, parse_sse, Script, ScriptedOpenAi, Server, ServerOptions};
use serde_json::{json, Value};

fn remote(name: &str, upstream: &ScriptedOpenAi, max_retries: u32) -> String {
    format!(
        "[[llm]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"model-{name}\"\nmax_retries = {max_retries}\nttft_timeout_ms = 1000\n\n",
        upstream.base_url
    )
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Say something."}]})
}

/// The `data:` payloads of an OpenAI stream, `[DONE]` left out.
fn chunks(body: &str) -> Vec<Value> {
    parse_sse(body)
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| serde_json::from_str(&e.data).ok())
        .collect()
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An OpenAI-shaped error body.
fn upstream_error(message: &str, kind: &str, param: Option<&str>, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_group_falls_back_and_passes_on_what_upstream_refused() -> anyhow::Result<()> {
    let primary = ScriptedOpenAi::start(Script::Answer("from the primary".into())).await?;
    let backup = ScriptedOpenAi::start(Script::Answer("from the backup".into())).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        // The breaker stays out of the way here (see the next test).
        config_toml: format!(
            "[resilience]\nbreaker_failures = 100\n\n{}{}[[model_groups]]\nname = \"chat-large\"\nbackends = [\"primary\", \"backup\"]\n\n[[model_groups]]\nname = \"chat-mini\"\nbackends = [{{ backend = \"backup\", model = \"mini-model\" }}]\n",
            remote("primary", &primary, 1),
            remote("backup", &backup, 1)
        ),
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;

    let models = server.get("/v1/models").await?.body;
    let kinds: Vec<(String, String)> = models["data"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or_default().into(),
                m["ragway_kind"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    for expected in [("chat-large", "group"), ("primary", "llm"), ("backup", "llm")] {
        assert!(
            kinds.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} in {models}"
        );
    }

    // All well: the group's first member answers, and the answer names it and its model.
    let answer = server
        .post("/v1/chat/completions", &chat("chat-large", false))
        .await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["model"], "model-primary");
    assert_eq!(answer.backend_header.as_deref(), Some("primary"));
    assert_eq!(answer.mode_header.as_deref(), Some("normal"));

    // A group's entry may ask its backend for another model: the answer names that model.
    let mini = server
        .post("/v1/chat/completions", &chat("chat-mini", false))
        .await?;
    assert_eq!(mini.status, 200, "{:?}", mini.body);
    assert_eq!(
        (mini.body["model"].as_str(), mini.backend_header.as_deref()),
        (Some("mini-model"), Some("backup"))
    );
    let sent = backup.last_request().unwrap_or_default();
    assert_eq!(sent["model"], "mini-model");

    // The primary fails (and fails its retry): the backup answers, and only its answer is billed.
    primary.set(Script::Status(503));
    let before = primary.calls();
    let answer = server
        .post("/v1/chat/completions", &chat("chat-large", false))
        .await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["choices"][0]["message"]["content"], "from the backup");
    assert_eq!(answer.body["model"], "model-backup");
    assert_eq!(answer.backend_header.as_deref(), Some("backup"));
    assert_eq!(answer.mode_header.as_deref(), Some("fallback_llm"));
    let usage = &answer.body["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(11), Some(3)),
        "the backup's own counts alone: {usage}"
    );
    assert_eq!(primary.calls() - before, 2, "one retry of the primary");
    // Streamed alike, the usage in the last chunk.
    let (status, headers, body) = server
        .post_sse("/v1/chat/completions", &chat("chat-large", true))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-ragway-backend"), Some("backup"));
    assert_eq!(header(&headers, "x-ragway-mode"), Some("fallback_llm"));
    let streamed = chunks(&body);
    assert_eq!(streamed_text(&streamed), "from the backup");
    assert!(streamed.iter().all(|c| c["model"] == "model-backup"), "{body}");
    let last = streamed.last().cloned().unwrap_or_default();
    assert_eq!(last["usage"]["completion_tokens"], 3, "{body}");

    // A dead connection (reset before the response headers) moves to the backup at once, where a
    // 503 was retried first.
    primary.set(Script::ResetBeforeHeaders {
        times: 1,
        then: Box::new(Script::Status(503)),
    });
    let (calls, resets) = (primary.calls(), primary.resets());
    let moved = server
        .post("/v1/chat/completions", &chat("chat-large", false))
        .await?;
    assert_eq!(
        (moved.status, moved.backend_header.as_deref()),
        (200, Some("backup")),
        "{:?}",
        moved.body
    );
    assert_eq!(
        (primary.calls() - calls, primary.resets() - resets),
        (0, 1),
        "not retried"
    );

    // The operator's key is refused upstream: the group's backup answers; the backend alone is
    // a 502 that says so, not the upstream's 401.
    let key_refused = upstream_error(
        "Incorrect API key provided",
        "invalid_request_error",
        None,
        "invalid_api_key",
    );
    primary.set(Script::Error {
        status: 401,
        body: key_refused,
    });
    let rescued = server
        .post("/v1/chat/completions", &chat("chat-large", false))
        .await?;
    assert_eq!(
        (rescued.status, rescued.backend_header.as_deref()),
        (200, Some("backup"))
    );
    let alone = server
        .post("/v1/chat/completions", &chat("primary", false))
        .await?;
    assert_eq!(
        (alone.status, alone.error_code()),
        (502, Some("llm_backend_misconfigured")),
        "{:?}",
        alone.body
    );
    let message = alone.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains("Incorrect API key"),
        "the upstream's text stays in the log: {message}"
    );
    let metrics = server.get_text("/metrics").await?;
    let refusals = metric(
        &metrics,
        "ragway_llm_credentials_refused_total{backend=\"primary\"}",
    );
    assert_eq!(refusals, 2.0, "counted for the operator: {metrics}");

    // Too long for the primary: a member with a larger window takes it; for every member, the
    // upstream's 400 comes back as it was, code, type and param included, never retried.
    let too_long = upstream_error(
        "This model's maximum context length is 8192 tokens.",
        "invalid_request_error",
        Some("messages"),
        "context_length_exceeded",
    );
    let refuse = |body: &Value| Script::Error {
        status: 400,
        body: body.clone(),
    };
    primary.set(refuse(&too_long));
    let larger = server
        .post("/v1/chat/completions", &chat("chat-large", false))
        .await?;
    assert_eq!(
        (larger.status, larger.backend_header.as_deref()),
        (200, Some("backup"))
    );
    backup.set(refuse(&too_long));
    let (before_p, before_b) = (primary.calls(), backup.calls());
    for stream in [false, true] {
        let refused = server
            .post("/v1/chat/completions", &chat("chat-large", stream))
            .await?;
        assert_eq!(refused.status, 400, "stream {stream}: {:?}", refused.body);
        let error = &refused.body["error"];
        assert_eq!(error["code"], "context_length_exceeded", "{error}");
        assert_eq!(
            (error["type"].as_str(), error["param"].as_str()),
            (Some("invalid_request_error"), Some("messages"))
        );
    }
    assert_eq!(
        (primary.calls() - before_p, backup.calls() - before_b),
        (2, 2),
        "once each per request"
    );
    // Over a collection the prompt is ragway's own (the passages made it long): too long for every
    // backend, the passages are quoted instead, and the answer says so.
    server.seeded(None, "facts", &crate::common::corpus()).await?;
    let question = json!({"query": "Which volcano is one of the most active in Europe?", "top_k": 2});
    let quoted = server.post("/v1/collections/facts/query", &question).await?;
    assert_eq!(
        (quoted.status, quoted.body["mode"].as_str()),
        (200, Some("extractive")),
        "{:?}",
        quoted.body
    );
    assert!(
        quoted.body["answer"]
            .as_str()
            .unwrap_or_default()
            .contains("Etna"),
        "{:?}",
        quoted.body
    );

    // A content filter's refusal is the caller's answer: a 400 with its reason, not retried and
    // not asked of the backup.
    backup.set(Script::Answer("from the backup".into()));
    let filtered = upstream_error(
        "The response was filtered by the content filter.",
        "invalid_request_error",
        Some("prompt"),
        "content_filter",
    );
    primary.set(refuse(&filtered));
    let (before_p, before_b) = (primary.calls(), backup.calls());
    let refused = server
        .post("/v1/chat/completions", &chat("chat-large", false))
        .await?;
    assert_eq!(
        (refused.status, refused.error_code()),
        (400, Some("content_filter")),
        "{:?}",
        refused.body
    );
    let message = refused.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("filtered by the content filter"), "{message}");
    assert_eq!((primary.calls() - before_p, backup.calls() - before_b), (1, 0));

    // The primary breaks off mid-stream; the backup refuses to continue the partial answer as an
    // assistant prefill and is asked again without it. Issue 38 item 6: its fresh answer is never
    // glued to the partial one — a stream (whose client cannot withdraw text) ends with an
    // in-band error after the partial text; a JSON answer is the fresh answer alone.
    primary.set(Script::BreakAfter {
        text: "one two three".into(),
        words: 2,
    });
    backup.set(Script::RefusePrefill("a fresh answer".into()));
    let (status, headers, body) = server
        .post_sse("/v1/chat/completions", &chat("chat-large", true))
        .await?;
    assert_eq!(
        (status, header(&headers, "x-ragway-backend")),
        (200, Some("primary")),
        "{body}"
    );
    let streamed = chunks(&body);
    assert_eq!(streamed_text(&streamed), "one two ", "{body}");
    assert_eq!(
        streamed.last().map(|c| c["error"]["code"].clone()),
        Some(json!("answer_restarted")),
        "the stream ends with an error: {body}"
    );
    let restarted = backup.last_request().unwrap_or_default();
    let last = restarted["messages"].as_array().and_then(|m| m.last()).cloned();
    assert_eq!(
        last.map(|m| m["role"].clone()),
        Some(json!("user")),
        "{restarted}"
    );
    let whole = server
        .post("/v1/chat/completions", &chat("chat-large", false))
        .await?;
    assert_eq!(
        whole.body["choices"][0]["message"]["content"], "a fresh answer",
        "only the restarted text: {:?}",
        whole.body
    );

    // Issue 38 item 5: a backup that continues the partial answer finishes it, and the last
    // chunk names its model (the first named the primary's).
    backup.set(Script::Answer("three".into()));
    let (status, _, body) = server
        .post_sse("/v1/chat/completions", &chat("chat-large", true))
        .await?;
    assert_eq!(status, 200, "{body}");
    let streamed = chunks(&body);
    assert_eq!(streamed_text(&streamed), "one two three", "{body}");
    let models: Vec<&str> = streamed.iter().filter_map(|c| c["model"].as_str()).collect();
    assert_eq!(
        (models.first().copied(), models.last().copied()),
        (Some("model-primary"), Some("model-backup")),
        "{body}"
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_backend_is_retried_as_its_failure_deserves_and_its_breaker_comes_back() -> anyhow::Result<()> {
    let solo = ScriptedOpenAi::start(Script::Answer("fine".into())).await?;
    let flaky = ScriptedOpenAi::start(Script::Answer("fine".into())).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: format!(
            "[resilience]\nbreaker_failures = 4\nbreaker_open_ms = 1500\ndefault_deadline_ms = 20000\n\n{}{}",
            remote("solo", &solo, 3),
            remote("flaky", &flaky, 0)
        ),
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;

    // Two connections reset before the response headers: retried, then answered.
    solo.set(Script::ResetBeforeHeaders {
        times: 2,
        then: Box::new(Script::Answer("after two resets".into())),
    });
    let answer = server.post("/v1/chat/completions", &chat("solo", false)).await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.body["choices"][0]["message"]["content"],
        "after two resets"
    );
    assert_eq!(solo.resets(), 2);

    // A malformed chunk mid-stream is skipped and counted; the answer goes on.
    solo.set(Script::MalformedChunk {
        text: "one two three four".into(),
        after: 2,
    });
    let (status, _, body) = server
        .post_sse("/v1/chat/completions", &chat("solo", true))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(streamed_text(&chunks(&body)), "one two three four", "{body}");
    assert!(!body.contains("\"error\""), "{body}");
    let metrics = server.get_text("/metrics").await?;
    assert_eq!(
        metric(&metrics, "ragway_llm_malformed_chunks_total{backend=\"solo\"}"),
        1.0
    );

    // A first token slower than the backend's limit (1 s), from the only backend there is: it
    // is waited for within the request's deadline, not cut.
    solo.set(Script::Slow {
        text: "worth the wait".into(),
        delay_ms: 2_500,
    });
    let (status, _, body) = server
        .post_sse("/v1/chat/completions", &chat("solo", true))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(streamed_text(&chunks(&body)), "worth the wait", "{body}");

    // 429 with Retry-After: waited out, then answered.
    solo.set(Script::RateLimited {
        retry_after_s: 1,
        times: 2,
        then: "let through".into(),
    });
    let from = solo.calls();
    let answer = server.post("/v1/chat/completions", &chat("solo", false)).await?;
    assert_eq!(
        answer.body["choices"][0]["message"]["content"], "let through",
        "{:?}",
        answer.body
    );
    let gaps = solo.gaps_since(from);
    assert!(
        gaps.len() == 2 && gaps.iter().all(|g| *g >= Duration::from_secs(1)),
        "{gaps:?}"
    );

    // Persistent 503: retries backing off (at least 125, 250, 500 ms: half of each doubling
    // step is fixed) — as many of its three as the backend's retry budget still allows after
    // the four failures above (one) — then a 503 of ragway's own with Retry-After.
    solo.set(Script::Status(503));
    let from = solo.calls();
    let refused = server.post("/v1/chat/completions", &chat("solo", false)).await?;
    assert_eq!(
        (refused.status, refused.error_code()),
        (503, Some("llm_unavailable")),
        "{:?}",
        refused.body
    );
    assert!(refused.retry_after.is_some(), "a 503 says when to retry");
    let gaps = solo.gaps_since(from);
    let floors = [125, 250, 500].map(Duration::from_millis);
    assert!(
        gaps.len() == 1 && gaps.iter().zip(floors).all(|(g, f)| *g >= f),
        "{gaps:?}"
    );

    breaker_comes_back(&server, &flaky).await?;
    server.stop().await
}

/// `flaky` (no retries) fails until its breaker opens, and keeps failing each probe: the open
/// period stays `breaker_open_ms` (1.5 s), shown with the next probe in `/readyz`; once healthy,
/// the next probe closes the breaker.
async fn breaker_comes_back(server: &Server, flaky: &ScriptedOpenAi) -> anyhow::Result<()> {
    flaky.set(Script::Status(500));
    for _ in 0..4 {
        server.post("/v1/chat/completions", &chat("flaky", false)).await?;
    }
    for round in 0..3 {
        let ready = server.get("/readyz").await?.body;
        assert_eq!(
            ready["dependencies"]["llm:flaky"], "open",
            "round {round}: {ready}"
        );
        let next = ready["next_probe_ms"]["llm:flaky"].as_u64();
        assert!(
            next.is_some_and(|ms| ms <= 1_500),
            "round {round}: the period did not grow: {ready}"
        );
        let metrics = server.get_text("/metrics").await?;
        let at = metric(
            &metrics,
            "ragway_breaker_next_probe_timestamp_seconds{dependency=\"llm:flaky\"}",
        );
        assert!(at > 0.0, "the next probe's time is a metric too");
        tokio::time::sleep(Duration::from_millis(next.unwrap_or(0) + 50)).await;
        let probe = server.post("/v1/chat/completions", &chat("flaky", false)).await?;
        assert_eq!(
            probe.status, 503,
            "round {round}: the probe failed: {:?}",
            probe.body
        );
    }
    flaky.set(Script::Answer("back".into()));
    let ready = server.get("/readyz").await?.body;
    let next = ready["next_probe_ms"]["llm:flaky"].as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(next + 50)).await;
    // Not a speed claim: the bound only stops a test whose breaker never closes.
    let started = Instant::now();
    loop {
        let answer = server.post("/v1/chat/completions", &chat("flaky", false)).await?;
        if answer.status == 200 {
            assert_eq!(answer.body["choices"][0]["message"]["content"], "back");
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the breaker never closed: {:?}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = server.get("/readyz").await?.body;
    assert_eq!(ready["dependencies"]["llm:flaky"], "closed", "{ready}");
    Ok(())
}

/// Issue 38 item 3: retries are a budget of the backend, not of each request. Ten requests to
/// a backend that always answers 503 (`max_retries = 3`, a breaker that never opens): the first
/// retries three times, then the budget (ten tokens, retries while more than five are left) is
/// spent and every later request tries once — 13 calls, where forty were made before.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_backend_gets_retries_within_its_budget_not_a_storm() -> anyhow::Result<()> {
    let failing = ScriptedOpenAi::start(Script::Status(503)).await?;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[resilience]\nbreaker_failures = 1000\nllm_retry_after_cap_ms = 100\n\n{}",
        remote("failing", &failing, 3)
    );
    let server = Server::start(dir.path(), &ServerOptions::default().with_config(&config)).await?;
    for _ in 0..10 {
        let reply = server
            .post("/v1/chat/completions", &chat("failing", false))
            .await?;
        assert_eq!(reply.status, 503, "{:?}", reply.body);
    }
    assert_eq!(failing.calls(), 13, "4 for the first request, 1 for each other");
    let exposition = server.get_text("/metrics").await?;
    assert_eq!(
        metric(
            &exposition,
            "ragway_llm_retries_throttled_total{backend=\"failing\"}"
        ),
        9.0,
        "{exposition}"
    );
    server.stop().await
}

/// Issue 38 item 3: a 503 because every backend's breaker is open says when the soonest probe
/// is (`Retry-After`), not always a second.
#[tokio::test(flavor = "multi_thread")]
async fn a_503_for_open_breakers_says_when_the_next_probe_is() -> anyhow::Result<()> {
    let failing = ScriptedOpenAi::start(Script::Status(500)).await?;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[resilience]\nbreaker_failures = 1\nbreaker_open_ms = 7000\n\n{}",
        remote("failing", &failing, 0)
    );
    let server = Server::start(dir.path(), &ServerOptions::default().with_config(&config)).await?;
    let first = server
        .post("/v1/chat/completions", &chat("failing", false))
        .await?;
    assert_eq!(
        (first.status, first.retry_after),
        (503, Some(1)),
        "{:?}",
        first.body
    );
    let refused = server
        .post("/v1/chat/completions", &chat("failing", false))
        .await?;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(
        refused.retry_after.is_some_and(|s| (5..=7).contains(&s)),
        "the probe is about 7 s off: Retry-After {:?}",
        refused.retry_after
    );
    assert_eq!(failing.calls(), 1, "the open breaker was not passed");
    server.stop().await
}

/// Issue 38 item 7: the only backend is down for 12 s while clients keep asking, then healthy:
/// the first answer comes within one probe period (1.5 s) of its recovery, with 2 s of margin
/// for a loaded machine — the open period does not grow, and no retry backoff stands in the way.
#[tokio::test(flavor = "multi_thread")]
async fn the_only_backend_is_answered_again_within_one_probe_period_of_its_recovery() -> anyhow::Result<()> {
    let only = ScriptedOpenAi::start(Script::Status(503)).await?;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[resilience]\nbreaker_failures = 3\nbreaker_open_ms = 1500\n\n{}",
        remote("only", &only, 2)
    );
    let server = Server::start(dir.path(), &ServerOptions::default().with_config(&config)).await?;
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(12) {
        let refused = server.post("/v1/chat/completions", &chat("only", false)).await?;
        assert_eq!(refused.status, 503, "{:?}", refused.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    only.set(Script::Answer("back".into()));
    let recovered = Instant::now();
    loop {
        let answer = server.post("/v1/chat/completions", &chat("only", false)).await?;
        if answer.status == 200 {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_millis(1_500 + 2_000),
            "still refused {:?} after the backend recovered: {:?}",
            recovered.elapsed(),
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = server.get("/readyz").await?.body;
    assert_eq!(ready["dependencies"]["llm:only"], "closed", "{ready}");
    server.stop().await
}

/// Issue 38 item 6: a connection reset before the response headers (a pooled connection the
/// server had closed, most often) is retried once on the same backend before the request fails
/// over; a second reset moves it on.
#[tokio::test(flavor = "multi_thread")]
async fn a_reset_before_the_headers_is_retried_once_on_the_same_backend() -> anyhow::Result<()> {
    let primary = ScriptedOpenAi::start(Script::ResetBeforeHeaders {
        times: 1,
        then: Box::new(Script::Answer("from the primary".into())),
    })
    .await?;
    let backup = ScriptedOpenAi::start(Script::Answer("from the backup".into())).await?;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "{}{}[[model_groups]]\nname = \"pair\"\nbackends = [\"primary\", \"backup\"]\n",
        remote("primary", &primary, 2),
        remote("backup", &backup, 2)
    );
    let server = Server::start(dir.path(), &ServerOptions::default().with_config(&config)).await?;
    let answer = server.post("/v1/chat/completions", &chat("pair", false)).await?;
    assert_eq!(
        answer.body["choices"][0]["message"]["content"], "from the primary",
        "{:?}",
        answer.body
    );
    assert_eq!((primary.resets(), backup.calls()), (1, 0));
    primary.set(Script::ResetBeforeHeaders {
        times: 2,
        then: Box::new(Script::Answer("from the primary".into())),
    });
    let moved = server.post("/v1/chat/completions", &chat("pair", false)).await?;
    assert_eq!(
        moved.body["choices"][0]["message"]["content"], "from the backup",
        "{:?}",
        moved.body
    );
    assert_eq!(primary.resets(), 3, "one more reset, and one retry of it");
    server.stop().await
}

/// Issue 38 item 4 (docs/CONFIGURATION.md, "Upstream errors"): 402 (billing) and 404 (the
/// configured model unknown) are the operator's — the request fails over, the backend's breaker
/// is charged, and a 502 answers when nothing else could; 422 is the caller's — passed on with
/// its status, code and param, its message without URLs or key-like tokens.
#[tokio::test(flavor = "multi_thread")]
async fn every_upstream_4xx_follows_its_rule() -> anyhow::Result<()> {
    let primary = ScriptedOpenAi::start(Script::Answer("unused".into())).await?;
    let backup = ScriptedOpenAi::start(Script::Answer("from the backup".into())).await?;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[resilience]\nbreaker_failures = 2\nbreaker_open_ms = 60000\n\n{}{}[[model_groups]]\nname = \"pair\"\nbackends = [\"primary\", \"backup\"]\n",
        remote("primary", &primary, 0),
        remote("backup", &backup, 0)
    );
    let server = Server::start(dir.path(), &ServerOptions::default().with_config(&config)).await?;
    let error = |status: u16, message: &str, code: &str| Script::Error {
        status,
        body: upstream_error(message, "invalid_request_error", Some("model"), code),
    };
    primary.set(error(
        402,
        "You exceeded your current quota, check your plan and billing details.",
        "insufficient_quota",
    ));
    let paid = server.post("/v1/chat/completions", &chat("pair", false)).await?;
    assert_eq!(
        (
            paid.status,
            paid.body["choices"][0]["message"]["content"].as_str()
        ),
        (200, Some("from the backup")),
        "402 fails over: {:?}",
        paid.body
    );
    primary.set(error(
        404,
        "The model `model-primary` does not exist.",
        "model_not_found",
    ));
    let unknown = server.post("/v1/chat/completions", &chat("pair", false)).await?;
    assert_eq!(unknown.status, 200, "404 fails over: {:?}", unknown.body);
    let ready = server.get("/readyz").await?.body;
    assert_eq!(
        ready["dependencies"]["llm:primary"], "open",
        "two of the operator's failures open its breaker: {ready}"
    );
    let alone = server
        .post("/v1/chat/completions", &chat("backup", false))
        .await?;
    assert_eq!(alone.status, 200);
    backup.set(error(
        404,
        "The model `model-backup` does not exist.",
        "model_not_found",
    ));
    let nothing = server
        .post("/v1/chat/completions", &chat("backup", false))
        .await?;
    assert_eq!(
        (nothing.status, nothing.error_code()),
        (502, Some("llm_backend_misconfigured")),
        "{:?}",
        nothing.body
    );

    backup.set(error(
        422,
        "Invalid value for temperature; see https://internal.example/docs (request key sk-live-abcdef123456).",
        "invalid_value",
    ));
    let invalid = server
        .post("/v1/chat/completions", &chat("backup", false))
        .await?;
    assert_eq!(
        (invalid.status, invalid.error_code()),
        (422, Some("invalid_value")),
        "{:?}",
        invalid.body
    );
    assert_eq!(invalid.body["error"]["param"], "model");
    let message = invalid.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.ends_with("Invalid value for temperature; see [url] (request key [redacted])."),
        "{message}"
    );
    server.stop().await
}

/// Issue 38 item 5: a question over a collection can name who writes its answer (`llm`: a model
/// group or a backend), with the group's fallback; an unknown name is a 404. (That answers asked
/// of different models are different L1 entries is `l1::tests`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_question_over_a_collection_can_name_its_model_group() -> anyhow::Result<()> {
    let first = ScriptedOpenAi::start(Script::Answer("from the first [1]".into())).await?;
    let second = ScriptedOpenAi::start(Script::Answer("from the second [1]".into())).await?;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "{}{}[[model_groups]]\nname = \"second-first\"\nbackends = [\"second\", \"first\"]\n",
        remote("first", &first, 0),
        remote("second", &second, 0)
    );
    let options = ServerOptions::default()
        .with_config(ragway_e2e::NO_ANSWER_CACHES)
        .with_config(&config);
    let server = Server::start(dir.path(), &options).await?;
    server.seeded(None, "facts", &crate::common::corpus()).await?;
    let ask = |llm: Option<&str>| {
        let mut question = json!({"query": "What pressure brews an espresso?"});
        if let Some(llm) = llm {
            question["llm"] = json!(llm);
        }
        let server = &server;
        async move { server.post("/v1/collections/facts/query", &question).await }
    };
    let by_priority = ask(None).await?;
    assert_eq!(
        by_priority.body["stages"]["llm"], "first",
        "{:?}",
        by_priority.body
    );
    let named = ask(Some("second-first")).await?;
    assert_eq!(
        (
            named.body["stages"]["llm"].as_str(),
            named.body["answer"].as_str()
        ),
        (Some("second"), Some("from the second [1]")),
        "{:?}",
        named.body
    );
    second.set(Script::Status(500));
    let fallen = ask(Some("second-first")).await?;
    assert_eq!(fallen.body["mode"], "fallback_llm", "{:?}", fallen.body);
    assert_eq!(fallen.body["stages"]["llm"], "first");
    let unknown = ask(Some("no-such-group")).await?;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (404, Some("model_not_found")),
        "{:?}",
        unknown.body
    );
    // A chat over the collection names it with ragway's own `llm` field.
    second.set(Script::Answer("from the second [1]".into()));
    let chat = json!({"model": "facts", "llm": "second-first", "messages": [{"role": "user", "content": "What pressure brews an espresso?"}]});
    let chatted = server.post("/v1/chat/completions", &chat).await?;
    assert_eq!(
        chatted.body["ragway"]["stages"]["llm"], "second",
        "{:?}",
        chatted.body
    );
    server.stop().await
}

/// Issue 38 item 6: a backend that does not continue partial answers (`accepts_prefill =
/// false`) is passed over for a continuation, which goes to one that does; when none that does
/// can answer, it answers afresh (a marked restart, never glued to the partial answer).
#[tokio::test(flavor = "multi_thread")]
async fn a_continuation_goes_first_to_a_backend_that_takes_a_prefill() -> anyhow::Result<()> {
    let primary = ScriptedOpenAi::start(Script::BreakAfter {
        text: "one two three".into(),
        words: 2,
    })
    .await?;
    let fresh = ScriptedOpenAi::start(Script::Answer("a fresh answer".into())).await?;
    let continuing = ScriptedOpenAi::start(Script::Answer("three".into())).await?;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[resilience]\nbreaker_failures = 100\n\n{}{}\naccepts_prefill = false\n\n{}[[model_groups]]\nname = \"trio\"\nbackends = [\"primary\", \"fresh\", \"continuing\"]\n",
        remote("primary", &primary, 0),
        remote("fresh", &fresh, 0).trim_end(),
        remote("continuing", &continuing, 0)
    );
    let server = Server::start(dir.path(), &ServerOptions::default().with_config(&config)).await?;
    let (status, _, body) = server
        .post_sse("/v1/chat/completions", &chat("trio", true))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(streamed_text(&chunks(&body)), "one two three", "{body}");
    assert_eq!(fresh.calls(), 0, "not asked to continue what it cannot");
    let continued = continuing.last_request().unwrap_or_default();
    let last = continued["messages"].as_array().and_then(|m| m.last()).cloned();
    assert_eq!(
        last.map(|m| m["role"].clone()),
        Some(json!("assistant")),
        "{continued}"
    );

    // The one that continues is down: the other answers afresh, marked as a restart.
    continuing.set(Script::Status(500));
    let (status, _, body) = server
        .post_sse("/v1/chat/completions", &chat("trio", true))
        .await?;
    assert_eq!(status, 200, "{body}");
    let streamed = chunks(&body);
    assert_eq!(streamed_text(&streamed), "one two ", "{body}");
    assert_eq!(
        streamed.last().map(|c| c["error"]["code"].clone()),
        Some(json!("answer_restarted")),
        "{body}"
    );
    let asked = fresh.last_request().unwrap_or_default();
    let last = asked["messages"].as_array().and_then(|m| m.last()).cloned();
    assert_eq!(
        last.map(|m| m["role"].clone()),
        Some(json!("user")),
        "afresh: {asked}"
    );
    let whole = server.post("/v1/chat/completions", &chat("trio", false)).await?;
    assert_eq!(
        whole.body["choices"][0]["message"]["content"], "a fresh answer",
        "{:?}",
        whole.body
    );
    server.stop().await
}
