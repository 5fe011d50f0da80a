//! One dependency's protection: breaker, timeout, the request's deadline, and injected faults,
//! in that order around the real call.

use crate::error::{ApiError, ErrorCode};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ragway_openapi::DegradationReason;
use ragway_worker::{Progress, Stopped, PROGRESS};

use crate::resilience::breaker::{Breaker, BreakerSettings, BreakerState};
use crate::resilience::deadline::Deadline;
use crate::resilience::faults::Faults;

/// Whose fault a failed call was; only the dependency's own failures count against its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The dependency failed (crashed, erred, answered 5xx): counts against its breaker.
    Dependency,
    /// The request could never succeed as sent (prompt too long, unknown collection, a 4xx):
    /// the dependency is fine.
    Caller,
    /// Admission control refused the work before it started: the dependency is busy, not broken.
    Overload,
}

/// Stage errors say whose fault they are.
pub trait Blamed {
    fn blame(&self) -> Blame;
}

/// Why a guarded call produced nothing. `E` is the stage's own error, kept so that callers can
/// tell retryable failures apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<E> {
    BreakerOpen,
    /// The stage's own timeout passed.
    Timeout,
    /// The stage's timeout passed while the call still waited in its worker's queue: the
    /// dependency is busy (admission control's matter), not broken; never charged to its breaker.
    Queued,
    /// The request's deadline passed (or left no time to start).
    Deadline,
    /// An operator-injected error.
    Injected(String),
    /// The worker's queue was full; the call was not made.
    Overloaded(E),
    /// The dependency's own failure.
    Error(E),
    /// The request's fault (see [`Blame::Caller`]); not held against the dependency.
    Rejected(E),
}

impl<E> Failure<E> {
    pub fn reason(&self) -> DegradationReason {
        match self {
            Self::BreakerOpen => DegradationReason::BreakerOpen,
            Self::Timeout => DegradationReason::Timeout,
            Self::Deadline => DegradationReason::Deadline,
            Self::Queued | Self::Overloaded(_) => DegradationReason::Overloaded,
            Self::Injected(_) | Self::Error(_) | Self::Rejected(_) => DegradationReason::Error,
        }
    }
}

impl<E: From<Stopped>> Failure<E> {
    /// The failure in the stage's own error type, as a decorator of the stage answers it.
    pub fn into_error(self) -> E {
        match self {
            Self::BreakerOpen => Stopped::BreakerOpen.into(),
            Self::Timeout | Self::Queued => Stopped::Timeout.into(),
            Self::Deadline => Stopped::Deadline.into(),
            Self::Injected(message) => Stopped::Injected(message).into(),
            Self::Overloaded(error) | Self::Error(error) | Self::Rejected(error) => error,
        }
    }
}

/// What a stage's error means for an answer: the reason it is reported under, and whether the
/// stage was skipped (no time or budget left for it) rather than failed.
pub trait StageError: Blamed + std::fmt::Display {
    /// Set when a guard or budget around the stage stopped the call.
    fn stopped(&self) -> Option<&Stopped>;

    fn reason(&self) -> DegradationReason {
        match self.stopped() {
            Some(Stopped::BreakerOpen) => DegradationReason::BreakerOpen,
            Some(Stopped::Timeout) => DegradationReason::Timeout,
            Some(Stopped::Deadline) => DegradationReason::Deadline,
            Some(Stopped::BudgetSpent) => DegradationReason::Quota,
            Some(Stopped::Injected(_)) => DegradationReason::Error,
            None if self.blame() == Blame::Overload => DegradationReason::Overloaded,
            None => DegradationReason::Error,
        }
    }

    fn skipped(&self) -> bool {
        matches!(self.stopped(), Some(Stopped::Deadline | Stopped::BudgetSpent))
    }
}

