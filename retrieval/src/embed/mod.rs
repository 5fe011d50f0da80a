mod bert;
mod remote;

pub use bert::{BertEmbedder, BertEmbedderOptions};
pub use remote::{RemoteEmbedder, RemoteEmbedderOptions};

use async_trait::async_trait;
use ragway_worker::Priority;

use crate::error::RetrievalError;

/// Vectors for a batch of texts, in input order, and the tokens they took.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: usize,
}

/// Turns texts into unit-length vectors.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// Identifies the model; part of the embedding cache key.
    fn model_id(&self) -> &str;
    fn dimension(&self) -> usize;
    /// What runs the model: `candle` or `onnx`.
    fn backend(&self) -> &str;
    /// `priority` picks the worker's lane: queries go before bulk work.
    async fn embed(&self, texts: Vec<String>, priority: Priority) -> Result<Embeddings, RetrievalError>;
}
