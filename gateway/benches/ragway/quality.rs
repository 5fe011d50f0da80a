//! trec-dl-5k through the real HTTP API: ingest, `/search` latency, and retrieval quality per engine.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use ragway_gateway::config::Config;
use ragway_retrieval::ScoredChunk;
use serde_json::{json, Value};

use crate::speed::{median, percentile};

pub fn data_dir() -> PathBuf {
    std::env::var_os("RAGWAY_TREC_DL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/trec-dl-5k"))
}

pub struct Dataset {
    pub corpus: Vec<(String, String)>,
    pub queries: Vec<(String, String)>,
    /// query id → doc id → grade
    pub qrels: HashMap<String, HashMap<String, u32>>,
}

fn load() -> anyhow::Result<Dataset> {
    load_from(&data_dir())
}

/// A judged set in BEIR's layout (corpus.jsonl, queries.jsonl, qrels.tsv) under `dir`.
pub fn load_from(dir: &std::path::Path) -> anyhow::Result<Dataset> {
    let jsonl = |name: &str| -> anyhow::Result<Vec<Value>> {
        let text = std::fs::read_to_string(dir.join(name))
            .map_err(|e| anyhow::anyhow!("{}: {e} (set RAGWAY_TREC_DL)", dir.join(name).display()))?;
        Ok(text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
    };
    let field = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let corpus = jsonl("corpus.jsonl")?
        .iter()
        .map(|v| (field(v, "_id"), field(v, "text")))
        .collect();
    let queries = jsonl("queries.jsonl")?
        .iter()
        .map(|v| (field(v, "_id"), field(v, "text")))
        .collect();
    let mut qrels: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for line in std::fs::read_to_string(dir.join("qrels.tsv"))?.lines() {
        let parts: Vec<&str> = line.split('\t').collect();
        if let [q, d, g] = parts[..] {
            qrels.entry(q.into()).or_default().insert(d.into(), g.parse()?);
        }
    }
    Ok(Dataset {
        corpus,
        queries,
        qrels,
    })
}

/// trec-dl-5k's queries, `(id, text)`.
pub fn trec_queries() -> anyhow::Result<Vec<(String, String)>> {
    Ok(load()?.queries)
}

impl Dataset {
    /// Its passages cut by a collection's default chunking, in corpus order.
    pub fn chunks(&self) -> Vec<ragway_retrieval::Chunk> {
        self.corpus
            .iter()
            .flat_map(|(id, text)| {
                let options = ragway_retrieval::ChunkingOptions::default();
                ragway_retrieval::chunk_document(id, text, &serde_json::Map::new(), options)
            })
            .collect()
    }
}

/// The first `n` passages of trec-dl-5k.
pub fn trec_passages(n: usize) -> anyhow::Result<Vec<String>> {
    Ok(load()?.corpus.into_iter().take(n).map(|(_, text)| text).collect())
}

/// Doc ids in rank order, first chunk of each doc counts.
pub fn doc_ranking(hits: &[ScoredChunk], limit: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    hits.iter()
        .filter(|h| seen.insert(h.chunk.doc_id.clone()))
        .map(|h| h.chunk.doc_id.clone())
        .take(limit)
        .collect()
}

#[derive(Default, Clone)]
pub struct Scores {
    pub ndcg10: Vec<f64>,
    /// nDCG@10 with exponential gains (2^grade − 1).
    pub ndcg10_exp: Vec<f64>,
    pub recall100: Vec<f64>,
    pub mrr10: Vec<f64>,
}

/// DCG@10 of `ranking` with `gain` per grade, over the ideal DCG@10 of `judged`.
fn ndcg10(ranking: &[String], judged: &HashMap<String, u32>, gain: impl Fn(u32) -> f64) -> f64 {
    let at = |i: usize| (i as f64 + 2.0).log2();
    let dcg: f64 = ranking
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, d)| gain(*judged.get(d).unwrap_or(&0)) / at(i))
        .sum();
    let mut ideal: Vec<f64> = judged.values().map(|&g| gain(g)).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal.iter().take(10).enumerate().map(|(i, g)| g / at(i)).sum();
    if idcg > 0.0 {
        dcg / idcg
    } else {
        0.0
    }
}

impl Scores {
    /// nDCG@10 with linear and with exponential graded gains; Recall@100 and MRR@10 count
    /// grade ≥ 1 as relevant (BEIR's conventions).
    pub fn add(&mut self, ranking: &[String], judged: &HashMap<String, u32>) {
        self.ndcg10.push(ndcg10(ranking, judged, f64::from));
        self.ndcg10_exp
            .push(ndcg10(ranking, judged, |g| 2f64.powi(g as i32) - 1.0));
        let relevant: HashSet<&String> = judged.iter().filter(|(_, &g)| g > 0).map(|(d, _)| d).collect();
        let found = ranking.iter().take(100).filter(|d| relevant.contains(d)).count();
        self.recall100.push(found as f64 / relevant.len().max(1) as f64);
        let first = ranking.iter().take(10).position(|d| relevant.contains(d));
        self.mrr10
            .push(first.map(|p| 1.0 / (p as f64 + 1.0)).unwrap_or(0.0));
    }

