//! When to call a backend again after a failure, and when to move on: the pure rule the pool's
//! attempts follow.
//!
//! - A dead connection (refused, reset before the response headers) is retried once on the same
//!   backend (a pooled connection the server had closed is the usual cause), then the request
//!   moves to the next backend; only the last backend a request can try retries it further.
//! - 5xx, 429 and connection failures back off with equal jitter (half the step fixed, half
//!   random: retries spread out, yet never come back almost at once), the step doubling from
//!   250 ms up to 5 s; a `Retry-After` is waited out when it is no longer than the cap, else the
//!   request moves on.
//! - A `Retry-After` waited out gets up to a tenth more (at most a second) at random, so the
//!   clients a backend told the same moment do not come back at once.
//! - No retry outlives the request's deadline or the backend's `max_retries`, and no backend is
//!   retried beyond its budget ([`Throttle`], gRPC's retry throttling): each failure takes a token
//!   of ten, each success gives back a tenth of one, and retries stop while half or fewer are left
//!   — so retries stay a small share of a backend's recent calls, and a failing backend gets
//!   failed over at once instead of a storm of retries from every request (with a client SDK's
//!   own retries, one user action could reach a failing backend nine times).

use std::time::Duration;

use ragway_llm::{LlmError, Retry};

const STEP: Duration = Duration::from_millis(250);
const MAX_STEP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    /// The longest `Retry-After` waited out (`resilience.llm_retry_after_cap_ms`).
    pub retry_after_cap: Duration,
}

/// The situation after a failed call.
#[derive(Debug, Clone, Copy)]
pub struct Failed {
    /// Retries made so far (0 after the first call).
    pub retries: u32,
    /// What is left of the request's deadline.
    pub left: Duration,
    /// No other backend remains to try.
    pub last: bool,
    /// A number in [0, 1) to jitter with.
    pub noise: f64,
}

/// The wait before calling the same backend again, or `None` to move on.
pub fn retry_after(error: &LlmError, policy: RetryPolicy, failed: Failed) -> Option<Duration> {
    if error.connection_failed() && !failed.last && failed.retries > 0 {
        return None;
    }
    let wait = match error.retry() {
        Retry::Never => return None,
        Retry::Backoff => equal_jitter(failed.retries, failed.noise),
        Retry::After(wait) if wait > policy.retry_after_cap => return None,
        Retry::After(wait) => {
            wait + (wait / 10)
                .min(Duration::from_secs(1))
                .mul_f64(failed.noise.clamp(0.0, 1.0))
        }
    };
    (failed.retries < policy.max_retries && wait < failed.left).then_some(wait)
}

/// Half of the step for `retries`, plus up to the other half at random.
fn equal_jitter(retries: u32, noise: f64) -> Duration {
    let step = STEP.saturating_mul(1 << retries.min(10)).min(MAX_STEP);
    step / 2 + (step / 2).mul_f64(noise.clamp(0.0, 1.0))
}

/// A backend's retry budget: gRPC's retry throttling over a bucket of [`Throttle::MAX`] tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttle {
    tokens: f64,
}

impl Default for Throttle {
    fn default() -> Self {
        Self { tokens: Self::MAX }
    }
}

impl Throttle {
    const MAX: f64 = 10.0;
    /// What a success gives back.
    const RATIO: f64 = 0.1;

    /// A call failed in a way worth retrying.
    pub fn failed(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    pub fn succeeded(&mut self) {
        self.tokens = (self.tokens + Self::RATIO).min(Self::MAX);
    }

    /// Whether a retry is within the budget now.
    pub fn allows_retry(&self) -> bool {
        self.tokens > Self::MAX / 2.0
    }
}

/// Sub-second clock noise: random enough to spread retries, no RNG needed.
pub fn noise() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000) / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_retries: 3,
        retry_after_cap: Duration::from_secs(5),
    };

    fn remote(status: Option<u16>, retry: Retry) -> LlmError {
        LlmError::Remote {
            backend: "b".into(),
            message: "failed".into(),
            retry,
            status,
            upstream: None,
        }
    }

    fn failed(retries: u32, last: bool) -> Failed {
        Failed {
            retries,
            left: Duration::from_secs(30),
            last,
            noise: 0.5,
        }
    }

    #[test]
    fn a_dead_connection_is_retried_once_then_moves_on_unless_nothing_else_is_left() {
        let reset = remote(None, Retry::Backoff);
        assert!(retry_after(&reset, POLICY, failed(0, false)).is_some(), "once");
        assert_eq!(retry_after(&reset, POLICY, failed(1, false)), None);
        assert!(retry_after(&reset, POLICY, failed(1, true)).is_some());
        let none = RetryPolicy {
            max_retries: 0,
            ..POLICY
        };
        assert_eq!(
            retry_after(&reset, none, failed(0, false)),
            None,
            "max_retries = 0"
        );
    }

    #[test]
    fn backoff_grows_with_equal_jitter_and_stops_at_the_limits() {
        let busy = remote(Some(503), Retry::Backoff);
        let waits: Vec<Option<Duration>> = (0..4)
            .map(|retries| retry_after(&busy, POLICY, failed(retries, false)))
            .collect();
        let ms = |w: Option<Duration>| w.map(|w| w.as_millis());
        assert_eq!(
            waits.iter().map(|w| ms(*w)).collect::<Vec<_>>(),
            [Some(187), Some(375), Some(750), None]
        );
        for noise in [0.0, 0.999] {
            let wait = equal_jitter(2, noise);
            assert!(
                wait >= Duration::from_millis(500) && wait < Duration::from_secs(1),
                "{wait:?}"
            );
        }
        assert_eq!(equal_jitter(30, 0.0), MAX_STEP / 2);
        let little_left = Failed {
            left: Duration::from_millis(100),
            ..failed(0, true)
        };
        assert_eq!(
            retry_after(&busy, POLICY, little_left),
            None,
            "no retry past the deadline"
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap_with_jitter_and_refusals_are_never_retried() {
        let soon = remote(Some(429), Retry::After(Duration::from_secs(2)));
        assert_eq!(
            retry_after(&soon, POLICY, failed(0, false)),
            Some(Duration::from_millis(2_100)),
            "a tenth more at most (noise 0.5: half of it)"
        );
        let calm = Failed {
            noise: 0.0,
            ..failed(0, false)
        };
        assert_eq!(retry_after(&soon, POLICY, calm), Some(Duration::from_secs(2)));
        let late = remote(Some(429), Retry::After(Duration::from_secs(60)));
        assert_eq!(retry_after(&late, POLICY, failed(0, true)), None);
        let refused = remote(Some(400), Retry::Never);
        assert_eq!(retry_after(&refused, POLICY, failed(0, true)), None);
    }

    #[test]
    fn retries_stop_while_the_budget_is_half_spent_and_come_back_with_successes() {
        let mut throttle = Throttle::default();
        let mut allowed = 0;
        for _ in 0..20 {
            throttle.failed();
            allowed += usize::from(throttle.allows_retry());
        }
        assert_eq!(allowed, 4, "ten tokens: retries while more than five are left");
        for _ in 0..50 {
            throttle.succeeded();
        }
        assert!(!throttle.allows_retry(), "five tokens back is not more than half");
        throttle.succeeded();
        assert!(
            throttle.allows_retry(),
            "a success more, and retries may go again"
        );
        for _ in 0..1_000 {
            throttle.succeeded();
        }
        assert_eq!(throttle, Throttle::default(), "never more than the bucket");
    }
}
