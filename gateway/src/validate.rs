//! Input rules, checked before anything is stored or computed.

use std::collections::HashSet;

use ragway_openapi::{
    ChunkInput, DocumentInput, FusionMethod, FusionNormalization, FusionSettings,
    MetadataFilter as JsonFilter,
};
use ragway_retrieval::{ChunkingOptions, FilterValue, Fusion, MetadataFilter, Normalization};

use crate::error::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};

/// What one request may ask for. Each over-limit input is a 4xx naming its key; nothing is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// UTF-8 bytes of one document's text.
    pub max_document_bytes: usize,
    /// Bytes of one document's metadata, as JSON.
    pub max_metadata_bytes: usize,
    pub max_metadata_keys: usize,
    /// Chunks one ingest request may produce (all its documents together).
    pub max_chunks_per_request: usize,
    /// The smallest `chunk_words` a collection may use.
    pub min_chunk_words: usize,
    pub max_collections: usize,
    /// Inputs of one `/v1/embeddings` request.
    pub max_embedding_inputs: usize,
    /// Characters of one `/v1/embeddings` input.
    pub max_embedding_input_chars: usize,
    /// Documents of one `/v1/rerank` request.
    pub max_rerank_documents: usize,
    /// Characters of one `/v1/rerank` document.
    pub max_rerank_document_chars: usize,
    /// Searches of one `/search/batch` request.
    pub max_batch_queries: usize,
    /// One file's bytes (`/files`), and the most its compressed parts may expand to.
    pub max_file_bytes: usize,
    /// Files (and URLs) of one `/files` request.
    pub max_files_per_request: usize,
    /// A whole `/files` request body (multipart), read before any file is.
    pub max_upload_bytes: usize,
    /// `/files` requests at once, all tenants (each holds its body while it is read); one more
    /// gets `503 overloaded` with `Retry-After`.
    pub max_concurrent_uploads: usize,
    /// Of those, one tenant's share; one more gets `429 upload_quota_exceeded`.
    pub max_concurrent_uploads_per_tenant: usize,
    /// A whole `/import` body (NDJSON, streamed to the job store as it is read, never held).
    pub max_import_bytes: u64,
    /// One line of an `/import` body: a document with its metadata and vector.
    pub max_import_line_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_document_bytes: 1 << 20,
            max_metadata_bytes: 16 << 10,
            max_metadata_keys: 64,
            max_chunks_per_request: 20_000,
            min_chunk_words: 8,
            max_collections: 256,
            max_embedding_inputs: 512,
            max_embedding_input_chars: 8_192,
            max_rerank_documents: 256,
            max_rerank_document_chars: 8_192,
            max_batch_queries: 32,
            max_file_bytes: 32 << 20,
            max_files_per_request: 16,
            max_upload_bytes: 64 << 20,
            max_concurrent_uploads: 4,
            max_concurrent_uploads_per_tenant: 2,
            max_import_bytes: 16 << 30,
            max_import_line_bytes: 2 << 20,
        }
    }
}

pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_DOC_ID_CHARS: usize = 256;
pub const MAX_FILTER_KEYS: usize = 16;
pub const MAX_CHUNK_WORDS: usize = 1_000;
/// [`collection_name`]'s rule as a pattern, for the OpenAPI document.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_-]*$";
/// [`document_id`]'s rule: not blank, no control characters.
pub const DOC_ID_PATTERN: &str = "^(?=.*\\S)[^\\u0000-\\u001f\\u007f-\\u009f]+$";
/// Holds something besides whitespace (queries, document texts).
pub const NOT_BLANK: &str = "\\S";
/// A metadata filter key.
pub const FILTER_KEY_PATTERN: &str = "^[A-Za-z0-9_-]+$";

