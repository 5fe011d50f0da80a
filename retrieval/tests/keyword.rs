//! The keyword store (real tantivy on disk): a collection costs threads only while it is written
//! to. Each test runs in a process of its own (nextest), so the process's threads are the store's.

use std::time::{Duration, Instant};

use ragway_retrieval::{Chunk, KeywordStore, MetadataFilter, TantivyKeywordStore};

/// Threads of this process that belong to tantivy writers (indexing, segment updates, merges).
fn writer_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return usize::MAX;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| {
            ["thrd-tantivy", "segment_updater", "merge_thread"]
                .iter()
                .any(|p| name.starts_with(p))
        })
        .count()
}

fn chunk(doc: &str, text: &str) -> Chunk {
    Chunk {
        chunk_id: format!("{doc}#0"),
        doc_id: doc.into(),
        text: text.into(),
        metadata: Default::default(),
    }
}

#[tokio::test]
async fn idle_collections_hold_no_writer_threads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = TantivyKeywordStore::new(dir.path());
    for n in 0..8 {
        store.open_collection(&format!("c{n}")).await?;
    }
    assert_eq!(writer_threads(), 0, "eight collections, none written to");
    store
        .upsert("c0", vec![chunk("d", "rivers carry sediment to the sea")])
        .await?;
    let writing = writer_threads();
    assert!((1..=3).contains(&writing), "one writer's threads: {writing}");
    let started = Instant::now();
    while writer_threads() > 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the idle writer was never closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let found = store
        .search("c0", "sediment".into(), MetadataFilter::default(), 5)
        .await?;
    assert_eq!(found.first().map(|h| h.chunk.doc_id.as_str()), Some("d"));
    // A later write opens a writer again.
    store
        .upsert("c0", vec![chunk("e", "deltas grow over centuries")])
        .await?;
    let found = store
        .search("c0", "deltas".into(), MetadataFilter::default(), 5)
        .await?;
    assert_eq!(found.first().map(|h| h.chunk.doc_id.as_str()), Some("e"));
    Ok(())
}
