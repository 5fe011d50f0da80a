//! A collection as one file, and back: its manifest on the first line, then one chunk with its
//! vector per line (JSON lines). Read through the store traits, so a snapshot taken on the
//! embedded stores restores on a Qdrant server and the other way round, and nothing is embedded
//! again on restore. Both stream: a page of chunks at a time crosses from the store to a file
//! written on a blocking thread (or from a file read there to the stores), through a channel of
//! two pages, so neither holds the collection's chunks in memory.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Lines, Write};
use std::path::{Path, PathBuf};

use ragway_openapi::CollectionInfo;
use ragway_retrieval::{Chunk, EmbeddedChunk};
use serde::{Deserialize, Serialize};

use super::manifest::{serialise, Manifest};
use super::{Caps, Collection, Collections};
use crate::error::{ApiError, ErrorCode};

/// Chunks read from the store at a time for a snapshot, and written to the stores at a time on
/// restore.
const PAGE: usize = 256;

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
        let first = serialise(&manifest).map_err(internal)?;
        let documents = manifest.documents.len();
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ");
        let file_name = format!("{name}-{stamp}.jsonl");
        let (pages, receiver) = tokio::sync::mpsc::channel(2);
        let target = (dir.to_path_buf(), dir.join(&file_name));
        let writer = tokio::task::spawn_blocking(move || write_snapshot(target, first, receiver));
        let mut chunks = 0;
        let mut from = None;
        loop {
            let (page, next) = self.dense.export_page(name, from, PAGE).await?;
            chunks += page.len();
            let last = next.is_none();
            if pages.send(Some(page)).await.is_err() || last {
                break; // the writer failed (and says why below), or every page is out
            }
            from = next;
        }
        let _ = pages.send(None).await;
        let bytes = writer.await.map_err(internal)??;
        Ok(SnapshotInfo {
            snapshot: file_name,
            documents,
            chunks,
            bytes,
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
        let path = path.to_path_buf();
        let (mut manifest, lines) = tokio::task::spawn_blocking(move || open_snapshot(&path))
            .await
            .map_err(internal)??;
        manifest.name = name.to_string();
        manifest.generation = uuid::Uuid::new_v4().simple().to_string();
        manifest.pending.clear();
        let manifest = manifest.recount();
        self.check_embedder(&Collection::new(manifest.clone()))?;
        let fill = async {
            let (sender, mut batches) = tokio::sync::mpsc::channel(2);
            let reader = tokio::task::spawn_blocking(move || read_chunks(lines, sender));
            while let Some(batch) = batches.recv().await {
                self.restore_batch(name, batch?).await?;
            }
            reader.await.map_err(internal)?;
            Ok(self.dense.flush(name).await?)
        };
        self.establish(manifest, Caps::server(max_collections), fill)
            .await
    }

    async fn restore_batch(&self, name: &str, batch: Vec<EmbeddedChunk>) -> Result<(), ApiError> {
        let chunks: Vec<Chunk> = batch.iter().map(|c| c.chunk.clone()).collect();
        self.dense.upsert(name, batch).await?;
        self.keyword.upsert(name, chunks).await?;
        Ok(())
    }
}

/// Writes the snapshot file `path` in `dir`: `first` (the manifest), then the pages as they come
/// (`None`: the last has come; a channel closed before it abandons the file); fsynced, then
/// renamed into place. Its size.
fn write_snapshot(
    (dir, path): (PathBuf, PathBuf),
    first: Vec<u8>,
    mut pages: tokio::sync::mpsc::Receiver<Option<Vec<EmbeddedChunk>>>,
) -> Result<u64, ApiError> {
    std::fs::create_dir_all(&dir).map_err(internal)?;
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut out = BufWriter::new(File::create(&tmp).map_err(internal)?);
        out.write_all(&first).map_err(internal)?;
        out.write_all(b"\n").map_err(internal)?;
        loop {
            let Some(page) = pages
                .blocking_recv()
                .ok_or_else(|| internal("the snapshot was abandoned"))?
            else {
                break;
            };
            for EmbeddedChunk { chunk, vector } in page {
                serde_json::to_writer(&mut out, &SnapshotChunk { chunk, vector }).map_err(internal)?;
                out.write_all(b"\n").map_err(internal)?;
            }
        }
        out.into_inner().map_err(internal)?.sync_all().map_err(internal)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(internal)?;
    File::open(&dir).and_then(|d| d.sync_all()).map_err(internal)?;
    Ok(std::fs::metadata(&path).map_err(internal)?.len())
}

/// The snapshot's manifest, and its chunk lines to come.
fn open_snapshot(path: &Path) -> Result<(Manifest, Lines<BufReader<File>>), ApiError> {
    let file = File::open(path).map_err(|e| {
        ApiError::invalid(
            ErrorCode::SnapshotNotFound,
            format!("cannot open snapshot {}: {e}", path.display()),
        )
    })?;
    let mut lines = BufReader::new(file).lines();
    let first = lines.next().transpose().map_err(internal)?.unwrap_or_default();
    let manifest = serde_json::from_str(&first)
        .map_err(|e| ApiError::invalid(ErrorCode::InvalidSnapshot, format!("not a ragway snapshot: {e}")))?;
    Ok((manifest, lines))
}

/// Sends the chunks of `lines` in batches of [`PAGE`] (a damaged line ends them with its error),
/// until they end or nobody listens.
fn read_chunks(
    lines: Lines<BufReader<File>>,
    batches: tokio::sync::mpsc::Sender<Result<Vec<EmbeddedChunk>, ApiError>>,
) {
    let mut batch = Vec::with_capacity(PAGE);
    for line in lines {
        let parsed = line.map_err(internal).and_then(|line| {
            serde_json::from_str::<SnapshotChunk>(&line).map_err(|e| {
                ApiError::invalid(ErrorCode::InvalidSnapshot, format!("a damaged chunk line: {e}"))
            })
        });
        match parsed {
            Ok(SnapshotChunk { chunk, vector }) => batch.push(EmbeddedChunk { chunk, vector }),
            Err(e) => {
                let _ = batches.blocking_send(Err(e));
                return;
            }
        }
        if batch.len() == PAGE && batches.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
            return;
        }
    }
    let _ = batches.blocking_send(Ok(batch));
}
