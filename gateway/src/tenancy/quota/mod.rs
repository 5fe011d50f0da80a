//! Per-tenant quotas: the request rate (GCRA), token budgets per UTC day, and streams at once.
//!
//! With Redis (`cache.redis.url`), the rate and the day's counters are shared by every replica:
//! one Lua script per request checks the rate, counts the request and reads the day's token
//! counters in one round trip ([`shared`]). When Redis cannot be reached, each replica enforces
//! `limit / quotas.expected_replicas` on its own ([`local`]) and says so in `/readyz`; a request
//! never fails for it, and is never unlimited.

mod hold;
mod local;
pub mod policy;
mod shared;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragway_cache::RedisTier;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};
use crate::tenancy::tenants::{OverQuota, Tenant};
use hold::Holds;
pub use hold::{Held, StreamPermit, TokenReservation};
use local::LocalCounters;
use shared::SharedCounters;

/// How often Redis's reachability is checked.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// One tenant's counters for one UTC day.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DayUsage {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub requests: u64,
    /// LLM prompt tokens.
    pub tokens_in: u64,
    /// LLM completion tokens.
    pub tokens_out: u64,
    pub embedding_tokens: u64,
}

impl DayUsage {
    fn add(&mut self, kind: Counter, n: u64) {
        *match kind {
            Counter::Requests => &mut self.requests,
            Counter::TokensIn => &mut self.tokens_in,
            Counter::TokensOut => &mut self.tokens_out,
            Counter::EmbeddingTokens => &mut self.embedding_tokens,
        } += n;
    }

    fn merge(&mut self, other: &DayUsage) {
        self.requests += other.requests;
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.embedding_tokens += other.embedding_tokens;
    }
}

/// What a day's counters count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Requests,
    TokensIn,
    TokensOut,
    EmbeddingTokens,
}

impl Counter {
    fn field(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::TokensIn => "tokens_in",
            Self::TokensOut => "tokens_out",
            Self::EmbeddingTokens => "embedding_tokens",
        }
    }
}

/// A day's token budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// `llm_tokens_per_day`: prompt and completion tokens of metered backends.
    Llm,
    /// `embedding_tokens_per_day`.
    Embedding,
}

impl Budget {
    pub fn quota(self) -> &'static str {
        match self {
            Self::Llm => "llm_tokens_per_day",
            Self::Embedding => "embedding_tokens_per_day",
        }
    }

    pub fn code(self) -> ErrorCode {
        match self {
            Self::Llm => ErrorCode::LlmTokenQuotaExceeded,
            Self::Embedding => ErrorCode::EmbeddingTokenQuotaExceeded,
        }
    }

    pub fn limit(self, tenant: &Tenant) -> Option<u64> {
        match self {
            Self::Llm => tenant.limits.llm_tokens_per_day,
            Self::Embedding => tenant.limits.embedding_tokens_per_day,
        }
    }

    fn of(self, spent: Spent) -> u64 {
        match self {
            Self::Llm => spent.llm_tokens,
            Self::Embedding => spent.embedding_tokens,
        }
    }

    /// The day counters it sums.
    fn counters(self) -> &'static [Counter] {
        match self {
            Self::Llm => &[Counter::TokensIn, Counter::TokensOut],
            Self::Embedding => &[Counter::EmbeddingTokens],
        }
    }
}

/// A reservation asked of a budget: `amount` tokens against `limit`, with `unseen` tokens spent
/// that the shared counters do not hold yet.
#[derive(Debug, Clone, Copy)]
struct Ask {
    limit: u64,
    amount: u64,
    unseen: u64,
}

/// Work that cannot fit the rest of a day's budget: the tenant could end up at `after`, over
/// `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverBudget {
    /// The tenant's name.
    pub tenant: String,
    pub budget: Budget,
    pub limit: u64,
    pub after: u128,
    /// What the work asked for.
    pub amount: u64,
}

impl OverBudget {
    /// The 429, worth retrying when the day turns.
    pub fn refusal(&self) -> ApiError {
        let quota = self.budget.quota();
        ApiError::OverQuota {
            code: self.budget.code(),
            message: format!(
                "this request may take up to {} tokens; with what tenant `{}` spent today and has in flight that could reach {}, over its {quota} of {}; ask for less, or wait for the day (UTC) to turn",
                self.amount, self.tenant, self.after, self.limit
            ),
            retry_after_s: Some(until_tomorrow()),
        }
    }
}

/// A tenant's token use today, as seen when its request was admitted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    pub llm_tokens: u64,
    pub embedding_tokens: u64,
}

