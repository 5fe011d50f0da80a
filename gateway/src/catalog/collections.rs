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
//!
//! Here: the collections a process serves, their lifecycle (open, create, drop, reconcile), and
//! what reads them. Children: `manifest` (the record itself), `write` (the write path, fenced),
//! `registry`/`file_registry` (where manifests live), `follow` (other replicas' changes),
//! `snapshot`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ragway_openapi::{CollectionInfo, DocumentInput, DocumentSummary};
use ragway_retrieval::{ChunkingOptions, DenseStorage, DenseStore, Embedder, Fusion, KeywordStore};

use crate::caches::{Caches, Target};
use crate::catalog::lease::{self, Lease};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::Accounts;

mod file_registry;
mod follow;
mod manifest;
mod registry;
mod snapshot;
mod write;
use file_registry::FileRegistry;
use manifest::{info, off_runtime, Manifest, Totals};
pub(crate) use registry::storage_key;
pub use registry::Caps;
use registry::{Created, RedisRegistry, Refreshed, Registry};
pub use snapshot::SnapshotInfo;
pub use write::stored_bytes;
use write::Writing;

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

/// Which of a collection's documents to list (see [`Collections::documents`]).
#[derive(Debug, Clone, Copy)]
pub struct DocumentPage<'a> {
    pub prefix: &'a str,
    pub after: Option<&'a str>,
    pub limit: usize,
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

/// The registry failed: nothing was changed, and trying again may work.
fn registry_failed(e: String) -> ApiError {
    ApiError::Busy {
        code: ErrorCode::RegistryUnavailable,
        message: format!("the collection registry cannot be reached: {e}"),
        retry_after_s: 1,
    }
}

impl Collections {
    /// How much `documents` would add to what the collection stores (negative: shrink), as
    /// `(documents, chunks, bytes)`; a document already stored replaces its old version.
    /// With a shared registry, the manifest is brought up to date first (another replica may
    /// have written those documents).
    pub async fn growth(
        &self,
        collection: &Collection,
        documents: &[DocumentInput],
    ) -> Result<(i64, i64, i64), ApiError> {
        // Chunked off the runtime, before the manifest is locked (a change may hold it).
        let sizes: Vec<(i64, i64)> = off_runtime(|| {
            documents
                .iter()
                .map(|doc| {
                    let metadata = doc.metadata.clone().unwrap_or_default();
                    let chunked = write::chunks_of(doc, &metadata, collection.chunking);
                    let bytes = stored_bytes(&chunked, &metadata);
                    (chunked.len() as i64, i64::try_from(bytes).unwrap_or(i64::MAX))
                })
                .collect()
        });
        let manifest = self.current_manifest(collection).await?;
        let mut growth = (0i64, 0i64, 0i64);
        for (doc, (chunks, bytes)) in documents.iter().zip(sizes) {
            let (old_docs, old_chunks, old_bytes) = manifest
                .documents
                .get(&doc.id)
                .map_or((0, 0, 0), |d| (1, d.chunks as i64, d.bytes as i64));
            growth.0 += 1 - old_docs;
            growth.1 += chunks - old_chunks;
            growth.2 += bytes - old_bytes;
        }
        Ok(growth)
    }

