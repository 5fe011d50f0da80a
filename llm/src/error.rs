use thiserror::Error;

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
    Remote { backend: String, message: String },
    #[error("remote backend `{backend}` returned no text")]
    EmptyResponse { backend: String },
}

impl LlmError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Model(_) | Self::WorkerGone => "llm_failed",
            Self::PromptTooLong { .. } => "prompt_too_long",
            Self::Remote { .. } | Self::EmptyResponse { .. } => "llm_backend_failed",
        }
    }
}

impl From<candle_core::Error> for LlmError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(e.to_string())
    }
}
