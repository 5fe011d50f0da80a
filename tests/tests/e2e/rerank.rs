//! `POST /v1/rerank` over HTTP: scores equal PyTorch's for the tiny cross-encoder fixture (random
//! weights, scripts/fixtures/make_tiny_cross_encoder.py), best first, with `top_n`,
//! `return_documents`, usage, and the bad-input rules.

use std::path::Path;

use ragway_e2e::{Server, ServerOptions};
use serde_json::{json, Value};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rerank/tests/fixtures/tiny-bert-classifier")
}

#[tokio::test(flavor = "multi_thread")]
async fn rerank_scores_orders_and_refuses_bad_input() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: format!("[models]\nreranker = \"{}\"\n", fixture().display()),
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;
    let ready = server.get("/readyz").await?.body;
    assert_eq!(ready["reranker_backend"], "onnx", "{ready:?}");

    let expected: Vec<Value> =
        serde_json::from_slice(&std::fs::read(fixture().join("expected_logits.json"))?)?;
    let query = "what is the capital of france";
    let cases: Vec<&Value> = expected.iter().filter(|e| e["query"] == query).collect();
    let documents: Vec<&str> = cases.iter().filter_map(|c| c["passage"].as_str()).collect();
    let reply = server
        .post(
            "/v1/rerank",
            &json!({"query": query, "documents": documents, "return_documents": true}),
        )
        .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let results = reply.body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), documents.len());
    let scores: Vec<f64> = results
        .iter()
        .filter_map(|r| r["relevance_score"].as_f64())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    for result in &results {
        let index = result["index"].as_u64().unwrap_or(u64::MAX) as usize;
        let logits = cases[index]["logits"].as_array().cloned().unwrap_or_default();
        let logit = logits.last().and_then(Value::as_f64).unwrap_or(f64::NAN);
        let sigmoid = 1.0 / (1.0 + (-logit).exp());
        let got = result["relevance_score"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (got - sigmoid).abs() < 1e-4,
            "document {index}: {got} vs PyTorch {sigmoid}"
        );
        assert_eq!(result["document"]["text"], documents[index]);
    }
    assert!(reply.body["usage"]["total_tokens"]
        .as_u64()
        .is_some_and(|t| t > documents.len() as u64));

    let top = server
        .post(
            "/v1/rerank",
            &json!({"query": query, "documents": documents, "top_n": 1}),
        )
        .await?;
    assert_eq!(top.body["results"].as_array().map(Vec::len), Some(1));
    assert_eq!(top.body["results"][0]["index"], results[0]["index"]);
    assert!(top.body["results"][0].get("document").is_none());

    let cases = [
        (json!({"query": " ", "documents": ["a"]}), 400, "empty_query"),
        (json!({"query": "q", "documents": []}), 400, "invalid_documents"),
        (
            json!({"query": "q", "documents": vec!["d"; 257]}),
            400,
            "invalid_documents",
        ),
        (
            json!({"query": "q", "documents": ["x".repeat(8_193)]}),
            400,
            "document_too_long",
        ),
        (
            json!({"query": "q", "documents": ["a"], "top_n": 0}),
            400,
            "top_n_out_of_range",
        ),
        (json!({"query": "q", "docs": ["a"]}), 400, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let reply = server.post("/v1/rerank", &body).await?;
        assert_eq!((reply.status, reply.error_code()), (status, Some(code)), "{body}");
    }
    // Cohere's and Jina's clients keep their model names and Cohere's v1 document objects: the
    // configured reranker serves them, and says so; Cohere's v2 client posts to /v2/rerank.
    let named = json!({"model": "rerank-v3.5", "query": query, "documents": [{"text": documents[0]}, documents[1]], "max_tokens_per_doc": 512});
    let served = server.post("/v1/rerank", &named).await?;
    assert_eq!(served.status, 200, "{:?}", served.body);
    assert_eq!(served.body["model"], ready["reranker"], "{:?}", served.body);
    let v2 = server.post("/v2/rerank", &named).await?;
    assert_eq!(v2.status, 200, "{:?}", v2.body);
    assert_eq!(v2.body["results"], served.body["results"]);
    let nowhere = server.post("/v3/rerank", &named).await?;
    assert_eq!(
        (nowhere.status, nowhere.error_code()),
        (404, Some("route_not_found"))
    );
    server.stop().await?;

    // Without a reranker the route says so.
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &ServerOptions::default()).await?;
    let reply = server
        .post("/v1/rerank", &json!({"query": "q", "documents": ["a"]}))
        .await?;
    assert_eq!((reply.status, reply.error_code()), (404, Some("not_configured")));
    server.stop().await
}

