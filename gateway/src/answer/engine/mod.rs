//! The one answer engine. Every answering route — `/query` as JSON or as Server-Sent Events,
//! chat over a collection, plain chat with an LLM backend, a chat relayed to a remote backend as
//! the client wrote it — asks it the same way ([`Ask`]) and shapes the events it yields
//! ([`AnswerEvent`]): `meta` (mode so far, passages), `delta`s of text (or the backend's own
//! chunks, `relayed`), `degraded` when something changes mid-answer (with the new mode), and
//! `done` (the final mode, usage, timings). What an answer may use (backends, budgets), caps, L1, the prompt fitted
//! to the model's window, fallback mid-stream, charging what was really produced and the mode
//! are all decided here, once.

mod budget;
mod drive;
mod l1;
mod outbox;
mod relay;

pub use relay::{refuse_capabilities, ChatCaps};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use ragway_llm::{ChatMessage, GenerationRequest, Generator, LlmError};
use ragway_openapi::{CacheInfo, Citation, Degradation, DegradationReason, Mode, Stages, TokenUsage};
use ragway_retrieval::{Fusion, MetadataFilter, ScoredChunk};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use outbox::Outbox;

use super::conversation::Conversation;
use super::pipeline::{Retrieved, Retriever};
use super::pool::{LlmPool, Route, Unanswered};
use super::prompt::{self, Sampling};
use super::report::{Authorship, Report};
use super::{Query, RequestContext};
use crate::caches::Caches;
use crate::catalog::collections::Collection;
use crate::error::{ApiError, ErrorCode, Rejection};
use crate::tenancy::quota::{budget_spent, OverBudget, StreamPermit};
use crate::tenancy::{Allowance, Choice, Meter};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AnswerEvent {
    Meta {
        mode: Mode,
        degraded: Vec<Degradation>,
        stages: Stages,
        /// The passages the answer is grounded on, numbered as in its `[n]` markers.
        citations: Vec<Citation>,
        /// The cache layer that served the answer (L1) or its passages (L3), if one did.
        cache: Option<CacheInfo>,
        /// No LLM could be asked (every breaker open): when the soonest may be again.
        #[serde(skip)]
        next_probe: Option<Duration>,
    },
    Delta {
        text: String,
    },
    /// A relayed backend's own chunk (a `chat.completion.chunk`, or for a whole answer its
    /// `chat.completion`), as it wrote it.
    Relayed {
        chunk: Value,
    },
    /// The backend that took over could not continue the partial answer (it refused it as a
    /// prefill) and answers afresh: the text so far is withdrawn, and what follows is the whole
    /// answer. A JSON answer keeps only the new text; an OpenAI stream ends with an error (its
    /// client cannot withdraw text); `/query`'s own stream passes the mark on.
    Restarted,
    /// Something changed mid-answer (a backend broke off, the deadline cut it short): the mode
    /// from here on.
    Degraded {
        degradation: Degradation,
        mode: Mode,
    },
    Done {
        mode: Mode,
        degraded: Vec<Degradation>,
        stages: Stages,
        usage: TokenUsage,
        cache: Option<CacheInfo>,
        timings_ms: BTreeMap<String, f64>,
    },
    /// The answer was refused before it began (instead of `meta`): the routes answer with the
    /// error it says.
    Refused {
        refusal: Refusal,
    },
}

/// Why an answer was refused before it began.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// A backend refused the request as the caller's fault.
    Rejected(Rejection),
    /// Every backend tried refused the operator's configuration (credentials, billing, the
    /// configured model: 401–404 upstream).
    Misconfigured { backends: Vec<String> },
    /// What it may take does not fit the rest of the tenant's budget, and `over_quota` leaves
    /// nothing cheaper.
    OverBudget(OverBudget),
}

