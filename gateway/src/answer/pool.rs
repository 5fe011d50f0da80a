//! The LLM pool: backends tried by priority (lowest first); among equal priorities the one with
//! the fewest requests in flight goes first. Each backend is [`Guarded`] (breaker, timeouts,
//! stalls); retryable failures (connect, 429, 5xx) are retried with jittered backoff within the
//! deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ragway_llm::{
    ChunkStream, Generation, GenerationRequest, Generator, LlmError, Relay, Retry, TokenStream,
};
use serde_json::Value;

use super::report::{Authorship, Report};
use crate::config::BackendLimits;
use crate::resilience::breaker::BreakerState;
use crate::resilience::deadline::Deadline;
use crate::resilience::guard::{Guard, StageError};
use crate::resilience::guarded::{Guarded, StreamLimits};
use crate::tenancy::Choice;

pub struct Backend {
    /// The backend behind its guard (see [`Guarded`]): a whole answer within its timeout, a
    /// stream's first text within its time-to-first-token limit, and no stall after it.
    pub generator: Arc<dyn Generator>,
    /// The guard's breaker, for health and readiness.
    pub guard: Arc<Guard>,
    pub priority: u32,
    pub max_retries: u32,
    in_flight: AtomicUsize,
}

/// A stream that has produced its first text, and the backend it comes from.
pub struct OpenedStream {
    pub backend: String,
    pub stream: TokenStream,
}

impl Backend {
    /// `generator` behind `guard`, with `limits`' stream limits; a stream's later pieces must
    /// each come within `idle`.
    pub fn new(generator: Arc<dyn Generator>, guard: Guard, limits: BackendLimits, idle: Duration) -> Self {
        let guard = Arc::new(guard);
        let streaming = StreamLimits {
            first_text: limits.time_to_first_token,
            idle,
        };
        let guarded = Guarded::new(generator, guard.clone()).with_stream_limits(streaming);
        Self {
            generator: Arc::new(guarded),
            guard,
            priority: limits.priority,
            max_retries: limits.max_retries,
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        self.generator.name()
    }

    pub fn state(&self) -> BreakerState {
        self.guard.state()
    }
}

/// Decrements the in-flight count however the call ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct LlmPool {
    backends: Vec<Backend>,
}

