//! A streamed chat completion read only as fast as its consumer takes it. async-openai reads a
//! stream into an unbounded channel on a task of its own, whatever the consumer does: behind a
//! client that stops reading, a fast backend's answer piled up in memory (2.9 GiB in 40 s). Read
//! here instead, the response body is pulled chunk by chunk as events are asked for, so a slow
//! consumer slows the backend through TCP, and dropping the stream closes the connection.

use futures::{Stream, StreamExt};
use serde::Serialize;

use crate::{LlmError, Retry, UpstreamError};

/// The most of a failed response's body read for its error object.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The most of a whole answer read: a larger one is the backend's error.
const MAX_ANSWER_BODY: usize = 16 * 1024 * 1024;

/// Where a backend's chat completions are asked for: streamed, and whole when relayed (the
/// client's body as it came, the backend's answer as it wrote it).
pub(crate) struct Endpoint {
    pub(crate) http: reqwest::Client,
    /// `<base_url>/chat/completions`, parsed once.
    pub(crate) url: reqwest::Url,
    pub(crate) api_key: String,
}

impl Endpoint {
    pub(crate) fn new(http: reqwest::Client, base_url: &str, api_key: String) -> Result<Self, String> {
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let url = reqwest::Url::parse(&url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        Ok(Self { http, url, api_key })
    }

    fn post(&self, body: &impl Serialize) -> reqwest::RequestBuilder {
        let request = self.http.post(self.url.clone()).json(body);
        match self.api_key.is_empty() {
            true => request,
            false => request.bearer_auth(&self.api_key),
        }
    }

    /// Sends `body` and reads the whole answer (at most [`MAX_ANSWER_BODY`]) as JSON.
    pub(crate) async fn complete(
        &self,
        backend: &str,
        body: &impl Serialize,
    ) -> Result<serde_json::Value, LlmError> {
        let mut response = self.post(body).send().await.map_err(|e| transport(backend, &e))?;
        if !response.status().is_success() {
            return Err(refused(backend, response).await);
        }
        let broke = |message: String| LlmError::failed(backend, message);
        let mut answer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| broke(format!("the answer broke off: {e}")))?
        {
            if answer.len() + chunk.len() > MAX_ANSWER_BODY {
                return Err(broke(format!("the answer is over {MAX_ANSWER_BODY} bytes")));
            }
            answer.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&answer).map_err(|e| broke(format!("the answer is not JSON: {e}")))
    }

    /// Sends `body` and yields the data of each event of the answer as it is pulled (not the
    /// closing `[DONE]`): an error answer or a transport failure is the backend's error.
    pub(crate) async fn stream(
        &self,
        backend: &str,
        body: &impl Serialize,
    ) -> Result<impl Stream<Item = Result<String, LlmError>> + Send + 'static, LlmError> {
        let response = self.post(body).send().await.map_err(|e| transport(backend, &e))?;
        if !response.status().is_success() {
            return Err(refused(backend, response).await);
        }
        let name = backend.to_string();
        let events = eventsource_stream::EventStream::new(response.bytes_stream());
        Ok(events
            .take_while(|event| futures::future::ready(!matches!(event, Ok(e) if e.data == "[DONE]")))
            .filter_map(move |event| {
                futures::future::ready(match event {
                    Ok(event) if event.event == "keepalive" => None,
                    Ok(event) => Some(Ok(event.data)),
                    Err(e) => Some(Err(LlmError::failed(&name, format!("the stream broke off: {e}")))),
                })
            }))
    }
}

/// A request that got no answer: worth retrying when the connection failed before the response
/// (refused, reset before the headers), not when it broke later.
fn transport(backend: &str, error: &reqwest::Error) -> LlmError {
    let before_answer = error.status().is_none() && (error.is_connect() || error.is_request());
    LlmError::Remote {
        backend: backend.to_string(),
        message: error.to_string(),
        retry: if before_answer {
            Retry::Backoff
        } else {
            Retry::Never
        },
        status: None,
        upstream: None,
    }
}

/// A backend's error answer: its status, its error object when it sent one, and when to retry
/// (429 and 5xx; after the `Retry-After` of a 429 or 503 when it sent one).
async fn refused(backend: &str, mut response: reqwest::Response) -> LlmError {
    let status = response.status().as_u16();
    let retry_after = crate::retry_after::retry_after(response.headers());
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY);
    let upstream = upstream_error(&body);
    let retry = match (status, retry_after) {
        (429 | 503, Some(after)) => Retry::After(after),
        (429, None) | (500..=599, _) => Retry::Backoff,
        _ => Retry::Never,
    };
    let said = match &upstream {
        Some(error) => error.message.clone(),
        None => String::from_utf8_lossy(&body).chars().take(200).collect(),
    };
    LlmError::Remote {
        backend: backend.to_string(),
        message: format!("HTTP {status}: {said}"),
        retry,
        status: Some(status),
        upstream: upstream.map(Box::new),
    }
}

/// The OpenAI-shaped error object of a failed response's body (`{"error": {...}}`).
fn upstream_error(body: &[u8]) -> Option<UpstreamError> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let text = |field: &str| match &error[field] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Some(UpstreamError {
        message: text("message").unwrap_or_default(),
        kind: text("type"),
        param: text("param"),
        code: text("code"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_gives_its_openai_error_object() {
        let body = br#"{"error": {"message": "no such model", "type": "invalid_request_error", "param": "model", "code": 404}}"#;
        let error = upstream_error(body);
        assert_eq!(
            error,
            Some(UpstreamError {
                message: "no such model".into(),
                kind: Some("invalid_request_error".into()),
                param: Some("model".into()),
                code: Some("404".into()),
            })
        );
        assert_eq!(upstream_error(b"<html>bad gateway</html>"), None);
    }
}
