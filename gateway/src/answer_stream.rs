//! Streamed answers. The first event is sent once an LLM has produced its first token, so it
//! carries the true `mode`: a primary that fails before that is replaced without the client
//! noticing (mode `fallback_llm`). A backend that fails mid-answer is announced with a
//! `degraded` event and the next backend continues the answer from where it stopped.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use ragway_llm::{ChatMessage, GenerationRequest, Role, StreamEvent};
use ragway_openapi::{CacheInfo, Citation, Degradation, DegradationReason, Mode, Stages, TokenUsage};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::conversation::Conversation;
use crate::deadline::Deadline;
use crate::llm_pool::{count_tokens, Choice, OpenedStream};
use crate::pipeline::{extractive_answer, Allowance, Retrieved};
use crate::quota::{Quotas, StreamPermit};
use crate::report::{Authorship, Report};
use crate::routes::answers::citation;
use crate::tenants::Tenant;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AnswerEvent {
    Meta {
        mode: Mode,
        degraded: Vec<Degradation>,
        stages: Stages,
        /// The passages the answer is grounded on, numbered as in its `[n]` markers.
        citations: Vec<Citation>,
        /// The cache layer (L3) that served the passages, if one did.
        cache: Option<CacheInfo>,
    },
    Delta {
        text: String,
    },
    /// A backend failed mid-answer; the next one continues.
    Degraded {
        degradation: Degradation,
        mode: Mode,
    },
    Done {
        mode: Mode,
        degraded: Vec<Degradation>,
        stages: Stages,
        usage: TokenUsage,
        timings_ms: BTreeMap<String, f64>,
    },
}

impl AnswerEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Meta { .. } => "meta",
            Self::Delta { .. } => "delta",
            Self::Degraded { .. } => "degraded",
            Self::Done { .. } => "done",
        }
    }
}

/// What the stream answers: the retrieval so far, and the prompt.
pub struct StreamJob {
    pub state: AppState,
    pub request: GenerationRequest,
    pub report: Report,
    pub citations: Vec<Citation>,
    /// Extractive text to send when no LLM answers (empty for bare-LLM chat).
    pub fallback_text: String,
    /// The backends it may use (one for a bare-LLM chat; none when the tenant's budget is spent).
    pub choice: Choice,
    pub deadline: Deadline,
    /// The tenant to charge for it, holding its place among the tenant's streams.
    pub tenant: Option<StreamTenant>,
    /// `choice` holds only the cheaper backends left to a tenant over budget: the answer is a
    /// fallback.
    pub cheaper_only: bool,
}

/// A tenant's stream: charged for what it generated when it ends, counted among the tenant's
/// `concurrent_streams` while it runs.
pub struct StreamTenant {
    pub quotas: Arc<Quotas>,
    pub tenant: Arc<Tenant>,
    pub permit: StreamPermit,
}

impl StreamJob {
    /// The job as the tenant may run it: its backends; when its LLM budget is spent, only the
    /// cheaper ones (a fallback) or none (extractive), degraded for `quota`; charged to it when
    /// it ends.
    pub fn within(mut self, allowance: Allowance, tenant: Option<StreamTenant>) -> Self {
        if allowance.budget_spent() {
            self.report.degrade("llm", DegradationReason::Quota);
        }
        self.cheaper_only = allowance.cheaper_only;
        self.choice = match allowance.llm_spent {
            true => Choice::Only(Vec::new()),
            false => allowance.llm,
        };
        self.tenant = tenant;
        self
    }

    /// Charges the tenant for the answer's tokens, unless they came from an unmetered backend.
    fn charge(&self, usage: &TokenUsage) {
        let config = &self.state.config;
        let metered = self.report.llm_backend().is_none_or(|b| config.metered(b));
        if let (Some(t), true) = (&self.tenant, metered) {
            t.quotas
                .charge_later(t.tenant.clone(), crate::auth::llm_charges(usage));
        }
    }

    /// A grounded answer over retrieved hits: they are the prompt's passages, the citations, and
    /// the extractive answer should no LLM answer.
    pub fn grounded(
        state: AppState,
        conversation: &Conversation,
        retrieved: Retrieved,
        deadline: Deadline,
    ) -> Self {
        let mut report = retrieved.report;
        let (request, given) = state
            .pipeline
            .rag_request(conversation, &retrieved.hits, &mut report);
        Self {
            request,
            fallback_text: extractive_answer(&retrieved.hits),
            citations: given
                .into_iter()
                .enumerate()
                .map(|(i, h)| citation((i + 1, h)))
                .collect(),
            report,
            choice: Choice::Any,
            deadline,
            tenant: None,
            cheaper_only: false,
            state,
        }
    }
}

/// Starts the answer; returns the receiver of its events, whose first event is `Meta`.
pub async fn start(job: StreamJob) -> mpsc::Receiver<AnswerEvent> {
    let (events, receiver) = mpsc::channel(64);
    tokio::spawn(drive(job, events));
    receiver
}

