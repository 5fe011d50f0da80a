//! What each stage did for one request, and the single `mode` label that follows from it.

use std::collections::BTreeMap;
use std::time::Instant;

use ragway_openapi::{CacheInfo, Degradation, DegradationReason, Mode, StageStatus, Stages, TokenUsage};

/// How the search question was made: `llm`, `concat` or `none` (`stages.rewrite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    Llm,
    Concat,
    None,
}

impl Rewrite {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llm => "llm",
            Self::Concat => "concat",
            Self::None => "none",
        }
    }
}

/// Which LLM wrote the answer, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorship {
    /// The first configured backend.
    Primary(String),
    /// A later backend, after the ones before it failed.
    Fallback(String),
    /// No backend answered; the answer quotes passages.
    Extractive,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub embed: StageStatus,
    pub dense: StageStatus,
    pub keyword: StageStatus,
    pub rerank: StageStatus,
    pub authorship: Option<Authorship>,
    /// The model id the writing backend was asked for.
    pub model: Option<String>,
    /// The cache layer that served the answer or its retrieval, if one did.
    pub cache: Option<CacheInfo>,
    /// Served from a cache because the stage after it may not run (a spent budget): `cache_only`
    /// however fresh the entry.
    pub cache_only: bool,
    /// Tokens the embedder took for this request (charged to the tenant).
    pub embedding_tokens: u64,
    /// How a chat's search question was made (chats over a collection only).
    pub rewrite: Option<Rewrite>,
    /// What the LLM call that rewrote it took (charged to the tenant, and reported in the
    /// answer's usage beside what the answer took).
    pub rewrite_usage: Option<TokenUsage>,
    /// The backends that wrote the answer's parts, in order (more than one after a failover
    /// mid-answer).
    pub parts: Vec<String>,
    /// Every LLM backend tried was refused by its open breaker: the soonest next probe among them.
    pub next_probe: Option<std::time::Duration>,
    /// False for a bare-LLM chat, which retrieves nothing: its mode depends on the LLM alone.
    retrieval: bool,
    degraded: Vec<Degradation>,
    pub timings_ms: BTreeMap<String, f64>,
    started: Instant,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            embed: StageStatus::Skipped,
            dense: StageStatus::Skipped,
            keyword: StageStatus::Skipped,
            rerank: StageStatus::Skipped,
            authorship: None,
            model: None,
            cache: None,
            cache_only: false,
            embedding_tokens: 0,
            rewrite: None,
            rewrite_usage: None,
            parts: Vec::new(),
            next_probe: None,
            retrieval: true,
            degraded: Vec::new(),
            timings_ms: BTreeMap::new(),
            started: Instant::now(),
        }
    }
}

impl Report {
    /// The report of a chat with an LLM backend directly, without retrieval.
    pub fn bare_llm() -> Self {
        Self {
            retrieval: false,
            ..Self::default()
        }
    }

    pub fn degrade(&mut self, stage: impl Into<String>, reason: DegradationReason) {
        self.degraded.push(Degradation {
            stage: stage.into(),
            reason,
        });
    }

    /// Takes in what a branch that ran on its own report did: its stage statuses (where it ran
    /// them), timings and degradations.
    pub fn merge(&mut self, branch: Report) {
        let stages = [
            (&mut self.embed, branch.embed),
            (&mut self.dense, branch.dense),
            (&mut self.keyword, branch.keyword),
            (&mut self.rerank, branch.rerank),
        ];
        for (mine, theirs) in stages {
            if theirs != StageStatus::Skipped {
                *mine = theirs;
            }
        }
        self.timings_ms.extend(branch.timings_ms);
        self.degraded.extend(branch.degraded);
        self.embedding_tokens += branch.embedding_tokens;
    }

    pub fn record_time(&mut self, stage: &str, since: Instant) {
        let seconds = since.elapsed().as_secs_f64();
        metrics::histogram!("ragway_stage_duration_seconds", "stage" => stage.to_string()).record(seconds);
        self.timings_ms.insert(stage.to_string(), seconds * 1e3);
    }

    fn dense_path_ok(&self) -> bool {
        served(self.embed) && served(self.dense)
    }

    /// Marks every retrieval stage as served by a cache layer. Only `normal` results are
    /// cached, so a result that was not reranked had no reranker configured.
    pub fn served_from_cache(&mut self, cache: CacheInfo, reranked: bool) {
        self.embed = StageStatus::Cached;
        self.dense = StageStatus::Cached;
        self.keyword = StageStatus::Cached;
        self.rerank = if reranked {
            StageStatus::Cached
        } else {
            StageStatus::NotConfigured
        };
        self.cache = Some(cache);
    }

    /// The most severe consequence of what happened; see DESIGN.md's table of modes.
    pub fn mode(&self) -> Mode {
        if !self.retrieval {
            return match self.authorship {
                Some(Authorship::Primary(_)) => Mode::Normal,
                Some(Authorship::Fallback(_)) => Mode::FallbackLlm,
                Some(Authorship::Extractive) | None => Mode::Error,
            };
        }
        if self.cache_only || self.cache.as_ref().is_some_and(|c| c.stale) {
            return Mode::CacheOnly;
        }
        let keyword_ok = served(self.keyword);
        if !self.dense_path_ok() && !keyword_ok {
            return Mode::Error;
        }
        if self.authorship == Some(Authorship::Extractive) {
            return Mode::Extractive;
        }
        if !self.dense_path_ok() {
            return Mode::KeywordOnly;
        }
        if !keyword_ok {
            return Mode::DenseOnly;
        }
        if matches!(self.authorship, Some(Authorship::Fallback(_))) {
            return Mode::FallbackLlm;
        }
        if self.rerank == StageStatus::Failed || self.rerank == StageStatus::Skipped {
            return Mode::NoRerank;
        }
        Mode::Normal
    }

