use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ragway_openapi::ErrorBody;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};
use crate::http::errors::ApiJson;
use crate::http::AppState;
use crate::resilience::faults::{ActiveFault, FaultRequest};

#[derive(Serialize, ToSchema)]
pub struct FaultList {
    faults: Vec<ActiveFault>,
}

fn known_stage(state: &AppState, stage: &str) -> bool {
    match stage.strip_prefix("llm:") {
        Some(backend) => state.engine.llm().backends().iter().any(|b| b.name() == backend),
        None if stage == "redis" => state.caches.redis_guard().is_some(),
        None => matches!(stage, "embedder" | "dense" | "keyword" | "reranker"),
    }
}

/// Make a stage fail, hang or slow down for a while (operators and tests).
#[utoipa::path(post, path = "/admin/faults", tag = "admin", request_body = FaultRequest,
    security(("admin_key" = [])),
    responses((status = 200, description = "OK", body = FaultList), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody)))]
pub async fn set_fault(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<FaultRequest>,
) -> Result<Json<FaultList>, ApiError> {
    if !known_stage(&state, &request.stage) {
        return Err(ApiError::invalid(
            ErrorCode::UnknownStage,
            format!(
                "stage {:?} is not one of embedder, dense, keyword, reranker, redis (when configured), llm:<configured backend>",
                request.stage
            ),
        ));
    }
    if !(request.duration_s.is_finite() && request.duration_s > 0.0 && request.duration_s <= 86_400.0) {
        return Err(ApiError::invalid(
            ErrorCode::InvalidDuration,
            "duration_s must be between 0 and 86400",
        ));
    }
    state.faults.set(&request);
    Ok(Json(FaultList {
        faults: state.faults.list(),
    }))
}

#[utoipa::path(get, path = "/admin/faults", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, description = "OK", body = FaultList), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody)))]
pub async fn list_faults(State(state): State<AppState>) -> Result<Json<FaultList>, ApiError> {
    Ok(Json(FaultList {
        faults: state.faults.list(),
    }))
}

#[utoipa::path(delete, path = "/admin/faults", tag = "admin", security(("admin_key" = [])),
    responses((status = 204, description = "No content"), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody)))]
