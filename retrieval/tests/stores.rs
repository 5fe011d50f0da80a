//! Qdrant Edge and tantivy on disk: upsert, search, filters, delete, reopen.

use ragway_retrieval::{
    Chunk, DenseStore, EdgeDenseStore, EmbeddedChunk, FilterValue, KeywordStore, TantivyKeywordStore,
};
use serde_json::{json, Map, Value};

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

#[tokio::test]
async fn dense_store_searches_filters_deletes_and_persists() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    {
        let store = EdgeDenseStore::new(dir.path(), 4);
        store.open_collection("c").await?;
        let embedded = chunks()
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| EmbeddedChunk {
                chunk,
                vector: axis(i),
            })
            .collect();
        store.upsert("c", embedded).await?;
        let hits = store.search("c", axis(2), vec![], 10).await?;
        assert_eq!(hits.len(), 4);
        assert_eq!(hits[0].chunk.chunk_id, "python#0");
        assert!((hits[0].score - 1.0).abs() < 1e-6);
        assert_eq!(hits[0].chunk.metadata["year"], 1991);

        let german = store
            .search(
                "c",
                axis(0),
                vec![("lang".into(), FilterValue::String("de".into()))],
                10,
            )
            .await?;
        assert_eq!(german.len(), 1);
        assert_eq!(german[0].chunk.doc_id, "kaffee");
        let by_year = store
            .search(
                "c",
                axis(3),
                vec![("year".into(), FilterValue::Integer(2015))],
                10,
            )
            .await?;
        assert_eq!(by_year.len(), 2);
        let drafts = store
            .search("c", axis(3), vec![("draft".into(), FilterValue::Bool(true))], 10)
            .await?;
        assert_eq!(drafts.len(), 1);

        store.delete_documents("c", vec!["rust".into()]).await?;
        assert_eq!(store.search("c", axis(0), vec![], 10).await?.len(), 2);
        assert!(store.search("missing", axis(0), vec![], 10).await.is_err());
    }
    // A new store on the same directory sees the same points.
    let store = EdgeDenseStore::new(dir.path(), 4);
    store.open_collection("c").await?;
    let hits = store.search("c", axis(3), vec![], 10).await?;
    let ids: Vec<_> = hits.iter().map(|h| h.chunk.chunk_id.as_str()).collect();
    assert_eq!(ids, ["kaffee#0", "python#0"]);
    store.drop_collection("c").await?;
    assert!(!dir.path().join("c").exists());
    Ok(())
}

#[tokio::test]
async fn keyword_store_ranks_with_bm25_filters_deletes_and_persists() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    {
        let store = TantivyKeywordStore::new(dir.path());
        store.open_collection("c").await?;
        store.upsert("c", chunks()).await?;
        // Stemming: "crate" matches "crates"; query syntax characters are plain text.
        let hits = store.search("c", "crate (build:)".into(), vec![], 10).await?;
        assert_eq!(hits[0].chunk.chunk_id, "rust#1");
        assert_eq!(hits[0].chunk.metadata["lang"], "en");
        assert!(store.search("c", "   ".into(), vec![], 10).await?.is_empty());
        let filtered = store
            .search(
                "c",
                "Rust Python".into(),
                vec![("year".into(), FilterValue::Integer(1991))],
                10,
            )
            .await?;
        assert_eq!(filtered.len(), 1);
        assert_eq!(filtered[0].chunk.doc_id, "python");

        // Re-upserting a chunk id replaces it instead of duplicating it.
        store
            .upsert(
                "c",
                vec![chunk(
                    "python",
                    0,
                    "Python is named after Monty Python",
                    json!({}),
                )],
            )
            .await?;
        let python = store.search("c", "python".into(), vec![], 10).await?;
        assert_eq!(python.len(), 1);
        assert!(python[0].chunk.text.contains("Monty"));

        store.delete_documents("c", vec!["rust".into()]).await?;
        assert!(store
            .search("c", "rust cargo".into(), vec![], 10)
            .await?
            .is_empty());
    }
    let store = TantivyKeywordStore::new(dir.path());
    store.open_collection("c").await?;
    assert_eq!(
        store.search("c", "kaffee bohnen".into(), vec![], 10).await?.len(),
        1
    );
    Ok(())
}