impl<E: std::fmt::Display> std::fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BreakerOpen => write!(f, "breaker open"),
            Self::Timeout => write!(f, "timed out"),
            Self::Queued => write!(f, "timed out waiting for the model's queue"),
            Self::Deadline => write!(f, "request deadline reached"),
            Self::Injected(e) => write!(f, "{e}"),
            Self::Overloaded(e) | Self::Error(e) | Self::Rejected(e) => write!(f, "{e}"),
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

    /// While its breaker is open: how long until the next call goes as its probe.
    pub fn next_probe_in(&self) -> Option<std::time::Duration> {
        self.breaker.next_probe_in()
    }

    /// Healthy: its breaker is closed and no fault is injected into it.
    pub fn ready(&self) -> bool {
        self.breaker.state() == BreakerState::Closed && !self.faults.active(&self.name)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Counts a failure seen outside [`Guard::run`] (a stream that stalled after its first token).
    pub fn charge_failure(&self) {
        if let Some(permit) = self.breaker.try_acquire() {
            permit.record(false);
        }
    }

    /// Runs `call` if the breaker allows, within the stage timeout and the request's deadline.
    /// The dependency's own errors and stage timeouts count against the breaker; running out of
    /// the request's own deadline, the caller's errors and a full queue do not.
    pub async fn run<T, E, F>(&self, deadline: &Deadline, call: F) -> Result<T, Failure<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: Blamed,
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
        E: Blamed,
    {
        self.run_blaming(deadline, timeout, Blame::Dependency, call).await
    }

    /// As [`Guard::run_within`], saying whose fault running past `timeout` is: the
    /// dependency's (charged to its breaker), or the caller's for bulk work whose size the caller
    /// chose (an ingestion batch, a `/v1/rerank` of many documents), never charged to the breaker
    /// that other requests' answers depend on. The dependency's own errors are charged either way.
    pub async fn run_blaming<T, E, F>(
        &self,
        deadline: &Deadline,
        timeout: Duration,
        timed_out: Blame,
        call: F,
    ) -> Result<T, Failure<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: Blamed,
    {
        let limit = Limit {
            own: timeout,
            patience: None,
            timed_out,
        };
        self.run_limited(deadline, limit, call).await
    }

    /// As [`Guard::run_within`] with the dependency's own limit `own`, for a call that may wait
    /// up to `patience` when it is longer (the last backend a request can try). The breaker's
    /// probe waits `own` only — a client's deadline never holds it, and every other request
    /// meanwhile would be refused — and a call cut after waiting past `own`, by its patience or
    /// by the request's deadline, is the dependency's timeout.
    pub async fn run_patiently<T, E, F>(
        &self,
        deadline: &Deadline,
        own: Duration,
        patience: Option<Duration>,
        call: F,
    ) -> Result<T, Failure<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: Blamed,
    {
        let limit = Limit {
            own,
            patience,
            timed_out: Blame::Dependency,
        };
        self.run_limited(deadline, limit, call).await
    }

    async fn run_limited<T, E, F>(&self, deadline: &Deadline, limit: Limit, call: F) -> Result<T, Failure<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: Blamed,
    {
        let budget = deadline.remaining();
        if budget.is_zero() {
            return Err(Failure::Deadline);
        }
        let permit = self.breaker.try_acquire().ok_or(Failure::BreakerOpen)?;
        let timeout = match (limit.patience, permit.is_probe()) {
            (Some(patience), false) => patience.max(limit.own),
            _ => limit.own,
        };
        let limited_by_deadline = budget < timeout;
        let started = std::time::Instant::now();
        let progress = Arc::new(Progress::default());
        let call = PROGRESS.scope(progress.clone(), self.faults.apply(&self.name, call));
        match tokio::time::timeout(budget.min(timeout), call).await {
            Ok(Ok(Ok(value))) => {
                permit.record(true);
                Ok(value)
            }
            // A permit dropped unrecorded counts neither way.
            Ok(Ok(Err(error))) => match error.blame() {
                Blame::Dependency => {
                    permit.record(false);
                    Err(Failure::Error(error))
                }
                Blame::Caller => Err(Failure::Rejected(error)),
                Blame::Overload => Err(Failure::Overloaded(error)),
            },
            Ok(Err(injected)) => {
                permit.record(false);
                Err(Failure::Injected(injected))
            }
            // Cut by the deadline before the dependency's own limit: the request ran out of time.
            Err(_) if limited_by_deadline && started.elapsed() < limit.own => Err(Failure::Deadline),
            // A permit dropped unrecorded counts neither way.
            Err(_) if progress.waiting() => Err(Failure::Queued),
            Err(_) => {
                if limit.timed_out == Blame::Dependency {
                    permit.record(false);
                }
                Err(Failure::Timeout)
            }
        }
    }
}

