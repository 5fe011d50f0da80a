//! Generation: a local LLM (a GGUF chat model on llama.cpp) and remote OpenAI-compatible backends, behind one
//! [`Generator`] trait, plus the RAG prompt and its citation markers.

mod error;
mod local;
mod prompt;
mod remote;
mod retry_after;
mod sse;

pub use error::{public_message, LlmError, Refusal, Retry, UpstreamError};
pub use local::{LocalLlm, LocalLlmOptions, LocalLlmStats, PrefixCacheOptions};
pub use prompt::{cited_passages, fit_rag_messages, rag_messages, Fitted, Passage};
pub use remote::{OpenAiBackend, OpenAiBackendOptions};

use std::pin::Pin;

use async_trait::async_trait;
use futures::{Stream, StreamExt};

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
    /// The collection whose passages the prompt holds, if any: a local model's kept prompt
    /// states (L4) of an earlier epoch of it are dropped when a newer one is asked about.
    pub prefix_scope: Option<PrefixScope>,
}

/// A collection as it was when a prompt was made of its passages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixScope {
    /// Names the collection and its generation (a recreated collection is another).
    pub collection: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A piece of a streamed completion.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Text(String),
    /// The last event, with the token counts of the whole completion.
    Done {
        prompt_tokens: usize,
        completion_tokens: usize,
    },
}

pub type TokenStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, LlmError>> + Send>>;

/// The chunks of a relayed stream (`chat.completion.chunk` objects), as the backend sent them.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<serde_json::Value, LlmError>> + Send>>;

/// A backend that takes an OpenAI chat completions body as the client wrote it — with the
/// parameters ragway does not interpret (`tools`, `response_format`, `stop`, `seed`, ...) — and
/// answers in kind. Only `model` (the backend's own) and `stream` are set by the relay; a stream
/// also asks for usage, so that its tokens can be counted.
#[async_trait]
pub trait Relay: Send + Sync {
    /// A `chat.completion` object.
    async fn complete(&self, body: serde_json::Value) -> Result<serde_json::Value, LlmError>;
    /// `chat.completion.chunk` objects.
    async fn stream(&self, body: serde_json::Value) -> Result<ChunkStream, LlmError>;
}

/// Writes a chat completion. Implementations: [`LocalLlm`], [`OpenAiBackend`].
///
/// A conversation whose last message is from the assistant asks for that message to be
/// continued (used to resume an answer on another backend).
#[async_trait]
pub trait Generator: Send + Sync {
    /// The backend's name in config; reported in `stages.llm`.
    fn name(&self) -> &str;
    /// The model it runs.
    fn model(&self) -> &str;
    /// The context window in tokens, when known; grounded prompts are fitted to it.
    fn context_window(&self) -> Option<usize> {
        None
    }
    /// The tokens `messages` take in this model's chat template, when it can count them.
    fn count_tokens(&self, _messages: &[ChatMessage]) -> Option<usize> {
        None
    }
    /// The most bytes of text one token of its tokenizer stands for, when known: a text of `n`
    /// bytes takes at least `n / this` tokens, a bound that costs nothing to compute (a prompt
    /// far too long is refused before it is counted).
    fn longest_token_bytes(&self) -> Option<usize> {
        None
    }
    /// The relay, for a backend that passes OpenAI requests through unchanged.
    fn relay(&self) -> Option<&dyn Relay> {
        None
    }
    /// Streams the completion as it is written.
    async fn stream(&self, request: GenerationRequest) -> Result<TokenStream, LlmError>;

    /// The whole completion at once.
    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError> {
        let mut stream = self.stream(request).await?;
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            match event? {
                StreamEvent::Text(piece) => text.push_str(&piece),
                StreamEvent::Done {
                    prompt_tokens,
                    completion_tokens,
                } => {
                    return Ok(Generation {
                        text: text.trim().to_string(),
                        prompt_tokens,
                        completion_tokens,
                    })
                }
            }
        }
        Err(LlmError::Model(format!(
            "`{}` ended its stream without finishing",
            self.name()
        )))
    }
}