    /// `collection`'s manifest, held (a change in progress is waited for) and, with a shared
    /// registry, brought up to date first (another replica may have changed it).
    async fn current_manifest<'a>(
        &self,
        collection: &'a Collection,
    ) -> Result<tokio::sync::MutexGuard<'a, Manifest>, ApiError> {
        let mut manifest = collection.manifest.lock().await;
        if self.registry.shared() {
            let refreshed = self
                .registry
                .refresh(&mut manifest)
                .await
                .map_err(registry_failed)?;
            if refreshed == Refreshed::Changed {
                collection.publish(&manifest);
            }
        }
        Ok(manifest)
    }

    /// A page of `collection`'s documents in id order: at most `limit` whose id starts with
    /// `prefix`, after `after`; and whether more follow. Costs the page, not the collection (the
    /// manifest's records are ordered by id). Waits for a change in progress, as a write does;
    /// with a shared registry, the manifest is brought up to date first.
    pub async fn documents(
        &self,
        collection: &Collection,
        page: DocumentPage<'_>,
    ) -> Result<(Vec<DocumentSummary>, bool), ApiError> {
        use std::ops::Bound;
        let manifest = self.current_manifest(collection).await?;
        let start = match page.after {
            Some(after) if after >= page.prefix => Bound::Excluded(after),
            _ => Bound::Included(page.prefix),
        };
        let mut listed: Vec<DocumentSummary> = manifest
            .documents
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(id, _)| id.starts_with(page.prefix))
            .take(page.limit + 1)
            .map(|(id, record)| DocumentSummary {
                id: id.clone(),
                chunks: record.chunks,
                bytes: record.bytes,
                content_hash: record.content_hash.clone(),
            })
            .collect();
        let more = listed.len() > page.limit;
        listed.truncate(page.limit);
        Ok((listed, more))
    }

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
        self.dense
            .open_collection_with(&manifest.name, manifest.storage)
            .await?;
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
        storage: Option<DenseStorage>,
        caps: Caps,
    ) -> Result<CollectionInfo, ApiError> {
        let manifest = Manifest {
            name: name.to_string(),
            generation: uuid::Uuid::new_v4().simple().to_string(),
            chunk_words: chunking.chunk_words,
            chunk_overlap_words: chunking.overlap_words,
            fusion,
            storage,
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
        self.establish(manifest, caps, async { Ok(()) }).await
    }

    /// Makes `manifest` a new collection: clears what a crash may have left of an earlier one
    /// of its name in the stores, lets `fill` write its contents, then records it. 409 when the
    /// name is taken (here or by another replica) or the registry is full, 429 when its tenant
    /// holds as many as it may (counted here and, across replicas, in the registry's one step).
    async fn establish(
        &self,
        manifest: Manifest,
        caps: Caps,
        fill: impl std::future::Future<Output = Result<(), ApiError>>,
    ) -> Result<CollectionInfo, ApiError> {
        let name = manifest.name.clone();
        let _guard = self.lifecycle.lock().await;
        self.check_new(&name, caps)?;
        let _lease = self.registry.lock(&name).await.map_err(registry_failed)?;
        if self.registry.get(&name).await.map_err(registry_failed)?.is_some() {
            return Err(ApiError::CollectionExists(name));
        }
        self.dense.drop_collection(&name).await?;
        self.keyword.drop_collection(&name).await?;
        self.dense.open_collection_with(&name, manifest.storage).await?;
        self.keyword.open_collection(&name).await?;
        fill.await?;
        let created = self
            .registry
            .create(&manifest, caps)
            .await
            .map_err(registry_failed)?;
        match created {
            Created::Yes => {}
            Created::Taken => return Err(ApiError::CollectionExists(name)),
            Created::Full => return Err(too_many(caps.server)),
            Created::OwnerFull => return Err(owner_full(caps.owner.unwrap_or_default())),
        }
        let created = info(&manifest);
        write(&self.open)?.insert(name, Arc::new(Collection::new(manifest)));
        Ok(created)
    }

    /// 409 when `name` is taken (or damaged), or when the server holds all it may.
    fn check_new(&self, name: &str, caps: Caps) -> Result<(), ApiError> {
        if self.get(name).is_ok() || read(&self.damaged)?.contains_key(name) {
            return Err(ApiError::CollectionExists(name.to_string()));
        }
        let open = read(&self.open)?;
        if open.len() >= caps.server {
            return Err(too_many(caps.server));
        }
        if let Some(cap) = caps.owner {
            let tenant = crate::tenancy::owner(name);
            let held = open.keys().filter(|n| crate::tenancy::owner(n) == tenant).count();
            if held as u64 >= cap {
                return Err(owner_full(cap));
            }
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

    /// The dimension of the vectors this server's embedder makes (and a document may come with).
    pub fn dimension(&self) -> usize {
        self.embedder.dimension()
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
}

/// The tenant of a new collection holds `cap` already (its `limits.collections`).
fn owner_full(cap: u64) -> ApiError {
    ApiError::OverQuota {
        code: ErrorCode::CollectionQuotaExceeded,
        message: format!("the tenant may hold {cap} collections (limits.collections)"),
        retry_after_s: None,
    }
}

fn too_many(max_collections: usize) -> ApiError {
    ApiError::Conflict {
        code: ErrorCode::TooManyCollections,
        message: format!("this server holds at most {max_collections} collections (limits.max_collections)"),
    }
}

fn read<T>(lock: &RwLock<T>) -> Result<std::sync::RwLockReadGuard<'_, T>, ApiError> {
    lock.read()
        .map_err(|_| ApiError::Internal("collection map lock poisoned".into()))
}

fn write<T>(lock: &RwLock<T>) -> Result<std::sync::RwLockWriteGuard<'_, T>, ApiError> {
    lock.write()
        .map_err(|_| ApiError::Internal("collection map lock poisoned".into()))
}
