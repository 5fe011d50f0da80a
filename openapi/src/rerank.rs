use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/rerank`, the shape Cohere, Jina and text-embeddings-inference clients send.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    /// Optional; when given it must name the configured reranker.
    #[serde(default)]
    pub model: Option<String>,
    pub query: String,
    pub documents: Vec<String>,
    /// Return only the best `top_n` results (default: all).
    #[serde(default)]
    pub top_n: Option<usize>,
    /// Include each document's text in its result (default: false).
    #[serde(default)]
    pub return_documents: Option<bool>,
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
