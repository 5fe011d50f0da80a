//! Tenants, their keys and quotas, and what one request of a tenant may use ([`Allowance`]) and
//! is charged for ([`Meter`]). Collections belong to a tenant: inside ragway a tenant's collection
//! `notes` is `<tenant id>.notes` (collection names never hold a `.`), so stores, jobs and cache
//! keys are scoped by tenant without knowing of tenants; in `open` mode names are used as given.

mod allowance;
mod budgeted;
mod meter;
pub mod quota;
pub mod tenants;

pub use allowance::{Allowance, Choice};
pub use budgeted::Budgeted;
pub use meter::{Meter, Metering};

/// The tenant id a stored collection name belongs to (`""` in open mode).
pub fn owner(internal: &str) -> &str {
    internal.split_once('.').map_or("", |(tenant, _)| tenant)
}

use std::sync::Arc;

/// The tenants and their meters: who pays for work done on a stored collection.
#[derive(Clone)]
pub struct Accounts {
    pub tenants: Arc<tenants::Tenants>,
    pub metering: Metering,
}

impl Accounts {
    /// The meter of the tenant that owns the stored collection `internal` (none in open mode).
    pub fn meter_of(&self, internal: &str) -> Meter {
        self.metering.of(self.tenants.get(owner(internal)).ok())
    }
}
