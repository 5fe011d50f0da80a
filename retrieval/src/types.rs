use serde_json::{Map, Value};

/// A piece of a document, the unit that is embedded, indexed and retrieved.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    /// `<doc_id>#<ordinal>`: stable across re-ingest of the same content.
    pub chunk_id: String,
    pub doc_id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
}

/// A chunk with its embedding, ready for the dense store.
#[derive(Debug, Clone)]
pub struct EmbeddedChunk {
    pub chunk: Chunk,
    pub vector: Vec<f32>,
}

/// A chunk found by a search, with the score of whoever found it (higher is better).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScoredChunk {
    pub chunk: Chunk,
    pub score: f32,
}
