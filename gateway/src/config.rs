//! One typed configuration: defaults → TOML file → `RAGWAY__SECTION__KEY` env vars → CLI flags.
//! Unknown keys are rejected; [`Config::validate`] names the bad key and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ragway_openapi::{FusionMethod, FusionSettings};
use ragway_worker::onnx::Precision;
use serde::{Deserialize, Serialize};

use crate::tenancy::tenants::Limits;

mod model_groups;
pub mod redact;

pub use model_groups::{GroupMember, Member, MemberEntry, ModelGroupConfig};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub models: ModelsConfig,
    pub retrieval: RetrievalConfig,
    pub generation: GenerationConfig,
    pub resilience: ResilienceConfig,
    pub limits: LimitsConfig,
    pub ingest: IngestConfig,
    pub queues: QueuesConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub quotas: QuotasConfig,
    pub store: StoreConfig,
    pub snapshots: SnapshotsConfig,
    /// Tried in order of `priority` (default: position in this list); backends of equal priority
    /// share load, the lowest priority is the primary.
    pub llm: Vec<LlmBackendConfig>,
    /// Names clients may ask for as `model`, each an ordered fallback over `llm` backends.
    pub model_groups: Vec<ModelGroupConfig>,
}

/// Scheduled snapshots of every collection (an operator's backup).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    /// Seconds between a collection's snapshots; 0: none are scheduled.
    pub every_s: u64,
    /// Snapshots of each collection kept; older ones are removed.
    pub keep: usize,
    /// Collections (by full name, as `GET /admin/snapshots` lists them: `<tenant>.<name>`, or the
    /// name alone in open mode) with a schedule of their own, over the one above.
    pub collections: std::collections::BTreeMap<String, CollectionSnapshots>,
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        Self {
            every_s: 0,
            keep: 7,
            collections: Default::default(),
        }
    }
}

/// `[snapshots.collections."<name>"]`: one collection's schedule; what it leaves out is the
/// global one's.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectionSnapshots {
    /// 0: this collection is not snapshotted.
    pub every_s: Option<u64>,
    pub keep: Option<usize>,
}

impl ServerConfig {
    /// Where snapshots are written and restored from: `snapshot_dir`, or `<data_dir>/snapshots`.
    pub fn snapshots_dir(&self) -> PathBuf {
        match self.snapshot_dir.as_os_str().is_empty() {
            true => self.data_dir.join("snapshots"),
            false => self.snapshot_dir.clone(),
        }
    }
}

/// Where chunks are stored and searched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `edge`: Qdrant Edge and tantivy in process under `server.data_dir` (one machine, the
    /// default); `qdrant`: a Qdrant server, dense and BM25 sparse vectors in one collection, shared
    /// by every replica.
    pub kind: StoreKind,
    /// The Qdrant server's gRPC address (`kind = "qdrant"`), when `urls` is empty.
    pub url: String,
    /// The gRPC addresses of the nodes of a Qdrant cluster (`kind = "qdrant"`): requests are
    /// spread over the healthy ones, and a node that fails is skipped until it answers again.
    pub urls: Vec<String>,
    /// Name of the environment variable holding Qdrant's API key, if it needs one.
    pub api_key_env: Option<String>,
    /// Qdrant collection names are `<prefix><tenant>.<collection>`.
    pub collection_prefix: String,
    /// Shards of a new collection; default 2 with several `urls` (a cluster), else 1.
    pub shards: Option<u32>,
    /// Replicas of each shard of a new collection; default 2 with several `urls`, else 1.
    pub replication_factor: Option<u32>,
    /// The replicas of a shard that must have applied a write before Qdrant answers. Qdrant
    /// applies each write to every active replica first (and marks one that failed it dead
    /// through consensus), so 1 keeps writes going while a node is down; more refuses writes
    /// to a shard with fewer live replicas.
    pub write_consistency_factor: u32,
    pub timeout_ms: u64,
    /// `kind = "qdrant"`: search both engines in one request (fused in Qdrant where it fuses as
    /// ragway does) while both are healthy; `false`: one request per engine, concurrently.
    pub one_round_trip: bool,
    /// `kind = "edge"`, collections created from now on: `int8` keeps an int8 copy of each vector
    /// in memory for the HNSW search and rescores the best candidates on the originals; `none`
    /// searches the originals. Applied to a segment when it is indexed (past 20,000 points).
    pub quantization: Quantization,
    /// `kind = "edge"`, collections created from now on: the original vectors memory-mapped from
    /// disk (the page cache holds what searches read) rather than in the process's memory.
    pub vectors_on_disk: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    Int8,
    None,
}

impl StoreConfig {
    /// The Qdrant nodes to talk to: `urls`, or `url` alone.
    pub fn nodes(&self) -> Vec<String> {
        match self.urls.is_empty() {
            true => vec![self.url.clone()],
            false => self.urls.clone(),
        }
    }

