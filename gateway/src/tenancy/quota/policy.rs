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

/// Documents, chunks and bytes: what a tenant stores, what its unfinished work will add, or a
/// tenant's storage limits (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts<T> {
    pub documents: T,
    pub chunks: T,
    pub bytes: T,
}

impl Amounts<u64> {
    /// Both together, each at most `u64::MAX`.
    pub fn plus(self, other: Self) -> Self {
        Self {
            documents: self.documents.saturating_add(other.documents),
            chunks: self.chunks.saturating_add(other.chunks),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

/// Which storage quota a request would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageQuota {
    Documents,
    Chunks,
    Bytes,
}

impl StorageQuota {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Documents => "documents",
            Self::Chunks => "chunks",
            Self::Bytes => "bytes",
        }
    }
}

/// A request that does not fit: the quota, where the tenant would be after it, and the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverStorage {
    pub quota: StorageQuota,
    pub after: i128,
    pub limit: u64,
}

/// Whether a request that changes the tenant's storage by `growth` (negative where it replaces
/// documents with smaller ones) fits under `limits`, given what the tenant `holds`: what it
/// stores and what its unfinished work has reserved. A quota the request does not grow is never
/// the reason to refuse it. Exact in i128 for any limit up to `u64::MAX` and any growth.
pub fn admit_storage(
    limits: Amounts<Option<u64>>,
    holds: Amounts<u64>,
    growth: Amounts<i64>,
) -> Result<(), OverStorage> {
    let checks = [
        (
            StorageQuota::Documents,
            limits.documents,
            holds.documents,
            growth.documents,
        ),
        (StorageQuota::Chunks, limits.chunks, holds.chunks, growth.chunks),
        (StorageQuota::Bytes, limits.bytes, holds.bytes, growth.bytes),
    ];
    for (quota, limit, held, grows) in checks {
        let Some(limit) = limit else { continue };
        let after = i128::from(held) + i128::from(grows);
        if grows > 0 && after > i128::from(limit) {
            return Err(OverStorage { quota, after, limit });
        }
    }
    Ok(())
}

/// Whether work that may take up to `most` tokens fits a daily budget of `limit`, given what the
/// tenant `spent` today and what its work in flight has `reserved`: `Err(after)` — where the
/// tenant could end up — when it does not. A budget not yet reached admits work of any size only
/// when nothing is known of it (`most` 0).
pub fn admit_tokens(limit: u64, spent: u64, reserved: u64, most: u64) -> Result<(), u128> {
    let after = u128::from(spent) + u128::from(reserved) + u128::from(most);
    match after <= u128::from(limit) {
        true => Ok(()),
        false => Err(after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_work_is_admitted_while_its_most_fits_with_what_is_in_flight() {
        assert_eq!(admit_tokens(3_000, 0, 0, 3_000), Ok(()));
        // 64 inputs of 8,192 bytes may take 524,416 tokens: refused before any is embedded.
        assert_eq!(admit_tokens(3_000, 0, 0, 64 * 8_194), Err(524_416));
        // Three calls at once: the third finds the first two's reservations.
        assert_eq!(admit_tokens(3_000, 0, 2_000, 1_000), Ok(()));
        assert_eq!(admit_tokens(3_000, 100, 2_000, 1_000), Err(3_100));
        assert_eq!(
            admit_tokens(u64::MAX, u64::MAX, u64::MAX, 1),
            Err(u128::from(u64::MAX) * 2 + 1)
        );
    }

    const STORAGE: Amounts<Option<u64>> = Amounts {
        documents: Some(40),
        chunks: None,
        bytes: Some(1_000),
    };

    fn amounts<T>(documents: T, chunks: T, bytes: T) -> Amounts<T> {
        Amounts {
            documents,
            chunks,
            bytes,
        }
    }

    #[test]
    fn a_request_fits_up_to_the_limit_counting_what_is_reserved() {
        // 20 stored, 20 reserved by a request admitted a moment ago: nothing more fits.
        assert_eq!(
            admit_storage(STORAGE, amounts(20, 0, 0), amounts(20, 5, 100)),
            Ok(())
        );
        assert_eq!(
            admit_storage(STORAGE, amounts(40, 0, 0), amounts(1, 1, 10)),
            Err(OverStorage {
                quota: StorageQuota::Documents,
                after: 41,
                limit: 40
            })
        );
        assert_eq!(
            admit_storage(STORAGE, amounts(0, 0, 990), amounts(1, 1, 11)),
            Err(OverStorage {
                quota: StorageQuota::Bytes,
                after: 1_001,
                limit: 1_000
            })
        );
    }

    #[test]
    fn shrinking_or_unlimited_quotas_never_refuse() {
        // Over the bytes limit already (the limit was lowered), but this request shrinks it.
        assert_eq!(
            admit_storage(STORAGE, amounts(10, 0, 5_000), amounts(0, 3, -200)),
            Ok(())
        );
        assert_eq!(
            admit_storage(STORAGE, amounts(0, u64::MAX, 0), amounts(0, i64::MAX, 0)),
            Ok(())
        );
        let unlimited = amounts(None, None, None);
        assert_eq!(
            admit_storage(unlimited, amounts(u64::MAX, u64::MAX, u64::MAX), amounts(1, 1, 1)),
            Ok(())
        );
        let edge = amounts(Some(u64::MAX), None, None);
        assert!(admit_storage(edge, amounts(u64::MAX, 0, 0), amounts(1, 0, 0)).is_err());
    }

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