/// How long a guarded call may take: the dependency's `own` limit, or `patience` when that is
/// longer and the call is not the probe; who a timeout is blamed on.
#[derive(Debug, Clone, Copy)]
struct Limit {
    own: Duration,
    patience: Option<Duration>,
    timed_out: Blame,
}

impl Blamed for ragway_retrieval::RetrievalError {
    fn blame(&self) -> Blame {
        match self {
            Self::UnknownCollection(_) => Blame::Caller,
            // Stopped around the stage: never the stage's own failure.
            Self::Overloaded(_) | Self::Stopped(_) => Blame::Overload,
            Self::Model(_) | Self::Dense(_) | Self::Keyword(_) | Self::WorkerGone => Blame::Dependency,
        }
    }
}

impl Blamed for ragway_rerank::RerankError {
    fn blame(&self) -> Blame {
        match self {
            Self::Overloaded(_) | Self::Stopped(_) => Blame::Overload,
            Self::Model(_) | Self::WorkerGone => Blame::Dependency,
        }
    }
}

impl StageError for ragway_retrieval::RetrievalError {
    fn stopped(&self) -> Option<&Stopped> {
        match self {
            Self::Stopped(stopped) => Some(stopped),
            _ => None,
        }
    }
}

impl StageError for ragway_rerank::RerankError {
    fn stopped(&self) -> Option<&Stopped> {
        match self {
            Self::Stopped(stopped) => Some(stopped),
            _ => None,
        }
    }
}

impl StageError for ragway_llm::LlmError {
    fn stopped(&self) -> Option<&Stopped> {
        match self {
            Self::Stopped(stopped) => Some(stopped),
            _ => None,
        }
    }
}

impl Blamed for ragway_llm::LlmError {
    /// The request's fault only when the backend refused it as sent (a prompt too long, a 4xx
    /// other than 401/403 — the operator's credentials — and 408/429, the server's state).
    fn blame(&self) -> Blame {
        if self.refusal().is_some() {
            return Blame::Caller;
        }
        match self {
            Self::Overloaded(_) | Self::Stopped(_) => Blame::Overload,
            _ => Blame::Dependency,
        }
    }
}

/// A model stage a route calls directly (`/v1/embeddings`, `/v1/rerank`, ingestion's embedding).
#[derive(Debug, Clone, Copy)]
pub enum ModelStage {
    Embedder,
    Reranker,
}