    /// Several nodes: a cluster, whose collections are sharded and replicated by default.
    fn cluster(&self) -> bool {
        self.nodes().len() > 1
    }

    pub fn shard_count(&self) -> u32 {
        self.shards.unwrap_or(if self.cluster() { 2 } else { 1 })
    }

    pub fn replicas(&self) -> u32 {
        self.replication_factor
            .unwrap_or(if self.cluster() { 2 } else { 1 })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Edge,
    Qdrant,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Edge,
            url: "http://127.0.0.1:6334".into(),
            urls: Vec::new(),
            api_key_env: None,
            collection_prefix: "ragway_".into(),
            shards: None,
            replication_factor: None,
            write_consistency_factor: 1,
            timeout_ms: 5_000,
            one_round_trip: true,
            quantization: Quantization::Int8,
            vectors_on_disk: true,
        }
    }
}

pub use crate::validate::LimitsConfig;

/// Ingestion: small requests are answered when durable; larger ones, and `"wait": false`, become
/// background jobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Requests with more documents than this always run as background jobs (`202`).
    pub sync_max_documents: usize,
    /// Chunks embedded and written per batch; each batch is durable before the next starts.
    pub batch_chunks: usize,
    /// The same for an import (`/import`), whose lines often come with their vectors: larger
    /// batches write faster.
    pub import_batch_chunks: usize,
    /// Background jobs running at once.
    pub max_concurrent_jobs: usize,
    /// Time one batch may take to embed.
    pub embed_timeout_ms: u64,
    /// Finished jobs kept for `GET /v1/jobs/{id}`; older ones are forgotten.
    pub keep_finished_jobs: usize,
    /// Background jobs one process holds unfinished (queued or running), all tenants together;
    /// one more is refused with `503 ingest_queue_full` and `Retry-After`, nothing stored.
    pub max_queued_jobs: usize,
    /// Of those, one tenant's share; one more is refused with `429 job_quota_exceeded`.
    pub max_queued_jobs_per_tenant: usize,
    /// A file's chunks: at most this many of the embedder's tokens, heading included.
    pub file_chunk_tokens: usize,
    /// Tokens a file's chunk shares with the one before it (within a section).
    pub file_chunk_overlap_tokens: usize,
    /// Files read at once (text extraction, off the runtime), all uploads together; one more
    /// upload waits for a turn.
    pub max_concurrent_file_reads: usize,
    /// Whether `/files` may fetch URLs (`url` fields): the server then makes requests where its
    /// callers say, so it is off unless the operator turns it on.
    pub allow_url_fetch: bool,
    /// One URL's fetch, whole.
    pub url_fetch_timeout_ms: u64,
}

/// Admission control: tasks that may wait for each model worker. A full queue answers at once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueuesConfig {
    /// Query embeddings waiting.
    pub embedder_interactive: usize,
    /// Bulk embedding requests (ingestion batches, `/v1/embeddings`) waiting.
    pub embedder_bulk: usize,
    pub reranker: usize,
    /// Generations waiting for each local LLM.
    pub local_llm: usize,
}

/// The cache layers (docs/ARCHITECTURE.md, "Caches"): L1 whole answers, L2 query embeddings,
/// L3 retrieval results, L4 the local LLM's prompt prefixes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub l1: CacheLayerConfig,
    pub l2: CacheLayerConfig,
    pub l3: CacheLayerConfig,
    pub l4: CacheLayerConfig,
    /// How long past its TTL an L1/L3 entry is kept, to answer (`cache_only`) when neither
    /// retrieval path can.
    pub stale_if_error_s: u64,
    /// Keep entries in process too (false: only in Redis, so every replica sees one copy; only
    /// with `redis.url`).
    pub local_tier: bool,
    pub redis: RedisConfig,
}

/// One layer's bounds; `max_entries = 0` turns the layer off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheLayerConfig {
    pub ttl_s: u64,
    pub max_entries: u64,
}

/// The shared cache tier; neither `url` nor `sentinels`: in-process caches only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// e.g. `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Redis Sentinel addresses (`host:port`), instead of `url`: ragway talks to the primary they
    /// name for `master` and follows a failover without a restart.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master: String,
    /// Replicas a write that must outlive the primary (collections, jobs, tenants and keys,
    /// leases) waits for (`WAIT`) before it is acknowledged; default 1 with `sentinels`, else 0.
    pub replicas_to_wait: Option<usize>,
    /// The longest such a write waits for them.
    pub replica_wait_ms: u64,
    /// The longest any Redis call may take before the answer goes on without it.
    pub timeout_ms: u64,
}

impl RedisConfig {
    /// Where Redis is, if it is configured.
    pub fn target(&self) -> Option<ragway_cache::RedisTarget> {
        if !self.sentinels.is_empty() {
            return Some(ragway_cache::RedisTarget::Sentinel {
                sentinels: self.sentinels.clone(),
                master: self.master.clone(),
            });
        }
        (!self.url.is_empty()).then(|| ragway_cache::RedisTarget::Url(self.url.clone()))
    }

