//! Circuit breakers: failsafe's state machine, with the half-open state narrowed to exactly one
//! probe (failsafe itself lets every call through while half-open) and the state exported as
//! `ragway_breaker_state{dependency}` (0 closed, 1 half-open, 2 open). An open breaker lets the
//! next real call through as its probe once its open period has passed; when that probe will be
//! is [`Breaker::next_probe_in`] and `ragway_breaker_next_probe_timestamp_seconds{dependency}`
//! (0 while closed). The open period stays `open` unless `max_open` lets it grow: by default a
//! backend that recovers is refused for at most one open period and one probe.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Config, Instrument, StateMachine};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// Consecutive failures (errors or timeouts) that open the breaker.
    pub failure_threshold: u32,
    /// The open period before the first probe.
    pub open: Duration,
    /// Each failed probe doubles the open period up to this; `open` (the default) keeps it fixed.
    pub max_open: Duration,
}

/// When an open breaker's probe may go, shared by the mirror (which learns of the opening) and
/// the open periods (which know how long it is).
#[derive(Default)]
struct ProbeClock {
    /// The open period failsafe last took, in ms.
    period_ms: AtomicU64,
    /// When the breaker last opened.
    opened: Mutex<Option<Instant>>,
}

impl ProbeClock {
    fn next_probe_in(&self) -> Option<Duration> {
        let opened = (*self.opened.lock().unwrap_or_else(|p| p.into_inner()))?;
        let period = Duration::from_millis(self.period_ms.load(Ordering::Acquire));
        Some(period.saturating_sub(opened.elapsed()))
    }
}

/// Mirrors failsafe's transitions into an atomic and the gauges.
struct StateMirror {
    dependency: String,
    state: Arc<AtomicU8>,
    clock: Arc<ProbeClock>,
}

impl StateMirror {
    fn set(&self, state: BreakerState) {
        self.state.store(state as u8, Ordering::Release);
        metrics::gauge!("ragway_breaker_state", "dependency" => self.dependency.clone())
            .set(f64::from(state as u8));
        tracing::info!(dependency = self.dependency, state = ?state, "breaker state changed");
    }

    /// `ragway_breaker_next_probe_timestamp_seconds`: the Unix time of the next probe, 0 when none
    /// is due (closed, or the probe is out).
    fn next_probe(&self, opened: Option<Instant>) {
        *self.clock.opened.lock().unwrap_or_else(|p| p.into_inner()) = opened;
        let at = self.clock.next_probe_in().map_or(0.0, |wait| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            (now + wait).as_secs_f64()
        });
        metrics::gauge!("ragway_breaker_next_probe_timestamp_seconds", "dependency" => self.dependency.clone())
            .set(at);
    }
}

impl Instrument for StateMirror {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.next_probe(Some(Instant::now()));
        self.set(BreakerState::Open);
    }

    fn on_half_open(&self) {
        self.next_probe(None);
        self.set(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        self.next_probe(None);
        self.set(BreakerState::Closed);
    }
}

/// The open periods: `open`, doubling after each failed probe up to `max_open`. failsafe's own
/// backoffs count whole seconds and reject anything under one; this one keeps milliseconds.
#[derive(Clone)]
struct OpenPeriods {
    next: Duration,
    max: Duration,
    clock: Arc<ProbeClock>,
}

impl Iterator for OpenPeriods {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        let ms = u64::try_from(current.as_millis()).unwrap_or(u64::MAX);
        self.clock.period_ms.store(ms, Ordering::Release);
        Some(current)
    }
}

pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<OpenPeriods>, StateMirror>,
    state: Arc<AtomicU8>,
    clock: Arc<ProbeClock>,
    probe_in_flight: AtomicBool,
    /// Makes "is a call permitted, and is it the probe" one decision.
    admission: Mutex<()>,
}

