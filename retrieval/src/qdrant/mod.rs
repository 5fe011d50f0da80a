//! A Qdrant server as the store (`qdrant-client`, gRPC), for ragway replicas that share one
//! engine. Each collection is one Qdrant collection whose points carry both vectors of a chunk:
//! `dense` (the embedding, cosine) and `bm25` (a sparse vector of term weights with the `idf`
//! modifier), and the chunk as payload. ragway computes the term weights — tantivy's English
//! analyzer (the one the embedded keyword store uses), BM25's saturation and length norm — and
//! Qdrant applies IDF over the whole collection at query time, so keyword search runs in the same
//! engine, and hybrid search runs in one round trip, fused there where Qdrant fuses as ragway does
//! ([`HybridStore`]).
//!
//! One [`QdrantStore`] is both the [`DenseStore`] and the [`KeywordStore`]: writes go through the
//! dense side (which has the embeddings and the text, and writes each point whole); the keyword
//! side's writes are no-ops, and it only searches.
//!
//! It talks to one Qdrant server or to any number of the nodes of one cluster ([`nodes`]: spread
//! over the healthy ones, a failed one skipped at once). A collection of a cluster is created with
//! `shards` shards of `replication_factor` replicas each; Qdrant applies a write to every active
//! replica of its shard before it answers (a replica that failed it is first marked dead through
//! the cluster's consensus), so with two replicas an acknowledged write outlives any one node.

mod nodes;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vector_output::Vector as DenseOrOther;
use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance,
    FieldType, Filter, Fusion as QdrantFusion, Modifier, NamedVectors, PayloadIncludeSelector, PointId,
    PointStruct, PrefetchQueryBuilder, Query, QueryBatchPointsBuilder, QueryPoints, QueryPointsBuilder,
    RetrievedPoint, Rrf, ScoredPoint, ScrollPointsBuilder, SparseVectorParamsBuilder,
    SparseVectorsConfigBuilder, UpsertPointsBuilder, Value as QdrantValue, Vector, VectorInput,
    VectorParamsBuilder, VectorsConfigBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer, TokenStream,
};

use crate::dense::{self, chunk_uuid, DenseStore, ExportCursor};
use crate::error::RetrievalError;
use crate::filter::{FilterValue, MetadataFilter};
use crate::fusion::Fusion;
use crate::hybrid::{HybridHits, HybridQuery, HybridStore};
use crate::keyword::KeywordStore;
use crate::types::{Chunk, EmbeddedChunk, ScoredChunk};

const DENSE: &str = "dense";
const SPARSE: &str = "bm25";
/// BM25's term-frequency saturation and length normalisation (tantivy's defaults).
const K1: f32 = 1.2;
const B: f32 = 0.75;
/// Points per upsert call and per scroll page.
const BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct QdrantOptions {
    /// The gRPC addresses of the nodes, e.g. `http://127.0.0.1:6334`: one server, or nodes of
    /// one cluster.
    pub urls: Vec<String>,
    pub api_key: Option<String>,
    /// The embedding dimension of new collections.
    pub dimension: usize,
    /// Qdrant collection names are `<prefix><ragway collection>`.
    pub prefix: String,
    /// For new collections.
    pub shards: u32,
    pub replication_factor: u32,
    /// The replicas of a shard that must have applied a write before Qdrant acknowledges it.
    pub write_consistency_factor: u32,
    /// BM25's average document length in terms: the chunk size, which bounds every chunk.
    pub average_terms: f32,
    pub timeout: Duration,
}

pub struct QdrantStore {
    nodes: nodes::Nodes,
    options: QdrantOptions,
    analyzer: TextAnalyzer,
}

impl QdrantStore {
    pub fn new(options: QdrantOptions) -> Result<Self, RetrievalError> {
        let build = |url: &str| {
            Qdrant::from_url(url)
                .api_key(options.api_key.clone())
                .timeout(options.timeout)
                .connect_timeout(options.timeout)
                .skip_compatibility_check()
                .build()
                .map_err(|e| format!("cannot reach Qdrant at {url}: {e}"))
        };
        let nodes = nodes::Nodes::new(&options.urls, build).map_err(RetrievalError::Dense)?;
        Ok(Self {
            nodes,
            options,
            analyzer: english_analyzer(),
        })
    }

