use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// OpenAI-compatible `POST /v1/embeddings`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingsRequest {
    pub input: EmbeddingInput,
    /// Accepted for compatibility; the configured embedder always answers.
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (default) or `base64` (the vector's little-endian f32 bytes, as OpenAI's).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted when it equals the model's dimension (vectors cannot be shortened).
    #[serde(default)]
    pub dimensions: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

impl EmbeddingInput {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(text) => vec![text],
            Self::Many(texts) => texts,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: String,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: String,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

/// Floats, or a base64 string (the little-endian f32 bytes) with `encoding_format: "base64"`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}
