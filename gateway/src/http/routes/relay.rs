//! A relayed plain chat as the client gets it: the backend's answer as it wrote it (tool calls
//! included, and its own `model`, so the client sees which model answered), the backend named in
//! `x-ragway-backend`. The engine decides what is relayed and relays it (`answer::engine::relay`:
//! the backend's guard, retries, caps, the tenant's budget, charging, the mode); this module only
//! shapes the relayed events. A 4xx the backend answers for the client's parameters is passed
//! back with its status and does not count against the backend's breaker.

use axum::response::sse::Event;
use axum::response::Response;
use futures::StreamExt;
use ragway_openapi::Mode;
use serde_json::Value;

use crate::answer::engine::{Answer, AnswerEvent, Answering};
use crate::error::ApiError;
use crate::http::shape::{self, answer_response, StreamError};

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