/// 1–64 chars of `[a-z0-9_-]`, starting with a letter or digit: safe as a directory name.
pub fn collection_name(name: &str) -> Result<(), ApiError> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let valid_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > MAX_NAME_CHARS || !valid_chars || !valid_start {
        return Err(ApiError::invalid(
            ErrorCode::InvalidCollectionName,
            format!(
                "collection name {name:?} is invalid: use 1-{MAX_NAME_CHARS} lowercase letters, digits, '-' or '_', starting with a letter or digit"
            ),
        ));
    }
    Ok(())
}

pub fn document_id(id: &str) -> Result<(), ApiError> {
    if id.trim().is_empty() || id.chars().count() > MAX_DOC_ID_CHARS || id.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            ErrorCode::InvalidDocumentId,
            format!(
                "document id {id:?} is invalid: use 1-{MAX_DOC_ID_CHARS} characters, no control characters"
            ),
        ));
    }
    Ok(())
}

/// A collection's chunking: at least `min_chunk_words` (`limits.min_chunk_words`) and at most
/// 1000 words (beyond ~200 the embedder's 256-token window cuts chunks anyway), overlap smaller.
pub fn chunking(chunking: ChunkingOptions, min_chunk_words: usize) -> Result<(), ApiError> {
    let ChunkingOptions {
        chunk_words,
        overlap_words,
    } = chunking;
    if !(min_chunk_words..=MAX_CHUNK_WORDS).contains(&chunk_words) || overlap_words >= chunk_words {
        return Err(ApiError::invalid(
            ErrorCode::InvalidChunking,
            format!(
                "chunk_words must be {min_chunk_words}-1000 (limits.min_chunk_words) and chunk_overlap_words smaller than chunk_words"
            ),
        ));
    }
    Ok(())
}

/// An ingest request's documents: count, ids, sizes, metadata, vectors (of `dimension`), and the
/// chunks they would make.
pub fn documents(
    documents: &[DocumentInput],
    max_documents: usize,
    limits: &LimitsConfig,
    chunking: ChunkingOptions,
    dimension: usize,
) -> Result<(), ApiError> {
    if documents.is_empty() || documents.len() > max_documents {
        return Err(ApiError::invalid(
            ErrorCode::InvalidDocuments,
            format!("send 1 to {max_documents} documents per request (server.max_documents_per_request)"),
        ));
    }
    let mut seen = HashSet::new();
    let mut chunks = 0;
    for doc in documents {
        if !seen.insert(doc.id.as_str()) {
            return Err(ApiError::invalid(
                ErrorCode::DuplicateDocumentId,
                format!("document id {:?} appears twice in this request", doc.id),
            ));
        }
        chunks += one_document(doc, limits, chunking, dimension)?;
    }
    if chunks > limits.max_chunks_per_request {
        return Err(ApiError::invalid(
            ErrorCode::TooManyChunks,
            format!(
                "these documents make {chunks} chunks; the limit is {} per request (limits.max_chunks_per_request): send fewer per request",
                limits.max_chunks_per_request
            ),
        ));
    }
    Ok(())
}

/// One document (of a request, or a line of an import): its id, size, metadata, vector; the
/// chunks it makes.
pub fn one_document(
    doc: &DocumentInput,
    limits: &LimitsConfig,
    chunking: ChunkingOptions,
    dimension: usize,
) -> Result<usize, ApiError> {
    document_id(&doc.id)?;
    document(doc, limits)?;
    let chunks = match &doc.chunks {
        Some(given) => given_chunks(doc, given, limits)?,
        None => chunking.chunks_for(doc.text.split_whitespace().count()),
    };
    if let Some(vector) = &doc.vector {
        given_vector(&doc.id, vector, dimension, chunks)?;
    }
    Ok(chunks)
}

/// A vector sent with a document: the collection's dimension, finite, not zero (cosine has no
/// direction for it), for a document of one chunk.
fn given_vector(id: &str, vector: &[f32], dimension: usize, chunks: usize) -> Result<(), ApiError> {
    let refuse = |why: String| {
        Err(ApiError::invalid(
            ErrorCode::InvalidVector,
            format!("document {id:?}: {why}"),
        ))
    };
    if vector.len() != dimension {
        return refuse(format!(
            "its vector has {} values; this collection's embedder makes {dimension}",
            vector.len()
        ));
    }
    if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
        return refuse(format!("value {i} of its vector is not a finite number"));
    }
    if vector.iter().all(|v| *v == 0.0) {
        return refuse("its vector is all zeros".into());
    }
    if chunks != 1 {
        return refuse(format!(
            "it makes {chunks} chunks, and a vector can stand for one: send shorter texts, or no vector"
        ));
    }
    Ok(())
}

