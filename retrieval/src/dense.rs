use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use qdrant_edge::external::uuid::Uuid;
use qdrant_edge::{
    Condition, CreateIndex, Distance, EdgeConfigBuilder, EdgeOptimizersConfig, EdgeShard,
    EdgeVectorParamsBuilder, FieldCondition, FieldIndexOperations, Filter, HnswIndexConfig, JsonPath, Match,
    MatchValue, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStruct, QuantizationSearchParams, QueryEnum, QueryRequest,
    ScalarQuantizationConfig, ScalarType, ScoringQuery, ScrollRequest, SearchParams, UpdateOperation,
    ValueVariants, VectorInternal, VectorStructInternal, WithPayloadInterface, WithVector,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::blocking::run_blocking;
use crate::error::RetrievalError;
use crate::filter::{FilterValue, MetadataFilter};
use crate::types::{Chunk, EmbeddedChunk, ScoredChunk};

/// Nearest-neighbour search over chunk embeddings, one index per collection.
#[async_trait]
pub trait DenseStore: Send + Sync {
    /// Creates the collection's index, or opens it if it already exists.
    async fn open_collection(&self, collection: &str) -> Result<(), RetrievalError>;
    /// As [`DenseStore::open_collection`]; a collection it creates keeps its vectors as `storage`
    /// says (`None`: the store's default). Stores that choose no storage ignore it.
    async fn open_collection_with(
        &self,
        collection: &str,
        _storage: Option<DenseStorage>,
    ) -> Result<(), RetrievalError> {
        self.open_collection(collection).await
    }
    async fn drop_collection(&self, collection: &str) -> Result<(), RetrievalError>;
    async fn upsert(&self, collection: &str, chunks: Vec<EmbeddedChunk>) -> Result<(), RetrievalError>;
    async fn delete_documents(&self, collection: &str, doc_ids: Vec<String>) -> Result<(), RetrievalError>;
    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        filter: MetadataFilter,
        limit: usize,
    ) -> Result<Vec<ScoredChunk>, RetrievalError>;
    /// Every document id with at least one chunk in the collection (start-up reconciliation).
    async fn document_ids(&self, collection: &str) -> Result<HashSet<String>, RetrievalError>;
    /// Makes every write so far durable: after this returns, they survive a crash.
    async fn flush(&self, collection: &str) -> Result<(), RetrievalError>;
    /// Up to `limit` chunks with their vectors from `from` (the cursor a previous page returned;
    /// `None`: the first page), and the cursor of the next page (`None`: this was the last), so
    /// that a snapshot holds one page at a time.
    async fn export_page(
        &self,
        collection: &str,
        from: Option<ExportCursor>,
        limit: usize,
    ) -> Result<(Vec<EmbeddedChunk>, Option<ExportCursor>), RetrievalError>;
}

/// Where the next page of an export starts: a point id, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCursor(pub String);

/// How the embedded dense store keeps the vectors of the collections it creates. Both apply to a
/// segment when Qdrant's optimizers index it, past [`UNINDEXED_BEFORE_OPTIMIZING`] points: a small
/// collection is scanned exactly, a large one is searched through an HNSW index over int8 copies
/// (a quarter of the memory) and the best candidates rescored on the original vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DenseStorage {
    /// Scalar (int8) quantization, kept in memory; searches oversample 2× and rescore.
    pub quantized: bool,
    /// The original `f32` vectors memory-mapped from disk (only the rescored ones are read),
    /// rather than held in memory.
    pub vectors_on_disk: bool,
}

impl Default for DenseStorage {
    fn default() -> Self {
        Self {
            quantized: true,
            vectors_on_disk: true,
        }
    }
}

/// Candidates a quantized search takes per hit asked for, rescored on the originals.
const OVERSAMPLING: f64 = 2.0;
/// The most points one segment grows to: the optimizers index a segment once it is full and
/// leave it alone after (a larger collection gets more segments, not a re-index of everything).
const SEGMENT_POINTS: usize = 250_000;

/// Qdrant's engine in process (Qdrant Edge): one shard per collection under `root/<collection>`.
pub struct EdgeDenseStore {
    shards: Arc<EdgeShards>,
}

