//! Cross-encoder reranking: scores (query, passage) pairs jointly, which orders passages better
//! than comparing separately computed embeddings.

mod cross_encoder;
mod error;

pub use cross_encoder::{CrossEncoder, CrossEncoderOptions};
pub use error::RerankError;
pub use ragway_worker::onnx::OnnxRuntime;

use async_trait::async_trait;

/// Scores passages for a query; higher means more relevant. Scores come back in passage order.
#[async_trait]
pub trait Reranker: Send + Sync {
    fn model_id(&self) -> &str;
    /// What runs the model: `candle` or `onnx`.
    fn backend(&self) -> &str;
    async fn score(&self, query: String, passages: Vec<String>) -> Result<Vec<f32>, RerankError>;
}