async fn drive(mut job: StreamJob, events: mpsc::Sender<AnswerEvent>) {
    let mut opened = open(&mut job, &[], None).await;
    if opened.is_none() {
        job.report.authorship = Some(Authorship::Extractive);
    }
    if job.cheaper_only {
        job.report.demote_to_fallback();
    }
    let meta = AnswerEvent::Meta {
        mode: job.report.mode(),
        degraded: job.report.degraded(),
        stages: job.report.stages(),
        citations: job.citations.clone(),
        cache: job.report.cache.clone(),
    };
    if events.send(meta).await.is_err() {
        return;
    }
    if opened.is_none() && !job.fallback_text.is_empty() {
        let text = job.fallback_text.clone();
        let _ = events.send(AnswerEvent::Delta { text }).await;
    }
    let mut written = Written::default();
    while let Some(stream) = opened.take() {
        let backend = stream.backend.clone();
        written.tried.push(backend.clone());
        let reason = match relay(&job, stream, &events, &mut written).await {
            Relayed::Finished => break,
            Relayed::ClientGone => {
                job.charge(&written.usage);
                return;
            }
            Relayed::Broke(reason) => reason,
        };
        job.report.degrade(format!("llm:{backend}"), reason);
        if reason == DegradationReason::Deadline {
            break; // no time left to continue elsewhere: the answer ends here, cut short
        }
        opened = match fail_over(&mut job, &written, &backend, reason, &events).await {
            Some(next) => next,
            None => {
                job.charge(&written.usage);
                return;
            }
        };
    }
    job.charge(&written.usage);
    job.report.finish();
    let mode = job.report.mode();
    metrics::counter!("ragway_answers_total", "mode" => mode.as_str()).increment(1);
    let done = AnswerEvent::Done {
        mode,
        degraded: job.report.degraded(),
        stages: job.report.stages(),
        usage: written.usage,
        timings_ms: job.report.timings_ms.clone(),
    };
    let _ = events.send(done).await;
}

/// What the answer holds so far, across backends.
#[derive(Default)]
struct Written {
    answer: String,
    usage: TokenUsage,
    /// Backends that streamed part of it.
    tried: Vec<String>,
}

/// The first backend down the pool's order (skipping `tried`) whose stream produces text;
/// `continuing` is the partial answer it is asked to continue.
async fn open(job: &mut StreamJob, tried: &[String], continuing: Option<&str>) -> Option<OpenedStream> {
    let mut request = job.request.clone();
    if let Some(partial) = continuing {
        request
            .messages
            .push(ChatMessage::new(Role::Assistant, partial.to_string()));
    }
    let pool = &job.state.pipeline.llm;
    pool.open_stream(&request, &job.deadline, &mut job.report, &job.choice, tried)
        .await
}

/// After `backend` broke off: the next backend continuing the answer (`Some(None)` when none can,
/// the extractive text then follows), announced to the client; `None` when the client has left.
async fn fail_over(
    job: &mut StreamJob,
    written: &Written,
    backend: &str,
    reason: DegradationReason,
    events: &mpsc::Sender<AnswerEvent>,
) -> Option<Option<OpenedStream>> {
    let opened = open(job, &written.tried, Some(&written.answer)).await;
    job.report.authorship = Some(match &opened {
        Some(next) => Authorship::Fallback(next.backend.clone()),
        None => Authorship::Extractive,
    });
    let degradation = Degradation {
        stage: format!("llm:{backend}"),
        reason,
    };
    let announce = AnswerEvent::Degraded {
        degradation,
        mode: job.report.mode(),
    };
    events.send(announce).await.ok()?;
    if opened.is_none() && !job.fallback_text.is_empty() {
        let text = format!("\n\n{}", job.fallback_text);
        let _ = events.send(AnswerEvent::Delta { text }).await;
    }
    Some(opened)
}

/// How relaying one backend's stream ended.
enum Relayed {
    Finished,
    ClientGone,
    /// The backend broke off (`Error`), stalled past the idle timeout (`Timeout`, charged to its
    /// breaker), or the request's deadline passed (`Deadline`).
    Broke(DegradationReason),
}

/// Forwards a backend's text to the client until it finishes, fails, stalls or runs out of time.
async fn relay(
    job: &StreamJob,
    stream: OpenedStream,
    events: &mpsc::Sender<AnswerEvent>,
    written: &mut Written,
) -> Relayed {
    let OpenedStream {
        backend,
        first,
        mut rest,
    } = stream;
    written.answer.push_str(&first);
    if !first.is_empty() && events.send(AnswerEvent::Delta { text: first }).await.is_err() {
        return Relayed::ClientGone;
    }
    let idle = job.state.pipeline.settings.stream_idle_timeout;
    loop {
        let left = job.deadline.remaining();
        let next = match tokio::time::timeout(idle.min(left), rest.next()).await {
            Ok(next) => next,
            Err(_) if left <= idle => return Relayed::Broke(DegradationReason::Deadline),
            Err(_) => {
                tracing::warn!(backend, idle_ms = idle.as_millis() as u64, "LLM stream stalled");
                job.state.pipeline.llm.charge_failure(&backend);
                return Relayed::Broke(DegradationReason::Timeout);
            }
        };
        match next {
            None => return Relayed::Finished,
            Some(Ok(StreamEvent::Text(text))) => {
                written.answer.push_str(&text);
                if events.send(AnswerEvent::Delta { text }).await.is_err() {
                    return Relayed::ClientGone; // dropping the stream stops generation
                }
            }
            Some(Ok(StreamEvent::Done {
                prompt_tokens,
                completion_tokens,
            })) => {
                count_tokens(&backend, prompt_tokens, completion_tokens);
                written.usage.prompt_tokens += prompt_tokens;
                written.usage.completion_tokens += completion_tokens;
            }
            Some(Err(e)) => {
                tracing::warn!(backend, error = %e, "LLM stream broke off");
                return Relayed::Broke(DegradationReason::Error);
            }
        }
    }
}
