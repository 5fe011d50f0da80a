//! Generation, as events. The first event is sent once an LLM has produced its first token, so
//! it carries the true mode: a primary that fails before that is replaced without the client
//! noticing (mode `fallback_llm`). A backend that fails mid-answer is announced with a
//! `degraded` event and the next backend continues the answer from where it stopped (or, if it
//! refuses the partial answer as a prefill, answers afresh without it); when none
//! can, or the deadline cuts the answer short, the quoted passages follow (mode `extractive`).
//! Every backend's part is charged when it ends — finished, broken off, or abandoned by the
//! client — with the backend's own counts, or counted with its tokenizer when it sent none.

use std::sync::Arc;
use std::time::Instant;

use super::outbox::Outbox;
use futures::StreamExt;
use ragway_llm::{ChatMessage, Generator, Role, StreamEvent};
use ragway_openapi::{Degradation, DegradationReason, TokenUsage};

use super::budget::{self, Spend};
use super::{done, primary, AnswerEvent, Engine, Job, Refusal};
use crate::answer::pool::{count_tokens, OpenedStream, Unanswered};
use crate::answer::report::Authorship;
use crate::resilience::guard::StageError;
use crate::tenancy::quota::StreamPermit;
use crate::tenancy::Meter;

pub(super) async fn drive(engine: Arc<Engine>, mut job: Job, events: Outbox, _permit: Option<StreamPermit>) {
    let started = Instant::now();
    let pool = &engine.llm;
    let quotable = !job.fallback_text.is_empty();
    match budget::reserve(pool, &job.meter, &job.route, &job.choice, &job.request, quotable).await {
        Ok(Spend::Held(meter)) => job.meter = meter,
        Ok(Spend::Cheaper(cheaper)) => job.narrow(cheaper),
        Err(over) => {
            let refusal = Refusal::OverBudget(over);
            let _ = events.send(AnswerEvent::Refused { refusal }).await;
            return;
        }
    }
    let mut opened = match open(&engine, &mut job, &[], None).await {
        Ok(stream) => Some(stream),
        Err(unanswered) => match refusal(&job, unanswered) {
            Some(refusal) => {
                let _ = events.send(AnswerEvent::Refused { refusal }).await;
                return;
            }
            None => None,
        },
    };
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
        next_probe: job.report.next_probe,
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
        job.report.parts.push(backend.clone());
        let part = Part::new(&engine, &job, &backend, &written.answer);
        let (ended, part) = relay(stream, part, &events).await;
        written.take(&part);
        drop(part); // charged
        let reason = match ended {
            Relayed::Finished => break,
            Relayed::ClientGone => return,
            Relayed::Broke(reason) => reason,
        };
        job.report.degrade(format!("llm:{backend}"), reason);
        opened = match fail_over(&engine, &mut job, &written, &backend, reason, &events).await {
            Some(next) => next,
            None => return,
        };
    }
    job.report.record_time("llm", started);
    finish(job, written, &events).await;
}

/// `done`, and the answer kept in L1 when it is `normal`.
async fn finish(mut job: Job, written: Written, events: &Outbox) {
    job.report.finish();
    if let (Some(remember), Some(llm)) = (&job.remember, primary(&job.report)) {
        if job.report.mode() == ragway_openapi::Mode::Normal {
            let text = written.answer.trim();
            remember
                .keep(text, &job.citations, &written.usage, llm, &job.report)
                .await;
        }
    }
    let _ = events.send(done(&job.report, written.usage)).await;
}

/// What the answer holds so far, across backends.
#[derive(Default)]
struct Written {
    answer: String,
    usage: TokenUsage,
    /// Backends that streamed part of it.
    tried: Vec<String>,
}

impl Written {
    fn take(&mut self, part: &Part) {
        self.answer.push_str(&part.text);
        let usage = part.usage();
        self.usage.prompt_tokens += usage.prompt_tokens;
        self.usage.completion_tokens += usage.completion_tokens;
    }
}

/// One backend's part of the answer, charged to the tenant when it is dropped: finished, broken
/// off, or abandoned with the answer when the client left (a JSON answer's whole task goes then).
pub(super) struct Part {
    pub(super) backend: String,
    pub(super) text: String,
    /// Its own counts (`Done`), when it sent them; otherwise counted with its tokenizer.
    pub(super) reported: Option<TokenUsage>,
    /// What it was given: the prompt, and the answer so far it was asked to continue.
    prompt: Vec<ChatMessage>,
    generator: Option<Arc<dyn Generator>>,
    meter: Meter,
}

