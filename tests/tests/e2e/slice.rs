//! The vertical slice against the real binary: ingest, search, query, persistence, idempotence,
//! deletion, OpenAPI, metrics, embeddings.

use crate::common;

use common::{corpus, doc_ids, QUESTIONS};
use ragway_e2e::{Server, ServerOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn search_and_query_answer_from_the_right_document() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &ServerOptions::default()).await?;

    let created = server.post("/v1/collections", &json!({"name": "facts"})).await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let ingested = server.post("/v1/collections/facts/documents", &corpus()).await?;
    assert_eq!(ingested.status, 200, "{:?}", ingested.body);
    assert_eq!(ingested.body["indexed"], 6);

    for (question, expected) in QUESTIONS {
        let reply = server
            .post(
                "/v1/collections/facts/search",
                &json!({"query": question, "top_k": 3}),
            )
            .await?;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["mode"], "normal");
        assert_eq!(reply.mode_header.as_deref(), Some("normal"));
        assert_eq!(reply.body["degraded"], json!([]));
        assert_eq!(reply.body["stages"]["embed"], "ok");
        assert_eq!(reply.body["stages"]["dense"], "ok");
        assert_eq!(reply.body["stages"]["keyword"], "ok");
        assert_eq!(reply.body["stages"]["rerank"], "not_configured");
        assert!(reply.body["timings_ms"]["total"].as_f64().is_some());
        let ids = doc_ids(&reply.body, "hits");
        assert_eq!(
            ids.first().map(String::as_str),
            Some(expected),
            "{question}: {ids:?}"
        );
    }

    // Metadata filters apply to both engines.
    let filtered = server
        .post(
            "/v1/collections/facts/search",
            &json!({"query": "How do bees tell each other where flowers are?", "top_k": 10, "filter": {"topic": "biology"}}),
        )
        .await?;
    let ids = doc_ids(&filtered.body, "hits");
    assert_eq!(ids.first().map(String::as_str), Some("honeybees"));
    assert!(
        ids.iter().all(|id| id == "honeybees" || id == "photosynthesis"),
        "{ids:?}"
    );
    let by_year = server
        .post(
            "/v1/collections/facts/search",
            &json!({"query": "network", "top_k": 10, "filter": {"year": 2021, "topic": "networking"}}),
        )
        .await?;
    assert_eq!(doc_ids(&by_year.body, "hits"), ["tcp"]);

    // A generated answer, grounded on and citing the right document.
    let answer = server
        .post(
            "/v1/collections/facts/query",
            &json!({"query": "What pressure is used to brew an espresso?"}),
        )
        .await?;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["mode"], "normal");
    assert_eq!(answer.mode_header.as_deref(), Some("normal"));
    assert_eq!(answer.body["stages"]["llm"], "local");
    let text = answer.body["answer"].as_str().unwrap_or_default();
    assert!(!text.is_empty(), "empty answer");
    let cited = doc_ids(&answer.body, "citations");
    assert_eq!(
        cited.first().map(String::as_str),
        Some("espresso"),
        "{:?}",
        answer.body
    );
    assert!(answer.body["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0);
    assert!(answer.body["timings_ms"]["llm"].as_f64().is_some());

    // OpenAI-compatible embeddings: 384 unit-length floats per input.
    let embedded = server
        .post(
            "/v1/embeddings",
            &json!({"input": ["hello world", "second"], "model": "x"}),
        )
        .await?;
    assert_eq!(embedded.status, 200);
    let data = embedded.body["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.len(), 2);
    let vector: Vec<f64> = data[0]["embedding"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    assert_eq!(vector.len(), 384);
    let norm: f64 = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);

    // The OpenAPI document is valid OpenAPI 3 and lists every route; the docs page is served
    // from the binary.
    let openapi = server.get("/openapi.json").await?;
    validate_openapi(&openapi.body)?;
    assert!(openapi.body["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/v1/collections",
        "/v1/collections/{name}",
        "/v1/collections/{name}/documents",
        "/v1/collections/{name}/documents/{id}",
        "/v1/collections/{name}/search",
        "/v1/collections/{name}/query",
        "/v1/embeddings",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            openapi.body["paths"][path].is_object(),
            "{path} missing from openapi.json"
        );
    }
    // Every path parameter is in its path's template (a query parameter declared `in: path`
    // breaks generated clients).
    for (path, operations) in openapi.body["paths"].as_object().into_iter().flatten() {
        for operation in operations.as_object().into_iter().flatten().map(|(_, o)| o) {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap_or_default();
                if parameter["in"] == "path" {
                    let template = format!("{{{name}}}");
                    assert!(
                        path.contains(&template),
                        "{path}: `{name}` is not a path parameter"
                    );
                }
            }
        }
    }
    // The same question again: its embedding comes from the L2 cache, and the stage says so.
    let again = server
        .post(
            "/v1/collections/facts/search",
            &json!({"query": QUESTIONS[0].0, "top_k": 3}),
        )
        .await?;
    assert_eq!(again.body["stages"]["embed"], "cached");
    assert_eq!(again.body["mode"], "normal");
    let docs_page = server.get_text("/docs/").await?;
    assert!(docs_page.contains("swagger"), "docs page: {docs_page:.200}");

    let metrics = server.get_text("/metrics").await?;
    assert!(
        metrics.contains("ragway_answers_total{mode=\"normal\"} 10"),
        "{metrics}"
    );
    assert!(metrics.contains("ragway_stage_duration_seconds_bucket{stage=\"dense\""));
    assert!(
        metrics.contains("ragway_requests_total{route=\"/v1/collections/{name}/search\",status=\"200\"} 9")
    );
    assert!(metrics.contains("ragway_llm_tokens_total{backend=\"local\",kind=\"completion\"}"));
    assert!(metrics.contains("ragway_cache_requests_total{layer=\"l2\",result=\"hit\"}"));

    let ready = server.get("/readyz").await?;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["collections"], 1);
    server.stop().await
}

