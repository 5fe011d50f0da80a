//! Collections: their manifests (settings, documents, epoch) and every change to their contents.
//!
//! A manifest is the record of which documents a collection holds. It is written after both
//! stores have accepted a change, and a failed change is undone in both stores, so a document is
//! searchable in both indexes or in neither.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ragway_openapi::{CollectionInfo, DocumentInput, IngestResponse};
use ragway_retrieval::{chunk_document, ChunkingOptions, DenseStore, EmbeddedChunk, Embedder, KeywordStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    name: String,
    chunk_words: usize,
    chunk_overlap_words: usize,
    epoch: u64,
    documents: BTreeMap<String, DocumentRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DocumentRecord {
    content_hash: String,
    chunks: usize,
}

pub struct Collection {
    pub name: String,
    /// Held for the whole of a change, so changes to one collection apply one at a time.
    manifest: tokio::sync::Mutex<Manifest>,
    /// Mirrors `manifest.epoch` for lock-free reads (cache keys).
    epoch: AtomicU64,
}

impl Collection {
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub async fn info(&self) -> CollectionInfo {
        info(&*self.manifest.lock().await)
    }
}

pub struct Collections {
    manifests_dir: PathBuf,
    open: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Serialises creating and dropping collections.
    lifecycle: tokio::sync::Mutex<()>,
    embedder: Arc<dyn Embedder>,
    dense: Arc<dyn DenseStore>,
    keyword: Arc<dyn KeywordStore>,
}

impl Collections {
    /// Opens every collection whose manifest is under `manifests_dir`.
    pub async fn open(
        manifests_dir: &Path,
        embedder: Arc<dyn Embedder>,
        dense: Arc<dyn DenseStore>,
        keyword: Arc<dyn KeywordStore>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(manifests_dir)?;
        let mut open = BTreeMap::new();
        for entry in std::fs::read_dir(manifests_dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let manifest: Manifest = serde_json::from_slice(&std::fs::read(&path)?)
                .map_err(|e| anyhow::anyhow!("cannot read manifest {}: {e}", path.display()))?;
            dense.open_collection(&manifest.name).await?;
            keyword.open_collection(&manifest.name).await?;
            open.insert(manifest.name.clone(), Arc::new(collection(manifest)));
        }
        let collections = Self {
            manifests_dir: manifests_dir.to_path_buf(),
            open: RwLock::new(open),
            lifecycle: tokio::sync::Mutex::new(()),
            embedder,
            dense,
            keyword,
        };
        for collection in collections.list()? {
            collections.reconcile(&collection).await?;
        }
        Ok(collections)
    }

    /// After a crash between the store writes and the manifest write, a document may sit in one
    /// store only, or in the stores but not in the manifest. Such documents are removed from both
    /// stores and the manifest, so that each document is searchable in both engines or in neither;
    /// a client re-sends them.
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
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if stray.is_empty() {
            return Ok(());
        }
        tracing::warn!(collection = %name, documents = ?stray, "removing documents not fully indexed (interrupted write)");
        self.dense.delete_documents(name, stray.clone()).await?;
        self.keyword.delete_documents(name, stray.clone()).await?;
        for id in &stray {
            manifest.documents.remove(id);
        }
        manifest.epoch += 1;
        self.save(&manifest)?;
        collection.epoch.store(manifest.epoch, Ordering::Release);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Arc<Collection>, ApiError> {
        self.open
            .read()
            .map_err(|_| ApiError::Internal("collection map lock poisoned".into()))?
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::CollectionNotFound(name.to_string()))
    }

    pub fn list(&self) -> Result<Vec<Arc<Collection>>, ApiError> {
        Ok(self
            .open
            .read()
            .map_err(|_| ApiError::Internal("collection map lock poisoned".into()))?
            .values()
            .cloned()
            .collect())
    }

    pub async fn create(&self, name: &str, chunking: ChunkingOptions) -> Result<CollectionInfo, ApiError> {
        let _guard = self.lifecycle.lock().await;
        if self.get(name).is_ok() {
            return Err(ApiError::CollectionExists(name.to_string()));
        }
        let manifest = Manifest {
            name: name.to_string(),
            chunk_words: chunking.chunk_words,
            chunk_overlap_words: chunking.overlap_words,
            epoch: 0,
            documents: BTreeMap::new(),
        };
        self.dense.open_collection(name).await?;
        self.keyword.open_collection(name).await?;
        self.save(&manifest)?;
        let info = info(&manifest);
        self.open
            .write()
            .map_err(|_| ApiError::Internal("collection map lock poisoned".into()))?
            .insert(name.to_string(), Arc::new(collection(manifest)));
        Ok(info)
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), ApiError> {
        let _guard = self.lifecycle.lock().await;
        let collection = self.get(name)?;
        // Wait for a change in flight to finish, and keep new ones out while the files go.
        let _manifest = collection.manifest.lock().await;
        self.open
            .write()
            .map_err(|_| ApiError::Internal("collection map lock poisoned".into()))?
            .remove(name);
        std::fs::remove_file(self.manifest_path(name)).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.dense.drop_collection(name).await?;
        self.keyword.drop_collection(name).await?;
        Ok(())
    }

    /// Indexes new and changed documents; documents whose id and content hash are already indexed
    /// are left alone.
    pub async fn ingest(
        &self,
        name: &str,
        documents: Vec<DocumentInput>,
    ) -> Result<IngestResponse, ApiError> {
        let collection = self.get(name)?;
        let mut manifest = collection.manifest.lock().await;
        let chunking = ChunkingOptions {
            chunk_words: manifest.chunk_words,
            overlap_words: manifest.chunk_overlap_words,
        };
        let mut changed = Vec::new();
        let mut unchanged = 0;
        for doc in documents {
            let metadata = doc.metadata.unwrap_or_default();
            let hash = content_hash(&doc.text, &metadata);
            if manifest
                .documents
                .get(&doc.id)
                .is_some_and(|d| d.content_hash == hash)
            {
                unchanged += 1;
                continue;
            }
            let chunks = chunk_document(&doc.id, &doc.text, &metadata, chunking);
            changed.push((doc.id, hash, chunks));
        }
        if changed.is_empty() {
            return Ok(IngestResponse {
                indexed: 0,
                unchanged,
                chunks: 0,
                epoch: manifest.epoch,
            });
        }

        // Embed first: it touches no store, so a failure here leaves everything as it was.
        let chunks: Vec<_> = changed.iter().flat_map(|(_, _, c)| c.iter().cloned()).collect();
        let texts = chunks.iter().map(|c| c.text.clone()).collect();
        let vectors = self.embedder.embed(texts).await?.vectors;
        let embedded: Vec<EmbeddedChunk> = chunks
            .iter()
            .cloned()
            .zip(vectors)
            .map(|(chunk, vector)| EmbeddedChunk { chunk, vector })
            .collect();
        let doc_ids: Vec<String> = changed.iter().map(|(id, _, _)| id.clone()).collect();

        let written = self.replace_in_stores(name, &doc_ids, embedded, chunks).await;
        manifest.epoch += 1;
        let response = match written {
            Ok(()) => {
                let total_chunks = changed.iter().map(|(_, _, c)| c.len()).sum();
                let indexed = changed.len();
                for (id, content_hash, chunks) in changed {
                    manifest.documents.insert(
                        id,
                        DocumentRecord {
                            content_hash,
                            chunks: chunks.len(),
                        },
                    );
                }
                Ok(IngestResponse {
                    indexed,
                    unchanged,
                    chunks: total_chunks,
                    epoch: manifest.epoch,
                })
            }
            Err(e) => {
                // The old versions are gone from both stores too; record that.
                for id in &doc_ids {
                    manifest.documents.remove(id);
                }
                Err(e)
            }
        };
        self.save(&manifest)?;
        collection.epoch.store(manifest.epoch, Ordering::Release);
        response
    }

    /// Removes old versions of `doc_ids` and writes the new chunks to both stores. On failure both
    /// stores are cleared of `doc_ids`, so neither holds a version the other lacks.
    async fn replace_in_stores(
        &self,
        name: &str,
        doc_ids: &[String],
        embedded: Vec<EmbeddedChunk>,
        chunks: Vec<ragway_retrieval::Chunk>,
    ) -> Result<(), ApiError> {
        let result = async {
            self.dense.delete_documents(name, doc_ids.to_vec()).await?;
            self.keyword.delete_documents(name, doc_ids.to_vec()).await?;
            self.dense.upsert(name, embedded).await?;
            self.keyword.upsert(name, chunks).await?;
            Ok::<_, ragway_retrieval::RetrievalError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(collection = name, error = %e, "write failed; removing the documents from both stores");
            let dense = self.dense.delete_documents(name, doc_ids.to_vec()).await;
            let keyword = self.keyword.delete_documents(name, doc_ids.to_vec()).await;
            if let Err(undo) = dense.and(keyword) {
                tracing::error!(collection = name, error = %undo, "undo failed: stores may disagree until re-ingest");
            }
            return Err(e.into());
        }
        Ok(())
    }

    pub async fn delete_document(&self, name: &str, doc_id: &str) -> Result<(usize, u64), ApiError> {
        let collection = self.get(name)?;
        let mut manifest = collection.manifest.lock().await;
        let Some(record) = manifest.documents.get(doc_id).cloned() else {
            return Err(ApiError::DocumentNotFound {
                collection: name.to_string(),
                document: doc_id.to_string(),
            });
        };
        let ids = vec![doc_id.to_string()];
        self.dense.delete_documents(name, ids.clone()).await?;
        self.keyword.delete_documents(name, ids).await?;
        manifest.documents.remove(doc_id);
        manifest.epoch += 1;
        self.save(&manifest)?;
        collection.epoch.store(manifest.epoch, Ordering::Release);
        Ok((record.chunks, manifest.epoch))
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.manifests_dir.join(format!("{name}.json"))
    }

    /// Write-then-rename, so a crash never leaves a half-written manifest.
    fn save(&self, manifest: &Manifest) -> Result<(), ApiError> {
        let path = self.manifest_path(&manifest.name);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| ApiError::Internal(e.to_string()))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| ApiError::Internal(format!("cannot write {}: {e}", path.display())))
    }
}

fn collection(manifest: Manifest) -> Collection {
    Collection {
        name: manifest.name.clone(),
        epoch: AtomicU64::new(manifest.epoch),
        manifest: tokio::sync::Mutex::new(manifest),
    }
}

fn info(manifest: &Manifest) -> CollectionInfo {
    CollectionInfo {
        name: manifest.name.clone(),
        documents: manifest.documents.len(),
        chunks: manifest.documents.values().map(|d| d.chunks).sum(),
        chunk_words: manifest.chunk_words,
        chunk_overlap_words: manifest.chunk_overlap_words,
        epoch: manifest.epoch,
    }
}

fn content_hash(text: &str, metadata: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut hasher = Sha256::new();
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
    hasher.update(serde_json::Value::Object(metadata.clone()).to_string().as_bytes());
    hex::encode(hasher.finalize())
}
