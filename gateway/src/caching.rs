//! The cache layers, each a wrapper around the stage it serves: L1 around whole answers
//! ([`Pipeline::answer`], [`Pipeline::search`]), L2 around query embedding
//! ([`Pipeline::query_vector`]), L3 around hybrid retrieval ([`Pipeline::retrieve`]). A layer
//! answers from a fresh entry without running its stage; otherwise the stage runs, a `normal`
//! result is stored, and when the stage could not serve at all (mode `error`) an entry kept past
//! its TTL answers instead, with mode `cache_only`.
//!
//! Keys hold the collection's generation (new on every create) and epoch (bumped by every
//! document change), so a changed or re-created collection never meets its old entries.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ragway_cache::{
    normalize_query, CacheKey, Layer, LayerSettings, Lookup, RedisTier, SharedTier, TierError,
};
use ragway_openapi::{CacheInfo, Degradation, Mode, TokenUsage};
use ragway_retrieval::{Fusion, MetadataFilter, Priority, ScoredChunk};
use serde::{Deserialize, Serialize};

use crate::config::{CacheConfig, CacheLayerConfig, Config};
use crate::conversation::Conversation;
use crate::deadline::Deadline;
use crate::guard::{Blame, Blamed, Failure, Guard};
use crate::pipeline::{Allowance, Answer, Pipeline, Retrieved};
use crate::report::{Authorship, Report};

/// The collection a cached result belongs to, as its keys see it, and the fusion that made it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub name: &'a str,
    pub generation: &'a str,
    pub epoch: u64,
    pub fusion: Fusion,
}

/// A retrieval result as L1 (`/search`) and L3 keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedHits {
    hits: Vec<ScoredChunk>,
    dense_ids: Vec<String>,
    keyword_ids: Vec<String>,
    reranked: bool,
}

/// A whole grounded answer as L1 keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAnswer {
    text: String,
    citations: Vec<(usize, ScoredChunk)>,
    usage: (usize, usize),
    llm: String,
    reranked: bool,
    /// What shaped the answer without changing its mode (e.g. passages fitted to the window).
    degraded: Vec<Degradation>,
}

/// Pub/sub channel on which processes sharing a Redis tell each other to drop local entries.
const INVALIDATIONS: &str = "ragway:invalidate";

#[derive(Debug, Serialize, Deserialize)]
struct Invalidation {
    origin: String,
    collection: Option<String>,
    layer: Option<String>,
}

pub struct Caches {
    /// L1: grounded answers (`/query`, chat over a collection).
    answers: Layer<CachedAnswer>,
    /// L1: `/search` answers.
    searches: Layer<CachedHits>,
    /// L2: query embeddings, by model and text.
    embeddings: Layer<Vec<f32>>,
    /// L3: fused (and reranked) hit lists.
    retrievals: Layer<CachedHits>,
    shared: Option<Arc<GuardedRedis>>,
    /// Everything besides the request that shapes an answer: models, backends, settings.
    fingerprint: String,
    /// This process, so that it ignores its own invalidation messages.
    instance: String,
}

/// The Redis tier behind its own breaker (`redis`): when Redis is down or slow, calls fail fast
/// and every layer carries on with its local tier.
pub struct GuardedRedis {
    tier: RedisTier,
    pub guard: Guard,
}

impl Blamed for TierError {
    fn blame(&self) -> Blame {
        Blame::Dependency
    }
}

impl GuardedRedis {
    async fn guarded<T, F>(&self, call: F) -> Result<T, TierError>
    where
        F: std::future::Future<Output = Result<T, TierError>>,
    {
        self.guard
            .run(&Deadline::none(), call)
            .await
            .map_err(|failure: Failure<TierError>| TierError(failure.to_string()))
    }
}

#[async_trait]
impl SharedTier for GuardedRedis {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TierError> {
        self.guarded(self.tier.get(key)).await
    }
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), TierError> {
        self.guarded(self.tier.set(key, value, ttl)).await
    }
    async fn delete_matching(&self, pattern: &str) -> Result<u64, TierError> {
        self.guarded(self.tier.delete_matching(pattern)).await
    }
    async fn publish(&self, channel: &str, message: String) -> Result<(), TierError> {
        self.guarded(self.tier.publish(channel, message)).await
    }
}

