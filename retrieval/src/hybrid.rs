//! Both engines searched by one store in one round trip (a Qdrant server holds the dense and the
//! BM25 sparse vectors of every chunk), and fused there when the store runs the requested fusion
//! exactly as ragway would.

use async_trait::async_trait;

use crate::error::RetrievalError;
use crate::filter::MetadataFilter;
use crate::fusion::Fusion;
use crate::types::ScoredChunk;

/// One hybrid search.
#[derive(Debug, Clone)]
pub struct HybridQuery {
    pub vector: Vec<f32>,
    pub text: String,
    pub filter: MetadataFilter,
    /// Candidates from each engine.
    pub depth: usize,
    /// Fused hits wanted.
    pub limit: usize,
    pub fusion: Fusion,
}

/// What each engine found, and their fusion when the store ran it.
#[derive(Debug, Clone)]
pub struct HybridHits {
    pub dense: Vec<ScoredChunk>,
    pub keyword: Vec<ScoredChunk>,
    /// `None`: the store does not run this fusion; fuse the two lists ([`crate::fuse`]).
    pub fused: Option<Vec<ScoredChunk>>,
}

#[async_trait]
pub trait HybridStore: Send + Sync {
    async fn search_both(&self, collection: &str, query: HybridQuery) -> Result<HybridHits, RetrievalError>;
}
