//! trec-dl-5k through the real HTTP API: ingest, `/search` latency, and retrieval quality per engine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use ragway_gateway::config::Config;
use ragway_retrieval::{reciprocal_rank_fusion, Priority, ScoredChunk};
use serde_json::{json, Value};

use crate::speed::{median, percentile};

pub fn data_dir() -> PathBuf {
    std::env::var_os("RAGWAY_TREC_DL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/trec-dl-5k"))
}

struct Dataset {
    corpus: Vec<(String, String)>,
    queries: Vec<(String, String)>,
    /// query id → doc id → grade
    qrels: HashMap<String, HashMap<String, u32>>,
}

fn load() -> anyhow::Result<Dataset> {
    let dir = data_dir();
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

/// The first `n` passages of trec-dl-5k.
pub fn trec_passages(n: usize) -> anyhow::Result<Vec<String>> {
    Ok(load()?.corpus.into_iter().take(n).map(|(_, text)| text).collect())
}

/// Doc ids in rank order, first chunk of each doc counts.
fn doc_ranking(hits: &[ScoredChunk], limit: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    hits.iter()
        .filter(|h| seen.insert(h.chunk.doc_id.clone()))
        .map(|h| h.chunk.doc_id.clone())
        .take(limit)
        .collect()
}

#[derive(Default)]
struct Scores {
    ndcg10: Vec<f64>,
    recall100: Vec<f64>,
    mrr10: Vec<f64>,
}

impl Scores {
    /// nDCG@10 with linear graded gains; Recall@100 and MRR@10 count grade ≥ 1 as relevant
    /// (BEIR's conventions).
    fn add(&mut self, ranking: &[String], judged: &HashMap<String, u32>) {
        let gain = |d: &String| f64::from(*judged.get(d).unwrap_or(&0));
        let dcg: f64 = ranking
            .iter()
            .take(10)
            .enumerate()
            .map(|(i, d)| gain(d) / (i as f64 + 2.0).log2())
            .sum();
        let mut ideal: Vec<f64> = judged.values().map(|&g| f64::from(g)).collect();
        ideal.sort_by(|a, b| b.total_cmp(a));
        let idcg: f64 = ideal
            .iter()
            .take(10)
            .enumerate()
            .map(|(i, g)| g / (i as f64 + 2.0).log2())
            .sum();
        self.ndcg10.push(if idcg > 0.0 { dcg / idcg } else { 0.0 });
        let relevant: HashSet<&String> = judged.iter().filter(|(_, &g)| g > 0).map(|(d, _)| d).collect();
        let found = ranking.iter().take(100).filter(|d| relevant.contains(d)).count();
        self.recall100.push(found as f64 / relevant.len().max(1) as f64);
        let first = ranking.iter().take(10).position(|d| relevant.contains(d));
        self.mrr10
            .push(first.map(|p| 1.0 / (p as f64 + 1.0)).unwrap_or(0.0));
    }

    fn row(&self, name: &str) -> String {
        let mean = |xs: &Vec<f64>| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        format!(
            "| {name} | {:.4} | {:.4} | {:.4} |",
            mean(&self.ndcg10),
            mean(&self.recall100),
            mean(&self.mrr10)
        )
    }
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

    // Quality per engine, straight from the stores the gateway uses.
    let pipeline = &state.pipeline;
    let mut by_engine: BTreeMap<&str, Scores> = BTreeMap::new();
    for (qid, text) in &data.queries {
        let Some(judged) = data.qrels.get(qid) else {
            continue;
        };
        let vector = pipeline
            .embedder
            .embed(vec![text.clone()], Priority::Interactive)
            .await?
            .vectors
            .remove(0);
        let dense = pipeline.dense.search("trec", vector, vec![], 300).await?;
        let keyword = pipeline.keyword.search("trec", text.clone(), vec![], 300).await?;
        let hybrid = reciprocal_rank_fusion(&[dense.clone(), keyword.clone()], 60.0, 600);
        by_engine
            .entry("BM25 (tantivy)")
            .or_default()
            .add(&doc_ranking(&keyword, 100), judged);
        by_engine
            .entry("dense (MiniLM + Qdrant Edge)")
            .or_default()
            .add(&doc_ranking(&dense, 100), judged);
        by_engine
            .entry("hybrid RRF (k=60)")
            .or_default()
            .add(&doc_ranking(&hybrid, 100), judged);
    }
    println!(
        "\n### Retrieval quality (trec-dl-5k, {} judged queries)\n",
        by_engine.values().next().map(|s| s.ndcg10.len()).unwrap_or(0)
    );
    println!("| engine | nDCG@10 | Recall@100 | MRR@10 |\n|---|---|---|---|");
    for (name, scores) in &by_engine {
        println!("{}", scores.row(name));
    }
    Ok(())
}
