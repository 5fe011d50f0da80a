//! A fast OpenAI-compatible upstream for benchmarks, named as such: `/v1/chat/completions` answers
//! at once with one fixed completion (or, streamed, three chunks, a usage chunk and `[DONE]`),
//! on keep-alive connections. It stands in for a provider so that what is measured is the
//! gateway in front of it (scripts/bench/llm-overhead.sh).
//!   fast-openai 127.0.0.1:9100

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

const WORDS: [&str; 3] = ["Nine ", "bars ", "[1]."];

async fn chat(Json(request): Json<Value>) -> Response {
    let model = request["model"].clone();
    if request["stream"] != true {
        let body = json!({
            "id": "chatcmpl-fast", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": WORDS.concat()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        });
        return Json(body).into_response();
    }
    let chunk = |choices: Value, usage: Value| {
        let body = json!({"id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": choices, "usage": usage});
        format!("data: {body}\n\n")
    };
    let mut events: String = WORDS
        .iter()
        .map(|w| {
            chunk(
                json!([{"index": 0, "delta": {"content": w}, "finish_reason": null}]),
                Value::Null,
            )
        })
        .collect();
    events.push_str(&chunk(
        json!([]),
        json!({"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}),
    ));
    events.push_str("data: [DONE]\n\n");
    ([(CONTENT_TYPE, "text/event-stream")], events).into_response()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9100".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("fast-openai listening on {}", listener.local_addr()?);
    let app = Router::new().route("/v1/chat/completions", post(chat));
    axum::serve(listener, app).await?;
    Ok(())
}