/// A document's own chunks: at least one, none blank or larger than a document may be, each's
/// metadata within the metadata limits. Their count.
fn given_chunks(doc: &DocumentInput, given: &[ChunkInput], limits: &LimitsConfig) -> Result<usize, ApiError> {
    if given.is_empty() {
        return Err(ApiError::invalid(
            ErrorCode::InvalidDocuments,
            format!("document {:?} has `chunks` but none in it", doc.id),
        ));
    }
    for (i, chunk) in given.iter().enumerate() {
        let as_document = DocumentInput {
            id: format!("{}#{i}", doc.id),
            text: chunk.text.clone(),
            metadata: chunk.metadata.clone(),
            chunks: None,
            vector: None,
        };
        document(&as_document, limits)?;
    }
    Ok(given.len())
}

fn document(doc: &DocumentInput, limits: &LimitsConfig) -> Result<(), ApiError> {
    if doc.text.trim().is_empty() {
        return Err(ApiError::invalid(
            ErrorCode::EmptyDocument,
            format!("document {:?} has no text", doc.id),
        ));
    }
    if doc.text.len() > limits.max_document_bytes {
        return Err(ApiError::invalid(
            ErrorCode::DocumentTooLarge,
            format!(
                "document {:?} has {} bytes of text; the limit is {} (limits.max_document_bytes)",
                doc.id,
                doc.text.len(),
                limits.max_document_bytes
            ),
        ));
    }
    let Some(metadata) = &doc.metadata else {
        return Ok(());
    };
    if metadata.len() > limits.max_metadata_keys {
        return Err(ApiError::invalid(
            ErrorCode::MetadataTooLarge,
            format!(
                "document {:?} has {} metadata keys; the limit is {} (limits.max_metadata_keys)",
                doc.id,
                metadata.len(),
                limits.max_metadata_keys
            ),
        ));
    }
    let bytes = serde_json::Value::Object(metadata.clone()).to_string().len();
    if bytes > limits.max_metadata_bytes {
        return Err(ApiError::invalid(
            ErrorCode::MetadataTooLarge,
            format!(
                "document {:?} has {bytes} bytes of metadata; the limit is {} (limits.max_metadata_bytes)",
                doc.id, limits.max_metadata_bytes
            ),
        ));
    }
    Ok(())
}

/// `/v1/embeddings` inputs: how many (`limits.max_embedding_inputs`) and how long
/// (`limits.max_embedding_input_chars`).
pub fn embedding_inputs(texts: &[String], limits: &LimitsConfig) -> Result<(), ApiError> {
    let max = limits.max_embedding_inputs;
    if texts.is_empty() || texts.len() > max {
        return Err(ApiError::invalid(
            ErrorCode::InvalidInput,
            format!("send 1 to {max} inputs (limits.max_embedding_inputs)"),
        ));
    }
    let max_chars = limits.max_embedding_input_chars;
    for (i, text) in texts.iter().enumerate() {
        if text.is_empty() {
            return Err(ApiError::invalid(
                ErrorCode::InvalidInput,
                "inputs must not be empty strings",
            ));
        }
        if text.chars().count() > max_chars {
            return Err(ApiError::invalid(
                ErrorCode::InputTooLong,
                format!("input {i} is longer than {max_chars} characters (limits.max_embedding_input_chars)"),
            ));
        }
    }
    Ok(())
}

