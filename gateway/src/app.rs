//! Start-up: config → stage implementations → their guards and caches → the pipeline and the
//! answer engine → [`AppState`]. Everything is composed here, once; nothing below `http` sees
//! the result as a whole.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::Device;
use metrics_exporter_prometheus::PrometheusHandle;
use ragway_cache::RedisTier;
use ragway_files::TokenCounter;
use ragway_llm::{
    Generator, LocalLlm, LocalLlmOptions, OpenAiBackend, OpenAiBackendOptions, PrefixCacheOptions,
};
use ragway_rerank::{CrossEncoder, CrossEncoderOptions, Reranker};
use ragway_retrieval::{
    BertEmbedder, BertEmbedderOptions, DenseStorage, DenseStore, EdgeDenseStore, Embedder, HybridStore,
    KeywordStore, QdrantOptions, QdrantStore, QueueLimits, RemoteEmbedder, RemoteEmbedderOptions,
    TantivyKeywordStore,
};

use crate::answer::cached::Cached;
use crate::answer::engine::{ChatCaps, Engine};
use crate::answer::pipeline::{Pipeline, PipelineSettings, Retriever, StageGuards};
use crate::answer::pool::{Backend, LlmPool};
use crate::caches::Caches;
use crate::catalog::collections::{Collections, Followers, ManifestStore};
use crate::catalog::files::{FileReader, FileSettings};
use crate::catalog::jobs::{JobSettings, JobStoreKind, Jobs};
use crate::config::{
    AuthMode, Config, LlmBackendConfig, LlmBackendKind, ModelBackend, Quantization, StoreKind,
};
use crate::http::{AppState, ModelStages, Shared};
use crate::models;
use crate::resilience::breaker::BreakerSettings;
use crate::resilience::faults::Faults;
use crate::resilience::guard::Guard;
use crate::resilience::guarded::Guarded;
use crate::resilience::rerank_cost::Costed;
use crate::tenancy::quota::policy::JobQueueLimits;
use crate::tenancy::quota::Quotas;
use crate::tenancy::tenants::{FileStore, RedisStore, TenantStore, Tenants};
use crate::tenancy::{Accounts, Budgeted, Metering};

const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// The dense and keyword stores `[store]` names: the embedded pair, or one Qdrant server store
/// that is both.
/// The stores `[store]` names: one per engine, and (a Qdrant server) one that searches both.
struct Stores {
    dense: Arc<dyn DenseStore>,
    keyword: Arc<dyn KeywordStore>,
    both: Option<Arc<dyn HybridStore>>,
}

fn stores(config: &Config, dimension: usize) -> anyhow::Result<Stores> {
    let data = &config.server.data_dir;
    let store = &config.store;
    match store.kind {
        StoreKind::Edge => Ok(Stores {
            dense: Arc::new(EdgeDenseStore::with_storage(
                &data.join("dense"),
                dimension,
                DenseStorage {
                    quantized: config.store.quantization == Quantization::Int8,
                    vectors_on_disk: config.store.vectors_on_disk,
                },
            )),
            keyword: Arc::new(TantivyKeywordStore::new(&data.join("keyword"))),
            both: None,
        }),
        StoreKind::Qdrant => {
            let api_key = match &store.api_key_env {
                Some(name) => Some(
                    std::env::var(name)
                        .with_context(|| format!("store.api_key_env names {name}, which is not set"))?,
                ),
                None => None,
            };
            let qdrant = Arc::new(QdrantStore::new(QdrantOptions {
                urls: store.nodes(),
                api_key,
                dimension,
                prefix: store.collection_prefix.clone(),
                shards: store.shard_count(),
                replication_factor: store.replicas(),
                write_consistency_factor: store.write_consistency_factor,
                average_terms: config.retrieval.chunk_words as f32,
                timeout: Duration::from_millis(store.timeout_ms),
            })?);
            tracing::info!(
                nodes = ?store.nodes(),
                shards = store.shard_count(),
                replication_factor = store.replicas(),
                "store: Qdrant"
            );
            Ok(Stores {
                dense: qdrant.clone(),
                keyword: qdrant.clone(),
                both: store.one_round_trip.then_some(qdrant as Arc<dyn HybridStore>),
            })
        }
    }
}

