use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// How an answer was produced; one label per answer. See DESIGN.md, "Modes".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Normal,
    NoRerank,
    DenseOnly,
    KeywordOnly,
    CacheOnly,
    FallbackLlm,
    Extractive,
    Error,
}

impl Mode {
    pub const ALL: [Mode; 8] = [
        Mode::Normal,
        Mode::NoRerank,
        Mode::DenseOnly,
        Mode::KeywordOnly,
        Mode::CacheOnly,
        Mode::FallbackLlm,
        Mode::Extractive,
        Mode::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::NoRerank => "no_rerank",
            Mode::DenseOnly => "dense_only",
            Mode::KeywordOnly => "keyword_only",
            Mode::CacheOnly => "cache_only",
            Mode::FallbackLlm => "fallback_llm",
            Mode::Extractive => "extractive",
            Mode::Error => "error",
        }
    }
}

/// One thing that did not run as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Degradation {
    /// `embed`, `dense`, `keyword`, `rerank` or `llm:<backend>`.
    pub stage: String,
    pub reason: DegradationReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DegradationReason {
    Error,
    Timeout,
    BreakerOpen,
    Deadline,
    /// The stage's queue was full (admission control); the stage was not tried.
    Overloaded,
    /// The passages did not fit the LLM's context window: some were shortened or left out
    /// (stage `prompt`).
    ContextWindow,
    /// The tenant's budget for the stage is spent for today (`over_quota = "degrade"`).
    Quota,
}

/// What one pipeline stage did for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Ok,
    /// Served from a cache without calling the dependency (e.g. a query embedding from L2).
    Cached,
    Skipped,
    Failed,
    NotConfigured,
}

/// Per-stage report on every search and query answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Stages {
    pub embed: StageStatus,
    pub dense: StageStatus,
    pub keyword: StageStatus,
    pub rerank: StageStatus,
    /// The LLM backend that wrote the answer; absent on `/search`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<String>,
    /// The model id that backend was asked for (a model group's member may name its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_model: Option<String>,
    /// Every backend that wrote a part of the answer, in order, when more than one did (one
    /// broke off mid-answer and the next continued it); `llm` is the one that finished it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_parts: Option<Vec<String>>,
    /// How a chat's search question was made from the conversation: `llm` (condensed by the LLM
    /// pool), `concat` (the last question, then earlier ones), `none` (a single question).
    /// Absent outside chats over a collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// The tokens the rewrite's LLM call took, when it made one: part of the answer's `usage`
    /// (which counts everything the request was charged for), listed here apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_usage: Option<TokenUsage>,
}

/// Equality filter on document metadata: every key must hold the given value.
/// Values may be strings, integers or booleans.
pub type MetadataFilter = Map<String, Value>;

/// `POST /v1/collections/{name}/search`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub query: String,
    /// 1–100; the server default applies when absent.
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<MetadataFilter>,
    /// Time budget for this request in ms; at most the server's maximum. Stages that cannot fit
    /// are skipped and reported.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Fusion for this request only; the collection's when absent.
    #[serde(default)]
    pub fusion: Option<crate::FusionSettings>,
}

/// `POST /v1/collections/{name}/search/batch`: several searches of one collection in one request,
/// their queries embedded as one batch and searched concurrently.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSearchRequest {
    /// 1 to `limits.max_batch_queries` searches, answered in this order.
    pub queries: Vec<BatchQuery>,
    /// Time budget for the whole batch in ms; at most the server's maximum.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Fusion for every search of the batch; the collection's when absent.
    #[serde(default)]
    pub fusion: Option<crate::FusionSettings>,
}

/// One search of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    pub query: String,
    /// 1–100; the server default applies when absent.
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<MetadataFilter>,
}

/// Each search's result, in the order asked, each with its own `mode`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchSearchResponse {
    pub results: Vec<SearchResponse>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Hit {
    pub doc_id: String,
    pub chunk_id: String,
    pub text: String,
    /// Fused or reranker score; higher is better.
    pub score: f32,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Which engines found this chunk: `dense`, `keyword`.
    pub engines: Vec<String>,
}

/// Which cache layer served an answer (or its retrieval), how old the entry was, and whether it
/// was past its TTL (served only because neither retrieval path could answer: mode `cache_only`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CacheInfo {
    /// `l1` (the whole answer) or `l3` (the retrieval results).
    pub layer: String,
    pub age_ms: u64,
    pub stale: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    pub hits: Vec<Hit>,
    pub mode: Mode,
    pub degraded: Vec<Degradation>,
    pub stages: Stages,
    /// Null when no cache layer served this answer.
    pub cache: Option<CacheInfo>,
    /// Milliseconds spent per stage, and `total`.
    pub timings_ms: BTreeMap<String, f64>,
}

/// `POST /v1/collections/{name}/query`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub query: String,
    /// Passages given to the LLM, 1–100; the server default applies when absent.
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<MetadataFilter>,
    /// Answer as Server-Sent Events: `meta` (mode, degraded, stages, citations), `delta`…,
    /// `degraded` (a backend failed mid-answer), `done`.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Time budget for this request in ms; at most the server's maximum.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Fusion for this request only; the collection's when absent.
    #[serde(default)]
    pub fusion: Option<crate::FusionSettings>,
    /// Who writes the answer: a model group or one LLM backend of the pool (its fallback as for
    /// plain chat); every backend by priority when absent. An unknown name is a 404.
    #[serde(default)]
    pub llm: Option<String>,
}

/// A passage the answer was grounded on; `index` is the `[n]` used in the answer text.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Citation {
    pub index: usize,
    pub doc_id: String,
    pub chunk_id: String,
    pub text: String,
    pub score: f32,
    /// The chunk's metadata (its document's, and for a file its `source`, `page` or `heading`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryResponse {
    pub answer: String,
    /// Passages cited in the answer; when the model cited none explicitly, the passages it was given.
    pub citations: Vec<Citation>,
    pub mode: Mode,
    pub degraded: Vec<Degradation>,
    pub stages: Stages,
    /// Null when no cache layer served this answer.
    pub cache: Option<CacheInfo>,
    pub timings_ms: BTreeMap<String, f64>,
    pub usage: TokenUsage,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}
