//! Issue 39: what the dense store's storage settings cost in retrieval quality. On trec-dl-5k and
//! vaswani, each passage chunked as a collection's default chunking cuts it and embedded by the
//! shipped embedder (cached under ~/.cache/ragway/bench, never in the repo), the same vectors go
//! into three Qdrant Edge shards: exact f32 (what a collection below the optimizers' threshold
//! gets, and every collection got before), f32 with HNSW (the optimizers run at once), and the
//! new default (int8 quantization in memory, originals memory-mapped, HNSW, 2× oversampled and
//! rescored). Dense nDCG@10 of each over the judged queries, side by side.

use std::path::PathBuf;

use ragway_gateway::config::Config;
use ragway_retrieval::{DenseStorage, DenseStore, EdgeDenseStore, EmbeddedChunk, Priority};

use crate::quality::{doc_ranking, load_from, mean, Scores};

/// Where the benchmarks keep what they embedded once (never in the repository).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/ragway/bench")
}

/// Vectors of `texts`, from the cache when `name`'s were made before.
async fn embedded(
    state: &ragway_gateway::http::AppState,
    name: &str,
    texts: &[String],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let path = cache_dir().join(format!("{name}.vectors.json"));
    if let Ok(bytes) = std::fs::read(&path) {
        let cached: Vec<Vec<f32>> = serde_json::from_slice(&bytes)?;
        if cached.len() == texts.len() {
            return Ok(cached);
        }
    }
    let mut all = Vec::with_capacity(texts.len());
    for part in texts.chunks(256) {
        let embedded = state
            .pipeline
            .embedder
            .embed(part.to_vec(), Priority::Bulk)
            .await?;
        all.extend(embedded.vectors);
        eprintln!("{name}: embedded {} of {}", all.len(), texts.len());
    }
    std::fs::create_dir_all(cache_dir())?;
    std::fs::write(&path, serde_json::to_vec(&all)?)?;
    Ok(all)
}

pub async fn run() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let mut config = Config::load(None, &Default::default()).map_err(anyhow::Error::msg)?;
    config.server.data_dir = scratch.path().join("server");
    let (state, _) = crate::serve(config).await?;
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    println!("\n### Dense retrieval quality by storage (nDCG@10, dense only)\n");
    println!(
        "| set | chunks | exact f32 | HNSW f32 | HNSW int8 + originals on disk, rescored | int8 ÷ exact |"
    );
    println!("|---|---|---|---|---|---|");
    for name in ["trec-dl-5k", "vaswani"] {
        let data = load_from(&shared.join(name))?;
        let chunks = data.chunks();
        let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
        let vectors = embedded(&state, name, &texts).await?;
        let judged: Vec<_> = data
            .queries
            .iter()
            .filter_map(|(qid, text)| Some((text.clone(), data.qrels.get(qid)?.clone())))
            .collect();
        let query_texts: Vec<String> = judged.iter().map(|(t, _)| t.clone()).collect();
        let queries = embedded(&state, &format!("{name}.queries"), &query_texts).await?;
        let settings = [
            (false, false, usize::MAX),
            (false, false, 1_000),
            (true, true, 1_000),
        ];
        let mut cells = Vec::new();
        for (quantized, vectors_on_disk, after) in settings {
            let dir = scratch.path().join(format!("{name}-{quantized}-{after}"));
            let storage = DenseStorage {
                quantized,
                vectors_on_disk,
            };
            let store = EdgeDenseStore::optimizing_after(&dir, vectors[0].len(), storage, after);
            store.open_collection("c").await?;
            let embedded: Vec<EmbeddedChunk> = chunks
                .iter()
                .cloned()
                .zip(vectors.iter().cloned())
                .map(|(chunk, vector)| EmbeddedChunk { chunk, vector })
                .collect();
            for part in embedded.chunks(1_000) {
                store.upsert("c", part.to_vec()).await?;
            }
            store.flush("c").await?;
            if after != usize::MAX {
                let (points, indexed) = store.optimize_now("c")?;
                eprintln!("{name} quantized={quantized}: {indexed} of {points} indexed");
            }
            let mut scores = Scores::default();
            for ((_, qrels), query) in judged.iter().zip(&queries) {
                let hits = store.search("c", query.clone(), Default::default(), 100).await?;
                scores.add(&doc_ranking(&hits, 100), qrels);
            }
            cells.push(mean(&scores.ndcg10));
        }
        println!(
            "| {name} | {} | {:.4} | {:.4} | {:.4} | {:.4} |",
            chunks.len(),
            cells[0],
            cells[1],
            cells[2],
            cells[2] / cells[0]
        );
    }
    Ok(())
}
