//! Who is calling. The `/v1` layer ([`tenant_layer`]) reads `Authorization: Bearer <key>`, finds
//! its tenant and admits the request under the tenant's request rate; the [`Caller`] goes into
//! the request's extensions, where handlers take it from. The `/admin` layer
//! ([`admin_only`]) lets only the admin key through. No handler authenticates by itself.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use ragway_openapi::DocumentInput;

use crate::catalog::collections::Collection;
use crate::catalog::jobs::{Admitted, NotAdmitted, StorageRequest};
use crate::config::AuthMode;
use crate::error::{ApiError, ErrorCode};
use crate::http::AppState;
use crate::tenancy::quota::policy::{Amounts, StorageQuota};
use crate::tenancy::quota::{budget_spent, over_budget, Spent, StreamPermit};
use crate::tenancy::tenants::Tenant;
use crate::tenancy::{Allowance, Choice, Meter};

#[derive(Clone)]
pub struct Caller {
    /// `None` in `open` mode.
    pub tenant: Option<Arc<Tenant>>,
    /// What the tenant had spent today when this request was admitted.
    pub spent: Spent,
}

/// The `/v1` layer: the tenant whose key the request carries (401 without a known key),
/// admitted under its request rate (429 with `Retry-After` over it); the [`Caller`] — the tenant
/// and what it had spent today — goes into the request. One layer, two steps: a layer per step
/// costs each request another service clone and boxed future, for nothing a route could use.
pub async fn tenant_layer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let caller = match admit(&state, request.headers()).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    // The model work the request queues is the tenant's (served in turn with other tenants').
    let party = Arc::from(caller.tenant.as_ref().map_or("", |t| t.id.as_str()));
    request.extensions_mut().insert(caller);
    ragway_worker::PARTY.scope(party, next.run(request)).await
}

/// Authentication, then the rate limit.
async fn admit(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let tenant = tenant_of(state, headers)?;
    let spent = match &tenant {
        Some(tenant) => state.quotas.admit(tenant).await?,
        None => Spent::default(),
    };
    Ok(Caller { tenant, spent })
}

fn tenant_of(state: &AppState, headers: &HeaderMap) -> Result<Option<Arc<Tenant>>, ApiError> {
    if state.config.auth.mode == AuthMode::Open {
        return Ok(None);
    }
    let key = bearer(headers).ok_or(ApiError::NoApiKey)?;
    match state.tenants.authenticate(key) {
        Some(tenant) => Ok(Some(tenant)),
        None => {
            metrics::counter!("ragway_tenant_requests_total", "tenant" => "none", "outcome" => "unauthorized")
                .increment(1);
            Err(ApiError::UnknownApiKey)
        }
    }
}

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim_start();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `headers` carry the admin key.
pub fn is_admin(state: &AppState, headers: &HeaderMap) -> bool {
    match (&state.admin_key, bearer(headers)) {
        (Some(key), Some(token)) => constant_time_eq(key.as_bytes(), token.as_bytes()),
        _ => false,
    }
}

/// The `/admin` layer: only a bearer token equal to the configured admin key passes; without a
/// configured key the admin API is closed.
pub async fn admin_only(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = bearer(request.headers()) else {
        return ApiError::Unauthorized.into_response();
    };
    match &state.admin_key {
        Some(key) if constant_time_eq(key.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) | None => ApiError::Forbidden.into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Handlers take the caller the layer found; a route outside the layer has none (a bug).
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("no caller: the route is outside the /v1 layer".into()))
    }
}

impl Caller {
    /// The name ragway stores the caller's collection `name` under.
    pub fn internal(&self, name: &str) -> String {
        match &self.tenant {
            Some(tenant) => format!("{}.{name}", tenant.id),
            None => name.to_string(),
        }
    }

    /// The caller's own name for the stored collection `internal`, if it is the caller's.
    pub fn public<'a>(&self, internal: &'a str) -> Option<&'a str> {
        match &self.tenant {
            Some(tenant) => internal
                .strip_prefix(tenant.id.as_str())
                .and_then(|rest| rest.strip_prefix('.')),
            None => (!internal.contains('.')).then_some(internal),
        }
    }

    /// The caller's collection `name`; another tenant's is as absent as one that never was.
    pub async fn collection(&self, state: &AppState, name: &str) -> Result<Arc<Collection>, ApiError> {
        state
            .collections
            .find(&self.internal(name))
            .await
            .map_err(|e| match e {
                ApiError::CollectionNotFound(_) => ApiError::CollectionNotFound(name.to_string()),
                other => other,
            })
    }

    /// The caller's collections.
    pub fn collections(&self, state: &AppState) -> Result<Vec<Arc<Collection>>, ApiError> {
        Ok(state
            .collections
            .list()?
            .into_iter()
            .filter(|c| self.public(&c.name).is_some())
            .collect())
    }

    /// A collection's info as the caller names it.
    pub fn present(&self, mut info: ragway_openapi::CollectionInfo) -> ragway_openapi::CollectionInfo {
        if let Some(public) = self.public(&info.name) {
            info.name = public.to_string();
        }
        info
    }

    /// `error` with the caller's own collection names in it (a stored name holds the tenant id).
    pub fn public_error(&self, error: ApiError) -> ApiError {
        let name = |internal: String| self.public(&internal).map(str::to_string).unwrap_or(internal);
        match error {
            ApiError::CollectionNotFound(n) => ApiError::CollectionNotFound(name(n)),
            ApiError::CollectionExists(n) => ApiError::CollectionExists(name(n)),
            ApiError::DocumentNotFound { collection, document } => ApiError::DocumentNotFound {
                collection: name(collection),
                document,
            },
            other => other,
        }
    }

    /// Whether the caller may use the LLM backend `name`.
    pub fn may_use(&self, backend: &str) -> bool {
        self.tenant.as_ref().is_none_or(|t| t.may_use(backend))
    }
}

