use std::time::Duration;

use async_trait::async_trait;

/// A cache tier shared between processes. Every call may fail; a layer then carries on with its
/// local tier alone.
#[async_trait]
pub trait SharedTier: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TierError>;
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), TierError>;
    /// Deletes every key matching the glob `pattern`; how many.
    async fn delete_matching(&self, pattern: &str) -> Result<u64, TierError>;
    async fn publish(&self, channel: &str, message: String) -> Result<(), TierError>;
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("shared cache tier: {0}")]
pub struct TierError(pub String);
