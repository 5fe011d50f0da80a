//! The fault matrix against the real binary: each fault (and the pairs that change the outcome)
//! gives the HTTP status, `mode`, `degraded` and `x-ragway-mode` of DESIGN.md's table, and the
//! hits really come from the stages the mode claims. Retrieval faults are injected through the
//! admin API (a wrapper around the real stage); remote LLM faults are real HTTP failures of a
//! scripted OpenAI-compatible server (named as such: ragway_e2e::ScriptedOpenAi).

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{corpus, doc_ids};
use ragway_e2e::{
    answers_in_mode, metric, Reply, Script, ScriptedOpenAi, Server, ServerOptions, NO_ANSWER_CACHES,
};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-key";

const QUESTION: &str = "What pressure is used to brew an espresso?";

fn reranker_fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rerank/tests/fixtures/tiny-bert-classifier")
        .display()
        .to_string()
}

/// Two scripted remote LLMs (primary, secondary) and the tiny cross-encoder fixture as reranker.
/// The answer (L1) and retrieval (L3) caches are off: the matrix asks the same question under
/// each fault, and a cached answer would not meet the fault (tests/tests/e2e/cache.rs covers them).
fn options(primary: &ScriptedOpenAi, secondary: &ScriptedOpenAi, resilience: &str) -> ServerOptions {
    ServerOptions {
        config_toml: format!(
            "[models]\nreranker = \"{}\"\n\n[resilience]\n{resilience}\n\n{NO_ANSWER_CACHES}\n\
             [[llm]]\nname = \"primary\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"p\"\ntimeout_ms = 1500\nmax_retries = 1\n\n\
             [[llm]]\nname = \"secondary\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"s\"\ntimeout_ms = 1500\nmax_retries = 0\n",
            reranker_fixture(),
            primary.base_url,
            secondary.base_url
        ),
        env: vec![("RAGWAY_ADMIN_KEY".into(), ADMIN.into())],
    }
}

async fn fault(server: &Server, stage: &str, kind: &str, delay_ms: u64) -> anyhow::Result<()> {
    let body = json!({"stage": stage, "kind": kind, "delay_ms": delay_ms, "duration_s": 60});
    let reply = server
        .admin(Method::POST, "/admin/faults", ADMIN, Some(&body))
        .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    Ok(())
}

async fn clear(server: &Server) -> anyhow::Result<()> {
    assert_eq!(
        server
            .admin(Method::DELETE, "/admin/faults", ADMIN, None)
            .await?
            .status,
        204
    );
    Ok(())
}

async fn search(server: &Server, extra: Value) -> anyhow::Result<Reply> {
    let mut body = json!({"query": QUESTION, "top_k": 4});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    server.post("/v1/collections/facts/search", &body).await
}

async fn query(server: &Server) -> anyhow::Result<Reply> {
    server
        .post(
            "/v1/collections/facts/query",
            &json!({"query": QUESTION, "top_k": 2}),
        )
        .await
}

