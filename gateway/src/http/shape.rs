//! The shapes an answer takes on the wire, all made from the engine's events: collected into one
//! JSON body ([`Collected`], sent by [`answer_response`]), or streamed as Server-Sent Events — ragway's own events on `/query`,
//! OpenAI chunks on `/v1/chat/completions`. A stream's response is sent once its first event
//! (`meta`) is known, so the `x-ragway-mode` header carries the mode the answer began with; every
//! later change is a `degraded` event with the new mode, and `done` carries the final one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use ragway_llm::cited_passages;
use ragway_openapi::{CacheInfo, Citation, Degradation, Mode, QueryResponse, Stages, TokenUsage};
use serde::Serialize;
use serde_json::{json, Value};

use crate::answer::engine::{no_backend_answered, AnswerEvent, Answering};
use crate::error::{ApiError, ErrorCode};

/// A whole answer, collected from its events.
#[derive(Debug)]
pub struct Collected {
    pub text: String,
    /// The passages the answer cites (all it was given when it cites none).
    pub citations: Vec<Citation>,
    pub mode: Mode,
    pub degraded: Vec<Degradation>,
    pub stages: Stages,
    pub usage: TokenUsage,
    pub cache: Option<CacheInfo>,
    pub timings_ms: BTreeMap<String, f64>,
    /// No LLM could be asked: when the soonest breaker's next probe is.
    pub next_probe: Option<std::time::Duration>,
}

impl Collected {
    pub async fn from(answering: Answering) -> Result<Self, ApiError> {
        let (first, rest) = first_event(answering).await?;
        Self::after(first, rest).await
    }

    /// The answer that began with `first` (its `meta`).
    async fn after(first: AnswerEvent, mut events: Answering) -> Result<Self, ApiError> {
        let AnswerEvent::Meta {
            citations,
            next_probe,
            ..
        } = first
        else {
            return Err(ApiError::Internal("the answer did not begin with meta".into()));
        };
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                AnswerEvent::Delta { text: piece } if text.is_empty() => text = piece,
                AnswerEvent::Delta { text: piece } => text.push_str(&piece),
                // The text so far was withdrawn: the answer is what follows.
                AnswerEvent::Restarted => text.clear(),
                AnswerEvent::Meta { .. }
                | AnswerEvent::Degraded { .. }
                | AnswerEvent::Relayed { .. }
                | AnswerEvent::Refused { .. } => {}
                AnswerEvent::Done {
                    mode,
                    degraded,
                    stages,
                    usage,
                    cache,
                    timings_ms,
                } => {
                    let generated = written_by(&stages).is_some();
                    return Ok(Self {
                        citations: cited(&text, citations, generated),
                        text: trimmed(text),
                        mode,
                        degraded,
                        stages,
                        usage,
                        cache,
                        timings_ms,
                        next_probe,
                    });
                }
            }
        }
        Err(ApiError::Internal("the answer ended before it was done".into()))
    }

    pub fn into_query_response(self) -> QueryResponse {
        QueryResponse {
            answer: self.text,
            citations: self.citations,
            mode: self.mode,
            degraded: self.degraded,
            stages: self.stages,
            cache: self.cache,
            timings_ms: self.timings_ms,
            usage: self.usage,
        }
    }

    /// The backend that wrote the answer, unless passages were quoted instead.
    pub fn backend(&self) -> Option<&str> {
        written_by(&self.stages)
    }

    /// Why a plain chat with `model` got no answer, for its 503.
    pub fn unavailable(&self, model: &str) -> ApiError {
        no_backend_answered(model, &self.degraded, self.next_probe)
    }
}

/// A written answer cites the passages it marks (`[n]`), or every one it was given when it marks
/// none; quoted passages cite them all.
fn cited(text: &str, citations: Vec<Citation>, generated: bool) -> Vec<Citation> {
    let marked = cited_passages(text, citations.len());
    if !generated || marked.is_empty() {
        return citations;
    }
    marked
        .into_iter()
        .filter_map(|n| citations.iter().find(|c| c.index == n).cloned())
        .collect()
}