impl Refusal {
    /// What `backend`'s refusal of the request (`error`) says.
    pub fn rejected(backend: &str, error: &LlmError) -> Self {
        let upstream = error.upstream().cloned().unwrap_or_default();
        let too_long = matches!(error, LlmError::PromptTooLong { .. });
        Self::Rejected(Rejection {
            backend: backend.to_string(),
            status: error.status().unwrap_or(400),
            message: match upstream.message.is_empty() {
                true => ragway_llm::public_message(&error.to_string()),
                false => ragway_llm::public_message(&upstream.message),
            },
            code: upstream
                .code
                .or_else(|| too_long.then(|| ErrorCode::ContextLengthExceeded.as_str().to_string())),
            kind: upstream.kind,
            param: upstream.param,
        })
    }

    /// Every backend `report` says failed refused the operator's credentials.
    fn misconfigured(report: &Report) -> Self {
        let backends = report.degraded().into_iter().map(|d| d.stage).collect();
        Self::Misconfigured { backends }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Rejected(rejection) => ApiError::BackendRejected(Box::new(rejection)),
            Refusal::Misconfigured { backends } => ApiError::unavailable(
                ErrorCode::LlmBackendMisconfigured,
                format!(
                    "the LLM backends {} refused ragway's configuration (credentials, billing or model: HTTP 401-404): the operator must fix it",
                    backends.join(", ")
                ),
            ),
            Refusal::OverBudget(over) => over.refusal(),
        }
    }
}

/// What a route answers when the pool found no answer: a backend's refusal, the operator's
/// credentials refused everywhere (502), or nothing could answer (503, with what each did).
pub fn unanswered(model: &str, unanswered: Unanswered, report: &Report) -> ApiError {
    match unanswered {
        Unanswered::Refused { backend, error } => Refusal::rejected(&backend, &error).into(),
        Unanswered::Failed { misconfigured: true } => Refusal::misconfigured(report).into(),
        Unanswered::Failed { misconfigured: false } => {
            no_backend_answered(model, &report.degraded(), report.next_probe)
        }
    }
}

/// 503 `llm_unavailable`: no backend of `model` answered, and what each did (`degraded`);
/// worth retrying at the soonest next probe when every one was refused by its open breaker.
pub fn no_backend_answered(model: &str, degraded: &[Degradation], next_probe: Option<Duration>) -> ApiError {
    let reasons: Vec<String> = degraded
        .iter()
        .map(|d| format!("{}: {:?}", d.stage, d.reason))
        .collect();
    let message = format!("`{model}`: no backend answered ({})", reasons.join(", "));
    let unavailable = ApiError::unavailable(ErrorCode::LlmUnavailable, message);
    match next_probe {
        Some(wait) => unavailable.retry_in(wait),
        None => unavailable,
    }
}

impl AnswerEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Meta { .. } => "meta",
            Self::Delta { .. } => "delta",
            Self::Relayed { .. } => "relayed",
            Self::Restarted => "restarted",
            Self::Degraded { .. } => "degraded",
            Self::Done { .. } => "done",
            Self::Refused { .. } => "refused",
        }
    }
}

/// What to answer from.
pub enum Source {
    /// A question over a collection (RAG).
    Collection(Grounding),
    /// A plain chat with `model` (a model group, or one LLM backend by its name), as the client
    /// wrote it (`body`). One lookup of `model`'s route decides how it is answered: when it
    /// carries what only a remote backend interprets (tools, response formats, images, `n`...)
    /// and a backend of the route relays, it is relayed as written to the first that relays and
    /// answers, each getting its own model id (its `stream` field says whether it is streamed;
    /// [`Answer::is_relayed`]); else it is generated from `messages`, as ragway reads them (or
    /// the reason it cannot: a relay reads none of them).
    Chat {
        model: String,
        body: Value,
        messages: Result<Vec<ChatMessage>, ApiError>,
    },
}

/// A question about a collection.
pub struct Grounding {
    pub collection: Arc<Collection>,
    pub fusion: Fusion,
    pub filter: MetadataFilter,
    pub passages: usize,
    pub conversation: Conversation,
    /// A chat's answer says how its search question was made (`stages.rewrite`).
    pub from_chat: bool,
    /// The model group or backend that writes the answer; every backend by priority when `None`.
    pub llm: Option<String>,
}

