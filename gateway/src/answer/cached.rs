//! The cache layers as decorators of the stages they keep: [`Cached`] is a [`Retriever`] behind a
//! layer (L3 around the pipeline, L1 of `/search` around that), or an [`Embedder`] behind L2
//! (query vectors). (L1 around whole answers is the engine's: see `engine::l1`.) A layer answers
//! from a fresh entry without running its stage; otherwise the stage runs, a `normal` result is
//! stored, and when the stage could not serve at all (mode `error`) an entry kept past its TTL
//! answers instead, with mode `cache_only` and `stale: true`. L2 keeps vectors, which are either
//! right or absent: it serves fresh entries only.

use std::sync::Arc;

use ragway_cache::{CacheKey, Layer, Lookup};
use ragway_openapi::{CacheInfo, Mode};
use ragway_retrieval::{Embedder, Embeddings, Priority, RetrievalError};
use serde::Serialize;

use async_trait::async_trait;

use super::pipeline::{Retrieved, Retriever};
use super::report::Report;
use super::{Query, RequestContext};
use crate::caches::{info, CachedHits, Caches, Target};
use crate::tenancy::Allowance;

impl CachedHits {
    pub(crate) fn of(retrieved: &Retrieved) -> Self {
        Self {
            hits: retrieved.hits.clone(),
            dense_ids: retrieved.dense_ids.iter().cloned().collect(),
            keyword_ids: retrieved.keyword_ids.iter().cloned().collect(),
            reranked: retrieved.report.rerank == ragway_openapi::StageStatus::Ok,
        }
    }

    /// The hits as an answer: `report` keeps what this request's own attempt did (if any).
    fn into_retrieved(self, mut report: Report, cache: CacheInfo) -> Retrieved {
        if cache.stale {
            report.cache = Some(cache);
        } else {
            report.served_from_cache(cache, self.reranked);
        }
        Retrieved {
            hits: self.hits,
            dense_ids: self.dense_ids.into_iter().collect(),
            keyword_ids: self.keyword_ids.into_iter().collect(),
            report,
        }
    }
}

/// A stage's result as a cache layer keeps and serves it.
trait Cacheable: Sized {
    type Entry: Clone + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static;
    fn report(&self) -> &Report;
    fn into_report(self) -> Report;
    /// What to keep of a `normal` result, if it may be kept.
    fn entry(&self) -> Option<Self::Entry>;
    /// The result an entry gives; `report` is this request's own attempt, if any.
    fn from_entry(entry: Self::Entry, report: Report, cache: CacheInfo) -> Self;
}

/// `stage` through `layer`: a fresh entry answers without running it; otherwise it runs, a
/// `normal` result is kept, and when it could not serve at all (mode `error`) an entry past its
/// TTL answers instead (`cache_only`).
async fn through<T: Cacheable>(
    layer: &Layer<T::Entry>,
    scope: &str,
    key: &CacheKey,
    stage: impl std::future::Future<Output = T>,
) -> T {
    let stale = match layer.get(scope, key).await {
        Lookup::Fresh { value, age } => {
            return T::from_entry(value, Report::default(), info(layer.name(), age, false))
        }
        Lookup::Stale { value, age } => Some((value, age)),
        Lookup::Miss => None,
    };
    let result = stage.await;
    match (result.report().mode(), stale) {
        (Mode::Error, Some((value, age))) => {
            layer.served_stale();
            T::from_entry(value, result.into_report(), info(layer.name(), age, true))
        }
        (Mode::Normal, _) => {
            if let Some(entry) = result.entry() {
                layer.put(scope, key, entry).await;
            }
            result
        }
        _ => result,
    }
}

impl Cacheable for Retrieved {
    type Entry = CachedHits;
    fn report(&self) -> &Report {
        &self.report
    }
    fn into_report(self) -> Report {
        self.report
    }
    fn entry(&self) -> Option<CachedHits> {
        Some(CachedHits::of(self))
    }
    fn from_entry(entry: CachedHits, report: Report, cache: CacheInfo) -> Self {
        entry.into_retrieved(report, cache)
    }
}

/// Which layer a [`Cached`] stage keeps its results in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheLayer {
    /// L2: query vectors, around the embedder.
    Embeddings,
    /// L3: fused, reranked hits, under every answer.
    Retrievals,
    /// L1 of `/search`: the whole answer of a search.
    Searches,
}

/// A stage behind a cache layer, composed at start-up: L2 around the query embedder, L3 around
/// the pipeline, and L1 of `/search` around that.
pub struct Cached<S> {
    inner: S,
    caches: Arc<Caches>,
    layer: CacheLayer,
}

impl<E: Embedder + ?Sized> Cached<Arc<E>> {
    /// L2 around a query embedder.
    pub fn embeddings(inner: Arc<E>, caches: Arc<Caches>) -> Self {
        let layer = CacheLayer::Embeddings;
        Self { inner, caches, layer }
    }

    /// A text's L2 key: the tenant's own entries (`Allowance::tenant`), for this model.
    fn vector_key(&self, tenant: &str, text: &str) -> CacheKey {
        let parts: [&[u8]; 4] = [
            tenant.as_bytes(),
            self.inner.model_id().as_bytes(),
            self.caches.fingerprint.as_bytes(),
            text.as_bytes(),
        ];
        CacheKey::new("l2", &parts)
    }
}

