//! The LLM pool: a request's [`Route`] (a model group, one backend, or every backend for an
//! answer over a collection) walked in order (see [`route`]); each backend is [`Guarded`]
//! (breaker, timeouts, stalls) and retried as [`retry`] says. A backend that refuses the request
//! as the caller's fault ends the walk ([`Unanswered::Refused`]) — unless it is only too small
//! for the prompt, when a member with a larger window may take it; the last backend left waits
//! for its first token until the request's deadline rather than its first-token limit.

mod retry;
pub mod route;

use ragway_worker::Stopped;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ragway_llm::{
    ChunkStream, Generation, GenerationRequest, Generator, LlmError, Refusal, Relay, Retry, TokenStream,
};
use serde_json::Value;

pub use route::Route;

use self::retry::{Failed, RetryPolicy};
use self::route::Standing;
use super::report::{Authorship, Report};
use crate::config::{BackendLimits, Member, ModelGroupConfig};
use crate::resilience::breaker::BreakerState;
use crate::resilience::deadline::Deadline;
use crate::resilience::guard::{Guard, StageError};
use crate::resilience::guarded::{Guarded, StreamLimits};
use crate::tenancy::Choice;

pub struct Backend {
    /// The backend behind its guard (see [`Guarded`]): a whole answer within its timeout, a
    /// stream's first text within its time-to-first-token limit, and no stall after it (or, for
    /// the last backend a request can try, a patient first token).
    pub generator: Arc<Guarded<dyn Generator>>,
    /// The same backend asked for other model ids (model groups' entries), behind the same guard.
    variants: BTreeMap<String, Arc<Guarded<dyn Generator>>>,
    streaming: StreamLimits,
    /// The guard's breaker, for health and readiness.
    pub guard: Arc<Guard>,
    pub priority: u32,
    pub max_retries: u32,
    in_flight: AtomicUsize,
    /// Its retry budget (see [`retry::Throttle`]).
    throttle: std::sync::Mutex<retry::Throttle>,
    /// It continues a partial answer given as the last message (`llm[].accepts_prefill`).
    accepts_prefill: bool,
}

/// A stream that has produced its first text, and the backend (and model) it comes from.
pub struct OpenedStream {
    pub backend: String,
    pub model: String,
    pub stream: TokenStream,
}

/// Why no backend answered.
#[derive(Debug)]
pub enum Unanswered {
    /// Each backend tried failed or was passed over (each is in the report); `misconfigured`
    /// when every one tried refused the operator's credentials (401, 403).
    Failed { misconfigured: bool },
    /// `backend` refused the request as the caller's fault; no other was asked after it.
    Refused { backend: String, error: LlmError },
}

impl Backend {
    /// A backend that does not continue partial answers (`llm[].accepts_prefill = false`).
    pub fn refusing_prefills(mut self) -> Self {
        self.accepts_prefill = false;
        self
    }

    /// `act` on the backend's retry budget.
    fn throttle<T>(&self, act: impl FnOnce(&mut retry::Throttle) -> T) -> T {
        act(&mut self.throttle.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `generator` behind `guard`, with `limits`' stream limits.
    pub fn new(generator: Arc<dyn Generator>, guard: Guard, limits: BackendLimits) -> Self {
        let guard = Arc::new(guard);
        let streaming = StreamLimits {
            first_text: limits.time_to_first_token,
            idle: limits.idle,
            patience: limits.patience,
        };
        let guarded = Guarded::new(generator, guard.clone()).with_stream_limits(streaming);
        Self {
            generator: Arc::new(guarded),
            variants: BTreeMap::new(),
            streaming,
            guard,
            priority: limits.priority,
            max_retries: limits.max_retries,
            in_flight: AtomicUsize::new(0),
            throttle: Default::default(),
            accepts_prefill: true,
        }
    }

    pub fn name(&self) -> &str {
        self.generator.name()
    }

    pub fn state(&self) -> BreakerState {
        self.guard.state()
    }

    /// The same backend asking for another model (`generator`, its model id), behind its guard.
    pub fn with_variant(mut self, generator: Arc<dyn Generator>) -> Self {
        let model = generator.model().to_string();
        let guarded = Guarded::new(generator, self.guard.clone()).with_stream_limits(self.streaming);
        self.variants.insert(model, Arc::new(guarded));
        self
    }

    /// What serves `model` (the backend's own when `None` or unknown).
    fn serving(&self, model: Option<&str>) -> Pick<'_> {
        let guarded = model
            .and_then(|m| self.variants.get(m))
            .unwrap_or(&self.generator);
        Pick {
            backend: self,
            guarded,
        }
    }
}

/// A backend as one route's member asks for it: itself, or its variant for another model.
#[derive(Clone, Copy)]
struct Pick<'a> {
    backend: &'a Backend,
    guarded: &'a Arc<Guarded<dyn Generator>>,
}

