//! Cross-encoder reranking: scores (query, passage) pairs jointly, which orders passages better
//! than comparing separately computed embeddings.

mod cross_encoder;
mod error;

pub use cross_encoder::{CrossEncoder, CrossEncoderOptions};
pub use error::RerankError;
pub use ragway_worker::onnx::OnnxRuntime;

use async_trait::async_trait;

/// One score per passage, in passage order, and the tokens the (query, passage) pairs took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    pub scores: Vec<f32>,
    pub tokens: usize,
}

/// Scores passages for a query; higher means more relevant. Scores come back in passage order.
#[async_trait]
pub trait Reranker: Send + Sync {
    fn model_id(&self) -> &str;
    /// What runs the model: `candle` or `onnx`.
    fn backend(&self) -> &str;
    async fn score(&self, query: String, passages: Vec<String>) -> Result<Scores, RerankError>;
}
