//! One dependency's protection: breaker, timeout, the request's deadline, and injected faults,
//! in that order around the real call.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ragway_openapi::DegradationReason;

use crate::breaker::{Breaker, BreakerSettings, BreakerState};
use crate::deadline::Deadline;
use crate::faults::Faults;

/// Why a guarded call produced nothing. `E` is the stage's own error, kept so that callers can
/// tell retryable failures apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<E> {
    BreakerOpen,
    /// The stage's own timeout passed.
    Timeout,
    /// The request's deadline passed (or left no time to start).
    Deadline,
    /// An operator-injected error.
    Injected(String),
    Error(E),
}

impl<E> Failure<E> {
    pub fn reason(&self) -> DegradationReason {
        match self {
            Self::BreakerOpen => DegradationReason::BreakerOpen,
            Self::Timeout => DegradationReason::Timeout,
            Self::Deadline => DegradationReason::Deadline,
            Self::Injected(_) | Self::Error(_) => DegradationReason::Error,
        }
    }
}

impl<E: std::fmt::Display> std::fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BreakerOpen => write!(f, "breaker open"),
            Self::Timeout => write!(f, "timed out"),
            Self::Deadline => write!(f, "request deadline reached"),
            Self::Injected(e) => write!(f, "{e}"),
            Self::Error(e) => write!(f, "{e}"),
        }
    }
}

pub struct Guard {
    /// The dependency's name: the breaker's label and the fault-injection stage name.
    pub name: String,
    breaker: Breaker,
    timeout: Duration,
    faults: Arc<Faults>,
}

impl Guard {
    pub fn new(name: &str, timeout: Duration, breaker: &BreakerSettings, faults: Arc<Faults>) -> Self {
        Self {
            name: name.to_string(),
            breaker: Breaker::new(name, breaker),
            timeout,
            faults,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Runs `call` if the breaker allows, within the stage timeout and the request's deadline.
    /// Errors and stage timeouts count against the breaker; running out of the request's own
    /// deadline does not (the dependency was not at fault).
    pub async fn run<T, E, F>(&self, deadline: &Deadline, call: F) -> Result<T, Failure<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.run_within(deadline, self.timeout, call).await
    }

    /// As [`Guard::run`], with a timeout other than the stage's own (e.g. time to first token).
    pub async fn run_within<T, E, F>(
        &self,
        deadline: &Deadline,
        timeout: Duration,
        call: F,
    ) -> Result<T, Failure<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let budget = deadline.remaining();
        if budget.is_zero() {
            return Err(Failure::Deadline);
        }
        let permit = self.breaker.try_acquire().ok_or(Failure::BreakerOpen)?;
        let limited_by_deadline = budget < timeout;
        match tokio::time::timeout(budget.min(timeout), self.faults.apply(&self.name, call)).await {
            Ok(Ok(Ok(value))) => {
                permit.record(true);
                Ok(value)
            }
            Ok(Ok(Err(error))) => {
                permit.record(false);
                Err(Failure::Error(error))
            }
            Ok(Err(injected)) => {
                permit.record(false);
                Err(Failure::Injected(injected))
            }
            Err(_) if limited_by_deadline => Err(Failure::Deadline),
            Err(_) => {
                permit.record(false);
                Err(Failure::Timeout)
            }
        }
    }
}