/// A rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    fn of(tenant: &Tenant) -> Option<Self> {
        let per_second = tenant.limits.requests_per_second.filter(|r| *r > 0.0)?;
        let burst = tenant
            .limits
            .burst
            .unwrap_or_else(|| per_second.ceil() as u32)
            .max(1);
        Some(Self { per_second, burst })
    }

    /// This replica's share when it enforces the rate alone.
    fn share(self, replicas: u32) -> Self {
        let n = f64::from(replicas.max(1));
        Self {
            per_second: self.per_second / n,
            burst: (f64::from(self.burst) / n).ceil().max(1.0) as u32,
        }
    }
}

pub struct Quotas {
    shared: Option<SharedCounters>,
    local: LocalCounters,
    expected_replicas: u32,
    /// False while Redis is configured but unreachable (each replica then enforces its share).
    shared_ok: AtomicBool,
    /// What Redis last said each tenant spent today, to go on from while it is unreachable.
    last_shared: Mutex<HashMap<String, (String, Spent)>>,
    /// Streams open now, per tenant (see [`Quotas::open_stream`]).
    streams: Holds,
    /// Tokens reserved by work in flight here while Redis is not used, per tenant and budget
    /// (see [`Quotas::reserve`]).
    reserved: Holds,
    /// How long a reservation in Redis outlives a replica that never gives it back.
    lapse: Duration,
    labels: TenantLabels,
}

/// Today, UTC, as `YYYY-MM-DD`.
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// Seconds until the UTC day (and every day's budget) turns over.
pub fn until_tomorrow() -> u64 {
    let now = chrono::Utc::now();
    let seconds = now.timestamp() % 86_400;
    (86_400 - seconds).max(1) as u64
}

impl Quotas {
    pub fn new(
        usage_file: PathBuf,
        redis: Option<RedisTier>,
        expected_replicas: u32,
        metric_tenants: usize,
        lapse: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let quotas = Arc::new(Self {
            shared: redis.map(SharedCounters::new),
            local: LocalCounters::open(usage_file)?,
            expected_replicas,
            shared_ok: AtomicBool::new(true),
            last_shared: Mutex::new(HashMap::new()),
            streams: Holds::default(),
            reserved: Holds::default(),
            lapse,
            labels: TenantLabels::new(metric_tenants),
        });
        quotas.local.flush_every(Duration::from_secs(2));
        quotas.probe();
        Ok(quotas)
    }

