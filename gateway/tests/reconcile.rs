//! A crash between the store writes and the manifest write leaves documents half indexed; opening
//! the collections again removes them from both stores and the manifest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ragway_gateway::caches::Caches;
use ragway_gateway::catalog::collections::{Caps, Collections, Followers, ManifestStore};
use ragway_gateway::config::Config;
use ragway_gateway::resilience::breaker::BreakerSettings;
use ragway_gateway::resilience::faults::Faults;
use ragway_gateway::resilience::guard::Guard;
use ragway_gateway::resilience::guarded::Guarded;
use ragway_openapi::DocumentInput;
use ragway_retrieval::{
    BertEmbedder, BertEmbedderOptions, Chunk, ChunkingOptions, DenseStore, EdgeDenseStore, EmbeddedChunk,
    Embedder, KeywordStore, Priority, TantivyKeywordStore,
};

fn models() -> PathBuf {
    let dir = ragway_gateway::config::default_models_dir().join("all-minilm-l6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        dir.display()
    );
    dir
}

fn doc(id: &str, text: &str) -> DocumentInput {
    DocumentInput {
        id: id.into(),
        text: text.into(),
        metadata: None,
        chunks: None,
        vector: None,
    }
}

fn chunk(doc_id: &str) -> Chunk {
    Chunk {
        chunk_id: format!("{doc_id}#0"),
        doc_id: doc_id.into(),
        text: format!("{doc_id} text"),
        metadata: Default::default(),
    }
}

async fn open(
    data: &Path,
    embedder: Arc<dyn Embedder>,
) -> anyhow::Result<(Collections, Arc<EdgeDenseStore>, Arc<TantivyKeywordStore>)> {
    let dense = Arc::new(EdgeDenseStore::new(&data.join("dense"), embedder.dimension()));
    let keyword = Arc::new(TantivyKeywordStore::new(&data.join("keyword")));
    let settings = BreakerSettings {
        failure_threshold: 3,
        open: Duration::from_secs(5),
        max_open: Duration::from_secs(5),
    };
    let guard = Guard::new(
        "embedder",
        Duration::from_secs(5),
        &settings,
        Arc::new(Faults::default()),
    );
    let embedder = Guarded::new(embedder, Arc::new(guard)).with_bulk_timeout(Duration::from_secs(60));
    let collections = Collections::open(
        ManifestStore::Files(data.join("collections")),
        Arc::new(embedder),
        dense.clone(),
        keyword.clone(),
        Followers {
            caches: Caches::new(&Config::default(), None),
            accounts: None,
        },
    )
    .await?;
    Ok((collections, dense, keyword))
}

#[tokio::test]
async fn half_indexed_documents_are_removed_from_both_stores_on_open() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let embedder: Arc<dyn Embedder> = Arc::new(BertEmbedder::load(
        &models(),
        "minilm",
        BertEmbedderOptions::default(),
    )?);
    let epoch_before = {
        let (collections, dense, keyword) = open(data.path(), embedder.clone()).await?;
        collections
            .create("c", ChunkingOptions::default(), None, None, Caps::server(10))
            .await?;
        let c = collections.get("c")?;
        let indexed = collections
            .apply_batch(
                &c,
                vec![
                    doc("kept", "stays in both stores"),
                    doc("torn", "loses its keyword side"),
                ],
                collections.stamp().await?,
                &std::sync::atomic::AtomicUsize::new(0),
            )
            .await?;
        // What an interrupted write can leave: a chunk in one store only, outside the manifest,
        // and a manifest document whose keyword side is gone.
        let vector = embedder
            .embed(vec!["ghost text".into()], Priority::Bulk)
            .await?
            .vectors
            .remove(0);
        dense
            .upsert(
                "c",
                vec![EmbeddedChunk {
                    chunk: chunk("ghost"),
                    vector,
                }],
            )
            .await?;
        keyword.upsert("c", vec![chunk("phantom")]).await?;
        keyword.delete_documents("c", vec!["torn".into()]).await?;
        indexed.epoch
    };
    let (collections, dense, keyword) = open(data.path(), embedder).await?;
    let only_kept: std::collections::HashSet<String> = ["kept".to_string()].into();
    assert_eq!(dense.document_ids("c").await?, only_kept);
    assert_eq!(keyword.document_ids("c").await?, only_kept);
    let info = collections.get("c")?.info();
    assert_eq!(info.documents, 1);
    assert!(info.epoch > epoch_before, "the change bumps the epoch");

    // A clean collection is left alone on the next open.
    drop((collections, dense, keyword));
    let embedder: Arc<dyn Embedder> = Arc::new(BertEmbedder::load(
        &models(),
        "minilm",
        BertEmbedderOptions::default(),
    )?);
    let (collections, _, _) = open(data.path(), embedder).await?;
    assert_eq!(collections.get("c")?.info().epoch, info.epoch);
    Ok(())
}
