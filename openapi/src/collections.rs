use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// How a collection's two engines' lists are fused (`docs/ARCHITECTURE.md`, "Fusion").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FusionSettings {
    pub method: FusionMethod,
    /// `rrf` only: a hit at rank r adds `1 / (k + r)`; 1–1000, default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<f32>,
    /// The weight of the dense engine, 0–1 (keyword: `1 − alpha`); default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    /// `convex` only: `min_max` (default) or `z_score`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<FusionNormalization>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FusionMethod {
    /// Reciprocal rank fusion: ranks only.
    Rrf,
    /// A convex combination of each engine's normalised scores.
    Convex,
    /// Distribution-based score fusion (as Qdrant's): scores scaled by mean ± 3σ of their list.
    Dbsf,
    /// Min-max convex combination weighted per query: equal weights, more on dense the closer its
    /// best hit is to the query (no parameters). The default.
    Adaptive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FusionNormalization {
    MinMax,
    ZScore,
}

/// `PATCH /v1/collections/{name}`: the settings to change (a change bumps the epoch).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCollectionRequest {
    /// The collection's fusion; `null` returns it to the server default.
    #[serde(default)]
    pub fusion: Option<FusionSettings>,
}

/// `POST /v1/collections`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollectionRequest {
    /// 1–64 characters: lowercase letters, digits, `-` and `_`, starting with a letter or digit.
    pub name: String,
    /// Words per chunk; the server default applies when absent.
    #[serde(default)]
    pub chunk_words: Option<usize>,
    /// Words shared by consecutive chunks; the server default applies when absent.
    #[serde(default)]
    pub chunk_overlap_words: Option<usize>,
    /// How its hybrid lists are fused; the server default (`retrieval.fusion`) when absent.
    #[serde(default)]
    pub fusion: Option<FusionSettings>,
    /// How its vectors are kept (the embedded store only); the server's `[store]` defaults for
    /// what is absent. Fixed for the collection's life.
    #[serde(default)]
    pub storage: Option<StorageSettings>,
}

/// How the embedded dense store keeps a collection's vectors. Both apply to a segment when it is
/// indexed (past 20,000 points): a smaller collection is scanned exactly whatever they say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// `int8`: an int8 copy of each vector in memory for the search, the best candidates
    /// rescored on the originals; `none`: the originals only.
    #[serde(default)]
    pub quantization: Option<StorageQuantization>,
    /// The original vectors memory-mapped from disk rather than held in memory.
    #[serde(default)]
    pub vectors_on_disk: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StorageQuantization {
    Int8,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CollectionInfo {
    pub name: String,
    pub documents: usize,
    pub chunks: usize,
    /// What the documents take in the stores: each chunk's UTF-8 text and the metadata copied
    /// into it (as JSON); what `limits.bytes` counts.
    #[serde(default)]
    pub bytes: u64,
    pub chunk_words: usize,
    pub chunk_overlap_words: usize,
    /// Bumped on every change to the collection; part of every cache key.
    pub epoch: u64,
    /// Its fusion; `null`: the server default (`retrieval.fusion`).
    #[serde(default)]
    pub fusion: Option<FusionSettings>,
    /// The embedder its vectors are made with; ingest and search through another are refused.
    #[serde(default)]
    pub embedder: Option<String>,
    /// How its vectors are kept (`null`: a Qdrant server's own settings, or a collection made
    /// before this was recorded).
    #[serde(default)]
    pub storage: Option<StorageSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionInfo>,
}

/// `POST /v1/collections/{name}/documents`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    pub documents: Vec<DocumentInput>,
    /// `false` answers at once with `202` and a job to follow (`GET /v1/jobs/{id}`). Requests
    /// above the server's `ingest.sync_max_documents` always become jobs.
    #[serde(default)]
    pub wait: Option<bool>,
}

/// `202` for an ingestion that runs as a background job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: String,
    pub status_url: String,
}