    /// `shared` (Redis), `local_fallback` (Redis unreachable: each replica enforces its share)
    /// or `local` (no Redis configured).
    pub fn enforcement(&self) -> &'static str {
        match (&self.shared, self.shared_ok.load(Ordering::Acquire)) {
            (None, _) => "local",
            (Some(_), true) => "shared",
            (Some(_), false) => "local_fallback",
        }
    }

    /// Admits one request of `tenant` under its rate, counts it, and says what it spent today;
    /// over the rate: 429 with `Retry-After`.
    pub async fn admit(&self, tenant: &Tenant) -> Result<Spent, ApiError> {
        let rate = Rate::of(tenant);
        let day = today();
        let label = self.labels.label(&tenant.id);
        let admitted = self.admit_counted(tenant, rate, &day).await;
        let outcome = if admitted.is_ok() {
            "admitted"
        } else {
            "rate_limited"
        };
        metrics::counter!("ragway_tenant_requests_total", "tenant" => label.clone(), "outcome" => outcome)
            .increment(1);
        if admitted.is_err() {
            self.rejected(tenant, "requests_per_second");
        }
        admitted.map_err(|retry| ApiError::OverQuota {
            code: ErrorCode::RateLimited,
            message: format!(
                "tenant `{}` is over its rate of {} requests/s (burst {}): retry after {:.1} s",
                tenant.name,
                rate.map_or(0.0, |r| r.per_second),
                rate.map_or(0, |r| r.burst),
                retry.as_secs_f64()
            ),
            retry_after_s: Some(retry.as_secs_f64().ceil().max(1.0) as u64),
        })
    }

    /// The rate check and the request count, shared when Redis answers, else local.
    async fn admit_counted(&self, tenant: &Tenant, rate: Option<Rate>, day: &str) -> Result<Spent, Duration> {
        if let Some(shared) = self.shared_now() {
            match shared.admit(&tenant.id, rate, day).await {
                Ok(admitted) => {
                    self.shared_ok.store(true, Ordering::Release);
                    if let Ok(spent) = admitted {
                        self.lock_last()
                            .insert(tenant.id.clone(), (day.to_string(), spent));
                    }
                    return admitted.map(|spent| self.with_outage(&tenant.id, day, spent));
                }
                Err(e) => {
                    if self.shared_ok.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, replicas = self.expected_replicas, "quotas: redis unreachable; each replica enforces its share");
                    }
                }
            }
        }
        let share = rate.map(|r| r.share(self.divisor()));
        self.local.check_rate(&tenant.id, share)?;
        self.local.add(&tenant.id, day, Counter::Requests, 1);
        Ok(self.spent_locally(&tenant.id, day))
    }

    /// Redis, unless it was unreachable at the last try (then [`Quotas::probe`] brings it back).
    fn shared_now(&self) -> Option<&SharedCounters> {
        self.shared
            .as_ref()
            .filter(|_| self.shared_ok.load(Ordering::Acquire))
    }

    /// While Redis is unreachable, checks every [`PROBE_EVERY`] whether it is back.
    fn probe(self: &Arc<Self>) {
        if self.shared.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(quotas) = weak.upgrade() else { return };
                let Some(shared) = &quotas.shared else { return };
                let reachable = shared.ping().await.is_ok();
                if quotas.shared_ok.swap(reachable, Ordering::AcqRel) != reachable {
                    tracing::warn!(
                        shared = reachable,
                        "quotas: redis {}",
                        if reachable {
                            "is back: limits are shared again"
                        } else {
                            "unreachable: each replica enforces its share"
                        }
                    );
                }
            }
        });
    }

    /// 1 without Redis; `expected_replicas` while Redis is configured (and so unreachable here).
    fn divisor(&self) -> u32 {
        if self.shared.is_some() {
            self.expected_replicas
        } else {
            1
        }
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Spent)>> {
        self.last_shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the tenant spent today without Redis: its local counters, on top of what Redis last
    /// said, each local token counted for every replica (they are assumed to spend alike).
    fn spent_locally(&self, tenant: &str, day: &str) -> Spent {
        let local = self.local.day(tenant, day);
        let n = u64::from(self.divisor());
        let base = match self.lock_last().get(tenant) {
            Some((seen, spent)) if seen == day => *spent,
            _ => Spent::default(),
        };
        Spent {
            llm_tokens: base.llm_tokens + (local.tokens_in + local.tokens_out) * n,
            embedding_tokens: base.embedding_tokens + local.embedding_tokens * n,
        }
    }

    /// Redis's counts plus what this replica counted locally while Redis was unreachable.
    fn with_outage(&self, tenant: &str, day: &str, spent: Spent) -> Spent {
        let local = self.local.day(tenant, day);
        Spent {
            llm_tokens: spent.llm_tokens + local.tokens_in + local.tokens_out,
            embedding_tokens: spent.embedding_tokens + local.embedding_tokens,
        }
    }

    /// Adds `n` to a day counter of `tenant` (after the work), in Redis when it answers.
    pub async fn charge(&self, tenant: &Tenant, counter: Counter, n: u64) {
        if n == 0 {
            return;
        }
        let kind = match counter {
            Counter::Requests => "requests",
            Counter::TokensIn => "llm_in",
            Counter::TokensOut => "llm_out",
            Counter::EmbeddingTokens => "embedding",
        };
        metrics::counter!("ragway_tenant_tokens_total", "tenant" => self.labels.label(&tenant.id), "kind" => kind)
            .increment(n);
        let day = today();
        if let Some(shared) = self.shared_now() {
            if shared.add(&tenant.id, &day, counter, n).await.is_ok() {
                return;
            }
            self.shared_ok.store(false, Ordering::Release);
        }
        self.local.add(&tenant.id, &day, counter, n);
    }

    /// Adds each `(counter, n)` to `tenant`'s day counters on a task of its own, off the
    /// request's path; `settles` (the work's reservation) is given back only once they are added,
    /// so that the tokens are never counted neither as spent nor as held.
    pub fn charge_later(
        self: &Arc<Self>,
        tenant: Arc<Tenant>,
        charges: Vec<(Counter, u64)>,
        settles: Option<Arc<TokenReservation>>,
    ) {
        let quotas = self.clone();
        tokio::spawn(async move {
            for (counter, n) in charges {
                quotas.charge(&tenant, counter, n).await;
            }
            drop(settles);
        });
    }

    /// The last `days` days of `tenant`'s counters, newest first.
    pub async fn usage(&self, tenant: &str, days: usize) -> Vec<DayUsage> {
        let mut by_day: BTreeMap<String, DayUsage> = BTreeMap::new();
        let recent = recent_days(days);
        let mut sources = vec![self.local.days(tenant, &recent)];
        if let Some(shared) = &self.shared {
            match shared.days(tenant, &recent).await {
                Ok(days) => sources.push(days),
                Err(e) => tracing::warn!(error = %e, "usage: redis unreachable; local counts only"),
            }
        }
        for usage in sources.into_iter().flatten() {
            by_day
                .entry(usage.day.clone())
                .or_insert_with(|| DayUsage {
                    day: usage.day.clone(),
                    ..Default::default()
                })
                .merge(&usage);
        }
        by_day.into_values().rev().collect()
    }

    /// A quota refusal, counted.
    pub fn rejected(&self, tenant: &Tenant, quota: &'static str) {
        metrics::counter!("ragway_quota_rejections_total", "tenant" => self.labels.label(&tenant.id), "quota" => quota)
            .increment(1);
    }

    /// A permit for one more stream of `tenant`, held until the stream ends.
    pub fn open_stream(&self, tenant: &Tenant) -> Result<StreamPermit, ApiError> {
        let limit = tenant.limits.concurrent_streams;
        let open = self.streams.take(&tenant.id, 1, |open| match limit {
            Some(limit) if open >= limit => Err(limit),
            _ => Ok(()),
        });
        open.map_err(|limit| {
            self.rejected(tenant, "concurrent_streams");
            ApiError::OverQuota {
                code: ErrorCode::StreamQuotaExceeded,
                message: format!(
                    "tenant `{}` already has {limit} answers streaming (limits.concurrent_streams)",
                    tenant.name
                ),
                retry_after_s: Some(1),
            }
        })
    }

    /// Reserves `amount` tokens of `tenant`'s `budget` for work about to run, against what it
    /// spent today and what all its work in flight holds (every replica's, in Redis when it
    /// answers): `Err` before any work when they cannot fit. The work is charged what it really
    /// took ([`crate::tenancy::Meter::holding`]) and the reservation given back after that.
    /// `Ok(None)`: the tenant has no such budget.
    pub async fn reserve(
        &self,
        tenant: &Tenant,
        budget: Budget,
        amount: u64,
    ) -> Result<Option<TokenReservation>, OverBudget> {
        let Some(limit) = budget.limit(tenant) else {
            return Ok(None);
        };
        let over = |after| {
            self.rejected(tenant, budget.quota());
            OverBudget {
                tenant: tenant.name.clone(),
                budget,
                limit,
                after,
                amount,
            }
        };
        let day = today();
        if let Some(shared) = self.shared_now() {
            let unseen = budget.of(self.with_outage(&tenant.id, &day, Spent::default()));
            let ask = Ask {
                limit,
                amount,
                unseen,
            };
            match shared.reserve(&tenant.id, &day, budget, ask, self.lapse).await {
                Ok(Ok(held)) => {
                    return Ok(Some(TokenReservation {
                        _local: None,
                        _shared: Some(held),
                    }))
                }
                Ok(Err(after)) => return Err(over(after)),
                Err(e) => {
                    if self.shared_ok.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "quotas: redis unreachable; reservations are held per replica");
                    }
                }
            }
        }
        let spent = budget.of(self.spent_locally(&tenant.id, &day));
        let who = format!("{}:{}", tenant.id, budget.quota());
        let held = self.reserved.take(&who, amount, |held| {
            policy::admit_tokens(limit, spent, held, amount)
        });
        match held {
            Ok(held) => Ok(Some(TokenReservation {
                _local: Some(held),
                _shared: None,
            })),
            Err(after) => Err(over(after)),
        }
    }
}

