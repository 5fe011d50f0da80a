//! The cache layers as decorators of the retrieval stages: [`Cached`] is a [`Retriever`] behind
//! a layer (L3 around the pipeline, L1 of `/search` around that), and L2 wraps query embedding
//! ([`Pipeline::query_vector`]). (L1 around whole answers is the engine's: see
//! `engine::l1`.) A layer answers from a fresh entry without running its stage; otherwise the
//! stage runs, a `normal` result is stored, and when the stage could not serve at all (mode
//! `error`) an entry kept past its TTL answers instead, with mode `cache_only` and `stale: true`.

use std::sync::Arc;

use ragway_cache::{CacheKey, Layer, Lookup};
use ragway_openapi::{CacheInfo, Mode};
use ragway_retrieval::Priority;
use serde::Serialize;

use async_trait::async_trait;

use super::pipeline::{Pipeline, Retrieved, Retriever};
use super::report::Report;
use super::{Query, RequestContext};
use crate::caches::{info, CachedHits, Caches, Target};
use crate::resilience::deadline::Deadline;
use crate::resilience::guard::Failure;

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

/// Which layer of hit lists a [`Cached`] retriever keeps its results in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitsLayer {
    /// L3: fused, reranked hits, under every answer.
    Retrievals,
    /// L1 of `/search`: the whole answer of a search.
    Searches,
}

/// A retriever behind a cache layer, composed at start-up: L3 around the pipeline, and L1 of
/// `/search` around that.
pub struct Cached<R> {
    inner: R,
    caches: Arc<Caches>,
    layer: HitsLayer,
}

impl<R> Cached<R> {
    pub fn new(inner: R, caches: Arc<Caches>, layer: HitsLayer) -> Self {
        Self { inner, caches, layer }
    }
}

#[async_trait]
impl<R: Retriever> Retriever for Cached<R> {
    async fn retrieve(&self, target: Target<'_>, query: &Query<'_>, ctx: &RequestContext) -> Retrieved {
        let (kind, layer) = match self.layer {
            HitsLayer::Retrievals => ("l3", &self.caches.retrievals),
            HitsLayer::Searches => ("l1_search", &self.caches.searches),
        };
        let key = self
            .caches
            .key(kind, &target, query.text, query.top_k, &query.filter);
        let stage = self.inner.retrieve(target, query, ctx);
        through(layer, target.name, &key, stage).await
    }
}

impl Pipeline {
    /// L2 around query embedding: the query's vector, from the cache or embedded now (then with
    /// its token count); `Ok(None)` when it is not cached and `may_embed` is false (the tenant's
    /// embedding budget is spent). Entries are the tenant's own (`owner`).
    pub(crate) async fn query_vector(
        &self,
        owner: &str,
        query: &str,
        deadline: &Deadline,
        may_embed: bool,
    ) -> Result<Option<QueryVector>, Failure<ragway_retrieval::RetrievalError>> {
        let layer = &self.caches.embeddings;
        let key = CacheKey::new(
            "l2",
            &[
                owner.as_bytes(),
                self.embedder.model_id().as_bytes(),
                self.caches.fingerprint.as_bytes(),
                query.as_bytes(),
            ],
        );
        if let Lookup::Fresh { value, .. } = layer.get("", &key).await {
            return Ok(Some(QueryVector {
                vector: Arc::new(value),
                tokens: None,
            }));
        }
        if !may_embed {
            return Ok(None);
        }
        let embed = self
            .embedder
            .embed(vec![query.to_string()], Priority::Interactive);
        let embedded = self.guards.embed.run(deadline, embed).await?;
        let tokens = embedded.tokens as u64;
        let vector = embedded.vectors.into_iter().next().ok_or_else(|| {
            Failure::Error(ragway_retrieval::RetrievalError::Model(
                "no vector returned".into(),
            ))
        })?;
        layer.put("", &key, vector.clone()).await;
        Ok(Some(QueryVector {
            vector: Arc::new(vector),
            tokens: Some(tokens),
        }))
    }
}

/// A query's vector, and the tokens embedding it took (`None`: it came from L2).
pub struct QueryVector {
    pub vector: Arc<Vec<f32>>,
    pub tokens: Option<u64>,
}
