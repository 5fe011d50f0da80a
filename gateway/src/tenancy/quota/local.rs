//! Quotas in this process: a `governor` GCRA per tenant, and day counters kept in a file.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::{Counter, DayUsage, Rate};
use crate::durable;

/// Days of counters kept.
const KEEP_DAYS: usize = 62;

pub(super) struct LocalCounters {
    limiters: Mutex<HashMap<String, (Rate, Arc<DefaultDirectRateLimiter>)>>,
    /// `tenant` → day → counters.
    days: Arc<Mutex<BTreeMap<String, BTreeMap<String, DayUsage>>>>,
    dirty: Arc<AtomicBool>,
    file: PathBuf,
}

/// The longest period between two requests a rate may mean (a record written before rates were
/// bounded may hold a smaller one; the arithmetic must not overflow for it).
const LONGEST_PERIOD_S: f64 = 1e6;

/// `None` when the rate allows anything (an infinite rate: no period).
fn limiter(rate: Rate) -> Option<DefaultDirectRateLimiter> {
    let period = Duration::try_from_secs_f64((1.0 / rate.per_second).min(LONGEST_PERIOD_S)).ok()?;
    let burst = NonZeroU32::new(rate.burst.max(1))?;
    Some(RateLimiter::direct(
        Quota::with_period(period)?.allow_burst(burst),
    ))
}

impl LocalCounters {
    pub(super) fn open(file: PathBuf) -> anyhow::Result<Self> {
        let days = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "usage counters unreadable; starting from zero");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", file.display())),
        };
        Ok(Self {
            limiters: Mutex::new(HashMap::new()),
            days: Arc::new(Mutex::new(days)),
            dirty: Arc::new(AtomicBool::new(false)),
            file,
        })
    }

    /// Admits one request under `rate` (`None`: unlimited); else how long until one would be.
    pub(super) fn check_rate(&self, tenant: &str, rate: Option<Rate>) -> Result<(), Duration> {
        let Some(rate) = rate else { return Ok(()) };
        let limiter = {
            let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
            match limiters.get(tenant) {
                // A changed limit (or a change of share) starts a new limiter.
                Some((same, limiter)) if *same == rate => limiter.clone(),
                _ => {
                    let Some(fresh) = limiter(rate) else { return Ok(()) };
                    let fresh = Arc::new(fresh);
                    limiters.insert(tenant.to_string(), (rate, fresh.clone()));
                    fresh
                }
            }
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, DayUsage>>> {
        self.days.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn add(&self, tenant: &str, day: &str, counter: Counter, n: u64) {
        let mut days = self.lock();
        let tenant_days = days.entry(tenant.to_string()).or_default();
        tenant_days
            .entry(day.to_string())
            .or_insert_with(|| DayUsage {
                day: day.to_string(),
                ..Default::default()
            })
            .add(counter, n);
        while tenant_days.len() > KEEP_DAYS {
            tenant_days.pop_first();
        }
        self.dirty.store(true, Ordering::Release);
    }

    pub(super) fn day(&self, tenant: &str, day: &str) -> DayUsage {
        self.lock()
            .get(tenant)
            .and_then(|days| days.get(day))
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn days(&self, tenant: &str, wanted: &[String]) -> Vec<DayUsage> {
        let days = self.lock();
        let Some(days) = days.get(tenant) else {
            return Vec::new();
        };
        wanted.iter().filter_map(|d| days.get(d).cloned()).collect()
    }

    /// Writes the counters to their file every `period` when they changed (a crash loses at
    /// most that much counting).
    pub(super) fn flush_every(&self, period: Duration) {
        let (days, dirty, file) = (self.days.clone(), self.dirty.clone(), self.file.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if !dirty.swap(false, Ordering::AcqRel) {
                    continue;
                }
                let bytes = {
                    let days = days.lock().unwrap_or_else(|p| p.into_inner());
                    serde_json::to_vec(&*days)
                };
                let written = bytes
                    .map_err(std::io::Error::other)
                    .and_then(|bytes| durable::write(&file, &bytes));
                if let Err(e) = written {
                    tracing::warn!(file = %file.display(), error = %e, "usage counters not saved");
                    dirty.store(true, Ordering::Release);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_positive_rate_makes_a_limiter_without_overflowing() {
        for per_second in [1e-20, 1e-6, 1.0, 1e6] {
            let limiter = limiter(Rate { per_second, burst: 1 });
            let limiter = limiter.map(|l| l.check().is_ok());
            assert_eq!(limiter, Some(true), "{per_second}: the first request passes");
        }
        let slow = super::limiter(Rate {
            per_second: 1e-20,
            burst: 1,
        });
        let second = slow.map(|l| (l.check().is_ok(), l.check().is_ok()));
        assert_eq!(second, Some((true, false)), "the second waits");
    }
}