/// `text` without leading or trailing whitespace (copied only when it has some).
fn trimmed(text: String) -> String {
    match text.trim() {
        same if same.len() == text.len() => text,
        other => other.to_string(),
    }
}

/// The backend that wrote an answer with these stages, unless passages were quoted instead.
pub fn written_by(stages: &Stages) -> Option<&str> {
    stages.llm.as_deref().filter(|llm| *llm != "extractive")
}

/// The first event (`meta`) and the rest; an answer refused before it began is its error.
pub(crate) async fn first_event(mut events: Answering) -> Result<(AnswerEvent, Answering), ApiError> {
    let first = events
        .recv()
        .await
        .ok_or_else(|| ApiError::Internal("the answer stream ended before it began".into()))?;
    match first {
        AnswerEvent::Refused { refusal } => Err(refusal.into()),
        first => Ok((first, events)),
    }
}

/// Names the backend that answered in the `x-ragway-backend` header.
pub(crate) fn name_backend(response: &mut Response, backend: Option<&str>) {
    if let Some(value) = backend.and_then(|b| HeaderValue::from_str(b).ok()) {
        response.headers_mut().insert("x-ragway-backend", value);
    }
}

fn mode_of(event: &AnswerEvent) -> Mode {
    match event {
        AnswerEvent::Meta { mode, .. }
        | AnswerEvent::Degraded { mode, .. }
        | AnswerEvent::Done { mode, .. } => *mode,
        AnswerEvent::Delta { .. } | AnswerEvent::Relayed { .. } | AnswerEvent::Restarted => Mode::Normal,
        AnswerEvent::Refused { .. } => Mode::Error,
    }
}

