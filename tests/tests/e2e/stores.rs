//! The store backends behind the same traits: the embedded pair (Qdrant Edge + tantivy on disk)
//! and a Qdrant server (dense + BM25 sparse vectors in one collection). Each test runs against
//! both: upsert, search, filters, delete, and reopening (for the server: after it was killed).
//! The server tests skip, saying why, where no `qdrant` binary exists.

use std::sync::Arc;
use std::time::Duration;

use ragway_e2e::QdrantServer;
use ragway_retrieval::{
    fuse, Chunk, DenseStore, EdgeDenseStore, EmbeddedChunk, FilterValue, Fusion, HybridQuery, HybridStore,
    KeywordStore, QdrantOptions, QdrantStore, TantivyKeywordStore,
};
use serde_json::{json, Map, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn chunk(doc: &str, n: usize, text: &str, metadata: Value) -> Chunk {
    Chunk {
        chunk_id: format!("{doc}#{n}"),
        doc_id: doc.to_string(),
        text: text.to_string(),
        metadata: metadata.as_object().cloned().unwrap_or_else(Map::new),
    }
}

fn chunks() -> Vec<Chunk> {
    vec![
        chunk(
            "rust",
            0,
            "Rust has ownership and borrowing rules",
            json!({"lang": "en", "year": 2015}),
        ),
        chunk(
            "rust",
            1,
            "Cargo builds Rust crates",
            json!({"lang": "en", "year": 2015}),
        ),
        chunk(
            "python",
            0,
            "Python uses indentation for blocks",
            json!({"lang": "en", "year": 1991}),
        ),
        chunk(
            "kaffee",
            0,
            "Kaffee wird aus gerösteten Bohnen gebrüht",
            json!({"lang": "de", "draft": true}),
        ),
    ]
}

/// Unit vectors along distinct axes, so nearest neighbours are known exactly.
fn axis(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; 4];
    v[i % 4] = 1.0;
    v
}

/// One backend's dense and keyword stores, and how to get fresh ones over the same data.
struct Backend {
    dense: Arc<dyn DenseStore>,
    keyword: Arc<dyn KeywordStore>,
    place: Place,
}

enum Place {
    Disk(tempfile::TempDir),
    Server(QdrantServer),
}

impl Backend {
    fn embedded() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        Ok(Self::on_disk(Place::Disk(dir)))
    }

    fn on_disk(place: Place) -> Self {
        let Place::Disk(dir) = &place else {
            unreachable!("on_disk takes a directory")
        };
        Self {
            dense: Arc::new(EdgeDenseStore::new(&dir.path().join("dense"), 4)),
            keyword: Arc::new(TantivyKeywordStore::new(&dir.path().join("keyword"))),
            place,
        }
    }

    fn server(test: &str) -> anyhow::Result<Option<Self>> {
        let Some(server) = QdrantServer::start_or_skip(test)? else {
            return Ok(None);
        };
        Ok(Some(Self::on_server(Place::Server(server))?))
    }

    fn on_server(place: Place) -> anyhow::Result<Self> {
        let Place::Server(server) = &place else {
            anyhow::bail!("on_server takes a server")
        };
        let store = Arc::new(qdrant_store(&server.grpc_url())?);
        Ok(Self {
            dense: store.clone(),
            keyword: store,
            place,
        })
    }

    /// New stores over the same data: a reopened directory, or a Qdrant server killed (SIGKILL)
    /// and started again on its storage.
    fn reopen(self) -> anyhow::Result<Self> {
        match self.place {
            Place::Disk(dir) => Ok(Self::on_disk(Place::Disk(dir))),
            Place::Server(mut server) => {
                server.kill();
                server.restart()?;
                Self::on_server(Place::Server(server))
            }
        }
    }

    async fn open(&self, collection: &str) -> TestResult {
        self.dense.open_collection(collection).await?;
        self.keyword.open_collection(collection).await?;
        Ok(())
    }

    /// Writes chunks as ingestion does: embedded to the dense store, text to the keyword store.
    async fn write(&self, collection: &str, chunks: Vec<Chunk>) -> TestResult {
        let embedded = chunks
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, chunk)| EmbeddedChunk {
                chunk,
                vector: axis(i),
            })
            .collect();
        self.dense.upsert(collection, embedded).await?;
        self.keyword.upsert(collection, chunks).await?;
        self.dense.flush(collection).await?;
        Ok(())
    }

    async fn delete(&self, collection: &str, doc: &str) -> TestResult {
        self.dense.delete_documents(collection, vec![doc.into()]).await?;
        self.keyword
            .delete_documents(collection, vec![doc.into()])
            .await?;
        Ok(())
    }
}

