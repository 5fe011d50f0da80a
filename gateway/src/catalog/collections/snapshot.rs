//! A collection as one file, and back: its manifest on the first line, then one chunk with its
//! vector per line (JSON lines). Read through the store traits, so a snapshot taken on the
//! embedded stores restores on a Qdrant server and the other way round, and nothing is embedded
//! again on restore.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use ragway_openapi::CollectionInfo;
use ragway_retrieval::{Chunk, EmbeddedChunk};
use serde::{Deserialize, Serialize};

use super::{Collection, Collections, Manifest};
use crate::error::{ApiError, ErrorCode};

/// Chunks written to the stores at a time on restore.
const RESTORE_BATCH: usize = 256;

#[derive(Serialize, Deserialize)]
struct SnapshotChunk {
    chunk: Chunk,
    vector: Vec<f32>,
}

/// What a snapshot holds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SnapshotInfo {
    /// The file's name under `<data_dir>/snapshots/`; what `restore` takes.
    pub snapshot: String,
    pub documents: usize,
    pub chunks: usize,
    pub bytes: u64,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

impl Collections {
    /// Writes `name` to a new file in `dir` (fsynced), while its writes wait.
    pub async fn snapshot(&self, name: &str, dir: &Path) -> Result<SnapshotInfo, ApiError> {
        let collection = self.get(name)?;
        let manifest = self.begin(&collection).await?;
        let chunks = self.dense.export(name).await?;
        std::fs::create_dir_all(dir).map_err(internal)?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ");
        let file_name = format!("{name}-{stamp}.jsonl");
        let path = dir.join(&file_name);
        let tmp = path.with_extension("tmp");
        let mut out = BufWriter::new(std::fs::File::create(&tmp).map_err(internal)?);
        serde_json::to_writer(&mut out, &*manifest).map_err(internal)?;
        out.write_all(b"\n").map_err(internal)?;
        let chunk_count = chunks.len();
        for EmbeddedChunk { chunk, vector } in chunks {
            serde_json::to_writer(&mut out, &SnapshotChunk { chunk, vector }).map_err(internal)?;
            out.write_all(b"\n").map_err(internal)?;
        }
        let file = out.into_inner().map_err(internal)?;
        file.sync_all().map_err(internal)?;
        std::fs::rename(&tmp, &path).map_err(internal)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(internal)?;
        Ok(SnapshotInfo {
            snapshot: file_name,
            documents: manifest.documents.len(),
            chunks: chunk_count,
            bytes: std::fs::metadata(&path).map_err(internal)?.len(),
        })
    }

    /// Creates collection `name` from a snapshot file; 409 if it exists, or if the snapshot's
    /// vectors come from another embedder than this server's.
    pub async fn restore(
        &self,
        name: &str,
        path: &Path,
        max_collections: usize,
    ) -> Result<CollectionInfo, ApiError> {
        let file = std::fs::File::open(path).map_err(|e| {
            ApiError::invalid(
                ErrorCode::SnapshotNotFound,
                format!("cannot open snapshot {}: {e}", path.display()),
            )
        })?;
        let mut lines = std::io::BufReader::new(file).lines();
        let first = lines.next().transpose().map_err(internal)?.unwrap_or_default();
        let mut manifest: Manifest = serde_json::from_str(&first).map_err(|e| {
            ApiError::invalid(ErrorCode::InvalidSnapshot, format!("not a ragway snapshot: {e}"))
        })?;
        manifest.name = name.to_string();
        manifest.generation = uuid::Uuid::new_v4().simple().to_string();
        manifest.pending.clear();
        let manifest = manifest.recount();
        self.check_embedder(&Collection::new(manifest.clone()))?;
        let fill = async {
            let mut batch = Vec::with_capacity(RESTORE_BATCH);
            for line in lines {
                let line = line.map_err(internal)?;
                let SnapshotChunk { chunk, vector } = serde_json::from_str(&line).map_err(|e| {
                    ApiError::invalid(ErrorCode::InvalidSnapshot, format!("a damaged chunk line: {e}"))
                })?;
                batch.push(EmbeddedChunk { chunk, vector });
                if batch.len() == RESTORE_BATCH {
                    self.restore_batch(name, std::mem::take(&mut batch)).await?;
                }
            }
            self.restore_batch(name, batch).await?;
            Ok(self.dense.flush(name).await?)
        };
        self.establish(manifest, max_collections, fill).await
    }

    async fn restore_batch(&self, name: &str, batch: Vec<EmbeddedChunk>) -> Result<(), ApiError> {
        let chunks: Vec<Chunk> = batch.iter().map(|c| c.chunk.clone()).collect();
        self.dense.upsert(name, batch).await?;
        self.keyword.upsert(name, chunks).await?;
        Ok(())
    }
}