/// Permission to make one call. Report how it went with [`Permit::record`]; a permit dropped
/// unreported (the caller gave up, e.g. for its deadline) records nothing and frees the probe slot.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Breaker {
    pub fn new(dependency: &str, settings: &BreakerSettings) -> Self {
        let state = Arc::new(AtomicU8::new(BreakerState::Closed as u8));
        let clock = Arc::new(ProbeClock::default());
        let mirror = StateMirror {
            dependency: dependency.to_string(),
            state: state.clone(),
            clock: clock.clone(),
        };
        mirror.set(BreakerState::Closed);
        mirror.next_probe(None);
        let periods = OpenPeriods {
            next: settings.open,
            max: settings.max_open.max(settings.open),
            clock: clock.clone(),
        };
        let policy = failure_policy::consecutive_failures(settings.failure_threshold.max(1), periods);
        Self {
            machine: Config::new().failure_policy(policy).instrument(mirror).build(),
            state,
            clock,
            probe_in_flight: AtomicBool::new(false),
            admission: Mutex::new(()),
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    /// While open: how long until the next call may go as the probe (zero once it may).
    pub fn next_probe_in(&self) -> Option<Duration> {
        match self.state() {
            BreakerState::Open => self.clock.next_probe_in(),
            _ => None,
        }
    }

    /// `None` while open, and while half-open with the probe already out.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let _admission = self
            .admission
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !self.machine.is_call_permitted() {
            return None;
        }
        if self.state() != BreakerState::HalfOpen {
            return Some(Permit {
                breaker: self,
                probe: false,
            });
        }
        let claimed = self
            .probe_in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        claimed.then_some(Permit {
            breaker: self,
            probe: true,
        })
    }
}

impl Permit<'_> {
    /// This call is the half-open breaker's one probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn record(self, success: bool) {
        if success {
            self.breaker.machine.on_success();
        } else {
            self.breaker.machine.on_error();
        }
        // Drop frees the probe slot.
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probe_in_flight.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One permitted call that succeeds or fails.
    fn call(b: &Breaker, success: bool) {
        match b.try_acquire() {
            Some(permit) => permit.record(success),
            None => panic!("call rejected"),
        }
    }

    fn breaker(open_ms: u64) -> Breaker {
        Breaker::new(
            "test",
            &BreakerSettings {
                failure_threshold: 2,
                open: Duration::from_millis(open_ms),
                max_open: Duration::from_millis(open_ms * 4),
            },
        )
    }

    #[test]
    fn opens_after_consecutive_failures_and_lets_one_probe_through() {
        let b = breaker(50);
        call(&b, false);
        assert_eq!(b.state(), BreakerState::Closed);
        call(&b, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
        let wait = b.next_probe_in().unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(50),
            "{wait:?}"
        );

        std::thread::sleep(Duration::from_millis(80));
        let probe = b.try_acquire();
        assert!(probe.is_some());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(
            b.try_acquire().is_none(),
            "a second call while the probe is out is rejected"
        );
        if let Some(p) = probe {
            p.record(true);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.next_probe_in(), None);
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn the_open_period_stays_fixed_unless_allowed_to_grow() {
        let fixed = Breaker::new(
            "fixed",
            &BreakerSettings {
                failure_threshold: 1,
                open: Duration::from_millis(40),
                max_open: Duration::from_millis(40),
            },
        );
        for _ in 0..3 {
            call(&fixed, false);
            let wait = fixed.next_probe_in().unwrap_or_default();
            assert!(wait > Duration::from_millis(20), "{wait:?}");
            assert!(
                wait <= Duration::from_millis(40),
                "a failed probe keeps the period: {wait:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let growing = breaker(40);
        for _ in 0..2 {
            call(&growing, false);
        }
        std::thread::sleep(Duration::from_millis(50));
        call(&growing, false); // the probe fails
        let wait = growing.next_probe_in().unwrap_or_default();
        assert!(
            wait > Duration::from_millis(40),
            "max_open lets it double: {wait:?}"
        );
    }

    #[test]
    fn failed_probe_reopens_and_abandoned_probe_frees_the_slot() {
        let b = breaker(30);
        for _ in 0..2 {
            call(&b, false);
        }
        std::thread::sleep(Duration::from_millis(50));
        drop(b.try_acquire());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire();
        assert!(probe.is_some(), "an abandoned probe does not block the next one");
        if let Some(p) = probe {
            p.record(false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
    }
}
