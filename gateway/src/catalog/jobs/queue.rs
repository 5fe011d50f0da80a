//! The bounded queue of background jobs: how many each owner holds unfinished in this process,
//! and the refusal past the limits (`ingest.max_queued_jobs`, `…_per_tenant`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::error::{ApiError, ErrorCode};
use crate::tenancy::quota::policy::{admit_job, JobQueueLimits, QueueFull};

/// The background jobs this process holds unfinished, per owner (a tenant's id, `""` in open
/// mode).
#[derive(Default)]
pub(super) struct QueueCounts {
    per_owner: BTreeMap<String, usize>,
}

/// One background job's place in the queue, given back when the job ends however it ends.
pub(super) struct QueueSlot {
    counts: Arc<Mutex<QueueCounts>>,
    owner: String,
}

impl QueueSlot {
    /// Takes a place for a job of `owner`, refused past `limits`; `None` limits take one anyway
    /// (a job accepted before a restart).
    pub(super) fn take(
        counts: &Arc<Mutex<QueueCounts>>,
        owner: &str,
        limits: Option<JobQueueLimits>,
    ) -> Result<Self, QueueFull> {
        let mut held = counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(limits) = limits {
            let tenant = (!owner.is_empty()).then(|| held.per_owner.get(owner).copied().unwrap_or(0));
            admit_job(limits, held.per_owner.values().sum(), tenant)?;
        }
        *held.per_owner.entry(owner.to_string()).or_default() += 1;
        Ok(Self {
            counts: counts.clone(),
            owner: owner.to_string(),
        })
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        let mut held = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = held.per_owner.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.per_owner.remove(&self.owner);
            }
        }
    }
}

/// How long a client refused for a full queue should wait before trying again.
const QUEUE_RETRY_AFTER_S: u64 = 5;

pub(super) fn queue_full(full: QueueFull, limits: JobQueueLimits) -> ApiError {
    match full {
        QueueFull::Tenant => ApiError::OverQuota {
            code: ErrorCode::JobQuotaExceeded,
            message: format!(
                "this tenant has {} background jobs waiting or running (ingest.max_queued_jobs_per_tenant); \
                 nothing was stored: retry when one has finished",
                limits.per_tenant
            ),
            retry_after_s: Some(QUEUE_RETRY_AFTER_S),
        },
        QueueFull::Server => ApiError::Busy {
            code: ErrorCode::IngestQueueFull,
            message: format!(
                "the server has {} background jobs waiting or running (ingest.max_queued_jobs); \
                 nothing was stored: retry shortly",
                limits.total
            ),
            retry_after_s: QUEUE_RETRY_AFTER_S,
        },
    }
}
