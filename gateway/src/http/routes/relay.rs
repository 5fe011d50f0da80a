//! Plain chat passed through to a remote OpenAI-compatible backend: a request that carries what
//! ragway does not interpret itself (`tools`, `response_format`, `stop`, `seed`, tool results,
//! image parts, ...) goes to the backend as the client wrote it, with only `model` replaced by the
//! backend's own, and its answer comes back as the backend wrote it (tool calls included), with
//! `model` set back to the name the client asked for. The engine relays it ([`Source::Relay`]:
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
use serde_json::{json, Value};

use crate::answer::engine::{Answer, AnswerEvent, Answering};
use crate::error::{ApiError, ErrorCode};
use crate::http::shape::{self, answer_response};

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

/// A relayed whole answer: the backend's completion, named as the client asked.
pub async fn complete(answer: Answer, model: &str) -> Result<Response, ApiError> {
    let (mut completion, mode) = answer.collect(whole).await?;
    completion["model"] = Value::String(model.to_string());
    Ok(answer_response(mode, completion))
}

async fn whole(mut events: Answering) -> Result<(Value, Mode), ApiError> {
    let mut completion = Value::Null;
    while let Some(event) = events.recv().await {
        match event {
            AnswerEvent::Relayed { chunk } => completion = chunk,
            AnswerEvent::Done { mode, .. } => return Ok((completion, mode)),
            _ => {}
        }
    }
    Err(ApiError::Internal(
        "the relayed answer ended before it was done".into(),
    ))
}

/// A relayed stream: the backend's chunks as they come, named as the client asked, then
/// `data: [DONE]`. Its usage chunk reaches the client only if the client asked
/// (`stream_options.include_usage`). A backend that breaks off or stalls mid-stream ends it with
/// an `{"error": ...}` chunk.
pub fn stream(answering: Answering, model: String, wants_usage: bool) -> Response {
    let shaped = Shaped { model, wants_usage };
    let events = futures::stream::unfold((answering, false), |(mut answering, ended)| async move {
        if ended {
            return None;
        }
        let event = answering.recv().await?;
        let ended = matches!(event, AnswerEvent::Degraded { .. } | AnswerEvent::Done { .. });
        Some((event, (answering, ended)))
    });
    shape::respond(
        Mode::Normal,
        events.filter_map(move |event| futures::future::ready(shaped.of(event))),
    )
}

/// Makes the client's events of a relayed stream.
struct Shaped {
    model: String,
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
                chunk["model"] = Value::String(self.model.clone());
                Some(Event::default().data(chunk.to_string()))
            }
            AnswerEvent::Degraded { degradation, .. } => {
                let message = format!(
                    "backend `{}` broke off the answer ({:?})",
                    degradation.stage.trim_start_matches("llm:"),
                    degradation.reason
                );
                let error =
                    json!({"error": {"code": ErrorCode::LlmBackendFailed.as_str(), "message": message}});
                Some(Event::default().data(error.to_string()))
            }
            AnswerEvent::Done { .. } => Some(Event::default().data("[DONE]")),
            AnswerEvent::Meta { .. } | AnswerEvent::Delta { .. } => None,
        }
    }
}
