//! Streamed answers. The first event is sent once an LLM has produced its first token, so it
//! carries the true `mode`: a primary that fails before that is replaced without the client
//! noticing (mode `fallback_llm`). A backend that fails mid-answer is announced with a
//! `degraded` event and the next backend continues the answer from where it stopped.

use std::collections::BTreeMap;

use futures::StreamExt;
use ragway_llm::{ChatMessage, GenerationRequest, Role, StreamEvent};
use ragway_openapi::{Citation, Degradation, DegradationReason, Mode, Stages, TokenUsage};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::deadline::Deadline;
use crate::llm_pool::{count_tokens, OpenedStream};
use crate::pipeline::{extractive_answer, Retrieved};
use crate::report::{Authorship, Report};
use crate::routes::answers::citation;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AnswerEvent {
    Meta {
        mode: Mode,
        degraded: Vec<Degradation>,
        stages: Stages,
        /// The passages the answer is grounded on, numbered as in its `[n]` markers.
        citations: Vec<Citation>,
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
    /// Restrict to one backend (bare-LLM chat).
    pub only: Option<String>,
    pub deadline: Deadline,
}

impl StreamJob {
    /// A grounded answer over retrieved hits: they are the prompt's passages, the citations, and
    /// the extractive answer should no LLM answer.
    pub fn grounded(state: AppState, query: &str, retrieved: Retrieved, deadline: Deadline) -> Self {
        Self {
            request: state.pipeline.rag_request(query, &retrieved.hits),
            fallback_text: extractive_answer(&retrieved.hits),
            citations: retrieved
                .hits
                .into_iter()
                .enumerate()
                .map(|(i, h)| citation((i + 1, h)))
                .collect(),
            report: retrieved.report,
            only: None,
            deadline,
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
    let pool = &job.state.pipeline.llm;
    let only = job.only.clone();
    let mut tried: Vec<String> = Vec::new();
    let mut opened = pool
        .open_stream(
            &job.request,
            &job.deadline,
            &mut job.report,
            only.as_deref(),
            &tried,
        )
        .await;
    if opened.is_none() {
        job.report.authorship = Some(Authorship::Extractive);
    }
    let meta = AnswerEvent::Meta {
        mode: job.report.mode(),
        degraded: job.report.degraded(),
        stages: job.report.stages(),
        citations: job.citations.clone(),
    };
    if events.send(meta).await.is_err() {
        return;
    }
    let mut answer = String::new();
    let mut usage = TokenUsage::default();
    if opened.is_none() && !job.fallback_text.is_empty() {
        let _ = events
            .send(AnswerEvent::Delta {
                text: job.fallback_text.clone(),
            })
            .await;
    }
    while let Some(OpenedStream {
        backend,
        first,
        mut rest,
    }) = opened.take()
    {
        tried.push(backend.clone());
        answer.push_str(&first);
        if !first.is_empty() && events.send(AnswerEvent::Delta { text: first }).await.is_err() {
            return;
        }
        let mut failed = false;
        while let Some(event) = rest.next().await {
            match event {
                Ok(StreamEvent::Text(text)) => {
                    answer.push_str(&text);
                    if events.send(AnswerEvent::Delta { text }).await.is_err() {
                        return; // the client left; dropping the stream stops generation
                    }
                }
                Ok(StreamEvent::Done {
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    count_tokens(&backend, prompt_tokens, completion_tokens);
                    usage.prompt_tokens += prompt_tokens;
                    usage.completion_tokens += completion_tokens;
                }
                Err(e) => {
                    tracing::warn!(backend, error = %e, "LLM stream broke off");
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            break;
        }
        // Continue the same answer on the next backend.
        let degradation = Degradation {
            stage: format!("llm:{backend}"),
            reason: DegradationReason::Error,
        };
        job.report.degrade(degradation.stage.clone(), degradation.reason);
        let mut request = job.request.clone();
        request
            .messages
            .push(ChatMessage::new(Role::Assistant, answer.clone()));
        opened = pool
            .open_stream(&request, &job.deadline, &mut job.report, only.as_deref(), &tried)
            .await;
        match &opened {
            Some(next) => job.report.authorship = Some(Authorship::Fallback(next.backend.clone())),
            None => job.report.authorship = Some(Authorship::Extractive),
        }
        let announce = AnswerEvent::Degraded {
            degradation,
            mode: job.report.mode(),
        };
        if events.send(announce).await.is_err() {
            return;
        }
        if opened.is_none() && !job.fallback_text.is_empty() {
            let text = format!("\n\n{}", job.fallback_text);
            let _ = events.send(AnswerEvent::Delta { text }).await;
        }
    }
    job.report.finish();
    let mode = job.report.mode();
    metrics::counter!("ragway_answers_total", "mode" => mode.as_str()).increment(1);
    let done = AnswerEvent::Done {
        mode,
        degraded: job.report.degraded(),
        stages: job.report.stages(),
        usage,
        timings_ms: job.report.timings_ms.clone(),
    };
    let _ = events.send(done).await;
}