    fn name(&self, collection: &str) -> String {
        format!("{}{collection}", self.options.prefix)
    }

    /// The query's terms, each once: Qdrant multiplies their IDF with each chunk's weight.
    pub fn query_terms(&self, text: &str) -> (Vec<u32>, Vec<f32>) {
        let mut terms: Vec<u32> = analyze(&self.analyzer, text).into_iter().map(term_id).collect();
        terms.sort_unstable();
        terms.dedup();
        let weights = vec![1.0; terms.len()];
        (terms, weights)
    }

    /// A chunk's BM25 term weights (IDF left to Qdrant).
    pub fn chunk_terms(&self, text: &str) -> (Vec<u32>, Vec<f32>) {
        let tokens = analyze(&self.analyzer, text);
        let length = tokens.len() as f32;
        let mut counts: HashMap<u32, f32> = HashMap::new();
        for token in tokens {
            *counts.entry(term_id(token)).or_default() += 1.0;
        }
        let norm = K1 * (1.0 - B + B * length / self.options.average_terms.max(1.0));
        let mut terms: Vec<(u32, f32)> = counts
            .into_iter()
            .map(|(id, tf)| (id, tf * (K1 + 1.0) / (tf + norm)))
            .collect();
        terms.sort_unstable_by_key(|(id, _)| *id);
        terms.into_iter().unzip()
    }

    async fn create(&self, name: &str) -> Result<(), QdrantError> {
        let mut vectors = VectorsConfigBuilder::default();
        vectors.add_named_vector_params(
            DENSE,
            VectorParamsBuilder::new(self.options.dimension as u64, Distance::Cosine),
        );
        let mut sparse = SparseVectorsConfigBuilder::default();
        sparse.add_named_vector_params(
            SPARSE,
            SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
        );
        let create = CreateCollectionBuilder::new(name)
            .vectors_config(vectors)
            .sparse_vectors_config(sparse)
            .shard_number(self.options.shards)
            .replication_factor(self.options.replication_factor)
            .write_consistency_factor(self.options.write_consistency_factor)
            .build();
        self.nodes
            .send(&create, |c, r| async move { c.create_collection(r).await })
            .await?;
        let index = CreateFieldIndexCollectionBuilder::new(name, "doc_id", FieldType::Keyword)
            .wait(true)
            .build();
        self.nodes
            .send(&index, |c, r| async move { c.create_field_index(r).await })
            .await?;
        Ok(())
    }

    async fn query(
        &self,
        collection: &str,
        request: QueryPointsBuilder,
        error: fn(QdrantError) -> RetrievalError,
    ) -> Result<Vec<ScoredChunk>, RetrievalError> {
        let request = request.build();
        let reply = self
            .nodes
            .send(&request, |c, r| async move { c.query(r).await })
            .await
            .map_err(|e| failed(collection, e, error))?;
        reply.result.into_iter().map(scored_chunk).collect()
    }

    fn request(&self, collection: &str, filter: &MetadataFilter, limit: usize) -> QueryPointsBuilder {
        let mut request = QueryPointsBuilder::new(self.name(collection))
            .limit(limit as u64)
            .with_payload(true);
        if let Some(filter) = qdrant_filter(filter) {
            request = request.filter(filter);
        }
        request
    }

    /// One page of up to `limit` points from `offset`, and where the next starts (`None`: that was
    /// the last): with its whole payload and vectors when `whole`, else with its `doc_id` only.
    async fn scroll_page(
        &self,
        collection: &str,
        offset: Option<PointId>,
        limit: usize,
        whole: bool,
    ) -> Result<(Vec<RetrievedPoint>, Option<PointId>), RetrievalError> {
        let mut scroll = ScrollPointsBuilder::new(self.name(collection))
            .limit(limit as u32)
            .with_vectors(whole);
        scroll = if whole {
            scroll.with_payload(true)
        } else {
            scroll.with_payload(PayloadIncludeSelector::new(vec!["doc_id".to_string()]))
        };
        if let Some(offset) = offset {
            scroll = scroll.offset(offset);
        }
        let scroll = scroll.build();
        let page = self
            .nodes
            .send(&scroll, |c, r| async move { c.scroll(r).await })
            .await
            .map_err(|e| failed(collection, e, dense_error))?;
        let next = page
            .next_page_offset
            .filter(|next| next.point_id_options.is_some());
        Ok((page.result, next))
    }