fn qdrant_store(url: &str) -> anyhow::Result<QdrantStore> {
    Ok(QdrantStore::new(QdrantOptions {
        urls: vec![url.to_string()],
        api_key: None,
        dimension: 4,
        prefix: "test_".into(),
        shards: 1,
        replication_factor: 1,
        write_consistency_factor: 1,
        average_terms: 6.0,
        timeout: Duration::from_secs(10),
    })?)
}

async fn dense_searches_filters_deletes_and_persists(backend: Backend) -> TestResult {
    backend.open("c").await?;
    backend.write("c", chunks()).await?;
    let dense = &backend.dense;
    let hits = dense.search("c", axis(2), vec![], 10).await?;
    assert_eq!(hits.len(), 4);
    assert_eq!(hits[0].chunk.chunk_id, "python#0");
    assert!((hits[0].score - 1.0).abs() < 1e-6);
    assert_eq!(hits[0].chunk.metadata["year"], 1991);

    let german = vec![("lang".into(), FilterValue::String("de".into()))];
    let german = dense.search("c", axis(0), german, 10).await?;
    assert_eq!(german.len(), 1);
    assert_eq!(german[0].chunk.doc_id, "kaffee");
    let by_year = vec![("year".into(), FilterValue::Integer(2015))];
    assert_eq!(dense.search("c", axis(3), by_year, 10).await?.len(), 2);
    let drafts = vec![("draft".into(), FilterValue::Bool(true))];
    assert_eq!(dense.search("c", axis(3), drafts, 10).await?.len(), 1);

    backend.delete("c", "rust").await?;
    assert_eq!(dense.search("c", axis(0), vec![], 10).await?.len(), 2);
    assert!(dense.search("missing", axis(0), vec![], 10).await.is_err());

    let backend = backend.reopen()?;
    backend.open("c").await?;
    let hits = backend.dense.search("c", axis(3), vec![], 10).await?;
    let ids: Vec<_> = hits.iter().map(|h| h.chunk.chunk_id.as_str()).collect();
    assert_eq!(ids, ["kaffee#0", "python#0"]);
    let documents = backend.dense.document_ids("c").await?;
    assert_eq!(documents, ["kaffee".to_string(), "python".to_string()].into());

    // Exported a page at a time (what a snapshot holds at once): every chunk once, with its vector.
    let (mut exported, mut from) = (Vec::new(), None);
    for _ in 0..10 {
        let (page, next) = backend.dense.export_page("c", from, 1).await?;
        assert!(page.len() <= 1, "a page of one");
        exported.extend(page);
        match next {
            Some(next) => from = Some(next),
            None => break,
        }
    }
    let mut exported_ids: Vec<_> = exported.iter().map(|c| c.chunk.chunk_id.as_str()).collect();
    exported_ids.sort();
    assert_eq!(exported_ids, ["kaffee#0", "python#0"]);
    assert!(exported.iter().all(|c| c.vector.len() == axis(0).len()));
    backend.dense.drop_collection("c").await?;
    backend.keyword.drop_collection("c").await?;
    assert!(backend.dense.search("c", axis(3), vec![], 10).await.is_err());
    Ok(())
}

async fn keyword_ranks_with_bm25_filters_deletes_and_persists(backend: Backend) -> TestResult {
    backend.open("c").await?;
    backend.write("c", chunks()).await?;
    let keyword = &backend.keyword;
    // Stemming: "crate" matches "crates"; query syntax characters are plain text.
    let hits = keyword.search("c", "crate (build:)".into(), vec![], 10).await?;
    assert_eq!(hits[0].chunk.chunk_id, "rust#1");
    assert_eq!(hits[0].chunk.metadata["lang"], "en");
    assert!(keyword.search("c", "   ".into(), vec![], 10).await?.is_empty());
    let year = vec![("year".into(), FilterValue::Integer(1991))];
    let filtered = keyword.search("c", "Rust Python".into(), year, 10).await?;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].chunk.doc_id, "python");
    // A rarer term weighs more (IDF): "ownership" (one chunk) beats "rust" (two chunks).
    let rare = keyword.search("c", "rust ownership".into(), vec![], 10).await?;
    assert_eq!(rare[0].chunk.chunk_id, "rust#0");

    // Re-upserting a chunk id replaces it instead of duplicating it.
    let renamed = chunk("python", 0, "Python is named after Monty Python", json!({}));
    backend.write("c", vec![renamed]).await?;
    let python = keyword.search("c", "python".into(), vec![], 10).await?;
    assert_eq!(python.len(), 1);
    assert!(python[0].chunk.text.contains("Monty"));

    backend.delete("c", "rust").await?;
    assert!(keyword
        .search("c", "rust cargo".into(), vec![], 10)
        .await?
        .is_empty());

    let backend = backend.reopen()?;
    backend.open("c").await?;
    let found = backend
        .keyword
        .search("c", "kaffee bohnen".into(), vec![], 10)
        .await?;
    assert_eq!(found.len(), 1);
    Ok(())
}