impl Grounding {
    /// The backends that may write its answer, in their order.
    fn route(&self, pool: &LlmPool) -> Result<Route, ApiError> {
        match &self.llm {
            Some(name) => pool
                .route(name)
                .ok_or_else(|| ApiError::ModelNotFound(name.clone())),
            None => Ok(pool.everyone()),
        }
    }
}

/// One request for an answer.
pub struct Ask {
    pub source: Source,
    pub sampling: Sampling,
    pub ctx: RequestContext,
    /// Charges the caller's tenant for what the answer used.
    pub meter: Meter,
    /// The tenant's place among its open streams, held until the answer ends.
    pub permit: Option<StreamPermit>,
}

pub struct Engine {
    /// Retrieval as answers get it (the pipeline behind L3).
    retriever: Arc<dyn Retriever>,
    /// The LLM backends and model groups that write answers.
    llm: LlmPool,
    /// L1 (whole answers) is kept here.
    caches: Arc<Caches>,
    caps: ChatCaps,
    /// How long a streamed answer waits for a client that takes none of its events.
    stall: Duration,
}

/// The events of one answer; the first is always `Meta`, the last `Done` (unless the engine
/// stopped because nobody listened any more). An answer L1 replays is all there at once; any
/// other arrives as the engine makes it.
pub struct Answering(Events);

enum Events {
    Live(mpsc::Receiver<AnswerEvent>),
    Ready(std::vec::IntoIter<AnswerEvent>),
}

impl Answering {
    pub async fn recv(&mut self) -> Option<AnswerEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<AnswerEvent>> {
        match &mut self.0 {
            Events::Live(receiver) => receiver.poll_recv(cx),
            Events::Ready(events) => Poll::Ready(events.next()),
        }
    }
}

/// A prepared answer: its events, and the work that makes them (none for an answer L1 replays).
pub struct Answer {
    events: Answering,
    driver: Option<BoxFuture<'static, ()>>,
    /// Relayed: its events carry the backend's own chunks ([`AnswerEvent::Relayed`]).
    relayed: bool,
}

impl Answer {
    /// An answer `drive` makes, sending its events as they come to a client that is gone once
    /// it has taken none for `stall`.
    fn driven<F>(stall: Duration, drive: impl FnOnce(Outbox) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (outbox, receiver) = Outbox::new(stall);
        Self {
            events: Answering(Events::Live(receiver)),
            driver: Some(Box::pin(drive(outbox))),
            relayed: false,
        }
    }

    /// An answer whose events are all known now.
    fn ready(events: Vec<AnswerEvent>) -> Self {
        Self {
            events: Answering(Events::Ready(events.into_iter())),
            driver: None,
            relayed: false,
        }
    }

    /// The same answer, marked as relayed.
    fn relay(self) -> Self {
        Self {
            relayed: true,
            ..self
        }
    }

    /// Whether a plain chat was relayed as the client wrote it (its events carry the backend's
    /// own chunks) rather than generated.
    pub fn is_relayed(&self) -> bool {
        self.relayed
    }

    /// Runs the answer in this task while `consume` reads its events (a JSON answer: no task
    /// to spawn, no wake-up across threads).
    pub async fn collect<T, F>(self, consume: impl FnOnce(Answering) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        match self.driver {
            Some(driver) => tokio::join!(consume(self.events), driver).0,
            None => consume(self.events).await,
        }
    }

    /// Runs the answer on its own task, for a stream the response body reads after the handler
    /// returned; a client that leaves stops it at the next event.
    pub fn spawn(self) -> Answering {
        if let Some(driver) = self.driver {
            // Its model work stays the caller's tenant's on the task of its own.
            match ragway_worker::PARTY.try_with(Arc::clone) {
                Ok(party) => tokio::spawn(ragway_worker::PARTY.scope(party, driver)),
                Err(_) => tokio::spawn(driver),
            };
        }
        self.events
    }
}

impl Engine {
    pub fn new(
        retriever: Arc<dyn Retriever>,
        llm: LlmPool,
        caches: Arc<Caches>,
        caps: ChatCaps,
        stall: Duration,
    ) -> Self {
        Self {
            retriever,
            llm,
            caches,
            caps,
            stall,
        }
    }