struct EdgeShards {
    root: PathBuf,
    dimension: usize,
    storage: DenseStorage,
    /// Unindexed points that start the optimizers ([`UNINDEXED_BEFORE_OPTIMIZING`]).
    optimize_after: usize,
    shards: RwLock<HashMap<String, Arc<Shard>>>,
    /// Dropped collections whose files go once an optimizer run on them has ended: a collection
    /// of the same name cannot be made until then.
    dropping: Arc<std::sync::Mutex<HashSet<String>>>,
}

/// A shard and the lock that orders its writes and flushes: Qdrant Edge's `flush` panics when an
/// update holds the WAL at the same moment, so the two never overlap.
struct Shard {
    edge: EdgeShard,
    writes: std::sync::Mutex<()>,
    /// Held while Qdrant's optimizers run on the shard (a drop waits for them).
    optimizing: std::sync::Mutex<()>,
    /// The shard's point count when the optimizers last ran.
    optimized_at: std::sync::atomic::AtomicUsize,
    /// Dropped: no further optimizer run starts.
    dropped: std::sync::atomic::AtomicBool,
}

/// Points a shard may hold outside its HNSW index before the optimizers run: searches scan those
/// (quick at this size), and each run of the optimizers indexes at least this many.
const UNINDEXED_BEFORE_OPTIMIZING: usize = 20_000;

impl Shard {
    fn update(&self, operation: UpdateOperation) -> Result<(), RetrievalError> {
        let _writing = self.writes.lock().map_err(|_| poisoned())?;
        self.edge.update(operation)?;
        Ok(())
    }

    fn new(edge: EdgeShard) -> Self {
        Self {
            edge,
            writes: std::sync::Mutex::new(()),
            optimizing: std::sync::Mutex::new(()),
            optimized_at: std::sync::atomic::AtomicUsize::new(0),
            dropped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Qdrant Edge runs no optimizer by itself: without them a collection stays in plain
    /// segments that every search scans whole. Once enough points are not in the HNSW index (and
    /// enough were written since the last run), the optimizers (merge, HNSW indexing, vacuum) run
    /// on a thread of their own, one run per shard at a time; searches and writes go on meanwhile
    /// (Qdrant swaps the optimized segments in), and the run's threads are bounded by the shard's
    /// HNSW settings (one for shards made here).
    fn optimize_when_due(self: &Arc<Self>, collection: &str, after: usize) {
        if !self.due(after) {
            return;
        }
        let Ok(running) = self.optimizing.try_lock() else {
            return; // a run is on; it takes these points too, or runs again after (see `due`)
        };
        drop(running);
        let (shard, name) = (self.clone(), collection.to_string());
        let started = std::thread::Builder::new()
            .name(format!("optimize-{collection}"))
            .spawn(move || {
                // Runs again while what was written during a run is due itself: a load that
                // ends mid-run is indexed without waiting for another write.
                while shard.due(after) && !shard.dropped.load(std::sync::atomic::Ordering::Acquire) {
                    if !shard.optimize(&name) {
                        break;
                    }
                }
            });
        if let Err(e) = started {
            tracing::warn!(collection, error = %e, "cannot start the dense store's optimizer");
        }
    }

    /// At least `after` points are not in the HNSW index, and at least `after` were written since
    /// the optimizers last started.
    fn due(&self, after: usize) -> bool {
        use std::sync::atomic::Ordering;
        let info = self.edge.info();
        let unindexed = info.points_count.saturating_sub(info.indexed_vectors_count);
        let since = info
            .points_count
            .saturating_sub(self.optimized_at.load(Ordering::Acquire));
        unindexed >= after && since >= after
    }

    /// One run of the optimizers (none while another runs); true when it ran to its end.
    fn optimize(&self, collection: &str) -> bool {
        let Ok(_running) = self.optimizing.try_lock() else {
            return false;
        };
        self.optimized_at.store(
            self.edge.info().points_count,
            std::sync::atomic::Ordering::Release,
        );
        let started = std::time::Instant::now();
        tracing::info!(collection, "dense store optimizing");
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.edge.optimize()));
        let seconds = started.elapsed().as_secs_f64();
        match run {
            Ok(Ok(_)) => {
                let info = self.edge.info();
                tracing::info!(
                    collection,
                    seconds,
                    points = info.points_count,
                    indexed = info.indexed_vectors_count,
                    "dense store optimized"
                );
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(collection, error = %e, "the dense store's optimizer failed");
                false
            }
            Err(_) => {
                tracing::warn!(collection, "the dense store's optimizer panicked");
                false
            }
        }
    }

