//! The request flow of DESIGN.md: embed → dense ∥ BM25 → RRF → rerank → generate. Each stage
//! records what it did in a [`Report`]; a failed stage degrades the answer instead of failing it
//! while another path can still serve.

use std::sync::Arc;
use std::time::Instant;

use ragway_cache::{CacheKey, LocalCache};
use ragway_llm::{cited_passages, rag_messages, Generation, GenerationRequest, Generator, Passage};
use ragway_openapi::{DegradationReason, StageStatus, TokenUsage};
use ragway_rerank::Reranker;
use ragway_retrieval::{
    reciprocal_rank_fusion, DenseStore, Embedder, KeywordStore, MetadataFilter, ScoredChunk,
};

use crate::report::{Authorship, Report};

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub rrf_k: f32,
    /// Hits each engine contributes to fusion.
    pub candidates: usize,
    pub rerank_candidates: usize,
    pub max_tokens: usize,
    pub temperature: f64,
}

pub struct Pipeline {
    pub embedder: Arc<dyn Embedder>,
    pub dense: Arc<dyn DenseStore>,
    pub keyword: Arc<dyn KeywordStore>,
    pub reranker: Option<Arc<dyn Reranker>>,
    /// Ordered: the first is the primary, the rest are fallbacks.
    pub llms: Vec<Arc<dyn Generator>>,
    /// L2: query embeddings by model and text.
    pub query_embeddings: LocalCache<Arc<Vec<f32>>>,
    pub settings: PipelineSettings,
}

pub struct Retrieved {
    pub hits: Vec<ScoredChunk>,
    pub report: Report,
}

pub struct Answer {
    pub text: String,
    /// `(passage number, passage)`, numbers as in the answer's `[n]` markers.
    pub citations: Vec<(usize, ScoredChunk)>,
    pub usage: TokenUsage,
    pub report: Report,
}

impl Pipeline {
    /// Hybrid retrieval and reranking: the `top_k` best chunks.
    pub async fn retrieve(
        &self,
        collection: &str,
        query: &str,
        filter: MetadataFilter,
        top_k: usize,
    ) -> Retrieved {
        let mut report = Report::default();
        let started = Instant::now();
        // Each branch reports on its own stages; join! needs them to borrow nothing mutably.
        let ((dense_hits, dense_report), (keyword_hits, keyword_report)) = tokio::join!(
            self.dense_hits(collection, query, filter.clone()),
            self.keyword_hits(collection, query, filter),
        );
        report.merge(dense_report);
        report.merge(keyword_report);
        let lists: Vec<Vec<ScoredChunk>> = [dense_hits, keyword_hits].into_iter().flatten().collect();
        let fused = reciprocal_rank_fusion(
            &lists,
            self.settings.rrf_k,
            self.settings.rerank_candidates.max(top_k),
        );
        report.record_time("retrieval", started);
        let hits = self.rerank(query, fused, top_k, &mut report).await;
        Retrieved { hits, report }
    }

    /// Embeds the query (through the L2 cache) and searches the dense store.
    async fn dense_hits(
        &self,
        collection: &str,
        query: &str,
        filter: MetadataFilter,
    ) -> (Option<Vec<ScoredChunk>>, Report) {
        let mut report = Report::default();
        let started = Instant::now();
        let key = CacheKey::new(
            "l2_embedding",
            &[self.embedder.model_id().as_bytes(), query.as_bytes()],
        );
        let vector = match self.query_embeddings.get(&key).await {
            Some(v) => {
                metrics::counter!("ragway_cache_requests_total", "layer" => "l2_embedding", "result" => "hit").increment(1);
                Ok(v)
            }
            None => {
                metrics::counter!("ragway_cache_requests_total", "layer" => "l2_embedding", "result" => "miss").increment(1);
                self.embedder
                    .embed(vec![query.to_string()])
                    .await
                    .and_then(|mut e| {
                        e.vectors.pop().map(Arc::new).ok_or_else(|| {
                            ragway_retrieval::RetrievalError::Model("no vector returned".into())
                        })
                    })
            }
        };
        report.record_time("embed", started);
        let vector = match vector {
            Ok(v) => {
                self.query_embeddings.insert(key, v.clone()).await;
                report.embed = StageStatus::Ok;
                v
            }
            Err(e) => {
                tracing::warn!(error = %e, "query embedding failed");
                report.embed = StageStatus::Failed;
                report.degrade("embed", DegradationReason::Error);
                return (None, report);
            }
        };
        let started = Instant::now();
        let hits = self
            .dense
            .search(
                collection,
                vector.as_ref().clone(),
                filter,
                self.settings.candidates,
            )
            .await;
        report.record_time("dense", started);
        match hits {
            Ok(hits) => {
                report.dense = StageStatus::Ok;
                (Some(hits), report)
            }
            Err(e) => {
                tracing::warn!(error = %e, "dense search failed");
                report.dense = StageStatus::Failed;
                report.degrade("dense", DegradationReason::Error);
                (None, report)
            }
        }
    }