/// The `days` most recent UTC days, today first.
fn recent_days(days: usize) -> Vec<String> {
    let today = chrono::Utc::now().date_naive();
    (0..days as u64)
        .filter_map(|back| today.checked_sub_days(chrono::Days::new(back)))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect()
}

/// Whether a budget of `limit` is spent, and what that means for `tenant`: `Ok(false)` within
/// it, `Ok(true)` spent but to be degraded, `Err` (429 until tomorrow) spent under `reject`.
pub fn over_budget(
    tenant: &Tenant,
    spent: u64,
    limit: Option<u64>,
    code: ErrorCode,
    quota: &str,
) -> Result<bool, ApiError> {
    let Some(limit) = limit else { return Ok(false) };
    if spent < limit {
        return Ok(false);
    }
    match tenant.over_quota {
        OverQuota::Degrade => Ok(true),
        OverQuota::Reject => Err(budget_spent(tenant, code, quota, limit)),
    }
}

/// The 429 for a day's budget (`quota`, of `limit`) that `tenant` has spent: worth retrying
/// when the UTC day turns.
pub fn budget_spent(tenant: &Tenant, code: ErrorCode, quota: &str, limit: u64) -> ApiError {
    ApiError::OverQuota {
        code,
        message: format!(
            "tenant `{}` has spent its {quota} of {limit} for today (UTC)",
            tenant.name
        ),
        retry_after_s: Some(until_tomorrow()),
    }
}

