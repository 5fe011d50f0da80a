//! Collections: their manifests (settings, documents, epoch) and every change to their contents.
//!
//! A manifest is the record of which documents a collection holds. A change is written to both
//! stores and made durable there (Qdrant Edge flushed, tantivy committed) before the manifest is
//! fsynced, so a document the manifest lists survives a crash in both indexes. A failed change is
//! undone in both stores, so a document is searchable in both indexes or in neither.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ragway_openapi::{CollectionInfo, DocumentInput};
use ragway_retrieval::{
    chunk_document, Chunk, ChunkingOptions, DenseStore, EmbeddedChunk, Embedder, Fusion, KeywordStore,
    Priority,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::deadline::Deadline;
use crate::durable;
use crate::error::{ApiError, ErrorCode, ModelStage};
use crate::guard::Guard;

mod snapshot;
pub use snapshot::SnapshotInfo;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    name: String,
    /// New for every collection created: a job or write for a dropped collection of the same
    /// name can never land in its successor.
    #[serde(default)]
    generation: String,
    chunk_words: usize,
    chunk_overlap_words: usize,
    /// Its own fusion; `None`: the server default.
    #[serde(default)]
    fusion: Option<Fusion>,
    /// The embedder its vectors were made with, and their dimension (`None` in manifests written
    /// before they were recorded: taken as the current embedder's).
    #[serde(default)]
    embedder: Option<String>,
    #[serde(default)]
    dimension: Option<usize>,
    epoch: u64,
    documents: BTreeMap<String, DocumentRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DocumentRecord {
    content_hash: String,
    chunks: usize,
    /// UTF-8 bytes of its text (0 in manifests written before it was recorded).
    #[serde(default)]
    bytes: u64,
}

pub struct Collection {
    pub name: String,
    pub generation: String,
    /// The embedder (and dimension) its vectors were made with.
    pub embedder: Option<(String, usize)>,
    pub chunking: ChunkingOptions,
    /// Held for the whole of a change, so changes to one collection apply one at a time.
    manifest: tokio::sync::Mutex<Manifest>,
    /// What [`Collection::info`] answers, refreshed after each change: reads never wait for a write.
    summary: RwLock<CollectionInfo>,
    /// Mirrors `manifest.epoch` for lock-free reads (cache keys).
    epoch: AtomicU64,
    /// Mirrors `manifest.fusion` for lock-free reads.
    fusion: RwLock<Option<Fusion>>,
    /// Set (under the manifest lock) when the collection is dropped; a change that waited for the
    /// lock sees it and stops.
    dropped: AtomicBool,
}

impl Collection {
    fn new(manifest: Manifest) -> Self {
        Self {
            name: manifest.name.clone(),
            generation: manifest.generation.clone(),
            embedder: manifest.embedder.clone().zip(manifest.dimension),
            chunking: ChunkingOptions {
                chunk_words: manifest.chunk_words,
                overlap_words: manifest.chunk_overlap_words,
            },
            summary: RwLock::new(info(&manifest)),
            epoch: AtomicU64::new(manifest.epoch),
            fusion: RwLock::new(manifest.fusion),
            manifest: tokio::sync::Mutex::new(manifest),
            dropped: AtomicBool::new(false),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Its own fusion, if it has one.
    pub fn fusion(&self) -> Option<Fusion> {
        *self
            .fusion
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The collection as a search of it sees it now: its generation, current epoch, and the
    /// fusion this search uses.
    pub fn target(&self, fusion: Fusion) -> crate::caching::Target<'_> {
        crate::caching::Target {
            name: &self.name,
            generation: &self.generation,
            epoch: self.epoch(),
            fusion,
        }
    }

    /// How much `documents` would add to what the collection stores (negative: shrink), as
    /// `(documents, chunks, bytes)`; a document already stored replaces its old version.
    pub async fn growth(&self, documents: &[DocumentInput]) -> (i64, i64, i64) {
        let manifest = self.manifest.lock().await;
        let mut growth = (0i64, 0i64, 0i64);
        for doc in documents {
            let metadata = doc.metadata.clone().unwrap_or_default();
            let chunks = chunk_document(&doc.id, &doc.text, &metadata, self.chunking).len() as i64;
            let bytes = doc.text.len() as i64;
            let (old_docs, old_chunks, old_bytes) = manifest
                .documents
                .get(&doc.id)
                .map_or((0, 0, 0), |d| (1, d.chunks as i64, d.bytes as i64));
            growth.0 += 1 - old_docs;
            growth.1 += chunks - old_chunks;
            growth.2 += bytes - old_bytes;
        }
        growth
    }

    pub fn info(&self) -> CollectionInfo {
        self.summary
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn publish(&self, manifest: &Manifest) {
        *self
            .fusion
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = manifest.fusion;
        self.epoch.store(manifest.epoch, Ordering::Release);
        *self
            .summary
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = info(manifest);
    }
}

/// What one applied batch of documents did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub indexed: usize,
    pub unchanged: usize,
    pub chunks: usize,
    pub epoch: u64,
}

/// How ingestion reaches the embedder: through its guard (breaker, faults), in the bulk lane,
/// with a timeout per batch.
pub struct IngestEmbedding {
    pub embedder: Arc<dyn Embedder>,
    pub guard: Arc<Guard>,
    pub timeout: Duration,
}

pub struct Collections {
    manifests_dir: PathBuf,
    open: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Collections whose manifest or stores could not be opened, with why; the others serve.
    damaged: RwLock<BTreeMap<String, String>>,
    /// Serialises creating and dropping collections.
    lifecycle: tokio::sync::Mutex<()>,
    embedding: IngestEmbedding,
    dense: Arc<dyn DenseStore>,
    keyword: Arc<dyn KeywordStore>,
    /// Told of every change of a collection's contents (its new epoch) and of every drop.
    on_change: std::sync::OnceLock<ChangeHook>,
    /// Told of the tokens each ingested batch took the embedder (charged to the tenant).
    on_embedded: std::sync::OnceLock<EmbedHook>,
}

/// Called with a collection's name and the tokens embedding a batch of its documents took.
pub type EmbedHook = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// Called with a collection's name, generation and new epoch after a change is durable (epoch
/// `u64::MAX`: dropped).
pub type ChangeHook = Arc<dyn Fn(&str, &str, u64) + Send + Sync>;

/// A new or changed document of a batch: its id, content hash and chunks.
struct Change {
    id: String,
    hash: String,
    chunks: Vec<Chunk>,
    bytes: u64,
}

impl Collections {
    /// Opens every collection whose manifest is under `manifests_dir`. One that cannot be opened
    /// is reported in [`Collections::damaged`] and does not stop the others.
    pub async fn open(
        manifests_dir: &Path,
        embedding: IngestEmbedding,
        dense: Arc<dyn DenseStore>,
        keyword: Arc<dyn KeywordStore>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(manifests_dir)?;
        let collections = Self {
            manifests_dir: manifests_dir.to_path_buf(),
            open: RwLock::new(BTreeMap::new()),
            damaged: RwLock::new(BTreeMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            embedding,
            dense,
            keyword,
            on_change: std::sync::OnceLock::new(),
            on_embedded: std::sync::OnceLock::new(),
        };
        for entry in std::fs::read_dir(manifests_dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Err(e) = collections.open_one(&path).await {
                tracing::error!(collection = name, error = %e, "collection damaged: not served");
                write(&collections.damaged)?.insert(name, e.to_string());
            }
        }
        Ok(collections)
    }

    async fn open_one(&self, path: &Path) -> anyhow::Result<()> {
        let manifest: Manifest = serde_json::from_slice(&std::fs::read(path)?)
            .map_err(|e| anyhow::anyhow!("cannot read manifest {}: {e}", path.display()))?;
        self.dense.open_collection(&manifest.name).await?;
        self.keyword.open_collection(&manifest.name).await?;
        let collection = Arc::new(Collection::new(manifest));
        self.reconcile(&collection).await?;
        write(&self.open)?.insert(collection.name.clone(), collection);
        Ok(())
    }

    /// Collections that could not be opened, and why.
    pub fn damaged(&self) -> BTreeMap<String, String> {
        self.damaged.read().map(|d| d.clone()).unwrap_or_default()
    }

    /// After a crash in the middle of a change, a document may sit in one store only, or in the
    /// stores but not in the manifest: that change was never acknowledged. Such documents are
    /// removed from both stores and the manifest, so each document is searchable in both engines
    /// or in neither; the change is re-applied by its job (see `jobs`), which survives the crash.
    async fn reconcile(&self, collection: &Collection) -> anyhow::Result<()> {
        let name = &collection.name;
        let mut manifest = collection.manifest.lock().await;
        let in_dense = self.dense.document_ids(name).await?;
        let in_keyword = self.keyword.document_ids(name).await?;
        let everywhere = |id: &String| in_dense.contains(id) && in_keyword.contains(id);
        let stray: Vec<String> = in_dense
            .iter()
            .chain(&in_keyword)
            .chain(manifest.documents.keys())
            .filter(|id| !(everywhere(id) && manifest.documents.contains_key(*id)))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if stray.is_empty() {
            return Ok(());
        }
        tracing::warn!(collection = %name, documents = ?stray, "removing documents of an interrupted write (its job re-applies them)");
        self.dense.delete_documents(name, stray.clone()).await?;
        self.keyword.delete_documents(name, stray.clone()).await?;
        self.dense.flush(name).await?;
        for id in &stray {
            manifest.documents.remove(id);
        }
        manifest.epoch += 1;
        self.save(&manifest)?;
        self.publish(collection, &manifest);
        Ok(())
    }

    /// Sets what hears of every change (the caches); the first call wins.
    pub fn on_embedded(&self, hook: EmbedHook) {
        let _ = self.on_embedded.set(hook);
    }

    pub fn on_change(&self, hook: ChangeHook) {
        let _ = self.on_change.set(hook);
    }

    /// A change is durable: readers see the new epoch, and the hook hears of it.
    fn publish(&self, collection: &Collection, manifest: &Manifest) {
        collection.publish(manifest);
        if let Some(hook) = self.on_change.get() {
            hook(&collection.name, &collection.generation, manifest.epoch);
        }
    }

    pub fn get(&self, name: &str) -> Result<Arc<Collection>, ApiError> {
        read(&self.open)?
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::CollectionNotFound(name.to_string()))
    }

    pub fn list(&self) -> Result<Vec<Arc<Collection>>, ApiError> {
        Ok(read(&self.open)?.values().cloned().collect())
    }

    pub async fn create(
        &self,
        name: &str,
        chunking: ChunkingOptions,
        fusion: Option<Fusion>,
        max_collections: usize,
    ) -> Result<CollectionInfo, ApiError> {
        let _guard = self.lifecycle.lock().await;
        self.check_new(name, max_collections)?;
        let manifest = Manifest {
            name: name.to_string(),
            generation: uuid::Uuid::new_v4().simple().to_string(),
            chunk_words: chunking.chunk_words,
            chunk_overlap_words: chunking.overlap_words,
            fusion,
            embedder: Some(self.embedding.embedder.model_id().to_string()),
            dimension: Some(self.embedding.embedder.dimension()),
            epoch: 0,
            documents: BTreeMap::new(),
        };
        // A crash while dropping an earlier collection of this name may have left its indexes.
        self.dense.drop_collection(name).await?;
        self.keyword.drop_collection(name).await?;
        self.dense.open_collection(name).await?;
        self.keyword.open_collection(name).await?;
        self.save(&manifest)?;
        let info = info(&manifest);
        write(&self.open)?.insert(name.to_string(), Arc::new(Collection::new(manifest)));
        Ok(info)
    }

    /// 409 when `name` is taken (or damaged), or when the server holds all it may.
    fn check_new(&self, name: &str, max_collections: usize) -> Result<(), ApiError> {
        if self.get(name).is_ok() || read(&self.damaged)?.contains_key(name) {
            return Err(ApiError::CollectionExists(name.to_string()));
        }
        if read(&self.open)?.len() >= max_collections {
            return Err(ApiError::Conflict {
                code: ErrorCode::TooManyCollections,
                message: format!(
                    "this server holds at most {max_collections} collections (limits.max_collections)"
                ),
            });
        }
        Ok(())
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), ApiError> {
        let _guard = self.lifecycle.lock().await;
        let collection = self.get(name)?;
        // Wait for a change in flight to finish, and keep new ones out while the files go.
        let _manifest = collection.manifest.lock().await;
        collection.dropped.store(true, Ordering::Release);
        write(&self.open)?.remove(name);
        durable::remove(&self.manifest_path(name)).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.dense.drop_collection(name).await?;
        self.keyword.drop_collection(name).await?;
        if let Some(hook) = self.on_change.get() {
            hook(name, &collection.generation, u64::MAX);
        }
        Ok(())
    }

    /// Indexes the new and changed documents of one batch, durably; documents whose id and content
    /// hash are already indexed are left alone. Fails with `CollectionNotFound` when the collection
    /// was dropped (or dropped and re-created) meanwhile.
    pub async fn apply_batch(
        &self,
        collection: &Collection,
        documents: Vec<DocumentInput>,
    ) -> Result<BatchOutcome, ApiError> {
        let mut manifest = collection.manifest.lock().await;
        if collection.dropped.load(Ordering::Acquire) {
            return Err(ApiError::CollectionNotFound(collection.name.clone()));
        }
        let total = documents.len();
        let changed = plan(&manifest, documents, collection.chunking);
        let mut outcome = BatchOutcome {
            unchanged: total - changed.len(),
            epoch: manifest.epoch,
            ..Default::default()
        };
        if changed.is_empty() {
            return Ok(outcome);
        }
        // Embed first: it touches no store, so a failure here leaves everything as it was.
        let chunks: Vec<Chunk> = changed.iter().flat_map(|c| c.chunks.iter().cloned()).collect();
        let vectors = self
            .embed(&collection.name, chunks.iter().map(|c| c.text.clone()).collect())
            .await?;
        let embedded = chunks
            .iter()
            .cloned()
            .zip(vectors)
            .map(|(chunk, vector)| EmbeddedChunk { chunk, vector })
            .collect();
        let doc_ids: Vec<String> = changed.iter().map(|c| c.id.clone()).collect();
        let written = self
            .replace_in_stores(&collection.name, &doc_ids, embedded, chunks)
            .await;
        manifest.epoch += 1;
        match &written {
            Ok(()) => {
                outcome.indexed = changed.len();
                for Change {
                    id,
                    hash,
                    chunks,
                    bytes,
                } in changed
                {
                    outcome.chunks += chunks.len();
                    let record = DocumentRecord {
                        content_hash: hash,
                        chunks: chunks.len(),
                        bytes,
                    };
                    manifest.documents.insert(id, record);
                }
            }
            // The old versions are gone from both stores too; record that.
            Err(_) => doc_ids.iter().for_each(|id| {
                manifest.documents.remove(id);
            }),
        }
        self.save(&manifest)?;
        self.publish(collection, &manifest);
        outcome.epoch = manifest.epoch;
        written.map(|()| outcome)
    }

    async fn embed(&self, collection: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ApiError> {
        let IngestEmbedding {
            embedder,
            guard,
            timeout,
        } = &self.embedding;
        // The batch's own timeout, not a query's (a batch embeds many texts); there is no request
        // deadline, so a batch that times out counts against the embedder like any timeout.
        let embedded = guard
            .run_within(&Deadline::none(), *timeout, embedder.embed(texts, Priority::Bulk))
            .await
            .map_err(|failure| ApiError::from_stage(ModelStage::Embedder, failure))?;
        if let Some(hook) = self.on_embedded.get() {
            hook(collection, embedded.tokens as u64);
        }
        Ok(embedded.vectors)
    }

    /// Removes old versions of `doc_ids` and writes the new chunks to both stores, durably. On
    /// failure both stores are cleared of `doc_ids`, so neither holds a version the other lacks.
    async fn replace_in_stores(
        &self,
        name: &str,
        doc_ids: &[String],
        embedded: Vec<EmbeddedChunk>,
        chunks: Vec<Chunk>,
    ) -> Result<(), ApiError> {
        // The two stores are independent: each replaces its old version, and they run at once.
        let dense = async {
            self.dense.delete_documents(name, doc_ids.to_vec()).await?;
            self.dense.upsert(name, embedded).await?;
            self.dense.flush(name).await
        };
        let keyword = async {
            self.keyword.delete_documents(name, doc_ids.to_vec()).await?;
            self.keyword.upsert(name, chunks).await
        };
        let (dense, keyword) = tokio::join!(dense, keyword);
        let result = dense.and(keyword);
        if let Err(e) = result {
            tracing::error!(collection = name, error = %e, "write failed; removing the documents from both stores");
            let dense = self.dense.delete_documents(name, doc_ids.to_vec()).await;
            let keyword = self.keyword.delete_documents(name, doc_ids.to_vec()).await;
            let flushed = self.dense.flush(name).await;
            if let Err(undo) = dense.and(keyword).and(flushed) {
                tracing::error!(collection = name, error = %undo, "undo failed: stores may disagree until restart");
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Refuses work that would embed into `collection` with another embedder than its vectors
    /// were made with (vector spaces must not mix).
    pub fn check_embedder(&self, collection: &Collection) -> Result<(), ApiError> {
        let current = &self.embedding.embedder;
        match &collection.embedder {
            Some((id, dimension)) if id != current.model_id() || *dimension != current.dimension() => {
                Err(ApiError::Conflict {
                    code: ErrorCode::EmbedderMismatch,
                    message: format!(
                        "this collection's vectors were made by embedder `{id}` ({dimension} dimensions); this server embeds with `{}` ({} dimensions): serve it with that embedder, or re-create the collection and ingest again",
                        current.model_id(),
                        current.dimension()
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Sets (or, with `None`, clears) the collection's own fusion; bumps its epoch, so cached
    /// results fused the old way are never served again.
    pub async fn set_fusion(&self, name: &str, fusion: Option<Fusion>) -> Result<CollectionInfo, ApiError> {
        let collection = self.get(name)?;
        let mut manifest = collection.manifest.lock().await;
        if collection.dropped.load(Ordering::Acquire) {
            return Err(ApiError::CollectionNotFound(name.to_string()));
        }
        manifest.fusion = fusion;
        manifest.epoch += 1;
        self.save(&manifest)?;
        self.publish(&collection, &manifest);
        Ok(info(&manifest))
    }

    pub async fn delete_document(&self, name: &str, doc_id: &str) -> Result<(usize, u64), ApiError> {
        let collection = self.get(name)?;
        let mut manifest = collection.manifest.lock().await;
        if collection.dropped.load(Ordering::Acquire) {
            return Err(ApiError::CollectionNotFound(name.to_string()));
        }
        let Some(record) = manifest.documents.get(doc_id).cloned() else {
            return Err(ApiError::DocumentNotFound {
                collection: name.to_string(),
                document: doc_id.to_string(),
            });
        };
        let ids = vec![doc_id.to_string()];
        self.dense.delete_documents(name, ids.clone()).await?;
        self.keyword.delete_documents(name, ids).await?;
        self.dense.flush(name).await?;
        manifest.documents.remove(doc_id);
        manifest.epoch += 1;
        self.save(&manifest)?;
        self.publish(&collection, &manifest);
        Ok((record.chunks, manifest.epoch))
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.manifests_dir.join(format!("{name}.json"))
    }

    fn save(&self, manifest: &Manifest) -> Result<(), ApiError> {
        let path = self.manifest_path(&manifest.name);
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| ApiError::Internal(e.to_string()))?;
        durable::write(&path, &bytes)
            .map_err(|e| ApiError::Internal(format!("cannot write {}: {e}", path.display())))
    }
}

/// The documents of a batch that are new or changed, chunked.
fn plan(manifest: &Manifest, documents: Vec<DocumentInput>, chunking: ChunkingOptions) -> Vec<Change> {
    documents
        .into_iter()
        .filter_map(|doc| {
            let metadata = doc.metadata.unwrap_or_default();
            let hash = content_hash(&doc.text, &metadata);
            let known = manifest.documents.get(&doc.id);
            if known.is_some_and(|d| d.content_hash == hash) {
                return None;
            }
            let chunks = chunk_document(&doc.id, &doc.text, &metadata, chunking);
            Some(Change {
                id: doc.id,
                hash,
                chunks,
                bytes: doc.text.len() as u64,
            })
        })
        .collect()
}

fn read<T>(lock: &RwLock<T>) -> Result<std::sync::RwLockReadGuard<'_, T>, ApiError> {
    lock.read()
        .map_err(|_| ApiError::Internal("collection map lock poisoned".into()))
}

fn write<T>(lock: &RwLock<T>) -> Result<std::sync::RwLockWriteGuard<'_, T>, ApiError> {
    lock.write()
        .map_err(|_| ApiError::Internal("collection map lock poisoned".into()))
}

fn info(manifest: &Manifest) -> CollectionInfo {
    CollectionInfo {
        name: manifest.name.clone(),
        documents: manifest.documents.len(),
        chunks: manifest.documents.values().map(|d| d.chunks).sum(),
        bytes: manifest.documents.values().map(|d| d.bytes).sum(),
        chunk_words: manifest.chunk_words,
        chunk_overlap_words: manifest.chunk_overlap_words,
        epoch: manifest.epoch,
        fusion: manifest.fusion.as_ref().map(crate::validate::fusion_settings),
        embedder: manifest.embedder.clone(),
    }
}

fn content_hash(text: &str, metadata: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut hasher = Sha256::new();
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
    hasher.update(serde_json::Value::Object(metadata.clone()).to_string().as_bytes());
    hex::encode(hasher.finalize())
}
