use thiserror::Error;

#[derive(Debug, Error)]
pub enum RerankError {
    #[error("cross-encoder model error: {0}")]
    Model(String),
    #[error("the reranker worker has stopped")]
    WorkerGone,
    /// Admission control refused the work: not the model's fault.
    #[error(transparent)]
    Overloaded(#[from] ragway_worker::Overloaded),
    /// A guard or budget around the stage stopped the call.
    #[error(transparent)]
    Stopped(#[from] ragway_worker::Stopped),
}

impl From<candle_core::Error> for RerankError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(e.to_string())
    }
}