impl Pick<'_> {
    fn model(&self) -> String {
        self.guarded.model().to_string()
    }

    /// A stream; the last backend a request can try waits for its first text until the deadline.
    async fn stream(self, request: &GenerationRequest, last: bool) -> Result<TokenStream, LlmError> {
        match last {
            true => self.guarded.stream_patiently(request.clone()).await,
            false => Generator::stream(self.guarded.as_ref(), request.clone()).await,
        }
    }

    /// A relayed stream, as patient as [`Pick::stream`].
    async fn relay_stream(self, body: &Value, last: bool) -> Result<ChunkStream, LlmError> {
        match last {
            true => self.guarded.relay_stream_patiently(body.clone()).await,
            false => Relay::stream(self.guarded.as_ref(), body.clone()).await,
        }
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
    groups: BTreeMap<String, Route>,
    retry_after_cap: Duration,
}

/// The backend that answered, and whether it was the first one tried.
struct Answered<'a, T> {
    pick: Pick<'a>,
    value: T,
    first: bool,
}

impl<T> Answered<'_, T> {
    /// Records in `report` who wrote the answer (`first`: as the request's primary).
    fn sign(&self, report: &mut Report, first: bool) {
        report.authorship = Some(authorship(self.pick.backend, first));
        report.model = Some(self.pick.model());
    }
}

