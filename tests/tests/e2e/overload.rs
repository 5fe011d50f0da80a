//! Careless clients and overload: bulk work never starves queries, a full queue answers at once
//! (503 + `Retry-After` on bulk routes), and no client can open a breaker shared with others by
//! sending requests that cannot succeed.

use crate::common;

use std::time::Duration;

use common::corpus;
use ragway_e2e::{metric, Script, ScriptedOpenAi, Server, ServerOptions};
use serde_json::{json, Value};

fn long_inputs(n: usize, words: usize) -> Value {
    let inputs: Vec<String> = (0..n)
        .map(|i| {
            format!("passage {i} ") + &"about the history of coffee roasting and brewing ".repeat(words / 8)
        })
        .collect();
    json!({"input": inputs})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_bulk_request_never_starves_queries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &ServerOptions::default()).await?;
    server.seeded(None, "facts", &corpus()).await?;
    // A batch of ingestion (64 chunks by default) takes longer than one query's embed timeout
    // (2 s) on a CPU; it has its own, and is not cut short.
    let many: Vec<Value> = (0..130)
        .map(|i| json!({"id": format!("bulk-{i}"), "text": format!("Bulk document {i}. ") + &"Rivers carry sediment from the mountains to the sea and build wide deltas over many centuries. ".repeat(6)}))
        .collect();
    let ingested = server
        .post("/v1/collections/facts/documents", &json!({"documents": many}))
        .await?;
    assert_eq!(
        (ingested.status, ingested.body["indexed"].clone()),
        (200, json!(130)),
        "{:?}",
        ingested.body
    );

    // 256 long inputs take the embedder many seconds; the client gives up after 2 s.
    let url = server.url("/v1/embeddings");
    let bulk = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let sent = http.post(url).json(&long_inputs(256, 180)).send().await;
        anyhow::Ok(sent.is_err())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Queries meanwhile (each new, so none is served from the embedding cache) use the embedder.
    for i in 0..8 {
        let query = json!({"query": format!("question {i}: which volcano erupts in Sicily?"), "top_k": 3});
        let reply = server.post("/v1/collections/facts/search", &query).await?;
        assert_eq!(
            reply.body["mode"], "normal",
            "query {i} during bulk work: {:?}",
            reply.body
        );
        assert_eq!(reply.body["stages"]["embed"], "ok");
    }
    assert!(bulk.await??, "the bulk client was meant to time out");
    // The abandoned bulk work is dropped, not finished; the embedder's breaker never opened.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let metrics = server.get_text("/metrics").await?;
    let abandoned = metric(
        &metrics,
        "ragway_worker_abandoned_total{worker=\"embedder\",lane=\"bulk\"}",
    );
    assert_eq!(abandoned, 1.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "ragway_breaker_state{dependency=\"embedder\"}"),
        0.0
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_bulk_queue_answers_503_with_retry_after_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: "[queues]\nembedder_bulk = 1\n".into(),
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;
    let http = ragway_e2e::client()?;
    let requests = (0..4).map(|_| {
        let (http, url) = (http.clone(), server.url("/v1/embeddings"));
        async move {
            let response = http.post(url).json(&long_inputs(48, 120)).send().await?;
            let retry_after = response.headers().get("retry-after").cloned();
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            anyhow::Ok((status, retry_after, body))
        }
    });
    let replies = futures::future::join_all(requests).await;
    let mut busy = 0;
    for reply in replies {
        let (status, retry_after, body) = reply?;
        match status {
            200 => assert_eq!(body["data"].as_array().map(Vec::len), Some(48)),
            503 => {
                busy += 1;
                assert_eq!(body["error"]["code"], "embedder_busy", "{body}");
                assert!(retry_after.is_some(), "503 without Retry-After");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // One runs, one waits in the queue of 1; the others are refused.
    assert!(busy >= 1, "no request was refused");
    let metrics = server.get_text("/metrics").await?;
    assert!(
        metric(
            &metrics,
            "ragway_worker_rejected_total{worker=\"embedder\",lane=\"bulk\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(&metrics, "ragway_breaker_state{dependency=\"embedder\"}"),
        0.0
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_cannot_succeed_never_open_a_shared_breaker() -> anyhow::Result<()> {
    // A remote backend that refuses every request as malformed (400), beside the local model
    // limited to a 1024-token window.
    let refusing = ScriptedOpenAi::start(Script::Status(400)).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: format!(
            "[resilience]\nbreaker_failures = 2\n\n\
             [[llm]]\nname = \"local\"\nkind = \"local\"\nmodel = \"{}\"\ncontext_tokens = 1024\n\n\
             [[llm]]\nname = \"refusing\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"r\"\nmax_retries = 0\n",
            ragway_e2e::models_dir().join("smollm2-135m-instruct").display(),
            refusing.base_url
        ),
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;
    let created = server
        .post(
            "/v1/collections",
            &json!({"name": "long", "chunk_words": 1000, "chunk_overlap_words": 0}),
        )
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let docs: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("d{i}"), "text": format!("Chapter {i} on espresso. ") + &"Espresso is brewed at nine bars of pressure with finely ground coffee. ".repeat(40)}))
        .collect();
    assert_eq!(
        server
            .post("/v1/collections/long/documents", &json!({"documents": docs}))
            .await?
            .status,
        200
    );

    // Six long passages cannot fit 1024 tokens: the prompt is fitted, the answer says so, and
    // the local model's breaker stays closed however often it is asked.
    for _ in 0..3 {
        let reply = server
            .post(
                "/v1/collections/long/query",
                &json!({"query": "At what pressure is espresso brewed?", "top_k": 6}),
            )
            .await?;
        assert_eq!(reply.body["mode"], "normal", "{:?}", reply.body);
        assert_eq!(reply.body["stages"]["llm"], "local");
        assert!(
            reply.body["degraded"]
                .as_array()
                .is_some_and(|d| d.contains(&json!({"stage": "prompt", "reason": "context_window"}))),
            "{:?}",
            reply.body["degraded"]
        );
        let usage = &reply.body["usage"];
        let used = usage["prompt_tokens"].as_u64().unwrap_or(u64::MAX)
            + usage["completion_tokens"].as_u64().unwrap_or(0);
        assert!(used <= 1024, "the prompt was fitted to the window: {usage:?}");
    }
    // A remote backend answering 400 is the request's fault, not the backend's: passed on.
    let chat = json!({"model": "refusing", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..3 {
        let refused = server.post("/v1/chat/completions", &chat).await?;
        assert_eq!(
            (refused.status, refused.error_code()),
            (400, Some("backend_rejected_request")),
            "{:?}",
            refused.body
        );
    }
    // A finite but absurd Retry-After is capped, not a panic: no retry fits the deadline.
    refusing.set(Script::RateLimited {
        retry_after_s: u64::MAX,
        times: 5,
        then: "late".into(),
    });
    let limited = server.post("/v1/chat/completions", &chat).await?;
    assert_eq!(
        (limited.status, limited.error_code()),
        (503, Some("llm_unavailable"))
    );
    let ready = server.get("/readyz").await?.body;
    assert_eq!(ready["dependencies"]["llm:local"], "closed", "{ready:?}");
    assert_eq!(ready["dependencies"]["llm:refusing"], "closed", "{ready:?}");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_llm_queue_degrades_answers_at_once_instead_of_queueing_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: "[queues]\nlocal_llm = 1\n".into(),
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;
    server.seeded(None, "facts", &corpus()).await?;
    // Five questions at once for a model that answers one at a time and lets one wait.
    let server = &server;
    let asked = (0..5).map(|i| {
        let body = json!({"query": format!("At what pressure is espresso brewed? ({i})"), "top_k": 2});
        async move { server.post("/v1/collections/facts/query", &body).await }
    });
    let replies = futures::future::join_all(asked).await;
    let mut overloaded = 0;
    for reply in replies {
        let reply = reply?;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        match reply.body["mode"].as_str() {
            Some("normal") => assert_eq!(reply.body["stages"]["llm"], "local"),
            Some("extractive") => {
                assert_eq!(
                    reply.body["degraded"],
                    json!([{"stage": "llm:local", "reason": "overloaded"}])
                );
                overloaded += 1;
            }
            other => panic!("unexpected mode {other:?}: {:?}", reply.body),
        }
    }
    assert!(overloaded >= 1, "no answer was turned away");
    let metrics = server.get_text("/metrics").await?;
    assert!(
        metric(
            &metrics,
            "ragway_worker_rejected_total{worker=\"llm-local\",lane=\"interactive\"}"
        ) >= 1.0
    );
    let ready = server.get("/readyz").await?.body;
    assert_eq!(ready["dependencies"]["llm:local"], "closed", "{ready:?}");
    Ok(())
}
