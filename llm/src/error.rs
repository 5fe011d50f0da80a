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
        /// The backend's own error object, when it sent one.
        upstream: Option<Box<UpstreamError>>,
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

/// An OpenAI-shaped error object as the backend wrote it (`{"error": {...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamError {
    pub message: String,
    pub kind: Option<String>,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// What a backend's refusal of a request (a 4xx that is the request's fault) says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The prompt does not fit the model's window: a model with a larger one may take it.
    ContextLength,
    /// A content filter refused it: no backend should be asked again.
    ContentFilter,
    /// Anything else the request got wrong (a bad parameter, an unknown model).
    Invalid,
}

impl LlmError {
    /// The HTTP status the backend answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Remote { status, .. } => *status,
            _ => None,
        }
    }

    /// The backend's own error object, if it sent one.
    pub fn upstream(&self) -> Option<&UpstreamError> {
        match self {
            Self::Remote { upstream, .. } => upstream.as_deref(),
            _ => None,
        }
    }

    /// The connection failed before any answer (refused, reset before the response headers).
    pub fn connection_failed(&self) -> bool {
        matches!(
            self,
            Self::Remote {
                status: None,
                retry: Retry::Backoff,
                ..
            }
        )
    }

    /// The operator's credentials were refused (401, 403): the backend cannot serve anyone.
    pub fn misconfigured(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// The request's own fault, as the backend said (a 4xx other than 401, 403, 408 and 429),
    /// or a prompt too long for a local model.
    pub fn refusal(&self) -> Option<Refusal> {
        if let Self::PromptTooLong { .. } = self {
            return Some(Refusal::ContextLength);
        }
        let status = self.status()?;
        if !(400..500).contains(&status) || matches!(status, 401 | 403 | 408 | 429) {
            return None;
        }
        let upstream = self.upstream().cloned().unwrap_or_default();
        let said = |words: &[&str]| {
            let fields = [upstream.code.as_deref(), upstream.kind.as_deref()];
            fields
                .iter()
                .flatten()
                .any(|f| words.iter().any(|w| f.contains(w)))
        };
        let message = upstream.message.to_ascii_lowercase();
        if said(&["content_filter", "content_policy"]) || message.contains("content filter") {
            Some(Refusal::ContentFilter)
        } else if said(&["context_length"]) || message.contains("maximum context length") {
            Some(Refusal::ContextLength)
        } else {
            Some(Refusal::Invalid)
        }
    }

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
