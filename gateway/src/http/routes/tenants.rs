//! `/admin/tenants`: tenants, their keys and their usage (bearer admin key).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ragway_openapi::ErrorBody;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorCode};
use crate::http::auth::{Caller, Storage};
use crate::http::errors::{ApiJson, ApiQuery};
use crate::http::AppState;
use crate::tenancy::quota::DayUsage;
use crate::tenancy::tenants::{
    CreateTenant, Limits, NewKey, Tenant, TenantInfo, UpdateTenant, DELETION_SWEEP_EVERY,
};

#[derive(Serialize, ToSchema)]
pub struct TenantList {
    tenants: Vec<TenantInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct Usage {
    /// The tenant's id (`""` in open mode, where nothing is counted).
    tenant: String,
    /// The tenant's name (`""` in open mode).
    name: String,
    /// Its limits, each one it leaves out the server's default (absent in open mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<Limits>,
    /// Per UTC day, newest first (days without use are left out).
    days: Vec<DayUsage>,
    /// What it stores now.
    storage: Storage,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// How many days back, today included (1-62; default 7).
    days: Option<usize>,
}

impl UsageParams {
    fn days(&self) -> Result<usize, ApiError> {
        let days = self.days.unwrap_or(7);
        match (1..=62).contains(&days) {
            true => Ok(days),
            false => Err(invalid("days must be 1-62")),
        }
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid(ErrorCode::InvalidTenant, message)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(invalid("name must be 1-128 characters, no control characters"));
    }
    Ok(())
}

fn check_limits(limits: &Limits) -> Result<(), ApiError> {
    limits.check().map_err(invalid)
}

fn check_backends(state: &AppState, backends: Option<&Vec<String>>) -> Result<(), ApiError> {
    let pool = state.engine.llm().backends();
    for name in backends.into_iter().flatten() {
        if !pool.iter().any(|b| b.name() == name) {
            return Err(invalid(format!(
                "llm_backends: `{name}` is not a configured LLM backend"
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/admin/tenants", operation_id = "create_tenant", tag = "admin", request_body = CreateTenant, security(("admin_key" = [])),
    responses((status = 201, description = "Created", body = TenantInfo), (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(mut request): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantInfo>), ApiError> {
    check_name(&request.name)?;
    check_limits(&request.limits)?;
    // A limit left out is the operator's default (quotas.default_limits), never unlimited.
    request.limits = request.limits.with_defaults(&state.config.quotas.default_limits);
    check_backends(&state, request.llm_backends.as_ref())?;
    let tenant = state.tenants.create(request).await?;
    Ok((StatusCode::CREATED, Json(tenant.info())))
}

#[utoipa::path(get, path = "/admin/tenants", operation_id = "list_tenants", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, description = "OK", body = TenantList), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<TenantList>, ApiError> {
    let tenants = state.tenants.list().iter().map(|t| t.info()).collect();
    Ok(Json(TenantList { tenants }))
}

#[utoipa::path(get, path = "/admin/tenants/{id}", operation_id = "get_tenant", tag = "admin", security(("admin_key" = [])), params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "OK", body = TenantInfo), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TenantInfo>, ApiError> {
    Ok(Json(state.tenants.get(&id)?.info()))
}

#[utoipa::path(patch, path = "/admin/tenants/{id}", operation_id = "update_tenant", tag = "admin", request_body = UpdateTenant, security(("admin_key" = [])), params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "OK", body = TenantInfo), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No admin key", body = ErrorBody),
        (status = 403, description = "Wrong admin key", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateTenant>,
) -> Result<Json<TenantInfo>, ApiError> {
    if let Some(name) = &request.name {
        check_name(name)?;
    }
    if let Some(limits) = &request.limits {
        check_limits(limits)?;
    }
    let defaults = &state.config.quotas.default_limits;
    let limits = request.limits.clone().map(|l| l.with_defaults(defaults));
    check_backends(&state, request.llm_backends.as_ref())?;
    let tenant = state
        .tenants
        .change(&id, |t| {
            // Only the fields the request names: a change made meanwhile elsewhere stays.
            if let Some(name) = &request.name {
                t.name = name.clone();
            }
            if let Some(limits) = &limits {
                t.limits = limits.clone();
            }
            if let Some(over_quota) = request.over_quota {
                t.over_quota = over_quota;
            }
            if request.llm_backends.is_some() {
                t.llm_backends = request.llm_backends.clone();
            }
            Ok(())
        })
        .await?;
    Ok(Json(tenant.info()))
}

/// Deletes the tenant: its keys stop working at once (on every replica within a second), then
/// each of its collections is dropped, then its record goes. When a drop fails (a store down),
/// the answer is 503 with `Retry-After` and the tenant stays `deleting`: a retry finishes it, as
/// does every process's sweep (every 30 s), so nothing is left stored and counted nowhere.
#[utoipa::path(delete, path = "/admin/tenants/{id}", operation_id = "delete_tenant", tag = "admin", security(("admin_key" = [])), params(("id" = String, Path, description = "Tenant id")),
    responses((status = 204, description = "No content"), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "Not finished (a store is down): keys are refused already; retry after `Retry-After`", body = ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let tenant = state
        .tenants
        .change(&id, |t| {
            t.deleting = true;
            Ok(())
        })
        .await?;
    finish_deletion(&state, tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Drops every collection of `tenant` (one another process dropped already is done) and then
/// forgets the tenant. Run again after a failure, it goes on where it stopped.
async fn finish_deletion(state: &AppState, tenant: Arc<Tenant>) -> Result<(), ApiError> {
    let id = tenant.id.clone();
    let owner = Caller::of(tenant);
    for collection in owner.collections(state)? {
        let (collections, name) = (state.collections.clone(), collection.name.clone());
        let dropped = tokio::spawn(async move { collections.drop_collection(&name).await })
            .await
            .map_err(|e| ApiError::Internal(format!("dropping a collection failed: {e}")))?;
        match dropped {
            Ok(()) => {}
            Err(e) if e.code() == ErrorCode::CollectionNotFound => {}
            Err(e) => {
                tracing::warn!(tenant = id, error = %e, "a tenant's deletion is not finished");
                return Err(ApiError::Busy {
                    code: ErrorCode::TenantDeletionUnfinished,
                    message: "the tenant's keys are revoked, but not all of its collections could be \
                              dropped now; retry the DELETE (ragway also finishes it on its own)"
                        .into(),
                    retry_after_s: 5,
                });
            }
        }
    }
    state.tenants.remove(&id).await
}

/// Finishes, every [`DELETION_SWEEP_EVERY`], the deletions of tenants that were cut short.
pub async fn sweep_deletions(state: AppState) {
    loop {
        tokio::time::sleep(DELETION_SWEEP_EVERY).await;
        for tenant in state.tenants.list() {
            if tenant.deleting {
                let id = tenant.id.clone();
                match finish_deletion(&state, tenant).await {
                    Ok(()) => tracing::info!(tenant = id, "finished a tenant's deletion"),
                    Err(e) => tracing::debug!(tenant = id, error = %e, "a tenant's deletion waits"),
                }
            }
        }
    }
}

#[utoipa::path(post, path = "/admin/tenants/{id}/keys", operation_id = "create_tenant_key", tag = "admin", security(("admin_key" = [])), params(("id" = String, Path, description = "Tenant id")),
    responses((status = 201, description = "Created; `key` is shown this once", body = NewKey), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn create_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    let max_keys = state.config.quotas.max_keys_per_tenant;
    Ok((
        StatusCode::CREATED,
        Json(state.tenants.add_key(&id, max_keys).await?),
    ))
}

/// Revokes a key at once (on every replica sharing Redis within a second).
#[utoipa::path(delete, path = "/admin/tenants/{id}/keys/{key_id}", operation_id = "revoke_tenant_key", tag = "admin", security(("admin_key" = [])),
    params(("id" = String, Path, description = "Tenant id"), ("key_id" = String, Path, description = "Key id")),
    responses((status = 204, description = "No content"), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.tenants.revoke_key(&id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/admin/tenants/{id}/usage", operation_id = "tenant_usage", tag = "admin", security(("admin_key" = [])),
    params(("id" = String, Path, description = "Tenant id"), UsageParams),
    responses((status = 200, description = "OK", body = Usage), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No admin key", body = ErrorBody), (status = 403, description = "Wrong admin key", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<Usage>, ApiError> {
    let days = params.days()?;
    let tenant = state.tenants.get(&id)?;
    usage_of(&state, Caller::of(tenant), days).await
}

/// The calling tenant's own use per day, limits and storage: what `/admin/tenants/{id}/usage`
/// shows its operator.
#[utoipa::path(get, path = "/v1/usage", operation_id = "own_usage", tag = "collections",
    params(UsageParams),
    responses((status = 200, description = "OK", body = Usage), (status = 400, description = "Invalid input", body = ErrorBody)))]
pub async fn own_usage(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<Usage>, ApiError> {
    let days = params.days()?;
    usage_of(&state, caller, days).await
}

async fn usage_of(state: &AppState, owner: Caller, days: usize) -> Result<Json<Usage>, ApiError> {
    let storage = owner.storage(state)?;
    Ok(Json(match &owner.tenant {
        Some(tenant) => Usage {
            tenant: tenant.id.clone(),
            name: tenant.name.clone(),
            limits: Some(tenant.limits.clone()),
            days: state.quotas.usage(&tenant.id, days).await,
            storage,
        },
        None => Usage {
            tenant: String::new(),
            name: String::new(),
            limits: None,
            days: Vec::new(),
            storage,
        },
    }))
}