    /// The request of one engine's search.
    fn engine_request(
        &self,
        collection: &str,
        filter: &MetadataFilter,
        limit: usize,
        query: Query,
        using: &str,
    ) -> QueryPoints {
        self.request(collection, filter, limit)
            .query(query)
            .using(using)
            .build()
    }
}

/// `fusion` as Qdrant's Query API runs it, where that ranks exactly as ragway's own: equal-weight
/// RRF (Qdrant scores a hit at 0-based position `p` with `1 / (k' + p)`, ragway at 1-based rank
/// `r` with `1 / (k + r)`, so `k' = k + 1`) and equal-weight DBSF. Qdrant's weighted RRF divides
/// the rank by the weight instead of scaling the score, so ragway's `alpha` has no equivalent.
fn server_fusion(fusion: &Fusion) -> Option<Query> {
    match *fusion {
        Fusion::Rrf { k, alpha } if alpha == 0.5 && k >= 0.0 && k.fract() == 0.0 => {
            Some(Query::new_rrf(Rrf {
                k: Some(k as u32 + 1),
                weights: Vec::new(),
            }))
        }
        Fusion::Dbsf { alpha: 0.5 } => Some(Query::new_fusion(QdrantFusion::Dbsf)),
        _ => None,
    }
}

#[async_trait]
impl HybridStore for QdrantStore {
    /// One `query_batch`: the dense search, the sparse (BM25) search, and — where Qdrant runs the
    /// fusion asked for — both again as prefetches fused in Qdrant.
    async fn search_both(&self, collection: &str, query: HybridQuery) -> Result<HybridHits, RetrievalError> {
        let HybridQuery {
            vector,
            text,
            filter,
            depth,
            limit,
            fusion,
        } = query;
        let (terms, weights) = self.query_terms(&text);
        let dense = Query::new_nearest(vector);
        let mut batch = vec![self.engine_request(collection, &filter, depth, dense.clone(), DENSE)];
        let fused = server_fusion(&fusion).filter(|_| !terms.is_empty());
        if !terms.is_empty() {
            let sparse = Query::new_nearest(VectorInput::new_sparse(terms, weights));
            batch.push(self.engine_request(collection, &filter, depth, sparse.clone(), SPARSE));
            if let Some(fusion) = fused.clone() {
                let prefetch = |query: Query, using: &str| {
                    let mut prefetch = PrefetchQueryBuilder::default()
                        .query(query)
                        .using(using)
                        .limit(depth as u64);
                    if let Some(filter) = qdrant_filter(&filter) {
                        prefetch = prefetch.filter(filter);
                    }
                    prefetch
                };
                let request = self
                    .request(collection, &MetadataFilter::new(), limit)
                    .add_prefetch(prefetch(dense, DENSE))
                    .add_prefetch(prefetch(sparse, SPARSE))
                    .query(fusion);
                batch.push(request.build());
            }
        }
        let batch = QueryBatchPointsBuilder::new(self.name(collection), batch).build();
        let reply = self
            .nodes
            .send(&batch, |c, r| async move { c.query_batch(r).await })
            .await
            .map_err(|e| failed(collection, e, dense_error))?;
        let mut lists = reply.result.into_iter().map(|list| {
            list.result
                .into_iter()
                .map(scored_chunk)
                .collect::<Result<Vec<_>, _>>()
        });
        let dense = lists.next().transpose()?.unwrap_or_default();
        let keyword = lists.next().transpose()?.unwrap_or_default();
        let fused = match fused {
            Some(_) => lists.next().transpose()?,
            // No query terms: the keyword side found nothing, and ragway's fusion of the dense
            // list alone is what any fusion gives.
            None => None,
        };
        Ok(HybridHits {
            dense,
            keyword,
            fused,
        })
    }
}

fn english_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(Stemmer::new(Language::English))
        .build()
}

