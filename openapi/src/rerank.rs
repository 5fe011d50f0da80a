use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/rerank`, the shape Cohere, Jina and text-embeddings-inference clients send.
/// `POST /v1/rerank` (also `/v2/rerank`): Cohere's, Jina's and TEI's shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    /// Any name: the configured reranker serves it, and the answer's `model` says which ran.
    #[serde(default)]
    pub model: Option<String>,
    pub query: String,
    /// Texts, or objects with a `text` (Cohere's v1 shape).
    pub documents: Vec<RerankInput>,
    #[serde(default)]
    pub top_n: Option<usize>,
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// Cohere's; accepted, and bounded by the reranker's own window (each query and document pair
    /// is cut to it).
    #[serde(default)]
    pub max_tokens_per_doc: Option<usize>,
    /// Cohere's v1 name for the same.
    #[serde(default)]
    pub max_chunks_per_doc: Option<usize>,
}

/// One document to rerank: its text, or an object holding it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RerankInput {
    Text(String),
    Object(RerankDocument),
}

impl RerankInput {
    pub fn into_text(self) -> String {
        match self {
            Self::Text(text) => text,
            Self::Object(document) => document.text,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RerankResponse {
    pub model: String,
    /// Best first.
    pub results: Vec<RerankResult>,
    pub usage: RerankUsage,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RerankResult {
    /// The document's position in the request.
    pub index: usize,
    /// The sigmoid of the cross-encoder's relevance logit: 0 to 1, higher is more relevant.
    pub relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<RerankDocument>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RerankDocument {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RerankUsage {
    /// Tokens of every (query, document) pair.
    pub total_tokens: usize,
}