/// Takes `data_dir` for this process alone (an advisory lock on `<data_dir>/ragway.lock`, held
/// while the returned file is open, released by the kernel when the process dies): two processes
/// on one directory would both resume its jobs and write its stores.
pub fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data_dir {}", dir.display()))?;
    let path = dir.join("ragway.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        anyhow::bail!(
            "data_dir {} is in use by another ragway process (pid {}): give each process its own \
             data_dir (--data-dir), or stop the other one",
            dir.display(),
            holder.trim()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Loads the models and opens the stores named by `config`.
pub async fn load(config: Config, metrics: PrometheusHandle) -> anyhow::Result<AppState> {
    let device = device(config.models.use_gpu);
    let embedder = load_embedder(&config, &device).await?;
    let reranker = load_reranker(&config, &device).await?;
    let faults = Arc::new(Faults::default());
    let z = &config.resilience;
    let breaker = BreakerSettings {
        failure_threshold: z.breaker_failures,
        open: Duration::from_millis(z.breaker_open_ms),
        max_open: Duration::from_millis(z.breaker_max_open_ms.unwrap_or(z.breaker_open_ms)),
    };
    let guard = |name: &str, timeout_ms: u64| {
        Guard::new(name, Duration::from_millis(timeout_ms), &breaker, faults.clone())
    };
    let backends = load_backends(&config, &device, &breaker, &faults).await?;
    let redis = redis_tier(&config).await?;
    let caches = Caches::new(
        &config,
        redis
            .clone()
            .map(|tier| (tier, guard("redis", config.cache.redis.timeout_ms))),
    );
    let (tenants, quotas) = load_tenants(&config, redis).await?;
    let unmetered = config.llm.iter().filter(|b| b.unmetered).map(|b| b.name.clone());
    let metering = Metering::new(quotas.clone(), unmetered);
    let accounts = Accounts {
        tenants: tenants.clone(),
        metering: metering.clone(),
    };

    let stores = stores(&config, embedder.dimension())?;
    let guards = StageGuards {
        embed: Arc::new(guard("embedder", z.embed_timeout_ms)),
        dense: Arc::new(guard("dense", z.dense_timeout_ms)),
        keyword: Arc::new(guard("keyword", z.keyword_timeout_ms)),
        rerank: Arc::new(guard("reranker", z.rerank_timeout_ms)),
    };
    let batch_timeout = Duration::from_millis(config.ingest.embed_timeout_ms);
    let models = ModelStages {
        embedder: Arc::new(Guarded::new(embedder, guards.embed.clone()).with_bulk_timeout(batch_timeout)),
        // A query reranks `rerank_candidates` passages within the stage timeout; a `/v1/rerank`
        // of more is bulk work, bounded by its request's deadline and never charged a timeout.
        reranker: reranker.map(|r| {
            let guarded =
                Guarded::new(r, guards.rerank.clone()).with_bulk_above(config.retrieval.rerank_candidates);
            Arc::new(guarded) as Arc<dyn Reranker>
        }),
    };
    let shared = shared_state(&config).await?;
    let data = &config.server.data_dir;
    let manifests = match &shared {
        Some(redis) => ManifestStore::Redis {
            redis: redis.clone(),
            store_timeout: Duration::from_millis(config.store.timeout_ms),
        },
        None => ManifestStore::Files(data.join("collections")),
    };
    let followers = Followers {
        caches: caches.clone(),
        accounts: Some(accounts),
    };
    let collections = Collections::open(
        manifests,
        models.embedder.clone(),
        stores.dense.clone(),
        stores.keyword.clone(),
        followers,
    );
    let collections = Arc::new(collections.await?);
    collections.follow();
    let job_settings = JobSettings {
        batch_chunks: config.ingest.batch_chunks,
        import_batch_chunks: config.ingest.import_batch_chunks,
        max_concurrent: config.ingest.max_concurrent_jobs,
        keep_finished: config.ingest.keep_finished_jobs,
        queue: JobQueueLimits {
            total: config.ingest.max_queued_jobs,
            per_tenant: config.ingest.max_queued_jobs_per_tenant,
        },
    };
    let job_store = match shared {
        Some(redis) => JobStoreKind::Redis(redis),
        None => JobStoreKind::Files(data.join("jobs")),
    };
    let jobs = Jobs::open(job_store, collections.clone(), job_settings).await?;

    let pipeline = Arc::new(pipeline(&config, stores, &models, guards, &caches));
    // The caches around retrieval, composed once: L3 around the pipeline for answers, and L1
    // around that for `/search`.
    let retriever: Arc<dyn Retriever> = Arc::new(Cached::retrievals(pipeline.clone(), caches.clone()));
    let search: Arc<dyn Retriever> = Arc::new(Cached::searches(retriever.clone(), caches.clone()));
    let pool = LlmPool::new(
        backends,
        &config.model_groups,
        Duration::from_millis(config.resilience.llm_retry_after_cap_ms),
    );
    let caps = ChatCaps {
        max_choices: config.generation.max_choices,
        max_tokens: config.generation.max_tokens,
    };
    let stall = Duration::from_millis(config.resilience.client_stall_timeout_ms);
    let engine = Arc::new(Engine::new(retriever, pool, caches.clone(), caps, stall));
    let admin_key = std::env::var(&config.resilience.admin_key_env)
        .ok()
        .filter(|k| !k.is_empty())
        .map(Arc::from);
    let files = Arc::new(file_reader(&config).await);
    Ok(AppState::new(Shared {
        config: Arc::new(config),
        collections,
        jobs,
        files,
        pipeline,
        caches,
        models,
        engine,
        search,
        faults,
        tenants,
        quotas,
        metering,
        admin_key,
        metrics,
    }))
}

/// The request flow's stages behind their decorators: the query embedder behind L2 and the
/// tenant's budget (over the guarded model the routes use), each engine's search behind its
/// guard, the guarded reranker behind its cost.
fn pipeline(
    config: &Config,
    stores: Stores,
    models: &ModelStages,
    guards: StageGuards,
    caches: &Arc<Caches>,
) -> Pipeline {
    let budgeted: Arc<dyn Embedder> = Arc::new(Budgeted::new(models.embedder.clone()));
    Pipeline {
        embedder: Arc::new(Cached::embeddings(budgeted, caches.clone())),
        dense: Arc::new(Guarded::new(stores.dense, guards.dense.clone())),
        keyword: Arc::new(Guarded::new(stores.keyword, guards.keyword.clone())),
        both: stores.both,
        reranker: (models.reranker.clone()).map(|r| Arc::new(Costed::new(r)) as Arc<dyn Reranker>),
        guards,
        settings: pipeline_settings(config),
    }
}

fn pipeline_settings(config: &Config) -> PipelineSettings {
    PipelineSettings {
        // Config::validate has checked it.
        fusion: crate::validate::fusion(&config.retrieval.fusion).unwrap_or_default(),
        candidates: config.retrieval.candidates,
        rerank_candidates: config.retrieval.rerank_candidates,
    }
}

/// Files are cut by the embedder's own tokens: its `tokenizer.json` when the model is local,
/// else an estimate (a token per four bytes).
async fn file_reader(config: &Config) -> FileReader {
    let (models, ingest, limits) = (&config.models, &config.ingest, &config.limits);
    let counter = match models.embedder.starts_with("openai:") {
        true => TokenCounter::Estimate,
        false => match models::model_dir(&models.embedder, &models.cache_dir, &MODEL_FILES).await {
            Ok(dir) => TokenCounter::from_model_dir(&dir).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "files are cut by estimated tokens: the embedder's tokenizer could not be read");
                TokenCounter::Estimate
            }),
            Err(_) => TokenCounter::Estimate,
        },
    };
    let settings = FileSettings {
        max_file_bytes: limits.max_file_bytes,
        chunk_tokens: ingest.file_chunk_tokens,
        overlap_tokens: ingest.file_chunk_overlap_tokens,
        max_concurrent_reads: ingest.max_concurrent_file_reads,
        allow_url_fetch: ingest.allow_url_fetch,
        url_fetch_timeout: Duration::from_millis(ingest.url_fetch_timeout_ms),
    };
    FileReader::new(counter, settings)
}