    /// The LLM backends and model groups answers are written by (what `/v1/models` lists and
    /// health watches).
    pub fn llm(&self) -> &LlmPool {
        &self.llm
    }

    /// Prepares the answer. What can be refused before any work is (a plain chat over its
    /// budget, a prompt that cannot fit its model's window); a chat's question is made
    /// standalone and L1 is asked here, so that a hit is replayed by a small driver; everything
    /// else is told by the events, once the answer is driven ([`Answer::collect`] in the
    /// caller's task, or [`Answer::spawn`] for a stream that outlives it).
    pub async fn answer(self: &Arc<Self>, ask: Ask) -> Result<Answer, ApiError> {
        match ask.source {
            Source::Chat { .. } => self.chat(ask).await,
            Source::Collection(ref grounding) => {
                self.check_question_fits(grounding, &ask)?;
                Ok(self.grounded(ask).await)
            }
        }
    }

    /// A plain chat: relayed or generated, decided from one lookup of its model's route (see
    /// [`Source::Chat`]); a model none of whose backends the tenant may use is not found.
    async fn chat(self: &Arc<Self>, mut ask: Ask) -> Result<Answer, ApiError> {
        let Source::Chat {
            model,
            body,
            messages,
        } = &mut ask.source
        else {
            return Err(ApiError::Internal("only a plain chat is chatted".into()));
        };
        let pool = &self.llm;
        let route = pool
            .route(model)
            .ok_or_else(|| ApiError::ModelNotFound(model.clone()))?;
        let members = || route.members().iter().filter_map(|m| pool.backend(&m.backend));
        if !members().any(|b| ask.ctx.allowance.allowed.allows(b.name())) {
            return Err(ApiError::ModelNotFound(model.clone()));
        }
        if members().any(|b| b.generator.relay().is_some()) && relay::wanted(body) {
            let body = std::mem::take(body);
            return Ok(self.relayed(ask, route, body).await?.relay());
        }
        refuse_capabilities(body, "a local LLM backend")?;
        let messages = std::mem::replace(messages, Ok(Vec::new()))?;
        let job = self.chat_job(&ask, route, &messages)?;
        let engine = self.clone();
        Ok(Answer::driven(self.stall, |events| {
            drive::drive(engine, job, events, ask.permit)
        }))
    }

    /// A generated plain chat: its `route` (a group's fallback, or the backend alone) among the
    /// backends the tenant may use; refused when the prompt fits none of their windows.
    fn chat_job(&self, ask: &Ask, route: Route, messages: &[ChatMessage]) -> Result<Job, ApiError> {
        let pool = &self.llm;
        let allowance = &ask.ctx.allowance;
        check_chat_budget(allowance, &ask.meter, &route)?;
        let request = GenerationRequest {
            messages: messages.to_vec(),
            max_tokens: ask.sampling.max_tokens,
            temperature: ask.sampling.temperature,
            prefix_scope: None,
        };
        let choice = allowance.llm.clone();
        if let Some((widest, _)) = pool.widest_context(&route, &choice) {
            prompt::check_fits(&request, widest)?;
        }
        let mut report = Report::bare_llm();
        if allowance.budget_spent() {
            report.degrade("llm", DegradationReason::Quota);
        }
        Ok(Job {
            request,
            report,
            citations: Vec::new(),
            fallback_text: String::new(),
            route,
            choice,
            ctx: ask.ctx.clone(),
            meter: ask.meter.clone(),
            cheaper_only: allowance.cheaper_only,
            remember: None,
        })
    }

    /// A question that cannot fit the window even without passages is the caller's error, as is
    /// an LLM that is not in the pool.
    fn check_question_fits(&self, grounding: &Grounding, ask: &Ask) -> Result<(), ApiError> {
        let choice = ask.ctx.allowance.generators();
        let pool = &self.llm;
        let route = grounding.route(pool)?;
        let window = pool.tightest_context(&route, &choice);
        prompt::check_question_fits(&grounding.conversation, ask.sampling, window)
    }

