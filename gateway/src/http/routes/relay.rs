//! Plain chat passed through to a remote OpenAI-compatible backend: a request that carries what
//! ragway does not interpret itself (`tools`, `response_format`, `stop`, `seed`, tool results,
//! image parts, ...) goes to the backend as the client wrote it, with only `model` replaced by the
//! backend's own, and its answer comes back as the backend wrote it (tool calls included, and its
//! own `model`, so the client sees which model answered). The engine relays it ([`Source::Relay`]:
//! the backend's guard, retries, caps, the tenant's budget, charging, the mode); this module
//! says which requests are relayed and shapes the relayed events. A 4xx the backend answers for
//! the client's parameters is passed back with its status and does not count against the
//! backend's breaker.
//!
//! [`Source::Relay`]: crate::answer::engine::Source::Relay

use axum::response::sse::Event;
use axum::response::Response;
use futures::StreamExt;
use ragway_openapi::Mode;
use serde_json::Value;

use crate::answer::engine::{Answer, AnswerEvent, Answering};
use crate::error::{ApiError, ErrorCode};
use crate::http::shape::{self, answer_response, StreamError};

/// Top-level fields ragway reads itself; any other field (`n` too: a backend may write several
/// choices) asks for a relay.
const OWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "llm",
];

/// Fields that change what an answer is (tool calls, a JSON shape, log-probabilities): refused
/// where they cannot be honoured (RAG over a collection, the local model) instead of ignored.
const CAPABILITIES: &[&str] = &[
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logprobs",
    "audio",
    "modalities",
    "prediction",
];

/// Whether `body` carries anything only a relay passes on: a field ragway does not read, or a
/// message with more than a role and text content (tool calls, tool results, images, names).
pub fn wanted(body: &Value) -> bool {
    let Some(fields) = body.as_object() else {
        return false;
    };
    let extra_field = fields.keys().any(|k| !OWN_FIELDS.contains(&k.as_str()));
    let rich_message = fields
        .get("messages")
        .and_then(Value::as_array)
        .is_some_and(|messages| messages.iter().any(rich));
    extra_field || rich_message
}

fn rich(message: &Value) -> bool {
    let Some(fields) = message.as_object() else {
        return false;
    };
    let extra = fields.keys().any(|k| k != "role" && k != "content");
    let non_text = fields
        .get("content")
        .and_then(Value::as_array)
        .is_some_and(|parts| parts.iter().any(|p| p["type"] != "text"));
    extra
        || non_text
        || !matches!(
            fields.get("role").and_then(Value::as_str),
            Some("system" | "developer" | "user" | "assistant")
        )
}

/// 400 `unsupported_parameter` when `body` asks for something only a relaying backend can do;
/// `model_kind` says what `model` named (for the message).
pub fn refuse_capabilities(body: &Value, model_kind: &str) -> Result<(), ApiError> {
    let asked: Vec<&str> = CAPABILITIES
        .iter()
        .copied()
        .filter(|field| asks_for(&body[*field], field))
        .collect();
    if asked.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        ErrorCode::UnsupportedParameter,
        format!(
            "{}: not supported for {model_kind}; they are passed through only to remote (OpenAI-compatible) LLM backends named as `model`",
            asked.join(", ")
        ),
    ))
}

/// Whether a capability field's value asks for anything (`null`, `[]`, `false` and a `text`
/// response format are the defaults).
fn asks_for(value: &Value, field: &str) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Array(items) => !items.is_empty(),
        Value::Object(_) if field == "response_format" => value["type"] != "text",
        _ => true,
    }
}

/// A relayed whole answer: the backend's completion as it wrote it (its own `model`), with the
/// backend named in `x-ragway-backend`.
pub async fn complete(answer: Answer) -> Result<Response, ApiError> {
    let (completion, mode, backend) = answer.collect(whole).await?;
    let mut response = answer_response(mode, completion);
    shape::name_backend(&mut response, backend.as_deref());
    Ok(response)
}

async fn whole(mut events: Answering) -> Result<(Value, Mode, Option<String>), ApiError> {
    let mut completion = Value::Null;
    while let Some(event) = events.recv().await {
        match event {
            AnswerEvent::Relayed { chunk } => completion = chunk,
            AnswerEvent::Done { mode, stages, .. } => {
                let backend = shape::written_by(&stages).map(str::to_string);
                return Ok((completion, mode, backend));
            }
            AnswerEvent::Refused { refusal } => return Err(refusal.into()),
            _ => {}
        }
    }
    Err(ApiError::Internal(
        "the relayed answer ended before it was done".into(),
    ))
}

/// A relayed stream: the backend's chunks as they come (its own `model`), then `data: [DONE]`;
/// the mode it began with and the backend are in the headers. Its usage chunk reaches the client
/// only if the client asked (`stream_options.include_usage`). A backend that breaks off or
/// stalls mid-stream ends it with an `{"error": ...}` chunk.
pub async fn stream(answering: Answering, wants_usage: bool) -> Result<Response, ApiError> {
    let (first, answering) = shape::first_event(answering).await?;
    let (mode, backend) = match &first {
        AnswerEvent::Meta { mode, stages, .. } => (*mode, shape::written_by(stages).map(str::to_string)),
        _ => (Mode::Normal, None),
    };
    let shaped = Shaped { wants_usage };
    let events = futures::stream::unfold((answering, false), |(mut answering, ended)| async move {
        if ended {
            return None;
        }
        let event = answering.recv().await?;
        let ended = matches!(event, AnswerEvent::Degraded { .. } | AnswerEvent::Done { .. });
        Some((event, (answering, ended)))
    });
    let events = futures::stream::once(async move { first }).chain(events);
    let mut response = shape::respond(
        mode,
        events.filter_map(move |event| futures::future::ready(shaped.of(event))),
    );
    shape::name_backend(&mut response, backend.as_deref());
    Ok(response)
}

/// Makes the client's events of a relayed stream.
struct Shaped {
    wants_usage: bool,
}

impl Shaped {
    fn of(&self, event: AnswerEvent) -> Option<Event> {
        match event {
            AnswerEvent::Relayed { mut chunk } => {
                if !chunk["usage"].is_null() && !self.wants_usage {
                    if chunk["choices"].as_array().is_some_and(Vec::is_empty) {
                        return None;
                    }
                    chunk["usage"] = Value::Null;
                }
                Some(Event::default().data(chunk.to_string()))
            }
            AnswerEvent::Degraded { degradation, .. } => Some(StreamError::broke_off(&degradation).event()),
            AnswerEvent::Done { .. } => Some(Event::default().data("[DONE]")),
            AnswerEvent::Meta { .. }
            | AnswerEvent::Delta { .. }
            | AnswerEvent::Restarted
            | AnswerEvent::Refused { .. } => None,
        }
    }
}