/// What a tenant stores, over all its collections.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, utoipa::ToSchema)]
pub struct Storage {
    pub collections: u64,
    pub documents: u64,
    pub chunks: u64,
    pub bytes: u64,
}

impl Caller {
    /// What this request may use and spend: the tenant's backends, and which budgets are spent
    /// (`degrade`); a spent budget under `reject` is a 429 until the day turns.
    pub fn allowance(&self, state: &AppState) -> Result<Allowance, ApiError> {
        let Some(tenant) = &self.tenant else {
            return Ok(Allowance::default());
        };
        let limits = &tenant.limits;
        let budget = |spent, limit, code, quota| {
            over_budget(tenant, spent, limit, code, quota)
                .inspect_err(|_| state.quotas.rejected(tenant, quota))
        };
        let llm_spent = budget(
            self.spent.llm_tokens,
            limits.llm_tokens_per_day,
            ErrorCode::LlmTokenQuotaExceeded,
            "llm_tokens_per_day",
        )?;
        let embed_spent = budget(
            self.spent.embedding_tokens,
            limits.embedding_tokens_per_day,
            ErrorCode::EmbeddingTokenQuotaExceeded,
            "embedding_tokens_per_day",
        )?;
        let cheaper: Vec<String> = state
            .config
            .llm
            .iter()
            .filter(|b| b.unmetered && tenant.may_use(&b.name))
            .map(|b| b.name.clone())
            .collect();
        let allowed = tenant.llm_backends.clone().map_or(Choice::Any, Choice::Only);
        Ok(match (llm_spent, allowed.clone()) {
            // Spent: only the cheaper backends it may use, if there are any.
            (true, _) if !cheaper.is_empty() => Allowance {
                tenant: tenant.id.clone(),
                llm: Choice::Only(cheaper),
                allowed,
                llm_spent: false,
                cheaper_only: true,
                embed_spent,
            },
            (llm_spent, choice) => Allowance {
                tenant: tenant.id.clone(),
                llm: choice,
                allowed,
                llm_spent,
                cheaper_only: false,
                embed_spent,
            },
        })
    }

    /// For embedding work with nothing cheaper to give (ingestion, `/v1/embeddings`): 429 until
    /// the day turns once the embedding budget is spent, whatever `over_quota` says.
    pub fn require_embedding_budget(&self, state: &AppState) -> Result<(), ApiError> {
        let Some(tenant) = &self.tenant else { return Ok(()) };
        let Some(limit) = tenant.limits.embedding_tokens_per_day else {
            return Ok(());
        };
        if self.spent.embedding_tokens < limit {
            return Ok(());
        }
        let quota = "embedding_tokens_per_day";
        state.quotas.rejected(tenant, quota);
        Err(budget_spent(
            tenant,
            ErrorCode::EmbeddingTokenQuotaExceeded,
            quota,
            limit,
        ))
    }

    /// The caller of an operator's request about `tenant` (its usage, its deletion).
    pub fn of(tenant: Arc<Tenant>) -> Self {
        Self {
            tenant: Some(tenant),
            spent: Spent::default(),
        }
    }

    /// The meter that charges this caller's tenant for what its request used.
    pub fn meter(&self, state: &AppState) -> Meter {
        state.metering.of(self.tenant.clone())
    }

    /// What the caller stores now.
    pub fn storage(&self, state: &AppState) -> Result<Storage, ApiError> {
        let mine = self.collections(state)?;
        let mut storage = Storage {
            collections: mine.len() as u64,
            ..Default::default()
        };
        for collection in mine {
            let info = collection.info();
            storage.documents += info.documents as u64;
            storage.chunks += info.chunks as u64;
            storage.bytes += info.bytes;
        }
        Ok(storage)
    }