    /// Qdrant Edge does not replay its WAL on load: only flushed segments survive a crash.
    fn flush(&self) -> Result<(), RetrievalError> {
        let _writing = self.writes.lock().map_err(|_| poisoned())?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.edge.flush()))
            .map_err(|_| RetrievalError::Dense("flush failed".into()))
    }
}

impl EdgeDenseStore {
    pub fn new(root: &Path, dimension: usize) -> Self {
        Self::with_storage(root, dimension, DenseStorage::default())
    }

    /// Collections created from now on keep their vectors as `storage` says (those made before
    /// keep what they were made with).
    pub fn with_storage(root: &Path, dimension: usize, storage: DenseStorage) -> Self {
        Self::optimizing_after(root, dimension, storage, UNINDEXED_BEFORE_OPTIMIZING)
    }

    /// The optimizers start after `points` unindexed points (tests and benchmarks use fewer than
    /// the default).
    pub fn optimizing_after(root: &Path, dimension: usize, storage: DenseStorage, points: usize) -> Self {
        Self {
            shards: Arc::new(EdgeShards {
                root: root.to_path_buf(),
                dimension,
                storage,
                optimize_after: points,
                shards: RwLock::new(HashMap::new()),
                dropping: Arc::default(),
            }),
        }
    }

    /// Runs Qdrant's optimizers on `collection` now, to the end, as its background runs do (one
    /// at a time); benchmarks: an index built whatever the collection's size. `(points, indexed
    /// vectors)` after.
    pub fn optimize_now(&self, collection: &str) -> Result<(usize, usize), RetrievalError> {
        let shard = self.shards.shard(collection)?;
        drop(shard.optimizing.lock().map_err(|_| poisoned())?);
        if !shard.optimize(collection) {
            return Err(RetrievalError::Dense(
                "the optimizers did not run to their end".into(),
            ));
        }
        let info = shard.edge.info();
        Ok((info.points_count, info.indexed_vectors_count))
    }
}

impl EdgeShards {
    fn shard(&self, collection: &str) -> Result<Arc<Shard>, RetrievalError> {
        let shards = self.shards.read().map_err(|_| poisoned())?;
        shards
            .get(collection)
            .cloned()
            .ok_or_else(|| RetrievalError::UnknownCollection(collection.to_string()))
    }

    fn open_blocking(&self, collection: &str, storage: DenseStorage) -> Result<(), RetrievalError> {
        if self.dropping.lock().map_err(|_| poisoned())?.contains(collection) {
            return Err(RetrievalError::Dense(format!(
                "a dropped collection named {collection:?} is still being removed (its index build ends first): try again in a few seconds"
            )));
        }
        let mut shards = self.shards.write().map_err(|_| poisoned())?;
        if shards.contains_key(collection) {
            return Ok(());
        }
        let path = self.root.join(collection);
        let shard = if path.join("edge_config.json").exists() {
            EdgeShard::load(&path, None)?
        } else {
            std::fs::create_dir_all(&path).map_err(|e| RetrievalError::Dense(e.to_string()))?;
            // One thread builds the HNSW index: the other core keeps embedding and answering.
            let hnsw = HnswIndexConfig {
                max_indexing_threads: 1,
                ..HnswIndexConfig::default()
            };
            let mut vectors = EdgeVectorParamsBuilder::new(self.dimension, Distance::Cosine)
                .hnsw_config(hnsw)
                .on_disk(storage.vectors_on_disk);
            if storage.quantized {
                let int8 = ScalarQuantizationConfig {
                    r#type: ScalarType::Int8,
                    quantile: Some(0.99),
                    always_ram: Some(true),
                };
                vectors = vectors.quantization_config(int8.into());
            }
            // In KiB of vectors, as Qdrant counts a segment's size.
            let kib = |points: usize| points * self.dimension * 4 / 1024;
            let optimizers = EdgeOptimizersConfig {
                max_segment_size: Some(kib(SEGMENT_POINTS)),
                // Qdrant's default (10 MB of vectors), or less where the optimizers are to run
                // sooner (benchmarks, tests).
                indexing_threshold: Some(kib(self.optimize_after).clamp(1, 10_000)),
                ..EdgeOptimizersConfig::default()
            };
            let config = EdgeConfigBuilder::new()
                .vector("", vectors.build())
                .optimizers(optimizers)
                .build();
            EdgeShard::new(&path, config)?
        };
        index_doc_ids(&shard)?;
        let shard = Arc::new(Shard::new(shard));
        shard.optimize_when_due(collection, self.optimize_after);
        shards.insert(collection.to_string(), shard);
        Ok(())
    }

