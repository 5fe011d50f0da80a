//! The request flow of DESIGN.md: embed → dense ∥ BM25 → RRF → rerank → generate. Each stage
//! records what it did in a [`Report`]; a failed stage degrades the answer instead of failing it
//! while another path can still serve.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ragway_llm::{cited_passages, fit_rag_messages, rag_messages, GenerationRequest, Passage};
use ragway_openapi::{DegradationReason, StageStatus, TokenUsage};
use ragway_rerank::Reranker;
use ragway_retrieval::{
    fuse, DenseStore, Embedder, Fusion, HybridStore, KeywordStore, MetadataFilter, ScoredChunk,
};

use crate::caching::{Caches, Target};
use crate::conversation::Conversation;
use crate::deadline::Deadline;
use crate::guard::{Failure, Guard};
use crate::llm_pool::{Choice, LlmPool};
use crate::report::{Authorship, Report};
use crate::rerank_cost::RerankCost;

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
    pub max_tokens: usize,
    pub temperature: f64,
    /// After a stream's first token, the longest wait for the next.
    pub stream_idle_timeout: Duration,
}

/// The breaker-and-timeout guard of each retrieval dependency.
pub struct StageGuards {
    /// Shared with ingestion, which embeds through the same breaker.
    pub embed: Arc<Guard>,
    pub dense: Guard,
    pub keyword: Guard,
    pub rerank: Guard,
}

pub struct Pipeline {
    pub embedder: Arc<dyn Embedder>,
    pub dense: Arc<dyn DenseStore>,
    pub keyword: Arc<dyn KeywordStore>,
    /// A store that searches both engines in one round trip (a Qdrant server), used while both
    /// stages are healthy.
    pub both: Option<Arc<dyn HybridStore>>,
    pub reranker: Option<Arc<dyn Reranker>>,
    pub guards: StageGuards,
    pub rerank_cost: RerankCost,
    pub llm: LlmPool,
    /// The cache layers wrapped around the stages (see `caching`).
    pub caches: Arc<Caches>,
    pub settings: PipelineSettings,
}

/// What the caller's tenant may use and spend on this request.
#[derive(Debug, Clone, Default)]
pub struct Allowance {
    /// The LLM backends it may use.
    pub llm: Choice,
    /// Its LLM token budget is spent (`over_quota = "degrade"`): no LLM runs, the answer comes
    /// from L1 (`cache_only`) or quotes passages (`extractive`).
    pub llm_spent: bool,
    /// Its LLM budget is spent, and `llm` names only the unmetered (cheaper) backends it may
    /// use: an answer by one is a fallback, degraded for `quota`.
    pub cheaper_only: bool,
    /// Its embedding budget is spent: only a cached query vector is used, else `keyword_only`.
    pub embed_spent: bool,
}

impl Allowance {
    /// The tenant's LLM budget is spent (whether or not a cheaper backend is left to it).
    pub fn budget_spent(&self) -> bool {
        self.llm_spent || self.cheaper_only
    }
}

pub struct Retrieved {
    pub hits: Vec<ScoredChunk>,
    /// Chunk ids each engine found, so every hit can say where it came from.
    pub dense_ids: HashSet<String>,
    pub keyword_ids: HashSet<String>,
    pub report: Report,
}

pub struct Answer {
    pub text: String,
    /// `(passage number, passage)`, numbers as in the answer's `[n]` markers.
    pub citations: Vec<(usize, ScoredChunk)>,
    pub usage: TokenUsage,
    pub report: Report,
}

/// A guarded stage's value, or `None` with its failure recorded in `report`; and the stage's
/// status either way (a stage the deadline left no time for was skipped, not failed).
fn settle<T, E: std::fmt::Display>(
    report: &mut Report,
    stage: &str,
    result: Result<T, Failure<E>>,
) -> (Option<T>, StageStatus) {
    match result {
        Ok(value) => (Some(value), StageStatus::Ok),
        Err(failure) => {
            tracing::warn!(stage, error = %failure, "stage degraded");
            report.degrade(stage, failure.reason());
            let status = match failure {
                Failure::Deadline => StageStatus::Skipped,
                Failure::BreakerOpen
                | Failure::Timeout
                | Failure::Injected(_)
                | Failure::Overloaded(_)
                | Failure::Error(_)
                | Failure::Rejected(_) => StageStatus::Failed,
            };
            (None, status)
        }
    }
}