#[tokio::test]
async fn embedded_dense_store() -> TestResult {
    dense_searches_filters_deletes_and_persists(Backend::embedded()?).await
}

#[tokio::test]
async fn embedded_keyword_store() -> TestResult {
    keyword_ranks_with_bm25_filters_deletes_and_persists(Backend::embedded()?).await
}

#[tokio::test]
async fn qdrant_server_dense_store() -> TestResult {
    let Some(backend) = Backend::server("qdrant_server_dense_store")? else {
        return Ok(());
    };
    dense_searches_filters_deletes_and_persists(backend).await
}

#[tokio::test]
async fn qdrant_server_keyword_store() -> TestResult {
    let Some(backend) = Backend::server("qdrant_server_keyword_store")? else {
        return Ok(());
    };
    keyword_ranks_with_bm25_filters_deletes_and_persists(backend).await
}

/// Both engines in one round trip: each engine's own list, and — for the fusions Qdrant runs as
/// ragway does (equal-weight RRF, DBSF) — Qdrant's fusion of the two prefetches, which ranks as
/// ragway's fusion of the two lists; other fusions are left to ragway. A filter applies to all.
#[tokio::test]
async fn qdrant_server_searches_both_engines_in_one_round_trip() -> TestResult {
    let Some(backend) = Backend::server("qdrant_server_searches_both_engines_in_one_round_trip")? else {
        return Ok(());
    };
    backend.open("c").await?;
    backend.write("c", chunks()).await?;
    let Place::Server(server) = &backend.place else {
        unreachable!("a server backend")
    };
    let store = qdrant_store(&server.grpc_url())?;
    // The dense query points at python#0 (axis 2); the words at rust#1: each engine has its own
    // first hit.
    let mut vector = axis(2);
    vector[0] = 0.9;
    let query = |fusion: Fusion, filter: Vec<(String, FilterValue)>| HybridQuery {
        vector: vector.clone(),
        text: "cargo rust".into(),
        filter,
        depth: 10,
        limit: 3,
        fusion,
    };
    let ids = |hits: &[ragway_retrieval::ScoredChunk]| -> Vec<String> {
        hits.iter().map(|h| h.chunk.chunk_id.clone()).collect()
    };
    for fusion in [Fusion::Rrf { k: 60.0, alpha: 0.5 }, Fusion::Dbsf { alpha: 0.5 }] {
        let found = store.search_both("c", query(fusion, vec![])).await?;
        assert_eq!(ids(&found.dense)[0], "python#0", "{fusion}");
        assert_eq!(ids(&found.keyword)[0], "rust#1", "{fusion}");
        let fused = found.fused.ok_or(format!("{fusion}: Qdrant did not fuse"))?;
        assert_eq!(fused.len(), 3, "{fusion}");
        let ours = fuse(&fusion, Some(&found.dense), Some(&found.keyword), 3);
        assert_eq!(
            ids(&fused),
            ids(&ours),
            "{fusion}: Qdrant's fusion ranks otherwise than ragway's"
        );
        let german = vec![("lang".into(), FilterValue::String("de".into()))];
        let only = store.search_both("c", query(fusion, german)).await?;
        assert_eq!(ids(&only.fused.unwrap_or_default()), ["kaffee#0"], "{fusion}");
        assert_eq!(ids(&only.dense), ["kaffee#0"], "{fusion}");
    }
    let weighted = store
        .search_both("c", query(Fusion::Rrf { k: 60.0, alpha: 0.9 }, vec![]))
        .await?;
    assert!(weighted.fused.is_none(), "weighted RRF is ragway's to run");
    assert_eq!(ids(&weighted.dense)[0], "python#0");
    Ok(())
}