fn settings(cache: &CacheConfig, layer: &CacheLayerConfig, stale_for: Duration) -> LayerSettings {
    LayerSettings {
        ttl: Duration::from_secs(layer.ttl_s),
        stale_for,
        max_entries: layer.max_entries,
        // Without a shared tier, the local one is the cache.
        local: cache.local_tier || cache.redis.url.is_empty(),
    }
}

/// `key=value` pairs in key order, each value with its type, so that equal filters written in
/// any order share entries and `"1"` never meets `1`.
fn canonical_filter(filter: &MetadataFilter) -> String {
    let mut pairs: Vec<String> = filter.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    pairs.sort();
    pairs.join("\u{1f}")
}

impl Caches {
    /// The layers `config.cache` describes; with `redis` (the breaker-guarded shared tier) each
    /// layer also reads and writes Redis, and this process follows other processes'
    /// invalidations.
    pub fn new(config: &Config, redis: Option<(RedisTier, Guard)>) -> Arc<Self> {
        let c: &CacheConfig = &config.cache;
        let stale_for = Duration::from_secs(c.stale_if_error_s);
        let shared = redis.map(|(tier, guard)| Arc::new(GuardedRedis { tier, guard }));
        let tier = || shared.clone().map(|s| s as Arc<dyn SharedTier>);
        let caches = Arc::new(Self {
            answers: Layer::new("l1", settings(c, &c.l1, stale_for), tier()),
            searches: Layer::new("l1", settings(c, &c.l1, stale_for), tier()),
            embeddings: Layer::new("l2", settings(c, &c.l2, Duration::ZERO), tier()),
            retrievals: Layer::new("l3", settings(c, &c.l3, stale_for), tier()),
            shared,
            fingerprint: fingerprint(config),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        });
        if let Some(shared) = &caches.shared {
            let weak = Arc::downgrade(&caches);
            shared.tier.subscribe(INVALIDATIONS, move |message| {
                let Some(caches) = weak.upgrade() else { return };
                tokio::spawn(async move { caches.follow(&message).await });
            });
        }
        caches
    }

    /// The Redis tier's guard, for `/readyz` and fault injection.
    pub fn redis_guard(&self) -> Option<&Guard> {
        self.shared.as_ref().map(|s| &s.guard)
    }

    fn key(
        &self,
        kind: &str,
        target: &Target<'_>,
        query: &str,
        top_k: usize,
        filter: &MetadataFilter,
    ) -> CacheKey {
        CacheKey::new(
            kind,
            &[
                target.generation.as_bytes(),
                &target.epoch.to_le_bytes(),
                target.fusion.to_string().as_bytes(),
                normalize_query(query).as_bytes(),
                &(top_k as u64).to_le_bytes(),
                canonical_filter(filter).as_bytes(),
                self.fingerprint.as_bytes(),
            ],
        )
    }

    /// Drops the entries of `collection` (all when `None`) in `layer` (`l1`, `l2`, `l3`; all
    /// when `None`), here, in Redis, and in every process subscribed to it; how many entries.
    pub async fn invalidate(&self, collection: Option<&str>, layer: Option<&str>) -> u64 {
        let mut dropped = self.invalidate_local(collection, layer).await;
        // Both L1 layers file their entries under `ragway:l1:`: one deletion serves them.
        let mut names: Vec<&dyn Invalidate> = self.layers(layer, collection);
        names.dedup_by_key(|l| l.name());
        for l in names {
            dropped += l.invalidate_shared(collection).await;
        }
        if let Err(e) = self.announce(collection, layer).await {
            tracing::warn!(error = %e, "cache invalidation not published");
        }
        dropped
    }