/// Metric labels for tenants, by id (`/metrics` needs no key: names, which tenants choose, stay
/// behind the admin key): the first `max` tenants seen get their own, later ones `other`, so a
/// deployment with many tenants keeps a bounded number of series.
struct TenantLabels {
    max: usize,
    named: Mutex<HashSet<String>>,
}

impl TenantLabels {
    fn new(max: usize) -> Self {
        Self {
            max,
            named: Mutex::new(HashSet::new()),
        }
    }

    fn label(&self, tenant: &str) -> String {
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        if named.contains(tenant) || (named.len() < self.max && named.insert(tenant.to_string())) {
            tenant.to_string()
        } else {
            "other".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::tenants::Limits;

    fn tenant(over_quota: OverQuota) -> Tenant {
        Tenant {
            id: "t1".into(),
            name: "one".into(),
            limits: Limits::default(),
            over_quota,
            llm_backends: None,
            created_at: String::new(),
            keys: Vec::new(),
            revision: 0,
            deleting: false,
        }
    }

    #[test]
    fn a_replica_alone_enforces_its_share() {
        let rate = Rate {
            per_second: 10.0,
            burst: 5,
        };
        assert_eq!(
            rate.share(2),
            Rate {
                per_second: 5.0,
                burst: 3
            }
        );
        assert_eq!(rate.share(1), rate);
        assert_eq!(rate.share(100).burst, 1, "never less than one request at once");
    }

    #[test]
    fn a_spent_budget_degrades_or_rejects() {
        let code = ErrorCode::LlmTokenQuotaExceeded;
        let degrade = tenant(OverQuota::Degrade);
        assert!(!over_budget(&degrade, 5, None, code, "q").unwrap_or(true));
        assert!(!over_budget(&degrade, 9, Some(10), code, "q").unwrap_or(true));
        assert!(over_budget(&degrade, 10, Some(10), code, "q").unwrap_or(false));
        let reject = tenant(OverQuota::Reject);
        match over_budget(&reject, 10, Some(10), code, "q") {
            Err(ApiError::OverQuota {
                code: c,
                retry_after_s: Some(s),
                ..
            }) => assert!(c == code && (1..=86_400).contains(&s)),
            other => panic!("expected a 429 until tomorrow, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reservations_fit_the_budget_together_and_are_given_back() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let lapse = Duration::from_secs(60);
        let quotas = Quotas::new(dir.path().join("usage.json"), None, 1, 10, lapse)?;
        let mut thrifty = tenant(OverQuota::Degrade);
        thrifty.limits.llm_tokens_per_day = Some(500);
        let first = quotas.reserve(&thrifty, Budget::Llm, 218).await;
        let second = quotas.reserve(&thrifty, Budget::Llm, 218).await;
        assert!(matches!((&first, &second), (Ok(Some(_)), Ok(Some(_)))));
        let third = quotas.reserve(&thrifty, Budget::Llm, 218).await.err();
        assert_eq!(third.map(|over| over.after), Some(654), "436 held, 218 more");
        let unbudgeted = quotas.reserve(&thrifty, Budget::Embedding, 10_000).await;
        assert!(
            matches!(unbudgeted, Ok(None)),
            "no embedding budget: nothing to hold"
        );
        // The first answer took 40 tokens: charged, then its reservation given back.
        quotas.charge(&thrifty, Counter::TokensIn, 30).await;
        quotas.charge(&thrifty, Counter::TokensOut, 10).await;
        drop(first);
        let fits = quotas.reserve(&thrifty, Budget::Llm, 218).await;
        assert!(matches!(fits, Ok(Some(_))), "40 spent + 218 + 218 held");
        let over = quotas.reserve(&thrifty, Budget::Llm, 25).await.err();
        assert_eq!(over.map(|o| o.after), Some(40 + 436 + 25));
        Ok(())
    }

    #[test]
    fn tenant_labels_are_bounded() {
        let labels = TenantLabels::new(2);
        assert_eq!(labels.label("a"), "a");
        assert_eq!(labels.label("b"), "b");
        assert_eq!(labels.label("c"), "other");
        assert_eq!(labels.label("a"), "a");
    }
}
