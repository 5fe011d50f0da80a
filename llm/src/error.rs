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

/// The most of an upstream message a client is shown.
const PUBLIC_MESSAGE_CHARS: usize = 300;

/// An upstream's message as a client may see it: at most 300 characters, with URLs and
/// anything that looks like a key (an `sk-…` token, or a long run of letters and digits)
/// replaced, so that a backend's internal addresses and echoed credentials stay with the operator.
pub fn public_message(said: &str) -> String {
    let words: Vec<String> = said.split(' ').map(public_word).collect();
    let message = words.join(" ");
    match message.char_indices().nth(PUBLIC_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message,
    }
}

fn public_word(word: &str) -> String {
    let bare = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_');
    let lower = bare.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") || word.contains("://") {
        return "[url]".into();
    }
    let keyish = bare.len() >= 24
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && bare.chars().any(|c| c.is_ascii_digit())
        && bare.chars().any(|c| c.is_ascii_alphabetic());
    if keyish || (lower.starts_with("sk-") && bare.len() > 8) {
        return word.replace(bare, "[redacted]");
    }
    word.to_string()
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
    /// `backend` failed without an answer worth retrying (a broken-off or malformed answer, a
    /// client that cannot be built).
    pub fn failed(backend: &str, message: String) -> Self {
        Self::Remote {
            backend: backend.to_string(),
            message,
            retry: Retry::Never,
            status: None,
            upstream: None,
        }
    }

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

    /// The backend cannot serve anyone as the operator configured it: credentials refused (401,
    /// 403), billing (402), or the configured model unknown to it (404; ragway names the model).
    /// The operator's to fix: the request fails over, the backend's breaker is charged, and a
    /// 502 `llm_backend_misconfigured` answers when nothing else could.
    pub fn misconfigured(&self) -> bool {
        matches!(self.status(), Some(401..=404))
    }

    /// The request's own fault, as the backend said, or a prompt too long for a local model. Of
    /// the 4xx: 408 and 429 are the server's state (retried), 401–404 the operator's
    /// ([`LlmError::misconfigured`]); 413 (the body too large for this backend) is a prompt a
    /// larger member may take; every other 4xx (400, 409, 422, ...) is passed on to the caller.
    pub fn refusal(&self) -> Option<Refusal> {
        if let Self::PromptTooLong { .. } = self {
            return Some(Refusal::ContextLength);
        }
        let status = self.status()?;
        if !(400..500).contains(&status) || matches!(status, 401..=404 | 408 | 429) {
            return None;
        }
        if status == 413 {
            return Some(Refusal::ContextLength);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16) -> LlmError {
        LlmError::Remote {
            backend: "b".into(),
            message: format!("HTTP {status}"),
            retry: Retry::Never,
            status: Some(status),
            upstream: None,
        }
    }

    /// docs/CONFIGURATION.md, "Upstream errors": one row each.
    #[test]
    fn every_4xx_has_a_rule() {
        let rule = |status| {
            let error = answered(status);
            (error.misconfigured(), error.refusal())
        };
        assert_eq!(rule(400), (false, Some(Refusal::Invalid)), "400: the caller's");
        for operators in [401, 402, 403, 404] {
            assert_eq!(rule(operators), (true, None), "{operators}: the operator's");
        }
        assert_eq!(rule(408), (false, None), "408: the server's state, retried");
        assert_eq!(rule(409), (false, Some(Refusal::Invalid)), "409: the caller's");
        assert_eq!(
            rule(413),
            (false, Some(Refusal::ContextLength)),
            "413: a larger member may take it"
        );
        assert_eq!(rule(422), (false, Some(Refusal::Invalid)), "422: the caller's");
        assert_eq!(rule(429), (false, None), "429: the server's state, retried");
        assert_eq!(rule(500), (false, None), "5xx: the backend's failure");
    }

    #[test]
    fn a_public_message_keeps_no_urls_or_keys_and_is_capped() {
        let said = "Incorrect API key provided: sk-proj-abc123def456. See https://internal.example/billing?id=7 (token 9f8e7d6c5b4a39281706f5e4d3c2b1a0).";
        assert_eq!(
            public_message(said),
            "Incorrect API key provided: [redacted]. See [url] (token [redacted])."
        );
        let plain = "temperature must be at most 2";
        assert_eq!(public_message(plain), plain);
        let long = "word ".repeat(200);
        assert_eq!(public_message(&long).chars().count(), 301, "300 and an ellipsis");
    }
}