impl Pipeline {
    /// Hybrid retrieval, fused as `target` says, and reranking: the `top_k` best chunks, within
    /// `deadline` (L3 wraps it: [`Pipeline::retrieve`]).
    pub(crate) async fn retrieve_uncached(
        &self,
        target: &Target<'_>,
        query: &str,
        filter: MetadataFilter,
        top_k: usize,
        deadline: &Deadline,
        allowance: &Allowance,
    ) -> Retrieved {
        let started = Instant::now();
        let limit = self.settings.rerank_candidates.max(top_k);
        let (candidates, mut report) = self
            .candidates(target, query, filter, limit, deadline, allowance)
            .await;
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
        let hits = self.rerank(query, fused, top_k, deadline, &mut report).await;
        Retrieved {
            hits,
            dense_ids,
            keyword_ids,
            report,
        }
    }

    /// Embeds the query (through the L2 cache) and searches the dense store.
    async fn dense_hits(
        &self,
        collection: &str,
        query: &str,
        filter: MetadataFilter,
        deadline: &Deadline,
        allowance: &Allowance,
    ) -> (Option<Vec<ScoredChunk>>, Report) {
        let (vector, mut report) = self.embed_query(collection, query, deadline, allowance).await;
        let Some(vector) = vector else {
            return (None, report);
        };
        let (hits, search_report) = self.dense_search(collection, vector, filter, deadline).await;
        report.merge(search_report);
        (hits, report)
    }

    /// The query's vector (through the L2 cache), or `None` with why in the report.
    async fn embed_query(
        &self,
        collection: &str,
        query: &str,
        deadline: &Deadline,
        allowance: &Allowance,
    ) -> (Option<Arc<Vec<f32>>>, Report) {
        let mut report = Report::default();
        let started = Instant::now();
        let owner = crate::auth::owner(collection);
        let vector = self
            .query_vector(owner, query, deadline, !allowance.embed_spent)
            .await;
        report.record_time("embed", started);
        let vector = match vector {
            Ok(None) => {
                report.degrade("embed", DegradationReason::Quota);
                return (None, report);
            }
            Ok(Some(embedded)) => Ok(embedded),
            Err(failure) => Err(failure),
        };
        let (vector, status) = settle(&mut report, "embed", vector);
        report.embed = match &vector {
            Some(embedded) if embedded.tokens.is_none() => StageStatus::Cached,
            _ => status,
        };
        let Some(embedded) = vector else {
            return (None, report);
        };
        report.embedding_tokens += embedded.tokens.unwrap_or(0);
        (Some(embedded.vector), report)
    }

    async fn dense_search(
        &self,
        collection: &str,
        vector: Arc<Vec<f32>>,
        filter: MetadataFilter,
        deadline: &Deadline,
    ) -> (Option<Vec<ScoredChunk>>, Report) {
        let mut report = Report::default();
        let started = Instant::now();
        let search = self.dense.search(
            collection,
            vector.as_ref().clone(),
            filter,
            self.settings.candidates,
        );
        let hits = self.guards.dense.run(deadline, search).await;
        report.record_time("dense", started);
        let (hits, status) = settle(&mut report, "dense", hits);
        report.dense = status;
        (hits, report)
    }

    async fn keyword_hits(
        &self,
        collection: &str,
        query: &str,
        filter: MetadataFilter,
        deadline: &Deadline,
    ) -> (Option<Vec<ScoredChunk>>, Report) {
        let mut report = Report::default();
        let started = Instant::now();
        let search = self
            .keyword
            .search(collection, query.to_string(), filter, self.settings.candidates);
        let hits = self.guards.keyword.run(deadline, search).await;
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
        deadline: &Deadline,
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
        if self
            .rerank_cost
            .estimate(fused.len())
            .is_some_and(|cost| cost > deadline.remaining())
        {
            report.rerank = StageStatus::Skipped;
            report.degrade("rerank", DegradationReason::Deadline);
            fused.truncate(top_k);
            return fused;
        }
        let started = Instant::now();
        let passages = fused.iter().map(|h| h.chunk.text.clone()).collect();
        let scores = self
            .guards
            .rerank
            .run(deadline, reranker.score(query.to_string(), passages))
            .await;
        report.record_time("rerank", started);
        let (scores, status) = settle(report, "rerank", scores);
        report.rerank = status;
        if let Some(scored) = scores {
            self.rerank_cost.record(fused.len(), started.elapsed());
            for (hit, score) in fused.iter_mut().zip(scored.scores) {
                hit.score = score;
            }
            fused.sort_by(|a, b| b.score.total_cmp(&a.score));
        }
        fused.truncate(top_k);
        fused
    }

