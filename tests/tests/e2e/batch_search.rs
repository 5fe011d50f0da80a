//! `/search/batch` through the real binary: the same hits as one `/search` each, the queries
//! embedded as one batch for the model, each result with its own mode, and input refused whole
//! with the query it was about named.

use crate::common::{corpus, doc_ids, QUESTIONS};
use ragway_e2e::{Server, ServerOptions, NO_ANSWER_CACHES};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "batch-admin-key";
const BATCH: &str = "/v1/collections/facts/search/batch";

fn options() -> ServerOptions {
    // No L2 either: every query of the batch reaches the model.
    let caches = format!("{NO_ANSWER_CACHES}\n[cache.l2]\nttl_s = 3600\nmax_entries = 0\n");
    ServerOptions {
        config_toml: caches,
        env: vec![("RAGWAY_ADMIN_KEY".into(), ADMIN.into())],
    }
}

/// Tasks the embedder's model thread has taken from its interactive lane so far.
async fn embedder_tasks(server: &Server) -> anyhow::Result<f64> {
    let exposition = server.get_text("/metrics").await?;
    Ok(exposition
        .lines()
        .filter(|l| l.starts_with("ragway_worker_queue_wait_seconds_count"))
        .filter(|l| l.contains("worker=\"embedder\"") && l.contains("lane=\"interactive\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn batch(questions: &[&str]) -> Value {
    let queries: Vec<Value> = questions
        .iter()
        .map(|q| json!({"query": q, "top_k": 3}))
        .collect();
    json!({ "queries": queries })
}

#[tokio::test]
async fn a_batch_answers_each_query_as_search_would_in_one_embedding_batch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &options()).await?;
    server.seeded(None, "facts", &corpus()).await?;
    let questions: Vec<&str> = QUESTIONS.iter().map(|(q, _)| *q).collect();

    let before = embedder_tasks(&server).await?;
    let reply = server.post(BATCH, &batch(&questions)).await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let tasks = embedder_tasks(&server).await? - before;
    assert_eq!(tasks, 1.0, "six queries, one task for the model");
    let results = reply.body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), QUESTIONS.len());
    for (result, (question, expected)) in results.iter().zip(QUESTIONS) {
        assert_eq!(result["mode"], "normal", "{question}: {result}");
        assert_eq!(result["stages"]["embed"], "ok", "{question}: {result}");
        assert_eq!(
            doc_ids(result, "hits").first().map(String::as_str),
            Some(expected)
        );
        let single = server
            .post(
                "/v1/collections/facts/search",
                &json!({"query": question, "top_k": 3}),
            )
            .await?;
        assert_eq!(
            doc_ids(result, "hits"),
            doc_ids(&single.body, "hits"),
            "{question}: as /search answers it"
        );
    }

    // Each result says how it was made: with the dense store failing, keyword only.
    let fault = json!({"stage": "dense", "kind": "error", "duration_s": 60});
    let injected = server
        .admin(Method::POST, "/admin/faults", ADMIN, Some(&fault))
        .await?;
    assert_eq!(injected.status, 200);
    let reply = server.post(BATCH, &batch(&questions[..2])).await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    for result in reply.body["results"].as_array().into_iter().flatten() {
        assert_eq!(result["mode"], "keyword_only", "{result}");
    }
    Ok(())
}

#[tokio::test]
async fn a_bad_batch_is_refused_whole_naming_the_query() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &options()).await?;
    server.seeded(None, "facts", &corpus()).await?;

    let empty = server.post(BATCH, &json!({"queries": []})).await?;
    assert_eq!(empty.status, 400, "{:?}", empty.body);
    assert_eq!(empty.error_code(), Some("invalid_queries"));

    let many: Vec<&str> = vec!["volcano"; 33];
    let too_many = server.post(BATCH, &batch(&many)).await?;
    assert_eq!(too_many.status, 400, "{:?}", too_many.body);
    assert!(
        too_many.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limits.max_batch_queries")),
        "{:?}",
        too_many.body
    );

    let before = embedder_tasks(&server).await?;
    let blank = server
        .post(BATCH, &batch(&["What is an espresso?", "volcano", "   "]))
        .await?;
    assert_eq!(blank.status, 400, "{:?}", blank.body);
    assert_eq!(blank.error_code(), Some("empty_query"));
    assert!(
        blank.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("query 2:")),
        "{:?}",
        blank.body
    );
    let top_k = json!({"queries": [{"query": "volcano", "top_k": 0}]});
    let zero = server.post(BATCH, &top_k).await?;
    assert_eq!(zero.error_code(), Some("top_k_out_of_range"), "{:?}", zero.body);
    assert_eq!(
        embedder_tasks(&server).await?,
        before,
        "nothing was embedded for a refused batch"
    );

    let missing = server
        .post("/v1/collections/nope/search/batch", &batch(&["volcano"]))
        .await?;
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    Ok(())
}
