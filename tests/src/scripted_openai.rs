//! A scripted stand-in for an OpenAI-compatible chat server, named as such: it answers
//! `/v1/chat/completions` the way its [`Script`] says, so that tests can make a remote LLM backend
//! fail on cue. It is used only for failure shapes no real server here can be made to produce.
//! Every response closes its connection, so each request arrives on a new one and a scripted
//! reset ([`Script::ResetBeforeHeaders`]) meets the request it is meant for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub enum Script {
    /// Answer with this text.
    Answer(String),
    /// Fail with this HTTP status.
    Status(u16),
    /// 429 with a `Retry-After` header (seconds) for the next `times` calls, then answer.
    RateLimited {
        retry_after_s: u64,
        times: usize,
        then: String,
    },
    /// Accept the request and never answer.
    Hang,
    /// Answer after a pause (a stream: its first chunk comes after the pause, the rest at once).
    Slow { text: String, delay_ms: u64 },
    /// Fail with this status and this JSON body (an OpenAI-shaped error with its own code).
    Error { status: u16, body: Value },
    /// Reset the next `times` connections (TCP RST) once their request has arrived, before any
    /// response header; then go on as `then`.
    ResetBeforeHeaders { times: usize, then: Box<Script> },
    /// Refuse (400) a request whose last message is the assistant's (a prefill to continue);
    /// answer any other with this text.
    RefusePrefill(String),
    /// Stream `text` word by word with one chunk that is not JSON after the first `after` words.
    MalformedChunk { text: String, after: usize },
    /// Answer with this `chat.completion` body as is (a recorded answer, e.g. with tool calls).
    Json(Value),
    /// Stream these `chat.completion.chunk` bodies as they are, then `[DONE]`.
    Chunks(Vec<Value>),
    /// Stream the first `words` words of `text`, then break the connection (streamed requests).
    BreakAfter { text: String, words: usize },
    /// Stream the first `words` words of `text`, then send nothing more and keep the connection
    /// open (a stalled backend; streamed requests).
    StallAfter { text: String, words: usize },
    /// Stream `words` words as fast as the connection takes them (a fast backend; streamed
    /// requests), then the usage and `[DONE]`.
    Flood { words: usize },
}

/// How a scripted stream ends.
#[derive(Clone, Copy)]
enum End {
    Finish,
    /// A chunk that is not JSON after this many words, then the rest.
    Malformed(usize),
    Break(usize),
    Stall(usize),
}

#[derive(Clone)]
struct Shared {
    script: Arc<Mutex<Script>>,
    calls: Arc<AtomicUsize>,
    resets: Arc<AtomicUsize>,
    last_request: Arc<Mutex<Option<Value>>>,
    /// When each request arrived.
    arrivals: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl Shared {
    /// Whether the script resets this connection (counted down; `then` takes over at zero).
    fn take_reset(&self) -> bool {
        let Ok(mut script) = self.script.lock() else {
            return false;
        };
        let Script::ResetBeforeHeaders { times, then } = &mut *script else {
            return false;
        };
        *times = times.saturating_sub(1);
        if *times == 0 {
            let next = std::mem::replace(then.as_mut(), Script::Status(500));
            *script = next;
        }
        self.resets.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// Accepts connections, resetting those the script says (see [`Shared::take_reset`]).
struct Resetting {
    inner: tokio::net::TcpListener,
    shared: Shared,
}

impl axum::serve::Listener for Resetting {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.inner.accept().await else {
                continue;
            };
            if self.shared.take_reset() {
                tokio::spawn(reset(stream));
                continue;
            }
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Reads the request's head, then resets the connection (SO_LINGER 0: an RST, not a FIN).
async fn reset(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 1 << 20 {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let _ = stream.set_zero_linger();
    drop(stream);
}

pub struct ScriptedOpenAi {
    pub base_url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedOpenAi {
    pub async fn start(script: Script) -> anyhow::Result<Self> {
        let shared = Shared {
            script: Arc::new(Mutex::new(script)),
            calls: Arc::new(AtomicUsize::new(0)),
            resets: Arc::new(AtomicUsize::new(0)),
            last_request: Arc::new(Mutex::new(None)),
            arrivals: Arc::new(Mutex::new(Vec::new())),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .layer(axum::middleware::map_response(close_connection))
            .with_state(shared.clone());
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}/v1", inner.local_addr()?);
        let listener = Resetting {
            inner,
            shared: shared.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base_url,
            shared,
            task,
        })
    }

    pub fn set(&self, script: Script) {
        if let Ok(mut s) = self.shared.script.lock() {
            *s = script;
        }
    }

    /// Requests answered (resets not counted).
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// The pauses between consecutive requests, from the `from`-th request on (0-based).
    pub fn gaps_since(&self, from: usize) -> Vec<std::time::Duration> {
        let arrivals = self.shared.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
        let later = arrivals.get(from..).unwrap_or_default();
        later.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Connections reset before their response.
    pub fn resets(&self) -> usize {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// The last request body the server received.
    pub fn last_request(&self) -> Option<Value> {
        self.shared.last_request.lock().ok().and_then(|r| r.clone())
    }
}

impl Drop for ScriptedOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn close_connection(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

async fn chat(State(shared): State<Shared>, Json(request): Json<Value>) -> Response {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut arrivals) = shared.arrivals.lock() {
        arrivals.push(std::time::Instant::now());
    }
    if let Ok(mut last) = shared.last_request.lock() {
        *last = Some(request.clone());
    }
    let streamed = request.get("stream").and_then(Value::as_bool) == Some(true);
    let script = shared
        .script
        .lock()
        .map(|s| s.clone())
        .unwrap_or(Script::Status(500));
    match script {
        Script::Hang => std::future::pending().await,
        Script::Slow { text, delay_ms } if streamed => {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            sse(&request, &text, End::Finish)
        }
        Script::Error { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(body)).into_response()
        }
        // Taken by the listener: a request that still gets here came on a reused connection.
        Script::ResetBeforeHeaders { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "scripted reset missed: the connection was reused"}})),
        )
            .into_response(),
        Script::MalformedChunk { text, after } => sse(&request, &text, End::Malformed(after)),
        Script::RefusePrefill(_) if continues(&request) => {
            let error = json!({"error": {"message": "assistant prefill is not supported", "type": "invalid_request_error", "code": "invalid_request"}});
            (StatusCode::BAD_REQUEST, Json(error)).into_response()
        }
        Script::RefusePrefill(text) if streamed => sse(&request, &text, End::Finish),
        Script::RefusePrefill(text) => completion(&request, &text),
        Script::Slow { text, delay_ms } => {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            completion(&request, &text)
        }
        Script::RateLimited {
            retry_after_s,
            times,
            then,
        } => {
            if let Ok(mut s) = shared.script.lock() {
                *s = if times > 1 {
                    Script::RateLimited {
                        retry_after_s,
                        times: times - 1,
                        then,
                    }
                } else {
                    Script::Answer(then)
                };
            }
            let body = Json(json!({"error": {"message": "slow down", "type": "rate_limit"}}));
            let mut response = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(retry_after_s));
            response
        }
        Script::Json(body) => Json(body).into_response(),
        Script::Chunks(chunks) => {
            let events = chunks
                .iter()
                .map(|c| format!("data: {c}\n\n"))
                .chain(["data: [DONE]\n\n".to_string()])
                .collect::<String>();
            ([("content-type", "text/event-stream")], events).into_response()
        }
        Script::Answer(text) if streamed => sse(&request, &text, End::Finish),
        Script::BreakAfter { text, words } => sse(&request, &text, End::Break(words)),
        Script::StallAfter { text, words } => sse(&request, &text, End::Stall(words)),
        Script::Flood { words } => flood(&request, words),
        Script::Answer(text) => completion(&request, &text),
        Script::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (
                status,
                Json(json!({"error": {"message": "scripted failure", "type": "server_error"}})),
            )
                .into_response()
        }
    }
}

