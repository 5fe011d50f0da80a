use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use std::collections::BTreeMap;

use crate::config::AuthMode;
use crate::http::auth::is_admin;
use crate::http::AppState;
use crate::resilience::breaker::BreakerState;
use crate::resilience::guard::Guard;

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
}

/// What anyone may read: whether the process is ready and the state of each dependency. With
/// `auth.mode = "keys"` the rest (model ids, which may be remote URLs, and collection names) is
/// only shown to the admin key.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// At least one retrieval path (embedder + dense, or keyword) and one answer path (an LLM
    /// backend, or the extractive answer, which needs only retrieval) are available.
    ready: bool,
    /// Breaker state per dependency: `embedder`, `dense`, `keyword`, `reranker`, `llm:<backend>`,
    /// and `redis` when the shared cache tier is configured.
    dependencies: BTreeMap<String, BreakerState>,
    /// For each dependency whose breaker is open: milliseconds until its next probe (a call let
    /// through to find out whether it is back).
    next_probe_ms: BTreeMap<String, u64>,
    /// `keys` (every `/v1` call needs a tenant's key) or `open`.
    auth: &'static str,
    /// Where tenants' rate limits and token counters are enforced: `shared` (Redis, every
    /// replica together), `local_fallback` (Redis unreachable: each replica enforces
    /// `limit / quotas.expected_replicas`) or `local` (no Redis configured).
    quotas: &'static str,
    /// The fields below: in open mode, or with the admin key.
    #[serde(flatten)]
    detail: ReadinessDetail,
}

/// Shown in open mode or to the admin key; each field is absent otherwise.
#[derive(Serialize, ToSchema, Default)]
pub struct ReadinessDetail {
    #[serde(skip_serializing_if = "Option::is_none")]
    collections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedder: Option<String>,
    /// What runs the embedder: `onnx` or `candle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    embedder_backend: Option<String>,
    /// The reranker, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    reranker: Option<String>,
    /// What runs the reranker, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    reranker_backend: Option<String>,
    /// Collections that could not be opened at start-up, and why; they are not served, the
    /// others are.
    #[serde(skip_serializing_if = "Option::is_none")]
    damaged_collections: Option<BTreeMap<String, String>>,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "OK", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: models are loaded and the collection catalog is readable.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "OK", body = Readiness), (status = 503, description = "Unavailable", body = Readiness)))]
pub async fn readyz(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let collections = state.collections.list();
    let pipeline = &state.pipeline;
    let guards = &pipeline.guards;
    let mut watched: Vec<&Guard> = vec![&guards.embed, &guards.dense, &guards.keyword];
    if pipeline.reranker.is_some() {
        watched.push(&guards.rerank);
    }
    // Each backend's guard is named `llm:<backend>`.
    watched.extend(state.engine.llm().backends().iter().map(|b| b.guard.as_ref()));
    // Redis only shares caches: listed, never a reason to be unready.
    watched.extend(state.caches.redis_guard());
    let dependencies = watched.iter().map(|g| (g.name.clone(), g.state())).collect();
    let next_probe_ms = watched
        .iter()
        .filter_map(|g| {
            let ms = g.next_probe_in()?.as_millis();
            Some((g.name.clone(), u64::try_from(ms).unwrap_or(u64::MAX)))
        })
        .collect();
    let usable = |g: &Guard| g.state() != BreakerState::Open;
    let dense_path = usable(&guards.embed) && usable(&guards.dense);
    // The extractive answer needs only retrieval, so retrieval decides readiness.
    let shown = match state.config.auth.mode {
        AuthMode::Open => true,
        AuthMode::Keys => is_admin(&state, &headers),
    };
    let detail = if shown {
        ReadinessDetail {
            collections: Some(collections.as_ref().map(Vec::len).unwrap_or(0)),
            embedder: Some(pipeline.embedder.model_id().to_string()),
            embedder_backend: Some(pipeline.embedder.backend().to_string()),
            reranker: pipeline.reranker.as_ref().map(|r| r.model_id().to_string()),
            reranker_backend: pipeline.reranker.as_ref().map(|r| r.backend().to_string()),
            damaged_collections: Some(state.collections.damaged()),
        }
    } else {
        ReadinessDetail::default()
    };
    let body = Readiness {
        ready: collections.is_ok() && (dense_path || usable(&guards.keyword)),
        dependencies,
        next_probe_ms,
        auth: match state.config.auth.mode {
            AuthMode::Keys => "keys",
            AuthMode::Open => "open",
        },
        quotas: state.quotas.enforcement(),
        detail,
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "OK", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