    pub fn enabled(&self) -> bool {
        self.target().is_some()
    }

    /// How writes that must outlive the primary wait for its replicas.
    pub fn durability(&self) -> ragway_cache::Durability {
        ragway_cache::Durability {
            replicas: self
                .replicas_to_wait
                .unwrap_or(usize::from(!self.sentinels.is_empty())),
            wait: Duration::from_millis(self.replica_wait_ms),
        }
    }

    /// `url`, or the sentinels and master, for messages.
    pub fn describe(&self) -> String {
        match self.sentinels.is_empty() {
            true => format!("cache.redis.url = {:?}", self.url),
            false => format!(
                "cache.redis.sentinels = {:?} (master {:?})",
                self.sentinels, self.master
            ),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        let layer = |ttl_s, max_entries| CacheLayerConfig { ttl_s, max_entries };
        Self {
            l1: layer(3_600, 10_000),
            l2: layer(86_400, 50_000),
            l3: layer(900, 10_000),
            l4: layer(600, 4),
            stale_if_error_s: 3_600,
            local_tier: true,
            redis: RedisConfig::default(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            sentinels: Vec::new(),
            master: "mymaster".into(),
            replicas_to_wait: None,
            replica_wait_ms: 500,
            timeout_ms: 50,
        }
    }
}

/// Who may call the data routes (`/v1/*`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every `/v1` call needs `Authorization: Bearer <tenant key>` (keys from `/admin/tenants`).
    #[default]
    Keys,
    /// No keys: every caller is one implicit tenant without limits (a laptop; logged as a warning).
    Open,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { mode: AuthMode::Keys }
    }
}

/// How per-tenant quotas are enforced (the limits themselves belong to each tenant).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// With Redis (`cache.redis.url`) unreachable, each replica enforces `limit /
    /// expected_replicas` on its own until Redis is back.
    pub expected_replicas: u32,
    /// Tenants with a label of their own on `ragway_tenant_*` metrics; later ones share `other`.
    pub metric_tenants: usize,
    /// What a tenant gets for each limit its create (or update) request leaves out: a tenant is
    /// never unlimited by omission. A limit set here to nothing stays unlimited.
    pub default_limits: Limits,
    /// API keys one tenant may hold at once (its record holds them all, and is written whole).
    pub max_keys_per_tenant: usize,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            expected_replicas: 1,
            metric_tenants: 50,
            max_keys_per_tenant: 100,
            default_limits: Limits {
                requests_per_second: Some(100.0),
                burst: Some(200),
                concurrent_streams: Some(32),
                collections: Some(64),
                ..Limits::default()
            },
        }
    }
}

/// Deadlines, stage timeouts and circuit breakers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    /// Deadline of a request that does not set `deadline_ms`.
    pub default_deadline_ms: u64,
    /// The most a request may ask for.
    pub max_deadline_ms: u64,
    pub embed_timeout_ms: u64,
    pub dense_timeout_ms: u64,
    pub keyword_timeout_ms: u64,
    pub rerank_timeout_ms: u64,
    /// Consecutive failures or timeouts that open a dependency's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before the next real call goes through as its
    /// probe (one at a time): a dependency that recovers is refused for at most this and a probe.
    pub breaker_open_ms: u64,
    /// Lets each failed probe double the open period up to this; unset (the default), the
    /// period stays `breaker_open_ms`.
    pub breaker_max_open_ms: Option<u64>,
    /// The longest upstream `Retry-After` an LLM call waits out before retrying the same
    /// backend; a longer one moves the call to the next backend at once.
    pub llm_retry_after_cap_ms: u64,
    /// Name of the environment variable holding the admin key (`/admin/*`); unset disables them.
    pub admin_key_env: String,
    /// After a stream's first token, the longest wait for the next one; a stalled backend is
    /// charged to its breaker and the answer is continued by the next backend.
    pub stream_idle_timeout_ms: u64,
    /// The longest the last backend a request can try waits for its first token when that is
    /// longer than the backend's own `ttft_timeout_ms` (never past the request's deadline; the
    /// breaker's probe always waits only its own).
    pub max_patient_wait_ms: u64,
    /// The longest a streamed answer waits for its client to take the next event (a client that
    /// stops reading); past it the stream is cut, the backend's request dropped, what was
    /// produced charged and the tenant's stream place freed.
    pub client_stall_timeout_ms: u64,
}