/// `/v1/rerank` documents: 1 to `limits.max_rerank_documents`, none empty or longer than
/// `limits.max_rerank_document_chars`.
pub fn rerank_documents(documents: &[String], limits: &LimitsConfig) -> Result<(), ApiError> {
    let max = limits.max_rerank_documents;
    if documents.is_empty() || documents.len() > max {
        return Err(ApiError::invalid(
            ErrorCode::InvalidDocuments,
            format!("send 1 to {max} documents (limits.max_rerank_documents)"),
        ));
    }
    let max_chars = limits.max_rerank_document_chars;
    for (i, text) in documents.iter().enumerate() {
        if text.trim().is_empty() {
            return Err(ApiError::invalid(
                ErrorCode::EmptyDocument,
                format!("document {i} is empty"),
            ));
        }
        if text.chars().count() > max_chars {
            return Err(ApiError::invalid(
                ErrorCode::DocumentTooLong,
                format!(
                    "document {i} is longer than {max_chars} characters (limits.max_rerank_document_chars)"
                ),
            ));
        }
    }
    Ok(())
}

/// A batch search's size: 1 to `limits.max_batch_queries`.
pub fn batch_size(queries: usize, max: usize) -> Result<(), ApiError> {
    match (1..=max).contains(&queries) {
        true => Ok(()),
        false => Err(ApiError::invalid(
            ErrorCode::InvalidQueries,
            format!("send 1 to {max} queries (limits.max_batch_queries); got {queries}"),
        )),
    }
}

pub fn query_text(query: &str, max_chars: usize) -> Result<(), ApiError> {
    if query.trim().is_empty() {
        return Err(ApiError::invalid(ErrorCode::EmptyQuery, "query is empty"));
    }
    let chars = query.chars().count();
    if chars > max_chars {
        return Err(ApiError::invalid(
            ErrorCode::QueryTooLong,
            format!("query has {chars} characters; the limit is {max_chars}"),
        ));
    }
    Ok(())
}

pub fn top_k(requested: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match requested {
        None => Ok(default),
        Some(k) if (1..=max).contains(&k) => Ok(k),
        Some(k) => Err(ApiError::invalid(
            ErrorCode::TopKOutOfRange,
            format!("top_k = {k} is out of range: use 1 to {max}"),
        )),
    }
}

/// A fusion setting as ragway runs it: each parameter in range and only where its method uses
/// it; absent ones take their defaults (k 60, alpha 0.5, min-max).
pub fn fusion(settings: &FusionSettings) -> Result<Fusion, ApiError> {
    let invalid = |message: String| ApiError::invalid(ErrorCode::InvalidFusion, message);
    let alpha = settings.alpha.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&alpha) {
        return Err(invalid(format!(
            "fusion.alpha = {alpha} is out of range: use 0 to 1"
        )));
    }
    let method = settings.method;
    if settings.alpha.is_some() && method == FusionMethod::Adaptive {
        return Err(invalid(
            "fusion.alpha does not apply to method \"adaptive\" (it sets the weights per query)".into(),
        ));
    }
    if settings.k.is_some() && method != FusionMethod::Rrf {
        return Err(invalid("fusion.k applies to method \"rrf\" only".into()));
    }
    if settings.normalization.is_some() && method != FusionMethod::Convex {
        return Err(invalid(
            "fusion.normalization applies to method \"convex\" only".into(),
        ));
    }
    Ok(match method {
        FusionMethod::Rrf => {
            let k = settings.k.unwrap_or(60.0);
            if !(1.0..=1000.0).contains(&k) {
                return Err(invalid(format!("fusion.k = {k} is out of range: use 1 to 1000")));
            }
            Fusion::Rrf { k, alpha }
        }
        FusionMethod::Convex => Fusion::Convex {
            alpha,
            normalization: match settings.normalization {
                Some(FusionNormalization::ZScore) => Normalization::ZScore,
                Some(FusionNormalization::MinMax) | None => Normalization::MinMax,
            },
        },
        FusionMethod::Dbsf => Fusion::Dbsf { alpha },
        FusionMethod::Adaptive => Fusion::Adaptive,
    })
}