/// Runs openapi-spec-validator (scripts/test.sh installs it and sets RAGWAY_PYTHON).
fn validate_openapi(spec: &serde_json::Value) -> anyhow::Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), spec.to_string())?;
    let python = std::env::var("RAGWAY_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = std::process::Command::new(&python);
    command.args(["-m", "openapi_spec_validator"]).arg(file.path());
    let output = ragway_e2e::bounded::output(&mut command, std::time::Duration::from_secs(120))?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !report.contains("No module named"),
        "openapi-spec-validator is missing for {python}: run scripts/test.sh, or pip install openapi-spec-validator"
    );
    assert!(
        output.status.success(),
        "/openapi.json is not valid OpenAPI:\n{report}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn collections_persist_reingest_is_idempotent_and_delete_reaches_both_stores() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &ServerOptions::default()).await?;
    assert_eq!(
        server
            .post(
                "/v1/collections",
                &json!({"name": "facts", "chunk_words": 20, "chunk_overlap_words": 5})
            )
            .await?
            .status,
        201
    );
    let first = server.post("/v1/collections/facts/documents", &corpus()).await?;
    assert_eq!(first.body["indexed"], 6);
    let chunks = first.body["chunks"].as_u64().unwrap_or(0);
    assert!(chunks > 6, "20-word chunks split the documents: {chunks}");

    // Same ids, same content: nothing is rewritten and the epoch stays.
    let again = server.post("/v1/collections/facts/documents", &corpus()).await?;
    assert_eq!(
        (again.body["indexed"].clone(), again.body["unchanged"].clone()),
        (json!(0), json!(6))
    );
    assert_eq!(again.body["epoch"], first.body["epoch"]);

    // Changed content replaces the old version in both stores.
    let changed = json!({"documents": [{"id": "espresso", "text": "A flat white is steamed milk over a double ristretto.", "metadata": {"topic": "food"}}]});
    let replaced = server.post("/v1/collections/facts/documents", &changed).await?;
    assert_eq!(replaced.body["indexed"], 1);
    let crema = server
        .post(
            "/v1/collections/facts/search",
            &json!({"query": "crema nine bars pressure", "top_k": 100}),
        )
        .await?;
    let hits = crema.body["hits"].as_array().cloned().unwrap_or_default();
    assert!(
        hits.iter()
            .all(|h| !h["text"].as_str().unwrap_or("").contains("crema")),
        "old version still found"
    );

    // Restart on the same data directory: everything is still there.
    let info_before = server.get("/v1/collections/facts").await?.body;
    server.stop().await?;
    let server = Server::start(dir.path(), &ServerOptions::default()).await?;
    let info_after = server.get("/v1/collections/facts").await?.body;
    assert_eq!(info_before, info_after);
    let listed = server.get("/v1/collections").await?;
    assert_eq!(listed.body["collections"][0]["name"], "facts");
    let volcano = server
        .post(
            "/v1/collections/facts/search",
            &json!({"query": "Which volcano in Sicily erupts often?"}),
        )
        .await?;
    assert_eq!(
        doc_ids(&volcano.body, "hits").first().map(String::as_str),
        Some("volcanoes")
    );
    assert_eq!(volcano.body["mode"], "normal");

    // Delete: gone from both engines. With top_k above the collection's size the dense engine
    // returns every chunk it holds, so absence means absence from both stores.
    let deleted = server.delete("/v1/collections/facts/documents/tcp").await?;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert!(deleted.body["chunks_removed"].as_u64().unwrap_or(0) >= 1);
    let tcp = server
        .post(
            "/v1/collections/facts/search",
            &json!({"query": "TCP three-way handshake SYN ACK", "top_k": 100}),
        )
        .await?;
    let ids = doc_ids(&tcp.body, "hits");
    assert!(!ids.is_empty());
    assert!(!ids.contains(&"tcp".to_string()), "{ids:?}");
    assert_eq!(
        server.delete("/v1/collections/facts/documents/tcp").await?.status,
        404
    );

    // Dropping the collection removes it and its files.
    assert_eq!(server.delete("/v1/collections/facts").await?.status, 204);
    assert_eq!(server.get("/v1/collections/facts").await?.status, 404);
    assert!(!dir.path().join("dense/facts").exists());
    assert!(!dir.path().join("keyword/facts").exists());
    server.stop().await
}
