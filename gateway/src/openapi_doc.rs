use utoipa::OpenApi;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::Modify;

use crate::routes::{admin, answers, collections, embeddings, health, jobs, openai, rerank, tenants};

#[derive(OpenApi)]
#[openapi(
    info(title = "ragway", description = "A RAG gateway: hybrid retrieval, reranking and pooled LLM generation, with an honest `mode` on every answer."),
    paths(
        collections::create, collections::list, collections::get, collections::update, collections::delete,
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
    modifiers(&AdminKey, &TenantKey),
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

/// Declares the tenant API key every `/v1` operation takes (`auth.mode = "keys"`), and the
/// answers every one of them can give for it: 401 (no or unknown key) and 429 (over the
/// tenant's request rate).
struct TenantKey;

impl Modify for TenantKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        let scheme = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", scheme);
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build()
        };
        for (path, item) in openapi
            .paths
            .paths
            .iter_mut()
            .filter(|(p, _)| p.starts_with("/v1/"))
        {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.put,
            ];
            for operation in operations.into_iter().flatten() {
                operation.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
                let responses = &mut operation.responses.responses;
                responses
                    .entry("401".into())
                    .or_insert_with(|| error("No API key, or an unknown or revoked one").into());
                responses.entry("429".into()).or_insert_with(|| {
                    error("Over a quota of the tenant (with `Retry-After` when waiting helps)").into()
                });
                if path.ends_with("/documents") {
                    responses
                        .entry("413".into())
                        .or_insert_with(|| error("Body too large, or over a storage quota").into());
                }
            }
        }
    }
}