async fn load_embedder(config: &Config, device: &Device) -> anyhow::Result<Arc<dyn Embedder>> {
    let started = Instant::now();
    let models = &config.models;
    if let Some(remote) = models.embedder.strip_prefix("openai:") {
        return load_remote_embedder(config, remote).await;
    }
    let dir = models::model_dir(&models.embedder, &models.cache_dir, &MODEL_FILES).await?;
    let onnx = models::onnx_for(models.embedder_backend, models.embedder_precision, &dir, models)?;
    let options = BertEmbedderOptions {
        onnx,
        max_batch: config.retrieval.embed_batch,
        bulk_slice: config.retrieval.embed_bulk_slice,
        device: device.clone(),
        queue: QueueLimits {
            interactive: config.queues.embedder_interactive,
            bulk: config.queues.embedder_bulk,
        },
        ..Default::default()
    };
    let id = model_id(&models.embedder);
    let embedder: Arc<dyn Embedder> = Arc::new(with_fallback(
        "embedder",
        models.embedder_backend,
        options,
        |options| Ok(BertEmbedder::load(&dir, &id, options)?),
    )?);
    tracing::info!(dir = %dir.display(), backend = embedder.backend(), seconds = started.elapsed().as_secs_f32(), "embedder loaded");
    metrics::gauge!("ragway_model_backend", "model" => "embedder", "backend" => embedder.backend().to_string()).set(1.0);
    Ok(embedder)
}

