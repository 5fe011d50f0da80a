use utoipa::OpenApi;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::Modify;

use serde_json::{json, Value};

use crate::config::Config;
use crate::http::routes::{
    admin, answers, collections, embeddings, files, health, import, jobs, openai, rerank, tenants,
};
use crate::validate;

#[derive(OpenApi)]
#[openapi(
    info(title = "ragway", description = "A RAG gateway: hybrid retrieval, reranking and pooled LLM generation, with an honest `mode` on every answer."),
    paths(
        collections::create, collections::list, collections::get, collections::update, collections::delete,
        collections::ingest, collections::list_documents, collections::delete_document, files::upload, import::import,
        jobs::get_job, jobs::cancel_job, jobs::list_jobs,
        answers::search, answers::search_batch, answers::query,
        embeddings::embeddings, rerank::rerank, rerank::rerank_v2, openai::chat_completions, openai::models,
        health::healthz, health::readyz, health::metrics,
        admin::set_fault, admin::list_faults, admin::clear_faults, admin::invalidate_cache,
        admin::snapshot_collection, admin::restore_collection, admin::list_snapshots,
        tenants::create, tenants::list, tenants::get, tenants::update, tenants::delete,
        tenants::create_key, tenants::revoke_key, tenants::usage, tenants::own_usage,
        admin::list_collections,
    ),
    components(schemas(health::Health, health::Readiness, health::ReadinessDetail)),
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

/// The OpenAPI document this server serves: [`ApiDoc`] with every input rule the validators
/// enforce stated in the schemas — patterns, lengths, ranges, enums — from the same constants and
/// the same configured limits, so generated clients and validators learn them from the document
/// rather than from 400s, and the two cannot drift.
pub fn document(config: &Config) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let schemas = &mut doc["components"]["schemas"];
    for (schema, property, rule) in rules(config) {
        let target = &mut schemas[schema]["properties"][property];
        if let (Some(target), Value::Object(rule)) = (target.as_object_mut(), rule) {
            target.extend(rule);
        }
    }
    schemas["EmbeddingInput"] = embedding_input(config);
    schemas["FusionSettings"] = fusion_settings();
    doc
}

/// `(schema, property, constraints)` for every rule the validators enforce.
fn rules(config: &Config) -> Vec<(&'static str, &'static str, Value)> {
    let (r, l, s) = (&config.retrieval, &config.limits, &config.server);
    let query = json!({"minLength": 1, "maxLength": s.max_query_chars, "pattern": validate::NOT_BLANK});
    let top_k = json!({"minimum": 1, "maximum": r.max_top_k});
    let deadline = json!({"minimum": 1, "maximum": config.resilience.max_deadline_ms});
    let filter = json!({
        "maxProperties": validate::MAX_FILTER_KEYS,
        "propertyNames": {"pattern": validate::FILTER_KEY_PATTERN},
    });
    vec![
        (
            "CreateCollectionRequest",
            "name",
            json!({"minLength": 1, "maxLength": validate::MAX_NAME_CHARS, "pattern": validate::NAME_PATTERN}),
        ),
        (
            "CreateCollectionRequest",
            "chunk_words",
            json!({"minimum": l.min_chunk_words, "maximum": validate::MAX_CHUNK_WORDS}),
        ),
        (
            "CreateCollectionRequest",
            "chunk_overlap_words",
            json!({"minimum": 0, "maximum": validate::MAX_CHUNK_WORDS - 1}),
        ),
        ("SearchRequest", "query", query.clone()),
        ("SearchRequest", "top_k", top_k.clone()),
        ("SearchRequest", "deadline_ms", deadline.clone()),
        ("SearchRequest", "filter", filter.clone()),
        (
            "BatchSearchRequest",
            "queries",
            json!({"minItems": 1, "maxItems": l.max_batch_queries}),
        ),
        ("BatchSearchRequest", "deadline_ms", deadline.clone()),
        ("BatchQuery", "query", query.clone()),
        ("BatchQuery", "top_k", top_k.clone()),
        ("BatchQuery", "filter", filter.clone()),
        ("QueryRequest", "query", query),
        ("QueryRequest", "top_k", top_k),
        ("QueryRequest", "deadline_ms", deadline),
        ("QueryRequest", "filter", filter),
        (
            "IngestRequest",
            "documents",
            json!({"minItems": 1, "maxItems": s.max_documents_per_request}),
        ),
        (
            "DocumentInput",
            "id",
            json!({"minLength": 1, "maxLength": validate::MAX_DOC_ID_CHARS, "pattern": validate::DOC_ID_PATTERN}),
        ),
        (
            "DocumentInput",
            "text",
            json!({"minLength": 1, "maxLength": l.max_document_bytes, "pattern": validate::NOT_BLANK}),
        ),
        (
            "DocumentInput",
            "metadata",
            json!({"maxProperties": l.max_metadata_keys}),
        ),
        (
            "EmbeddingsRequest",
            "encoding_format",
            json!({"enum": ["float", "base64", null]}),
        ),
        ("ChatCompletionRequest", "messages", json!({"minItems": 1})),
        ("ChatCompletionRequest", "n", json!({"minimum": 1, "maximum": 1})),
        (
            "ChatCompletionRequest",
            "max_tokens",
            json!({"minimum": 1, "maximum": config.generation.max_tokens_cap}),
        ),
        (
            "ChatCompletionRequest",
            "max_completion_tokens",
            json!({"minimum": 1, "maximum": config.generation.max_tokens_cap}),
        ),
        (
            "ChatCompletionRequest",
            "temperature",
            json!({"minimum": 0, "maximum": 2}),
        ),
    ]
}

/// [`validate::fusion`]'s rules: each method with only the parameters it uses, in range.
fn fusion_settings() -> Value {
    let alpha = json!({"type": ["number", "null"], "minimum": 0, "maximum": 1,
        "description": "The weight of the dense engine (keyword: 1 − alpha); default 0.5."});
    let method = |name: &str, extra: Value| {
        let mut properties = json!({"method": {"type": "string", "enum": [name]}, "alpha": alpha});
        if let (Some(p), Value::Object(extra)) = (properties.as_object_mut(), extra) {
            p.extend(extra);
        }
        json!({"type": "object", "required": ["method"], "properties": properties, "additionalProperties": false})
    };
    json!({
        "description": "How a collection's two engines' lists are fused (docs/ARCHITECTURE.md, \"Fusion\").",
        "oneOf": [
            method("rrf", json!({"k": {"type": ["number", "null"], "minimum": 1, "maximum": 1000,
                "description": "A hit at rank r adds 1 / (k + r); default 60."}})),
            method("convex", json!({"normalization": {"type": ["string", "null"], "enum": ["min_max", "z_score", null]}})),
            method("dbsf", json!({})),
            json!({"type": "object", "required": ["method"], "additionalProperties": false,
                "description": "Weights set per query (the default): equal, more on dense the closer its best hit is to the query.",
                "properties": {"method": {"type": "string", "enum": ["adaptive"]}}}),
        ],
    })
}

/// `/v1/embeddings`' `input`: one non-empty string, or 1 to `limits.max_embedding_inputs` of them,
/// each at most `limits.max_embedding_input_chars` long.
fn embedding_input(config: &Config) -> Value {
    let l = &config.limits;
    let text = json!({"type": "string", "minLength": 1, "maxLength": l.max_embedding_input_chars});
    json!({"oneOf": [
        text.clone(),
        {"type": "array", "items": text, "minItems": 1, "maxItems": l.max_embedding_inputs},
    ]})
}
