//! Server-Sent Events for streamed answers: ragway's own events on `/query`, OpenAI chunks on
//! `/v1/chat/completions`. The response is sent once the first event is known, so the
//! `x-ragway-mode` header carries the mode of the first event.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::answer_stream::{self, AnswerEvent, StreamJob};
use crate::error::{ApiError, ErrorCode};

/// Starts the job and waits for its first event (`Meta`).
async fn first_event(job: StreamJob) -> Result<(AnswerEvent, mpsc::Receiver<AnswerEvent>), ApiError> {
    let mut events = answer_stream::start(job).await;
    let first = events
        .recv()
        .await
        .ok_or_else(|| ApiError::Internal("the answer stream ended before it began".into()))?;
    Ok((first, events))
}

fn mode_of(event: &AnswerEvent) -> &'static str {
    match event {
        AnswerEvent::Meta { mode, .. }
        | AnswerEvent::Degraded { mode, .. }
        | AnswerEvent::Done { mode, .. } => mode.as_str(),
        AnswerEvent::Delta { .. } => "normal",
    }
}

pub(crate) fn respond(mode: &'static str, stream: impl Stream<Item = Event> + Send + 'static) -> Response {
    let mut response = Sse::new(stream.map(Ok::<Event, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert("x-ragway-mode", HeaderValue::from_static(mode));
    response
}

fn receiver_stream(mut events: mpsc::Receiver<AnswerEvent>) -> impl Stream<Item = AnswerEvent> + Send {
    futures::stream::poll_fn(move |cx| events.poll_recv(cx))
}

fn json_event(name: &'static str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(value)
        .unwrap_or_else(|_| Event::default().comment("unserialisable event"))
}

/// `/query` with `stream: true`: events `meta`, `delta`…, `degraded` (if any), `done`.
pub async fn ragway_events(job: StreamJob) -> Result<Response, ApiError> {
    let (first, events) = first_event(job).await?;
    let mode = mode_of(&first);
    let stream = futures::stream::once(async move { first })
        .chain(receiver_stream(events))
        .map(|event| json_event(event.name(), &event));
    Ok(respond(mode, stream))
}

/// The documents `citations` cite, in citation order, each once: the top-level `citations` of a
/// chat answer, where chat frontends look for sources.
pub fn cited_documents(citations: &[ragway_openapi::Citation]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    citations
        .iter()
        .filter(|c| seen.insert(c.doc_id.as_str()))
        .map(|c| c.doc_id.clone())
        .collect()
}

/// The OpenAI chunk rendering of an answer, with ragway's mode, stages and citations in a
/// `ragway` field of the first chunk (and the mode in any chunk announcing a degradation), the
/// cited documents in the first chunk's top-level `citations`, and the usage in the last chunk
/// before `[DONE]`.
pub async fn openai_chunks(job: StreamJob, model: String, bare_llm: bool) -> Result<Response, ApiError> {
    let (first, events) = first_event(job).await?;
    if bare_llm {
        if let AnswerEvent::Meta { mode, degraded, .. } = &first {
            // A bare chat whose backend never started has nothing to stream: a 503, counted.
            if *mode == ragway_openapi::Mode::Error {
                metrics::counter!("ragway_answers_total", "mode" => mode.as_str()).increment(1);
                let reasons: Vec<String> = degraded
                    .iter()
                    .map(|d| format!("{}: {:?}", d.stage, d.reason))
                    .collect();
                return Err(ApiError::Unavailable {
                    code: ErrorCode::LlmUnavailable,
                    message: format!("backend `{model}` did not answer ({})", reasons.join(", ")),
                });
            }
        }
    }
    let mode = mode_of(&first);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = format!("chatcmpl-ragway-{created}");
    let chunk = move |choices: Value, extra: Vec<(&str, Value)>| {
        let mut chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
        });
        if let Some(map) = chunk.as_object_mut() {
            map.extend(extra.into_iter().map(|(key, value)| (key.to_string(), value)));
        }
        Event::default().data(chunk.to_string())
    };
    let stream = futures::stream::once(async move { first })
        .chain(receiver_stream(events))
        .map(move |event| match event {
            AnswerEvent::Meta {
                mode,
                degraded,
                citations,
                stages,
                ..
            } => {
                let first = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]);
                if bare_llm {
                    return chunk(first, Vec::new());
                }
                let sources = cited_documents(&citations);
                let info = json!({"mode": mode, "degraded": degraded, "stages": stages, "citations": citations});
                chunk(first, vec![("citations", json!(sources)), ("ragway", info)])
            }
            AnswerEvent::Delta { text } => {
                chunk(json!([{"index": 0, "delta": {"content": text}, "finish_reason": null}]), Vec::new())
            }
            // A bare chat's only backend broke off: say so as OpenAI streams say errors.
            AnswerEvent::Degraded { degradation, mode } if bare_llm && mode == ragway_openapi::Mode::Error => {
                let message = format!("backend `{}` broke off the answer ({:?})", degradation.stage, degradation.reason);
                Event::default().data(json!({"error": {"code": ErrorCode::LlmFailed.as_str(), "message": message}}).to_string())
            }
            AnswerEvent::Degraded { degradation, mode } => {
                chunk(json!([]), vec![("ragway", json!({"mode": mode, "degraded": [degradation]}))])
            }
            AnswerEvent::Done { usage, .. } => {
                let usage = json!({
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                });
                chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]), vec![("usage", usage)])
            }
        })
        .chain(futures::stream::once(async { Event::default().data("[DONE]") }));
    Ok(respond(mode, stream))
}
