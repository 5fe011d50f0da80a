//! Circuit breakers: failsafe's state machine, with the half-open state narrowed to exactly one
//! probe (failsafe itself lets every call through while half-open) and the state exported as
//! `ragway_breaker_state{dependency}` (0 closed, 1 half-open, 2 open).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// First open period; each failed probe doubles it up to `max_open`.
    pub open: Duration,
    pub max_open: Duration,
}

/// Mirrors failsafe's transitions into an atomic and the gauge.
struct StateMirror {
    dependency: String,
    state: Arc<AtomicU8>,
}

impl StateMirror {
    fn set(&self, state: BreakerState) {
        self.state.store(state as u8, Ordering::Release);
        metrics::gauge!("ragway_breaker_state", "dependency" => self.dependency.clone())
            .set(f64::from(state as u8));
        tracing::info!(dependency = self.dependency, state = ?state, "breaker state changed");
    }
}

impl Instrument for StateMirror {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.set(BreakerState::Open);
    }

    fn on_half_open(&self) {
        self.set(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        self.set(BreakerState::Closed);
    }
}

/// The open periods: `open`, doubling after each failed probe, capped at `max_open`. failsafe's
/// own backoffs count whole seconds and reject anything under one; this one keeps milliseconds.
#[derive(Debug, Clone)]
struct OpenPeriods {
    next: Duration,
    max: Duration,
}

impl Iterator for OpenPeriods {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        Some(current)
    }
}

pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<OpenPeriods>, StateMirror>,
    state: Arc<AtomicU8>,
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
        let mirror = StateMirror {
            dependency: dependency.to_string(),
            state: state.clone(),
        };
        mirror.set(BreakerState::Closed);
        let periods = OpenPeriods {
            next: settings.open,
            max: settings.max_open.max(settings.open),
        };
        let policy = failure_policy::consecutive_failures(settings.failure_threshold.max(1), periods);
        Self {
            machine: Config::new().failure_policy(policy).instrument(mirror).build(),
            state,
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
        assert!(b.try_acquire().is_some());
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