/// A new collection's storage: the request's, the rest from `defaults` (the server's `[store]`);
/// `None` (a Qdrant server, which keeps vectors as it is configured) refuses a request for one.
pub fn storage(
    requested: Option<ragway_openapi::StorageSettings>,
    defaults: Option<ragway_retrieval::DenseStorage>,
) -> Result<Option<ragway_retrieval::DenseStorage>, ApiError> {
    let Some(defaults) = defaults else {
        return match requested {
            Some(_) => Err(ApiError::invalid(
                ErrorCode::InvalidStorage,
                "`storage` applies to the embedded store (store.kind = \"edge\"); a Qdrant server keeps vectors as it is configured",
            )),
            None => Ok(None),
        };
    };
    let Some(requested) = requested else {
        return Ok(Some(defaults));
    };
    Ok(Some(ragway_retrieval::DenseStorage {
        quantized: requested.quantization.map_or(defaults.quantized, |q| {
            q == ragway_openapi::StorageQuantization::Int8
        }),
        vectors_on_disk: requested.vectors_on_disk.unwrap_or(defaults.vectors_on_disk),
    }))
}

/// A fusion as the API shows it (every parameter its method uses, spelled out).
pub fn fusion_settings(fusion: &Fusion) -> FusionSettings {
    let (method, k, alpha, normalization) = match *fusion {
        Fusion::Rrf { k, alpha } => (FusionMethod::Rrf, Some(k), Some(alpha), None),
        Fusion::Convex { alpha, normalization } => {
            let normalization = match normalization {
                Normalization::MinMax => FusionNormalization::MinMax,
                Normalization::ZScore => FusionNormalization::ZScore,
            };
            (FusionMethod::Convex, None, Some(alpha), Some(normalization))
        }
        Fusion::Dbsf { alpha } => (FusionMethod::Dbsf, None, Some(alpha), None),
        Fusion::Adaptive => (FusionMethod::Adaptive, None, None, None),
    };
    FusionSettings {
        method,
        k,
        alpha,
        normalization,
    }
}

