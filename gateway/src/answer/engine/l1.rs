//! L1 around whole answers, JSON and streamed alike: a fresh entry is replayed as the events of
//! an answer (`meta`, one `delta`, `done`) without retrieving or generating; a `normal` answer is
//! kept; an entry past its TTL answers only when retrieval cannot (`cache_only`, `stale: true`);
//! and a tenant whose LLM budget is spent gets any entry it has, marked for what it is
//! (`cache_only`, reason `quota`, `stale` as the entry is).

use std::sync::Arc;

use ragway_cache::{CacheKey, Lookup};
use ragway_openapi::{Citation, DegradationReason, StageStatus, TokenUsage};
use ragway_retrieval::ScoredChunk;

use super::{done, AnswerEvent, Grounding};
use crate::answer::conversation::Conversation;
use crate::answer::prompt::Sampling;
use crate::answer::report::{Authorship, Report};
use crate::caches::{info, CachedAnswer, Caches};
use ragway_retrieval::Chunk;

/// Where one question's answer is looked up and kept.
pub(super) struct Remember {
    caches: Arc<Caches>,
    scope: String,
    key: CacheKey,
}

/// What L1 holds for the question.
pub(super) struct Cached(Lookup<CachedAnswer>);

impl Remember {
    pub(super) fn new(caches: &Arc<Caches>, grounding: &Grounding, sampling: Sampling) -> Self {
        let target = grounding.collection.target(grounding.fusion);
        let asked = asked(&grounding.conversation, sampling, grounding.llm.as_deref());
        let key = caches.key(
            "l1_answer",
            &target,
            &asked,
            grounding.passages,
            &grounding.filter,
        );
        Self {
            caches: caches.clone(),
            scope: target.name.to_string(),
            key,
        }
    }

    pub(super) async fn lookup(&self) -> Cached {
        Cached(self.caches.answers.get(&self.scope, &self.key).await)
    }

    /// Keeps a `normal` answer by `llm`, the first backend tried.
    pub(super) async fn keep(
        &self,
        text: &str,
        citations: &[Citation],
        usage: &TokenUsage,
        llm: &str,
        report: &Report,
    ) {
        let entry = CachedAnswer {
            text: text.to_string(),
            citations: citations.iter().map(|c| (c.index, scored(c))).collect(),
            usage: (usage.prompt_tokens, usage.completion_tokens),
            llm: llm.to_string(),
            degraded: report.degraded(),
            reranked: matches!(report.rerank, StageStatus::Ok | StageStatus::Cached),
        };
        self.caches.answers.put(&self.scope, &self.key, entry).await;
    }
}

impl Cached {
    /// The answer to give without running anything: a fresh entry, or — the budget being spent —
    /// any entry, as `cache_only` (taken out: nothing else is asked of it then).
    pub(super) fn take_fresh(&mut self, budget_spent: bool) -> Option<Served> {
        let (value, age, stale) = match std::mem::replace(&mut self.0, Lookup::Miss) {
            Lookup::Fresh { value, age } => (value, age, false),
            Lookup::Stale { value, age } if budget_spent => (value, age, true),
            other => {
                self.0 = other;
                return None;
            }
        };
        let cache = info("l1", age, stale);
        let mut report = Report::default();
        if budget_spent {
            report.cache_only = true;
            report.degrade("llm", DegradationReason::Quota);
        }
        Some(served(value, report, cache))
    }

    /// When retrieval could not serve at all (its `report`): an entry past its TTL, if there is one.
    pub(super) fn stale_for(&self, report: &Report) -> Option<Served> {
        let Lookup::Stale { value, age } = &self.0 else {
            return None;
        };
        Some(served(value.clone(), report.clone(), info("l1", *age, true)))
    }
}

/// An answer L1 serves: the entry, and the report it is given with.
pub(super) struct Served {
    entry: CachedAnswer,
    report: Report,
}

/// The report of an answer served from `entry`.
fn served(entry: CachedAnswer, mut report: Report, cache: ragway_openapi::CacheInfo) -> Served {
    if cache.stale {
        report.cache = Some(cache);
    } else {
        report.served_from_cache(cache, entry.reranked);
        for d in &entry.degraded {
            report.degrade(d.stage.clone(), d.reason);
        }
    }
    if report.authorship.is_none() {
        report.authorship = Some(Authorship::Primary(entry.llm.clone()));
    }
    Served { entry, report }
}

/// The events of an answer served by L1.
pub(super) fn replay(served: Served) -> Vec<AnswerEvent> {
    let Served { entry, mut report } = served;
    report.finish();
    let meta = AnswerEvent::Meta {
        mode: report.mode(),
        degraded: report.degraded(),
        stages: report.stages(),
        citations: entry.citations.into_iter().map(super::citation).collect(),
        cache: report.cache.clone(),
        next_probe: None,
    };
    let text = entry.text;
    // Served from the cache: nothing was generated for this request, nothing is charged.
    let usage = TokenUsage {
        prompt_tokens: entry.usage.0,
        completion_tokens: entry.usage.1,
    };
    vec![meta, AnswerEvent::Delta { text }, done(&report, usage)]
}

/// What an answer is an answer to, for its L1 key: the question, for a conversation the turns
/// before it and what was searched for, and how it is to be written.
/// What was asked, and of whom (`llm`: a group or backend the request named).
fn asked(conversation: &Conversation, sampling: Sampling, llm: Option<&str>) -> String {
    let mut asked: Vec<&str> = conversation.history.iter().map(|m| m.content.as_str()).collect();
    asked.push(&conversation.question);
    if !conversation.history.is_empty() {
        asked.push(&conversation.search);
    }
    let written = format!(
        "{}\u{1f}{}\u{1f}{}",
        sampling.max_tokens,
        sampling.temperature,
        llm.unwrap_or_default()
    );
    asked.push(&written);
    asked.join("\u{1e}")
}

fn scored(citation: &Citation) -> ScoredChunk {
    ScoredChunk {
        chunk: Chunk {
            chunk_id: citation.chunk_id.clone(),
            doc_id: citation.doc_id.clone(),
            text: citation.text.clone(),
            metadata: citation.metadata.clone(),
        },
        score: citation.score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_written_otherwise_is_another_answer() {
        let question = Conversation::single("how hot is the sun?");
        let short = Sampling {
            max_tokens: 7,
            temperature: 0.0,
        };
        let long = Sampling {
            max_tokens: 300,
            ..short
        };
        let warm = Sampling {
            temperature: 0.7,
            ..short
        };
        assert_eq!(asked(&question, short, None), asked(&question, short, None));
        assert_ne!(asked(&question, short, None), asked(&question, long, None));
        assert_ne!(asked(&question, short, None), asked(&question, warm, None));
        assert_ne!(
            asked(&question, short, None),
            asked(&question, short, Some("chat-mini")),
            "an answer the request asked of another model is another answer"
        );
    }
}
