//! Each engine's candidates for a query. A store that searches both engines at once (a Qdrant
//! server: one round trip, fused there where Qdrant fuses as ragway does) is used while both
//! stages are healthy; otherwise — or when that call fails — each engine is searched on its own
//! (each behind its guard), so the `dense` and `keyword` stages degrade (and open their breakers)
//! separately, exactly as with two stores.

use std::sync::Arc;
use std::time::Instant;

use ragway_openapi::StageStatus;
use ragway_retrieval::{HybridQuery, HybridStore, ScoredChunk};

use super::Pipeline;
use crate::answer::report::Report;
use crate::answer::Query;
use crate::caches::Target;
use crate::resilience::deadline::Deadline;

pub(super) struct Candidates {
    /// `None`: the engine failed (or was not asked).
    pub dense: Option<Vec<ScoredChunk>>,
    pub keyword: Option<Vec<ScoredChunk>>,
    /// Fused by the store; `None`: ragway fuses the two lists.
    pub fused: Option<Vec<ScoredChunk>>,
}

impl Pipeline {
    pub(super) async fn candidates(
        &self,
        target: &Target<'_>,
        query: &Query<'_>,
        limit: usize,
        deadline: &Deadline,
    ) -> (Candidates, Report) {
        let collection = target.name;
        let path = |path: &'static str| {
            metrics::counter!("ragway_retrieval_paths_total", "path" => path).increment(1)
        };
        let Some(store) = self.both_at_once() else {
            path("per_engine");
            let ((dense, mut report), (keyword, keyword_report)) = tokio::join!(
                self.dense_hits(collection, query),
                self.keyword_hits(collection, query),
            );
            report.merge(keyword_report);
            return (
                Candidates {
                    dense,
                    keyword,
                    fused: None,
                },
                report,
            );
        };
        let (vector, mut report) = self.embed_query(query).await;
        let Some(vector) = vector else {
            let (keyword, keyword_report) = self.keyword_hits(collection, query).await;
            report.merge(keyword_report);
            return (
                Candidates {
                    dense: None,
                    keyword,
                    fused: None,
                },
                report,
            );
        };
        let both = HybridQuery {
            vector: vector.as_ref().clone(),
            text: query.text.to_string(),
            filter: query.filter.clone(),
            depth: self.settings.candidates,
            limit,
            fusion: target.fusion,
        };
        let started = Instant::now();
        if let Some(found) = self.search_both(store, collection, both, deadline).await {
            path("one_round_trip");
            report.record_time("dense", started);
            report.record_time("keyword", started);
            (report.dense, report.keyword) = (StageStatus::Ok, StageStatus::Ok);
            let candidates = Candidates {
                dense: Some(found.dense),
                keyword: Some(found.keyword),
                fused: found.fused,
            };
            return (candidates, report);
        }
        path("per_engine");
        let ((dense, dense_report), (keyword, keyword_report)) = tokio::join!(
            self.dense_search(collection, vector, query.filter.clone()),
            self.keyword_hits(collection, query),
        );
        report.merge(dense_report);
        report.merge(keyword_report);
        (
            Candidates {
                dense,
                keyword,
                fused: None,
            },
            report,
        )
    }

    /// The store that searches both engines, while both stages are healthy (breakers closed, no
    /// fault injected).
    fn both_at_once(&self) -> Option<&Arc<dyn HybridStore>> {
        self.both
            .as_ref()
            .filter(|_| self.guards.dense.ready() && self.guards.keyword.ready())
    }

    /// One round trip within the stages' timeout and the deadline; `None` when it failed (the
    /// caller then asks each engine through its guard, which counts the failure).
    async fn search_both(
        &self,
        store: &Arc<dyn HybridStore>,
        collection: &str,
        query: HybridQuery,
        deadline: &Deadline,
    ) -> Option<ragway_retrieval::HybridHits> {
        let budget = deadline.remaining().min(self.guards.dense.timeout());
        match tokio::time::timeout(budget, store.search_both(collection, query)).await {
            Ok(Ok(found)) => Some(found),
            Ok(Err(e)) => {
                tracing::debug!(collection, error = %e, "searching both engines at once failed; one by one");
                None
            }
            Err(_) => {
                tracing::debug!(collection, "searching both engines at once timed out; one by one");
                None
            }
        }
    }
}
