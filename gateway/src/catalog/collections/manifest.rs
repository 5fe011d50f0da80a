//! A collection's manifest: its settings, the documents it holds (with their sizes, kept summed),
//! what a change is writing, and how it is written (serialised off the runtime); and the
//! collection's public summary made from it.

use std::collections::BTreeMap;

use ragway_openapi::CollectionInfo;
use ragway_retrieval::{DenseStorage, Fusion};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) name: String,
    /// New for every collection created: a job or write for a dropped collection of the same
    /// name can never land in its successor.
    #[serde(default)]
    pub(super) generation: String,
    pub(super) chunk_words: usize,
    pub(super) chunk_overlap_words: usize,
    /// Its own fusion; `None`: the server default.
    #[serde(default)]
    pub(super) fusion: Option<Fusion>,
    /// The embedder its vectors were made with, and their dimension (`None` in manifests written
    /// before they were recorded: taken as the current embedder's).
    #[serde(default)]
    pub(super) embedder: Option<String>,
    #[serde(default)]
    pub(super) dimension: Option<usize>,
    /// How the embedded dense store keeps its vectors (`None`: the store's default, or a Qdrant
    /// server's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) storage: Option<DenseStorage>,
    pub(super) epoch: u64,
    /// (Absent from a shared registry's header, which keeps the records apart.)
    #[serde(default)]
    pub(super) documents: BTreeMap<String, DocumentRecord>,
    /// Documents a change is writing to the stores now: if its process dies, the next change
    /// removes them from both stores (they were never acknowledged; their job re-applies them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) pending: Vec<String>,
    /// How many changes have been recorded (the file registry's log replays those after it).
    #[serde(default)]
    pub(super) changes: u64,
    /// Documents deleted while a job accepted before the delete was unfinished, with the delete's
    /// stamp: that job must not bring them back (last acknowledged wins). Forgotten once no
    /// unfinished job is older (see [`Collections::delete_document`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) deleted: BTreeMap<String, u64>,
    /// A change of it was not recorded (the registry failed, or refused a stale writer): what is
    /// held here may differ from the registry's, so it is read whole again before it is used.
    #[serde(skip)]
    pub(super) diverged: bool,
    /// The chunks and bytes of `documents`, kept as they change (counted once when read).
    #[serde(skip)]
    pub(super) totals: Totals,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Totals {
    pub(super) chunks: usize,
    pub(super) bytes: u64,
}

impl Manifest {
    /// Records `id` as indexed with `record` (replacing what it had).
    pub(super) fn put(&mut self, id: String, record: DocumentRecord) {
        self.deleted.remove(&id);
        self.totals.chunks += record.chunks;
        self.totals.bytes += record.bytes;
        if let Some(old) = self.documents.insert(id, record) {
            self.forget_totals(&old);
        }
    }

    pub(super) fn remove(&mut self, id: &str) {
        if let Some(old) = self.documents.remove(id) {
            self.forget_totals(&old);
        }
    }

    fn forget_totals(&mut self, old: &DocumentRecord) {
        self.totals.chunks -= old.chunks;
        self.totals.bytes -= old.bytes;
    }

    /// Takes every field of `header` but the documents (and their totals), which stay.
    pub(super) fn adopt_header(&mut self, header: Manifest) {
        let documents = std::mem::take(&mut self.documents);
        *self = Manifest {
            documents,
            totals: self.totals,
            ..header
        };
    }

    /// Counts `totals` from the documents (once, when a manifest is read).
    pub(super) fn recount(mut self) -> Self {
        let chunks = self.documents.values().map(|d| d.chunks).sum();
        let bytes = self.documents.values().map(|d| d.bytes).sum();
        self.totals = Totals { chunks, bytes };
        self
    }
}

/// `manifest` whole, as JSON: on this thread, but with the runtime told to move its other
/// tasks off it first (the manifest is borrowed from the change holding it, so it cannot be sent
/// to the blocking pool without copying it whole).
pub(super) fn serialise(manifest: &Manifest) -> Result<Vec<u8>, String> {
    off_runtime(|| serde_json::to_vec(manifest).map_err(|e| e.to_string()))
}

/// Runs CPU work over borrowed data on this thread, with the runtime told to move its other
/// tasks off it first (a current-thread runtime, in tests, just runs it).
pub(super) fn off_runtime<T>(run: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
        _ => run(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DocumentRecord {
    pub(super) content_hash: String,
    pub(super) chunks: usize,
    /// UTF-8 bytes of its text (0 in manifests written before it was recorded).
    #[serde(default)]
    pub(super) bytes: u64,
    /// When the write that made it was accepted (see [`Collections::stamp`]; 0 before stamps).
    #[serde(default)]
    pub(super) stamp: u64,
}

pub(super) fn info(manifest: &Manifest) -> CollectionInfo {
    CollectionInfo {
        name: manifest.name.clone(),
        documents: manifest.documents.len(),
        chunks: manifest.totals.chunks,
        bytes: manifest.totals.bytes,
        chunk_words: manifest.chunk_words,
        chunk_overlap_words: manifest.chunk_overlap_words,
        epoch: manifest.epoch,
        fusion: manifest.fusion.as_ref().map(crate::validate::fusion_settings),
        embedder: manifest.embedder.clone(),
        storage: manifest.storage.map(|s| ragway_openapi::StorageSettings {
            quantization: Some(match s.quantized {
                true => ragway_openapi::StorageQuantization::Int8,
                false => ragway_openapi::StorageQuantization::None,
            }),
            vectors_on_disk: Some(s.vectors_on_disk),
        }),
    }
}
