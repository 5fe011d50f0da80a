//! Collections: their manifests (settings, documents, epoch) and every change to their contents.
//!
//! A manifest is the record of which documents a collection holds. A change is written to both
//! stores and made durable there (Qdrant Edge flushed, tantivy committed) before the manifest is
//! fsynced, so a document the manifest lists survives a crash in both indexes. A failed change is
//! undone in both stores, so a document is searchable in both indexes or in neither.
//!
//! Manifests live in a [`registry`]: files in the data directory, or Redis, shared by every
//! replica on one Qdrant server. Then a change holds the collection's lease in every process,
//! starts from the manifest as the registry has it, and each process follows the registry's
//! changes (see [`Collections::follow`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ragway_openapi::{CollectionInfo, DocumentInput};
use ragway_retrieval::{
    chunk_document, Chunk, ChunkingOptions, DenseStore, EmbeddedChunk, Embedder, Fusion, KeywordStore,
    Priority,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::caches::{Caches, Target};
use crate::catalog::lease::{self, Lease};
use crate::error::{ApiError, ErrorCode};
use crate::resilience::guard::ModelStage;
use crate::tenancy::Accounts;

mod file_registry;
mod follow;
mod registry;
mod snapshot;
use file_registry::FileRegistry;
use registry::{Created, RedisRegistry, Refreshed, Registry, WriteError};
pub use snapshot::SnapshotInfo;

/// Where manifests live.
pub enum ManifestStore {
    /// `<dir>/<name>.json` (one process).
    Files(PathBuf),
    /// Redis, shared by the replicas of a deployment, whose stores answer (or fail) each request
    /// within `store_timeout`.
    Redis {
        redis: ragway_cache::RedisTier,
        store_timeout: Duration,
    },
}

/// A collection a job names, as this process finds it.
pub enum Lookup {
    Open(Arc<Collection>),
    /// Dropped, re-created since, or damaged.
    Gone,
    /// In the shared registry, not yet followed here.
    NotYet,
}

/// How often a process looks for other processes' changes in a shared registry.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// The longest a request for an unknown collection asks the shared registry about it.
const FIND_WITHIN: Duration = Duration::from_millis(250);
/// Chunks written to a store per request, each request fenced (see `Collections::fence`).
const WRITE_PART: usize = 256;

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
    /// (Absent from a shared registry's header, which keeps the records apart.)
    #[serde(default)]
    documents: BTreeMap<String, DocumentRecord>,
    /// Documents a change is writing to the stores now: if its process dies, the next change
    /// removes them from both stores (they were never acknowledged; their job re-applies them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<String>,
    /// How many changes have been recorded (the file registry's log replays those after it).
    #[serde(default)]
    changes: u64,
    /// Documents deleted while a job accepted before the delete was unfinished, with the delete's
    /// stamp: that job must not bring them back (last acknowledged wins). Forgotten once no
    /// unfinished job is older (see [`Collections::delete_document`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    deleted: BTreeMap<String, u64>,
    /// A change of it was not recorded (the registry failed, or refused a stale writer): what is
    /// held here may differ from the registry's, so it is read whole again before it is used.
    #[serde(skip)]
    diverged: bool,
    /// The chunks and bytes of `documents`, kept as they change (counted once when read).
    #[serde(skip)]
    totals: Totals,
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    chunks: usize,
    bytes: u64,
}

