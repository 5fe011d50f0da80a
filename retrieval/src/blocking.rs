use crate::error::RetrievalError;

/// Runs synchronous store work (Qdrant Edge, tantivy) on tokio's blocking pool. `wrap` turns a
/// failed join (a panic in the work) into the calling store's own error.
pub(crate) async fn run_blocking<T: Send + 'static>(
    wrap: fn(String) -> RetrievalError,
    work: impl FnOnce() -> Result<T, RetrievalError> + Send + 'static,
) -> Result<T, RetrievalError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| wrap(format!("blocking task failed: {e}")))?
}