    /// 413 when storing `documents` in `collection` would cross a storage quota (documents,
    /// chunks, bytes); checked before anything is stored, against what is stored and what the
    /// tenant's unfinished jobs will still add, in one step with holding the write's room (see
    /// [`Jobs::admit_storage`](crate::catalog::jobs::Jobs::admit_storage)), so that concurrent
    /// requests, through any replica, cannot all fit in the room one leaves.
    pub async fn check_storage(
        &self,
        state: &AppState,
        collection: &Collection,
        documents: &[DocumentInput],
    ) -> Result<Admitted, ApiError> {
        if !self.has_storage_limits() {
            return Ok(Admitted::default());
        }
        let growth = state.collections.growth(collection, documents).await?;
        self.admit_growth(state, collection, growth, None).await
    }

    /// True when the caller is a tenant with a storage quota.
    pub fn has_storage_limits(&self) -> bool {
        self.tenant.as_ref().is_some_and(|tenant| {
            let l = &tenant.limits;
            l.documents.is_some() || l.chunks.is_some() || l.bytes.is_some()
        })
    }

    /// As [`Caller::check_storage`], for a write that changes `collection` by `growth`
    /// (documents, chunks, bytes), to be run as job `job` when its id is known already.
    pub async fn admit_growth(
        &self,
        state: &AppState,
        collection: &Collection,
        (documents, chunks, bytes): (i64, i64, i64),
        job: Option<&str>,
    ) -> Result<Admitted, ApiError> {
        let Some(tenant) = &self.tenant else {
            return Ok(Admitted::default());
        };
        let l = &tenant.limits;
        let stored = self
            .collections(state)?
            .into_iter()
            .map(|c| {
                let info = c.info();
                let stores = Amounts {
                    documents: info.documents as u64,
                    chunks: info.chunks as u64,
                    bytes: info.bytes,
                };
                (c.name.clone(), stores)
            })
            .collect();
        let request = StorageRequest {
            collection: &collection.name,
            job,
            limits: Amounts {
                documents: l.documents,
                chunks: l.chunks,
                bytes: l.bytes,
            },
            stored,
            growth: Amounts {
                documents,
                chunks,
                bytes,
            },
        };
        let over = match state.jobs.admit_storage(request).await {
            Ok(admitted) => return Ok(admitted),
            Err(NotAdmitted::Store(e)) => return Err(e),
            Err(NotAdmitted::Over(over)) => over,
        };
        let quota = over.quota.as_str();
        state.quotas.rejected(tenant, quota);
        Err(ApiError::OverQuota {
            code: match over.quota {
                StorageQuota::Documents => ErrorCode::DocumentQuotaExceeded,
                StorageQuota::Chunks => ErrorCode::ChunkQuotaExceeded,
                StorageQuota::Bytes => ErrorCode::ByteQuotaExceeded,
            },
            message: format!(
                "storing this would bring tenant `{}` to {} {quota} (with what its unfinished jobs will add), over its limit of {} (limits.{quota}); nothing was stored",
                tenant.name, over.after, over.limit
            ),
            retry_after_s: None,
        })
    }

    /// The tenant's place for one more streamed answer (429 over `concurrent_streams`).
    pub fn stream(&self, state: &AppState) -> Result<Option<StreamPermit>, ApiError> {
        match &self.tenant {
            Some(tenant) => Ok(Some(state.quotas.open_stream(tenant)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::owner;
    use crate::tenancy::tenants::{Limits, OverQuota};

    fn caller(id: Option<&str>) -> Caller {
        Caller {
            tenant: id.map(|id| {
                Arc::new(Tenant {
                    id: id.into(),
                    name: id.into(),
                    limits: Limits::default(),
                    over_quota: OverQuota::Degrade,
                    llm_backends: Some(vec!["cheap".into()]),
                    created_at: String::new(),
                    keys: Vec::new(),
                    revision: 0,
                    deleting: false,
                })
            }),
            spent: Spent::default(),
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            if let Ok(value) = axum::http::HeaderValue::from_str(value) {
                headers.insert(AUTHORIZATION, value);
            }
            bearer(&headers).map(str::to_string)
        };
        assert_eq!(with("Bearer k1"), Some("k1".into()));
        assert_eq!(with("bearer k1"), Some("k1".into()));
        assert_eq!(with("BEARER  k1 "), Some("k1".into()));
        assert_eq!(with("Basic k1"), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("Bearerk1"), None);
    }

    #[test]
    fn a_tenant_sees_only_its_own_names() {
        let one = caller(Some("t1"));
        assert_eq!(one.internal("notes"), "t1.notes");
        assert_eq!(one.public("t1.notes"), Some("notes"));
        assert_eq!(one.public("t12.notes"), None, "a longer id with the same start");
        assert_eq!(one.public("notes"), None, "an open-mode collection");
        assert_eq!(owner("t1.notes"), "t1");
        let open = caller(None);
        assert_eq!(open.internal("notes"), "notes");
        assert_eq!(open.public("notes"), Some("notes"));
        assert_eq!(
            open.public("t1.notes"),
            None,
            "open mode never reaches a tenant's collection"
        );
        assert_eq!(owner("notes"), "");
        assert!(one.may_use("cheap") && !one.may_use("dear") && open.may_use("dear"));
    }
}
