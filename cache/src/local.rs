use std::time::Duration;

use crate::CacheKey;

/// The in-process tier: bounded by entry count, entries expire after `ttl`.
#[derive(Clone)]
pub struct LocalCache<V: Clone + Send + Sync + 'static> {
    entries: moka::future::Cache<CacheKey, V>,
}

impl<V: Clone + Send + Sync + 'static> LocalCache<V> {
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        Self {
            entries: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub async fn get(&self, key: &CacheKey) -> Option<V> {
        self.entries.get(key).await
    }

    pub async fn insert(&self, key: CacheKey, value: V) {
        self.entries.insert(key, value).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_and_expires() {
        let cache = LocalCache::new(10, Duration::from_millis(50));
        let key = CacheKey::new("t", &[b"k"]);
        assert_eq!(cache.get(&key).await, None);
        cache.insert(key, 7u32).await;
        assert_eq!(cache.get(&key).await, Some(7));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(cache.get(&key).await, None);
    }
}
