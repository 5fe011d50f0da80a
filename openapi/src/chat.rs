use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{CacheInfo, Citation, Degradation, Mode};

/// OpenAI-compatible `POST /v1/chat/completions`. `model` names a collection (RAG over it: the
/// last user message is the question) or an LLM backend of the pool (plain chat). Other fields
/// of the OpenAI API (`tools`, `response_format`, `stop`, `seed`, ...) are passed through unchanged
/// to a remote backend named as `model`; elsewhere those that change what an answer is (`tools`,
/// `tool_choice`, a non-text `response_format`, `logprobs`, ...) are refused with 400
/// `unsupported_parameter` and sampling hints are ignored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessageIn>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Choices to generate: 1 (more is a 400 `unsupported_parameter`, except in plain chat with a
    /// remote backend, which gets the request as sent within `generation.max_choices`: more is a
    /// 400 `n_out_of_range`).
    #[serde(default)]
    pub n: Option<u32>,
    /// At most `generation.max_tokens_cap`; `generation.max_tokens` when absent (also for a
    /// relayed request, which is sent with it). A prompt that with it does not fit the model's
    /// context window is a 400 `context_length_exceeded`.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f64>,
    /// ragway's own: for a chat over a collection (`model` names one), the model group or LLM
    /// backend that writes the answer (every backend by priority when absent); ignored in plain
    /// chat, and never sent to a backend.
    #[serde(default)]
    pub llm: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    /// `system` (or `developer`), `user` or `assistant`.
    pub role: String,
    /// A string, or a list of parts of which only `{"type": "text", "text": ...}` is supported;
    /// `null` (an assistant turn that only called tools) counts as empty.
    #[serde(default)]
    pub content: Option<MessageContent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ContentPart {
    /// Only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: ChatUsage,
    /// The answer's sources (document ids, in citation order), where chat frontends look for
    /// them (RAG models only; in a stream, in the first chunk).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citations: Vec<String>,
    /// How ragway answered (RAG models only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ragway: Option<RagwayAnswerInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub finish_reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatMessageOut {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct ChatUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RagwayAnswerInfo {
    pub mode: Mode,
    pub degraded: Vec<Degradation>,
    /// What each stage did (`rewrite`: how the search question was made from the conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<crate::Stages>,
    #[serde(default)]
    pub citations: Vec<Citation>,
    /// Null when no cache layer served this answer.
    #[serde(default)]
    pub cache: Option<CacheInfo>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// Always `model`.
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// `collection` (RAG), `group` (a model group: its backends in fallback order) or `llm` (a
    /// backend of the pool).
    pub ragway_kind: String,
}