impl Manifest {
    /// Records `id` as indexed with `record` (replacing what it had).
    fn put(&mut self, id: String, record: DocumentRecord) {
        self.deleted.remove(&id);
        self.totals.chunks += record.chunks;
        self.totals.bytes += record.bytes;
        if let Some(old) = self.documents.insert(id, record) {
            self.forget_totals(&old);
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.documents.remove(id) {
            self.forget_totals(&old);
        }
    }

    fn forget_totals(&mut self, old: &DocumentRecord) {
        self.totals.chunks -= old.chunks;
        self.totals.bytes -= old.bytes;
    }

    /// Takes every field of `header` but the documents (and their totals), which stay.
    fn adopt_header(&mut self, header: Manifest) {
        let documents = std::mem::take(&mut self.documents);
        *self = Manifest {
            documents,
            totals: self.totals,
            ..header
        };
    }

    /// Counts `totals` from the documents (once, when a manifest is read).
    fn recount(mut self) -> Self {
        let chunks = self.documents.values().map(|d| d.chunks).sum();
        let bytes = self.documents.values().map(|d| d.bytes).sum();
        self.totals = Totals { chunks, bytes };
        self
    }
}

/// `manifest` whole, as JSON: on this thread, but with the runtime told to move its other
/// tasks off it first (the manifest is borrowed from the change holding it, so it cannot be sent
/// to the blocking pool without copying it whole).
fn serialise(manifest: &Manifest) -> Result<Vec<u8>, String> {
    let run = || serde_json::to_vec(manifest).map_err(|e| e.to_string());
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
        _ => run(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DocumentRecord {
    content_hash: String,
    chunks: usize,
    /// UTF-8 bytes of its text (0 in manifests written before it was recorded).
    #[serde(default)]
    bytes: u64,
    /// When the write that made it was accepted (see [`Collections::stamp`]; 0 before stamps).
    #[serde(default)]
    stamp: u64,
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

    /// `<generation>:<epoch>`, as the registry's heads are.
    fn head(&self) -> String {
        format!("{}:{}", self.generation, self.epoch())
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
    pub fn target(&self, fusion: Fusion) -> Target<'_> {
        Target {
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
            let chunked = chunk_document(&doc.id, &doc.text, &metadata, self.chunking);
            let chunks = chunked.len() as i64;
            let bytes = i64::try_from(stored_bytes(&chunked, &metadata)).unwrap_or(i64::MAX);
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
    /// Already indexed with the same content, or superseded: written or deleted by a write
    /// accepted after this one.
    pub unchanged: usize,
    pub chunks: usize,
    pub epoch: u64,
}

pub struct Collections {
    registry: Box<dyn Registry>,
    open: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Collections whose manifest or stores could not be opened, with why; the others serve.
    damaged: RwLock<BTreeMap<String, String>>,
    /// Serialises creating and dropping collections (in this process; the registry's leases
    /// serialise them between processes).
    lifecycle: tokio::sync::Mutex<()>,
    /// The registry version this process last followed completely (shared registries).
    followed: Mutex<Option<u64>>,
    /// Ingestion's embedder: behind its guard (breaker, faults, a batch's own timeout), called in
    /// the bulk lane.
    embedder: Arc<dyn Embedder>,
    dense: Arc<dyn DenseStore>,
    keyword: Arc<dyn KeywordStore>,
    followers: Followers,
    /// What a collection's lease must have left before each store write (see `fence`).
    write_margin: Duration,
}

/// Who hears of what the catalog does: the caches drop what a change outdated (and tell the
/// other replicas), and the collection's tenant is charged for the embedding its documents took
/// (`None`: nobody is charged).
pub struct Followers {
    pub caches: Arc<Caches>,
    pub accounts: Option<Accounts>,
}

/// A new or changed document of a batch: its id, content hash and chunks.
struct Change {
    id: String,
    hash: String,
    chunks: Vec<Chunk>,
    bytes: u64,
}

/// A change of one collection in progress: its manifest held in this process, its lease held in
/// every process.
struct Writing<'a> {
    manifest: tokio::sync::MutexGuard<'a, Manifest>,
    lease: Lease,
}

impl std::ops::Deref for Writing<'_> {
    type Target = Manifest;
    fn deref(&self) -> &Manifest {
        &self.manifest
    }
}

impl std::ops::DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }
}

/// This process lost the collection's lease mid-change: the change was not recorded (what it
/// wrote to the stores is removed by the lease's next holder), and trying again may work.
fn fenced(why: String) -> ApiError {
    tracing::warn!(
        reason = why,
        "a change was refused: this process no longer holds the collection's lease"
    );
    ApiError::Busy {
        code: ErrorCode::WriteFenced,
        message: "this server lost its hold on the collection while changing it (cut off from the registry, or paused), so the change was not recorded; try again".into(),
        retry_after_s: 1,
    }
}

/// The registry failed: nothing was changed, and trying again may work.
fn registry_failed(e: String) -> ApiError {
    ApiError::Busy {
        code: ErrorCode::RegistryUnavailable,
        message: format!("the collection registry cannot be reached: {e}"),
        retry_after_s: 1,
    }
}

impl Collections {
    /// Opens every collection `store` records. One that cannot be opened is reported in
    /// [`Collections::damaged`] and does not stop the others.
    pub async fn open(
        store: ManifestStore,
        embedder: Arc<dyn Embedder>,
        dense: Arc<dyn DenseStore>,
        keyword: Arc<dyn KeywordStore>,
        followers: Followers,
    ) -> anyhow::Result<Self> {
        let (registry, write_margin): (Box<dyn Registry>, _) = match store {
            ManifestStore::Files(dir) => {
                std::fs::create_dir_all(&dir)?;
                (Box::new(FileRegistry::new(dir)), Duration::ZERO)
            }
            ManifestStore::Redis { redis, store_timeout } => {
                // One store request, and a second for the clocks and the scheduler.
                let write_margin = store_timeout + Duration::from_secs(1);
                let registry = RedisRegistry {
                    redis,
                    lease_ttl: lease::ttl_for(write_margin),
                };
                (Box::new(registry), write_margin)
            }
        };
        let collections = Self {
            registry,
            open: RwLock::new(BTreeMap::new()),
            damaged: RwLock::new(BTreeMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            followed: Mutex::new(None),
            write_margin,
            embedder,
            dense,
            keyword,
            followers,
        };
        if collections.registry.shared() {
            // Other replicas may be writing: no reconciling here (each change recovers what an
            // interrupted one left, under the collection's lease).
            collections.follow_once().await;
            return Ok(collections);
        }
        let entries = collections.registry.load().await.map_err(anyhow::Error::msg)?;
        for (name, entry) in entries {
            let opened = match entry {
                Ok(manifest) => collections.open_one(manifest, true).await,
                Err(e) => Err(anyhow::anyhow!(e)),
            };
            if let Err(e) = opened {
                tracing::error!(collection = name, error = %e, "collection damaged: not served");
                write(&collections.damaged)?.insert(name, e.to_string());
            }
        }
        Ok(collections)
    }

    async fn open_one(&self, manifest: Manifest, reconcile: bool) -> anyhow::Result<()> {
        self.dense.open_collection(&manifest.name).await?;
        self.keyword.open_collection(&manifest.name).await?;
        let collection = Arc::new(Collection::new(manifest));
        if reconcile {
            self.reconcile(&collection).await?;
        }
        write(&self.damaged)?.remove(&collection.name);
        let mut open = write(&self.open)?;
        let opened_meanwhile = open
            .get(&collection.name)
            .is_some_and(|c| c.generation == collection.generation);
        if !opened_meanwhile {
            if let Some(previous) = open.insert(collection.name.clone(), collection) {
                previous.dropped.store(true, Ordering::Release);
            }
        }
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
        let mut manifest = Writing {
            manifest: collection.manifest.lock().await,
            lease: Lease::local(),
        };
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
        manifest.pending = stray;
        self.undo_pending(collection, &mut manifest).await?;
        Ok(())
    }

    /// Removes the documents a change left half-written (`manifest.pending`) from both stores and
    /// the manifest, durably.
    async fn undo_pending(
        &self,
        collection: &Collection,
        manifest: &mut Writing<'_>,
    ) -> Result<(), ApiError> {
        let stray = manifest.pending.clone();
        tracing::warn!(collection = %collection.name, documents = ?stray, "removing documents of an interrupted write (its job re-applies them)");
        self.remove_documents(collection, manifest, stray).await
    }

    /// Removes `ids` from both stores, then from the manifest, durably. Listed in
    /// `manifest.pending` meanwhile, so a crash half-way is finished by the next change.
    async fn remove_documents(
        &self,
        collection: &Collection,
        manifest: &mut Writing<'_>,
        ids: Vec<String>,
    ) -> Result<(), ApiError> {
        let name = &collection.name;
        if manifest.pending != ids {
            manifest.pending = ids.clone();
            self.save(manifest, &[]).await?;
        }
        self.fence(manifest)?;
        self.dense.delete_documents(name, ids.clone()).await?;
        self.fence(manifest)?;
        self.keyword.delete_documents(name, ids.clone()).await?;
        self.fence(manifest)?;
        self.dense.flush(name).await?;
        for id in &ids {
            manifest.remove(id);
        }
        manifest.pending.clear();
        manifest.epoch += 1;
        self.save(manifest, &ids).await?;
        self.publish(collection, manifest);
        Ok(())
    }

    /// Starts a change of `collection`: holds its manifest here and its lease in every process,
    /// takes the manifest as the registry has it now (another replica may have changed it), and
    /// first undoes what a change interrupted by a crash left.
    async fn begin<'a>(&self, collection: &'a Collection) -> Result<Writing<'a>, ApiError> {
        let manifest = collection.manifest.lock().await;
        if collection.dropped.load(Ordering::Acquire) {
            return Err(ApiError::CollectionNotFound(collection.name.clone()));
        }
        let lease = self
            .registry
            .lock(&collection.name)
            .await
            .map_err(registry_failed)?;
        let mut writing = Writing { manifest, lease };
        if self.registry.shared() {
            let refreshed = self
                .registry
                .refresh(&mut writing.manifest)
                .await
                .map_err(registry_failed)?;
            match refreshed {
                Refreshed::Current => {}
                Refreshed::Changed => collection.publish(&writing),
                Refreshed::Gone => {
                    self.forget(&collection.name, &collection.generation);
                    return Err(ApiError::CollectionNotFound(collection.name.clone()));
                }
            }
        }
        if !writing.pending.is_empty() {
            self.undo_pending(collection, &mut writing).await?;
        }
        Ok(writing)
    }

