//! The request flow of DESIGN.md: embed → dense ∥ BM25 → RRF → rerank → generate. Each stage
//! records what it did in a [`Report`]; a failed stage degrades the answer instead of failing it
//! while another path can still serve. The stages come composed from start-up — each behind its
//! guard, the query embedder also behind the tenant's budget and L2, the reranker behind its cost —
//! and read the request's deadline and allowance from the scope [`Retriever::retrieve`] runs in.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use ragway_openapi::{DegradationReason, StageStatus};
use ragway_rerank::Reranker;
use ragway_retrieval::{
    fuse, DenseStore, Embedder, Fusion, HybridStore, KeywordStore, MetadataFilter, Priority, ScoredChunk,
};

use super::report::Report;
use super::{Query, RequestContext};
use crate::caches::Target;
use crate::resilience::guard::{Blame, Guard, StageError};

mod candidates;
use candidates::Candidates;

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// `retrieval.fusion`, checked at start-up: what a search uses when neither the request nor
    /// its collection names a fusion.
    pub fusion: Fusion,
    /// Hits each engine contributes to fusion.
    pub candidates: usize,
    pub rerank_candidates: usize,
}

/// The guards inside the stages' decorators, for what asks after a stage's health: `/health`,
/// and the choice of one round trip while both engines are healthy.
pub struct StageGuards {
    pub embed: Arc<Guard>,
    pub dense: Arc<Guard>,
    pub keyword: Arc<Guard>,
    pub rerank: Arc<Guard>,
}

pub struct Pipeline {
    /// Query embedding: L2 → the tenant's embedding budget → guard → the model.
    pub embedder: Arc<dyn Embedder>,
    /// Searches behind their guards.
    pub dense: Arc<dyn DenseStore>,
    pub keyword: Arc<dyn KeywordStore>,
    /// A store that searches both engines in one round trip (a Qdrant server), used while both
    /// stages are healthy.
    pub both: Option<Arc<dyn HybridStore>>,
    /// Its cost (skipped when it cannot fit the time left) → guard → the model.
    pub reranker: Option<Arc<dyn Reranker>>,
    pub guards: StageGuards,
    pub settings: PipelineSettings,
}

pub struct Retrieved {
    pub hits: Vec<ScoredChunk>,
    /// Chunk ids each engine found, so every hit can say where it came from.
    pub dense_ids: HashSet<String>,
    pub keyword_ids: HashSet<String>,
    pub report: Report,
}

/// Retrieval as the engine and `/search` see it: the best hits for a query over a collection.
/// The pipeline is one; [`super::cached::Cached`] wraps one in a cache layer.
#[async_trait]
pub trait Retriever: Send + Sync {
    async fn retrieve(&self, target: Target<'_>, query: &Query<'_>, ctx: &RequestContext) -> Retrieved;
}

#[async_trait]
impl<R: Retriever + ?Sized> Retriever for Arc<R> {
    async fn retrieve(&self, target: Target<'_>, query: &Query<'_>, ctx: &RequestContext) -> Retrieved {
        self.as_ref().retrieve(target, query, ctx).await
    }
}

#[async_trait]
impl Retriever for Pipeline {
    async fn retrieve(&self, target: Target<'_>, query: &Query<'_>, ctx: &RequestContext) -> Retrieved {
        ctx.scope(self.retrieve_uncached(&target, query, ctx)).await
    }
}

/// A stage's value, or `None` with its failure recorded in `report`; and the stage's status
/// either way (a stage no time or budget was left for was skipped, not failed).
fn settle<T, E: StageError>(
    report: &mut Report,
    stage: &str,
    result: Result<T, E>,
) -> (Option<T>, StageStatus) {
    match result {
        Ok(value) => (Some(value), StageStatus::Ok),
        Err(error) => {
            // Only a dependency's own failure is worth an operator's attention: a request's own
            // (a collection dropped under it), a busy worker or a spent deadline happen in the
            // normal run of a shared server, and any client could flood the log with them.
            match error.blame() {
                Blame::Dependency if !error.skipped() => tracing::warn!(stage, %error, "stage degraded"),
                _ => tracing::debug!(stage, %error, "stage degraded"),
            }
            report.degrade(stage, error.reason());
            let status = match error.skipped() {
                true => StageStatus::Skipped,
                false => StageStatus::Failed,
            };
            (None, status)
        }
    }
}