/// `words` chunks of one word each, made as they are sent, with no pause between them.
fn flood(request: &Value, words: usize) -> Response {
    let model = request.get("model").cloned().unwrap_or(Value::Null);
    let chunk = move |i: usize| {
        let body = match i < words {
            true => {
                json!({"id": "chatcmpl-flood", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": null}]})
            }
            false => {
                json!({"id": "chatcmpl-flood", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": words, "total_tokens": 11 + words}})
            }
        };
        Ok::<_, std::io::Error>(axum::body::Bytes::from(format!("data: {body}\n\n")))
    };
    let done = futures::stream::once(async { Ok(axum::body::Bytes::from("data: [DONE]\n\n")) });
    let body = futures::stream::iter(0..=words).map(chunk).chain(done);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Whether the request's last message is the assistant's: a partial answer to continue.
fn continues(request: &Value) -> bool {
    let last = request["messages"].as_array().and_then(|m| m.last());
    last.is_some_and(|m| m["role"] == "assistant")
}

/// A whole `chat.completion` answering `text`.
fn completion(request: &Value, text: &str) -> Response {
    Json(json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    }))
    .into_response()
}

/// An OpenAI streaming response: one chunk per word, a usage chunk, `[DONE]`; or some words and
/// then a broken connection, or silence.
fn sse(request: &Value, text: &str, end: End) -> Response {
    let model = request.get("model").cloned().unwrap_or(Value::Null);
    let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    let chunk = |delta: Value, usage: Value| {
        let body = json!({
            "id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": if delta.is_null() { json!([]) } else { json!([{"index": 0, "delta": delta, "finish_reason": null}]) },
            "usage": usage,
        });
        Ok::<_, std::io::Error>(axum::body::Bytes::from(format!("data: {body}\n\n")))
    };
    let mut parts = Vec::new();
    let shown = match end {
        End::Finish | End::Malformed(_) => usize::MAX,
        End::Break(n) | End::Stall(n) => n,
    };
    for (i, word) in words.iter().take(shown).enumerate() {
        if matches!(end, End::Malformed(n) if n == i) {
            parts.push(Ok(axum::body::Bytes::from(
                "data: {\"choices\": [{\"delta\": \n\n",
            )));
        }
        parts.push(chunk(json!({"content": word}), Value::Null));
    }
    match end {
        End::Break(_) => parts.push(Err(std::io::Error::other("scripted connection break"))),
        End::Stall(_) => {}
        End::Finish | End::Malformed(_) => {
            parts.push(chunk(Value::Null, json!({"prompt_tokens": 11, "completion_tokens": words.len(), "total_tokens": 11 + words.len()})));
            parts.push(Ok(axum::body::Bytes::from("data: [DONE]\n\n")));
        }
    }
    let stall = matches!(end, End::Stall(_));
    // A short pause between chunks, so a break really happens mid-stream.
    let body = futures::stream::iter(parts)
        .then(|part| async move {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            part
        })
        .chain(futures::stream::once(async move {
            if stall {
                std::future::pending::<()>().await;
            }
            Ok(axum::body::Bytes::new())
        }));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