    /// A change is durable: readers see the new epoch, and the caches hear of it.
    fn publish(&self, collection: &Collection, manifest: &Manifest) {
        collection.publish(manifest);
        self.changed(&collection.name, &collection.generation, manifest.epoch);
    }

    /// The caches drop what the change (epoch `u64::MAX`: a drop) outdated, off the write path.
    fn changed(&self, name: &str, generation: &str, epoch: u64) {
        let caches = self.followers.caches.clone();
        let (name, generation) = (name.to_string(), generation.to_string());
        tokio::spawn(async move { caches.collection_changed(&name, &generation, epoch).await });
    }

    pub fn get(&self, name: &str) -> Result<Arc<Collection>, ApiError> {
        read(&self.open)?
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::CollectionNotFound(name.to_string()))
    }

    /// As [`Collections::get`]; with a shared registry, a collection another replica created an
    /// instant ago (not yet followed here) is opened at once, so a client that creates through
    /// one replica and writes through another never sees it missing.
    pub async fn find(&self, name: &str) -> Result<Arc<Collection>, ApiError> {
        if let Ok(collection) = self.get(name) {
            return Ok(collection);
        }
        if self.registry.shared() {
            let recorded = tokio::time::timeout(FIND_WITHIN, self.registry.get(name)).await;
            if let Ok(Ok(Some(manifest))) = recorded {
                if let Err(e) = self.open_one(manifest, false).await {
                    // It exists; its store cannot be reached now (this replica retries).
                    return Err(ApiError::Busy {
                        code: ErrorCode::CollectionUnavailable,
                        message: format!("collection `{name}` cannot be opened now: {e}"),
                        retry_after_s: 1,
                    });
                }
            }
        }
        self.get(name)
    }

    /// The collection `name` of `generation` (what a job writes to).
    pub async fn lookup(&self, name: &str, generation: &str) -> Lookup {
        if let Some(collection) = self.get(name).ok().filter(|c| c.generation == generation) {
            return Lookup::Open(collection);
        }
        if !self.registry.shared() {
            return Lookup::Gone;
        }
        match self.registry.get(name).await {
            Ok(Some(manifest)) if manifest.generation == generation => Lookup::NotYet,
            Ok(_) => Lookup::Gone,
            Err(_) => Lookup::NotYet,
        }
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
        let manifest = Manifest {
            name: name.to_string(),
            generation: uuid::Uuid::new_v4().simple().to_string(),
            chunk_words: chunking.chunk_words,
            chunk_overlap_words: chunking.overlap_words,
            fusion,
            embedder: Some(self.embedder.model_id().to_string()),
            dimension: Some(self.embedder.dimension()),
            epoch: 0,
            documents: BTreeMap::new(),
            pending: Vec::new(),
            changes: 0,
            deleted: BTreeMap::new(),
            diverged: false,
            totals: Totals::default(),
        };
        self.establish(manifest, max_collections, async { Ok(()) }).await
    }

    /// Makes `manifest` a new collection: clears what a crash may have left of an earlier one
    /// of its name in the stores, lets `fill` write its contents, then records it. 409 when the
    /// name is taken (here or by another replica) or the registry is full.
    async fn establish(
        &self,
        manifest: Manifest,
        max_collections: usize,
        fill: impl std::future::Future<Output = Result<(), ApiError>>,
    ) -> Result<CollectionInfo, ApiError> {
        let name = manifest.name.clone();
        let _guard = self.lifecycle.lock().await;
        self.check_new(&name, max_collections)?;
        let _lease = self.registry.lock(&name).await.map_err(registry_failed)?;
        if self.registry.get(&name).await.map_err(registry_failed)?.is_some() {
            return Err(ApiError::CollectionExists(name));
        }
        self.dense.drop_collection(&name).await?;
        self.keyword.drop_collection(&name).await?;
        self.dense.open_collection(&name).await?;
        self.keyword.open_collection(&name).await?;
        fill.await?;
        let created = self
            .registry
            .create(&manifest, max_collections)
            .await
            .map_err(registry_failed)?;
        match created {
            Created::Yes => {}
            Created::Taken => return Err(ApiError::CollectionExists(name)),
            Created::Full => return Err(too_many(max_collections)),
        }
        let created = info(&manifest);
        write(&self.open)?.insert(name, Arc::new(Collection::new(manifest)));
        Ok(created)
    }

    /// 409 when `name` is taken (or damaged), or when the server holds all it may.
    fn check_new(&self, name: &str, max_collections: usize) -> Result<(), ApiError> {
        if self.get(name).is_ok() || read(&self.damaged)?.contains_key(name) {
            return Err(ApiError::CollectionExists(name.to_string()));
        }
        if read(&self.open)?.len() >= max_collections {
            return Err(too_many(max_collections));
        }
        Ok(())
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), ApiError> {
        let _guard = self.lifecycle.lock().await;
        let collection = self.get(name)?;
        // Wait for a change in flight to finish, and keep new ones out while the files go.
        let writing = self.begin(&collection).await?;
        // The stores first: a drop that fails (a store down) leaves the name recorded, so that a
        // retry finds the collection and goes on (each store's drop is idempotent); only then is
        // the name released. The other way round, a failed drop left data no one could reach.
        self.fence(&writing)?;
        self.dense.drop_collection(name).await?;
        self.fence(&writing)?;
        self.keyword.drop_collection(name).await?;
        self.registry
            .remove(name, &writing.lease)
            .await
            .map_err(|e| self.write_failed(e))?;
        self.forget(name, &collection.generation);
        self.changed(name, &collection.generation, u64::MAX);
        Ok(())
    }

    /// Stops serving `name` of `generation` (dropped, here or by another replica); a change
    /// waiting for its lock sees it and stops.
    fn forget(&self, name: &str, generation: &str) {
        let Ok(mut open) = write(&self.open) else {
            return;
        };
        if let Some(collection) = open.get(name).filter(|c| c.generation == generation) {
            collection.dropped.store(true, Ordering::Release);
            open.remove(name);
        }
    }

    /// Indexes the new and changed documents of one batch, accepted at `stamp`, durably;
    /// documents whose id and content hash are already indexed are left alone, and so are those
    /// written or deleted by a write accepted later (last acknowledged wins, however late a queued
    /// or resumed job runs). Fails with `CollectionNotFound` when the collection was dropped (or
    /// dropped and re-created) meanwhile.
    pub async fn apply_batch(
        &self,
        collection: &Collection,
        documents: Vec<DocumentInput>,
        stamp: u64,
    ) -> Result<BatchOutcome, ApiError> {
        let mut manifest = self.begin(collection).await?;
        let total = documents.len();
        let Plan { changed, restamped } = plan(&manifest, documents, collection.chunking, stamp);
        let mut outcome = BatchOutcome {
            unchanged: total - changed.len(),
            epoch: manifest.epoch,
            ..Default::default()
        };
        if !restamped.is_empty() {
            // The same content, acknowledged again: an older job must not replace it now.
            for id in &restamped {
                if let Some(record) = manifest.documents.get_mut(id) {
                    record.stamp = stamp;
                }
            }
            self.save(&mut manifest, &restamped).await?;
        }
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
        // Only a document the manifest has can have chunks in the stores (an interrupted write's
        // were removed by `begin`): the others need no delete, which costs a scan of the dense
        // store's payloads.
        let replaced: Vec<String> = doc_ids
            .iter()
            .filter(|id| manifest.documents.contains_key(*id))
            .cloned()
            .collect();
        manifest.pending = doc_ids.clone();
        self.save(&mut manifest, &[]).await?;
        let written = self
            .replace_in_stores(&manifest, (&replaced, &doc_ids), embedded, chunks)
            .await;
        manifest.pending.clear();
        manifest.epoch += 1;
        match &written {
            Ok(()) => {
                outcome.indexed = changed.len();
                outcome.chunks = record(&mut manifest, changed, stamp);
            }
            // The old versions are gone from both stores too; record that.
            Err(_) => doc_ids.iter().for_each(|id| manifest.remove(id)),
        }
        self.save(&mut manifest, &doc_ids).await?;
        self.publish(collection, &manifest);
        outcome.epoch = manifest.epoch;
        written.map(|()| outcome)
    }

    async fn embed(&self, collection: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ApiError> {
        // There is no request deadline: a batch that passes its timeout counts against the
        // embedder like any timeout.
        let embedded = self
            .embedder
            .embed(texts, Priority::Bulk)
            .await
            .map_err(|e| ApiError::from_stage(ModelStage::Embedder, e))?;
        if let Some(accounts) = &self.followers.accounts {
            accounts.meter_of(collection).embedding(embedded.tokens as u64);
        }
        Ok(embedded.vectors)
    }

    /// Removes the old versions of `replaced` and writes the new chunks of `doc_ids` to both
    /// stores, durably. On failure both stores are cleared of `doc_ids`, so neither holds a
    /// version the other lacks.
    async fn replace_in_stores(
        &self,
        writing: &Writing<'_>,
        (replaced, doc_ids): (&[String], &[String]),
        embedded: Vec<EmbeddedChunk>,
        chunks: Vec<Chunk>,
    ) -> Result<(), ApiError> {
        let name = writing.name.as_str();
        // The two stores are independent: each replaces its old version, and they run at once,
        // in parts of one request each, every one fenced.
        let dense = async {
            self.fence(writing)?;
            self.dense.delete_documents(name, replaced.to_vec()).await?;
            for part in embedded.chunks(WRITE_PART) {
                self.fence(writing)?;
                self.dense.upsert(name, part.to_vec()).await?;
            }
            self.fence(writing)?;
            Ok::<(), ApiError>(self.dense.flush(name).await?)
        };
        let keyword = async {
            self.fence(writing)?;
            self.keyword.delete_documents(name, replaced.to_vec()).await?;
            for part in chunks.chunks(WRITE_PART) {
                self.fence(writing)?;
                self.keyword.upsert(name, part.to_vec()).await?;
            }
            Ok::<(), ApiError>(())
        };
        let (dense, keyword) = tokio::join!(dense, keyword);
        let result = dense.and(keyword);
        if let Err(e) = result {
            if self.fence(writing).is_err() {
                // Another process may own these documents now: the change stays listed as
                // pending, and whoever holds the lease next removes it.
                return Err(e);
            }
            tracing::error!(collection = name, error = %e, "write failed; removing the documents from both stores");
            let dense = self.dense.delete_documents(name, doc_ids.to_vec()).await;
            let keyword = self.keyword.delete_documents(name, doc_ids.to_vec()).await;
            let flushed = self.dense.flush(name).await;
            if let Err(undo) = dense.and(keyword).and(flushed) {
                tracing::error!(collection = name, error = %undo, "undo failed: stores may disagree until restart");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Refuses a store write that the collection's lease might not outlive: a process cut off
    /// from Redis (or paused) stops writing before another can take the lease over. The stores
    /// know nothing of leases, so this is the holder's own clock against the longest one request
    /// to them may take; writes to the registry are fenced by Redis itself.
    fn fence(&self, writing: &Writing<'_>) -> Result<(), ApiError> {
        writing
            .lease
            .check(self.write_margin)
            .map_err(|lost| fenced(lost.0))
    }

    /// Refuses work that would embed into `collection` with another embedder than its vectors
    /// were made with (vector spaces must not mix).
    pub fn check_embedder(&self, collection: &Collection) -> Result<(), ApiError> {
        let current = &self.embedder;
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
        let mut manifest = self.begin(&collection).await?;
        manifest.fusion = fusion;
        manifest.epoch += 1;
        self.save(&mut manifest, &[]).await?;
        self.publish(&collection, &manifest);
        Ok(info(&manifest))
    }

    /// Deletes a document. `oldest_job` is the stamp of the oldest unfinished job of the
    /// collection (`None`: there is none): a job accepted before this delete must not bring the
    /// document back, so while one is unfinished the delete is remembered (and what no unfinished
    /// job needs any more is forgotten).
    pub async fn delete_document(
        &self,
        name: &str,
        doc_id: &str,
        oldest_job: Option<u64>,
    ) -> Result<(usize, u64), ApiError> {
        let collection = self.get(name)?;
        let mut manifest = self.begin(&collection).await?;
        let Some(record) = manifest.documents.get(doc_id).cloned() else {
            return Err(ApiError::DocumentNotFound {
                collection: name.to_string(),
                document: doc_id.to_string(),
            });
        };
        let stamp = self.stamp().await?;
        manifest
            .deleted
            .retain(|_, deleted| oldest_job.is_some_and(|oldest| *deleted > oldest));
        if oldest_job.is_some_and(|oldest| oldest < stamp) {
            manifest.deleted.insert(doc_id.to_string(), stamp);
        }
        self.remove_documents(&collection, &mut manifest, vec![doc_id.to_string()])
            .await?;
        Ok((record.chunks, manifest.epoch))
    }

    /// Records the change of `manifest` durably: its header (epoch, pending, fusion) and the
    /// records of the `touched` documents (written or removed).
    /// A change that was not recorded leaves the manifest held here ahead of (or beside) the
    /// registry's: it is marked `diverged`, and read whole again before it is used.
    async fn save(&self, writing: &mut Writing<'_>, touched: &[String]) -> Result<(), ApiError> {
        writing.changes += 1;
        let saved = self
            .registry
            .save(&writing.manifest, touched, &writing.lease)
            .await;
        saved.map_err(|e| {
            writing.diverged = true;
            self.write_failed(e)
        })
    }

    /// A stamp later than every one handed out before, in every process of the deployment: when
    /// a write was accepted, to tell which of two writes of a document is the later.
    pub async fn stamp(&self) -> Result<u64, ApiError> {
        self.registry
            .stamp()
            .await
            .map_err(|e| self.write_failed(WriteError::Failed(e)))
    }

    fn write_failed(&self, e: WriteError) -> ApiError {
        match (e, self.registry.shared()) {
            (WriteError::Fenced(e), _) => fenced(e),
            (WriteError::Failed(e), true) => registry_failed(e),
            (WriteError::Failed(e), false) => ApiError::Internal(e),
        }
    }
}

/// Records the documents a batch indexed; returns their chunks.
fn record(manifest: &mut Manifest, changed: Vec<Change>, stamp: u64) -> usize {
    let mut chunks = 0;
    for Change {
        id,
        hash,
        chunks: doc_chunks,
        bytes,
    } in changed
    {
        chunks += doc_chunks.len();
        let record = DocumentRecord {
            content_hash: hash,
            chunks: doc_chunks.len(),
            bytes,
            stamp,
        };
        manifest.put(id, record);
    }
    chunks
}

fn too_many(max_collections: usize) -> ApiError {
    ApiError::Conflict {
        code: ErrorCode::TooManyCollections,
        message: format!("this server holds at most {max_collections} collections (limits.max_collections)"),
    }
}

/// What a document's chunks take in the stores, as counted against `limits.bytes`: each chunk's
/// text and the document's `metadata`, copied into every chunk (as JSON). A document cut into many
/// overlapping chunks costs what it stores, not only its text.
pub fn stored_bytes(chunks: &[Chunk], metadata: &serde_json::Map<String, serde_json::Value>) -> u64 {
    let metadata = match metadata.is_empty() {
        true => 0,
        false => serde_json::to_string(metadata).map_or(0, |m| m.len()),
    };
    chunks
        .iter()
        .map(|chunk| (chunk.text.len() + metadata) as u64)
        .sum()
}

/// What a batch changes.
struct Plan {
    /// New or changed documents, chunked.
    changed: Vec<Change>,
    /// Documents indexed with the same content by an earlier write: stamped anew.
    restamped: Vec<String>,
}

/// The documents of a batch accepted at `stamp` that are new or changed, chunked; a document
/// written or deleted by a later write is passed over.
fn plan(manifest: &Manifest, documents: Vec<DocumentInput>, chunking: ChunkingOptions, stamp: u64) -> Plan {
    let mut plan = Plan {
        changed: Vec::new(),
        restamped: Vec::new(),
    };
    for doc in documents {
        let known = manifest.documents.get(&doc.id);
        let later = known.map(|d| d.stamp).or(manifest.deleted.get(&doc.id).copied());
        if later.is_some_and(|later| later > stamp) {
            continue;
        }
        let metadata = doc.metadata.unwrap_or_default();
        let hash = content_hash(&doc.text, &metadata);
        if let Some(known) = known.filter(|d| d.content_hash == hash) {
            if known.stamp < stamp {
                plan.restamped.push(doc.id);
            }
            continue;
        }
        let chunks = chunk_document(&doc.id, &doc.text, &metadata, chunking);
        plan.changed.push(Change {
            id: doc.id,
            hash,
            bytes: stored_bytes(&chunks, &metadata),
            chunks,
        });
    }
    plan
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
        chunks: manifest.totals.chunks,
        bytes: manifest.totals.bytes,
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