impl ApiError {
    /// What a route answers when `stage` failed: busy (a full queue, an open breaker: 503 with
    /// `Retry-After`) or unavailable (503); a caller's own error keeps its status.
    pub fn from_stage<E>(stage: ModelStage, error: E) -> Self
    where
        E: StageError + Into<ApiError> + std::error::Error + Send + Sync + 'static,
    {
        let (busy, unavailable, name) = match stage {
            ModelStage::Embedder => (
                ErrorCode::EmbedderBusy,
                ErrorCode::EmbedderUnavailable,
                "embedder",
            ),
            ModelStage::Reranker => (
                ErrorCode::RerankerBusy,
                ErrorCode::RerankerUnavailable,
                "reranker",
            ),
        };
        match (error.stopped(), error.blame()) {
            (None, Blame::Caller) => error.into(),
            (Some(Stopped::BreakerOpen), _) | (None, Blame::Overload) => Self::Busy {
                code: busy,
                message: format!("the {name} cannot take this work now ({error}); retry later"),
                retry_after_s: 1,
            },
            _ => {
                // ragway's own words for a stop; a failure's own text is only logged.
                let message = match error.stopped() {
                    Some(stopped) => format!("the {name} did not answer: {stopped}"),
                    None => crate::error::failed(&format!("the {name}")),
                };
                Self::unavailable_from(unavailable, message, error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use ragway_llm::{LlmError, Retry};

    use super::*;
    use crate::resilience::breaker::{BreakerSettings, BreakerState};
    use crate::resilience::deadline::Deadline;
    use crate::resilience::faults::Faults;

    fn guard() -> Guard {
        guard_of("llm:test", 2, Duration::from_secs(60), Duration::from_secs(5))
    }

    /// A guard of `dependency` whose breaker opens after `failures` for `open`.
    fn guard_of(dependency: &str, failures: u32, open: Duration, timeout: Duration) -> Guard {
        let settings = BreakerSettings {
            failure_threshold: failures,
            open,
            max_open: open,
        };
        Guard::new(dependency, timeout, &settings, Arc::new(Faults::default()))
    }

    fn remote(status: Option<u16>) -> LlmError {
        LlmError::Remote {
            backend: "test".into(),
            message: "failed".into(),
            retry: Retry::Never,
            status,
            upstream: None,
        }
    }

    async fn fail_times(guard: &Guard, times: usize, error: impl Fn() -> LlmError) {
        let deadline = Deadline::after(Duration::from_secs(5));
        for _ in 0..times {
            let result: Result<(), _> = guard.run(&deadline, async { Err(error()) }).await;
            assert!(result.is_err());
        }
    }

    /// A task that holds the worker until the gate lets it go.
    struct Hold;

    impl ragway_worker::Task for Hold {
        fn abandoned(&self) -> bool {
            false
        }
    }

    /// Submits a task to `worker` and waits for ever (the guard's timeout ends the wait).
    async fn submit_and_wait(worker: &ragway_worker::Worker<Hold>) -> Result<(), LlmError> {
        worker
            .submit(Hold, ragway_worker::Priority::Interactive)
            .map_err(LlmError::Overloaded)?;
        std::future::pending::<()>().await;
        Ok(())
    }

    /// Issue 40 item 3: a call that times out while its task still waits in a busy worker's
    /// queue is not the model's failure; one that times out while the model runs it is.
    #[tokio::test]
    async fn time_spent_waiting_in_the_queue_is_never_charged_to_the_breaker() -> std::io::Result<()> {
        let guard = guard_of("embedder", 2, Duration::from_secs(60), Duration::from_millis(50));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let worker = ragway_worker::Worker::spawn(
            "held",
            ragway_worker::QueueLimits::default(),
            gate,
            |gate: &mut std::sync::mpsc::Receiver<()>, _task, _queue| {
                let _ = gate.recv_timeout(Duration::from_secs(10));
                None
            },
        )?;
        let deadline = Deadline::after(Duration::from_secs(30));
        // Taken by the worker, which then holds it past the timeout: the model's (1 of 2).
        let first = guard.run(&deadline, submit_and_wait(&worker)).await;
        assert!(matches!(first, Err(Failure::Timeout)), "{first:?}");
        // Behind it, in the queue, five times: the worker is busy, not broken.
        for _ in 0..5 {
            let queued = guard.run(&deadline, submit_and_wait(&worker)).await;
            assert!(matches!(queued, Err(Failure::Queued)), "{queued:?}");
        }
        assert_eq!(guard.state(), BreakerState::Closed);
        // Drained; the next one is taken and held again: the second failure opens the breaker.
        for _ in 0..6 {
            let _ = release.send(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let held = guard.run(&deadline, submit_and_wait(&worker)).await;
        assert!(matches!(held, Err(Failure::Timeout)), "{held:?}");
        assert_eq!(guard.state(), BreakerState::Open);
        for _ in 0..2 {
            let _ = release.send(());
        }
        Ok(())
    }

    #[tokio::test]
    async fn callers_faults_and_overload_never_open_the_breaker() {
        let guard = guard();
        let too_long = || LlmError::PromptTooLong {
            prompt: 9_000,
            max_tokens: 100,
            context: 8_192,
        };
        fail_times(&guard, 5, too_long).await;
        fail_times(&guard, 5, || remote(Some(400))).await;
        fail_times(&guard, 5, || remote(Some(422))).await;
        let overloaded = || {
            LlmError::Overloaded(ragway_worker::Overloaded {
                worker: "llm-local".into(),
                lane: "interactive",
            })
        };
        fail_times(&guard, 5, overloaded).await;
        assert_eq!(guard.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_collection_dropped_mid_query_is_not_the_stores_fault() {
        let guard = guard();
        let deadline = Deadline::after(Duration::from_secs(5));
        for _ in 0..5 {
            let gone =
                async { Err::<(), _>(ragway_retrieval::RetrievalError::UnknownCollection("c".into())) };
            assert!(matches!(
                guard.run(&deadline, gone).await,
                Err(Failure::Rejected(_))
            ));
        }
        assert_eq!(guard.state(), BreakerState::Closed);
    }

    /// Issue 38 item 1: a patient wait (the last backend a request can try) is bounded by the
    /// backend's own limit when it is the half-open breaker's probe, and a wait cut past that
    /// limit by the request's deadline is the backend's slowness.
    #[tokio::test]
    async fn a_probe_is_never_patient_and_a_wait_past_the_own_limit_is_charged() {
        let guard = guard_of(
            "llm:silent",
            1,
            Duration::from_millis(100),
            Duration::from_secs(5),
        );
        let own = Duration::from_millis(300);
        let patience = Some(Duration::from_secs(20));
        let silent = || std::future::pending::<Result<(), LlmError>>();
        // A client's 600 ms deadline cuts the patient wait past the backend's own 300 ms: charged.
        let deadline = Deadline::after(Duration::from_millis(600));
        let cut = guard.run_patiently(&deadline, own, patience, silent()).await;
        assert!(matches!(cut, Err(Failure::Timeout)), "{cut:?}");
        assert_eq!(guard.state(), BreakerState::Open);
        // Half-open: the probe of a request with 300 s left (and 20 s of patience) waits the
        // backend's own limit only.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let deadline = Deadline::after(Duration::from_secs(300));
        let started = std::time::Instant::now();
        let probe = guard.run_patiently(&deadline, own, patience, silent()).await;
        assert!(matches!(probe, Err(Failure::Timeout)), "{probe:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the probe waited its own limit, not the patience"
        );
        assert_eq!(guard.state(), BreakerState::Open, "the failed probe is recorded");
        // A deadline shorter than the own limit is the request's: nothing is recorded, and the
        // probe slot is free for the next call.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let short = Deadline::after(Duration::from_millis(50));
        let cut_short = guard.run_patiently(&short, own, None, silent()).await;
        assert!(matches!(cut_short, Err(Failure::Deadline)), "{cut_short:?}");
        let fresh = Deadline::after(Duration::from_secs(5));
        let answered = guard
            .run_patiently(&fresh, own, patience, async { Ok::<(), LlmError>(()) })
            .await;
        assert!(
            answered.is_ok(),
            "the probe slot was freed, not held: {answered:?}"
        );
        assert_eq!(guard.state(), BreakerState::Closed);
    }

    /// Background work has no request deadline: its stage timeout is the dependency's fault.
    #[tokio::test]
    async fn a_timeout_without_a_request_deadline_counts_against_the_dependency() {
        let guard = guard();
        for _ in 0..2 {
            let hang = std::future::pending::<Result<(), LlmError>>();
            let deadline = Deadline::none();
            let result = guard.run_within(&deadline, Duration::from_millis(10), hang).await;
            assert!(matches!(result, Err(Failure::Timeout)), "{result:?}");
        }
        assert_eq!(guard.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn dependency_failures_open_it() {
        // 401–404: the operator's configuration (credentials, billing, the model), the backend's
        // failure for every request.
        for status in [
            None,
            Some(500),
            Some(429),
            Some(408),
            Some(401),
            Some(402),
            Some(403),
            Some(404),
        ] {
            let guard = guard();
            fail_times(&guard, 2, || remote(status)).await;
            assert_eq!(guard.state(), BreakerState::Open, "status {status:?}");
        }
    }

    #[test]
    fn a_stage_failure_becomes_one_status_by_its_code_and_keeps_its_source() {
        let failed = ApiError::from_stage(ModelStage::Embedder, ragway_retrieval::RetrievalError::WorkerGone);
        assert_eq!(failed.code(), ErrorCode::EmbedderUnavailable);
        let source = std::error::Error::source(&failed)
            .and_then(|s| s.downcast_ref::<ragway_retrieval::RetrievalError>());
        assert!(
            matches!(source, Some(ragway_retrieval::RetrievalError::WorkerGone)),
            "{source:?}"
        );
        let open = ApiError::from_stage(
            ModelStage::Reranker,
            ragway_rerank::RerankError::Stopped(Stopped::BreakerOpen),
        );
        assert_eq!(open.code(), ErrorCode::RerankerBusy);
    }
}