/// The longest a server timeout may be: far beyond any sane setting, and far from where adding
/// it to a clock reading could overflow.
const MAX_SERVER_TIMEOUT_MS: u64 = 86_400_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Collections (dense and keyword indexes, manifests) live under `<data_dir>/collections`.
    pub data_dir: PathBuf,
    /// Where snapshots are written and restored from; empty: `<data_dir>/snapshots`. Replicas
    /// that share one (a shared volume) restore on any replica what any replica wrote.
    pub snapshot_dir: PathBuf,
    pub max_body_bytes: usize,
    pub max_query_chars: usize,
    pub max_documents_per_request: usize,
    /// Connections open at once; a connection beyond them gets one `503 overloaded` and is
    /// closed.
    pub max_connections: usize,
    /// A request's headers must arrive within this, counted from when the connection is ready
    /// for one: it is also how long an idle keep-alive connection stays open.
    pub header_timeout_ms: u64,
    /// A request's whole body must arrive within this after its headers (`408` otherwise).
    pub body_timeout_ms: u64,
    /// On SIGTERM, how long open requests (streams included) get to finish before the process
    /// exits anyway.
    pub shutdown_grace_ms: u64,
    /// The `Host` names `/mcp` answers (DNS-rebinding protection); `None`: any host while keys
    /// are required, only loopback names with `auth.mode = "open"`.
    pub mcp_allowed_hosts: Option<Vec<String>>,
    /// Serve the web console at `/console` (its pages are public; everything it shows is read
    /// with the key a person signs in with).
    pub console: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Where fetched models live (scripts/fetch-models.sh and Hugging Face downloads).
    pub cache_dir: PathBuf,
    /// A model directory, `hf:<model id>`, or a remote OpenAI-compatible embedding service as
    /// `openai:<base_url>#<model>` (e.g. `openai:http://tei:8080/v1#bge-small-en`).
    pub embedder: String,
    /// The environment variable holding the remote embedder's API key, if it needs one.
    pub embedder_api_key_env: Option<String>,
    /// A cross-encoder directory, or `hf:<model id>`; empty means no reranking.
    pub reranker: String,
    /// Use a GPU when built with the `cuda` feature and one is present.
    pub use_gpu: bool,
    /// What runs the embedder: `onnx` (ONNX Runtime), `candle`, or `auto` (onnx when its runtime
    /// and the model's `model.onnx` are present, otherwise candle).
    pub embedder_backend: ModelBackend,
    pub reranker_backend: ModelBackend,
    /// Which ONNX graph runs: `fp32` (equal to PyTorch, the default) or `int8` (≈ 2.5× faster on
    /// a CPU, embeddings at cosine ≈ 0.994 to fp32; see docs/BENCHMARKS.md for its retrieval
    /// quality). Keep one precision per collection's lifetime: vectors are compared across both.
    pub embedder_precision: Precision,
    pub reranker_precision: Precision,
    /// ONNX Runtime's shared library; unset: the one scripts/fetch-models.sh puts in `cache_dir`.
    pub onnx_runtime: Option<PathBuf>,
    /// Intra-op threads of each ONNX Runtime session; 0: one per core.
    pub onnx_threads: usize,
}