impl Pipeline {
    /// Hybrid retrieval, fused as `target` says, and reranking: the `top_k` best chunks, within
    /// `deadline` (L3 wraps it: [`Pipeline::retrieve`]).
    async fn retrieve_uncached(
        &self,
        target: &Target<'_>,
        query: &Query<'_>,
        ctx: &RequestContext,
    ) -> Retrieved {
        let started = Instant::now();
        let limit = self.settings.rerank_candidates.max(query.top_k);
        let (candidates, mut report) = self.candidates(target, query, limit, &ctx.deadline).await;
        let Candidates {
            dense,
            keyword,
            fused,
        } = candidates;
        let ids = |hits: &Option<Vec<ScoredChunk>>| -> HashSet<String> {
            hits.iter().flatten().map(|h| h.chunk.chunk_id.clone()).collect()
        };
        let (dense_ids, keyword_ids) = (ids(&dense), ids(&keyword));
        let fused =
            fused.unwrap_or_else(|| fuse(&target.fusion, dense.as_deref(), keyword.as_deref(), limit));
        report.record_time("retrieval", started);
        let hits = self.rerank(query.text, fused, query.top_k, &mut report).await;
        Retrieved {
            hits,
            dense_ids,
            keyword_ids,
            report,
        }
    }

    /// Embeds the query (through the L2 cache) and searches the dense store.
    async fn dense_hits(&self, collection: &str, query: &Query<'_>) -> (Option<Vec<ScoredChunk>>, Report) {
        let (vector, mut report) = self.embed_query(query).await;
        let Some(vector) = vector else {
            return (None, report);
        };
        let (hits, search_report) = self.dense_search(collection, vector, query.filter.clone()).await;
        report.merge(search_report);
        (hits, report)
    }

    /// The query's vector (made beforehand, from L2, or embedded within the tenant's budget), or
    /// `None` with why in the report.
    pub(super) async fn embed_query(&self, query: &Query<'_>) -> (Option<Arc<Vec<f32>>>, Report) {
        let mut report = Report::default();
        if let Some(vector) = &query.vector {
            report.embed = StageStatus::Ok;
            return (Some(vector.clone()), report);
        }
        let query = query.text;
        let started = Instant::now();
        let embedded = self
            .embedder
            .embed(vec![query.to_string()], Priority::Interactive)
            .await;
        report.record_time("embed", started);
        let (embedded, status) = settle(&mut report, "embed", embedded);
        let Some(embedded) = embedded else {
            report.embed = status;
            return (None, report);
        };
        report.embed = match embedded.tokens {
            0 => StageStatus::Cached,
            _ => status,
        };
        report.embedding_tokens += embedded.tokens as u64;
        let Some(vector) = embedded.vectors.into_iter().next() else {
            report.embed = StageStatus::Failed;
            report.degrade("embed", DegradationReason::Error);
            return (None, report);
        };
        (Some(Arc::new(vector)), report)
    }

    pub(super) async fn dense_search(
        &self,
        collection: &str,
        vector: Arc<Vec<f32>>,
        filter: MetadataFilter,
    ) -> (Option<Vec<ScoredChunk>>, Report) {
        let mut report = Report::default();
        let started = Instant::now();
        let vector = vector.as_ref().clone();
        let limit = self.settings.candidates;
        let hits = self.dense.search(collection, vector, filter, limit).await;
        report.record_time("dense", started);
        let (hits, status) = settle(&mut report, "dense", hits);
        report.dense = status;
        (hits, report)
    }

    pub(super) async fn keyword_hits(
        &self,
        collection: &str,
        query: &Query<'_>,
    ) -> (Option<Vec<ScoredChunk>>, Report) {
        let mut report = Report::default();
        let started = Instant::now();
        let (text, filter) = (query.text.to_string(), query.filter.clone());
        let limit = self.settings.candidates;
        let hits = self.keyword.search(collection, text, filter, limit).await;
        report.record_time("keyword", started);
        let (hits, status) = settle(&mut report, "keyword", hits);
        report.keyword = status;
        (hits, report)
    }

    /// Reorders fused hits by cross-encoder score. Keeps the fused order when the reranker fails,
    /// or when its recent cost for this many candidates does not fit the time left.
    async fn rerank(
        &self,
        query: &str,
        mut fused: Vec<ScoredChunk>,
        top_k: usize,
        report: &mut Report,
    ) -> Vec<ScoredChunk> {
        let Some(reranker) = &self.reranker else {
            report.rerank = StageStatus::NotConfigured;
            fused.truncate(top_k);
            return fused;
        };
        if fused.is_empty() {
            // Nothing to reorder; the stage had nothing to do rather than failing.
            report.rerank = StageStatus::Ok;
            return fused;
        }
        let started = Instant::now();
        let passages = fused.iter().map(|h| h.chunk.text.clone()).collect();
        let scores = reranker.score(query.to_string(), passages).await;
        report.record_time("rerank", started);
        let (scores, status) = settle(report, "rerank", scores);
        report.rerank = status;
        if let Some(scored) = scores {
            for (hit, score) in fused.iter_mut().zip(scored.scores) {
                hit.score = score;
            }
            fused.sort_by(|a, b| b.score.total_cmp(&a.score));
        }
        fused.truncate(top_k);
        fused
    }
}
