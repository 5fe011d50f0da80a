//! Issue 27: fusion on two kinds of judged collection — trec-dl-5k (dense leads BM25) and vaswani
//! (BM25 and dense level) — from the same two engine lists per query (100 hits each, as the pipeline takes them, from the
//! stores the gateway uses: Qdrant Edge searched exactly, tantivy), each passage cut by the
//! default chunking and embedded by the shipped embedder (the vectors cached by the `storage`
//! benchmark under ~/.cache/ragway/bench). Every method, on both sets and on each of 4 folds of
//! their queries: nDCG@10, its ratio to the better single engine on the worst fold, and the gain
//! over the better engine on the whole set. The lists are also written to
//! ~/.cache/ragway/bench/<set>.lists.json for analysis outside.

use std::collections::HashMap;
use std::path::PathBuf;

use ragway_retrieval::{
    fuse, DenseStorage, DenseStore, EdgeDenseStore, EmbeddedChunk, Fusion, KeywordStore, Normalization,
    ScoredChunk, TantivyKeywordStore,
};
use serde_json::json;

use crate::quality::{doc_ranking, load_from, mean, Scores};
use crate::storage::cache_dir;

const FOLDS: usize = 4;
/// Hits per engine, as the pipeline takes them (`retrieval.candidates`).
const DEPTH: usize = 100;

struct Lists {
    dense: Vec<ScoredChunk>,
    keyword: Vec<ScoredChunk>,
    judged: HashMap<String, u32>,
}

fn cached(name: &str) -> anyhow::Result<Vec<Vec<f32>>> {
    let path = cache_dir().join(format!("{name}.vectors.json"));
    let bytes = std::fs::read(&path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}: run `cargo bench -p ragway-gateway --bench ragway -- storage` first (it embeds the sets once)",
            path.display()
        )
    })?;
    Ok(serde_json::from_slice(&bytes)?)
}

async fn lists(name: &str, scratch: &std::path::Path) -> anyhow::Result<Vec<Lists>> {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    let data = load_from(&shared.join(name))?;
    let chunks = data.chunks();
    let vectors = cached(name)?;
    anyhow::ensure!(
        vectors.len() == chunks.len(),
        "{name}: cached vectors do not match its chunks"
    );
    let exact = DenseStorage {
        quantized: false,
        vectors_on_disk: false,
    };
    let dense = EdgeDenseStore::optimizing_after(
        &scratch.join(format!("{name}-dense")),
        vectors[0].len(),
        exact,
        usize::MAX,
    );
    let keyword = TantivyKeywordStore::new(&scratch.join(format!("{name}-keyword")));
    dense.open_collection("c").await?;
    keyword.open_collection("c").await?;
    let embedded: Vec<EmbeddedChunk> = chunks
        .iter()
        .cloned()
        .zip(vectors)
        .map(|(chunk, vector)| EmbeddedChunk { chunk, vector })
        .collect();
    for part in embedded.chunks(1_000) {
        dense.upsert("c", part.to_vec()).await?;
        keyword
            .upsert("c", part.iter().map(|e| e.chunk.clone()).collect())
            .await?;
    }
    dense.flush("c").await?;
    let judged: Vec<_> = data
        .queries
        .iter()
        .filter_map(|(qid, text)| Some((text.clone(), data.qrels.get(qid)?.clone())))
        .collect();
    let queries = cached(&format!("{name}.queries"))?;
    let mut all = Vec::new();
    for ((text, judged), vector) in judged.into_iter().zip(queries) {
        all.push(Lists {
            dense: dense.search("c", vector, Vec::new(), DEPTH).await?,
            keyword: keyword.search("c", text, Vec::new(), DEPTH).await?,
            judged,
        });
    }
    let dump: Vec<_> = all
        .iter()
        .map(|l| {
            let list = |hits: &[ScoredChunk]| {
                hits.iter()
                    .map(|h| json!([h.chunk.doc_id, h.chunk.chunk_id, h.score]))
                    .collect::<Vec<_>>()
            };
            json!({"dense": list(&l.dense), "keyword": list(&l.keyword), "judged": l.judged})
        })
        .collect();
    std::fs::create_dir_all(cache_dir())?;
    std::fs::write(
        cache_dir().join(format!("{name}.lists.json")),
        serde_json::to_vec(&dump)?,
    )?;
    Ok(all)
}

