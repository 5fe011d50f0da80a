//! A relayed chat as the engine's events: a request that carries what only a remote backend
//! interprets (tools, response formats, images, `n`...) goes to it as the client wrote it, within
//! the tenant's budget and the gateway's caps, and its chunks come back as [`AnswerEvent::Relayed`]
//! between the usual `meta` and `done`. Like every answer, what the backend really produced is
//! charged — its own counts when it sends them, else the streamed text counted with its tokenizer,
//! also when the stream breaks off or the client leaves — and the mode is derived from what ran.

use std::sync::Arc;
use std::time::Instant;

use super::outbox::Outbox;
use futures::StreamExt;
use ragway_llm::{ChatMessage, ChunkStream, GenerationRequest, Role};
use ragway_openapi::{Degradation, DegradationReason, TokenUsage};
use serde_json::Value;

use super::budget::{self, Spend};
use super::drive::Part;
use super::{check_chat_budget, done, unanswered, Answer, AnswerEvent, Ask, Engine, Source};
use crate::answer::pool::{count_tokens, Backend, Route};
use crate::answer::report::{Authorship, Report};
use crate::error::{ApiError, ErrorCode};
use crate::resilience::guard::StageError;
use crate::tenancy::quota::StreamPermit;
use crate::tenancy::Choice;

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
pub(super) fn wanted(body: &Value) -> bool {
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

/// What a relayed request may ask of a backend: no more than any other chat may.
#[derive(Debug, Clone, Copy)]
pub struct ChatCaps {
    /// `generation.max_choices`: the most choices (`n`) one request may ask for.
    pub max_choices: usize,
    /// `generation.max_tokens`: the limit sent when the client set none.
    pub max_tokens: usize,
}

impl Engine {
    /// A relayed chat (`body`) with the model of `route` (a group or one backend): refused
    /// before any work when the tenant's LLM budget is spent or `n` is out of range; then the
    /// first of its backends that relays and takes it (a backend's own refusal of the request
    /// keeps its status and code). A whole answer is all there once it returns, a stream's first
    /// chunk has come.
    pub(super) async fn relayed(&self, ask: Ask, route: Route, body: Value) -> Result<Answer, ApiError> {
        let Ask {
            source: Source::Chat { model, .. },
            ctx,
            meter,
            permit,
            ..
        } = ask
        else {
            return Err(ApiError::Internal("only a plain chat is relayed".into()));
        };
        let pool = &self.llm;
        check_chat_budget(&ctx.allowance, &meter, &route)?;
        let body = capped(body, self.caps)?;
        let mut choice = ctx.allowance.llm.clone();
        let mut report = Report::bare_llm();
        let most = GenerationRequest {
            messages: prompt_of(&body),
            max_tokens: completion_ceiling(&body, self.caps),
            temperature: 0.0,
            prefix_scope: None,
        };
        let meter = match budget::reserve(pool, &meter, &route, &choice, &most, false).await {
            Ok(Spend::Held(meter)) => meter,
            Ok(Spend::Cheaper(cheaper)) => {
                choice = Choice::Only(cheaper);
                report.degrade("llm", DegradationReason::Quota);
                meter
            }
            Err(over) => return Err(over.refusal()),
        };
        let started = Instant::now();
        if body["stream"] == true {
            let (backend, chunks) = pool
                .relay_stream(&route, &body, &ctx.deadline, &mut report, &choice)
                .await
                .map_err(|u| unanswered(&model, u, &report))?;
            // A part is charged from when the backend took the request on.
            let relaying = Relaying {
                part: Part::relayed(backend, most.messages, meter),
                report,
                started,
            };
            return Ok(Answer::driven(self.stall, |events| {
                relaying.drive(chunks, events, permit)
            }));
        }
        let (backend, answer) = pool
            .relay(&route, &body, &ctx.deadline, &mut report, &choice)
            .await
            .map_err(|u| unanswered(&model, u, &report))?;
        let part = Part::relayed(backend, most.messages, meter);
        Ok(whole(answer, part, report, started))
    }
}

/// A whole relayed answer: `meta`, the backend's completion, `done`; charged at once.
fn whole(answer: Value, mut part: Part, mut report: Report, started: Instant) -> Answer {
    let choices = answer["choices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for choice in choices {
        part.text
            .push_str(choice["message"]["content"].as_str().unwrap_or_default());
    }
    take_usage(&mut part, &answer["usage"]);
    report.record_time("llm", started);
    let usage = part.usage();
    drop(part); // charged
    let done = done(&report, usage);
    Answer::ready(vec![meta(&report), AnswerEvent::Relayed { chunk: answer }, done])
}

/// A relayed stream in progress.
struct Relaying {
    part: Part,
    /// What ran so far (the backends that failed before this one answered).
    report: Report,
    started: Instant,
}

impl Relaying {
    /// The backend's chunks as they come; a backend that breaks off, stalls or runs out of time
    /// (its guard ends the chunks then) is announced with a `degraded` event and mode `error`.
    async fn drive(mut self, mut chunks: ChunkStream, events: Outbox, _permit: Option<StreamPermit>) {
        let mut report = std::mem::take(&mut self.report);
        if events.send(meta(&report)).await.is_err() {
            return;
        }
        while let Some(next) = chunks.next().await {
            let chunk = match next {
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::warn!(backend = self.part.backend, %error, "relayed stream broke off");
                    let degradation = Degradation {
                        stage: format!("llm:{}", self.part.backend),
                        reason: error.reason(),
                    };
                    report.degrade(degradation.stage.clone(), degradation.reason);
                    report.authorship = Some(Authorship::Extractive);
                    let mode = report.mode();
                    if events
                        .send(AnswerEvent::Degraded { degradation, mode })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    break;
                }
            };
            for choice in chunk["choices"].as_array().map(Vec::as_slice).unwrap_or_default() {
                self.part
                    .text
                    .push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            }
            take_usage(&mut self.part, &chunk["usage"]);
            if events.send(AnswerEvent::Relayed { chunk }).await.is_err() {
                return; // dropping the chunks stops the backend; the part is charged
            }
        }
        report.record_time("llm", self.started);
        report.finish();
        let usage = self.part.usage();
        let _ = events.send(done(&report, usage)).await;
    }
}

