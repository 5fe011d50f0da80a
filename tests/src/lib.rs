//! Harness for end-to-end tests: starts the real `ragway` binary on a free port with its own data
//! directory, and stops it with SIGTERM like an operator would.

pub mod bounded;
mod netns;
pub mod python;
mod qdrant;
mod redis;
mod scripted_openai;
mod server;

pub use netns::Namespace;
pub use qdrant::{qdrant_binary, QdrantCluster, QdrantServer};
pub use redis::{RedisSentinels, RedisServer, SENTINEL_MASTER};
pub use scripted_openai::{Script, ScriptedOpenAi};
pub use server::{binary, client, models_dir, Server, ServerOptions};

use serde_json::Value;

/// A response's status, `x-ragway-mode`, `x-ragway-backend` and `Retry-After` headers and JSON
/// body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub mode_header: Option<String>,
    /// The `x-ragway-backend` header: the LLM backend that wrote the answer.
    pub backend_header: Option<String>,
    /// The `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
    pub body: Value,
}

/// One Server-Sent Event: its name (`message` when unnamed) and data.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Splits a complete SSE body into events (comments and keep-alives dropped).
pub fn parse_sse(body: &str) -> Vec<SseEvent> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = "message".to_string();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
                }
            }
            (!data.is_empty()).then(|| SseEvent {
                event,
                data: data.join("\n"),
            })
        })
        .collect()
}

impl Reply {
    pub fn error_code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(Value::as_str)
    }
}

/// Config that turns the answer (L1) and retrieval (L3) caches off, for tests that ask one
/// question again under changed conditions (a fault, a failing backend) and must meet them;
/// tests/tests/e2e/cache.rs tests the caches themselves.
pub const NO_ANSWER_CACHES: &str =
    "[cache.l1]\nttl_s = 3600\nmax_entries = 0\n\n[cache.l3]\nttl_s = 900\nmax_entries = 0\n";

/// The value of one Prometheus sample, e.g. `ragway_answers_total{mode="normal"}`; 0 when absent.
pub fn metric(exposition: &str, sample: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `ragway_answers_total{mode}`: answers given in `mode` so far.
pub async fn answers_in_mode(server: &Server, mode: &str) -> anyhow::Result<f64> {
    let text = server.get_text("/metrics").await?;
    Ok(metric(&text, &format!("ragway_answers_total{{mode=\"{mode}\"}}")))
}
