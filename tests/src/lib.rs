//! Harness for end-to-end tests: starts the real `ragway` binary on a free port with its own data
//! directory, and stops it with SIGTERM like an operator would.

mod scripted_openai;
mod server;

pub use scripted_openai::{Script, ScriptedOpenAi};
pub use server::{models_dir, Server, ServerOptions};

use serde_json::Value;

/// A response's status, `x-ragway-mode` header and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub mode_header: Option<String>,
    pub body: Value,
}

impl Reply {
    pub fn error_code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(Value::as_str)
    }
}
