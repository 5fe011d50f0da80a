//! A stage behind its guard, as a decorator of the stage's own trait: [`Guarded`] is an
//! [`Embedder`], [`DenseStore`], [`KeywordStore`] or [`Reranker`] whose calls run through a
//! [`Guard`] (breaker, timeout, the request's deadline from [`Deadline::current`], injected
//! faults). What the guard stops comes back in the stage's error type, as
//! [`Stopped`](ragway_worker::Stopped).
//!
//! LLM backends ([`Generator`](ragway_llm::Generator), [`Relay`](ragway_llm::Relay)) are guarded
//! in [`super::guarded_llm`], streams included.
//!
//! Searches and model calls are guarded; a store's writes, flushes and exports are not: a write
//! is never abandoned halfway by a timeout, and ingestion keeps its own durability rules.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ragway_rerank::{RerankError, Reranker, Scores};
use ragway_retrieval::{
    Chunk, DenseStorage, DenseStore, EmbeddedChunk, Embedder, Embeddings, ExportCursor, KeywordStore,
    MetadataFilter, Priority, RetrievalError, ScoredChunk,
};
use ragway_worker::Stopped;

use super::deadline::Deadline;
use super::guard::{Blame, Blamed, Guard};

pub struct Guarded<S: ?Sized> {
    pub(super) inner: Arc<S>,
    pub(super) guard: Arc<Guard>,
    /// The timeout of bulk work (an ingestion batch, a long `/v1/embeddings` request), when it is
    /// not the guard's own. Bulk work running past its timeout is the caller's: never charged
    /// to the breaker ([`Guard::run_blaming`]).
    bulk_timeout: Option<Duration>,
    /// Rerankers: calls with more passages than this are bulk (a query reranks
    /// `retrieval.rerank_candidates`; a `/v1/rerank` may send many more).
    bulk_above: Option<usize>,
    /// How long a stream may wait for its first text and between pieces (LLM backends).
    pub(super) streaming: Option<StreamLimits>,
}

/// The limits on a stream: its first text within `first_text` (instead of the guard's timeout,
/// which then bounds the whole answer from the first text on), each later piece within `idle`.
/// The last backend a request can try waits for its first text up to `patience` (never past
/// the request's deadline) when that is longer than `first_text`.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub first_text: Duration,
    pub idle: Duration,
    pub patience: Duration,
}

impl<S: ?Sized> Guarded<S> {
    pub fn new(inner: Arc<S>, guard: Arc<Guard>) -> Self {
        Self {
            inner,
            guard,
            bulk_timeout: None,
            bulk_above: None,
            streaming: None,
        }
    }

    /// Streams get `limits` (see [`StreamLimits`]).
    pub fn with_stream_limits(mut self, limits: StreamLimits) -> Self {
        self.streaming = Some(limits);
        self
    }

    /// Bulk calls get `timeout` instead of the guard's (a batch embeds many texts).
    pub fn with_bulk_timeout(mut self, timeout: Duration) -> Self {
        self.bulk_timeout = Some(timeout);
        self
    }

