//! A request's deadline: every stage gets what is left of it. A request runs its stages inside
//! [`Deadline::scope`]; the guards around the stages read it with [`Deadline::current`], so the
//! stage traits need no deadline parameter.

use std::time::{Duration, Instant};

use crate::error::{ApiError, ErrorCode};

tokio::task_local! {
    static CURRENT: Deadline;
}

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// `budget` from now; a budget past what the clock holds (a configured timeout of years)
    /// is [`Deadline::none`], never a panic.
    pub fn after(budget: Duration) -> Self {
        match Instant::now().checked_add(budget) {
            Some(at) => Self { at },
            None => Self::none(),
        }
    }

    /// No deadline of a request's own: background work (ingestion) is bounded by its stage
    /// timeouts alone, and a timeout then counts against the dependency.
    pub fn none() -> Self {
        const FAR: Duration = Duration::from_secs(10 * 365 * 24 * 3_600);
        let now = Instant::now();
        Self {
            at: now
                .checked_add(FAR)
                .unwrap_or(now + Duration::from_secs(24 * 3_600)),
        }
    }

    /// The request's own `deadline_ms` if given (never more than `max_ms`), else `default_ms`.
    pub fn for_request(requested_ms: Option<u64>, default_ms: u64, max_ms: u64) -> Result<Self, ApiError> {
        match requested_ms {
            None => Ok(Self::after(Duration::from_millis(default_ms))),
            Some(ms) if (1..=max_ms).contains(&ms) => Ok(Self::after(Duration::from_millis(ms))),
            Some(ms) => Err(ApiError::invalid(
                ErrorCode::DeadlineOutOfRange,
                format!("deadline_ms = {ms} is out of range: use 1 to {max_ms}"),
            )),
        }
    }

    /// Runs `work` with this as the deadline every guarded stage it calls reads.
    pub async fn scope<F: std::future::Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }

    /// The deadline of the request this task runs, or none (background work).
    pub fn current() -> Self {
        CURRENT
            .try_with(|deadline| *deadline)
            .unwrap_or_else(|_| Self::none())
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}