pub async fn clear_faults(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    state.faults.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /admin/cache/invalidate`: which entries to drop.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidateRequest {
    /// A collection's name; absent: every collection.
    #[serde(default)]
    collection: Option<String>,
    /// `l1`, `l2` or `l3`; absent: every layer.
    #[serde(default)]
    layer: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Invalidated {
    /// Entries dropped from this process's caches plus keys deleted from Redis.
    invalidated: u64,
}

/// Drop cached entries here, in Redis, and (through Redis pub/sub) in every other process.
#[utoipa::path(post, path = "/admin/cache/invalidate", tag = "admin", request_body = InvalidateRequest,
    security(("admin_key" = [])),
    responses((status = 200, description = "OK", body = Invalidated), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody)))]
pub async fn invalidate_cache(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<InvalidateRequest>,
) -> Result<Json<Invalidated>, ApiError> {
    if let Some(layer) = &request.layer {
        if !matches!(layer.as_str(), "l1" | "l2" | "l3") {
            return Err(ApiError::invalid(
                ErrorCode::UnknownCacheLayer,
                format!("layer {layer:?} is not one of l1, l2, l3"),
            ));
        }
    }
    let invalidated = state
        .caches
        .invalidate(request.collection.as_deref(), request.layer.as_deref())
        .await;
    Ok(Json(Invalidated { invalidated }))
}

/// Every collection of every tenant, by its full name (`<tenant id>.<name>` with keys): what
/// `snapshot` and `restore` take.
#[utoipa::path(get, path = "/admin/collections", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, description = "By full name", body = ragway_openapi::CollectionList),
        (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody)))]
pub async fn list_collections(
    State(state): State<AppState>,
) -> Result<Json<ragway_openapi::CollectionList>, ApiError> {
    let collections = state.collections.list()?.iter().map(|c| c.info()).collect();
    Ok(Json(ragway_openapi::CollectionList { collections }))
}

/// `restore`'s body.
#[derive(Deserialize, ToSchema)]
pub struct RestoreRequest {
    /// A snapshot's file name in the snapshot directory (`server.snapshot_dir`, by default
    /// `<data_dir>/snapshots/`; what `snapshot` answered); copy a snapshot file there to restore
    /// it on another server.
    pub snapshot: String,
}

/// `server.snapshot_dir`, or `<data_dir>/snapshots`.
fn snapshots_dir(state: &AppState) -> std::path::PathBuf {
    state.config.server.snapshots_dir()
}

/// The snapshots in the snapshot directory (taken on request or by the schedule), oldest first.
#[derive(serde::Serialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<crate::catalog::snapshots::SnapshotFile>,
}

/// Lists the snapshot files in the snapshot directory (`server.snapshot_dir`), oldest first:
/// what `restore` can take.
#[utoipa::path(get, path = "/admin/snapshots", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, description = "Oldest first", body = SnapshotList),
        (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody)))]
pub async fn list_snapshots(State(state): State<AppState>) -> Json<SnapshotList> {
    Json(SnapshotList {
        snapshots: crate::catalog::snapshots::list(&snapshots_dir(&state)).await,
    })
}

/// A collection's full name as stored: `<tenant id>.<name>` with keys, `<name>` when open.
fn full_name(name: &str) -> Result<(), ApiError> {
    let (tenant, own) = name.split_once('.').unwrap_or(("", name));
    let tenant_ok = tenant
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !tenant_ok {
        return Err(ApiError::invalid(
            ErrorCode::InvalidCollectionName,
            format!("{name:?} is not `<tenant id>.<collection>` or `<collection>`"),
        ));
    }
    crate::validate::collection_name(own)
}

/// Writes a collection — its manifest and every chunk with its vector — to one file under
/// the snapshot directory (`server.snapshot_dir`, by default `<data_dir>/snapshots/`), while its
/// writes wait. `name` is the full name (`<tenant id>.<name>`
/// with keys). Taken through the store traits: it restores on either store kind.
#[utoipa::path(post, path = "/admin/collections/{name}/snapshot", tag = "admin", security(("admin_key" = [])),
    params(("name" = String, Path, description = "The collection's full name")),
    responses((status = 200, description = "Written", body = crate::catalog::collections::SnapshotInfo), (status = 404, description = "No such collection", body = ErrorBody),
        (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody)))]
pub async fn snapshot_collection(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<crate::catalog::collections::SnapshotInfo>, ApiError> {
    Ok(Json(
        state.collections.snapshot(&name, &snapshots_dir(&state)).await?,
    ))
}

/// Creates collection `name` from a snapshot file (nothing is embedded again); 409 when it
/// exists or when the snapshot's vectors come from another embedder.
#[utoipa::path(post, path = "/admin/collections/{name}/restore", tag = "admin", request_body = RestoreRequest, security(("admin_key" = [])),
    params(("name" = String, Path, description = "The collection's full name")),
    responses((status = 201, description = "Restored", body = ragway_openapi::CollectionInfo), (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 409, description = "Exists, or another embedder", body = ErrorBody), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody)))]
pub async fn restore_collection(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    ApiJson(request): ApiJson<RestoreRequest>,
) -> Result<(StatusCode, Json<ragway_openapi::CollectionInfo>), ApiError> {
    full_name(&name)?;
    let file = &request.snapshot;
    let plain = file
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if file.is_empty() || file.starts_with('.') || !plain {
        return Err(ApiError::invalid(
            ErrorCode::InvalidSnapshot,
            "snapshot: a file name in the snapshot directory (letters, digits, '.', '_', '-')",
        ));
    }
    let max = state.config.limits.max_collections;
    let restored = state
        .collections
        .restore(&name, &snapshots_dir(&state).join(file), max)
        .await?;
    Ok((StatusCode::CREATED, Json(restored)))
}