/// Turns `{"key": value}` into store filters. Keys are limited to `[A-Za-z0-9_-]` because they
/// become payload paths in Qdrant.
pub fn filter(filter: Option<&JsonFilter>) -> Result<MetadataFilter, ApiError> {
    let Some(filter) = filter else {
        return Ok(Vec::new());
    };
    if filter.len() > MAX_FILTER_KEYS {
        return Err(ApiError::invalid(
            ErrorCode::InvalidFilter,
            format!("filter has {} keys; the limit is {MAX_FILTER_KEYS}", filter.len()),
        ));
    }
    filter
        .iter()
        .map(|(key, value)| {
            let key_ok = !key.is_empty()
                && key.len() <= MAX_NAME_CHARS
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !key_ok {
                return Err(ApiError::invalid(
                    ErrorCode::InvalidFilter,
                    format!(
                        "filter key {key:?} is invalid: use 1-{MAX_NAME_CHARS} letters, digits, '-' or '_'"
                    ),
                ));
            }
            let value = FilterValue::from_json(value).ok_or_else(|| {
                ApiError::invalid(
                    ErrorCode::InvalidFilter,
                    format!("filter value for {key:?} must be a string, an integer or a boolean"),
                )
            })?;
            Ok((key.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn collection_names() {
        for ok in ["docs", "a", "tenant-1_docs", "0abc"] {
            assert!(collection_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Docs", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(collection_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_cut_by_their_sender_count_their_chunks_and_each_is_checked() {
        let limits = LimitsConfig {
            max_chunks_per_request: 3,
            ..LimitsConfig::default()
        };
        let cut = |chunks: Vec<&str>| DocumentInput {
            id: "d".into(),
            text: "whole text".into(),
            metadata: None,
            chunks: Some(
                chunks
                    .into_iter()
                    .map(|t| ChunkInput {
                        text: t.into(),
                        metadata: None,
                    })
                    .collect(),
            ),
            vector: None,
        };
        let check = |doc: DocumentInput| documents(&[doc], 10, &limits, ChunkingOptions::default(), 3);
        assert!(check(cut(vec!["a", "b", "c"])).is_ok());
        let code = |doc| check(doc).err().map(|e| e.code());
        assert_eq!(
            code(cut(vec!["a", "b", "c", "d"])),
            Some(ErrorCode::TooManyChunks)
        );
        assert_eq!(code(cut(vec![])), Some(ErrorCode::InvalidDocuments));
        assert_eq!(code(cut(vec!["a", "  "])), Some(ErrorCode::EmptyDocument));
    }

    #[test]
    fn a_vector_is_of_the_collections_dimension_finite_and_for_one_chunk() {
        let limits = LimitsConfig::default();
        let doc = |text: &str, vector: Vec<f32>| DocumentInput {
            id: "d".into(),
            text: text.into(),
            metadata: None,
            chunks: None,
            vector: Some(vector),
        };
        let chunking = ChunkingOptions {
            chunk_words: 4,
            overlap_words: 0,
        };
        let check = |doc: DocumentInput| one_document(&doc, &limits, chunking, 3).map_err(|e| e.code());
        assert_eq!(check(doc("short text", vec![0.1, 0.2, 0.3])), Ok(1));
        let invalid = Err(ErrorCode::InvalidVector);
        assert_eq!(check(doc("short text", vec![0.1, 0.2])), invalid);
        assert_eq!(check(doc("short text", vec![0.1, f32::NAN, 0.3])), invalid);
        assert_eq!(check(doc("short text", vec![0.1, f32::INFINITY, 0.3])), invalid);
        assert_eq!(check(doc("short text", vec![0.0, 0.0, 0.0])), invalid);
        assert_eq!(
            check(doc("one two three four five six", vec![0.1, 0.2, 0.3])),
            invalid
        );
    }

    #[test]
    fn storage_is_the_requests_over_the_stores_defaults_and_only_for_the_embedded_store() {
        use ragway_openapi::{StorageQuantization, StorageSettings};
        use ragway_retrieval::DenseStorage;
        let kept = |quantized, vectors_on_disk| DenseStorage {
            quantized,
            vectors_on_disk,
        };
        let edge = Some(kept(false, true));
        let asked = |quantization, vectors_on_disk| {
            Some(StorageSettings {
                quantization,
                vectors_on_disk,
            })
        };
        assert_eq!(storage(None, edge).ok(), Some(edge));
        assert_eq!(
            storage(asked(Some(StorageQuantization::Int8), None), edge).ok(),
            Some(Some(kept(true, true)))
        );
        assert_eq!(
            storage(asked(None, Some(false)), edge).ok(),
            Some(Some(kept(false, false)))
        );
        assert_eq!(storage(None, None).ok(), Some(None));
        assert_eq!(
            storage(asked(None, Some(true)), None).err().map(|e| e.code()),
            Some(ErrorCode::InvalidStorage)
        );
    }

    #[test]
    fn top_k_bounds() {
        assert_eq!(top_k(None, 5, 100).ok(), Some(5));
        assert_eq!(top_k(Some(100), 5, 100).ok(), Some(100));
        assert!(top_k(Some(0), 5, 100).is_err());
        assert!(top_k(Some(101), 5, 100).is_err());
    }

    #[test]
    fn filters() -> Result<(), ApiError> {
        let f = json!({"lang": "en", "year": 2024, "draft": false});
        let parsed = filter(f.as_object())?;
        assert_eq!(parsed.len(), 3);
        assert!(filter(json!({"x": 1.5}).as_object()).is_err());
        assert!(filter(json!({"a.b": "c"}).as_object()).is_err());
        assert!(filter(json!({"x": ["a"]}).as_object()).is_err());
        Ok(())
    }

    #[test]
    fn queries() {
        assert!(query_text("  ", 10).is_err());
        assert!(query_text("hello", 5).is_ok());
        assert!(query_text("héllo!", 5).is_err());
    }
}