pub(crate) fn respond(mode: Mode, stream: impl Stream<Item = Event> + Send + 'static) -> Response {
    let mut response = Sse::new(stream.map(Ok::<Event, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert("x-ragway-mode", HeaderValue::from_static(mode.as_str()));
    response
}

fn receiver_stream(mut events: Answering) -> impl Stream<Item = AnswerEvent> + Send {
    futures::stream::poll_fn(move |cx| events.poll_recv(cx))
}

fn json_event(name: &'static str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(value)
        .unwrap_or_else(|_| Event::default().comment("unserialisable event"))
}

/// `/query` with `stream: true`: events `meta`, `delta`…, `degraded` (if any), `done`; with no
/// retrieval path, the 503 JSON answer instead.
pub async fn ragway_events(answering: Answering) -> Result<Response, ApiError> {
    let (first, events) = first_event(answering).await?;
    let mode = mode_of(&first);
    if mode == Mode::Error {
        let answer = Collected::after(first, events).await?;
        return Ok(answer_response(mode, answer.into_query_response()));
    }
    let stream = futures::stream::once(async move { first })
        .chain(receiver_stream(events))
        .map(|event| json_event(event.name(), &event));
    Ok(respond(mode, stream))
}

/// The documents `citations` cite, in citation order, each once: the top-level `citations` of a
/// chat answer, where chat frontends look for sources.
pub fn cited_documents(citations: &[Citation]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    citations
        .iter()
        .filter(|c| seen.insert(c.doc_id.as_str()))
        .map(|c| c.doc_id.clone())
        .collect()
}

/// What a chat stream starts with when it cannot answer at all: `None` to stream on.
fn refused(first: &AnswerEvent, model: &str, bare_llm: bool) -> Option<Result<Response, ApiError>> {
    let AnswerEvent::Meta {
        mode,
        degraded,
        next_probe,
        ..
    } = first
    else {
        return None;
    };
    if *mode != Mode::Error {
        return None;
    }
    if bare_llm {
        // A plain chat whose backends never started has nothing to stream: a 503.
        return Some(Err(no_backend_answered(model, degraded, *next_probe)));
    }
    let body = json!({
        "error": {"code": ErrorCode::NoRetrievalPath.as_str(), "message": "neither retrieval engine is available (mode: error)"},
        "ragway": {"mode": Mode::Error, "degraded": degraded, "citations": []},
    });
    Some(Ok(answer_response(Mode::Error, body)))
}

/// The OpenAI chunk rendering of an answer, with ragway's mode, stages and citations in a
/// `ragway` field of the first chunk (and the mode in any chunk announcing a degradation), the
/// cited documents in the first chunk's top-level `citations`, and the usage in the last chunk
/// before `[DONE]`. A plain chat's chunks name the model that began the answer, else `model`;
/// the `x-ragway-backend` header names the backend.
pub async fn openai_chunks(
    answering: Answering,
    model: String,
    bare_llm: bool,
    max_tokens: usize,
) -> Result<Response, ApiError> {
    let (first, events) = first_event(answering).await?;
    if let Some(refusal) = refused(&first, &model, bare_llm) {
        return refusal;
    }
    let mode = mode_of(&first);
    let (backend, written_with) = match &first {
        AnswerEvent::Meta { stages, .. } => {
            (written_by(stages).map(str::to_string), stages.llm_model.clone())
        }
        _ => (None, None),
    };
    let model = match (written_with, bare_llm) {
        (Some(answered), true) => answered,
        _ => model,
    };
    let chunks = Chunks::new(model, bare_llm, max_tokens);
    let stream = futures::stream::once(async move { first })
        .chain(receiver_stream(events))
        // A restart cannot be shown to an OpenAI client (it cannot withdraw text): its error
        // chunk is the stream's last; dropping the rest stops the answer.
        .scan(false, move |ended, event| {
            let last = matches!(event, AnswerEvent::Restarted);
            let chunk = (!*ended).then(|| chunks.of(event));
            *ended |= last;
            futures::future::ready(chunk)
        })
        .chain(futures::stream::once(async { Event::default().data("[DONE]") }));
    let mut response = respond(mode, stream);
    name_backend(&mut response, backend.as_deref());
    Ok(response)
}

/// The one error an OpenAI stream carries once its status is sent (plain chat, chat over a
/// collection and relay alike): `{"error": {"code", "message", "type"}}`.
#[derive(Debug, Serialize)]
pub(crate) struct StreamError {
    error: StreamErrorBody,
}

#[derive(Debug, Serialize)]
struct StreamErrorBody {
    code: &'static str,
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl StreamError {
    fn new(code: ErrorCode, message: String) -> Self {
        Self {
            error: StreamErrorBody {
                code: code.as_str(),
                message,
                kind: "server_error",
            },
        }
    }

    /// A backend broke off the answer (`degradation`) and nothing continued it.
    pub(crate) fn broke_off(degradation: &Degradation) -> Self {
        let backend = degradation.stage.trim_start_matches("llm:");
        let message = format!(
            "backend `{backend}` broke off the answer ({:?})",
            degradation.reason
        );
        Self::new(ErrorCode::LlmBackendFailed, message)
    }

    /// The backend that took over answered afresh: what was streamed cannot be completed.
    fn restarted() -> Self {
        let message = "the backend that took over could not continue the partial answer: what was streamed is incomplete; ask again";
        Self::new(ErrorCode::AnswerRestarted, message.to_string())
    }

    pub(crate) fn event(&self) -> Event {
        Event::default()
            .json_data(self)
            .unwrap_or_else(|_| Event::default().comment("unserialisable error"))
    }
}

/// Makes the `chat.completion.chunk` events of one answer.
struct Chunks {
    id: String,
    created: u64,
    model: String,
    bare_llm: bool,
    max_tokens: usize,
}

/// OpenAI's `finish_reason`: `length` when the answer used every token `max_tokens` allowed.
pub(crate) fn finish_reason(completion_tokens: usize, max_tokens: usize) -> &'static str {
    match completion_tokens >= max_tokens {
        true => "length",
        false => "stop",
    }
}

impl Chunks {
    fn new(model: String, bare_llm: bool, max_tokens: usize) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            id: format!("chatcmpl-ragway-{created}"),
            created,
            model,
            bare_llm,
            max_tokens,
        }
    }

    fn chunk(&self, choices: Value, extra: Vec<(&str, Value)>) -> Event {
        self.chunk_of(&self.model, choices, extra)
    }

    /// A chunk naming `model`.
    fn chunk_of(&self, model: &str, choices: Value, extra: Vec<(&str, Value)>) -> Event {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": model, "choices": choices,
        });
        if let Some(map) = chunk.as_object_mut() {
            map.extend(extra.into_iter().map(|(key, value)| (key.to_string(), value)));
        }
        Event::default().data(chunk.to_string())
    }

    fn of(&self, event: AnswerEvent) -> Event {
        match event {
            AnswerEvent::Meta {
                mode,
                degraded,
                citations,
                stages,
                ..
            } => {
                let first = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]);
                if self.bare_llm {
                    return self.chunk(first, Vec::new());
                }
                let sources = cited_documents(&citations);
                let info =
                    json!({"mode": mode, "degraded": degraded, "stages": stages, "citations": citations});
                self.chunk(first, vec![("citations", json!(sources)), ("ragway", info)])
            }
            // Only a relay yields these, and it has its own shape (`routes::relay`).
            AnswerEvent::Relayed { chunk } => Event::default().data(chunk.to_string()),
            // Only ever a first event, which is answered as an error instead.
            AnswerEvent::Refused { refusal } => {
                let error = ApiError::from(refusal);
                StreamError::new(error.code(), error.to_string()).event()
            }
            AnswerEvent::Restarted => StreamError::restarted().event(),
            AnswerEvent::Delta { text } => self.chunk(
                json!([{"index": 0, "delta": {"content": text}, "finish_reason": null}]),
                Vec::new(),
            ),
            // A plain chat's only backend broke off: say so as OpenAI streams say errors.
            AnswerEvent::Degraded { degradation, mode } if self.bare_llm && mode == Mode::Error => {
                StreamError::broke_off(&degradation).event()
            }
            AnswerEvent::Degraded { degradation, mode } => self.chunk(
                json!([]),
                vec![("ragway", json!({"mode": mode, "degraded": [degradation]}))],
            ),
            AnswerEvent::Done {
                usage, mode, stages, ..
            } => {
                let finish = finish_reason(usage.completion_tokens, self.max_tokens);
                let usage = json!({
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                });
                let mut extra = vec![("usage", usage)];
                if !self.bare_llm {
                    extra.push(("ragway", json!({"mode": mode})));
                }
                // A plain chat's last chunk names the model that finished the answer (another
                // backend's after a failover mid-answer).
                let model = match (self.bare_llm, &stages.llm_model) {
                    (true, Some(finished)) => finished.as_str(),
                    _ => self.model.as_str(),
                };
                let last = json!([{"index": 0, "delta": {}, "finish_reason": finish}]);
                self.chunk_of(model, last, extra)
            }
        }
    }
}

/// Every answer carries its mode in the `x-ragway-mode` header; `error` answers are 503 with the
/// same body shape. (Answers are counted by mode where their mode is decided: the engine.)
pub(crate) fn answer_response(mode: Mode, body: impl Serialize) -> Response {
    let status = if mode == Mode::Error {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert("x-ragway-mode", HeaderValue::from_static(mode.as_str()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(index: usize) -> Citation {
        Citation {
            index,
            doc_id: format!("d{index}"),
            chunk_id: format!("d{index}#0"),
            text: String::new(),
            score: 1.0,
            metadata: Default::default(),
        }
    }

    #[test]
    fn a_written_answer_cites_what_it_marks_quoted_passages_cite_all() {
        let given = || vec![passage(1), passage(2), passage(3)];
        let indices = |c: Vec<Citation>| c.iter().map(|c| c.index).collect::<Vec<_>>();
        assert_eq!(indices(cited("see [3] and [1]", given(), true)), [3, 1]);
        assert_eq!(indices(cited("no markers", given(), true)), [1, 2, 3]);
        assert_eq!(indices(cited("[2] quoted", given(), false)), [1, 2, 3]);
    }
}
