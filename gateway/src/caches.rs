//! The cache layers and what they keep: L1 (whole answers and `/search` answers), L2 (query
//! vectors), L3 (fused, reranked hit lists), each with a local tier and, with Redis, a shared one;
//! and their invalidation, here and across replicas. How each layer wraps its stage is in
//! `answer::cached` and the answer engine.
//!
//! Keys hold the collection's generation (new on every create) and epoch (bumped by every
//! document change), so a changed or re-created collection never meets its old entries.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ragway_cache::{normalize_query, CacheKey, Layer, LayerSettings, RedisTier, SharedTier, TierError};
use ragway_openapi::{CacheInfo, Degradation};
use ragway_retrieval::{Fusion, MetadataFilter, ScoredChunk};
use serde::{Deserialize, Serialize};

use crate::config::{CacheConfig, CacheLayerConfig, Config};
use crate::resilience::deadline::Deadline;
use crate::resilience::guard::{Blame, Blamed, Failure, Guard};

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
    pub(crate) hits: Vec<ScoredChunk>,
    pub(crate) dense_ids: Vec<String>,
    pub(crate) keyword_ids: Vec<String>,
    pub(crate) reranked: bool,
}

/// A whole grounded answer as L1 keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub(crate) text: String,
    pub(crate) citations: Vec<(usize, ScoredChunk)>,
    pub(crate) usage: (usize, usize),
    pub(crate) llm: String,
    pub(crate) reranked: bool,
    /// What shaped the answer without changing its mode (e.g. passages fitted to the window).
    pub(crate) degraded: Vec<Degradation>,
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
    pub(crate) answers: Layer<CachedAnswer>,
    /// L1: `/search` answers.
    pub(crate) searches: Layer<CachedHits>,
    /// L2: query embeddings, by model and text.
    pub(crate) embeddings: Layer<Vec<f32>>,
    /// L3: fused (and reranked) hit lists.
    pub(crate) retrievals: Layer<CachedHits>,
    shared: Option<Arc<GuardedRedis>>,
    /// Everything besides the request that shapes an answer: models, backends, settings.
    pub(crate) fingerprint: String,
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
        local: cache.local_tier || !cache.redis.enabled(),
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

    pub(crate) fn key(
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

pub(crate) fn info(layer: &str, age: Duration, stale: bool) -> CacheInfo {
    CacheInfo {
        layer: layer.to_string(),
        age_ms: age.as_millis() as u64,
        stale,
    }
}