/// The remote embedding service `openai:<base_url>#<model>` names.
async fn load_remote_embedder(config: &Config, spec: &str) -> anyhow::Result<Arc<dyn Embedder>> {
    let (base_url, model) = spec.split_once('#').ok_or_else(|| {
        anyhow::anyhow!("models.embedder = \"openai:{spec}\": write it as openai:<base_url>#<model>")
    })?;
    let options = RemoteEmbedderOptions {
        base_url: base_url.to_string(),
        model: model.to_string(),
        api_key: config
            .models
            .embedder_api_key_env
            .as_deref()
            .and_then(|var| std::env::var(var).ok()),
        timeout: Duration::from_millis(config.ingest.embed_timeout_ms),
        batch: config.retrieval.embed_batch,
    };
    let embedder = RemoteEmbedder::connect(options)
        .await
        .map_err(|e| anyhow::anyhow!("models.embedder = \"openai:{spec}\": {e}"))?;
    tracing::info!(
        id = embedder.model_id(),
        dimension = embedder.dimension(),
        "remote embedder connected"
    );
    metrics::gauge!("ragway_model_backend", "model" => "embedder", "backend" => "remote").set(1.0);
    Ok(Arc::new(embedder))
}

async fn load_reranker(config: &Config, device: &Device) -> anyhow::Result<Option<Arc<dyn Reranker>>> {
    let models = &config.models;
    if models.reranker.is_empty() {
        return Ok(None);
    }
    let dir = models::model_dir(&models.reranker, &models.cache_dir, &MODEL_FILES).await?;
    let onnx = models::onnx_for(models.reranker_backend, models.reranker_precision, &dir, models)?;
    let options = CrossEncoderOptions {
        onnx,
        device: device.clone(),
        queue: QueueLimits {
            interactive: config.queues.reranker,
            bulk: 1,
        },
        ..Default::default()
    };
    let id = model_id(&models.reranker);
    let reranker = with_fallback("reranker", models.reranker_backend, options, |options| {
        Ok(CrossEncoder::load(&dir, &id, options)?)
    })?;
    tracing::info!(dir = %dir.display(), backend = reranker.backend(), "reranker loaded");
    metrics::gauge!("ragway_model_backend", "model" => "reranker", "backend" => reranker.backend().to_string()).set(1.0);
    Ok(Some(Arc::new(reranker)))
}

/// The LLM pool's backends, each behind its own guard.
async fn load_backends(
    config: &Config,
    device: &Device,
    breaker: &BreakerSettings,
    faults: &Arc<Faults>,
) -> anyhow::Result<Vec<Backend>> {
    let mut backends = Vec::new();
    for (position, backend) in config.llm.iter().enumerate() {
        let generator = load_generator(config, backend, device).await?;
        let limits = backend.limits(position, &config.resilience);
        let name = format!("llm:{}", backend.name);
        let guard = Guard::new(&name, limits.timeout, breaker, faults.clone());
        let mut loaded = Backend::new(generator, guard, limits);
        if !backend.accepts_prefill {
            loaded = loaded.refusing_prefills();
        }
        for model in variant_models(config, &backend.name) {
            let generator = load_generator(config, &with_model(backend, &model), device).await?;
            loaded = loaded.with_variant(generator);
        }
        backends.push(loaded);
    }
    Ok(backends)
}