    /// RAG: the conversation made standalone and L1 asked now; a fresh entry is the answer,
    /// else the driver retrieves (L3, L2 inside), fits the prompt and generates with the pool's
    /// fallback.
    async fn grounded(self: &Arc<Self>, ask: Ask) -> Answer {
        let Ask {
            source: Source::Collection(mut grounding),
            sampling,
            ctx,
            meter,
            permit,
        } = ask
        else {
            return Answer::ready(Vec::new());
        };
        if !grounding.conversation.history.is_empty() {
            // Boxed: a rewrite's future is large, and most questions have no history.
            let pool = &self.llm;
            let rewrite = grounding
                .conversation
                .condense(pool, &ctx.deadline, &ctx.allowance);
            Box::pin(rewrite).await;
        }
        if let Some((backend, usage)) = &grounding.conversation.rewritten_by {
            meter.llm(backend, usage);
        }
        let remember = l1::Remember::new(&self.caches, &grounding, sampling);
        let mut cached = remember.lookup().await;
        if let Some(answer) = cached.take_fresh(ctx.allowance.budget_spent()) {
            return Answer::ready(l1::replay(answer));
        }
        let asked = Asked {
            grounding,
            sampling,
            ctx,
            meter,
            remember,
            cached,
        };
        let engine = self.clone();
        Answer::driven(self.stall, |events| {
            engine.retrieve_and_generate(asked, events, permit)
        })
    }

    /// An answer L1 does not hold: retrieval, then generation; an entry past its TTL answers
    /// when retrieval cannot.
    async fn retrieve_and_generate(
        self: Arc<Self>,
        asked: Asked,
        events: Outbox,
        permit: Option<StreamPermit>,
    ) {
        let Asked {
            grounding,
            sampling,
            ctx,
            meter,
            remember,
            cached,
        } = asked;
        let retrieved = self.retrieve(&grounding, &ctx).await;
        meter.embedding(retrieved.report.embedding_tokens);
        if retrieved.report.mode() == Mode::Error {
            return match cached.stale_for(&retrieved.report) {
                Some(answer) => send_all(l1::replay(answer), &events).await,
                None => no_retrieval(retrieved, &events).await,
            };
        }
        let job = self.grounded_job(grounding, retrieved, sampling, ctx, meter, remember);
        drive::drive(self.clone(), job, events, permit).await;
    }

    async fn retrieve(&self, grounding: &Grounding, ctx: &RequestContext) -> Retrieved {
        let conversation = &grounding.conversation;
        let query = Query {
            text: &conversation.search,
            filter: grounding.filter.clone(),
            top_k: grounding.passages,
            vector: None,
        };
        let target = grounding.collection.target(grounding.fusion);
        let mut retrieved = self.retriever.retrieve(target, &query, ctx).await;
        if grounding.from_chat {
            retrieved.report.rewrite = Some(conversation.rewrite);
            retrieved.report.rewrite_usage = conversation.rewritten_by.as_ref().map(|(_, usage)| *usage);
        }
        retrieved
    }

    /// The generation of a grounded answer: the fitted prompt, its passages as citations, the
    /// quoted passages should no LLM answer, and the backends the tenant's allowance leaves.
    fn grounded_job(
        &self,
        grounding: Grounding,
        retrieved: Retrieved,
        sampling: Sampling,
        ctx: RequestContext,
        meter: Meter,
        remember: l1::Remember,
    ) -> Job {
        let mut report = retrieved.report;
        let allowance = &ctx.allowance;
        let choice = allowance.generators();
        // Checked before the answer began (`check_question_fits`).
        let route = grounding.route(&self.llm).unwrap_or_else(|_| self.llm.everyone());
        let window = self.llm.tightest_context(&route, &choice);
        let conversation = &grounding.conversation;
        // The question alone fits (checked at the start), so fitting can only drop passages.
        let (mut request, given) =
            prompt::grounded(conversation, &retrieved.hits, sampling, window, &mut report)
                .unwrap_or_else(|_| prompt_without_passages(conversation, sampling));
        // A local model's kept prompts over an earlier epoch of this collection go (L4).
        let target = grounding.collection.target(grounding.fusion);
        request.prefix_scope = Some(ragway_llm::PrefixScope {
            collection: format!("{}@{}", target.name, target.generation),
            epoch: target.epoch,
        });
        if allowance.budget_spent() {
            report.degrade("llm", DegradationReason::Quota);
        }
        Job {
            request,
            fallback_text: extractive_answer(&given),
            citations: numbered(given),
            report,
            route,
            choice,
            cheaper_only: allowance.cheaper_only,
            ctx,
            meter,
            remember: Some(remember),
        }
    }
}

