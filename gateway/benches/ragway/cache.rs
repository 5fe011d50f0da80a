//! The cache layers over loopback HTTP on the real binary: L1-hit `/query` under wrk (local tier,
//! then the Redis tier alone), L4's time to first token for a repeated passage set, and the hit
//! ratio per layer replaying the trec-dl-5k queries with Zipf(1.1) popularity.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::load::{start_with, wrk_post, Ragway};
use crate::quality::trec_queries;
use crate::speed::{median, passages};

/// A redis-server (Debian's package) on a free port, for the shared-tier figures.
pub struct Redis(Child, pub u16);

impl Redis {
    pub fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("redis-server is needed (apt-get install redis-server): {e}"))?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self(child, port))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn post(http: &reqwest::Client, ragway: &Ragway, path: &str, body: &Value) -> anyhow::Result<Value> {
    Ok(http
        .post(format!("{}{path}", ragway.base))
        .json(body)
        .send()
        .await?
        .json()
        .await?)
}

async fn collection(
    http: &reqwest::Client,
    ragway: &Ragway,
    name: &str,
    texts: &[String],
) -> anyhow::Result<()> {
    post(http, ragway, "/v1/collections", &json!({"name": name})).await?;
    let documents: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": format!("p{i}"), "text": t}))
        .collect();
    let body = json!({"documents": documents, "wait": true});
    let reply = post(http, ragway, &format!("/v1/collections/{name}/documents"), &body).await?;
    // Large ingests are jobs: wait until it is done, so the epoch stops moving.
    if let Some(url) = reply["status_url"].as_str() {
        loop {
            let job: Value = http
                .get(format!("{}{url}", ragway.base))
                .send()
                .await?
                .json()
                .await?;
            match job["state"].as_str() {
                Some("done") => break,
                Some("queued" | "running") => tokio::time::sleep(Duration::from_millis(200)).await,
                _ => anyhow::bail!("ingest job ended: {job}"),
            }
        }
    }
    Ok(())
}

async fn metrics_text(http: &reqwest::Client, ragway: &Ragway) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{}/metrics", ragway.base))
        .send()
        .await?
        .text()
        .await?)
}

fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub async fn run() -> anyhow::Result<()> {
    println!("\n### Caches (loopback HTTP, the real binary)\n");
    l1_under_wrk().await?;
    miss_latency_without_redis().await?;
    l4_time_to_first_token().await?;
    hit_ratios().await
}

/// L1-hit `/query` with wrk, 64 connections, 30 s, 16 answered questions in turn: the in-process
/// tier, then Redis alone (`cache.local_tier = false`).
async fn l1_under_wrk() -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let redis = Redis::start()?;
    println!("| L1 tier | connections | requests/s | p50 ms | p99 ms | answers not from L1 |\n|---|---|---|---|---|---|");
    let questions: Vec<String> = trec_queries()?.into_iter().take(16).map(|(_, q)| q).collect();
    for (tier, config) in [
        ("in-process (moka)", String::new()),
        (
            "Redis only (no local tier)",
            format!(
                "[cache]\nlocal_tier = false\n\n[cache.redis]\nurl = \"redis://127.0.0.1:{}/0\"\n",
                redis.1
            ),
        ),
    ] {
        let data = tempfile::tempdir()?;
        let ragway = start_with(data.path(), &format!("[generation]\nmax_tokens = 8\n\n{config}")).await?;
        collection(&http, &ragway, "c", &passages(200)).await?;
        let bodies: Vec<Value> = questions
            .iter()
            .map(|q| json!({"query": q, "top_k": 3}))
            .collect();
        for body in &bodies {
            post(&http, &ragway, "/v1/collections/c/query", body).await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // background writes to Redis
        let metrics_before = metrics_text(&http, &ragway).await?;
        let (rate, p50, p99) = wrk_post(&ragway.base, "/v1/collections/c/query", &bodies, 30, 64)?;
        let metrics = metrics_text(&http, &ragway).await?;
        let misses = metric(
            &metrics,
            "ragway_cache_requests_total{layer=\"l1\",result=\"miss\"}",
        ) - metric(
            &metrics_before,
            "ragway_cache_requests_total{layer=\"l1\",result=\"miss\"}",
        );
        println!("| {tier} | 64 | {rate:.0} | {p50:.2} | {p99:.2} | {misses:.0} |");
    }
    Ok(())
}

