//! Uploads at once. A `/files` request holds its whole body while its files are read, so only
//! `limits.max_concurrent_uploads` run at once, and one tenant only its share of them
//! (`limits.max_concurrent_uploads_per_tenant`): the same rule as background jobs
//! ([`admit_job`]), decided before any of the body is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::quota::policy::{admit_job, JobQueueLimits, QueueFull};

pub struct Uploads {
    limits: JobQueueLimits,
    /// Uploads running in all, and per tenant (a tenant leaves the map at zero).
    held: Mutex<(usize, HashMap<String, usize>)>,
}

/// One running upload; dropping it frees its turn.
struct Turn {
    uploads: Arc<Uploads>,
    tenant: Option<String>,
}

impl Uploads {
    pub fn new(total: usize, per_tenant: usize) -> Arc<Self> {
        Arc::new(Self {
            limits: JobQueueLimits {
                total: total.max(1),
                per_tenant: per_tenant.max(1),
            },
            held: Mutex::new((0, HashMap::new())),
        })
    }

    fn take(self: &Arc<Self>, tenant: Option<String>) -> Result<Turn, QueueFull> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let own = tenant.as_ref().map(|t| held.1.get(t).copied().unwrap_or(0));
        admit_job(self.limits, held.0, own)?;
        held.0 += 1;
        if let Some(t) = &tenant {
            *held.1.entry(t.clone()).or_default() += 1;
        }
        Ok(Turn {
            uploads: self.clone(),
            tenant,
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut held = self.uploads.held.lock().unwrap_or_else(|p| p.into_inner());
        held.0 = held.0.saturating_sub(1);
        if let Some(t) = &self.tenant {
            if let Some(count) = held.1.get_mut(t) {
                *count -= 1;
                if *count == 0 {
                    held.1.remove(t);
                }
            }
        }
    }
}

/// Runs the upload while it has a turn: else `503 overloaded` (the server's turns are taken) or
/// `429 upload_quota_exceeded` (the tenant's share is), both with `Retry-After`.
pub async fn with_a_turn(uploads: Arc<Uploads>, request: Request, next: Next) -> Response {
    let tenant = request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.tenant.as_ref().map(|t| t.id.clone()));
    let refused = |code, message: &str| {
        ApiError::Busy {
            code,
            message: message.into(),
            retry_after_s: 1,
        }
        .into_response()
    };
    let _turn = match uploads.take(tenant) {
        Ok(turn) => turn,
        Err(QueueFull::Server) => {
            return refused(
                ErrorCode::Overloaded,
                "too many uploads at once (limits.max_concurrent_uploads): try again shortly",
            )
        }
        Err(QueueFull::Tenant) => {
            return refused(
                ErrorCode::UploadQuotaExceeded,
                "this tenant has its share of uploads running (limits.max_concurrent_uploads_per_tenant): try again when one ends",
            )
        }
    };
    next.run(request).await
}