fn degraded(reply: &Reply) -> Vec<(String, String)> {
    reply.body["degraded"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| {
                    (
                        x["stage"].as_str().unwrap_or("").into(),
                        x["reason"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Status, body mode, header mode and the degradation list, all at once.
fn assert_outcome(what: &str, reply: &Reply, status: u16, mode: &str, expected: &[(&str, &str)]) {
    assert_eq!(reply.status, status, "{what}: {:?}", reply.body);
    assert_eq!(reply.body["mode"], mode, "{what}: {:?}", reply.body);
    assert_eq!(reply.mode_header.as_deref(), Some(mode), "{what}");
    assert_eq!(degraded(reply), pairs(expected), "{what}");
}

fn engines_of_hits(reply: &Reply) -> Vec<Vec<String>> {
    reply.body["hits"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .map(|h| {
                    h["engines"]
                        .as_array()
                        .map(|e| e.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fault_gives_the_mode_of_the_table() -> anyhow::Result<()> {
    let primary = ScriptedOpenAi::start(Script::Answer("Nine bars [1].".into())).await?;
    let secondary = ScriptedOpenAi::start(Script::Answer("About nine bars [2].".into())).await?;
    let dir = tempfile::tempdir()?;
    // A high threshold keeps breakers closed here; breakers have their own test below.
    let resilience = "breaker_failures = 1000\ndense_timeout_ms = 1000\nrerank_timeout_ms = 1000";
    let server = Server::start(dir.path(), &options(&primary, &secondary, resilience)).await?;
    server.seeded(None, "facts", &corpus()).await?;

    // No fault: everything ran.
    let normal = search(&server, json!({})).await?;
    assert_outcome("no fault", &normal, 200, "normal", &[]);
    assert_eq!(normal.body["stages"]["rerank"], "ok");
    let answer = query(&server).await?;
    assert_outcome("no fault (query)", &answer, 200, "normal", &[]);
    assert_eq!(answer.body["stages"]["llm"], "primary");
    assert_eq!(answer.body["answer"], "Nine bars [1].");

    // Retrieval faults, one at a time. A query embedding already in the L2 cache needs no
    // embedder, so the embedder's faults are shown with a question not asked before.
    let fresh = json!({"query": "Which town hosts the crema and nine bars festival?", "top_k": 10});
    fault(&server, "embedder", "error", 0).await?;
    let no_embedder = search(&server, fresh.clone()).await?;
    assert_outcome(
        "embedder error",
        &no_embedder,
        200,
        "keyword_only",
        &[("embed", "error")],
    );
    assert_eq!(no_embedder.body["stages"]["embed"], "failed");
    assert_eq!(no_embedder.body["stages"]["dense"], "skipped");
    let keyword_hits = engines_of_hits(&no_embedder);
    assert!(
        !keyword_hits.is_empty() && keyword_hits.iter().all(|e| e == &["keyword"]),
        "{keyword_hits:?}"
    );
    // The OpenAI-compatible embeddings route goes through the same guard.
    let embeddings = server
        .post("/v1/embeddings", &json!({"input": "anything"}))
        .await?;
    assert_eq!(
        (embeddings.status, embeddings.error_code()),
        (503, Some("embedder_unavailable"))
    );
    clear(&server).await?;

    fault(&server, "dense", "error", 0).await?;
    let no_dense = search(&server, fresh.clone()).await?;
    assert_outcome(
        "dense error",
        &no_dense,
        200,
        "keyword_only",
        &[("dense", "error")],
    );
    // Without the dense engine, the answer is exactly BM25's, whichever dense-side part failed.
    assert_eq!(
        doc_ids(&no_dense.body, "hits"),
        doc_ids(&no_embedder.body, "hits")
    );
    clear(&server).await?;

    fault(&server, "keyword", "error", 0).await?;
    let no_keyword = search(&server, json!({})).await?;
    assert_outcome(
        "keyword error",
        &no_keyword,
        200,
        "dense_only",
        &[("keyword", "error")],
    );
    let dense_hits = engines_of_hits(&no_keyword);
    assert!(
        !dense_hits.is_empty() && dense_hits.iter().all(|e| e == &["dense"]),
        "{dense_hits:?}"
    );
    clear(&server).await?;

    fault(&server, "reranker", "error", 0).await?;
    // RRF asked for: its scores (at most 2 / 61) cannot pass for cross-encoder logits.
    let no_rerank = search(&server, json!({"fusion": {"method": "rrf"}})).await?;
    assert_outcome(
        "reranker error",
        &no_rerank,
        200,
        "no_rerank",
        &[("rerank", "error")],
    );
    // Fused order: RRF scores, not cross-encoder logits.
    let scores: Vec<f64> = no_rerank.body["hits"]
        .as_array()
        .map(|h| h.iter().filter_map(|x| x["score"].as_f64()).collect())
        .unwrap_or_default();
    assert!(
        !scores.is_empty() && scores.iter().all(|s| *s > 0.0 && *s <= 2.0 / 61.0 + 1e-6),
        "{scores:?}"
    );
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));
    clear(&server).await?;

    fault(&server, "reranker", "timeout", 0).await?;
    let slow_rerank = search(&server, json!({})).await?;
    assert_outcome(
        "reranker hangs",
        &slow_rerank,
        200,
        "no_rerank",
        &[("rerank", "timeout")],
    );
    clear(&server).await?;

    fault(&server, "dense", "delay", 3_000).await?;
    let slow_dense = search(&server, json!({})).await?;
    assert_outcome(
        "dense slower than its timeout",
        &slow_dense,
        200,
        "keyword_only",
        &[("dense", "timeout")],
    );
    clear(&server).await?;

    // No retrieval path at all: 503, and the body still says error.
    fault(&server, "embedder", "error", 0).await?;
    fault(&server, "keyword", "error", 0).await?;
    let unseen = json!({"query": "A question nobody asked before about ristretto"});
    let nothing = search(&server, unseen.clone()).await?;
    assert_outcome(
        "embedder + keyword",
        &nothing,
        503,
        "error",
        &[("embed", "error"), ("keyword", "error")],
    );
    assert_eq!(nothing.body["hits"], json!([]));
    let nothing = server.post("/v1/collections/facts/query", &unseen).await?;
    assert_outcome(
        "embedder + keyword (query)",
        &nothing,
        503,
        "error",
        &[("embed", "error"), ("keyword", "error")],
    );
    // Streamed, as a query and as an OpenAI chat: the same 503, mode, header and count.
    let errors_before = answers_in_mode(&server, "error").await?;
    let streamed = json!({"query": "Another unseen question about lungo", "stream": true});
    let nothing = server.post("/v1/collections/facts/query", &streamed).await?;
    assert_outcome(
        "embedder + keyword (streamed query)",
        &nothing,
        503,
        "error",
        &[("embed", "error"), ("keyword", "error")],
    );
    let chat = json!({"model": "facts", "stream": true, "messages": [{"role": "user", "content": "A third unseen question"}]});
    let nothing = server.post("/v1/chat/completions", &chat).await?;
    assert_eq!(
        (nothing.status, nothing.mode_header.as_deref()),
        (503, Some("error"))
    );
    assert_eq!(nothing.body["ragway"]["mode"], "error");
    assert_eq!(nothing.error_code(), Some("no_retrieval_path"));
    // Counted as the answer ends, which may be an instant after the client read it (bounded).
    let started = std::time::Instant::now();
    let mut counted = answers_in_mode(&server, "error").await? - errors_before;
    while counted < 2.0 && started.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        counted = answers_in_mode(&server, "error").await? - errors_before;
    }
    assert_eq!(counted, 2.0);
    clear(&server).await?;

    // LLM faults.
    fault(&server, "llm:primary", "error", 0).await?;
    let fallback = query(&server).await?;
    assert_outcome(
        "primary LLM error",
        &fallback,
        200,
        "fallback_llm",
        &[("llm:primary", "error")],
    );
    assert_eq!(fallback.body["stages"]["llm"], "secondary");
    assert_eq!(fallback.body["answer"], "About nine bars [2].");

    fault(&server, "llm:secondary", "error", 0).await?;
    let extractive = query(&server).await?;
    assert_outcome(
        "every LLM fails",
        &extractive,
        200,
        "extractive",
        &[("llm:primary", "error"), ("llm:secondary", "error")],
    );
    assert_eq!(extractive.body["stages"]["llm"], "extractive");
    let text = extractive.body["answer"].as_str().unwrap_or_default();
    let first = extractive.body["citations"][0]["text"].as_str().unwrap_or("-");
    assert!(
        text.contains("[1]") && text.contains(first.trim()),
        "quotes the cited passages: {text}"
    );

    // Pairs that change the outcome: the most severe consequence names the mode.
    fault(&server, "embedder", "error", 0).await?;
    let both = server.post("/v1/collections/facts/query", &unseen).await?;
    assert_outcome(
        "embedder + every LLM",
        &both,
        200,
        "extractive",
        &[
            ("llm:primary", "error"),
            ("llm:secondary", "error"),
            ("embed", "error"),
        ],
    );
    clear(&server).await?;
    fault(&server, "keyword", "error", 0).await?;
    fault(&server, "llm:primary", "error", 0).await?;
    let pair = query(&server).await?;
    assert_outcome(
        "keyword + primary LLM",
        &pair,
        200,
        "dense_only",
        &[("keyword", "error"), ("llm:primary", "error")],
    );
    assert_eq!(pair.body["stages"]["llm"], "secondary");
    clear(&server).await?;

    // Real remote failures of the primary.
    primary.set(Script::Status(500));
    let e500 = query(&server).await?;
    assert_outcome(
        "primary answers 500",
        &e500,
        200,
        "fallback_llm",
        &[("llm:primary", "error")],
    );
    let calls = primary.calls();
    primary.set(Script::RateLimited {
        retry_after_s: 1,
        times: 1,
        then: "After waiting [1].".into(),
    });
    let started = Instant::now();
    let limited = query(&server).await?;
    assert_outcome("primary 429 then answers", &limited, 200, "normal", &[]);
    assert_eq!(limited.body["answer"], "After waiting [1].");
    assert_eq!(primary.calls(), calls + 2, "one 429, one retry");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After of 1 s was honoured"
    );
    primary.set(Script::Hang);
    let hang = query(&server).await?;
    assert_outcome(
        "primary hangs",
        &hang,
        200,
        "fallback_llm",
        &[("llm:primary", "timeout")],
    );
    drop(primary);
    let killed = query(&server).await?;
    assert_outcome(
        "primary is gone",
        &killed,
        200,
        "fallback_llm",
        &[("llm:primary", "error")],
    );

    // A request's deadline bounds it even when a stage hangs.
    fault(&server, "dense", "delay", 5_000).await?;
    let started = Instant::now();
    let bounded = search(&server, json!({"deadline_ms": 400})).await?;
    let took = started.elapsed();
    // The reranker, left with no time, is skipped for the deadline too.
    assert_outcome(
        "deadline shorter than a slow stage",
        &bounded,
        200,
        "keyword_only",
        &[("dense", "deadline"), ("rerank", "deadline")],
    );
    assert!(took < Duration::from_millis(400 + 300), "answered after {took:?}");
    clear(&server).await?;

    // The admin API wants the admin key.
    let body = json!({"stage": "dense", "kind": "error", "duration_s": 1});
    assert_eq!(server.post("/admin/faults", &body).await?.status, 401);
    assert_eq!(
        server
            .admin(Method::POST, "/admin/faults", "wrong", Some(&body))
            .await?
            .status,
        403
    );
    let unknown = json!({"stage": "llm:nope", "kind": "error", "duration_s": 1});
    let reply = server
        .admin(Method::POST, "/admin/faults", ADMIN, Some(&unknown))
        .await?;
    assert_eq!((reply.status, reply.error_code()), (400, Some("unknown_stage")));
    let listed = server.admin(Method::GET, "/admin/faults", ADMIN, None).await?;
    assert_eq!(listed.body["faults"], json!([]));

    // Every answer above was counted under its mode (a counter that ignores modes fails here).
    let metrics = server.get_text("/metrics").await?;
    for (mode, at_least) in [
        ("normal", 1.0),
        ("no_rerank", 1.0),
        ("dense_only", 1.0),
        ("keyword_only", 3.0),
        ("fallback_llm", 1.0),
        ("extractive", 1.0),
        ("error", 4.0),
    ] {
        let counted = metric(&metrics, &format!("ragway_answers_total{{mode=\"{mode}\"}}"));
        assert!(counted >= at_least, "{mode}: {counted} < {at_least}\n{metrics}");
    }
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_opens_then_one_probe_closes_it_within_the_open_period() -> anyhow::Result<()> {
    let primary = ScriptedOpenAi::start(Script::Answer("Nine bars [1].".into())).await?;
    let secondary = ScriptedOpenAi::start(Script::Answer("About nine bars [2].".into())).await?;
    let dir = tempfile::tempdir()?;
    let open_ms = 1_500;
    let resilience =
        format!("breaker_failures = 2\nbreaker_open_ms = {open_ms}\nbreaker_max_open_ms = {open_ms}");
    let server = Server::start(dir.path(), &options(&primary, &secondary, &resilience)).await?;
    server.seeded(None, "facts", &corpus()).await?;

    fault(&server, "dense", "error", 0).await?;
    for _ in 0..2 {
        let reply = search(&server, json!({})).await?;
        assert_outcome(
            "dense failing",
            &reply,
            200,
            "keyword_only",
            &[("dense", "error")],
        );
    }
    let opened_at = Instant::now();
    let open = search(&server, json!({})).await?;
    assert_outcome(
        "breaker open",
        &open,
        200,
        "keyword_only",
        &[("dense", "breaker_open")],
    );
    let ready = server.get("/readyz").await?;
    assert_eq!(ready.status, 200, "keyword path still serves");
    assert_eq!(ready.body["dependencies"]["dense"], "open");
    assert_eq!(ready.body["dependencies"]["keyword"], "closed");
    assert!(server
        .get_text("/metrics")
        .await?
        .contains("ragway_breaker_state{dependency=\"dense\"} 2"));

    clear(&server).await?;
    // Still open until the period ends, although the fault is gone.
    let still_open = search(&server, json!({})).await?;
    assert_eq!(degraded(&still_open), pairs(&[("dense", "breaker_open")]));
    // Then one probe passes and answers are normal again, within the open period (plus polling).
    let recovered = loop {
        let reply = search(&server, json!({})).await?;
        if reply.body["mode"] == "normal" {
            break opened_at.elapsed();
        }
        assert!(
            opened_at.elapsed() < Duration::from_millis(open_ms + 1_000),
            "not recovered: {:?}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        recovered >= Duration::from_millis(open_ms - 100),
        "recovered too early: {recovered:?}"
    );
    let ready = server.get("/readyz").await?;
    assert_eq!(ready.body["dependencies"]["dense"], "closed");
    assert!(server
        .get_text("/metrics")
        .await?
        .contains("ragway_breaker_state{dependency=\"dense\"} 0"));

    // Both retrieval paths open: not ready. (A question not asked before, so the embedder is needed.)
    fault(&server, "embedder", "error", 0).await?;
    fault(&server, "keyword", "error", 0).await?;
    for _ in 0..2 {
        search(&server, json!({"query": "never asked before"})).await?;
    }
    let ready = server.get("/readyz").await?;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert_eq!(ready.body["ready"], false);
    server.stop().await
}