    /// Forgets the collection at once; its files go now, or — while an optimizer run (an index
    /// build, minutes on a large collection) holds them — on a thread of their own when it ends.
    fn drop_blocking(&self, collection: &str) -> Result<(), RetrievalError> {
        let removed = self.shards.write().map_err(|_| poisoned())?.remove(collection);
        let path = self.root.join(collection);
        let Some(shard) = removed else {
            return remove_files(&path);
        };
        shard.dropped.store(true, std::sync::atomic::Ordering::Release);
        if shard.optimizing.try_lock().is_ok() {
            return release(shard, &path);
        }
        let dropping = self.dropping.clone();
        dropping
            .lock()
            .map_err(|_| poisoned())?
            .insert(collection.to_string());
        let name = collection.to_string();
        let removing = std::thread::Builder::new()
            .name(format!("drop-{collection}"))
            .spawn(move || {
                // The run ends first (Qdrant's optimizers cannot be stopped from outside).
                let ended = shard.optimizing.lock().map(drop);
                let removed = ended.map_err(|_| poisoned()).and_then(|()| release(shard, &path));
                if let Err(e) = removed {
                    tracing::error!(collection = name, error = %e, "cannot remove a dropped collection's files");
                }
                if let Ok(mut dropping) = dropping.lock() {
                    dropping.remove(&name);
                }
            });
        removing
            .map(drop)
            .map_err(|e| RetrievalError::Dense(e.to_string()))
    }
}

/// Waits (at most 10 s) for the searches still holding `shard` to end (the last holder flushes
/// it on drop), then removes its files.
fn release(shard: Arc<Shard>, path: &Path) -> Result<(), RetrievalError> {
    let waiting = std::time::Instant::now();
    while Arc::strong_count(&shard) > 1 && waiting.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(shard);
    remove_files(path)
}

fn remove_files(path: &Path) -> Result<(), RetrievalError> {
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|e| RetrievalError::Dense(e.to_string()))?;
    }
    Ok(())
}

/// A keyword index on `doc_id`, so that deleting a document's chunks (`delete_documents`) finds
/// them through the index instead of reading every point's payload; built once for a shard made
/// before it existed, kept with the shard after.
fn index_doc_ids(shard: &EdgeShard) -> Result<(), RetrievalError> {
    let field = json_path("doc_id")?;
    if shard.info().payload_schema.contains_key(&field) {
        return Ok(());
    }
    let index = CreateIndex {
        field_name: field,
        field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)),
    };
    shard.update(UpdateOperation::FieldIndexOperation(
        FieldIndexOperations::CreateIndex(index),
    ))?;
    Ok(())
}

#[async_trait]
impl DenseStore for EdgeDenseStore {
    async fn open_collection(&self, collection: &str) -> Result<(), RetrievalError> {
        self.open_collection_with(collection, None).await
    }

    async fn open_collection_with(
        &self,
        collection: &str,
        storage: Option<DenseStorage>,
    ) -> Result<(), RetrievalError> {
        let shards = self.shards.clone();
        let collection = collection.to_string();
        let storage = storage.unwrap_or(shards.storage);
        run_blocking(RetrievalError::Dense, move || {
            shards.open_blocking(&collection, storage)
        })
        .await
    }

    async fn drop_collection(&self, collection: &str) -> Result<(), RetrievalError> {
        let shards = self.shards.clone();
        let collection = collection.to_string();
        run_blocking(RetrievalError::Dense, move || shards.drop_blocking(&collection)).await
    }