impl ModelsConfig {
    /// ONNX Runtime's shared library: `onnx_runtime`, or where scripts/fetch-models.sh puts it.
    pub fn onnx_library(&self) -> PathBuf {
        self.onnx_runtime
            .clone()
            .unwrap_or_else(|| self.cache_dir.join("onnxruntime-1.31.1/libonnxruntime.so.1.31.1"))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModelBackend {
    Auto,
    Onnx,
    Candle,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalConfig {
    pub chunk_words: usize,
    pub chunk_overlap_words: usize,
    /// How a collection's dense and keyword lists are fused unless it (or a request) says
    /// otherwise: `{method = "adaptive" | "rrf" | "convex" | "dbsf", k?, alpha?, normalization?}`.
    pub fusion: FusionSettings,
    pub default_top_k: usize,
    pub max_top_k: usize,
    /// Hits each engine contributes to fusion.
    pub candidates: usize,
    /// Fused hits the cross-encoder rescores.
    pub rerank_candidates: usize,
    pub embed_batch: usize,
    /// Texts of bulk embedding work (ingestion, `/v1/embeddings`) embedded at a time; a query
    /// waits behind at most this many.
    pub embed_bulk_slice: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    pub max_tokens: usize,
    pub temperature: f64,
    /// Passages given to the LLM when the request does not say.
    pub default_passages: usize,
    /// The most tokens a chat request may ask for (`max_tokens`).
    pub max_tokens_cap: usize,
    /// The most choices (`n`) a chat relayed to a remote backend may ask for.
    pub max_choices: usize,
}

// No `deny_unknown_fields` here: serde does not support it beside `flatten`; the flattened enum
// below rejects unknown keys instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlmBackendConfig {
    pub name: String,
    /// Lower is tried first; equal priorities share load. Default: the position in the list.
    #[serde(default)]
    pub priority: Option<u32>,
    /// The whole answer. Default: 120 s for a local model (a CPU needs seconds for a long
    /// prompt), 30 s for a remote one.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The first token of a streamed answer. Default: 60 s local, 10 s remote. The last backend
    /// a request can try waits longer (`resilience.max_patient_wait_ms`, within the deadline):
    /// nothing else could answer.
    #[serde(default)]
    pub ttft_timeout_ms: Option<u64>,
    /// The longest wait between two pieces of a streamed answer. Default:
    /// `resilience.stream_idle_timeout_ms`.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Its tokens do not count against a tenant's `llm_tokens_per_day`, and a tenant whose budget
    /// is spent is still answered by it (mode `fallback_llm`, degraded `llm: quota`) before the
    /// extractive answer: the cheaper backend (e.g. the local model next to a paid API).
    #[serde(default)]
    pub unmetered: bool,
    /// Whether it continues a partial answer given as the last (assistant) message. A backend
    /// that does not is never asked to continue another's answer mid-stream (the continuation
    /// goes to one that does first); it may still answer afresh. Default: true.
    #[serde(default = "yes")]
    pub accepts_prefill: bool,
    #[serde(flatten)]
    pub kind: LlmBackendKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LlmBackendKind {
    /// A GGUF chat model run in process.
    Local {
        /// A `.gguf` file, a directory holding one, or `hf:<repo>/<file>.gguf`.
        model: String,
        /// No longer applies: llama.cpp runs the quantized weights as they are. Accepted (and
        /// ignored, with a warning) so that older config files still load.
        #[serde(default, skip_serializing)]
        dequantize: Option<bool>,
        /// Use at most this many tokens of the model's context window (prompt and answer); bounds
        /// the prefill cost of one request on a CPU. Default: the model's whole window, as far as
        /// the KV cache holds it.
        #[serde(default)]
        context_tokens: Option<usize>,
        /// The KV cache's size in tokens (about 23 KB each for SmolLM2-135M), shared by the
        /// answers being written together (`queues.local_llm` of them); L4's kept prompt states, in
        /// memory beside it, hold at most as many tokens again.
        #[serde(default = "default_kv_tokens")]
        kv_tokens: usize,
    },
    /// An OpenAI-compatible chat completions server.
    Openai {
        base_url: String,
        model: String,
        /// Name of the environment variable holding the API key (the key itself never sits in
        /// config files or logs).
        #[serde(default)]
        api_key_env: Option<String>,
        /// Retries of retryable failures (connect, 429, 5xx), with jittered backoff.
        #[serde(default = "default_retries")]
        max_retries: u32,
    },
}

/// A backend's place in the pool and its time limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendLimits {
    pub priority: u32,
    pub timeout: Duration,
    pub time_to_first_token: Duration,
    /// The longest wait between two pieces of a stream.
    pub idle: Duration,
    /// How long it waits for a first token as the last backend a request can try.
    pub patience: Duration,
    pub max_retries: u32,
}

impl LlmBackendConfig {
    /// The backend's limits; its priority defaults to its `position` in the list, its idle limit
    /// to `resilience.stream_idle_timeout_ms`.
    pub fn limits(&self, position: usize, resilience: &ResilienceConfig) -> BackendLimits {
        let idle = Duration::from_millis(resilience.stream_idle_timeout_ms);
        let (timeout_ms, ttft_ms, max_retries) = match &self.kind {
            LlmBackendKind::Local { .. } => (120_000, 60_000, 0),
            LlmBackendKind::Openai { max_retries, .. } => (30_000, 10_000, *max_retries),
        };
        BackendLimits {
            priority: self.priority.unwrap_or(position as u32),
            timeout: Duration::from_millis(self.timeout_ms.unwrap_or(timeout_ms)),
            time_to_first_token: Duration::from_millis(self.ttft_timeout_ms.unwrap_or(ttft_ms)),
            idle: self.idle_timeout_ms.map_or(idle, Duration::from_millis),
            patience: Duration::from_millis(resilience.max_patient_wait_ms),
            max_retries,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_retries() -> u32 {
    2
}

fn default_kv_tokens() -> usize {
    16_384
}

pub fn default_models_dir() -> PathBuf {
    std::env::var_os("RAGWAY_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ragway/models")))
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// The default fusion: weighted per query, holding on a dense-led collection (trec-dl-5k) and a
/// level one (vaswani) alike (docs/BENCHMARKS.md, "Fusion that carries").
fn default_fusion() -> FusionSettings {
    FusionSettings {
        method: FusionMethod::Adaptive,
        k: None,
        alpha: None,
        normalization: None,
    }
}

impl Default for Config {
    fn default() -> Self {
        let models = default_models_dir();
        Self {
            server: ServerConfig::default(),
            models: ModelsConfig::default(),
            retrieval: RetrievalConfig::default(),
            generation: GenerationConfig::default(),
            resilience: ResilienceConfig::default(),
            limits: LimitsConfig::default(),
            ingest: IngestConfig::default(),
            queues: QueuesConfig::default(),
            cache: CacheConfig::default(),
            auth: AuthConfig::default(),
            quotas: QuotasConfig::default(),
            store: StoreConfig::default(),
            snapshots: SnapshotsConfig::default(),
            llm: vec![LlmBackendConfig {
                name: "local".into(),
                priority: None,
                timeout_ms: None,
                ttft_timeout_ms: None,
                idle_timeout_ms: None,
                unmetered: false,
                accepts_prefill: true,
                kind: LlmBackendKind::Local {
                    model: models.join("smollm2-135m-instruct").display().to_string(),
                    dequantize: None,
                    context_tokens: None,
                    kv_tokens: default_kv_tokens(),
                },
            }],
            model_groups: Vec::new(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("data"),
            snapshot_dir: PathBuf::new(),
            max_body_bytes: 16 * 1024 * 1024,
            max_query_chars: 2_000,
            max_documents_per_request: 1_000,
            max_connections: 4_096,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            mcp_allowed_hosts: None,
            console: true,
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        let cache_dir = default_models_dir();
        Self {
            embedder: cache_dir.join("all-minilm-l6-v2").display().to_string(),
            embedder_api_key_env: None,
            reranker: String::new(),
            onnx_runtime: None,
            cache_dir,
            use_gpu: true,
            embedder_backend: ModelBackend::Auto,
            reranker_backend: ModelBackend::Auto,
            embedder_precision: Precision::Fp32,
            reranker_precision: Precision::Fp32,
            onnx_threads: 0,
        }
    }
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            chunk_words: 120,
            chunk_overlap_words: 24,
            fusion: default_fusion(),
            default_top_k: 5,
            max_top_k: 100,
            candidates: 100,
            rerank_candidates: 20,
            embed_batch: 32,
            embed_bulk_slice: 2,
        }
    }
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            default_deadline_ms: 60_000,
            max_deadline_ms: 300_000,
            embed_timeout_ms: 2_000,
            dense_timeout_ms: 2_000,
            keyword_timeout_ms: 2_000,
            rerank_timeout_ms: 5_000,
            breaker_failures: 3,
            breaker_open_ms: 5_000,
            breaker_max_open_ms: None,
            llm_retry_after_cap_ms: 5_000,
            admin_key_env: "RAGWAY_ADMIN_KEY".into(),
            stream_idle_timeout_ms: 15_000,
            client_stall_timeout_ms: 10_000,
            max_patient_wait_ms: 30_000,
        }
    }
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_tokens: 160,
            temperature: 0.0,
            default_passages: 3,
            max_tokens_cap: 1_024,
            max_choices: 4,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            sync_max_documents: 256,
            batch_chunks: 64,
            import_batch_chunks: 1_024,
            max_concurrent_jobs: 1,
            embed_timeout_ms: 120_000,
            keep_finished_jobs: 1_000,
            max_queued_jobs: 256,
            max_queued_jobs_per_tenant: 32,
            file_chunk_tokens: 200,
            file_chunk_overlap_tokens: 20,
            max_concurrent_file_reads: 2,
            allow_url_fetch: false,
            url_fetch_timeout_ms: 30_000,
        }
    }
}

