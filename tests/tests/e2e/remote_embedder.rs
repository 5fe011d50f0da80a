//! A remote embedder: a second ragway process serving `/v1/embeddings` (real HTTP) is the
//! embedding service of the first (`models.embedder = "openai:<base_url>#<model>"`). Its vectors
//! equal the local model's, answers come from it, and a collection made with one embedder refuses
//! ingestion and search through another.

use crate::common;

use common::{corpus, doc_ids};
use ragway_e2e::{Server, ServerOptions};
use serde_json::{json, Value};

fn vectors(reply: &Value) -> Vec<Vec<f64>> {
    reply["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            d["embedding"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_remote_embedder_serves_and_collections_keep_theirs() -> anyhow::Result<()> {
    let service_dir = tempfile::tempdir()?;
    let service = Server::start(service_dir.path(), &ServerOptions::default()).await?;
    let remote = ServerOptions {
        config_toml: format!(
            "[models]\nembedder = \"openai:{}#all-minilm-l6-v2\"\n",
            service.url("/v1")
        ),
        env: Vec::new(),
    };
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &remote).await?;
    let ready = server.get("/readyz").await?;
    assert_eq!(ready.body["embedder_backend"], "remote", "{:?}", ready.body);

    let texts = json!({"input": ["Espresso is brewed at nine bars.", "TCP opens with a handshake."]});
    let local = vectors(&service.post("/v1/embeddings", &texts).await?.body);
    let through = vectors(&server.post("/v1/embeddings", &texts).await?.body);
    assert_eq!((local.len(), through.len()), (2, 2));
    for (a, b) in local.iter().zip(&through) {
        let gap = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(
            a.len() == 384 && gap < 1e-6,
            "the remote vectors are the local ones (gap {gap})"
        );
    }

    let created = server.post("/v1/collections", &json!({"name": "facts"})).await?;
    assert!(
        created.body["embedder"]
            .as_str()
            .is_some_and(|e| e.starts_with("openai:all-minilm-l6-v2@")),
        "{:?}",
        created.body
    );
    assert_eq!(
        server
            .post("/v1/collections/facts/documents", &corpus())
            .await?
            .status,
        200
    );
    let search = server
        .post(
            "/v1/collections/facts/search",
            &json!({"query": "How do bees tell each other where flowers are?", "top_k": 3}),
        )
        .await?;
    assert_eq!(search.body["mode"], "normal", "{:?}", search.body);
    assert_eq!(
        doc_ids(&search.body, "hits").first().map(String::as_str),
        Some("honeybees")
    );
    server.stop().await?;

    // The same data served with the local embedder: its vectors came from another one.
    let local_server = Server::start(dir.path(), &ServerOptions::default()).await?;
    let refused = local_server
        .post("/v1/collections/facts/search", &json!({"query": "bees"}))
        .await?;
    assert_eq!(
        (refused.status, refused.error_code()),
        (409, Some("embedder_mismatch")),
        "{:?}",
        refused.body
    );
    let ingest = local_server
        .post(
            "/v1/collections/facts/documents",
            &json!({"documents": [{"id": "x", "text": "More."}]}),
        )
        .await?;
    assert_eq!(
        (ingest.status, ingest.error_code()),
        (409, Some("embedder_mismatch"))
    );
    assert_eq!(
        local_server.get("/v1/collections/facts").await?.body["documents"],
        6,
        "nothing stored"
    );
    Ok(())
}
