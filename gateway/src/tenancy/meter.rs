//! Charging a tenant for what a request really used, off the request's path.

use std::collections::HashSet;
use std::sync::Arc;

use ragway_openapi::TokenUsage;

use super::quota::{Budget, Counter, OverBudget, Quotas, TokenReservation};
use super::tenants::Tenant;

/// The quotas and which LLM backends are unmetered (`llm[].unmetered`): made once at start-up.
#[derive(Clone)]
pub struct Metering {
    quotas: Arc<Quotas>,
    unmetered: Arc<HashSet<String>>,
}

impl Metering {
    pub fn new(quotas: Arc<Quotas>, unmetered: impl IntoIterator<Item = String>) -> Self {
        Self {
            quotas,
            unmetered: Arc::new(unmetered.into_iter().collect()),
        }
    }

    /// The meter of one request by `tenant` (`None`: open mode, nothing is counted).
    pub fn of(&self, tenant: Option<Arc<Tenant>>) -> Meter {
        Meter {
            metering: self.clone(),
            tenant,
            settles: None,
        }
    }
}

/// Charges one tenant's day counters; cheap to clone, safe to call from a dropped stream.
#[derive(Clone)]
pub struct Meter {
    metering: Metering,
    tenant: Option<Arc<Tenant>>,
    /// The reservation the charges settle: given back once the last of them is counted.
    settles: Option<Arc<TokenReservation>>,
}

impl Meter {
    pub fn tenant(&self) -> Option<&Arc<Tenant>> {
        self.tenant.as_ref()
    }

    /// Reserves `amount` tokens of the tenant's `budget` for the work this meter charges (see
    /// [`Quotas::reserve`]); the meter it returns holds the reservation until the work's charges
    /// are counted and it and its clones are gone.
    pub async fn reserve(&self, budget: Budget, amount: u64) -> Result<Meter, OverBudget> {
        let Some(tenant) = &self.tenant else {
            return Ok(self.clone());
        };
        let reserved = self.metering.quotas.reserve(tenant, budget, amount).await?;
        Ok(self.holding(reserved))
    }

    /// Whether the tenant has a `budget` to reserve from (none in open mode).
    pub fn budgets(&self, budget: Budget) -> bool {
        self.tenant.as_deref().and_then(|t| budget.limit(t)).is_some()
    }

    /// This meter, settling `reservation` with its charges.
    pub fn holding(&self, reservation: Option<TokenReservation>) -> Meter {
        Meter {
            settles: reservation.map(Arc::new).or_else(|| self.settles.clone()),
            ..self.clone()
        }
    }

    /// Whether `backend`'s tokens count against the tenant's LLM budget (`llm[].unmetered`).
    pub fn metered(&self, backend: &str) -> bool {
        !self.metering.unmetered.contains(backend)
    }

    /// Charges `n` to one of the tenant's day counters.
    pub fn charge(&self, counter: Counter, n: u64) {
        if let (Some(tenant), true) = (&self.tenant, n > 0) {
            self.metering
                .quotas
                .charge_later(tenant.clone(), vec![(counter, n)], self.settles.clone());
        }
    }

    /// Counts a refusal for `quota` (`ragway_quota_rejections_total`).
    pub fn rejected(&self, quota: &'static str) {
        if let Some(tenant) = &self.tenant {
            self.metering.quotas.rejected(tenant, quota);
        }
    }

    pub fn embedding(&self, tokens: u64) {
        self.charge(Counter::EmbeddingTokens, tokens);
    }

    /// An LLM call's tokens, unless `backend` (the one that wrote them) is unmetered.
    pub fn llm(&self, backend: &str, usage: &TokenUsage) {
        if self.metering.unmetered.contains(backend) {
            return;
        }
        self.charge(Counter::TokensIn, usage.prompt_tokens as u64);
        self.charge(Counter::TokensOut, usage.completion_tokens as u64);
    }
}
