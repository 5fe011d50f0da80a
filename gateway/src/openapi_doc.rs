use utoipa::OpenApi;

use crate::routes::{answers, collections, embeddings, health};

#[derive(OpenApi)]
#[openapi(
    info(title = "ragway", description = "A RAG gateway: hybrid retrieval, reranking and pooled LLM generation, with an honest `mode` on every answer."),
    paths(
        collections::create, collections::list, collections::get, collections::delete,
        collections::ingest, collections::delete_document,
        answers::search, answers::query,
        embeddings::embeddings,
        health::healthz, health::readyz, health::metrics,
    ),
    components(schemas(health::Health, health::Readiness)),
    tags(
        (name = "collections", description = "Create, list and drop collections"),
        (name = "documents", description = "Ingest and delete documents"),
        (name = "answers", description = "Search and grounded answers"),
        (name = "openai", description = "OpenAI-compatible endpoints"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;