const ADMIN: &str = "rerank-admin-key";

/// `/v1/rerank` is metered (its tokens against the tenant's embedding budget) and a large call
/// that runs past the stage timeout is the caller's: it runs to its deadline and never opens the
/// reranker's breaker, which a query-sized call that hangs still does.
#[tokio::test(flavor = "multi_thread")]
async fn rerank_is_metered_and_a_large_call_never_opens_the_shared_breaker() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default().with_admin(ADMIN).with_config(&format!(
        "[models]\nreranker = \"{}\"\n\n[resilience]\nrerank_timeout_ms = 500\nbreaker_failures = 1\n",
        fixture().display()
    ));
    let server = Server::start(dir.path(), &options).await?;
    // Room for the most the large call may take (a token a byte of its pairs), reserved before
    // it runs; it is charged what it took.
    let budget = json!({"name": "ranker", "limits": {"embedding_tokens_per_day": 4000}});
    let (id, key) = server.tenant(ADMIN, &budget).await?;
    let post = reqwest::Method::POST;
    let many: Vec<String> = (0..25)
        .map(|i| format!("passage number {i} about rivers"))
        .collect();
    let body = json!({"query": "which river", "documents": many});

    // Every call of the reranker takes 1.5 s, three times its stage timeout.
    let slow = json!({"stage": "reranker", "kind": "delay", "delay_ms": 1500, "duration_s": 60});
    let set = server
        .admin(post.clone(), "/admin/faults", ADMIN, Some(&slow))
        .await?;
    assert_eq!(set.status, 200, "{:?}", set.body);
    let large = server
        .call(post.clone(), "/v1/rerank", Some(&key), Some(&body))
        .await?;
    assert_eq!(
        large.status, 200,
        "a large call runs to its deadline: {:?}",
        large.body
    );
    let ready = server.admin(reqwest::Method::GET, "/readyz", ADMIN, None).await?;
    assert_eq!(
        ready.body["dependencies"]["reranker"], "closed",
        "{:?}",
        ready.body
    );
    let tokens = large.body["usage"]["total_tokens"].as_u64().unwrap_or(0);
    assert!(tokens > 0, "{:?}", large.body);
    let usage = server
        .admin(
            reqwest::Method::GET,
            &format!("/admin/tenants/{id}/usage"),
            ADMIN,
            None,
        )
        .await?;
    assert_eq!(
        usage.body["days"][0]["embedding_tokens"].as_u64(),
        Some(tokens),
        "{:?}",
        usage.body
    );

    // A call of a query's size that runs past the stage timeout is the reranker's: it opens.
    let small = json!({"query": "which river", "documents": ["the Nile", "the Rhine"]});
    let cut = server
        .call(post.clone(), "/v1/rerank", Some(&key), Some(&small))
        .await?;
    assert_eq!(cut.status, 503, "{:?}", cut.body);
    let ready = server.admin(reqwest::Method::GET, "/readyz", ADMIN, None).await?;
    assert_eq!(ready.body["dependencies"]["reranker"], "open", "{:?}", ready.body);

    // Once the budget is spent, a rerank is refused before any work.
    let cleared = server
        .admin(reqwest::Method::DELETE, "/admin/faults", ADMIN, None)
        .await?;
    assert_eq!(cleared.status, 204);
    let spent = json!({"limits": {"embedding_tokens_per_day": 1}});
    let patched = server
        .admin(
            reqwest::Method::PATCH,
            &format!("/admin/tenants/{id}"),
            ADMIN,
            Some(&spent),
        )
        .await?;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    let started = std::time::Instant::now();
    let refused = loop {
        let reply = server
            .call(post.clone(), "/v1/rerank", Some(&key), Some(&small))
            .await?;
        if reply.status == 429 || started.elapsed() > std::time::Duration::from_secs(10) {
            break reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        (refused.status, refused.error_code()),
        (429, Some("embedding_token_quota_exceeded")),
        "{:?}",
        refused.body
    );
    Ok(())
}