impl Part {
    fn new(engine: &Engine, job: &Job, backend: &str, before: &str) -> Self {
        let mut prompt = job.request.messages.clone();
        if !before.is_empty() {
            prompt.push(ChatMessage::new(Role::Assistant, before.to_string()));
        }
        let generator = engine
            .llm
            .backend(backend)
            .map(|b| b.generator.clone() as Arc<dyn Generator>);
        Self::of(backend, prompt, generator, job.meter.clone())
    }

    /// What `backend` (its generator, to count with) writes given `prompt`, charged to `meter`.
    pub(super) fn of(
        backend: &str,
        prompt: Vec<ChatMessage>,
        generator: Option<Arc<dyn Generator>>,
        meter: Meter,
    ) -> Self {
        Self {
            backend: backend.to_string(),
            text: String::new(),
            reported: None,
            prompt,
            generator,
            meter,
        }
    }

    pub(super) fn usage(&self) -> TokenUsage {
        self.reported
            .unwrap_or_else(|| counted(self.generator.as_deref(), &self.prompt, &self.text))
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        let usage = self.usage();
        if self.reported.is_none() {
            count_tokens(&self.backend, usage.prompt_tokens, usage.completion_tokens);
        }
        self.meter.llm(&self.backend, &usage);
    }
}

/// The tokens of a part nobody counted: the prompt the backend was given and the text it wrote,
/// by its tokenizer, else by length (4 bytes a token).
fn counted(generator: Option<&dyn Generator>, prompt: &[ChatMessage], text: &str) -> TokenUsage {
    let count = |messages: &[ChatMessage]| {
        let by_tokenizer = generator.and_then(|g| g.count_tokens(messages));
        by_tokenizer.unwrap_or_else(|| messages.iter().map(|m| m.content.len().div_ceil(4)).sum())
    };
    let empty = count(&[ChatMessage::new(Role::Assistant, String::new())]);
    let written = count(&[ChatMessage::new(Role::Assistant, text.to_string())]);
    TokenUsage {
        prompt_tokens: count(prompt),
        completion_tokens: written.saturating_sub(empty),
    }
}

/// Why the answer is refused when no backend began it: a backend refused the request as the
/// caller's fault, or — with no passages to quote instead — every one refused the operator's
/// credentials. `None` when the answer goes on without an LLM (quoted passages, or mode `error`):
/// a grounded prompt too long for every backend is ragway's to fit, not the caller's, so its
/// passages are quoted instead.
fn refusal(job: &Job, unanswered: Unanswered) -> Option<Refusal> {
    let grounded = !job.fallback_text.is_empty();
    match unanswered {
        Unanswered::Refused { error, .. }
            if grounded && error.refusal() == Some(ragway_llm::Refusal::ContextLength) =>
        {
            None
        }
        Unanswered::Refused { backend, error } => Some(Refusal::rejected(&backend, &error)),
        Unanswered::Failed { misconfigured: true } if !grounded => Some(Refusal::misconfigured(&job.report)),
        Unanswered::Failed { .. } => None,
    }
}

/// The first backend down the job's route (skipping `tried`) whose stream produces text;
/// `continuing` is the partial answer it is asked to continue.
async fn open(
    engine: &Engine,
    job: &mut Job,
    tried: &[String],
    continuing: Option<&str>,
) -> Result<OpenedStream, Unanswered> {
    let mut request = job.request.clone();
    if let Some(partial) = continuing {
        request
            .messages
            .push(ChatMessage::new(Role::Assistant, partial.to_string()));
    }
    let pool = &engine.llm;
    let deadline = &job.ctx.deadline;
    pool.open_stream(
        &job.route,
        &request,
        deadline,
        &mut job.report,
        &job.choice,
        tried,
    )
    .await
}