/// The other model ids model groups ask backend `name` for.
fn variant_models(config: &Config, name: &str) -> std::collections::BTreeSet<String> {
    let members = config.model_groups.iter().flat_map(|g| g.members());
    members
        .filter(|m| m.backend == name)
        .filter_map(|m| m.model)
        .collect()
}

/// `backend` asking for `model` (config validation allows it for remote backends only).
fn with_model(backend: &LlmBackendConfig, model: &str) -> LlmBackendConfig {
    let mut variant = backend.clone();
    if let LlmBackendKind::Openai { model: own, .. } = &mut variant.kind {
        *own = model.to_string();
    }
    variant
}

async fn load_generator(
    config: &Config,
    backend: &LlmBackendConfig,
    device: &Device,
) -> anyhow::Result<Arc<dyn Generator>> {
    Ok(match &backend.kind {
        LlmBackendKind::Local {
            model,
            dequantize,
            context_tokens,
            kv_tokens,
        } => {
            if dequantize.is_some() {
                tracing::warn!(
                    backend = backend.name,
                    "`dequantize` no longer applies (llama.cpp runs the quantized weights) and is ignored"
                );
            }
            let started = Instant::now();
            let path = models::gguf_file(model, &config.models.cache_dir).await?;
            let options = LocalLlmOptions {
                gpu: device.is_cuda(),
                context_tokens: *context_tokens,
                kv_tokens: *kv_tokens,
                parallel: config.queues.local_llm,
                queue: QueueLimits {
                    interactive: config.queues.local_llm,
                    bulk: 1,
                },
                prefix_cache: PrefixCacheOptions {
                    entries: config.cache.l4.max_entries as usize,
                    ttl: Duration::from_secs(config.cache.l4.ttl_s),
                },
                ..Default::default()
            };
            let name = backend.name.clone();
            let llm = tokio::task::spawn_blocking(move || LocalLlm::load(&path, &name, options)).await??;
            tracing::info!(
                backend = backend.name,
                model = llm.model(),
                seconds = started.elapsed().as_secs_f32(),
                "local LLM loaded"
            );
            Arc::new(llm)
        }
        LlmBackendKind::Openai {
            base_url,
            model,
            api_key_env,
            ..
        } => Arc::new(OpenAiBackend::new(OpenAiBackendOptions {
            name: backend.name.clone(),
            base_url: base_url.clone(),
            api_key: api_key_env
                .as_deref()
                .and_then(|var| std::env::var(var).ok())
                .unwrap_or_default(),
            model: model.clone(),
            connect_timeout: Duration::from_secs(5),
        })?),
    })
}