/// `202` for `POST /v1/collections/{name}/import`: the whole body was read, checked and recorded
/// durably; the job indexes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportAccepted {
    pub job_id: String,
    pub status_url: String,
    /// Lines (documents) read.
    pub documents: usize,
    /// Of them, lines that came with a vector (the embedder skips them).
    pub with_vectors: usize,
}

/// `202` for `POST /v1/collections/{name}/files`: the job that indexes them, and what was read.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FilesAccepted {
    pub job_id: String,
    pub status_url: String,
    /// One per file, in the order sent.
    pub files: Vec<FileRead>,
}

/// What was read from one file: the document it became.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileRead {
    /// The document's id: the file's name.
    pub id: String,
    /// `pdf`, `docx`, `html`, `markdown` or `text`.
    pub format: String,
    pub bytes: usize,
    /// For formats with pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<u32>,
    pub chunks: usize,
    /// Of the file's bytes: the same file sent again changes nothing.
    pub sha256: String,
}

/// `POST /v1/collections/{name}/files` (multipart/form-data), described for OpenAPI.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FilesUpload {
    /// One or more files (PDF, DOCX, HTML, Markdown, plain text); each becomes the document
    /// named by its file name.
    #[schema(value_type = Vec<String>, format = Binary)]
    pub file: Vec<String>,
    /// URLs to fetch instead (only where `ingest.allow_url_fetch` is on).
    #[serde(default)]
    pub url: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

/// An ingestion job. Documents are applied in batches; each finished batch is durable, and
/// `documents_done` counts the documents of finished batches.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    pub id: String,
    pub collection: String,
    pub state: JobState,
    pub documents_total: usize,
    pub documents_done: usize,
    /// Of `documents_done`: new or changed documents, now indexed.
    pub indexed: usize,
    /// Of `documents_done`: documents already indexed with the same content, or left alone
    /// because a write accepted after this job's wrote or deleted them (last acknowledged wins).
    pub unchanged: usize,
    /// Chunks embedded and written so far (counted while a batch is embedded, so a large file
    /// shows progress too); documents already indexed with the same content are not rewritten,
    /// so a finished job may have done fewer than `chunks_total`.
    pub chunks_done: usize,
    /// Chunks of all the job's documents.
    #[serde(default)]
    pub chunks_total: usize,
    /// The collection's epoch after the last finished batch.
    pub epoch: u64,
    pub errors: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    /// Caller-chosen id, unique within the collection. Re-sending the same id with the same text
    /// and metadata is a no-op; with different content it replaces the document.
    pub id: String,
    pub text: String,
    /// Flat JSON object; string, integer and boolean values can be used in search filters.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// The document already cut into chunks (as the files route cuts a file): each is stored and
    /// searched as one chunk, its metadata over the document's; the collection's own chunking is
    /// not applied. `text` is then the whole document, kept for its content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<ChunkInput>>,
    /// The document's one chunk, already embedded (by the collection's own embedder, elsewhere):
    /// stored as given, the embedder skipped. Its length must be the collection's dimension, every
    /// value finite, and the document must make exactly one chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// One chunk of a document cut by its sender.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChunkInput {
    pub text: String,
    /// This chunk's own metadata (e.g. `page`, `heading`), over the document's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IngestResponse {
    /// Documents that were new or changed and are now indexed.
    pub indexed: usize,
    /// Documents whose id and content hash were already indexed, or that a write accepted after
    /// this one wrote or deleted first (last acknowledged wins).
    pub unchanged: usize,
    /// Chunks written for the indexed documents.
    pub chunks: usize,
    pub epoch: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeleteDocumentResponse {
    pub id: String,
    pub chunks_removed: usize,
    pub epoch: u64,
}

/// One stored document, as `GET /v1/collections/{name}/documents` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DocumentSummary {
    pub id: String,
    pub chunks: usize,
    /// UTF-8 bytes of its text (what counts against the tenant's `limits.bytes`).
    pub bytes: u64,
    /// SHA-256 of what was indexed (text, metadata, and a given vector): the same id sent with
    /// the same content again changes nothing.
    pub content_hash: String,
}

/// A page of a collection's documents, in id order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DocumentList {
    pub documents: Vec<DocumentSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}