    async fn keyword_hits(
        &self,
        collection: &str,
        query: &str,
        filter: MetadataFilter,
    ) -> (Option<Vec<ScoredChunk>>, Report) {
        let mut report = Report::default();
        let started = Instant::now();
        let hits = self
            .keyword
            .search(collection, query.to_string(), filter, self.settings.candidates)
            .await;
        report.record_time("keyword", started);
        match hits {
            Ok(hits) => {
                report.keyword = StageStatus::Ok;
                (Some(hits), report)
            }
            Err(e) => {
                tracing::warn!(error = %e, "keyword search failed");
                report.keyword = StageStatus::Failed;
                report.degrade("keyword", DegradationReason::Error);
                (None, report)
            }
        }
    }

    /// Reorders fused hits by cross-encoder score; keeps the fused order when the reranker fails.
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
        match scores {
            Ok(scores) => {
                report.rerank = StageStatus::Ok;
                for (hit, score) in fused.iter_mut().zip(scores) {
                    hit.score = score;
                }
                fused.sort_by(|a, b| b.score.total_cmp(&a.score));
            }
            Err(e) => {
                tracing::warn!(error = %e, "rerank failed");
                report.rerank = StageStatus::Failed;
                report.degrade("rerank", DegradationReason::Error);
            }
        }
        fused.truncate(top_k);
        fused
    }

    /// Retrieval, then a grounded answer from the first LLM that can give one, or quoted passages
    /// when none can.
    pub async fn answer(
        &self,
        collection: &str,
        query: &str,
        filter: MetadataFilter,
        passages: usize,
    ) -> Answer {
        let Retrieved { hits, mut report } = self.retrieve(collection, query, filter, passages).await;
        if report.mode() == ragway_openapi::Mode::Error {
            return Answer {
                text: String::new(),
                citations: Vec::new(),
                usage: TokenUsage::default(),
                report,
            };
        }
        let prompt_passages: Vec<Passage<'_>> = hits
            .iter()
            .map(|h| Passage {
                doc_id: &h.chunk.doc_id,
                text: &h.chunk.text,
            })
            .collect();
        let request = GenerationRequest {
            messages: rag_messages(query, &prompt_passages),
            max_tokens: self.settings.max_tokens,
            temperature: self.settings.temperature,
        };
        let started = Instant::now();
        let generated = self.generate(request, &mut report).await;
        report.record_time("llm", started);
        let numbered = || hits.iter().cloned().enumerate().map(|(i, h)| (i + 1, h));
        match generated {
            Some(generation) => {
                let cited = cited_passages(&generation.text, hits.len());
                // A model that cites nothing was still given these passages and nothing else.
                let citations = if cited.is_empty() {
                    numbered().collect()
                } else {
                    cited.into_iter().map(|n| (n, hits[n - 1].clone())).collect()
                };
                Answer {
                    text: generation.text,
                    citations,
                    usage: TokenUsage {
                        prompt_tokens: generation.prompt_tokens,
                        completion_tokens: generation.completion_tokens,
                    },
                    report,
                }
            }
            None => {
                report.authorship = Some(Authorship::Extractive);
                Answer {
                    text: extractive_answer(&hits),
                    citations: numbered().collect(),
                    usage: TokenUsage::default(),
                    report,
                }
            }
        }
    }

    /// Walks the backends in order; the first answer wins.
    async fn generate(&self, request: GenerationRequest, report: &mut Report) -> Option<Generation> {
        for (i, llm) in self.llms.iter().enumerate() {
            match llm.generate(request.clone()).await {
                Ok(generation) => {
                    let backend = llm.name().to_string();
                    metrics::counter!("ragway_llm_tokens_total", "backend" => backend.clone(), "kind" => "prompt")
                        .increment(generation.prompt_tokens as u64);
                    metrics::counter!("ragway_llm_tokens_total", "backend" => backend.clone(), "kind" => "completion")
                        .increment(generation.completion_tokens as u64);
                    report.authorship = Some(if i == 0 {
                        Authorship::Primary(backend)
                    } else {
                        Authorship::Fallback(backend)
                    });
                    return Some(generation);
                }
                Err(e) => {
                    tracing::warn!(backend = llm.name(), error = %e, "LLM backend failed");
                    report.degrade(format!("llm:{}", llm.name()), DegradationReason::Error);
                }
            }
        }
        None
    }
}

/// The answer when no LLM could write one: the best passages, quoted and numbered.
fn extractive_answer(hits: &[ScoredChunk]) -> String {
    if hits.is_empty() {
        return "No language model is available and no passage matched the question.".into();
    }
    let mut text = String::from("No language model is available; the most relevant passages are:\n");
    for (i, hit) in hits.iter().enumerate() {
        text.push_str(&format!("\n[{}] \"{}\"", i + 1, hit.chunk.text.trim()));
    }
    text
}