    async fn upsert(&self, collection: &str, chunks: Vec<EmbeddedChunk>) -> Result<(), RetrievalError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let shard = self.shards.shard(collection)?;
        let (collection, optimize_after) = (collection.to_string(), self.shards.optimize_after);
        run_blocking(RetrievalError::Dense, move || {
            let points = chunks
                .into_iter()
                .map(|c| PointStruct::new(point_id(&c.chunk.chunk_id), c.vector, payload(&c.chunk)).into())
                .collect();
            shard.update(UpdateOperation::PointOperation(PointOperations::UpsertPoints(
                PointInsertOperations::PointsList(points),
            )))?;
            shard.optimize_when_due(&collection, optimize_after);
            Ok(())
        })
        .await
    }

    async fn delete_documents(&self, collection: &str, doc_ids: Vec<String>) -> Result<(), RetrievalError> {
        if doc_ids.is_empty() {
            return Ok(());
        }
        let shard = self.shards.shard(collection)?;
        run_blocking(RetrievalError::Dense, move || {
            let key = json_path("doc_id")?;
            let conditions = doc_ids
                .into_iter()
                .map(|id| match_condition(key.clone(), ValueVariants::String(id)))
                .collect();
            let filter = Filter {
                should: Some(conditions),
                min_should: None,
                must: None,
                must_not: None,
            };
            shard.update(UpdateOperation::PointOperation(
                PointOperations::DeletePointsByFilter(filter),
            ))
        })
        .await
    }

    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        filter: MetadataFilter,
        limit: usize,
    ) -> Result<Vec<ScoredChunk>, RetrievalError> {
        let shard = self.shards.shard(collection)?;
        run_blocking(RetrievalError::Dense, move || {
            let request = QueryRequest {
                prefetches: vec![],
                query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: vector.into(),
                    using: None,
                }))),
                filter: qdrant_filter(&filter)?,
                score_threshold: None,
                limit,
                offset: 0,
                // Used where a segment is quantized; ignored elsewhere.
                params: Some(SearchParams {
                    quantization: Some(QuantizationSearchParams {
                        ignore: false,
                        rescore: Some(true),
                        oversampling: Some(OVERSAMPLING),
                    }),
                    ..SearchParams::default()
                }),
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(true),
            };
            shard
                .edge
                .query(request)?
                .into_iter()
                .map(|point| {
                    let payload = point.payload.map(|p| p.0).unwrap_or_default();
                    Ok(ScoredChunk {
                        chunk: chunk_from_payload(payload)?,
                        score: point.score,
                    })
                })
                .collect()
        })
        .await
    }

    async fn document_ids(&self, collection: &str) -> Result<HashSet<String>, RetrievalError> {
        let shard = self.shards.shard(collection)?;
        run_blocking(RetrievalError::Dense, move || {
            Self::document_ids_blocking(&shard.edge)
        })
        .await
    }

    async fn flush(&self, collection: &str) -> Result<(), RetrievalError> {
        let shard = self.shards.shard(collection)?;
        run_blocking(RetrievalError::Dense, move || shard.flush()).await
    }

    async fn export_page(
        &self,
        collection: &str,
        from: Option<ExportCursor>,
        limit: usize,
    ) -> Result<(Vec<EmbeddedChunk>, Option<ExportCursor>), RetrievalError> {
        let shard = self.shards.shard(collection)?;
        run_blocking(RetrievalError::Dense, move || {
            let (records, next) = shard.edge.scroll(ScrollRequest {
                offset: from.map(|c| cursor_point(&c)).transpose()?,
                limit: Some(limit),
                filter: None,
                with_payload: Some(WithPayloadInterface::Bool(true)),
                with_vector: WithVector::Bool(true),
                order_by: None,
            })?;
            let mut chunks = Vec::with_capacity(records.len());
            for record in records {
                let payload = record.payload.map(|p| p.0).unwrap_or_default();
                let vector = dense_vector(record.vector)
                    .ok_or_else(|| RetrievalError::Dense("a point has no dense vector".into()))?;
                let chunk = chunk_from_payload(payload)?;
                chunks.push(EmbeddedChunk { chunk, vector });
            }
            Ok((chunks, next.map(|id| ExportCursor(id.to_string()))))
        })
        .await
    }
}

/// The point a cursor names (ids are UUIDs; a number is taken as a numeric id).
fn cursor_point(cursor: &ExportCursor) -> Result<PointId, RetrievalError> {
    if let Ok(number) = cursor.0.parse::<u64>() {
        return Ok(PointId::NumId(number));
    }
    Uuid::parse_str(&cursor.0)
        .map(PointId::Uuid)
        .map_err(|_| RetrievalError::Dense(format!("not an export cursor: {}", cursor.0)))
}