/// A grounded question L1 had no fresh answer to, made standalone.
struct Asked {
    grounding: Grounding,
    sampling: Sampling,
    ctx: RequestContext,
    meter: Meter,
    remember: l1::Remember,
    cached: l1::Cached,
}

/// What one generation needs: the prompt, the report so far, who may write it, and who pays.
struct Job {
    request: GenerationRequest,
    report: Report,
    citations: Vec<Citation>,
    /// Quoted passages to send when no LLM answers (empty for a plain chat).
    fallback_text: String,
    /// The backends that may write it, in their order.
    route: Route,
    /// Those of them the tenant may use.
    choice: Choice,
    ctx: RequestContext,
    meter: Meter,
    /// `choice` holds only the cheaper backends left to a tenant over budget: the answer is a
    /// fallback.
    cheaper_only: bool,
    /// Where a `normal` answer is kept (L1); `None` for a plain chat.
    remember: Option<l1::Remember>,
}

impl Job {
    /// Only `cheaper` (unmetered) backends may write it, or none: the tenant's budget cannot
    /// hold what it may take.
    fn narrow(&mut self, cheaper: Vec<String>) {
        self.cheaper_only = !cheaper.is_empty();
        self.choice = Choice::Only(cheaper);
        self.report.degrade("llm", DegradationReason::Quota);
    }
}

fn prompt_without_passages(
    conversation: &Conversation,
    sampling: Sampling,
) -> (GenerationRequest, Vec<ScoredChunk>) {
    let messages = ragway_llm::rag_messages(&conversation.question, &[]);
    let request = GenerationRequest {
        messages,
        max_tokens: sampling.max_tokens,
        temperature: sampling.temperature,
        prefix_scope: None,
    };
    (request, Vec::new())
}

/// Neither retrieval engine could serve and no cache holds an answer: `meta` and `done` with
/// mode `error` (the routes answer 503).
async fn no_retrieval(retrieved: Retrieved, events: &Outbox) {
    let mut report = retrieved.report;
    report.finish();
    let meta = AnswerEvent::Meta {
        mode: Mode::Error,
        degraded: report.degraded(),
        stages: report.stages(),
        citations: Vec::new(),
        cache: None,
        next_probe: None,
    };
    if events.send(meta).await.is_ok() {
        let _ = events.send(done(&report, TokenUsage::default())).await;
    }
}

/// The `done` event of `report`, counted by mode; its usage is the answer's and the rewrite's
/// (all this request was charged for).
fn done(report: &Report, answer: TokenUsage) -> AnswerEvent {
    let mode = report.mode();
    let rewrite = report.rewrite_usage.unwrap_or_default();
    let usage = TokenUsage {
        prompt_tokens: answer.prompt_tokens + rewrite.prompt_tokens,
        completion_tokens: answer.completion_tokens + rewrite.completion_tokens,
    };
    metrics::counter!("ragway_answers_total", "mode" => mode.as_str()).increment(1);
    AnswerEvent::Done {
        mode,
        degraded: report.degraded(),
        stages: report.stages(),
        usage,
        cache: report.cache.clone(),
        timings_ms: report.timings_ms.clone(),
    }
}

