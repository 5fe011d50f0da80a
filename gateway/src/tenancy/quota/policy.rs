//! Tenant policy as pure functions over plain numbers, tested like `fusion.rs`: what the server and
//! a tenant may hold, decided from counts the caller reads.

/// How many background jobs may wait or run unfinished in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobQueueLimits {
    /// All tenants together (`ingest.max_queued_jobs`).
    pub total: usize,
    /// One tenant (`ingest.max_queued_jobs_per_tenant`); open mode has no tenants.
    pub per_tenant: usize,
}

/// Why one more background job is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFull {
    /// The server holds as many as it takes from everyone: `503`.
    Server,
    /// The tenant holds its share: `429`; other tenants are still served.
    Tenant,
}

/// Whether one more background job may be queued, given the jobs held unfinished in all
/// (`total`) and by its tenant (`tenant`, `None` in open mode). A tenant's share is checked
/// first: a tenant at its share is told so even when the server is full too.
pub fn admit_job(limits: JobQueueLimits, total: usize, tenant: Option<usize>) -> Result<(), QueueFull> {
    if tenant.is_some_and(|held| held >= limits.per_tenant) {
        return Err(QueueFull::Tenant);
    }
    if total >= limits.total {
        return Err(QueueFull::Server);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: JobQueueLimits = JobQueueLimits {
        total: 10,
        per_tenant: 3,
    };

    #[test]
    fn a_tenant_gets_its_share_and_the_server_its_total() {
        assert_eq!(admit_job(LIMITS, 0, Some(0)), Ok(()));
        assert_eq!(admit_job(LIMITS, 9, Some(2)), Ok(()));
        assert_eq!(admit_job(LIMITS, 5, Some(3)), Err(QueueFull::Tenant));
        assert_eq!(admit_job(LIMITS, 10, Some(0)), Err(QueueFull::Server));
        assert_eq!(admit_job(LIMITS, 10, Some(3)), Err(QueueFull::Tenant));
    }

    #[test]
    fn open_mode_has_only_the_total() {
        assert_eq!(admit_job(LIMITS, 9, None), Ok(()));
        assert_eq!(admit_job(LIMITS, 10, None), Err(QueueFull::Server));
    }
}
