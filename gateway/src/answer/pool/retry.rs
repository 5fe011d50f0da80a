//! When to call a backend again after a failure, and when to move on: the pure rule the pool's
//! attempts follow.
//!
//! - A dead connection (refused, reset before the response headers) moves to the next backend at
//!   once; only the last backend a request can try retries it.
//! - 5xx, 429 and connection failures back off with equal jitter (half the step fixed, half
//!   random: retries spread out, yet never come back almost at once), the step doubling from
//!   250 ms up to 5 s; a `Retry-After` is waited out when it is no longer than the cap, else the
//!   request moves on.
//! - No retry outlives the request's deadline or the backend's `max_retries`.

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
    if error.connection_failed() && !failed.last {
        return None;
    }
    let wait = match error.retry() {
        Retry::Never => return None,
        Retry::Backoff => equal_jitter(failed.retries, failed.noise),
        Retry::After(wait) if wait > policy.retry_after_cap => return None,
        Retry::After(wait) => wait,
    };
    (failed.retries < policy.max_retries && wait < failed.left).then_some(wait)
}

/// Half of the step for `retries`, plus up to the other half at random.
fn equal_jitter(retries: u32, noise: f64) -> Duration {
    let step = STEP.saturating_mul(1 << retries.min(10)).min(MAX_STEP);
    step / 2 + (step / 2).mul_f64(noise.clamp(0.0, 1.0))
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
    fn a_dead_connection_moves_on_unless_nothing_else_is_left() {
        let reset = remote(None, Retry::Backoff);
        assert_eq!(retry_after(&reset, POLICY, failed(0, false)), None);
        assert!(retry_after(&reset, POLICY, failed(0, true)).is_some());
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
    fn retry_after_is_honoured_up_to_the_cap_and_refusals_are_never_retried() {
        let soon = remote(Some(429), Retry::After(Duration::from_secs(2)));
        assert_eq!(
            retry_after(&soon, POLICY, failed(0, false)),
            Some(Duration::from_secs(2))
        );
        let late = remote(Some(429), Retry::After(Duration::from_secs(60)));
        assert_eq!(retry_after(&late, POLICY, failed(0, true)), None);
        let refused = remote(Some(400), Retry::Never);
        assert_eq!(retry_after(&refused, POLICY, failed(0, true)), None);
    }
}