/// A plain chat along `route` once the LLM budget is spent: 429, unless one of its backends is
/// among the cheaper ones left to the tenant (without passages there is nothing cheaper to give).
pub fn check_chat_budget(allowance: &Allowance, meter: &Meter, route: &Route) -> Result<(), ApiError> {
    let cheaper_left =
        allowance.cheaper_only && route.members().iter().any(|m| allowance.llm.allows(&m.backend));
    match allowance.budget_spent() && !cheaper_left {
        true => Err(llm_budget_spent(meter)),
        false => Ok(()),
    }
}

fn llm_budget_spent(meter: &Meter) -> ApiError {
    let Some(tenant) = meter.tenant() else {
        return ApiError::Internal("a budget was spent without a tenant".into());
    };
    meter.rejected("llm_tokens_per_day");
    let limit = tenant.limits.llm_tokens_per_day.unwrap_or(0);
    budget_spent(
        tenant,
        ErrorCode::LlmTokenQuotaExceeded,
        "llm_tokens_per_day",
        limit,
    )
}

pub fn citation((index, h): (usize, ScoredChunk)) -> Citation {
    Citation {
        index,
        doc_id: h.chunk.doc_id,
        chunk_id: h.chunk.chunk_id,
        text: h.chunk.text,
        score: h.score,
        metadata: h.chunk.metadata,
    }
}

/// Sends `all` until the client leaves.
async fn send_all(all: Vec<AnswerEvent>, events: &Outbox) {
    for event in all {
        if events.send(event).await.is_err() {
            return;
        }
    }
}

fn numbered(hits: Vec<ScoredChunk>) -> Vec<Citation> {
    hits.into_iter()
        .enumerate()
        .map(|(i, h)| citation((i + 1, h)))
        .collect()
}

/// The answer when no LLM could write one: the passages, quoted and numbered.
pub fn extractive_answer(hits: &[ScoredChunk]) -> String {
    if hits.is_empty() {
        return "No language model is available and no passage matched the question.".into();
    }
    let mut text = String::from("No language model is available; the most relevant passages are:\n");
    for (i, hit) in hits.iter().enumerate() {
        text.push_str(&format!("\n[{}] \"{}\"", i + 1, hit.chunk.text.trim()));
    }
    text
}

/// Who wrote a finished answer, for L1: only an answer by the first backend tried is kept.
fn primary(report: &Report) -> Option<&str> {
    match &report.authorship {
        Some(Authorship::Primary(name)) => Some(name),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragway_llm::{Retry, UpstreamError};

    fn remote(status: u16, code: Option<&str>) -> LlmError {
        let upstream = code.map(|code| UpstreamError {
            message: "too long for me".into(),
            kind: Some("invalid_request_error".into()),
            param: Some("messages".into()),
            code: Some(code.into()),
        });
        LlmError::Remote {
            backend: "b".into(),
            message: "refused".into(),
            retry: Retry::Never,
            status: Some(status),
            upstream: upstream.map(Box::new),
        }
    }

    #[test]
    fn an_unanswered_chat_says_who_refused_what_or_that_nothing_could_answer() {
        let mut report = Report::bare_llm();
        report.degrade("llm:b", DegradationReason::Error);
        let refused = Unanswered::Refused {
            backend: "b".into(),
            error: remote(400, Some("context_length_exceeded")),
        };
        let ApiError::BackendRejected(rejection) = unanswered("m", refused, &report) else {
            panic!("a refusal is passed on");
        };
        let Rejection {
            status,
            code,
            kind,
            param,
            message,
            ..
        } = *rejection;
        assert_eq!((status, code.as_deref()), (400, Some("context_length_exceeded")));
        assert_eq!(
            (kind.as_deref(), param.as_deref()),
            (Some("invalid_request_error"), Some("messages"))
        );
        assert_eq!(message, "too long for me", "the backend's own words");
        let keys = unanswered("m", Unanswered::Failed { misconfigured: true }, &report);
        assert_eq!(keys.code(), ErrorCode::LlmBackendMisconfigured, "{keys}");
        assert!(keys.to_string().contains("llm:b"), "{keys}");
        let down = unanswered("m", Unanswered::Failed { misconfigured: false }, &report);
        assert_eq!(down.code(), ErrorCode::LlmUnavailable);
    }
}
