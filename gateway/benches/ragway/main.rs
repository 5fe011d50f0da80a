//! ragway's benchmark: `cargo bench -p ragway-gateway --bench ragway -- [embed|rerank|llm|search|resilience|load|all]`.
//! Prints Markdown tables (medians over repeated runs) for docs/BENCHMARKS.md.
//!
//! - embed: sentences/s of the candle MiniLM embedder at batch 32
//! - rerank: pairs/s of a MiniLM-L6-sized cross-encoder (random weights: speed does not depend on them)
//! - llm: SmolLM2 prefill and decode tokens/s on llama.cpp, and aggregate tokens/s of 1-8 answers at once
//! - search: ingest trec-dl-5k through HTTP, `/search` p50/p99, and retrieval quality
//!   (nDCG@10, Recall@100, MRR@10) of BM25, dense and hybrid RRF
//! - resilience: the guard's cost on the normal path, and time to detect a hanging dependency and
//!   to recover
//! - load: the real binary under wrk and a mixed load with a fault (needs `wrk`)
//! - fusion: every fusion method on trec-dl-5k and vaswani, by fold (after `storage`, whose vectors it uses)
//! - storage: dense nDCG@10 on trec-dl-5k and vaswani by storage setting (exact, HNSW, int8)

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

mod cache;
mod fusion_carry;
mod fusion_grid;
mod load;
mod quality;
mod resilience;
mod speed;
mod storage;
mod tenants;

/// Serves `config` in process on a free port; returns the state and the base URL.
async fn serve(
    mut config: ragway_gateway::config::Config,
) -> anyhow::Result<(ragway_gateway::http::AppState, String)> {
    // The benchmarks measure the stages, not keys and quotas (those have tests of their own).
    config.auth.mode = ragway_gateway::config::AuthMode::Open;
    // The metrics recorder is process-wide: install it once for every benchmark.
    static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    let metrics = match METRICS.get() {
        Some(handle) => handle.clone(),
        None => METRICS
            .get_or_init(|| ragway_gateway::metrics::install().expect("metrics recorder"))
            .clone(),
    };
    let state = ragway_gateway::app::load(config, metrics).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = ragway_gateway::http::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((state, base))
}

fn main() -> anyhow::Result<()> {
    let what = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "all".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if what == "embed" || what == "all" {
            speed::embed().await?;
        }
        if what == "rerank" || what == "all" {
            speed::rerank().await?;
        }
        if what == "llm" || what == "all" {
            speed::llm().await?;
        }
        if what == "search" || what == "all" {
            quality::search().await?;
        }
        if what == "resilience" || what == "all" {
            resilience::run().await?;
        }
        if what == "load" || what == "all" {
            load::run().await?;
        }
        if what == "cache" || what == "all" {
            cache::run().await?;
        }
        if what == "fusion" {
            fusion_carry::run().await?;
        }
        if what == "storage" {
            storage::run().await?;
        }
        if what == "tenants" || what == "all" {
            tenants::run().await?;
        }
        Ok(())
    })
}
