//! ragway's cache layers: each a [`Layer`] with a TTL, a size bound and hit/miss/stale counters,
//! an in-process tier (moka) in front of an optional shared tier ([`SharedTier`]; Redis in
//! [`RedisTier`]). Keys are [`CacheKey`]s scoped by collection, so that one collection's entries
//! can be dropped at once. What a layer caches, and when, is decided by the wrappers in `gateway`.

mod key;
mod layer;
mod redis_tier;
mod shared;

pub use key::{normalize_query, CacheKey};
pub use layer::{Layer, LayerSettings, Lookup};
pub use redis_tier::{Durability, PrimaryConnection, RedisTarget, RedisTier};
pub use shared::{SharedTier, TierError};

/// The Redis client this crate uses, for callers that run commands of their own on [`RedisTier`].
pub use redis;