fn dense_vector(vector: Option<VectorStructInternal>) -> Option<Vec<f32>> {
    match vector? {
        VectorStructInternal::Single(vector) => Some(vector),
        VectorStructInternal::Named(named) => named.into_values().find_map(|v| match v {
            VectorInternal::Dense(vector) => Some(vector),
            _ => None,
        }),
        VectorStructInternal::MultiDense(_) => None,
    }
}

/// Points per scroll page when listing a collection.
const SCROLL_PAGE: usize = 1_000;

impl EdgeDenseStore {
    fn document_ids_blocking(shard: &EdgeShard) -> Result<HashSet<String>, RetrievalError> {
        let mut ids = HashSet::new();
        let mut offset = None;
        loop {
            let (records, next) = shard.scroll(ScrollRequest {
                offset,
                limit: Some(SCROLL_PAGE),
                filter: None,
                with_payload: Some(WithPayloadInterface::Fields(vec![json_path("doc_id")?])),
                with_vector: WithVector::Bool(false),
                order_by: None,
            })?;
            for record in records {
                if let Some(Value::String(id)) = record.payload.and_then(|mut p| p.0.remove("doc_id")) {
                    ids.insert(id);
                }
            }
            match next {
                Some(next) => offset = Some(next),
                None => return Ok(ids),
            }
        }
    }
}

fn point_id(chunk_id: &str) -> PointId {
    PointId::Uuid(chunk_uuid(chunk_id))
}

