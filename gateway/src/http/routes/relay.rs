//! Plain chat passed through to a remote OpenAI-compatible backend: a request that carries what
//! ragway does not interpret itself (`tools`, `response_format`, `stop`, `seed`, tool results,
//! image parts, ...) goes to the backend as the client wrote it, with only `model` replaced by the
//! backend's own, and its answer comes back as the backend wrote it (tool calls included), with
//! `model` set back to the name the client asked for. The backend's guard, retries, the tenant's
//! budget and stream quota apply as to any plain chat; a 4xx the backend answers for the client's
//! parameters is passed back with its status and does not count against the backend's breaker.

use axum::response::sse::Event;
use axum::response::Response;
use futures::StreamExt;
use ragway_llm::{ChunkStream, LlmError, Relay};
use ragway_openapi::{Mode, TokenUsage};
use serde_json::{json, Value};

use crate::answer::engine::check_chat_budget;
use crate::answer::pool::{count_tokens, Backend};
use crate::error::{ApiError, ErrorCode};
use crate::http::auth::Caller;
use crate::http::shape::{self, answer_response};
use crate::http::AppState;
use crate::resilience::deadline::Deadline;
use crate::resilience::guard::{Blame, Blamed};
use crate::tenancy::quota::StreamPermit;
use crate::tenancy::{Allowance, Meter};

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

/// The body as it may be relayed: within the tenant's budget, at most
/// `generation.max_choices` choices (`n`), and with `max_tokens` set to the configured default
/// when the client set no limit (the cap was checked with the rest of the request), so that no
/// relayed request asks a backend for more than any other chat may.
pub fn capped(
    state: &AppState,
    mut body: Value,
    allowance: &Allowance,
    caller: &Caller,
) -> Result<Value, ApiError> {
    check_chat_budget(
        allowance,
        &caller.meter(state),
        body["model"].as_str().unwrap_or_default(),
    )?;
    let generation = &state.config.generation;
    let n = &body["n"];
    if !n.is_null() {
        let max = generation.max_choices as u64;
        if !n.as_u64().is_some_and(|n| (1..=max).contains(&n)) {
            return Err(ApiError::invalid(
                ErrorCode::NOutOfRange,
                format!("n = {n} is out of range: use 1 to {max} (generation.max_choices)"),
            ));
        }
    }
    let limited = ["max_tokens", "max_completion_tokens"]
        .iter()
        .any(|field| !body[*field].is_null());
    if let (false, Some(fields)) = (limited, body.as_object_mut()) {
        fields.insert("max_tokens".into(), Value::from(generation.max_tokens));
    }
    Ok(body)
}

/// A relayed whole answer.
pub async fn complete(
    state: &AppState,
    meter: &Meter,
    (backend, relay): (&Backend, &dyn Relay),
    model: &str,
    body: Value,
    deadline: &Deadline,
) -> Result<Response, ApiError> {
    let mut answer = state
        .pipeline
        .llm
        .relay(backend, relay, &body, deadline)
        .await
        .map_err(|error| refused(backend.name(), error))?;
    let usage = usage_of(&answer["usage"]);
    count_tokens(backend.name(), usage.prompt_tokens, usage.completion_tokens);
    meter.llm(backend.name(), &usage);
    answer["model"] = Value::String(model.to_string());
    metrics::counter!("ragway_answers_total", "mode" => Mode::Normal.as_str()).increment(1);
    Ok(answer_response(Mode::Normal, answer))
}

/// A relayed stream: the backend's chunks as they come, then `data: [DONE]`. Its usage chunk
/// reaches the client only if the client asked (`stream_options.include_usage`). A backend that
/// breaks off or stalls mid-stream ends it with an `{"error": ...}` chunk.
pub async fn stream(
    state: AppState,
    meter: Meter,
    permit: Option<StreamPermit>,
    (backend, relay): (&Backend, &dyn Relay),
    model: String,
    body: Value,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    let wants_usage = body["stream_options"]["include_usage"] == true;
    let chunks = state
        .pipeline
        .llm
        .relay_stream(backend, relay, &body, &deadline)
        .await
        .map_err(|error| refused(backend.name(), error))?;
    let relayed = Relayed {
        chunks,
        backend: backend.name().to_string(),
        usage: TokenUsage::default(),
        ended: false,
        model,
        wants_usage,
        meter,
        _permit: permit,
    };
    metrics::counter!("ragway_answers_total", "mode" => Mode::Normal.as_str()).increment(1);
    Ok(shape::respond(
        Mode::Normal,
        futures::stream::unfold(
            relayed,
            |mut r| async move { r.next_event().await.map(|e| (e, r)) },
        ),
    ))
}

/// A relayed stream in progress; what it used is charged when it is dropped (finished, failed
/// or abandoned by the client). The backend's guard ends the chunks with an error when it stalls
/// or the deadline passes.
struct Relayed {
    chunks: ChunkStream,
    backend: String,
    usage: TokenUsage,
    ended: bool,
    model: String,
    wants_usage: bool,
    meter: Meter,
    _permit: Option<StreamPermit>,
}

impl Relayed {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.ended {
                return None;
            }
            let mut chunk = match self.chunks.next().await {
                None => {
                    self.ended = true;
                    return Some(Event::default().data("[DONE]"));
                }
                Some(Err(e)) => return Some(self.end_with_error(e.to_string())),
                Some(Ok(chunk)) => chunk,
            };
            let usage_only = chunk["choices"].as_array().is_some_and(Vec::is_empty);
            if !chunk["usage"].is_null() {
                self.usage = usage_of(&chunk["usage"]);
                if !self.wants_usage {
                    if usage_only {
                        continue;
                    }
                    chunk["usage"] = Value::Null;
                }
            }
            chunk["model"] = Value::String(self.model.clone());
            return Some(Event::default().data(chunk.to_string()));
        }
    }

    fn end_with_error(&mut self, message: String) -> Event {
        tracing::warn!(backend = self.backend, error = %message, "relayed stream broke off");
        self.ended = true;
        let error = json!({"error": {"code": ErrorCode::LlmBackendFailed.as_str(), "message": message}});
        Event::default().data(error.to_string())
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        count_tokens(
            &self.backend,
            self.usage.prompt_tokens,
            self.usage.completion_tokens,
        );
        self.meter.llm(&self.backend, &self.usage);
    }
}

fn usage_of(usage: &Value) -> TokenUsage {
    let count = |field: &str| usage[field].as_u64().unwrap_or(0) as usize;
    TokenUsage {
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
    }
}

/// The backend's own 4xx for the client's request keeps its status; anything else is a 503.
fn refused(backend: &str, error: LlmError) -> ApiError {
    let callers = error.blame() == Blame::Caller;
    match error {
        LlmError::Remote {
            status: Some(status),
            message,
            ..
        } if callers => ApiError::BackendRejected {
            backend: backend.to_string(),
            status,
            message,
        },
        other => {
            let message = format!("backend `{backend}` did not answer ({other})");
            ApiError::unavailable_from(ErrorCode::LlmUnavailable, message, other)
        }
    }
}