fn analyze(analyzer: &TextAnalyzer, text: &str) -> Vec<String> {
    let mut analyzer = analyzer.clone();
    let mut stream = analyzer.token_stream(text);
    let mut tokens = Vec::new();
    while stream.advance() {
        tokens.push(stream.token().text.clone());
    }
    tokens
}

/// A term's sparse index: a stable hash (FNV-1a), the same on every replica and version.
fn term_id(term: String) -> u32 {
    term.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

fn payload(chunk: &Chunk) -> Result<Payload, RetrievalError> {
    Payload::try_from(dense::payload(chunk)).map_err(|e| RetrievalError::Dense(format!("chunk payload: {e}")))
}

fn scored_chunk(point: ScoredPoint) -> Result<ScoredChunk, RetrievalError> {
    Ok(ScoredChunk {
        chunk: chunk_from_payload(point.payload)?,
        score: point.score,
    })
}

fn chunk_from_payload(payload: HashMap<String, QdrantValue>) -> Result<Chunk, RetrievalError> {
    dense::chunk_from_payload(payload.into_iter().map(|(k, v)| (k, v.into_json())).collect())
}

fn qdrant_filter(filter: &MetadataFilter) -> Option<Filter> {
    if filter.is_empty() {
        return None;
    }
    let must = filter.iter().map(|(key, value)| {
        let field = format!("metadata.{key}");
        match value {
            FilterValue::String(s) => Condition::matches(field, s.clone()),
            FilterValue::Integer(i) => Condition::matches(field, *i),
            FilterValue::Bool(b) => Condition::matches(field, *b),
        }
    });
    Some(Filter::must(must))
}

fn doc_filter(doc_ids: Vec<String>) -> Filter {
    Filter::must([Condition::matches("doc_id", doc_ids)])
}

/// `UnknownCollection` when Qdrant says the collection does not exist; else the stage's error.
fn failed(collection: &str, error: QdrantError, stage: fn(QdrantError) -> RetrievalError) -> RetrievalError {
    match &error {
        QdrantError::ResponseError { status } if status.code() == tonic::Code::NotFound => {
            RetrievalError::UnknownCollection(collection.to_string())
        }
        _ => stage(error),
    }
}

fn dense_error(error: QdrantError) -> RetrievalError {
    RetrievalError::Dense(format!("Qdrant: {error}"))
}

fn keyword_error(error: QdrantError) -> RetrievalError {
    RetrievalError::Keyword(format!("Qdrant: {error}"))
}

#[async_trait]
impl DenseStore for QdrantStore {
    async fn open_collection(&self, collection: &str) -> Result<(), RetrievalError> {
        let name = self.name(collection);
        let exists = || {
            self.nodes
                .send(&name, |c, name| async move { c.collection_exists(name).await })
        };
        if exists().await.map_err(dense_error)? {
            return Ok(());
        }
        match self.create(&name).await {
            Ok(()) => Ok(()),
            // Another replica created it first.
            Err(_) if exists().await.unwrap_or(false) => Ok(()),
            Err(e) => Err(dense_error(e)),
        }
    }

    async fn drop_collection(&self, collection: &str) -> Result<(), RetrievalError> {
        let name = self.name(collection);
        self.nodes
            .send(&name, |c, name| async move { c.delete_collection(name).await })
            .await
            .map_err(dense_error)?;
        Ok(())
    }

    async fn upsert(&self, collection: &str, chunks: Vec<EmbeddedChunk>) -> Result<(), RetrievalError> {
        for batch in chunks.chunks(BATCH) {
            let points = batch
                .iter()
                .map(|embedded| {
                    let (terms, weights) = self.chunk_terms(&embedded.chunk.text);
                    let vectors = NamedVectors::default()
                        .add_vector(DENSE, embedded.vector.clone())
                        .add_vector(SPARSE, Vector::new_sparse(terms, weights));
                    Ok(PointStruct::new(
                        chunk_uuid(&embedded.chunk.chunk_id).to_string(),
                        vectors,
                        payload(&embedded.chunk)?,
                    ))
                })
                .collect::<Result<Vec<_>, RetrievalError>>()?;
            // `wait`: applied (and in Qdrant's WAL) before this returns.
            let upsert = UpsertPointsBuilder::new(self.name(collection), points)
                .wait(true)
                .build();
            self.nodes
                .send(&upsert, |c, r| async move { c.upsert_points(r).await })
                .await
                .map_err(|e| failed(collection, e, dense_error))?;
        }
        Ok(())
    }

    async fn delete_documents(&self, collection: &str, doc_ids: Vec<String>) -> Result<(), RetrievalError> {
        if doc_ids.is_empty() {
            return Ok(());
        }
        let delete = DeletePointsBuilder::new(self.name(collection))
            .points(doc_filter(doc_ids))
            .wait(true)
            .build();
        self.nodes
            .send(&delete, |c, r| async move { c.delete_points(r).await })
            .await
            .map_err(|e| failed(collection, e, dense_error))?;
        Ok(())
    }

    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        filter: MetadataFilter,
        limit: usize,
    ) -> Result<Vec<ScoredChunk>, RetrievalError> {
        let request = self
            .request(collection, &filter, limit)
            .query(Query::new_nearest(vector))
            .using(DENSE);
        self.query(collection, request, dense_error).await
    }

    async fn document_ids(&self, collection: &str) -> Result<HashSet<String>, RetrievalError> {
        let mut ids = HashSet::new();
        let mut offset = None;
        loop {
            let (points, next) = self.scroll_page(collection, offset, BATCH, false).await?;
            for point in points {
                if let Some(id) = point.payload.get("doc_id").and_then(|v| v.as_str()) {
                    ids.insert(id.to_string());
                }
            }
            match next {
                Some(next) => offset = Some(next),
                None => return Ok(ids),
            }
        }
    }

    async fn export_page(
        &self,
        collection: &str,
        from: Option<ExportCursor>,
        limit: usize,
    ) -> Result<(Vec<EmbeddedChunk>, Option<ExportCursor>), RetrievalError> {
        let offset = from.map(|ExportCursor(id)| match id.parse::<u64>() {
            Ok(number) => PointId::from(number),
            Err(_) => PointId::from(id),
        });
        let (points, next) = self.scroll_page(collection, offset, limit, true).await?;
        let mut chunks = Vec::with_capacity(points.len());
        for point in points {
            let vector = match point.vectors.and_then(|v| v.get_vector_by_name(DENSE)) {
                Some(DenseOrOther::Dense(dense)) => dense.data,
                _ => return Err(RetrievalError::Dense("a point has no dense vector".into())),
            };
            let chunk = chunk_from_payload(point.payload)?;
            chunks.push(EmbeddedChunk { chunk, vector });
        }
        let next = next.and_then(|id| match id.point_id_options? {
            PointIdOptions::Uuid(uuid) => Some(ExportCursor(uuid)),
            PointIdOptions::Num(number) => Some(ExportCursor(number.to_string())),
        });
        Ok((chunks, next))
    }

    /// Writes are acknowledged once applied (`wait`): nothing is left to flush.
    async fn flush(&self, _collection: &str) -> Result<(), RetrievalError> {
        Ok(())
    }
}