/// The methods compared: each engine alone, the earlier default, classic RRF, the other fixed
/// fusions at equal weights, and the adaptive one.
fn methods() -> Vec<(String, Option<Fusion>)> {
    let mut methods: Vec<(String, Option<Fusion>)> = vec![("BM25".into(), None), ("dense".into(), None)];
    let fixed = [
        Fusion::Rrf { k: 60.0, alpha: 0.9 },
        Fusion::Rrf { k: 60.0, alpha: 0.5 },
        Fusion::Rrf { k: 60.0, alpha: 0.7 },
        Fusion::Convex {
            alpha: 0.5,
            normalization: Normalization::MinMax,
        },
        Fusion::Convex {
            alpha: 0.5,
            normalization: Normalization::ZScore,
        },
        Fusion::Dbsf { alpha: 0.5 },
        Fusion::Adaptive,
    ];
    methods.extend(fixed.into_iter().map(|f| (f.to_string(), Some(f))));
    methods
}

fn folds(ndcg: &[f64]) -> Vec<f64> {
    (0..FOLDS)
        .map(|f| mean(&ndcg.iter().skip(f).step_by(FOLDS).copied().collect::<Vec<_>>()))
        .collect()
}

pub async fn run() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let mut sets = Vec::new();
    for name in ["trec-dl-5k", "vaswani"] {
        sets.push((name, lists(name, scratch.path()).await?));
    }
    println!(
        "\n### Fusion on two kinds of collection (nDCG@10; {FOLDS} folds of each set's judged queries)\n"
    );
    println!("| method | trec-dl-5k | worst fold ÷ better engine | vaswani | worst fold ÷ better engine | mean gain over the better engine |");
    println!("|---|---|---|---|---|---|");
    let per_set: Vec<_> = sets
        .iter()
        .map(|(_, lists)| {
            let score = |rank: &dyn Fn(&Lists) -> Vec<ScoredChunk>| {
                let mut s = Scores::default();
                lists
                    .iter()
                    .for_each(|l| s.add(&doc_ranking(&rank(l), 100), &l.judged));
                s.ndcg10
            };
            let (bm25, dense) = (score(&|l| l.keyword.clone()), score(&|l| l.dense.clone()));
            let better: Vec<f64> = folds(&bm25)
                .iter()
                .zip(folds(&dense))
                .map(|(a, b)| a.max(b))
                .collect();
            (mean(&bm25).max(mean(&dense)), better)
        })
        .collect();
    for (label, fusion) in methods() {
        let mut cells = Vec::new();
        let mut gains = Vec::new();
        for ((_, lists), (better_whole, better_folds)) in sets.iter().zip(&per_set) {
            let mut s = Scores::default();
            for l in lists {
                let ranked = match (&fusion, label.as_str()) {
                    (Some(f), _) => fuse(f, Some(&l.dense), Some(&l.keyword), 600),
                    (None, "BM25") => l.keyword.clone(),
                    (None, _) => l.dense.clone(),
                };
                s.add(&doc_ranking(&ranked, 100), &l.judged);
            }
            let whole = mean(&s.ndcg10);
            let worst = folds(&s.ndcg10)
                .iter()
                .zip(better_folds)
                .map(|(f, b)| f / b)
                .fold(f64::INFINITY, f64::min);
            cells.push(format!("{whole:.4} | {worst:.3}"));
            gains.push(whole / better_whole - 1.0);
        }
        println!(
            "| {label} | {} | {:+.1}% |",
            cells.join(" | "),
            100.0 * mean(&gains)
        );
    }
    Ok(())
}