/// Qdrant wants u64 or UUID ids; a hash of the chunk id makes re-ingest overwrite in place (the
/// same id in the embedded and the server store).
pub(crate) fn chunk_uuid(chunk_id: &str) -> Uuid {
    let digest = Sha256::digest(chunk_id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

pub(crate) fn payload(chunk: &Chunk) -> Value {
    json!({
        "chunk_id": chunk.chunk_id,
        "doc_id": chunk.doc_id,
        "text": chunk.text,
        "metadata": chunk.metadata,
    })
}

pub(crate) fn chunk_from_payload(mut payload: Map<String, Value>) -> Result<Chunk, RetrievalError> {
    let mut text_field = |name: &str| match payload.remove(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(RetrievalError::Dense(format!("point payload lacks `{name}`"))),
    };
    let chunk_id = text_field("chunk_id")?;
    let doc_id = text_field("doc_id")?;
    let text = text_field("text")?;
    let metadata = match payload.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok(Chunk {
        chunk_id,
        doc_id,
        text,
        metadata,
    })
}

fn qdrant_filter(filter: &MetadataFilter) -> Result<Option<Filter>, RetrievalError> {
    if filter.is_empty() {
        return Ok(None);
    }
    let must = filter
        .iter()
        .map(|(key, value)| {
            let value = match value {
                FilterValue::String(s) => ValueVariants::String(s.clone()),
                FilterValue::Integer(i) => ValueVariants::Integer(*i),
                FilterValue::Bool(b) => ValueVariants::Bool(*b),
            };
            Ok(match_condition(json_path(&format!("metadata.{key}"))?, value))
        })
        .collect::<Result<Vec<_>, RetrievalError>>()?;
    Ok(Some(Filter {
        should: None,
        min_should: None,
        must: Some(must),
        must_not: None,
    }))
}

fn match_condition(key: JsonPath, value: ValueVariants) -> Condition {
    Condition::Field(FieldCondition::new_match(key, Match::Value(MatchValue { value })))
}

fn json_path(path: &str) -> Result<JsonPath, RetrievalError> {
    JsonPath::try_from(path).map_err(|_| RetrievalError::Dense(format!("invalid payload path `{path}`")))
}

fn poisoned() -> RetrievalError {
    RetrievalError::Dense("shard map lock poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(doc: &str, n: usize, x: f32) -> EmbeddedChunk {
        EmbeddedChunk {
            chunk: Chunk {
                chunk_id: format!("{doc}#{n}"),
                doc_id: doc.to_string(),
                text: format!("{doc} part {n}"),
                metadata: Map::new(),
            },
            vector: vec![x, 1.0 - x, 0.5, 0.25],
        }
    }

    #[tokio::test]
    async fn documents_are_deleted_through_the_doc_id_index_kept_with_the_shard() -> Result<(), RetrievalError>
    {
        let dir = tempfile::tempdir().map_err(|e| RetrievalError::Dense(e.to_string()))?;
        let store = EdgeDenseStore::new(dir.path(), 4);
        store.open_collection("notes").await?;
        let chunks = (0..3)
            .flat_map(|n| [chunk("a", n, 0.1), chunk("b", n, 0.9)])
            .collect();
        store.upsert("notes", chunks).await?;
        store.delete_documents("notes", vec!["a".into()]).await?;
        store.flush("notes").await?;
        let (first, next) = store.export_page("notes", None, 2).await?;
        let (rest, end) = store.export_page("notes", next, 2).await?;
        assert_eq!(end, None, "two pages hold the three chunks left");
        let mut left: Vec<String> = first.into_iter().chain(rest).map(|c| c.chunk.chunk_id).collect();
        left.sort();
        assert_eq!(left, ["b#0", "b#1", "b#2"]);
        drop(store);

        let reopened = EdgeDenseStore::new(dir.path(), 4);
        reopened.open_collection("notes").await?;
        let shard = reopened.shards.shard("notes")?;
        let indexed = shard.edge.info().payload_schema;
        assert!(indexed.contains_key(&json_path("doc_id")?), "{indexed:?}");
        Ok(())
    }

    /// A pseudo-random 384-dimensional vector of its own per document (above Qdrant's indexing
    /// threshold at a few thousand points).
    fn spread(doc: usize) -> EmbeddedChunk {
        let mut state = (doc as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        let vector = (0..384)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2_000) as f32 / 1_000.0 - 1.0
            })
            .collect();
        EmbeddedChunk {
            chunk: Chunk {
                chunk_id: format!("d{doc}#0"),
                doc_id: format!("d{doc}"),
                text: String::new(),
                metadata: Map::new(),
            },
            vector,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_grown_shard_is_indexed_in_the_background_and_still_found() -> Result<(), RetrievalError> {
        let dir = tempfile::tempdir().map_err(|e| RetrievalError::Dense(e.to_string()))?;
        let store = EdgeDenseStore::optimizing_after(dir.path(), 384, DenseStorage::default(), 4_000);
        store.open_collection("big").await?;
        for first in (0..9_000).step_by(1_000) {
            store
                .upsert("big", (first..first + 1_000).map(spread).collect())
                .await?;
        }
        let shard = store.shards.shard("big")?;
        let started = std::time::Instant::now();
        while shard.edge.info().indexed_vectors_count == 0 {
            assert!(
                started.elapsed().as_secs() < 120,
                "never indexed: {:?}",
                shard.edge.info().indexed_vectors_count
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let hits = store.search("big", spread(8_003).vector, Vec::new(), 5).await?;
        assert_eq!(hits.first().map(|h| h.chunk.doc_id.as_str()), Some("d8003"));
        // A drop while an optimizer run holds the shard (held here as a run holds it) does not
        // wait for the run: the name stays taken until the run ends and the files are gone.
        let (go_on, ended) = std::sync::mpsc::channel::<()>();
        let (held, holding) = std::sync::mpsc::channel::<()>();
        let run = {
            let shard = shard.clone();
            std::thread::spawn(move || {
                let _running = shard.optimizing.lock();
                let _ = held.send(());
                let _ = ended.recv();
            })
        };
        holding.recv().map_err(|e| RetrievalError::Dense(e.to_string()))?;
        drop(shard);
        store.drop_collection("big").await?;
        assert!(store
            .search("big", spread(1).vector, Vec::new(), 1)
            .await
            .is_err());
        assert!(
            dir.path().join("big").exists(),
            "the run's files stay while it runs"
        );
        let remade = store.open_collection("big").await;
        assert!(
            matches!(&remade, Err(RetrievalError::Dense(why)) if why.contains("still being removed")),
            "re-made while its files stay: {remade:?}"
        );
        let _ = go_on.send(());
        run.join()
            .map_err(|_| RetrievalError::Dense("the run panicked".into()))?;
        let started = std::time::Instant::now();
        while dir.path().join("big").exists() {
            assert!(started.elapsed().as_secs() < 300, "the dropped files stay");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut opened = store.open_collection("big").await;
        while opened.is_err() && started.elapsed().as_secs() < 300 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            opened = store.open_collection("big").await;
        }
        opened?;
        assert!(store
            .search("big", spread(1).vector, Vec::new(), 1)
            .await?
            .is_empty());
        Ok(())
    }
}