const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl LlmPool {
    pub fn new(mut backends: Vec<Backend>) -> Self {
        backends.sort_by_key(|b| b.priority);
        Self { backends }
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend `name`, if the pool has it.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name() == name)
    }

    /// Among the backends `choice` allows, the one with the smallest known context window, and
    /// that window: grounded prompts are fitted to it so that any of them can take them.
    pub fn tightest_context(&self, choice: &Choice) -> Option<(&dyn ragway_llm::Generator, usize)> {
        self.backends
            .iter()
            .filter(|b| choice.allows(b.name()))
            .filter_map(|b| b.generator.context_window().map(|w| (b.generator.as_ref(), w)))
            .min_by_key(|(_, w)| *w)
    }

    /// Backends in the order to try: by priority, then fewest in flight, then prefix affinity
    /// (L4 for remote backends): among equally loaded backends of equal priority, a request goes
    /// where its prompt prefix — every message but the last, for a grounded answer the passages —
    /// ranks highest by rendezvous hashing, so the same passages keep meeting the same server's
    /// prompt cache (llama.cpp's, vLLM's) while it is up, and a backend leaving the pool moves
    /// only its own share.
    fn order(&self, choice: &Choice, request: &GenerationRequest) -> Vec<&Backend> {
        let prefix = request
            .messages
            .split_last()
            .map_or(&[][..], |(_, earlier)| earlier);
        let mut order: Vec<&Backend> = self.backends.iter().filter(|b| choice.allows(b.name())).collect();
        order.sort_by_key(|b| {
            let affinity = rendezvous(prefix, b.name());
            (
                b.priority,
                b.in_flight.load(Ordering::Acquire),
                std::cmp::Reverse(affinity),
            )
        });
        order
    }

    /// The first answer down the order; every failure is recorded in `report` as
    /// `llm:<backend>`. Only backends `choice` allows are tried.
    pub async fn generate(
        &self,
        request: &GenerationRequest,
        deadline: &Deadline,
        report: &mut Report,
        choice: &Choice,
    ) -> Option<Generation> {
        for (tried, backend) in self.order(choice, request).into_iter().enumerate() {
            let call = || backend.generator.generate(request.clone());
            match self.attempt(backend, deadline, call).await {
                Ok(generation) => {
                    count_tokens(
                        backend.name(),
                        generation.prompt_tokens,
                        generation.completion_tokens,
                    );
                    report.authorship = Some(authorship(backend, tried == 0));
                    return Some(generation);
                }
                Err(error) => {
                    tracing::warn!(backend = backend.name(), %error, "LLM backend failed");
                    report.degrade(format!("llm:{}", backend.name()), error.reason());
                }
            }
        }
        None
    }

    /// A streamed answer from the first backend, down the order, whose stream produces text
    /// within its time-to-first-token limit. Backends named in `skip` are passed over (they failed
    /// earlier in this answer). Failures are recorded in `report`.
    pub async fn open_stream(
        &self,
        request: &GenerationRequest,
        deadline: &Deadline,
        report: &mut Report,
        choice: &Choice,
        skip: &[String],
    ) -> Option<OpenedStream> {
        let candidates = self
            .order(choice, request)
            .into_iter()
            .filter(|b| !skip.iter().any(|s| s == b.name()));
        for (tried, backend) in candidates.enumerate() {
            let call = || backend.generator.stream(request.clone());
            match self.attempt(backend, deadline, call).await {
                Ok(stream) => {
                    // A continuation (`skip` not empty) is by definition a fallback.
                    report.authorship = Some(authorship(backend, tried == 0 && skip.is_empty()));
                    let backend = backend.name().to_string();
                    return Some(OpenedStream { backend, stream });
                }
                Err(error) => {
                    tracing::warn!(backend = backend.name(), %error, "LLM stream failed to start");
                    report.degrade(format!("llm:{}", backend.name()), error.reason());
                }
            }
        }
        None
    }

    /// `body` relayed to `backend` unchanged (see [`Relay`]), guarded and retried like any call.
    pub async fn relay(
        &self,
        backend: &Backend,
        relay: &dyn Relay,
        body: &Value,
        deadline: &Deadline,
    ) -> Result<Value, LlmError> {
        let call = || relay.complete(body.clone());
        self.attempt(backend, deadline, call).await
    }

    /// A relayed stream that has produced its first chunk within the time-to-first-token limit.
    pub async fn relay_stream(
        &self,
        backend: &Backend,
        relay: &dyn Relay,
        body: &Value,
        deadline: &Deadline,
    ) -> Result<ChunkStream, LlmError> {
        let call = || relay.stream(body.clone());
        self.attempt(backend, deadline, call).await
    }

    /// One (guarded) backend within `deadline`, with retries of retryable errors while it allows.
    async fn attempt<T, F, Fut>(&self, backend: &Backend, deadline: &Deadline, call: F) -> Result<T, LlmError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, LlmError>>,
    {
        backend.in_flight.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(&backend.in_flight);
        let mut attempt = 0;
        loop {
            let error = match deadline.scope(call()).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let wait = match error.retry() {
                Retry::Never => return Err(error),
                Retry::Backoff => jittered_backoff(attempt),
                Retry::After(wait) => wait,
            };
            if attempt >= backend.max_retries || wait >= deadline.remaining() {
                return Err(error);
            }
            tracing::info!(backend = backend.name(), attempt, wait_ms = wait.as_millis() as u64, %error, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// Full jitter: uniform in [0, min(max, base · 2^attempt)].
fn jittered_backoff(attempt: u32) -> Duration {
    let cap = RETRY_BASE.saturating_mul(1 << attempt.min(10)).min(RETRY_MAX);
    // Sub-second clock noise is random enough to spread retries; no RNG dependency needed.
    let noise = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    cap.mul_f64(f64::from(noise % 1_000) / 1_000.0)
}

/// The first backend tried for a request is its primary; one that answers after others failed
/// is a fallback (mode `fallback_llm`), whatever their priorities.
fn authorship(backend: &Backend, first_tried: bool) -> Authorship {
    let name = backend.name().to_string();
    if first_tried {
        Authorship::Primary(name)
    } else {
        Authorship::Fallback(name)
    }
}

pub fn count_tokens(backend: &str, prompt_tokens: usize, completion_tokens: usize) {
    metrics::counter!("ragway_llm_tokens_total", "backend" => backend.to_string(), "kind" => "prompt")
        .increment(prompt_tokens as u64);
    metrics::counter!("ragway_llm_tokens_total", "backend" => backend.to_string(), "kind" => "completion")
        .increment(completion_tokens as u64);
}

/// The weight of `backend` for a prompt starting with `prefix` (rendezvous hashing): fixed for
/// given inputs, so every replica routes a passage set alike.
fn rendezvous(prefix: &[ragway_llm::ChatMessage], backend: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for message in prefix {
        message.content.hash(&mut hasher);
    }
    backend.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_grows() {
        for attempt in 0..20 {
            let wait = jittered_backoff(attempt);
            assert!(wait <= RETRY_BASE.saturating_mul(1 << attempt.min(10)).min(RETRY_MAX));
        }
    }
}
