//! Fusion methods over a grid of parameters on trec-dl-5k, from the same two engine lists per
//! query (300 hits each, straight from the stores the gateway uses), and the default chosen by
//! robustness: the judged queries are cut into 4 folds, and a setting's score is its *worst*
//! fold's ratio of nDCG@10 to the better single engine on that fold. How well that choice carries
//! to queries it was not chosen on is shown by choosing on 3 folds and scoring the 4th, in turn.

use std::collections::HashMap;

use ragway_gateway::http::AppState;
use ragway_retrieval::{fuse, Fusion, Normalization, Priority, ScoredChunk};

use crate::quality::{doc_ranking, mean, Scores};

const FOLDS: usize = 4;

/// Every setting the grid tries.
fn grid() -> Vec<Fusion> {
    let alphas = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
    let mut grid = Vec::new();
    for k in [10.0, 20.0, 40.0, 60.0, 100.0] {
        for alpha in [0.3, 0.5, 0.7, 0.9] {
            grid.push(Fusion::Rrf { k, alpha });
        }
    }
    for normalization in [Normalization::MinMax, Normalization::ZScore] {
        for alpha in alphas {
            grid.push(Fusion::Convex { alpha, normalization });
        }
    }
    for alpha in alphas {
        grid.push(Fusion::Dbsf { alpha });
    }
    grid
}

/// One judged query's two engine lists.
struct Lists {
    dense: Vec<ScoredChunk>,
    keyword: Vec<ScoredChunk>,
    judged: HashMap<String, u32>,
}

async fn lists(
    state: &AppState,
    queries: &[(String, String)],
    qrels: &HashMap<String, HashMap<String, u32>>,
) -> anyhow::Result<Vec<Lists>> {
    let pipeline = &state.pipeline;
    let mut all = Vec::new();
    for (qid, text) in queries {
        let Some(judged) = qrels.get(qid) else { continue };
        let embedded = pipeline
            .embedder
            .embed(vec![text.clone()], Priority::Interactive)
            .await?;
        let vector = embedded.vectors.into_iter().next().unwrap_or_default();
        all.push(Lists {
            dense: pipeline.dense.search("trec", vector, vec![], 300).await?,
            keyword: pipeline.keyword.search("trec", text.clone(), vec![], 300).await?,
            judged: judged.clone(),
        });
    }
    Ok(all)
}

/// Per-query scores of a ranking function over `lists`.
fn scores(lists: &[Lists], rank: impl Fn(&Lists) -> Vec<ScoredChunk>) -> Scores {
    let mut scores = Scores::default();
    for l in lists {
        scores.add(&doc_ranking(&rank(l), 100), &l.judged);
    }
    scores
}

/// nDCG@10 per fold (queries by index mod [`FOLDS`]).
fn by_fold(ndcg: &[f64]) -> Vec<f64> {
    (0..FOLDS)
        .map(|f| mean(&ndcg.iter().skip(f).step_by(FOLDS).copied().collect::<Vec<_>>()))
        .collect()
}

/// Per fold, the setting's nDCG@10 over the better single engine's.
fn ratios(setting: &[f64], best_single: &[f64]) -> Vec<f64> {
    setting.iter().zip(best_single).map(|(s, b)| s / b).collect()
}

fn worst(ratios: &[f64]) -> f64 {
    ratios.iter().copied().fold(f64::INFINITY, f64::min)
}

pub async fn run(
    state: &AppState,
    queries: &[(String, String)],
    qrels: &HashMap<String, HashMap<String, u32>>,
) -> anyhow::Result<()> {
    let lists = lists(state, queries, qrels).await?;
    let bm25 = scores(&lists, |l| l.keyword.clone());
    let dense = scores(&lists, |l| l.dense.clone());
    let (bm25_folds, dense_folds) = (by_fold(&bm25.ndcg10), by_fold(&dense.ndcg10));
    let best_single: Vec<f64> = bm25_folds
        .iter()
        .zip(&dense_folds)
        .map(|(a, b)| a.max(*b))
        .collect();
    println!(
        "\n### Retrieval quality and fusion (trec-dl-5k, {} judged queries, {FOLDS} folds)\n",
        lists.len()
    );
    println!("| engine / fusion | nDCG@10 | nDCG@10 (2^g−1) | Recall@100 | MRR@10 | worst fold ÷ best engine | mean fold ÷ best engine |");
    println!("|---|---|---|---|---|---|---|");
    let (keyword_engine, dense_engine) = match state.config.store.kind {
        ragway_gateway::config::StoreKind::Edge => ("tantivy", "Qdrant Edge"),
        ragway_gateway::config::StoreKind::Qdrant => ("Qdrant sparse vectors", "Qdrant server"),
    };
    println!("| BM25 ({keyword_engine}) | {} | | |", bm25.cells());
    println!("| dense (MiniLM + {dense_engine}) | {} | | |", dense.cells());
    let mut results = Vec::new();
    for fusion in grid() {
        let s = scores(&lists, |l| fuse(&fusion, Some(&l.dense), Some(&l.keyword), 600));
        let folds = by_fold(&s.ndcg10);
        let r = ratios(&folds, &best_single);
        println!(
            "| {fusion} | {} | {:.3} | {:.3} |",
            s.cells(),
            worst(&r),
            mean(&r)
        );
        results.push((fusion, folds));
    }
    choose(&results, &best_single);
    Ok(())
}

/// The most robust setting over `folds` (worst ratio first, then mean ratio).
fn most_robust(results: &[(Fusion, Vec<f64>)], best_single: &[f64], folds: &[usize]) -> (Fusion, f64) {
    let pick = |v: &[f64]| folds.iter().map(|&f| v[f]).collect::<Vec<f64>>();
    results
        .iter()
        .map(|(fusion, per_fold)| {
            let r = ratios(&pick(per_fold), &pick(best_single));
            (*fusion, worst(&r), mean(&r))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1).then(a.2.total_cmp(&b.2)))
        .map(|(fusion, worst, _)| (fusion, worst))
        .unwrap_or((Fusion::default(), 0.0))
}

/// Prints the chosen default, and how choosing on 3 folds carries to the 4th.
fn choose(results: &[(Fusion, Vec<f64>)], best_single: &[f64]) {
    let all: Vec<usize> = (0..FOLDS).collect();
    let (default, worst_ratio) = most_robust(results, best_single, &all);
    println!("\nMost robust on all folds: **{default}** (worst fold {worst_ratio:.3} × the better single engine).\n");
    println!("| held-out fold | chosen on the other 3 | its nDCG@10 ÷ best engine on the held-out fold |\n|---|---|---|");
    let mut held = Vec::new();
    for out in 0..FOLDS {
        let rest: Vec<usize> = all.iter().copied().filter(|&f| f != out).collect();
        let (chosen, _) = most_robust(results, best_single, &rest);
        let per_fold = results
            .iter()
            .find(|(f, _)| *f == chosen)
            .map(|(_, v)| v[out])
            .unwrap_or(0.0);
        let ratio = per_fold / best_single[out];
        held.push(ratio);
        println!("| {out} | {chosen} | {ratio:.3} |");
    }
    println!(
        "\nHeld-out ratio: mean {:.3}, worst {:.3}.",
        mean(&held),
        worst(&held)
    );
}
