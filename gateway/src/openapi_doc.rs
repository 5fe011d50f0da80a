use utoipa::OpenApi;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::Modify;

use crate::routes::{admin, answers, collections, embeddings, health, jobs, openai, rerank, tenants};

#[derive(OpenApi)]
#[openapi(
    info(title = "ragway", description = "A RAG gateway: hybrid retrieval, reranking and pooled LLM generation, with an honest `mode` on every answer."),
    paths(
        collections::create, collections::list, collections::get, collections::delete,
        collections::ingest, collections::delete_document,
        jobs::get_job, jobs::cancel_job, jobs::list_jobs,
        answers::search, answers::query,
        embeddings::embeddings, rerank::rerank, openai::chat_completions, openai::models,
        health::healthz, health::readyz, health::metrics,
        admin::set_fault, admin::list_faults, admin::clear_faults, admin::invalidate_cache,
        tenants::create, tenants::list, tenants::get, tenants::update, tenants::delete,
        tenants::create_key, tenants::revoke_key, tenants::usage,
    ),
    components(schemas(health::Health, health::Readiness)),
    modifiers(&AdminKey),
    tags(
        (name = "collections", description = "Create, list and drop collections"),
        (name = "documents", description = "Ingest and delete documents"),
        (name = "answers", description = "Search and grounded answers"),
        (name = "openai", description = "OpenAI-compatible endpoints"),
        (name = "operations", description = "Health, readiness, metrics"),
        (name = "admin", description = "Operator endpoints; `Authorization: Bearer <admin key>`"),
    )
)]
pub struct ApiDoc;

/// Declares the admin bearer key the `/admin` routes require.
struct AdminKey;

impl Modify for AdminKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("admin_key", scheme);
    }
}