/// `/search` misses (a new question each, so every layer misses) with Redis up, then killed
/// (once its breaker is open): what a Redis outage adds to an answer.
async fn miss_latency_without_redis() -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut redis = Redis::start()?;
    let data = tempfile::tempdir()?;
    let config = format!("[cache.redis]\nurl = \"redis://127.0.0.1:{}/0\"\n", redis.1);
    let ragway = start_with(data.path(), &config).await?;
    collection(&http, &ragway, "c", &passages(200)).await?;
    let run = |label: &'static str| {
        let (http, ragway) = (&http, &ragway);
        async move {
            let mut times = Vec::new();
            for i in 0..60 {
                let body =
                    json!({"query": format!("{label} question {i} about rivers and coffee"), "top_k": 5});
                let started = Instant::now();
                post(http, ragway, "/v1/collections/c/search", &body).await?;
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(times)
        }
    };
    let up = run("up").await?;
    redis.0.kill()?;
    redis.0.wait()?;
    let down = run("down").await?;
    let ready: Value = http
        .get(format!("{}/readyz", ragway.base))
        .send()
        .await?
        .json()
        .await?;
    println!("\n| `/search` miss (new question), 60 requests | median ms | p90 ms |\n|---|---|---|");
    let p90 = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() * 9 / 10]
    };
    println!("| Redis up | {:.2} | {:.2} |", median(up.clone()), p90(up));
    println!(
        "| Redis killed (breaker `{}` at the end) | {:.2} | {:.2} |",
        ready["dependencies"]["redis"].as_str().unwrap_or("?"),
        median(down.clone()),
        p90(down)
    );
    Ok(())
}

/// Time to the first streamed token, local SmolLM2, six passages: the first question over a
/// passage set (cold) and a second, different question over the same set (L4 reuses the prefix).
async fn l4_time_to_first_token() -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let data = tempfile::tempdir()?;
    let off = "[cache.l1]\nttl_s = 3600\nmax_entries = 0\n\n[cache.l3]\nttl_s = 900\nmax_entries = 0\n";
    let ragway = start_with(data.path(), &format!("[generation]\nmax_tokens = 8\n\n{off}")).await?;
    let texts = passages(30);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for (i, set) in texts.chunks(6).enumerate() {
        let name = format!("set{i}");
        collection(&http, &ragway, &name, set).await?;
        cold.push(first_token_ms(&http, &ragway, &name, "what is this passage about").await?);
        warm.push(first_token_ms(&http, &ragway, &name, "which numbers are mentioned here").await?);
    }
    let metrics = metrics_text(&http, &ragway).await?;
    let reused = metric(
        &metrics,
        "ragway_llm_prefix_tokens_reused_total{backend=\"local\"}",
    );
    println!("\n| local SmolLM2, 6 passages | requests | median time to first token ms |\n|---|---|---|");
    println!(
        "| first question over a passage set | {} | {:.0} |",
        cold.len(),
        median(cold.clone())
    );
    println!(
        "| another question, same passages (L4) | {} | {:.0} |",
        warm.len(),
        median(warm.clone())
    );
    println!(
        "\nprompt tokens whose prefill L4 skipped: {reused:.0}; ratio cold/warm {:.1}×",
        median(cold) / median(warm)
    );
    Ok(())
}

async fn first_token_ms(
    http: &reqwest::Client,
    ragway: &Ragway,
    name: &str,
    question: &str,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let body = json!({"query": question, "top_k": 6, "stream": true});
    let response = http
        .post(format!("{}/v1/collections/{name}/query", ragway.base))
        .json(&body)
        .send()
        .await?;
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk?));
        if seen.contains("event: delta") {
            return Ok(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    anyhow::bail!("no token streamed: {seen:.300}")
}

/// 5,000 `/search` requests, queries drawn from trec-dl-5k's with Zipf(1.1) popularity, over
/// 1,000 of its passages: the hit ratio each layer reaches.
async fn hit_ratios() -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let data = tempfile::tempdir()?;
    let ragway = start_with(data.path(), "").await?;
    let texts: Vec<String> = crate::quality::trec_passages(1_000)?;
    collection(&http, &ragway, "trec", &texts).await?;
    let queries: Vec<String> = trec_queries()?.into_iter().map(|(_, q)| q).collect();
    let weights: Vec<f64> = (1..=queries.len()).map(|r| 1.0 / (r as f64).powf(1.1)).collect();
    let total: f64 = weights.iter().sum();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..5_000 {
        // xorshift: a fixed, reproducible draw.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut u = (state >> 11) as f64 / (1u64 << 53) as f64 * total;
        let pick = weights.iter().position(|w| {
            u -= w;
            u <= 0.0
        });
        let query = &queries[pick.unwrap_or(0)];
        post(
            &http,
            &ragway,
            "/v1/collections/trec/search",
            &json!({"query": query, "top_k": 10}),
        )
        .await?;
    }
    let metrics = metrics_text(&http, &ragway).await?;
    println!("\n| layer | lookups | hits | hit ratio |\n|---|---|---|---|");
    for layer in ["l1", "l2", "l3"] {
        let count = |r: &str| {
            metric(
                &metrics,
                &format!("ragway_cache_requests_total{{layer=\"{layer}\",result=\"{r}\"}}"),
            )
        };
        let (hits, misses) = (count("hit"), count("miss"));
        println!(
            "| {layer} | {:.0} | {hits:.0} | {:.1}% |",
            hits + misses,
            100.0 * hits / (hits + misses).max(1.0)
        );
    }
    Ok(())
}
