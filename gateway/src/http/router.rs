//! The routes, in three parts: `/v1` behind the tenant layers (who is calling, within its request
//! rate), `/admin` behind the admin key, and the open parts (health, metrics, the API document).
//! Bodies are read (within their size and deadline) only once the caller is known.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

use super::auth::{admin_only, tenant_layer};
use super::routes::{
    admin, answers, collections, embeddings, files, health, import, jobs, openai, rerank, tenants,
};
use super::serve::{read_body_within, BodyLimits};
use super::uploads::{with_a_turn, Uploads};
use super::{openapi_doc, AppState};
use crate::error::{ApiError, ErrorCode};

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.max_body_bytes;
    let body = BodyLimits {
        max_bytes: body_limit,
        deadline: Duration::from_millis(state.config.server.body_timeout_ms),
    };
    let document = Arc::new(openapi_doc::document(&state.config));
    let console = state.config.server.console;
    let open = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics));
    let api = Router::new()
        .merge(open)
        .merge(tenant_routes(&state, body))
        .merge(file_routes(&state, body))
        .merge(admin_routes(&state, body))
        .route_layer(middleware::from_fn(count_request))
        .with_state(state);
    let pages = match console {
        true => super::console::routes(),
        false => Router::new(),
    };
    Router::new()
        .merge(pages)
        .merge(SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json")))
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(document.as_ref().clone()) }),
        )
        .merge(api)
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(TraceLayer::new_for_http())
}

/// A handler that panicked answers `500 internal` in ragway's error shape (the panic is logged),
/// not a dropped connection.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = what, "a request's handler panicked");
    ApiError::Internal("the request failed inside the server".into()).into_response()
}

/// `/v1`: every route knows its caller ([`super::auth::Caller`]), put there by the tenant layer
/// (authentication, then the rate limit). Merged, not nested: the layers
/// stay on these routes alone, and a request is matched once, against its whole path.
fn tenant_routes(state: &AppState, body: BodyLimits) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/collections",
            post(collections::create).get(collections::list),
        )
        .route(
            "/v1/collections/{name}",
            get(collections::get)
                .patch(collections::update)
                .delete(collections::delete),
        )
        .route(
            "/v1/collections/{name}/documents",
            post(collections::ingest).get(collections::list_documents),
        )
        .route(
            "/v1/collections/{name}/documents/{id}",
            delete(collections::delete_document),
        )
        .route("/v1/collections/{name}/jobs", get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job).delete(jobs::cancel_job))
        .route("/v1/collections/{name}/search", post(answers::search))
        .route("/v1/collections/{name}/search/batch", post(answers::search_batch))
        .route("/v1/collections/{name}/query", post(answers::query))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/rerank", post(rerank::rerank))
        .route("/v2/rerank", post(rerank::rerank_v2))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/usage", get(tenants::own_usage))
        .route_service("/mcp", super::mcp::service(state))
        .route_layer(middleware::from_fn(move |r, n| read_body_within(body, r, n)))
        .route_layer(middleware::from_fn_with_state(state.clone(), tenant_layer))
}

/// `/v1/collections/{name}/files`: as [`tenant_routes`], with room for files in the body
/// (`limits.max_upload_bytes`); and `/import`, whose body the route streams itself (never read
/// whole: see `routes::import`). Both take a turn among the uploads at once.
fn file_routes(state: &AppState, body: BodyLimits) -> Router<AppState> {
    let upload = BodyLimits {
        max_bytes: state.config.limits.max_upload_bytes,
        ..body
    };
    // Each upload's body is held whole while it is read: only so many at once.
    let limits = &state.config.limits;
    let uploads = Uploads::new(
        limits.max_concurrent_uploads,
        limits.max_concurrent_uploads_per_tenant,
    );
    let turns = uploads.clone();
    let files = Router::new()
        .route("/v1/collections/{name}/files", post(files::upload))
        .route_layer(DefaultBodyLimit::max(upload.max_bytes))
        .route_layer(middleware::from_fn(move |r, n| read_body_within(upload, r, n)));
    Router::new()
        .route("/v1/collections/{name}/import", post(import::import))
        .merge(files)
        .route_layer(middleware::from_fn(move |r, n| with_a_turn(turns.clone(), r, n)))
        .route_layer(middleware::from_fn_with_state(state.clone(), tenant_layer))
}

/// `/admin`: only with the admin key.
fn admin_routes(state: &AppState, body: BodyLimits) -> Router<AppState> {
    Router::new()
        .route(
            "/admin/faults",
            post(admin::set_fault)
                .get(admin::list_faults)
                .delete(admin::clear_faults),
        )
        .route("/admin/cache/invalidate", post(admin::invalidate_cache))
        .route("/admin/snapshots", get(admin::list_snapshots))
        .route("/admin/collections", get(admin::list_collections))
        .route(
            "/admin/collections/{name}/snapshot",
            post(admin::snapshot_collection),
        )
        .route(
            "/admin/collections/{name}/restore",
            post(admin::restore_collection),
        )
        .route("/admin/tenants", post(tenants::create).get(tenants::list))
        .route(
            "/admin/tenants/{id}",
            get(tenants::get).patch(tenants::update).delete(tenants::delete),
        )
        .route("/admin/tenants/{id}/keys", post(tenants::create_key))
        .route("/admin/tenants/{id}/keys/{key_id}", delete(tenants::revoke_key))
        .route("/admin/tenants/{id}/usage", get(tenants::usage))
        .route_layer(middleware::from_fn(move |r, n| read_body_within(body, r, n)))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_only))
}

/// A path no route has: ragway's error shape, like every other refusal.
async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::invalid(
        ErrorCode::RouteNotFound,
        format!("no route {} (the API is at /openapi.json)", uri.path()),
    )
}

async fn no_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::invalid(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} does not take {method} (the API is at /openapi.json)",
            uri.path()
        ),
    )
}

/// `ragway_requests_total{route,status}` and `ragway_request_duration_seconds{route}` (until the
/// response head; a stream's body goes on), with the route template (bounded) as label.
async fn count_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!("ragway_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("ragway_requests_total", "route" => route, "status" => response.status().as_u16().to_string())
        .increment(1);
    response
}