#[async_trait]
impl KeywordStore for QdrantStore {
    /// The dense side creates the collection, with both vectors.
    async fn open_collection(&self, _collection: &str) -> Result<(), RetrievalError> {
        Ok(())
    }

    async fn drop_collection(&self, _collection: &str) -> Result<(), RetrievalError> {
        Ok(())
    }

    /// The dense side writes each point with its sparse vector.
    async fn upsert(&self, _collection: &str, _chunks: Vec<Chunk>) -> Result<(), RetrievalError> {
        Ok(())
    }

    async fn delete_documents(&self, _collection: &str, _doc_ids: Vec<String>) -> Result<(), RetrievalError> {
        Ok(())
    }

    async fn search(
        &self,
        collection: &str,
        query: String,
        filter: MetadataFilter,
        limit: usize,
    ) -> Result<Vec<ScoredChunk>, RetrievalError> {
        let (terms, weights) = self.query_terms(&query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let request = self
            .request(collection, &filter, limit)
            .query(Query::new_nearest(VectorInput::new_sparse(terms, weights)))
            .using(SPARSE);
        self.query(collection, request, keyword_error).await
    }

    async fn document_ids(&self, collection: &str) -> Result<HashSet<String>, RetrievalError> {
        DenseStore::document_ids(self, collection).await
    }
}