    /// Calls with more than `passages` passages are bulk work (rerankers).
    pub fn with_bulk_above(mut self, passages: usize) -> Self {
        self.bulk_above = Some(passages);
        self
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    pub(super) async fn call<T, E, F>(&self, timeout: Duration, call: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: Blamed + From<Stopped>,
    {
        let deadline = Deadline::current();
        let result = self.guard.run_within(&deadline, timeout, call).await;
        result.map_err(|failure| failure.into_error())
    }

    /// As `call`, for bulk work: within the bulk timeout (or only the request's deadline), and a
    /// timeout is not charged to the breaker.
    async fn call_bulk<T, E, F>(&self, call: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: Blamed + From<Stopped>,
    {
        let deadline = Deadline::current();
        let timeout = self.bulk_timeout.unwrap_or(Duration::MAX);
        let result = self
            .guard
            .run_blaming(&deadline, timeout, Blame::Caller, call)
            .await;
        result.map_err(|failure| failure.into_error())
    }
}

#[async_trait]
impl<E: Embedder + ?Sized> Embedder for Guarded<E> {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    async fn embed(&self, texts: Vec<String>, priority: Priority) -> Result<Embeddings, RetrievalError> {
        let embed = self.inner.embed(texts, priority);
        match priority {
            Priority::Interactive => self.call(self.guard.timeout(), embed).await,
            Priority::Bulk => self.call_bulk(embed).await,
        }
    }
}

#[async_trait]
impl<D: DenseStore + ?Sized> DenseStore for Guarded<D> {
    async fn open_collection(&self, collection: &str) -> Result<(), RetrievalError> {
        self.inner.open_collection(collection).await
    }
    async fn open_collection_with(
        &self,
        collection: &str,
        storage: Option<DenseStorage>,
    ) -> Result<(), RetrievalError> {
        self.inner.open_collection_with(collection, storage).await
    }
    async fn drop_collection(&self, collection: &str) -> Result<(), RetrievalError> {
        self.inner.drop_collection(collection).await
    }
    async fn upsert(&self, collection: &str, chunks: Vec<EmbeddedChunk>) -> Result<(), RetrievalError> {
        self.inner.upsert(collection, chunks).await
    }
    async fn delete_documents(&self, collection: &str, doc_ids: Vec<String>) -> Result<(), RetrievalError> {
        self.inner.delete_documents(collection, doc_ids).await
    }
    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        filter: MetadataFilter,
        limit: usize,
    ) -> Result<Vec<ScoredChunk>, RetrievalError> {
        let search = self.inner.search(collection, vector, filter, limit);
        self.call(self.guard.timeout(), search).await
    }
    async fn document_ids(&self, collection: &str) -> Result<HashSet<String>, RetrievalError> {
        self.inner.document_ids(collection).await
    }
    async fn flush(&self, collection: &str) -> Result<(), RetrievalError> {
        self.inner.flush(collection).await
    }
    async fn export_page(
        &self,
        collection: &str,
        from: Option<ExportCursor>,
        limit: usize,
    ) -> Result<(Vec<EmbeddedChunk>, Option<ExportCursor>), RetrievalError> {
        self.inner.export_page(collection, from, limit).await
    }
}

#[async_trait]
impl<K: KeywordStore + ?Sized> KeywordStore for Guarded<K> {
    async fn open_collection(&self, collection: &str) -> Result<(), RetrievalError> {
        self.inner.open_collection(collection).await
    }
    async fn drop_collection(&self, collection: &str) -> Result<(), RetrievalError> {
        self.inner.drop_collection(collection).await
    }
    async fn upsert(&self, collection: &str, chunks: Vec<Chunk>) -> Result<(), RetrievalError> {
        self.inner.upsert(collection, chunks).await
    }
    async fn delete_documents(&self, collection: &str, doc_ids: Vec<String>) -> Result<(), RetrievalError> {
        self.inner.delete_documents(collection, doc_ids).await
    }
    async fn search(
        &self,
        collection: &str,
        query: String,
        filter: MetadataFilter,
        limit: usize,
    ) -> Result<Vec<ScoredChunk>, RetrievalError> {
        let search = self.inner.search(collection, query, filter, limit);
        self.call(self.guard.timeout(), search).await
    }
    async fn document_ids(&self, collection: &str) -> Result<HashSet<String>, RetrievalError> {
        self.inner.document_ids(collection).await
    }
}

#[async_trait]
impl<R: Reranker + ?Sized> Reranker for Guarded<R> {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    async fn score(&self, query: String, passages: Vec<String>) -> Result<Scores, RerankError> {
        let bulk = self.bulk_above.is_some_and(|above| passages.len() > above);
        let score = self.inner.score(query, passages);
        match bulk {
            true => self.call_bulk(score).await,
            false => self.call(self.guard.timeout(), score).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::resilience::breaker::{BreakerSettings, BreakerState};
    use crate::resilience::faults::Faults;

    /// A reranker that fails or hangs as told, and counts its calls.
    struct Flaky {
        hang: bool,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Reranker for Flaky {
        fn model_id(&self) -> &str {
            "flaky"
        }
        fn backend(&self) -> &str {
            "test"
        }
        async fn score(&self, _: String, passages: Vec<String>) -> Result<Scores, RerankError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.hang {
                std::future::pending::<()>().await;
            }
            match passages.is_empty() {
                true => Err(RerankError::Model("no passages".into())),
                false => Ok(Scores {
                    scores: vec![1.0; passages.len()],
                    tokens: 1,
                }),
            }
        }
    }

    fn guarded(hang: bool) -> (Guarded<Flaky>, Arc<Flaky>) {
        guarded_within(hang, Duration::from_secs(5))
    }

    /// As [`guarded`], with a stage timeout of `timeout`.
    fn guarded_within(hang: bool, timeout: Duration) -> (Guarded<Flaky>, Arc<Flaky>) {
        let settings = BreakerSettings {
            failure_threshold: 2,
            open: Duration::from_secs(60),
            max_open: Duration::from_secs(60),
        };
        let faults = Arc::new(Faults::default());
        let guard = Guard::new("reranker", timeout, &settings, faults);
        let inner = Arc::new(Flaky {
            hang,
            calls: AtomicUsize::new(0),
        });
        (Guarded::new(inner.clone(), Arc::new(guard)), inner)
    }

    #[tokio::test]
    async fn failures_open_the_breaker_and_then_the_stage_is_not_called() {
        let (reranker, inner) = guarded(false);
        for _ in 0..2 {
            let failed = reranker.score("q".into(), Vec::new()).await;
            assert!(matches!(failed, Err(RerankError::Model(_))), "{failed:?}");
        }
        assert_eq!(reranker.guard().state(), BreakerState::Open);
        let refused = reranker.score("q".into(), vec!["p".into()]).await;
        assert!(
            matches!(refused, Err(RerankError::Stopped(Stopped::BreakerOpen))),
            "{refused:?}"
        );
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            2,
            "an open breaker stops the call"
        );
    }

    #[tokio::test]
    async fn a_bulk_call_that_runs_long_is_the_callers_and_never_opens_the_breaker() {
        let (reranker, _) = guarded(true);
        let reranker = reranker
            .with_bulk_above(2)
            .with_bulk_timeout(Duration::from_millis(20));
        let many = || vec!["p".to_string(); 3];
        for _ in 0..3 {
            let cut = reranker.score("q".into(), many()).await;
            assert!(
                matches!(cut, Err(RerankError::Stopped(Stopped::Timeout))),
                "{cut:?}"
            );
        }
        assert_eq!(
            reranker.guard().state(),
            BreakerState::Closed,
            "bulk timeouts were charged"
        );
        // A call of the size the stage timeout is meant for is still charged when it hangs.
        let (small, _) = guarded_within(true, Duration::from_millis(20));
        let small = small.with_bulk_above(2);
        for _ in 0..2 {
            let cut = small.score("q".into(), vec!["p".into()]).await;
            assert!(
                matches!(cut, Err(RerankError::Stopped(Stopped::Timeout))),
                "{cut:?}"
            );
        }
        assert_eq!(small.guard().state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn the_requests_deadline_comes_from_its_scope_and_is_not_held_against_the_stage() {
        let (reranker, _) = guarded(true);
        let deadline = Deadline::after(Duration::from_millis(20));
        for _ in 0..3 {
            let cut = deadline.scope(reranker.score("q".into(), vec!["p".into()])).await;
            assert!(
                matches!(cut, Err(RerankError::Stopped(Stopped::Deadline))),
                "{cut:?}"
            );
        }
        assert_eq!(reranker.guard().state(), BreakerState::Closed);
        let ok = guarded(false).0.score("q".into(), vec!["p".into()]).await;
        assert_eq!(
            ok.map(|s| s.scores).ok(),
            Some(vec![1.0]),
            "no scope: no deadline"
        );
    }
}