impl<R: Retriever> Cached<R> {
    /// L3 around a retriever.
    pub fn retrievals(inner: R, caches: Arc<Caches>) -> Self {
        let layer = CacheLayer::Retrievals;
        Self { inner, caches, layer }
    }

    /// L1 of `/search` around a retriever.
    pub fn searches(inner: R, caches: Arc<Caches>) -> Self {
        let layer = CacheLayer::Searches;
        Self { inner, caches, layer }
    }
}

#[async_trait]
impl<R: Retriever> Retriever for Cached<R> {
    async fn retrieve(&self, target: Target<'_>, query: &Query<'_>, ctx: &RequestContext) -> Retrieved {
        let (kind, layer) = match self.layer {
            CacheLayer::Searches => ("l1_search", &self.caches.searches),
            // (`Embeddings` wraps an embedder, never a retriever: see the constructors.)
            CacheLayer::Retrievals | CacheLayer::Embeddings => ("l3", &self.caches.retrievals),
        };
        let key = self
            .caches
            .key(kind, &target, query.text, query.top_k, &query.filter);
        let stage = self.inner.retrieve(target, query, ctx);
        through(layer, target.name, &key, stage).await
    }
}

/// The texts' vectors from L2 where it has them, the others embedded (and kept). `tokens` counts
/// the embedded ones only: 0 when every vector came from the cache.
#[async_trait]
impl<E: Embedder + ?Sized> Embedder for Cached<Arc<E>> {
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
        let layer = &self.caches.embeddings;
        let keys_of =
            |tenant: &str| -> Vec<CacheKey> { texts.iter().map(|t| self.vector_key(tenant, t)).collect() };
        let keys = Allowance::current(|a| keys_of(&a.tenant)).unwrap_or_else(|| keys_of(""));
        let mut vectors = Vec::with_capacity(texts.len());
        for key in &keys {
            vectors.push(match layer.get("", key).await {
                Lookup::Fresh { value, .. } => Some(value),
                Lookup::Stale { .. } | Lookup::Miss => None,
            });
        }
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| vectors[i].is_none()).collect();
        let mut tokens = 0;
        if !missing.is_empty() {
            let asked = missing.iter().map(|&i| texts[i].clone()).collect();
            let embedded = self.inner.embed(asked, priority).await?;
            if embedded.vectors.len() != missing.len() {
                let message = format!("{} vectors for {} texts", embedded.vectors.len(), missing.len());
                return Err(RetrievalError::Model(message));
            }
            tokens = embedded.tokens;
            for (&i, vector) in missing.iter().zip(embedded.vectors) {
                layer.put("", &keys[i], vector.clone()).await;
                vectors[i] = Some(vector);
            }
        }
        let vectors = vectors.into_iter().flatten().collect();
        Ok(Embeddings { vectors, tokens })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::Config;

    /// Counts the texts it embeds; every text's vector is its length.
    struct Counting(AtomicUsize);

    #[async_trait]
    impl Embedder for Counting {
        fn model_id(&self) -> &str {
            "counting"
        }
        fn dimension(&self) -> usize {
            1
        }
        fn backend(&self) -> &str {
            "test"
        }
        async fn embed(&self, texts: Vec<String>, _: Priority) -> Result<Embeddings, RetrievalError> {
            self.0.fetch_add(texts.len(), Ordering::SeqCst);
            Ok(Embeddings {
                vectors: texts.iter().map(|t| vec![t.len() as f32]).collect(),
                tokens: texts.len() * 2,
            })
        }
    }

    fn tenant(id: &str) -> Allowance {
        Allowance {
            tenant: id.into(),
            ..Allowance::default()
        }
    }

    #[tokio::test]
    async fn l2_embeds_only_what_it_lacks_and_keeps_tenants_apart() {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let cached = Cached::embeddings(inner.clone(), Caches::new(&Config::default(), None));
        let texts = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let first = tenant("a").scope(cached.embed(texts(&["one", "three"]), Priority::Interactive));
        assert_eq!(first.await.map(|e| e.tokens).ok(), Some(4));
        let again =
            tenant("a").scope(cached.embed(texts(&["three", "seven!", "one"]), Priority::Interactive));
        let again = again.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again.vectors,
            vec![vec![5.0], vec![6.0], vec![3.0]],
            "in input order"
        );
        assert_eq!(again.tokens, 2, "only the text it lacked was embedded");
        let cached_only = tenant("a").scope(cached.embed(texts(&["one"]), Priority::Interactive));
        assert_eq!(
            cached_only.await.map(|e| e.tokens).ok(),
            Some(0),
            "0 tokens: all from L2"
        );
        let other = tenant("b").scope(cached.embed(texts(&["one"]), Priority::Interactive));
        assert_eq!(
            other.await.map(|e| e.tokens).ok(),
            Some(2),
            "another tenant's entries are its own"
        );
        assert_eq!(inner.0.load(Ordering::SeqCst), 4);
    }
}
