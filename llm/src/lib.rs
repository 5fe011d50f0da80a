//! Generation: a local candle LLM (SmolLM2 GGUF) and remote OpenAI-compatible backends, behind one
//! [`Generator`] trait, plus the RAG prompt and its citation markers.

mod error;
mod local;
mod prompt;
mod remote;
mod retry_after;

pub use error::{LlmError, Retry};
pub use local::{LocalLlm, LocalLlmOptions};
pub use prompt::{cited_passages, rag_messages, Passage};
pub use remote::{OpenAiBackend, OpenAiBackendOptions};

use async_trait::async_trait;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Writes a chat completion. Implementations: [`LocalLlm`], [`OpenAiBackend`].
#[async_trait]
pub trait Generator: Send + Sync {
    /// The backend's name in config; reported in `stages.llm`.
    fn name(&self) -> &str;
    /// The model it runs.
    fn model(&self) -> &str;
    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError>;
}