impl LlmPool {
    pub fn new(mut backends: Vec<Backend>, groups: &[ModelGroupConfig], retry_after_cap: Duration) -> Self {
        backends.sort_by_key(|b| b.priority);
        let groups = groups
            .iter()
            .map(|g| (g.name.clone(), Route::new(g.members())))
            .collect();
        Self {
            backends,
            groups,
            retry_after_cap,
        }
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend `name`, if the pool has it.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name() == name)
    }

    /// The backends that do not continue partial answers: a continuation skips them.
    pub fn refusing_prefills(&self) -> impl Iterator<Item = &str> {
        self.backends
            .iter()
            .filter(|b| !b.accepts_prefill)
            .map(|b| b.name())
    }

    /// The model groups, by name.
    pub fn groups(&self) -> impl Iterator<Item = (&str, &Route)> {
        self.groups.iter().map(|(name, route)| (name.as_str(), route))
    }

    /// What a client asking for `model` may be answered by: a group's members, or a backend by
    /// its own name alone.
    pub fn route(&self, model: &str) -> Option<Route> {
        if let Some(group) = self.groups.get(model) {
            return Some(group.clone());
        }
        let backend = self.backend(model)?;
        Some(Route::new(vec![member(backend)]))
    }

    /// Whether clients may ask for `model`: a group's name or a backend's.
    pub fn serves(&self, model: &str) -> bool {
        self.groups.contains_key(model) || self.backend(model).is_some()
    }

    /// Every backend by its own priority: the route of an answer over a collection.
    pub fn everyone(&self) -> Route {
        Route::new(self.backends.iter().map(member).collect())
    }

    /// The backends of `route` that `choice` allows, in route order, with their entries.
    fn allowed<'a, 'r>(&'a self, route: &'r Route, choice: &Choice) -> Vec<(&'a Backend, &'r Member)> {
        route
            .members()
            .iter()
            .filter(|m| choice.allows(&m.backend))
            .filter_map(|m| self.backend(&m.backend).map(|b| (b, m)))
            .collect()
    }

    /// Among the backends of `route` that `choice` allows, the one with the smallest known context
    /// window, and that window: grounded prompts are fitted to it so that any of them can take them.
    pub fn tightest_context(&self, route: &Route, choice: &Choice) -> Option<(&dyn Generator, usize)> {
        self.allowed(route, choice)
            .into_iter()
            .filter_map(|(b, _)| {
                let generator: &dyn Generator = b.generator.as_ref();
                generator.context_window().map(|w| (generator, w))
            })
            .min_by_key(|(_, w)| *w)
    }

    /// The largest window among them, when every one's is known: a plain chat's prompt must fit
    /// at least that one (a backend whose window is unknown may take anything).
    pub fn widest_context(&self, route: &Route, choice: &Choice) -> Option<(&dyn Generator, usize)> {
        let mut widest: Option<(&dyn Generator, usize)> = None;
        for (backend, _) in self.allowed(route, choice) {
            let window = backend.generator.context_window()?;
            if widest.is_none_or(|(_, w)| window > w) {
                widest = Some((backend.generator.as_ref() as &dyn Generator, window));
            }
        }
        widest
    }

    /// The backends to try, in order (see [`route::order`]); the prompt prefix — every message
    /// but the last, for a grounded answer the passages — is what affinity hashes.
    fn order(&self, route: &Route, choice: &Choice, request: Option<&GenerationRequest>) -> Vec<Pick<'_>> {
        let prefix = request
            .and_then(|r| r.messages.split_last())
            .map_or(&[][..], |(_, earlier)| earlier);
        let candidates = self.allowed(route, choice);
        let standings: Vec<Standing> = candidates
            .iter()
            .map(|(backend, member)| Standing {
                priority: member.priority,
                weight: member.weight,
                in_flight: backend.in_flight.load(Ordering::Acquire),
                affinity: rendezvous(prefix, backend.name()),
            })
            .collect();
        route::order(&standings)
            .into_iter()
            .map(|i| candidates[i].0.serving(candidates[i].1.model.as_deref()))
            .collect()
    }

    /// The first whole answer down `route`'s order; failures are recorded in `report`.
    pub async fn generate<'p>(
        &'p self,
        route: &Route,
        request: &GenerationRequest,
        deadline: &Deadline,
        report: &mut Report,
        choice: &Choice,
    ) -> Result<Generation, Unanswered> {
        let order = self.order(route, choice, Some(request));
        let call = |p: Pick<'p>, _last| p.guarded.generate(request.clone());
        let answered = self.walk(order, deadline, report, call).await?;
        answered.sign(report, answered.first);
        let generation = answered.value;
        let backend = answered.pick.backend.name();
        count_tokens(backend, generation.prompt_tokens, generation.completion_tokens);
        Ok(generation)
    }

    /// A streamed answer from the first backend down the order whose stream produces text;
    /// backends named in `skip` are passed over (they failed earlier in this answer).
    pub async fn open_stream<'p>(
        &'p self,
        route: &Route,
        request: &GenerationRequest,
        deadline: &Deadline,
        report: &mut Report,
        choice: &Choice,
        skip: &[String],
    ) -> Result<OpenedStream, Unanswered> {
        let mut order = self.order(route, choice, Some(request));
        order.retain(|p| !skip.iter().any(|s| s == p.backend.name()));
        let call = |p: Pick<'p>, last| -> BoxFuture<'p, _> {
            let request = request.clone();
            Box::pin(async move { p.stream(&request, last).await })
        };
        let answered = self.walk(order, deadline, report, call).await?;
        // A continuation (`skip` not empty) is by definition a fallback.
        answered.sign(report, answered.first && skip.is_empty());
        Ok(OpenedStream {
            backend: answered.pick.backend.name().to_string(),
            model: answered.pick.model(),
            stream: answered.value,
        })
    }

    /// `body` relayed unchanged (see [`Relay`]) to the first backend down `route` that relays and
    /// answers; the authorship is recorded in `report`.
    pub async fn relay<'p>(
        &'p self,
        route: &Route,
        body: &Value,
        deadline: &Deadline,
        report: &mut Report,
        choice: &Choice,
    ) -> Result<(&'p Backend, Value), Unanswered> {
        let order = self.relays(route, choice);
        let call = |p: Pick<'p>, _last| Relay::complete(p.guarded.as_ref(), body.clone());
        let answered = self.walk(order, deadline, report, call).await?;
        answered.sign(report, answered.first);
        Ok((answered.pick.backend, answered.value))
    }

    /// As [`LlmPool::relay`], streamed: the stream has produced its first chunk.
    pub async fn relay_stream<'p>(
        &'p self,
        route: &Route,
        body: &Value,
        deadline: &Deadline,
        report: &mut Report,
        choice: &Choice,
    ) -> Result<(&'p Backend, ChunkStream), Unanswered> {
        let order = self.relays(route, choice);
        let call = |p: Pick<'p>, last| -> BoxFuture<'p, _> {
            let body = body.clone();
            Box::pin(async move { p.relay_stream(&body, last).await })
        };
        let answered = self.walk(order, deadline, report, call).await?;
        answered.sign(report, answered.first);
        Ok((answered.pick.backend, answered.value))
    }

    /// The backends of `route` that relay requests, in order.
    fn relays(&self, route: &Route, choice: &Choice) -> Vec<Pick<'_>> {
        let mut order = self.order(route, choice, None);
        order.retain(|p| p.guarded.relay().is_some());
        order
    }

    /// `call` on each backend of `order` until one answers; each failure is recorded in `report`
    /// as `llm:<backend>`.
    async fn walk<'a, T>(
        &self,
        order: Vec<Pick<'a>>,
        deadline: &Deadline,
        report: &mut Report,
        call: impl Fn(Pick<'a>, bool) -> BoxFuture<'a, Result<T, LlmError>>,
    ) -> Result<Answered<'a, T>, Unanswered> {
        let mut misconfigured = !order.is_empty();
        let mut too_long = None;
        // While every backend tried is refused by its open breaker: the soonest next probe.
        let mut next_probe = (!order.is_empty()).then_some(Duration::MAX);
        let count = order.len();
        for (position, pick) in order.into_iter().enumerate() {
            let last = position + 1 == count;
            let backend = pick.backend;
            let error = match self.attempt(backend, deadline, last, || call(pick, last)).await {
                Ok(value) => {
                    let first = position == 0;
                    return Ok(Answered { pick, value, first });
                }
                Err(error) => error,
            };
            tracing::warn!(backend = backend.name(), %error, "LLM backend failed");
            next_probe = match (&error, next_probe) {
                (LlmError::Stopped(Stopped::BreakerOpen), Some(soonest)) => {
                    Some(soonest.min(backend.guard.next_probe_in().unwrap_or_default()))
                }
                _ => None,
            };
            if error.misconfigured() {
                // The operator's to fix; clients are told only that credentials were refused.
                let name = backend.name().to_string();
                metrics::counter!("ragway_llm_credentials_refused_total", "backend" => name).increment(1);
            }
            report.degrade(format!("llm:{}", backend.name()), error.reason());
            let refusal = error.refusal();
            let refused = Unanswered::Refused {
                backend: backend.name().to_string(),
                error,
            };
            match refusal {
                // A member with a larger window may take it: the refusal stands if none does.
                Some(Refusal::ContextLength) => too_long = Some(refused),
                Some(_) => return Err(refused),
                None => {
                    if let Unanswered::Refused { error, .. } = &refused {
                        misconfigured &= error.misconfigured();
                    }
                }
            }
        }
        report.next_probe = next_probe;
        Err(too_long.unwrap_or(Unanswered::Failed { misconfigured }))
    }

    /// One (guarded) backend within `deadline`, called again while [`retry`] says so; `last`
    /// when no other backend is left to try.
    async fn attempt<'a, T>(
        &self,
        backend: &Backend,
        deadline: &Deadline,
        last: bool,
        call: impl Fn() -> BoxFuture<'a, Result<T, LlmError>>,
    ) -> Result<T, LlmError> {
        backend.in_flight.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(&backend.in_flight);
        let policy = RetryPolicy {
            max_retries: backend.max_retries,
            retry_after_cap: self.retry_after_cap,
        };
        let mut retries = 0;
        loop {
            let error = match deadline.scope(call()).await {
                Ok(value) => {
                    backend.throttle(|t| t.succeeded());
                    return Ok(value);
                }
                Err(error) => error,
            };
            let failed = Failed {
                retries,
                left: deadline.remaining(),
                last,
                noise: retry::noise(),
            };
            if error.retry() != Retry::Never {
                backend.throttle(|t| t.failed());
            }
            let Some(wait) = retry::retry_after(&error, policy, failed) else {
                return Err(error);
            };
            // A failed probe re-opened the breaker: a retry would only be refused after the wait.
            if backend.guard.state() == BreakerState::Open {
                return Err(error);
            }
            if !backend.throttle(|t| t.allows_retry()) {
                metrics::counter!("ragway_llm_retries_throttled_total", "backend" => backend.name().to_string())
                    .increment(1);
                return Err(error);
            }
            let wait_ms = wait.as_millis() as u64;
            tracing::info!(backend = backend.name(), retries, wait_ms, %error, "retrying");
            metrics::counter!("ragway_llm_retries_total", "backend" => backend.name().to_string())
                .increment(1);
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }
}

/// A backend as the only member of its route, at its own priority.
fn member(backend: &Backend) -> Member {
    Member {
        backend: backend.name().to_string(),
        model: None,
        priority: backend.priority,
        weight: 1,
    }
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

/// The hash of `backend` with a prompt starting with `prefix` (rendezvous hashing): fixed for
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
