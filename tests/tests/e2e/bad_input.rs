//! Every kind of bad input gets a JSON 4xx with a code, and nothing is stored.

use crate::common;

use common::corpus;
use ragway_e2e::{Server, ServerOptions};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_json_4xx_and_stores_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: "[server]\nmax_body_bytes = 65536\nmax_query_chars = 200\n\n\
            [limits]\nmax_document_bytes = 2000\nmax_metadata_bytes = 200\nmax_metadata_keys = 4\n\
            max_chunks_per_request = 50\nmax_collections = 3\nmax_embedding_inputs = 8\nmax_embedding_input_chars = 500\n"
            .into(),
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;
    assert_eq!(
        server
            .post("/v1/collections", &json!({"name": "facts"}))
            .await?
            .status,
        201
    );
    assert_eq!(
        server
            .post("/v1/collections/facts/documents", &corpus())
            .await?
            .status,
        200
    );
    let before = server.get("/v1/collections").await?.body;

    let search = "/v1/collections/facts/search";
    let query = "/v1/collections/facts/query";
    let docs = "/v1/collections/facts/documents";
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        ("empty query", search, json!({"query": "   "}), 400, "empty_query"),
        (
            "empty query (answer)",
            query,
            json!({"query": ""}),
            400,
            "empty_query",
        ),
        (
            "oversized query",
            search,
            json!({"query": "x".repeat(201)}),
            400,
            "query_too_long",
        ),
        (
            "top_k zero",
            search,
            json!({"query": "q", "top_k": 0}),
            400,
            "top_k_out_of_range",
        ),
        (
            "top_k too large",
            query,
            json!({"query": "q", "top_k": 101}),
            400,
            "top_k_out_of_range",
        ),
        (
            "top_k negative",
            search,
            json!({"query": "q", "top_k": -1}),
            400,
            "invalid_body",
        ),
        (
            "unknown field",
            search,
            json!({"query": "q", "topk": 3}),
            400,
            "invalid_body",
        ),
        (
            "float filter",
            search,
            json!({"query": "q", "filter": {"year": 1.5}}),
            400,
            "invalid_filter",
        ),
        (
            "nested filter key",
            search,
            json!({"query": "q", "filter": {"a.b": "c"}}),
            400,
            "invalid_filter",
        ),
        (
            "unknown collection",
            "/v1/collections/nope/search",
            json!({"query": "q"}),
            404,
            "collection_not_found",
        ),
        (
            "unknown collection ingest",
            "/v1/collections/nope/documents",
            corpus(),
            404,
            "collection_not_found",
        ),
        (
            "invalid name",
            "/v1/collections",
            json!({"name": "Bad Name!"}),
            400,
            "invalid_collection_name",
        ),
        (
            "path-like name",
            "/v1/collections",
            json!({"name": "../etc"}),
            400,
            "invalid_collection_name",
        ),
        (
            "duplicate collection",
            "/v1/collections",
            json!({"name": "facts"}),
            409,
            "collection_exists",
        ),
        (
            "bad chunking",
            "/v1/collections",
            json!({"name": "c2", "chunk_words": 10, "chunk_overlap_words": 10}),
            400,
            "invalid_chunking",
        ),
        (
            "no documents",
            docs,
            json!({"documents": []}),
            400,
            "invalid_documents",
        ),
        (
            "empty document",
            docs,
            json!({"documents": [{"id": "new", "text": " "}]}),
            400,
            "empty_document",
        ),
        (
            "empty id",
            docs,
            json!({"documents": [{"id": "", "text": "t"}]}),
            400,
            "invalid_document_id",
        ),
        (
            "duplicate ids",
            docs,
            json!({"documents": [{"id": "a", "text": "t"}, {"id": "a", "text": "u"}]}),
            400,
            "duplicate_document_id",
        ),
        (
            "metadata not an object",
            docs,
            json!({"documents": [{"id": "new", "text": "t", "metadata": [1]}]}),
            400,
            "invalid_body",
        ),
        (
            "missing text",
            docs,
            json!({"documents": [{"id": "new"}]}),
            400,
            "invalid_body",
        ),
        (
            "embeddings empty",
            "/v1/embeddings",
            json!({"input": []}),
            400,
            "invalid_input",
        ),
        (
            "embeddings: too many inputs (limits.max_embedding_inputs)",
            "/v1/embeddings",
            json!({"input": vec!["a"; 9]}),
            400,
            "invalid_input",
        ),
        (
            "embeddings: input too long (limits.max_embedding_input_chars)",
            "/v1/embeddings",
            json!({"input": ["x".repeat(501)]}),
            400,
            "input_too_long",
        ),
        (
            "document text over limits.max_document_bytes",
            docs,
            json!({"documents": [{"id": "big", "text": "word ".repeat(401)}]}),
            400,
            "document_too_large",
        ),
        (
            "too many metadata keys",
            docs,
            json!({"documents": [{"id": "m", "text": "t", "metadata": {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}}]}),
            400,
            "metadata_too_large",
        ),
        (
            "metadata over limits.max_metadata_bytes",
            docs,
            json!({"documents": [{"id": "m", "text": "t", "metadata": {"a": "x".repeat(200)}}]}),
            400,
            "metadata_too_large",
        ),
        (
            "more chunks than limits.max_chunks_per_request",
            docs,
            json!({"documents": (0..30).map(|i| json!({"id": format!("c{i}"), "text": "word ".repeat(150)})).collect::<Vec<_>>()}),
            400,
            "too_many_chunks",
        ),
        (
            "chunk_words under limits.min_chunk_words",
            "/v1/collections",
            json!({"name": "tiny", "chunk_words": 2, "chunk_overlap_words": 0}),
            400,
            "invalid_chunking",
        ),
        (
            "a collection named like an LLM backend",
            "/v1/collections",
            json!({"name": "local"}),
            400,
            "name_taken_by_llm_backend",
        ),
        (
            "max_tokens over generation.max_tokens_cap",
            "/v1/chat/completions",
            json!({"model": "local", "max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "max_tokens_out_of_range",
        ),
    ];
    for (what, path, body, status, code) in cases {
        let reply = server.post(path, &body).await?;
        assert_eq!(reply.status, status, "{what}: {:?}", reply.body);
        assert_eq!(reply.error_code(), Some(code), "{what}: {:?}", reply.body);
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }

    let malformed = server.post_raw(search, "{\"query\": ").await?;
    assert_eq!(
        (malformed.status, malformed.error_code()),
        (400, Some("malformed_json"))
    );
    let not_json = server.post_raw("/v1/collections", "name=facts").await?;
    assert_eq!(
        (not_json.status, not_json.error_code()),
        (400, Some("malformed_json"))
    );
    let huge = json!({"documents": [{"id": "huge", "text": "word ".repeat(20_000)}]}).to_string();
    let too_large = server.post_raw(docs, huge).await?;
    assert_eq!(
        (too_large.status, too_large.error_code()),
        (413, Some("body_too_large"))
    );

    // Nothing was stored by any of the above.
    assert_eq!(server.get("/v1/collections").await?.body, before);
    let unknown_doc = server.delete("/v1/collections/facts/documents/new").await?;
    assert_eq!(
        (unknown_doc.status, unknown_doc.error_code()),
        (404, Some("document_not_found"))
    );

    // limits.max_collections = 3: facts and two more, then a 409 naming the key.
    for name in ["second", "third"] {
        assert_eq!(
            server
                .post("/v1/collections", &json!({"name": name}))
                .await?
                .status,
            201
        );
    }
    let fourth = server.post("/v1/collections", &json!({"name": "fourth"})).await?;
    assert_eq!(
        (fourth.status, fourth.error_code()),
        (409, Some("too_many_collections"))
    );
    assert!(fourth.body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("limits.max_collections")));
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_effective_configuration_masks_secrets_inside_urls() -> anyhow::Result<()> {
    let mut command = std::process::Command::new(ragway_e2e::binary()?);
    command
        .arg("--validate-and-exit")
        .env(
            "RAGWAY__CACHE__REDIS__URL",
            "redis://:hunter2-redis@127.0.0.1:6379/0",
        )
        .env(
            "RAGWAY__MODELS__EMBEDDER",
            "openai:https://user:hunter2-embedder@tei.internal/v1?api_key=hunter2-query#bge",
        );
    let shown = ragway_e2e::bounded::output(&mut command, std::time::Duration::from_secs(60))?;
    let printed = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(!printed.contains("hunter2"), "a secret was printed:\n{printed}");
    assert!(printed.contains("redis://***@127.0.0.1:6379/0"), "{printed}");
    assert!(
        printed.contains("openai:https://***@tei.internal/v1?api_key=***#bge"),
        "{printed}"
    );
    Ok(())
}