impl Default for QueuesConfig {
    fn default() -> Self {
        Self {
            embedder_interactive: 64,
            embedder_bulk: 4,
            reranker: 16,
            local_llm: 8,
        }
    }
}

/// CLI flags that override everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Whether the tokens of LLM backend `name` count against tenants' budgets (not
    /// `unmetered`).
    pub fn metered(&self, backend: &str) -> bool {
        !self.llm.iter().any(|b| b.name == backend && b.unmetered)
    }

    /// Layers defaults, the TOML file (if given), `RAGWAY__…` env vars and CLI flags.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(format!("config file {} does not exist", file.display()));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("RAGWAY__").split("__"));
        if let Some(listen) = &overrides.listen {
            figment = figment.merge(("server.listen", listen));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(("server.data_dir", dir));
        }
        let config: Config = figment.extract().map_err(|e| {
            e.into_iter()
                .map(|e| format!("configuration error: {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types cannot; each message names the key and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.server.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "server.listen = {:?} is not an address: use host:port, e.g. 127.0.0.1:8080",
                self.server.listen
            ));
        }
        let store = &self.store;
        if store.shard_count() == 0 || store.replicas() == 0 || store.write_consistency_factor == 0 {
            problems.push("store.shards, store.replication_factor and store.write_consistency_factor must be at least 1".to_string());
        }
        if store.write_consistency_factor > store.replicas() {
            problems.push(format!(
                "store.write_consistency_factor = {} is more than the {} replicas of a shard: no write could be acknowledged",
                store.write_consistency_factor,
                store.replicas()
            ));
        }
        let v = &self.server;
        if v.max_connections == 0 {
            problems.push("server.max_connections must be at least 1".to_string());
        }
        for (key, ms) in [
            ("header_timeout_ms", v.header_timeout_ms),
            ("body_timeout_ms", v.body_timeout_ms),
            ("shutdown_grace_ms", v.shutdown_grace_ms),
        ] {
            if !(1..=MAX_SERVER_TIMEOUT_MS).contains(&ms) {
                problems.push(format!(
                    "server.{key} = {ms} must be between 1 and {MAX_SERVER_TIMEOUT_MS} (a day)"
                ));
            }
        }
        if self.quotas.max_keys_per_tenant == 0 {
            problems.push("quotas.max_keys_per_tenant must be at least 1".to_string());
        }
        if let Err(problem) = self.quotas.default_limits.check() {
            problems.push(format!("quotas.default_limits: {problem}"));
        }
        let r = &self.retrieval;
        if r.chunk_words == 0 {
            problems.push("retrieval.chunk_words must be at least 1".to_string());
        }
        if r.chunk_overlap_words >= r.chunk_words {
            problems.push(format!(
                "retrieval.chunk_overlap_words ({}) must be smaller than retrieval.chunk_words ({})",
                r.chunk_overlap_words, r.chunk_words
            ));
        }
        if let Err(e) = crate::validate::fusion(&r.fusion) {
            problems.push(format!("retrieval.{e}"));
        }
        if r.max_top_k == 0 || r.default_top_k == 0 || r.default_top_k > r.max_top_k {
            problems.push("retrieval.default_top_k must be between 1 and retrieval.max_top_k".to_string());
        }
        if r.candidates < r.max_top_k {
            problems.push("retrieval.candidates must be at least retrieval.max_top_k".to_string());
        }
        if r.embed_batch == 0 || r.embed_bulk_slice == 0 {
            problems
                .push("retrieval.embed_batch and retrieval.embed_bulk_slice must be at least 1".to_string());
        }
        if r.chunk_words < self.limits.min_chunk_words {
            problems.push(format!(
                "retrieval.chunk_words ({}) must be at least limits.min_chunk_words ({})",
                r.chunk_words, self.limits.min_chunk_words
            ));
        }
        let c = &self.cache;
        if [&c.l1, &c.l2, &c.l3, &c.l4].iter().any(|l| l.ttl_s == 0) {
            problems
                .push("cache.l*.ttl_s must be at least 1 (max_entries = 0 turns a layer off)".to_string());
        }
        if !c.redis.url.is_empty() && !c.redis.sentinels.is_empty() {
            problems
                .push("cache.redis: give url (one server) or sentinels (and master), not both".to_string());
        }
        if !c.redis.sentinels.is_empty() && c.redis.master.is_empty() {
            problems.push("cache.redis.master must name the primary the sentinels monitor".to_string());
        }
        if c.redis.enabled() && c.redis.timeout_ms == 0 {
            problems.push("cache.redis.timeout_ms must be at least 1".to_string());
        }
        if self.quotas.expected_replicas == 0 {
            problems.push("quotas.expected_replicas must be at least 1".to_string());
        }
        let i = &self.ingest;
        if i.max_queued_jobs == 0 || i.max_queued_jobs_per_tenant == 0 {
            problems.push(
                "ingest.max_queued_jobs and ingest.max_queued_jobs_per_tenant must be at least 1".to_string(),
            );
        }
        if i.batch_chunks == 0 || i.import_batch_chunks == 0 || i.max_concurrent_jobs == 0 {
            problems.push(
                "ingest.batch_chunks, ingest.import_batch_chunks and ingest.max_concurrent_jobs must be at least 1"
                    .to_string(),
            );
        }
        let q = &self.queues;
        if q.embedder_interactive == 0 || q.embedder_bulk == 0 || q.reranker == 0 || q.local_llm == 0 {
            problems.push("queues.*: every queue must hold at least 1".to_string());
        }
        if self.generation.max_tokens > self.generation.max_tokens_cap {
            problems.push("generation.max_tokens must not exceed generation.max_tokens_cap".to_string());
        }
        let g = &self.generation;
        if g.max_tokens == 0 {
            problems.push("generation.max_tokens must be at least 1".to_string());
        }
        if !(0.0..=2.0).contains(&g.temperature) {
            problems.push("generation.temperature must be between 0 and 2".to_string());
        }
        if g.default_passages == 0 || g.default_passages > r.max_top_k {
            problems
                .push("generation.default_passages must be between 1 and retrieval.max_top_k".to_string());
        }
        let z = &self.resilience;
        if z.default_deadline_ms == 0 || z.default_deadline_ms > z.max_deadline_ms {
            problems.push(
                "resilience.default_deadline_ms must be between 1 and resilience.max_deadline_ms".to_string(),
            );
        }
        if z.breaker_failures == 0 || z.breaker_open_ms == 0 {
            problems.push(
                "resilience.breaker_failures and resilience.breaker_open_ms must be at least 1".to_string(),
            );
        }
        if !(1..=MAX_SERVER_TIMEOUT_MS).contains(&z.client_stall_timeout_ms) {
            problems.push(format!(
                "resilience.client_stall_timeout_ms must be between 1 and {MAX_SERVER_TIMEOUT_MS}"
            ));
        }
        if self.llm.is_empty() {
            problems.push("llm: configure at least one backend ([[llm]] with name and kind)".to_string());
        }
        for (i, backend) in self.llm.iter().enumerate() {
            if backend.name.is_empty()
                || !backend
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems.push(format!(
                    "llm[{i}].name = {:?}: use letters, digits, - and _",
                    backend.name
                ));
            }
            if self.llm[..i].iter().any(|b| b.name == backend.name) {
                problems.push(format!(
                    "llm[{i}].name = {:?} is used twice: names must be unique",
                    backend.name
                ));
            }
            if let LlmBackendKind::Openai {
                api_key_env: Some(var),
                ..
            } = &backend.kind
            {
                if std::env::var_os(var).is_none() {
                    problems.push(format!(
                        "llm[{i}].api_key_env names {var}, which is not set: export it"
                    ));
                }
            }
        }
        problems.extend(model_groups::problems(&self.model_groups, &self.llm));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn file_then_env_then_cli() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("ragway.toml");
        std::fs::write(
            &file,
            "[retrieval]\nchunk_words = 50\n\n[retrieval.fusion]\nmethod = \"rrf\"\nk = 10.0\n",
        )?;
        figment::Jail::expect_with(|jail| {
            jail.set_env("RAGWAY__RETRIEVAL__FUSION__K", "20");
            let overrides = Overrides {
                listen: Some("127.0.0.1:9999".into()),
                data_dir: None,
            };
            let config = Config::load(Some(&file), &overrides).map_err(|e| e.to_string())?;
            assert_eq!(config.retrieval.chunk_words, 50);
            assert_eq!(config.retrieval.fusion.k, Some(20.0));
            assert_eq!(config.server.listen, "127.0.0.1:9999");
            Ok(())
        });
        Ok(())
    }

    #[test]
    fn server_limits_are_within_what_a_clock_can_hold() {
        let with = |set: fn(&mut ServerConfig)| {
            let mut config = Config::default();
            set(&mut config.server);
            config.validate()
        };
        let err = with(|s| s.header_timeout_ms = u64::MAX).err();
        assert!(err.is_some_and(|e| e.contains("server.header_timeout_ms")));
        let err = with(|s| s.body_timeout_ms = 0).err();
        assert!(err.is_some_and(|e| e.contains("server.body_timeout_ms")));
        let err = with(|s| s.shutdown_grace_ms = MAX_SERVER_TIMEOUT_MS + 1).err();
        assert!(err.is_some_and(|e| e.contains("server.shutdown_grace_ms")));
        let err = with(|s| s.max_connections = 0).err();
        assert!(err.is_some_and(|e| e.contains("server.max_connections")));
        assert_eq!(with(|s| s.shutdown_grace_ms = MAX_SERVER_TIMEOUT_MS), Ok(()));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[retrieval]\nchunk_wrds = 5\n")?;
            let err = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).err();
            assert!(err.is_some_and(|e| e.contains("chunk_wrds")));
            jail.create_file(
                "bad2.toml",
                "[retrieval]\nchunk_words = 10\nchunk_overlap_words = 10\n",
            )?;
            let err = Config::load(Some(Path::new("bad2.toml")), &Overrides::default()).err();
            assert!(err.is_some_and(|e| e.contains("retrieval.chunk_overlap_words")));
            Ok(())
        });
    }

    #[test]
    fn llm_backends_parse_from_toml() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "llm.toml",
                "[[llm]]\nname = \"remote\"\nkind = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n\n[[llm]]\nname = \"local\"\nkind = \"local\"\nmodel = \"/m.gguf\"\npriority = 5\ntimeout_ms = 700\nidle_timeout_ms = 900\n",
            )?;
            let config = Config::load(Some(Path::new("llm.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(config.llm.len(), 2);
            assert!(matches!(&config.llm[0].kind, LlmBackendKind::Openai { .. }));
            assert_eq!(
                config.llm[0].limits(0, &ResilienceConfig::default()),
                BackendLimits {
                    priority: 0,
                    timeout: Duration::from_secs(30),
                    time_to_first_token: Duration::from_secs(10),
                    idle: Duration::from_secs(15),
                    patience: Duration::from_secs(30),
                    max_retries: 2,
                }
            );
            assert!(matches!(
                &config.llm[1].kind,
                LlmBackendKind::Local {
                    kv_tokens: 16_384,
                    ..
                }
            ));
            assert_eq!(
                config.llm[1].limits(1, &ResilienceConfig::default()),
                BackendLimits {
                    priority: 5,
                    timeout: Duration::from_millis(700),
                    time_to_first_token: Duration::from_secs(60),
                    idle: Duration::from_millis(900),
                    patience: Duration::from_secs(30),
                    max_retries: 0,
                }
            );
            jail.create_file(
                "llm2.toml",
                "[[llm]]\nname = \"l\"\nkind = \"local\"\nmodel = \"m\"\nmodle = 1\n",
            )?;
            let err = Config::load(Some(Path::new("llm2.toml")), &Overrides::default()).err();
            assert!(err.is_some_and(|e| e.contains("modle")));
            Ok(())
        });
    }
}
