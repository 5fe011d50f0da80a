use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{CacheKey, SharedTier};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSettings {
    /// How long an entry is fresh.
    pub ttl: Duration,
    /// How long past `ttl` an entry is kept to be served when nothing else can answer.
    pub stale_for: Duration,
    /// The local tier's bound; 0 turns the layer off.
    pub max_entries: u64,
    /// Whether entries are kept in process (false: in the shared tier only).
    pub local: bool,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<V> {
    Fresh {
        value: V,
        age: Duration,
    },
    /// Past its TTL, within `stale_for`: only for when the stage cannot run.
    Stale {
        value: V,
        age: Duration,
    },
    Miss,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry<V> {
    value: V,
    /// When the value was computed, in ms since the Unix epoch (shared across processes).
    stored_ms: u64,
    scope: String,
}

/// One cache layer: an in-process tier in front of an optional shared one. Entries are scoped
/// (a collection name, or `""` for collection-independent layers) so a scope can be dropped.
pub struct Layer<V> {
    name: &'static str,
    settings: LayerSettings,
    local: moka::future::Cache<CacheKey, Arc<Entry<V>>>,
    shared: Option<Arc<dyn SharedTier>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<V> Layer<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub fn new(name: &'static str, settings: LayerSettings, shared: Option<Arc<dyn SharedTier>>) -> Self {
        let local = moka::future::Cache::builder()
            .max_capacity(settings.max_entries)
            .time_to_live(settings.ttl + settings.stale_for)
            .build();
        Self {
            name,
            settings,
            local,
            shared,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn shared_key(&self, scope: &str, key: &CacheKey) -> String {
        format!("ragway:{}:{scope}:{}", self.name, key.hex())
    }

    /// The entry for `key`: local tier first, then the shared tier. Counts a hit or a miss
    /// (a stale entry is a miss until [`Layer::served_stale`] says it was used).
    pub async fn get(&self, scope: &str, key: &CacheKey) -> Lookup<V> {
        if self.settings.max_entries == 0 {
            return Lookup::Miss;
        }
        let mut entry = match self.settings.local {
            true => self.local.get(key).await,
            false => None,
        };
        if entry.as_ref().is_none_or(|e| self.age(e) >= self.settings.ttl) {
            if let Some(found) = self.get_shared(scope, key).await {
                if entry.as_ref().is_none_or(|e| found.stored_ms > e.stored_ms) {
                    if self.settings.local {
                        self.local.insert(*key, found.clone()).await;
                    }
                    entry = Some(found);
                }
            }
        }
        let lookup = match entry.map(|e| (self.age(&e), e)) {
            Some((age, e)) if age < self.settings.ttl => Lookup::Fresh {
                value: e.value.clone(),
                age,
            },
            Some((age, e)) if age < self.settings.ttl + self.settings.stale_for => Lookup::Stale {
                value: e.value.clone(),
                age,
            },
            _ => Lookup::Miss,
        };
        let result = if matches!(lookup, Lookup::Fresh { .. }) {
            "hit"
        } else {
            "miss"
        };
        self.count(result);
        lookup
    }

    /// Records that a stale entry answered because the stage could not.
    pub fn served_stale(&self) {
        self.count("stale");
    }

    /// Stores `value` locally at once and in the shared tier in the background: a slow shared
    /// tier never delays an answer.
    pub async fn put(&self, scope: &str, key: &CacheKey, value: V) {
        if self.settings.max_entries == 0 {
            return;
        }
        let entry = Arc::new(Entry {
            value,
            stored_ms: now_ms(),
            scope: scope.to_string(),
        });
        if self.settings.local {
            self.local.insert(*key, entry.clone()).await;
        }
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(entry.as_ref()) else {
            return;
        };
        let shared_key = self.shared_key(scope, key);
        let keep = self.settings.ttl + self.settings.stale_for;
        let name = self.name;
        tokio::spawn(async move {
            if let Err(e) = shared.set(&shared_key, bytes, keep).await {
                tracing::debug!(layer = name, error = %e, "shared cache tier: not stored");
                metrics::counter!("ragway_cache_requests_total", "layer" => name, "result" => "error")
                    .increment(1);
            }
        });
    }

    /// Drops this process's entries of `scope` (every entry when `None`); how many.
    pub async fn invalidate_local(&self, scope: Option<&str>) -> u64 {
        let doomed: Vec<Arc<CacheKey>> = self
            .local
            .iter()
            .filter(|(_, e)| scope.is_none_or(|s| *e.scope == *s))
            .map(|(k, _)| k)
            .collect();
        for key in &doomed {
            self.local.invalidate(key.as_ref()).await;
        }
        doomed.len() as u64
    }

    /// Drops the shared tier's entries of `scope` (every entry of this layer when `None`).
    pub async fn invalidate_shared(&self, scope: Option<&str>) -> u64 {
        let Some(shared) = &self.shared else {
            return 0;
        };
        let pattern = format!("ragway:{}:{}:*", self.name, scope.unwrap_or("*"));
        shared.delete_matching(&pattern).await.unwrap_or_else(|e| {
            tracing::warn!(layer = self.name, error = %e, "shared cache tier: entries not dropped");
            0
        })
    }

    async fn get_shared(&self, scope: &str, key: &CacheKey) -> Option<Arc<Entry<V>>> {
        let shared = self.shared.as_ref()?;
        match shared.get(&self.shared_key(scope, key)).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok().map(Arc::new),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(layer = self.name, error = %e, "shared cache tier: lookup failed");
                self.count("error");
                None
            }
        }
    }

    fn age(&self, entry: &Entry<V>) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(entry.stored_ms))
    }

    fn count(&self, result: &'static str) {
        metrics::counter!("ragway_cache_requests_total", "layer" => self.name, "result" => result)
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::TierError;

    fn settings(ttl_ms: u64, stale_ms: u64) -> LayerSettings {
        LayerSettings {
            ttl: Duration::from_millis(ttl_ms),
            stale_for: Duration::from_millis(stale_ms),
            max_entries: 100,
            local: true,
        }
    }

    #[tokio::test]
    async fn entries_are_fresh_then_stale_then_gone() {
        let layer: Layer<u32> = Layer::new("t", settings(60, 120), None);
        let key = CacheKey::new("t", &[b"k"]);
        assert_eq!(layer.get("c", &key).await, Lookup::Miss);
        layer.put("c", &key, 7).await;
        assert!(matches!(
            layer.get("c", &key).await,
            Lookup::Fresh { value: 7, .. }
        ));
        tokio::time::sleep(Duration::from_millis(90)).await;
        assert!(matches!(
            layer.get("c", &key).await,
            Lookup::Stale { value: 7, .. }
        ));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(layer.get("c", &key).await, Lookup::Miss);
    }

    #[tokio::test]
    async fn invalidation_drops_one_scope_only() {
        let layer: Layer<u32> = Layer::new("t", settings(60_000, 0), None);
        let (a, b) = (CacheKey::new("t", &[b"a"]), CacheKey::new("t", &[b"b"]));
        layer.put("one", &a, 1).await;
        layer.put("two", &b, 2).await;
        assert_eq!(layer.invalidate_local(Some("one")).await, 1);
        assert_eq!(layer.get("one", &a).await, Lookup::Miss);
        assert!(matches!(
            layer.get("two", &b).await,
            Lookup::Fresh { value: 2, .. }
        ));
    }

    /// An in-memory shared tier, to test the layer's use of one without a Redis server (the
    /// Redis tier itself is tested against a real redis-server in tests/tests/e2e/cache.rs).
    #[derive(Default)]
    struct MemoryTier(Mutex<HashMap<String, Vec<u8>>>);

    #[async_trait]
    impl SharedTier for MemoryTier {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TierError> {
            Ok(self
                .0
                .lock()
                .map_err(|e| TierError(e.to_string()))?
                .get(key)
                .cloned())
        }
        async fn set(&self, key: &str, value: Vec<u8>, _ttl: Duration) -> Result<(), TierError> {
            self.0
                .lock()
                .map_err(|e| TierError(e.to_string()))?
                .insert(key.to_string(), value);
            Ok(())
        }
        async fn delete_matching(&self, _pattern: &str) -> Result<u64, TierError> {
            Err(TierError("unsupported".into()))
        }
        async fn publish(&self, _channel: &str, _message: String) -> Result<(), TierError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_second_process_finds_the_first_ones_entries_in_the_shared_tier() {
        let tier: Arc<dyn SharedTier> = Arc::new(MemoryTier::default());
        let first: Layer<String> = Layer::new("t", settings(60_000, 0), Some(tier.clone()));
        let second: Layer<String> = Layer::new("t", settings(60_000, 0), Some(tier));
        let key = CacheKey::new("t", &[b"q"]);
        first.put("c", &key, "answer".into()).await;
        tokio::time::sleep(Duration::from_millis(20)).await; // the background store
        assert!(matches!(second.get("c", &key).await, Lookup::Fresh { value, .. } if value == "answer"));
    }
}
