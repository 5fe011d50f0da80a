//! The write path of a collection: a change (a batch of documents, a delete, a fusion setting)
//! holds the collection's lease and its manifest, writes both stores durably, then saves the
//! manifest; every registry write is fenced by the lease, every store request checked against it
//! first (see `catalog::lease`). Which documents a batch changes, and what they cost in the stores,
//! are decided here by pure functions (`plan`, `stored_bytes`).

use std::sync::atomic::{AtomicUsize, Ordering};

use ragway_openapi::{CollectionInfo, DocumentInput};
use ragway_retrieval::{chunk_document, Chunk, ChunkingOptions, EmbeddedChunk, Fusion, Priority};
use sha2::{Digest, Sha256};

use super::manifest::{info, DocumentRecord, Manifest};
use super::registry::{Refreshed, WriteError};
use super::{registry_failed, BatchOutcome, Collection, Collections};
use crate::catalog::lease::Lease;
use crate::error::{ApiError, ErrorCode};
use crate::resilience::guard::ModelStage;

/// Chunks written to a store per request, each request fenced (see `Collections::fence`).
const WRITE_PART: usize = 256;
/// Chunks embedded per call while a batch is applied.
const EMBED_PART: usize = 64;

/// A new or changed document of a batch: its id, content hash and chunks (and its one chunk's
/// vector, when its sender embedded it).
struct Change {
    id: String,
    hash: String,
    chunks: Vec<Chunk>,
    bytes: u64,
    vector: Option<Vec<f32>>,
}

/// A change of one collection in progress: its manifest held in this process, its lease held in
/// every process.
pub(super) struct Writing<'a> {
    pub(super) manifest: tokio::sync::MutexGuard<'a, Manifest>,
    pub(super) lease: Lease,
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

/// Records the documents a batch indexed; returns their chunks.
fn record(manifest: &mut Manifest, changed: Vec<Change>, stamp: u64) -> usize {
    let mut chunks = 0;
    for Change {
        id,
        hash,
        chunks: doc_chunks,
        bytes,
        ..
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
        let metadata = doc.metadata.clone().unwrap_or_default();
        let hash = content_hash(&doc, &metadata);
        if let Some(known) = known.filter(|d| d.content_hash == hash) {
            if known.stamp < stamp {
                plan.restamped.push(doc.id);
            }
            continue;
        }
        let chunks = chunks_of(&doc, &metadata, chunking);
        plan.changed.push(Change {
            id: doc.id,
            hash,
            bytes: stored_bytes(&chunks, &metadata),
            chunks,
            vector: doc.vector,
        });
    }
    plan
}

/// A document's content hash: its text and metadata, the chunks it came cut into, and the vector
/// it came with.
fn content_hash(doc: &DocumentInput, metadata: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut hasher = Sha256::new();
    hasher.update((doc.text.len() as u64).to_le_bytes());
    hasher.update(doc.text.as_bytes());
    hasher.update(serde_json::Value::Object(metadata.clone()).to_string().as_bytes());
    if let Some(chunks) = &doc.chunks {
        // Absent and given chunks hash apart even when they would cut the same.
        hasher.update(b"chunks");
        for chunk in chunks {
            hasher.update((chunk.text.len() as u64).to_le_bytes());
            hasher.update(chunk.text.as_bytes());
            let own = chunk.metadata.clone().unwrap_or_default();
            hasher.update(serde_json::Value::Object(own).to_string().as_bytes());
        }
    }
    if let Some(vector) = &doc.vector {
        hasher.update(b"vector");
        vector.iter().for_each(|v| hasher.update(v.to_le_bytes()));
    }
    hex::encode(hasher.finalize())
}

/// A document's chunks: as its sender cut them (`chunks`: the files route, or a client that
/// chunks for itself), each with its own metadata over the document's; else by the collection's
/// chunking.
pub(super) fn chunks_of(
    doc: &DocumentInput,
    metadata: &serde_json::Map<String, serde_json::Value>,
    chunking: ChunkingOptions,
) -> Vec<Chunk> {
    let Some(given) = &doc.chunks else {
        return chunk_document(&doc.id, &doc.text, metadata, chunking);
    };
    given
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut merged = metadata.clone();
            merged.extend(chunk.metadata.clone().unwrap_or_default());
            Chunk {
                chunk_id: format!("{}#{i}", doc.id),
                doc_id: doc.id.clone(),
                text: chunk.text.clone(),
                metadata: merged,
            }
        })
        .collect()
}

impl Collections {
    /// Removes the documents a change left half-written (`manifest.pending`) from both stores and
    /// the manifest, durably.
    pub(super) async fn undo_pending(
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
    pub(super) async fn begin<'a>(&self, collection: &'a Collection) -> Result<Writing<'a>, ApiError> {
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
        embedded: &AtomicUsize,
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
        // Embed first (what came without a vector): it touches no store, so a failure here
        // leaves everything as it was.
        let chunks: Vec<Chunk> = changed.iter().flat_map(|c| c.chunks.iter().cloned()).collect();
        let given: Vec<Option<&Vec<f32>>> = changed
            .iter()
            .flat_map(|c| c.chunks.iter().map(|_| c.vector.as_ref()))
            .collect();
        let to_embed: Vec<&Chunk> = chunks
            .iter()
            .zip(&given)
            .filter(|(_, given)| given.is_none())
            .map(|(chunk, _)| chunk)
            .collect();
        // In parts, so that a large document's progress shows (`embedded`) while it is embedded.
        let mut vectors = Vec::with_capacity(to_embed.len());
        for part in to_embed.chunks(EMBED_PART) {
            let texts = part.iter().map(|c| c.text.clone()).collect();
            vectors.extend(self.embed(&collection.name, texts).await?);
            embedded.fetch_add(part.len(), Ordering::Relaxed);
        }
        embedded.fetch_add(chunks.len() - to_embed.len(), Ordering::Relaxed);
        if vectors.len() != to_embed.len() {
            return Err(ApiError::Internal(format!(
                "the embedder made {} vectors for {} texts",
                vectors.len(),
                to_embed.len()
            )));
        }
        let mut made = vectors.into_iter();
        let embedded = chunks
            .iter()
            .cloned()
            .zip(given)
            .map(|(chunk, given)| {
                let vector = given.cloned().or_else(|| made.next()).unwrap_or_default();
                EmbeddedChunk { chunk, vector }
            })
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
    pub(super) fn fence(&self, writing: &Writing<'_>) -> Result<(), ApiError> {
        writing
            .lease
            .check(self.write_margin)
            .map_err(|lost| fenced(lost.0))
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

    pub(super) fn write_failed(&self, e: WriteError) -> ApiError {
        match (e, self.registry.shared()) {
            (WriteError::Fenced(e), _) => fenced(e),
            (WriteError::Failed(e), true) => registry_failed(e),
            (WriteError::Failed(e), false) => ApiError::Internal(e),
        }
    }
}
