//! Retrieval: turning text into vectors, storing chunks in a dense (Qdrant Edge) and a keyword
//! (tantivy BM25) index, and fusing what both find.
//!
//! Each concern is one small async trait ([`Embedder`], [`DenseStore`], [`KeywordStore`]) with its
//! implementations beside it; the gateway picks implementations from its config.

mod blocking;
mod chunk;
mod dense;
mod embed;
mod error;
mod filter;
mod fusion;
mod hybrid;
mod keyword;
mod qdrant;
mod types;

pub use chunk::{chunk_document, ChunkingOptions};
pub use dense::{DenseStorage, DenseStore, EdgeDenseStore, ExportCursor};
pub use embed::{
    BertEmbedder, BertEmbedderOptions, Embedder, Embeddings, RemoteEmbedder, RemoteEmbedderOptions,
};
pub use error::RetrievalError;
pub use filter::{FilterValue, MetadataFilter};
pub use fusion::{adaptive, convex, dbsf, fuse, rrf, Fusion, Normalization};
pub use hybrid::{HybridHits, HybridQuery, HybridStore};
pub use keyword::{KeywordStore, TantivyKeywordStore};
pub use qdrant::{QdrantOptions, QdrantStore};
pub use ragway_worker::onnx::{OnnxRuntime, Precision};
pub use ragway_worker::{Overloaded, Priority, QueueLimits};
pub use types::{Chunk, EmbeddedChunk, ScoredChunk};