    /// Tells every other process on the Redis tier to drop its local entries of `collection`
    /// in `layer` (all when `None`).
    async fn announce(&self, collection: Option<&str>, layer: Option<&str>) -> Result<(), TierError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let message = Invalidation {
            origin: self.instance.clone(),
            collection: collection.map(str::to_string),
            layer: layer.map(str::to_string),
        };
        let text = serde_json::to_string(&message).map_err(|e| TierError(e.to_string()))?;
        shared.publish(INVALIDATIONS, text).await
    }

    async fn invalidate_local(&self, collection: Option<&str>, layer: Option<&str>) -> u64 {
        let mut dropped = 0;
        for l in self.layers(layer, collection) {
            dropped += l.invalidate_local(collection).await;
        }
        dropped
    }

    /// A collection changed (new `epoch`; `u64::MAX`: dropped). Its entries here belong to
    /// earlier epochs and can never be hit again: they go. With Redis, the epoch is recorded
    /// (`ragway:epoch:<collection>` = `<generation>:<epoch>`) and every other process drops its
    /// local entries of that collection too, so replicas that share stores share the change at
    /// once.
    pub async fn collection_changed(&self, collection: &str, generation: &str, epoch: u64) {
        self.invalidate_local(Some(collection), None).await;
        let Some(shared) = &self.shared else {
            return;
        };
        let key = format!("ragway:epoch:{collection}");
        let recorded = match epoch {
            u64::MAX => shared.delete_matching(&key).await.map(drop),
            _ => {
                let value = format!("{generation}:{epoch}").into_bytes();
                shared.set(&key, value, Duration::from_secs(365 * 86_400)).await
            }
        };
        let published = self.announce(Some(collection), None).await;
        if let Err(e) = recorded.and(published) {
            tracing::debug!(collection, error = %e, "collection change not shared through redis");
        }
    }

    /// Another process's invalidation: drop the local entries it names.
    async fn follow(&self, message: &str) {
        let Ok(message) = serde_json::from_str::<Invalidation>(message) else {
            return;
        };
        if message.origin != self.instance {
            let dropped = self
                .invalidate_local(message.collection.as_deref(), message.layer.as_deref())
                .await;
            tracing::info!(collection = ?message.collection, dropped, "cache entries dropped at another process's request");
        }
    }

    /// The layers named by `layer` (every one when `None`), as their common invalidation face.
    /// L2 holds no collection's data: naming a collection leaves it alone.
    fn layers(&self, layer: Option<&str>, collection: Option<&str>) -> Vec<&dyn Invalidate> {
        let all: [&dyn Invalidate; 4] = [&self.answers, &self.searches, &self.embeddings, &self.retrievals];
        all.into_iter()
            .filter(|l| layer.is_none_or(|name| l.name() == name))
            .filter(|l| collection.is_none() || l.name() != "l2")
            .collect()
    }
}

/// What invalidation needs of a layer, whatever it holds.
#[async_trait]
trait Invalidate: Send + Sync {
    fn name(&self) -> &'static str;
    async fn invalidate_local(&self, scope: Option<&str>) -> u64;
    async fn invalidate_shared(&self, scope: Option<&str>) -> u64;
}

#[async_trait]
impl<V> Invalidate for Layer<V>
where
    V: Clone + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        Layer::name(self)
    }
    async fn invalidate_local(&self, scope: Option<&str>) -> u64 {
        Layer::invalidate_local(self, scope).await
    }
    async fn invalidate_shared(&self, scope: Option<&str>) -> u64 {
        Layer::invalidate_shared(self, scope).await
    }
}

/// What shapes an answer besides the request: the models, the pool, retrieval and generation
/// settings. A change of any of them changes every L1 and L3 key.
fn fingerprint(config: &Config) -> String {
    let r = &config.retrieval;
    let g = &config.generation;
    let backends: Vec<&str> = config.llm.iter().map(|b| b.name.as_str()).collect();
    format!(
        "{}|{:?}|{}|{}|{}|{}|{}|{}|{}",
        config.models.embedder,
        config.models.embedder_precision,
        config.models.reranker,
        r.candidates,
        r.rerank_candidates,
        g.max_tokens,
        g.temperature,
        backends.join(","),
        env!("CARGO_PKG_VERSION"),
    )
}

fn info(layer: &str, age: Duration, stale: bool) -> CacheInfo {
    CacheInfo {
        layer: layer.to_string(),
        age_ms: age.as_millis() as u64,
        stale,
    }
}