/// After `backend` broke off: the next backend continuing the answer (`Some(None)` when none can
/// or there is no time left: the quoted passages then follow), announced to the client with the
/// mode from here on; `None` when the client has left.
async fn fail_over(
    engine: &Engine,
    job: &mut Job,
    written: &Written,
    backend: &str,
    reason: DegradationReason,
    events: &Outbox,
) -> Option<Option<OpenedStream>> {
    let (opened, restarted) = match reason {
        DegradationReason::Deadline => (None, false),
        _ => continue_or_restart(engine, job, written).await,
    };
    job.report.authorship = Some(match &opened {
        Some(next) => Authorship::Fallback(next.backend.clone()),
        None => Authorship::Extractive,
    });
    job.report.model = opened.as_ref().map(|next| next.model.clone());
    let degradation = Degradation {
        stage: format!("llm:{backend}"),
        reason,
    };
    let announce = AnswerEvent::Degraded {
        degradation,
        mode: job.report.mode(),
    };
    events.send(announce).await.ok()?;
    if restarted {
        events.send(AnswerEvent::Restarted).await.ok()?;
    }
    if opened.is_none() && !job.fallback_text.is_empty() {
        let text = format!("\n\n{}", job.fallback_text);
        let _ = events.send(AnswerEvent::Delta { text }).await;
    }
    Some(opened)
}

/// The next backend continuing the answer from where it stopped — among those that take a
/// partial answer (`llm[].accepts_prefill`) — and when one refuses it as an assistant prefill (a
/// 4xx of the request's own), or none that takes one could, the answer is asked for again
/// without it, also of those that do not (`true`: a clean restart, announced with
/// [`AnswerEvent::Restarted`]).
async fn continue_or_restart(
    engine: &Engine,
    job: &mut Job,
    written: &Written,
) -> (Option<OpenedStream>, bool) {
    let mut skip = written.tried.clone();
    let refusing = engine.llm.refusing_prefills();
    skip.extend(
        refusing
            .filter(|b| !written.tried.iter().any(|t| t == b))
            .map(str::to_string),
    );
    let others_left = skip.len() > written.tried.len();
    match open(engine, job, &skip, Some(&written.answer)).await {
        Ok(next) => (Some(next), false),
        Err(Unanswered::Refused { backend, error }) => {
            tracing::info!(backend, %error, "the partial answer was refused as a prefill: restarting without it");
            (open(engine, job, &written.tried, None).await.ok(), true)
        }
        Err(Unanswered::Failed { .. }) if others_left => {
            (open(engine, job, &written.tried, None).await.ok(), true)
        }
        Err(Unanswered::Failed { .. }) => (None, false),
    }
}

/// How relaying one backend's stream ended.
enum Relayed {
    Finished,
    ClientGone,
    /// The backend broke off (`Error`), stalled or took longer than its timeout (`Timeout`,
    /// charged to its breaker by its guard), or the request's deadline passed (`Deadline`).
    Broke(DegradationReason),
}

/// Forwards a backend's text to the client until it finishes, fails, stalls or runs out of
/// time (its guard ends the stream then); and what it wrote.
async fn relay(stream: OpenedStream, mut part: Part, events: &Outbox) -> (Relayed, Part) {
    let OpenedStream {
        backend, mut stream, ..
    } = stream;
    while let Some(next) = stream.next().await {
        match next {
            Ok(StreamEvent::Text(text)) => {
                part.text.push_str(&text);
                if events.send(AnswerEvent::Delta { text }).await.is_err() {
                    return (Relayed::ClientGone, part); // dropping the stream stops generation
                }
            }
            Ok(StreamEvent::Done {
                prompt_tokens,
                completion_tokens,
            }) => {
                count_tokens(&backend, prompt_tokens, completion_tokens);
                part.reported = Some(TokenUsage {
                    prompt_tokens,
                    completion_tokens,
                });
            }
            Err(error) => {
                tracing::warn!(backend, %error, "LLM stream broke off");
                return (Relayed::Broke(error.reason()), part);
            }
        }
    }
    (Relayed::Finished, part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncounted_part_is_counted_by_length_without_a_tokenizer() {
        let prompt = [ChatMessage::new(Role::User, "12345678")];
        let usage = counted(None, &prompt, "abcdefghij");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (2, 3));
        let continuing = [prompt[0].clone(), ChatMessage::new(Role::Assistant, "1234")];
        let continued = counted(None, &continuing, "abcd");
        assert_eq!(
            continued.prompt_tokens, 3,
            "the answer so far is part of what the next backend read"
        );
        assert_eq!(continued.completion_tokens, 1);
    }
}