    /// `| nDCG@10 | nDCG@10 (exp) | Recall@100 | MRR@10 |` cells, means over the queries.
    pub fn cells(&self) -> String {
        format!(
            "{:.4} | {:.4} | {:.4} | {:.4}",
            mean(&self.ndcg10),
            mean(&self.ndcg10_exp),
            mean(&self.recall100),
            mean(&self.mrr10)
        )
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

pub async fn search() -> anyhow::Result<()> {
    let data = load()?;
    // RAGWAY_BENCH_DATA keeps the ingested collection between runs, so latency and quality can
    // be measured again without re-embedding 10k chunks.
    let scratch = tempfile::tempdir()?;
    let data_dir = std::env::var_os("RAGWAY_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let reuse = data_dir.join("collections/trec.json").is_file();
    // The shipped defaults, and any RAGWAY__SECTION__KEY overrides from the environment.
    let mut config = Config::load(None, &Default::default()).map_err(anyhow::Error::msg)?;
    config.server.data_dir = data_dir;
    let (state, base) = crate::serve(config).await?;
    let http = reqwest::Client::new();

    // 40-word chunks with 8 words of overlap turn the 5,000 passages into ~10k chunks.
    if !reuse {
        http.post(format!("{base}/v1/collections"))
            .json(&json!({"name": "trec", "chunk_words": 40, "chunk_overlap_words": 8}))
            .send()
            .await?
            .error_for_status()?;
    }
    let started = Instant::now();
    for batch in data.corpus.chunks(500).filter(|_| !reuse) {
        let documents: Vec<Value> = batch
            .iter()
            .map(|(id, text)| json!({"id": id, "text": text}))
            .collect();
        // Background jobs (they run one at a time); waited for below.
        http.post(format!("{base}/v1/collections/trec/documents"))
            .json(&json!({ "documents": documents, "wait": false }))
            .send()
            .await?
            .error_for_status()?;
    }
    loop {
        let jobs: Value = http
            .get(format!("{base}/v1/collections/trec/jobs"))
            .send()
            .await?
            .json()
            .await?;
        let states: Vec<&str> = jobs["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j["state"].as_str())
            .collect();
        anyhow::ensure!(!states.contains(&"failed"), "an ingest job failed: {jobs}");
        if states.iter().all(|s| *s == "done") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let ingest_s = started.elapsed().as_secs_f64();
    let info: Value = http
        .get(format!("{base}/v1/collections/trec"))
        .send()
        .await?
        .json()
        .await?;
    let chunks = info["chunks"].as_u64().unwrap_or(0);

    println!("\n### Ingest and `/search` over HTTP (trec-dl-5k, {chunks} chunks)\n");
    if reuse {
        println!("(Collection reused from RAGWAY_BENCH_DATA; ingest not measured in this run.)\n");
    } else {
        println!(
            "Ingest: {} passages → {chunks} chunks in {ingest_s:.1} s ({:.1} chunks/s, embedding included).\n",
            data.corpus.len(),
            chunks as f64 / ingest_s
        );
    }
    if std::env::var_os("RAGWAY_BENCH_INGEST_ONLY").is_some() {
        return Ok(());
    }
    // Latency: the 50 queries once with a cold L2 (embedding computed), then 10 more rounds with
    // the query embedding cached.
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for round in 0..11 {
        for (_, text) in &data.queries {
            let started = Instant::now();
            let reply: Value = http
                .post(format!("{base}/v1/collections/trec/search"))
                .json(&json!({"query": text, "top_k": 10}))
                .send()
                .await?
                .json()
                .await?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            assert_eq!(reply["mode"], "normal");
            if round == 0 {
                cold.push(ms)
            } else {
                warm.push(ms)
            }
        }
    }
    println!("| queries | requests | p50 ms | p99 ms |\n|---|---|---|---|");
    println!(
        "| distinct (embedding computed) | {} | {:.1} | {:.1} |",
        cold.len(),
        median(cold.clone()),
        percentile(cold, 0.99)
    );
    println!(
        "| repeated (embedding from L2 cache) | {} | {:.1} | {:.1} |",
        warm.len(),
        median(warm.clone()),
        percentile(warm, 0.99)
    );

    crate::fusion_grid::run(&state, &data.queries, &data.qrels).await?;
    Ok(())
}