    /// Retrieval, then a grounded answer from the first LLM of the pool that can give one, or
    /// quoted passages when none can (L1 wraps it: [`Pipeline::answer`]).
    pub(crate) async fn answer_uncached(
        &self,
        target: Target<'_>,
        conversation: &Conversation,
        filter: MetadataFilter,
        passages: usize,
        deadline: &Deadline,
        allowance: &Allowance,
    ) -> Answer {
        let Retrieved { hits, mut report, .. } = self
            .retrieve(
                target,
                &conversation.search,
                filter,
                passages,
                deadline,
                allowance,
            )
            .await;
        if report.mode() == ragway_openapi::Mode::Error {
            return Answer {
                text: String::new(),
                citations: Vec::new(),
                usage: TokenUsage::default(),
                report,
            };
        }
        let (request, given) = self.rag_request(conversation, &hits, &mut report);
        let all = hits;
        let hits = &given[..];
        let started = Instant::now();
        if allowance.budget_spent() {
            report.degrade("llm", DegradationReason::Quota);
        }
        let generated = if allowance.llm_spent {
            None
        } else {
            self.llm
                .generate(&request, deadline, &mut report, &allowance.llm)
                .await
        };
        if allowance.cheaper_only {
            report.demote_to_fallback();
        }
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
                    text: extractive_answer(&all),
                    citations: all.iter().cloned().enumerate().map(|(i, h)| (i + 1, h)).collect(),
                    usage: TokenUsage::default(),
                    report,
                }
            }
        }
    }
}

impl Pipeline {
    /// The grounded prompt for the conversation's question over `hits`, with the configured generation settings,
    /// fitted to the tightest context window of the pool, and the passages it gives in prompt
    /// order. The best hits that fit are chosen in rank order, then put into the prompt in a
    /// canonical order (by chunk id), so that the same passages always make the same prompt
    /// prefix (L4: the local model's prefix cache, remote servers' prompt caches). Shortened or
    /// left-out passages are recorded in `report` (stage `prompt`).
    pub fn rag_request(
        &self,
        conversation: &Conversation,
        hits: &[ScoredChunk],
        report: &mut Report,
    ) -> (GenerationRequest, Vec<ScoredChunk>) {
        let question = conversation.question.as_str();
        let history = &conversation.history;
        let request = |messages| GenerationRequest {
            messages: with_history(messages, history),
            max_tokens: self.settings.max_tokens,
            temperature: self.settings.temperature,
        };
        let Some((generator, window)) = self.llm.tightest_context() else {
            let given = canonical(hits);
            return (request(rag_messages(question, &passages(&given))), given);
        };
        let budget = window.saturating_sub(self.settings.max_tokens);
        let count = |m: &[ragway_llm::ChatMessage]| {
            generator
                .count_tokens(&with_history(m.to_vec(), history))
                .unwrap_or(usize::MAX)
        };
        let chosen = fit_rag_messages(question, &passages(hits), budget, count).passages;
        let given = canonical(&hits[..chosen]);
        let fitted = fit_rag_messages(question, &passages(&given), budget, count);
        let given = given[..fitted.passages].to_vec();
        if fitted.shortened || given.len() < hits.len() {
            tracing::info!(
                given = given.len(),
                of = hits.len(),
                shortened = fitted.shortened,
                "passages fitted to the context window"
            );
            report.degrade("prompt", DegradationReason::ContextWindow);
        }
        (request(fitted.messages), given)
    }
}

/// The grounded prompt (system with passages, then the question) with the conversation's recent
/// turns between them.
fn with_history(
    mut messages: Vec<ragway_llm::ChatMessage>,
    history: &[ragway_llm::ChatMessage],
) -> Vec<ragway_llm::ChatMessage> {
    let at = messages.len().min(1);
    messages.splice(at..at, history.iter().cloned());
    messages
}

/// `hits` in chunk-id order.
fn canonical(hits: &[ScoredChunk]) -> Vec<ScoredChunk> {
    let mut sorted = hits.to_vec();
    sorted.sort_by(|a, b| a.chunk.chunk_id.cmp(&b.chunk.chunk_id));
    sorted
}

fn passages(hits: &[ScoredChunk]) -> Vec<Passage<'_>> {
    hits.iter()
        .map(|h| Passage {
            doc_id: &h.chunk.doc_id,
            text: &h.chunk.text,
        })
        .collect()
}

/// The answer when no LLM could write one: the best passages, quoted and numbered.
pub fn extractive_answer(hits: &[ScoredChunk]) -> String {
    if hits.is_empty() {
        return "No language model is available and no passage matched the question.".into();
    }
    let mut text = String::from("No language model is available; the most relevant passages are:\n");
    for (i, hit) in hits.iter().enumerate() {
        text.push_str(&format!("\n[{}] \"{}\"", i + 1, hit.chunk.text.trim()));
    }
    text
}