    /// Every degradation, most severe first (in the order of the mode table), then in the
    /// order they happened.
    pub fn degraded(&self) -> Vec<Degradation> {
        let extractive = self.authorship == Some(Authorship::Extractive);
        let severity = |d: &Degradation| match d.stage.as_str() {
            s if s.starts_with("llm:") && extractive => 0,
            "embed" | "dense" => 1,
            "keyword" => 2,
            s if s.starts_with("llm:") => 3,
            _ => 4,
        };
        let mut degraded = self.degraded.clone();
        degraded.sort_by_key(severity);
        degraded
    }

    /// The answer's LLM was not the one the request would have had (a tenant's spent budget left
    /// it only the cheaper backends): its author is a fallback.
    pub fn demote_to_fallback(&mut self) {
        if let Some(Authorship::Primary(name)) = &self.authorship {
            self.authorship = Some(Authorship::Fallback(name.clone()));
        }
    }

    /// The LLM backend that wrote the answer, if one did.
    pub fn llm_backend(&self) -> Option<&str> {
        match &self.authorship {
            Some(Authorship::Primary(name) | Authorship::Fallback(name)) => Some(name),
            _ => None,
        }
    }

    pub fn stages(&self) -> Stages {
        Stages {
            embed: self.embed,
            dense: self.dense,
            keyword: self.keyword,
            rerank: self.rerank,
            llm: self.authorship.as_ref().map(|a| match a {
                Authorship::Primary(name) | Authorship::Fallback(name) => name.clone(),
                Authorship::Extractive => "extractive".to_string(),
            }),
            llm_model: self.llm_backend().and(self.model.clone()),
            llm_parts: (self.parts.len() > 1).then(|| self.parts.clone()),
            rewrite: self.rewrite.map(|r| r.as_str().to_string()),
            rewrite_usage: self.rewrite_usage,
        }
    }

    /// Total time so far, recorded as `total`.
    pub fn finish(&mut self) {
        self.timings_ms
            .insert("total".into(), self.started.elapsed().as_secs_f64() * 1e3);
    }
}

/// The stage's result is there, computed now or by an earlier request.
fn served(status: StageStatus) -> bool {
    matches!(status, StageStatus::Ok | StageStatus::Cached)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ok() -> Report {
        Report {
            embed: StageStatus::Ok,
            dense: StageStatus::Ok,
            keyword: StageStatus::Ok,
            rerank: StageStatus::Ok,
            authorship: Some(Authorship::Primary("local".into())),
            ..Default::default()
        }
    }

    #[test]
    fn modes_follow_the_table() {
        assert_eq!(all_ok().mode(), Mode::Normal);
        let mut r = all_ok();
        r.rerank = StageStatus::NotConfigured;
        assert_eq!(r.mode(), Mode::Normal, "no reranker configured is still normal");
        r.rerank = StageStatus::Failed;
        assert_eq!(r.mode(), Mode::NoRerank);
        r.authorship = Some(Authorship::Fallback("b".into()));
        assert_eq!(r.mode(), Mode::FallbackLlm);
        r.keyword = StageStatus::Failed;
        assert_eq!(r.mode(), Mode::DenseOnly);
        r.keyword = StageStatus::Ok;
        r.embed = StageStatus::Cached;
        assert_eq!(
            r.mode(),
            Mode::FallbackLlm,
            "a cached embedding is a working dense path"
        );
        r.embed = StageStatus::Failed;
        assert_eq!(r.mode(), Mode::KeywordOnly);
        r.authorship = Some(Authorship::Extractive);
        assert_eq!(r.mode(), Mode::Extractive);
        r.keyword = StageStatus::Failed;
        assert_eq!(r.mode(), Mode::Error);
        r.cache = Some(CacheInfo {
            layer: "l1".into(),
            age_ms: 5,
            stale: true,
        });
        assert_eq!(
            r.mode(),
            Mode::CacheOnly,
            "a stale entry answered for the failed engines"
        );
    }

    #[test]
    fn a_fresh_cache_hit_is_normal() {
        let mut r = Report::default();
        let fresh = CacheInfo {
            layer: "l3".into(),
            age_ms: 5,
            stale: false,
        };
        r.served_from_cache(fresh, false);
        r.authorship = Some(Authorship::Primary("local".into()));
        assert_eq!(r.mode(), Mode::Normal);
    }

    #[test]
    fn a_bare_llm_chat_is_judged_by_its_llm_alone() {
        let mut r = Report::bare_llm();
        assert_eq!(r.mode(), Mode::Error, "no LLM answered yet");
        r.authorship = Some(Authorship::Primary("local".into()));
        assert_eq!(r.mode(), Mode::Normal);
        r.authorship = Some(Authorship::Fallback("b".into()));
        assert_eq!(r.mode(), Mode::FallbackLlm);
        r.authorship = Some(Authorship::Extractive);
        assert_eq!(r.mode(), Mode::Error);
    }

    #[test]
    fn degradations_most_severe_first() {
        let mut r = all_ok();
        r.degrade("rerank", DegradationReason::Timeout);
        r.degrade("llm:a", DegradationReason::Error);
        r.degrade("keyword", DegradationReason::Error);
        let stages: Vec<_> = r.degraded().into_iter().map(|d| d.stage).collect();
        assert_eq!(stages, ["keyword", "llm:a", "rerank"]);
        r.authorship = Some(Authorship::Extractive);
        let stages: Vec<_> = r.degraded().into_iter().map(|d| d.stage).collect();
        assert_eq!(stages, ["llm:a", "keyword", "rerank"]);
    }
}
