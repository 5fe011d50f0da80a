use std::time::Duration;

use thiserror::Error;

/// Whether a failed call may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Never,
    /// Transient (connection refused, 5xx, 429 without a hint): back off and retry.
    Backoff,
    /// The server said when (`Retry-After`).
    After(Duration),
}

#[derive(Debug, Error)]
pub enum LlmError {
    #[error("local model error: {0}")]
    Model(String),
    #[error(
        "prompt of {prompt} tokens leaves no room for {max_tokens} new tokens in a {context}-token context"
    )]
    PromptTooLong {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("the local model worker has stopped")]
    WorkerGone,
    #[error("remote backend `{backend}` failed: {message}")]
    Remote {
        backend: String,
        message: String,
        retry: Retry,
        /// The HTTP status, when the backend answered with one.
        status: Option<u16>,
    },
    /// Admission control refused the work: not the model's fault.
    #[error(transparent)]
    Overloaded(#[from] ragway_worker::Overloaded),
    #[error("remote backend `{backend}` returned no text")]
    EmptyResponse { backend: String },
    /// A guard around the backend stopped the call (breaker open, timeout, deadline, stall).
    #[error(transparent)]
    Stopped(#[from] ragway_worker::Stopped),
}

impl LlmError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Model(_) | Self::WorkerGone => "llm_failed",
            Self::PromptTooLong { .. } => "prompt_too_long",
            Self::Remote { .. } | Self::EmptyResponse { .. } => "llm_backend_failed",
            Self::Overloaded(_) => "overloaded",
            Self::Stopped(_) => "llm_unavailable",
        }
    }
}

impl LlmError {
    pub fn retry(&self) -> Retry {
        match self {
            Self::Remote { retry, .. } => *retry,
            Self::Model(_)
            | Self::PromptTooLong { .. }
            | Self::WorkerGone
            | Self::EmptyResponse { .. }
            | Self::Overloaded(_)
            | Self::Stopped(_) => Retry::Never,
        }
    }
}

impl From<candle_core::Error> for LlmError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(e.to_string())
    }
}
