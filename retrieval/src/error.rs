use thiserror::Error;

#[derive(Debug, Error)]
pub enum RetrievalError {
    #[error("embedding model error: {0}")]
    Model(String),
    #[error("dense store error: {0}")]
    Dense(String),
    #[error("keyword store error: {0}")]
    Keyword(String),
    #[error("collection `{0}` does not exist in the store")]
    UnknownCollection(String),
    #[error("the embedding worker has stopped")]
    WorkerGone,
    /// Admission control refused the work: not the model's fault, and worth retrying later.
    #[error(transparent)]
    Overloaded(#[from] ragway_worker::Overloaded),
    /// A guard or budget around the stage stopped the call.
    #[error(transparent)]
    Stopped(#[from] ragway_worker::Stopped),
}

impl From<candle_core::Error> for RetrievalError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(e.to_string())
    }
}

impl From<tantivy::TantivyError> for RetrievalError {
    fn from(e: tantivy::TantivyError) -> Self {
        Self::Keyword(e.to_string())
    }
}

impl From<qdrant_edge::OperationError> for RetrievalError {
    fn from(e: qdrant_edge::OperationError) -> Self {
        Self::Dense(e.to_string())
    }
}
