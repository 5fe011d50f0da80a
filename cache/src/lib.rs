//! Caches. For now the local tier of the embedding cache (L2): query embeddings keyed by model and
//! text. The response (L1), retrieval (L3) and prefix (L4) layers and the Redis tier build on the
//! same key and tier types.

mod key;
mod local;

pub use key::CacheKey;
pub use local::LocalCache;
