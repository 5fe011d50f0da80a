//! The seams of the one answer engine, tried as users would: caps on relayed chats, grounded
//! chat written as asked, streams charged for what they wrote however they end, a stream cut by
//! its deadline saying so, a stale answer served over budget saying so, and long passages fitted
//! to the local model's real window. The remote LLMs are scripted stand-ins
//! (ragway_e2e::ScriptedOpenAi); the local model is SmolLM2.

use std::time::{Duration, Instant};

use crate::common::corpus;
use futures::StreamExt;
use ragway_e2e::{parse_sse, Script, ScriptedOpenAi, Server, ServerOptions, SseEvent};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "answers-test-admin";

fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data).unwrap_or(Value::Null)
}

/// The tenant's `field` of today's usage, once it is at least `at_least` (charges land just
/// after the answer), or what it is after 5 s.
async fn usage(server: &Server, id: &str, field: &str, at_least: u64) -> anyhow::Result<u64> {
    let started = Instant::now();
    loop {
        let path = format!("/admin/tenants/{id}/usage");
        let usage = server.admin(Method::GET, &path, ADMIN, None).await?;
        let value = usage.body["days"][0][field].as_u64().unwrap_or(0);
        if value >= at_least || started.elapsed() > Duration::from_secs(5) {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway (with `options`) whose only LLM backend, `remote`, is a scripted stand-in playing
/// `script`; the data directory lives as long as the server is used.
async fn with_remote(
    script: Script,
    options: ServerOptions,
) -> anyhow::Result<(ScriptedOpenAi, Server, tempfile::TempDir)> {
    let remote = ScriptedOpenAi::start(script).await?;
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &options.with_scripted_llm("remote", &remote)).await?;
    Ok((remote, server, dir))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relayed_chat_gets_the_caps_every_chat_gets() -> anyhow::Result<()> {
    let script = Script::Answer("Hello.".into());
    let (remote, server, _dir) = with_remote(script, ServerOptions::default()).await?;
    let chat = |extra: Value| {
        let mut body = json!({"model": "remote", "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        body
    };

    let many = server
        .post("/v1/chat/completions", &chat(json!({"n": 64})))
        .await?;
    assert_eq!(many.status, 400, "{:?}", many.body);
    assert_eq!(many.error_code(), Some("n_out_of_range"));
    assert_eq!(remote.calls(), 0, "a refused request never reaches the backend");

    let two = server
        .post("/v1/chat/completions", &chat(json!({"n": 2})))
        .await?;
    assert_eq!(two.status, 200, "{:?}", two.body);
    let sent = remote.last_request().unwrap_or_default();
    assert_eq!(sent["n"], 2);
    assert_eq!(
        sent["max_tokens"], 40,
        "no limit from the client: the configured one (generation.max_tokens) is sent: {sent}"
    );

    let too_long = server
        .post(
            "/v1/chat/completions",
            &chat(json!({"seed": 1, "max_tokens": 100_000})),
        )
        .await?;
    assert_eq!(too_long.error_code(), Some("max_tokens_out_of_range"));
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn grounded_chat_is_written_as_the_client_asks() -> anyhow::Result<()> {
    let script = Script::Answer("Nine bars [1].".into());
    let (remote, server, _dir) = with_remote(script, ServerOptions::default()).await?;
    server.seeded(None, "facts", &corpus()).await?;
    let ask = |max_tokens: u64| {
        json!({"model": "facts", "max_tokens": max_tokens, "temperature": 0.5,
            "messages": [{"role": "user", "content": "What pressure brews an espresso?"}]})
    };
    let answer = server.post("/v1/chat/completions", &ask(7)).await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let sent = remote.last_request().unwrap_or_default();
    assert_eq!(sent["max_completion_tokens"], 7, "{sent}");
    assert_eq!(sent["temperature"], 0.5, "{sent}");
    let calls = remote.calls();
    let longer = server.post("/v1/chat/completions", &ask(30)).await?;
    assert_eq!(longer.status, 200, "{:?}", longer.body);
    assert_eq!(
        remote.calls(),
        calls + 1,
        "an answer written for another max_tokens is not served from L1"
    );
    assert_eq!(
        remote.last_request().unwrap_or_default()["max_completion_tokens"],
        30
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_is_charged_for_what_it_wrote_however_it_ends() -> anyhow::Result<()> {
    let text = "Espresso is brewed at nine bars of pressure through fine coffee.";
    let script = Script::BreakAfter {
        text: text.into(),
        words: 4,
    };
    let options = ServerOptions::default()
        .with_admin(ADMIN)
        .with_config("[cache.l1]\nmax_entries = 0\n[cache.l3]\nmax_entries = 0");
    let (remote, server, _dir) = with_remote(script, options).await?;
    let (id, key) = server.tenant(ADMIN, &json!({"name": "acme"})).await?;
    server.seeded(Some(&key), "facts", &corpus()).await?;
    let question = json!({"query": "How is espresso brewed?", "stream": true});

    // The only backend breaks off after four words: they are charged, counted by its tokenizer
    // (none: by their length), although it never sent its usage.
    let path = "/v1/collections/facts/query";
    let (status, body) = server
        .call_text(Method::POST, path, Some(&key), Some(&question))
        .await?;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    let done = events
        .iter()
        .find(|e| e.event == "done")
        .map(data)
        .unwrap_or_default();
    assert_eq!(done["mode"], "extractive", "{body}");
    let after_break = usage(&server, &id, "tokens_out", 1).await?;
    assert!(
        after_break > 0,
        "the broken-off part was not charged: {after_break}"
    );
    assert!(usage(&server, &id, "tokens_in", 1).await? > 0);

    // A client that leaves mid-answer: what was written until then is charged.
    remote.set(Script::StallAfter {
        text: text.into(),
        words: 6,
    });
    let response = ragway_e2e::client()?
        .post(server.url(path))
        .bearer_auth(&key)
        .json(&question)
        .send()
        .await?;
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: delta") {
        let Some(chunk) = body.next().await else { break };
        seen.push_str(&String::from_utf8_lossy(&chunk?));
    }
    drop(body);
    let after_leaving = usage(&server, &id, "tokens_out", after_break + 1).await?;
    assert!(
        after_leaving > after_break,
        "the abandoned stream was not charged: {after_leaving} ≤ {after_break}"
    );

    // A JSON client that gives up mid-answer: what was written until then is charged too.
    let json_question = json!({"query": "How is espresso brewed?"});
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let request = impatient
        .post(server.url(path))
        .bearer_auth(&key)
        .json(&json_question);
    assert!(
        request.send().await.is_err(),
        "the answer stalls: the client gives up"
    );
    let after_json = usage(&server, &id, "tokens_out", after_leaving + 1).await?;
    assert!(
        after_json > after_leaving,
        "the abandoned JSON answer was not charged: {after_json} ≤ {after_leaving}"
    );

    // A relayed chat (`seed` is only the backend's to read) that breaks off: the client gets an
    // error chunk and no `[DONE]`, and the text streamed until then is charged although the
    // backend never sent its usage.
    remote.set(Script::BreakAfter {
        text: text.into(),
        words: 4,
    });
    let relayed = json!({"model": "remote", "seed": 1, "stream": true,
        "messages": [{"role": "user", "content": "How is espresso brewed?"}]});
    let (status, body) = server
        .call_text(Method::POST, "/v1/chat/completions", Some(&key), Some(&relayed))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(remote.last_request().unwrap_or_default()["seed"], 1, "relayed");
    let last = body.lines().rev().find_map(|l| l.strip_prefix("data: "));
    let error: Value = serde_json::from_str(last.unwrap_or("null"))?;
    // The same error body as a plain chat's (streaming.rs): one shape for every stream.
    assert_eq!(
        (error["error"]["code"].as_str(), error["error"]["type"].as_str()),
        (Some("llm_backend_failed"), Some("server_error")),
        "{body}"
    );
    let after_relay = usage(&server, &id, "tokens_out", after_json + 1).await?;
    assert!(
        after_relay > after_json,
        "the broken-off relayed stream was not charged: {after_relay} ≤ {after_json}"
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_short_by_its_deadline_is_not_normal() -> anyhow::Result<()> {
    let script = Script::StallAfter {
        text: "Espresso is brewed at nine bars.".into(),
        words: 3,
    };
    let options = ServerOptions::default().with_config("[resilience]\nstream_idle_timeout_ms = 60000");
    let (_remote, server, _dir) = with_remote(script, options).await?;
    server.seeded(None, "facts", &corpus()).await?;
    let question = json!({"query": "How is espresso brewed?", "stream": true, "deadline_ms": 3000});
    let (status, mode, _, body) = server
        .post_stream("/v1/collections/facts/query", &question)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mode.as_deref(), Some("normal"), "the answer began normally");
    let events = parse_sse(&body);
    let degraded = events
        .iter()
        .find(|e| e.event == "degraded")
        .map(data)
        .unwrap_or_default();
    assert_eq!(
        degraded["degradation"],
        json!({"stage": "llm:remote", "reason": "deadline"}),
        "{body}"
    );
    assert_eq!(degraded["mode"], "extractive", "{body}");
    let done = events
        .iter()
        .find(|e| e.event == "done")
        .map(data)
        .unwrap_or_default();
    assert_eq!(done["mode"], "extractive", "{body}");
    let text: String = events
        .iter()
        .filter(|e| e.event == "delta")
        .filter_map(|e| data(e)["text"].as_str().map(str::to_string))
        .collect();
    assert!(text.starts_with("Espresso is brewed"), "{text}");
    assert!(
        text.contains("the most relevant passages are"),
        "the passages follow: {text}"
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_served_over_budget_says_whether_it_is_stale() -> anyhow::Result<()> {
    let script = Script::Answer("Nine bars [1].".into());
    let options = ServerOptions::default()
        .with_admin(ADMIN)
        .with_config("[cache.l1]\nttl_s = 2");
    let (_remote, server, _dir) = with_remote(script, options).await?;
    let limits =
        json!({"name": "thrifty", "limits": {"llm_tokens_per_day": 100_000}, "over_quota": "degrade"});
    let (id, key) = server.tenant(ADMIN, &limits).await?;
    server.seeded(Some(&key), "facts", &corpus()).await?;
    let question = json!({"query": "What pressure brews an espresso?"});
    let path = "/v1/collections/facts/query";
    let first = server
        .call(Method::POST, path, Some(&key), Some(&question))
        .await?;
    assert_eq!(first.body["mode"], "normal", "{:?}", first.body);
    assert!(
        usage(&server, &id, "tokens_out", 1).await? >= 1,
        "the answer was charged"
    );
    let spent = json!({"limits": {"llm_tokens_per_day": 1}});
    let tenant = format!("/admin/tenants/{id}");
    let lowered = server.admin(Method::PATCH, &tenant, ADMIN, Some(&spent)).await?;
    assert_eq!(lowered.status, 200, "the budget is spent: {:?}", lowered.body);

    let fresh = server
        .call(Method::POST, path, Some(&key), Some(&question))
        .await?;
    assert_eq!(fresh.body["mode"], "cache_only", "{:?}", fresh.body);
    assert_eq!(fresh.body["cache"]["stale"], false, "{:?}", fresh.body);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let stale = server
        .call(Method::POST, path, Some(&key), Some(&question))
        .await?;
    assert_eq!(stale.body["mode"], "cache_only", "{:?}", stale.body);
    assert_eq!(
        stale.body["cache"]["stale"], true,
        "past its TTL: {:?}",
        stale.body
    );
    assert!(
        stale.body["degraded"].to_string().contains("quota"),
        "{:?}",
        stale.body
    );
    server.stop().await
}

/// `n` passages of `words` words each, from a vocabulary of ordinary words.
fn long_documents(n: usize, words: usize) -> Value {
    let vocabulary = [
        "coffee", "pressure", "water", "grind", "crema", "bean", "roast", "shot", "steam", "cup",
    ];
    let documents: Vec<Value> = (0..n)
        .map(|d| {
            let text: Vec<&str> = (0..words)
                .map(|w| vocabulary[(w * 7 + d) % vocabulary.len()])
                .collect();
            json!({"id": format!("long-{d}"), "text": text.join(" ")})
        })
        .collect();
    json!({ "documents": documents })
}

#[tokio::test(flavor = "multi_thread")]
async fn long_passages_are_fitted_to_the_local_models_window() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Prefilling ~4,000 tokens on two shared cores takes a minute or more: generous limits.
    let options = ServerOptions::default().with_local_llm("local").with_config(
        "ttft_timeout_ms = 600000\ntimeout_ms = 600000\n\n[resilience]\nmax_deadline_ms = 600000",
    );
    let server = Server::start(dir.path(), &options).await?;
    let created = server
        .post(
            "/v1/collections",
            &json!({"name": "long", "chunk_words": 1000, "chunk_overlap_words": 0}),
        )
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let ingested = server
        .post("/v1/collections/long/documents", &long_documents(12, 1000))
        .await?;
    assert_eq!(ingested.status, 200, "{:?}", ingested.body);

    let question =
        json!({"query": "How much pressure for a coffee shot?", "top_k": 12, "deadline_ms": 600000});
    let answer = server.post("/v1/collections/long/query", &question).await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["mode"], "normal", "{:?}", answer.body["degraded"]);
    assert_eq!(answer.body["stages"]["llm"], "local");
    let degraded = answer.body["degraded"].to_string();
    assert!(
        degraded.contains("context_window"),
        "passages were fitted: {degraded}"
    );

    // A plain chat that cannot fit the window is the caller's error, not the model's.
    let huge = vec!["coffee"; 9000].join(" ");
    let chat = json!({"model": "local", "messages": [{"role": "user", "content": huge}]});
    let refused = server.post("/v1/chat/completions", &chat).await?;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(refused.error_code(), Some("context_length_exceeded"));
    let ready = server.get("/readyz").await?;
    assert_eq!(
        ready.body["dependencies"]["llm:local"], "closed",
        "{:?}",
        ready.body
    );
    server.stop().await
}

/// The local model's threads sleep soon at their barriers instead of holding a shared core
/// (gateway/src/main.rs): ragway restarts itself, the same process, with `GOMP_SPINCOUNT` set,
/// and leaves an operator's own setting alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_local_models_threads_do_not_hold_shared_cores() -> anyhow::Result<()> {
    let environment = |server: &Server| -> anyhow::Result<Vec<String>> {
        let raw = std::fs::read(format!("/proc/{}/environ", server.pid()))?;
        Ok(raw
            .split(|&b| b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect())
    };
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &ServerOptions::default()).await?;
    assert!(
        environment(&server)?.contains(&"GOMP_SPINCOUNT=3000".to_string()),
        "ragway runs with libgomp's default spinning"
    );
    let health = server.get("/healthz").await?;
    assert_eq!(health.status, 200, "{:?}", health.body);
    server.stop().await?;

    let options = ServerOptions {
        env: vec![("GOMP_SPINCOUNT".into(), "100".into())],
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;
    let env = environment(&server)?;
    assert!(env.contains(&"GOMP_SPINCOUNT=100".to_string()), "{env:?}");
    server.stop().await
}
