//! What the degradation machinery costs and how fast it reacts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ragway_gateway::config::Config;
use ragway_gateway::resilience::breaker::BreakerSettings;
use ragway_gateway::resilience::deadline::Deadline;
use ragway_gateway::resilience::faults::{FaultKind, FaultRequest, Faults};
use ragway_gateway::resilience::guard::Guard;
use serde_json::{json, Value};

use crate::speed::{median, passages};

async fn direct() -> Result<u64, ragway_retrieval::RetrievalError> {
    Ok(std::hint::black_box(1))
}

pub async fn run() -> anyhow::Result<()> {
    overhead().await;
    detection_and_recovery().await
}

/// A guarded call (breaker, timeout, deadline, fault check) against the same call made directly,
/// interleaved in rounds so that machine noise hits both alike.
async fn overhead() {
    let settings = BreakerSettings {
        failure_threshold: 3,
        open: Duration::from_secs(5),
        max_open: Duration::from_secs(60),
    };
    let guard = Guard::new(
        "bench",
        Duration::from_secs(2),
        &settings,
        Arc::new(Faults::default()),
    );
    let deadline = Deadline::after(Duration::from_secs(3_600));
    let calls = 200_000;
    let (mut plain, mut guarded) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        let started = Instant::now();
        for _ in 0..calls {
            let _ = direct().await;
        }
        plain.push(started.elapsed().as_secs_f64() * 1e9 / calls as f64);
        let started = Instant::now();
        for _ in 0..calls {
            let _ = guard.run(&deadline, direct()).await;
        }
        guarded.push(started.elapsed().as_secs_f64() * 1e9 / calls as f64);
    }
    let (p, g) = (median(plain), median(guarded));
    println!("\n### Breaker + timeout + deadline guard on the normal path\n");
    println!("| call | median ns per call (9 rounds × {calls}) |\n|---|---|");
    println!("| direct | {p:.0} |\n| guarded | {g:.0} |");
    println!(
        "\nAdded per guarded stage: {:.0} ns; a `/search` runs 3–4 guarded stages.",
        g - p
    );
}

/// A dependency that starts hanging: how long until its breaker opens (answers stop waiting for
/// it), and once it is healthy again, how long until answers are `normal`.
async fn detection_and_recovery() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.resilience.dense_timeout_ms = 250;
    config.resilience.breaker_failures = 3;
    config.resilience.breaker_open_ms = 2_000;
    config.resilience.breaker_max_open_ms = Some(2_000);
    let (state, base) = crate::serve(config).await?;
    let http = reqwest::Client::new();
    http.post(format!("{base}/v1/collections"))
        .json(&json!({"name": "b"}))
        .send()
        .await?
        .error_for_status()?;
    let documents: Vec<Value> = passages(60)
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i.to_string(), "text": t}))
        .collect();
    http.post(format!("{base}/v1/collections/b/documents"))
        .json(&json!({ "documents": documents }))
        .send()
        .await?
        .error_for_status()?;
    let search = || async {
        let reply: Value = http
            .post(format!("{base}/v1/collections/b/search"))
            .json(&json!({"query": "what causes left ventricular hypertrophy"}))
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(reply)
    };
    search().await?;

    println!("\n### Detecting a hanging dependency and recovering (dense store, timeout 250 ms, 3 failures open the breaker, open 2 s)\n");
    println!("| | requests | time | median request ms |\n|---|---|---|---|");
    state.faults.set(&FaultRequest {
        stage: "dense".into(),
        kind: FaultKind::Timeout,
        delay_ms: 0,
        duration_s: 3_600.0,
    });
    let started = Instant::now();
    let mut latencies = Vec::new();
    loop {
        let t = Instant::now();
        let reply = search().await?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        if reply["degraded"][0]["reason"] == "breaker_open" {
            break;
        }
    }
    let detect = started.elapsed();
    let waiting: Vec<f64> = latencies[..latencies.len() - 1].to_vec();
    println!(
        "| until the breaker opens | {} | {:.0} ms | {:.0} (each waits for the timeout) |",
        latencies.len(),
        detect.as_secs_f64() * 1e3,
        median(waiting)
    );
    let mut open = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        search().await?;
        open.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "| while open (keyword_only at once) | {} | — | {:.1} |",
        open.len(),
        median(open)
    );

    state.faults.clear();
    let healed = Instant::now();
    let mut requests = 0;
    loop {
        requests += 1;
        if search().await?["mode"] == "normal" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "| after it heals, until `normal` | {requests} | {:.0} ms | — |",
        healed.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
