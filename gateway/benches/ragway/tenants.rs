//! What keys and quotas cost on the hottest path: L1-hit `/query` under wrk (64 connections,
//! 30 s, 16 answered questions in turn), open; with a tenant's key and a rate limit enforced in
//! process (governor); and with the limit and the day's counters in Redis (one Lua script per
//! request). The limit (10^6 requests/s) is never reached: this measures the checking.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cache::Redis;
use crate::load::{start_in, wrk_post_as, Ragway, ADMIN};
use crate::quality::trec_queries;
use crate::speed::passages;

async fn send(
    http: &reqwest::Client,
    ragway: &Ragway,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let mut request = http.post(format!("{}{path}", ragway.base));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let reply = request.send().await?;
    anyhow::ensure!(reply.status().is_success(), "{path}: {}", reply.status());
    Ok(reply.json().await?)
}

/// A tenant with a rate limit that is never reached, and its key.
async fn tenant_key(http: &reqwest::Client, ragway: &Ragway) -> anyhow::Result<String> {
    let body = json!({"name": "bench", "limits": {"requests_per_second": 1e6, "burst": 1000000}});
    let tenant = send(http, ragway, "/admin/tenants", Some(ADMIN), Some(&body)).await?;
    let id = tenant["id"].as_str().unwrap_or_default();
    let key = send(
        http,
        ragway,
        &format!("/admin/tenants/{id}/keys"),
        Some(ADMIN),
        None,
    )
    .await?;
    Ok(key["key"].as_str().unwrap_or_default().to_string())
}

pub async fn run() -> anyhow::Result<()> {
    println!("\n### Keys and quotas on the L1-hit path (loopback HTTP, the real binary)\n");
    println!("| setup | requests/s | p50 ms | p99 ms |\n|---|---|---|---|");
    let http = reqwest::Client::new();
    let redis = Redis::start()?;
    let questions: Vec<Value> = trec_queries()?
        .into_iter()
        .take(16)
        .map(|(_, q)| json!({"query": q, "top_k": 3}))
        .collect();
    let redis_config = format!("[cache.redis]\nurl = \"redis://127.0.0.1:{}/0\"\n", redis.1);
    for (setup, mode, config) in [
        ("open (no keys)", "open", String::new()),
        ("key + rate limit in process", "keys", String::new()),
        ("key + rate limit and counters in Redis", "keys", redis_config),
    ] {
        let data = tempfile::tempdir()?;
        let toml = format!("[generation]\nmax_tokens = 8\n\n{config}");
        let ragway = start_in(data.path(), &toml, mode).await?;
        let key = match mode {
            "keys" => Some(tenant_key(&http, &ragway).await?),
            _ => None,
        };
        send(
            &http,
            &ragway,
            "/v1/collections",
            key.as_deref(),
            Some(&json!({"name": "c"})),
        )
        .await?;
        let documents: Vec<Value> = passages(200)
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"id": format!("p{i}"), "text": t}))
            .collect();
        let body = json!({"documents": documents});
        send(
            &http,
            &ragway,
            "/v1/collections/c/documents",
            key.as_deref(),
            Some(&body),
        )
        .await?;
        for question in &questions {
            send(
                &http,
                &ragway,
                "/v1/collections/c/query",
                key.as_deref(),
                Some(question),
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (rate, p50, p99) = wrk_post_as(
            &ragway.base,
            "/v1/collections/c/query",
            &questions,
            30,
            64,
            key.as_deref(),
        )?;
        println!("| {setup} | {rate:.0} | {p50:.2} | {p99:.2} |");
    }
    Ok(())
}