fn meta(report: &Report) -> AnswerEvent {
    AnswerEvent::Meta {
        mode: report.mode(),
        degraded: report.degraded(),
        stages: report.stages(),
        citations: Vec::new(),
        cache: None,
        next_probe: report.next_probe,
    }
}

/// The backend's own counts, when a chunk (or the whole answer) carries them.
fn take_usage(part: &mut Part, usage: &Value) {
    if usage.is_null() {
        return;
    }
    let count = |field: &str| usage[field].as_u64().unwrap_or(0) as usize;
    let reported = TokenUsage {
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
    };
    count_tokens(&part.backend, reported.prompt_tokens, reported.completion_tokens);
    part.reported = Some(reported);
}

/// The text of a relayed request's messages, to count its prompt when the backend sends no
/// counts (parts that are not text count for nothing).
fn prompt_of(body: &Value) -> Vec<ChatMessage> {
    let messages = body["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let text = |content: &Value| match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    let role = |message: &Value| match message["role"].as_str() {
        Some("system" | "developer") => Role::System,
        Some("assistant") => Role::Assistant,
        _ => Role::User,
    };
    messages
        .iter()
        .map(|m| ChatMessage::new(role(m), text(&m["content"])))
        .collect()
}

/// The most tokens a relayed body lets the backend write: its limit for each of its `n` choices
/// (as [`capped`] left it).
fn completion_ceiling(body: &Value, caps: ChatCaps) -> usize {
    let limit = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|field| body[*field].as_u64())
        .map_or(caps.max_tokens, |n| n as usize);
    let choices = body["n"].as_u64().unwrap_or(1).max(1) as usize;
    limit.saturating_mul(choices)
}

/// The body as it may be relayed: at most `max_choices` choices (`n`), and `max_tokens` set to
/// the configured default when the client set no limit (the limit it set was checked against
/// `generation.max_tokens_cap` with the rest of the request).
pub fn capped(mut body: Value, caps: ChatCaps) -> Result<Value, ApiError> {
    let n = &body["n"];
    if !n.is_null() {
        let max = caps.max_choices as u64;
        if !n.as_u64().is_some_and(|n| (1..=max).contains(&n)) {
            return Err(ApiError::invalid(
                ErrorCode::NOutOfRange,
                format!("n = {n} is out of range: use 1 to {max} (generation.max_choices)"),
            ));
        }
    }
    if let Some(fields) = body.as_object_mut() {
        fields.remove("llm"); // ragway's own field, never a backend's
    }
    let limited = ["max_tokens", "max_completion_tokens"]
        .iter()
        .any(|field| !body[*field].is_null());
    if let (false, Some(fields)) = (limited, body.as_object_mut()) {
        fields.insert("max_tokens".into(), Value::from(caps.max_tokens));
    }
    Ok(body)
}

impl Part {
    /// The part `backend` writes of a relayed answer to `prompt`.
    fn relayed(backend: &Backend, prompt: Vec<ChatMessage>, meter: crate::tenancy::Meter) -> Self {
        Self::of(
            backend.name(),
            prompt,
            Some(Arc::clone(&backend.generator) as Arc<dyn ragway_llm::Generator>),
            meter,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CAPS: ChatCaps = ChatCaps {
        max_choices: 4,
        max_tokens: 40,
    };

    #[test]
    fn a_relayed_body_gets_the_default_limit_and_a_bounded_n() -> Result<(), ApiError> {
        let body = capped(json!({"model": "m", "n": 2}), CAPS)?;
        assert_eq!(body["max_tokens"], 40, "no limit set: the default is sent");
        let own = capped(json!({"max_completion_tokens": 7, "llm": "group"}), CAPS)?;
        assert!(own["llm"].is_null(), "ragway's own field is not relayed: {own}");
        assert!(own["max_tokens"].is_null(), "the client's own limit stays: {own}");
        for n in [json!(0), json!(5), json!(64), json!("2")] {
            let refused = capped(json!({ "n": n }), CAPS).err().map(|e| e.code());
            assert_eq!(refused, Some(ErrorCode::NOutOfRange), "n = {n}");
        }
        Ok(())
    }

    #[test]
    fn a_relayed_body_may_write_its_limit_for_each_choice() -> Result<(), ApiError> {
        let default = capped(json!({"model": "m"}), CAPS)?;
        assert_eq!(completion_ceiling(&default, CAPS), 40);
        let own = json!({"max_completion_tokens": 7, "max_tokens": 99, "n": 3});
        assert_eq!(
            completion_ceiling(&own, CAPS),
            21,
            "the newer field wins, for each of n"
        );
        Ok(())
    }

    #[test]
    fn a_relayed_prompt_is_counted_from_its_text() {
        let body = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c"},
        ]});
        let prompt = prompt_of(&body);
        let texts: Vec<&str> = prompt.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["be brief", "look", "42"]);
        assert_eq!(prompt[0].role, Role::System);
    }
}