/// The Redis `cache.redis` names (shared caches, tenants, quota counters); `None` without one.
async fn redis_tier(config: &Config) -> anyhow::Result<Option<RedisTier>> {
    let redis = &config.cache.redis;
    let Some(target) = redis.target() else {
        return Ok(None);
    };
    let tier = RedisTier::connect(
        &target,
        Duration::from_millis(redis.timeout_ms),
        redis.durability(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}: {e}", redis.describe()))?;
    tracing::info!(
        redis = redis.describe(),
        "shared caches, tenants and quotas: redis"
    );
    Ok(Some(tier))
}

/// With a Qdrant server and Redis, collection manifests and ingestion jobs live in Redis, so
/// every replica serves every collection; otherwise in this process's data directory.
async fn shared_state(config: &Config) -> anyhow::Result<Option<RedisTier>> {
    let redis = &config.cache.redis;
    match (config.store.kind, redis.target()) {
        (StoreKind::Qdrant, Some(target)) => {
            // Manifests can be large: the store's timeout, not the cache's.
            let tier = RedisTier::connect(
                &target,
                Duration::from_millis(config.store.timeout_ms),
                redis.durability(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", redis.describe()))?;
            tracing::info!("collections and ingestion jobs: redis (shared by every replica)");
            tokio::spawn(warn_unless_durable(tier.clone()));
            Ok(Some(tier))
        }
        (StoreKind::Qdrant, None) => {
            tracing::warn!("collections and ingestion jobs stay in this replica's data directory: replicas on one Qdrant server also need cache.redis.url or cache.redis.sentinels");
            Ok(None)
        }
        (StoreKind::Edge, _) => Ok(None),
    }
}

/// Acknowledged writes survive a crash of Redis only when it fsyncs every write.
async fn warn_unless_durable(redis: RedisTier) {
    if redis.durability().replicas > 0 {
        tracing::info!(
            replicas = redis.durability().replicas,
            "collection changes, jobs, tenants and leases wait for the Redis replicas (WAIT) before they are acknowledged"
        );
        return;
    }
    let mut connection = redis.connection();
    let mut command = ragway_cache::redis::cmd("CONFIG");
    command.arg("GET").arg("append*");
    let asked = command.query_async::<std::collections::HashMap<String, String>>(&mut connection);
    match redis.bounded(asked).await {
        Ok(config) if config.get("appendonly").is_some_and(|v| v == "yes")
            && config.get("appendfsync").is_some_and(|v| v == "always") => {}
        Ok(config) => tracing::warn!(
            ?config,
            "redis does not fsync every write: a crash of redis can lose acknowledged collection changes and jobs (run it with appendonly yes, appendfsync always)"
        ),
        Err(e) => tracing::info!(error = %e.0, "cannot read redis's persistence settings (CONFIG GET); make sure it runs with appendonly yes, appendfsync always"),
    }
}

/// Tenants (in Redis when configured, else in a file) and the quotas that count their use.
async fn load_tenants(
    config: &Config,
    redis: Option<RedisTier>,
) -> anyhow::Result<(Arc<Tenants>, Arc<Quotas>)> {
    let data = &config.server.data_dir;
    let file = FileStore::open(data.join("tenants.json"))?;
    let store: Arc<dyn TenantStore> = match &redis {
        Some(tier) => Arc::new(RedisStore::new(tier.clone(), file)),
        None => Arc::new(file),
    };
    let tenants = Tenants::open(store).await?;
    let q = &config.quotas;
    let quotas = Quotas::new(
        data.join("usage.json"),
        redis,
        q.expected_replicas,
        q.metric_tenants,
        // No answer outlives its deadline; a minute more covers the charges that settle it.
        Duration::from_millis(config.resilience.max_deadline_ms) + Duration::from_secs(60),
    )?;
    if config.auth.mode == AuthMode::Open {
        tracing::warn!("auth.mode = \"open\": every /v1 route is open to anyone who reaches this port, without tenants or quotas; use \"keys\" beyond a laptop");
    }
    Ok((tenants, quotas))
}

/// Options that can name an ONNX Runtime (`None`: candle).
trait OnnxOption: Clone {
    fn onnx(&self) -> bool;
    fn candle(self) -> Self;
}

impl OnnxOption for BertEmbedderOptions {
    fn onnx(&self) -> bool {
        self.onnx.is_some()
    }
    fn candle(self) -> Self {
        Self { onnx: None, ..self }
    }
}

impl OnnxOption for CrossEncoderOptions {
    fn onnx(&self) -> bool {
        self.onnx.is_some()
    }
    fn candle(self) -> Self {
        Self { onnx: None, ..self }
    }
}

/// Loads a model with `options`; under `auto`, an ONNX Runtime that fails to load (a wrong
/// library, a bad graph) falls back to candle with a warning.
fn with_fallback<O: OnnxOption, T>(
    what: &str,
    backend: ModelBackend,
    options: O,
    load: impl Fn(O) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let onnx = options.onnx();
    match load(options.clone()) {
        Err(e) if backend == ModelBackend::Auto && onnx => {
            tracing::warn!(model = what, error = %e, "cannot run on ONNX Runtime; running on candle");
            load(options.candle())
        }
        loaded => loaded,
    }
}

fn device(use_gpu: bool) -> Device {
    if !use_gpu {
        return Device::Cpu;
    }
    match Device::cuda_if_available(0) {
        Ok(device) => device,
        Err(e) => {
            tracing::warn!(error = %e, "no usable GPU; running models on the CPU");
            Device::Cpu
        }
    }
}

/// A short, stable model id for cache keys and reports: the last path component or the hub id.
fn model_id(spec: &str) -> String {
    spec.strip_prefix("hf:")
        .map(str::to_string)
        .or_else(|| {
            std::path::Path::new(spec)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| spec.to_string())
}