impl CachedHits {
    fn of(retrieved: &Retrieved) -> Self {
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

impl Cacheable for Answer {
    type Entry = CachedAnswer;
    fn report(&self) -> &Report {
        &self.report
    }
    fn into_report(self) -> Report {
        self.report
    }
    fn entry(&self) -> Option<CachedAnswer> {
        CachedAnswer::of(self)
    }
    fn from_entry(entry: CachedAnswer, report: Report, cache: CacheInfo) -> Self {
        entry.into_answer(report, cache)
    }
}

impl Pipeline {
    /// L3 around hybrid retrieval.
    pub async fn retrieve(
        &self,
        target: Target<'_>,
        query: &str,
        filter: MetadataFilter,
        top_k: usize,
        deadline: &Deadline,
        allowance: &Allowance,
    ) -> Retrieved {
        let key = self.caches.key("l3", &target, query, top_k, &filter);
        let stage = self.retrieve_uncached(&target, query, filter, top_k, deadline, allowance);
        through(&self.caches.retrievals, target.name, &key, stage).await
    }

    /// L1 around `/search`: the whole hit list for this question, else retrieval (through L3).
    pub async fn search(
        &self,
        target: Target<'_>,
        query: &str,
        filter: MetadataFilter,
        top_k: usize,
        deadline: &Deadline,
        allowance: &Allowance,
    ) -> Retrieved {
        let key = self.caches.key("l1_search", &target, query, top_k, &filter);
        let stage = self.retrieve(target, query, filter, top_k, deadline, allowance);
        through(&self.caches.searches, target.name, &key, stage).await
    }

    /// L1 around grounded answers (`/query`, chat over a collection). A tenant whose LLM budget
    /// is spent gets an entry however old (`cache_only`), else an answer by a cheaper backend it
    /// may use (`fallback_llm`), else an extractive one; each says `llm` was degraded for `quota`.
    pub async fn answer(
        &self,
        target: Target<'_>,
        conversation: &Conversation,
        filter: MetadataFilter,
        passages: usize,
        deadline: &Deadline,
        allowance: &Allowance,
    ) -> Answer {
        let asked = asked(conversation);
        let key = self.caches.key("l1_answer", &target, &asked, passages, &filter);
        let stage = self.answer_uncached(target, conversation, filter, passages, deadline, allowance);
        if !allowance.budget_spent() {
            return through(&self.caches.answers, target.name, &key, stage).await;
        }
        let layer = &self.caches.answers;
        match layer.get(target.name, &key).await {
            Lookup::Fresh { value, age } | Lookup::Stale { value, age } => {
                let mut report = Report::default();
                report.cache_only = true;
                report.degrade("llm", ragway_openapi::DegradationReason::Quota);
                value.into_answer(report, info(layer.name(), age, false))
            }
            Lookup::Miss => stage.await,
        }
    }

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

/// What an answer is an answer to, for its L1 key: the question, and for a conversation the
/// turns before it and what was searched for.
fn asked(conversation: &Conversation) -> String {
    if conversation.history.is_empty() {
        return conversation.question.clone();
    }
    let mut asked: Vec<&str> = conversation.history.iter().map(|m| m.content.as_str()).collect();
    asked.push(&conversation.question);
    asked.push(&conversation.search);
    asked.join("\u{1e}")
}

/// A query's vector, and the tokens embedding it took (`None`: it came from L2).
pub struct QueryVector {
    pub vector: Arc<Vec<f32>>,
    pub tokens: Option<u64>,
}

impl CachedAnswer {
    /// Only an answer written by an LLM of the pool is kept (an extractive one is not `normal`).
    fn of(answer: &Answer) -> Option<Self> {
        let Some(Authorship::Primary(llm)) = &answer.report.authorship else {
            return None;
        };
        Some(Self {
            text: answer.text.clone(),
            citations: answer.citations.clone(),
            usage: (answer.usage.prompt_tokens, answer.usage.completion_tokens),
            llm: llm.clone(),
            degraded: answer.report.degraded(),
            reranked: matches!(
                answer.report.rerank,
                ragway_openapi::StageStatus::Ok | ragway_openapi::StageStatus::Cached
            ),
        })
    }

    fn into_answer(self, mut report: Report, cache: CacheInfo) -> Answer {
        if cache.stale {
            report.cache = Some(cache);
        } else {
            report.served_from_cache(cache, self.reranked);
            for d in self.degraded {
                report.degrade(d.stage, d.reason);
            }
        }
        if report.authorship.is_none() {
            report.authorship = Some(Authorship::Primary(self.llm));
        }
        Answer {
            text: self.text,
            citations: self.citations,
            usage: TokenUsage {
                prompt_tokens: self.usage.0,
                completion_tokens: self.usage.1,
            },
            report,
        }
    }
}
