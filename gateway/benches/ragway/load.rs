//! A bounded load test (about 2 minutes) of the real binary over loopback: `/search` latency idle
//! and while bulk work runs (wrk), then N clients mixing search, query, `/v1/embeddings` bulk and
//! an ingest job, with a keyword fault injected midway; every answer's mode is checked against
//! the fault, every query against its deadline; RSS before and after.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::speed::passages;

pub const ADMIN: &str = "load-test-admin";
const COLLECTION: &str = "load";

pub struct Ragway {
    child: Child,
    pub base: String,
}

impl Drop for Ragway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("no target dir"))?;
    let bin = dir.join("ragway");
    anyhow::ensure!(
        bin.is_file(),
        "{} is missing: cargo build --release -p ragway-gateway",
        bin.display()
    );
    Ok(bin)
}

async fn start(data: &Path) -> anyhow::Result<Ragway> {
    start_with(data, "[generation]\nmax_tokens = 24\n").await
}

/// ragway on a free port with `config_toml` as its config file, once it answers `/healthz`;
/// without keys (`auth.mode = "open"`), as the stage benchmarks measure stages.
pub async fn start_with(data: &Path, config_toml: &str) -> anyhow::Result<Ragway> {
    start_in(data, config_toml, "open").await
}

/// As [`start_with`], in `auth_mode` (`open` or `keys`; the admin key is [`ADMIN`]).
pub async fn start_in(data: &Path, config_toml: &str, auth_mode: &str) -> anyhow::Result<Ragway> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = data.join("load.toml");
    std::fs::write(&config, config_toml)?;
    let child = Command::new(binary()?)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(&config)
        .env("RAGWAY_ADMIN_KEY", ADMIN)
        .env("RAGWAY__AUTH__MODE", auth_mode)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ragway = Ragway {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if http.get(format!("{}/healthz", ragway.base)).send().await.is_ok() {
            return Ok(ragway);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("ragway did not start")
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// `/search` with a new question on every request (so every one embeds), for `seconds`:
/// (requests/s, p50 ms, p99 ms) as wrk measures them.
fn wrk_search(base: &str, seconds: u32, connections: u32) -> anyhow::Result<(f64, f64, f64)> {
    let script = format!(
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  \
         local body = '{{\"query\": \"what causes question number ' .. counter .. ' about volcanoes and rivers\", \"top_k\": 5}}'\n  \
         return wrk.format(\"POST\", \"/v1/collections/{COLLECTION}/search\", {{[\"Content-Type\"] = \"application/json\"}}, body)\nend\n"
    );
    wrk(base, &script, 1, seconds, connections)
}

/// POSTs of `bodies` to `path`, in turn, for `seconds` from 2 wrk threads.
pub fn wrk_post(
    base: &str,
    path: &str,
    bodies: &[Value],
    seconds: u32,
    connections: u32,
) -> anyhow::Result<(f64, f64, f64)> {
    wrk_post_as(base, path, bodies, seconds, connections, None)
}

/// As [`wrk_post`], with `Authorization: Bearer <key>` when a key is given.
pub fn wrk_post_as(
    base: &str,
    path: &str,
    bodies: &[Value],
    seconds: u32,
    connections: u32,
    key: Option<&str>,
) -> anyhow::Result<(f64, f64, f64)> {
    let list: Vec<String> = bodies.iter().map(|b| format!("[[{}]]", b)).collect();
    let auth = key.map_or(String::new(), |k| {
        format!(", [\"Authorization\"] = \"Bearer {k}\"")
    });
    let script = format!(
        "bodies = {{{}}}\ncounter = 0\nrequest = function()\n  counter = counter + 1\n  \
         return wrk.format(\"POST\", \"{path}\", {{[\"Content-Type\"] = \"application/json\"{auth}}}, bodies[(counter % #bodies) + 1])\nend\n",
        list.join(", ")
    );
    wrk(base, &script, 2, seconds, connections)
}

/// wrk with a Lua `script`: (requests/s, p50 ms, p99 ms).
fn wrk(
    base: &str,
    script_text: &str,
    threads: u32,
    seconds: u32,
    connections: u32,
) -> anyhow::Result<(f64, f64, f64)> {
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(script.path(), script_text)?;
    let output = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script.path())
        .arg(base)
        .output()
        .map_err(|e| anyhow::anyhow!("wrk is needed (apt-get install wrk): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        anyhow::bail!(
            "wrk got error answers ({}): the figures would not be of answers",
            line.trim()
        );
    }
    let percentile = |p: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(|v| millis(v.trim())))
            .unwrap_or(f64::NAN)
    };
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    Ok((rate, percentile("50%"), percentile("99%")))
}

fn millis(value: &str) -> f64 {
    let split = value.find(|c: char| c.is_alphabetic()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => f64::NAN,
    }
}

/// Bulk work until `stop`: `/v1/embeddings` batches of 64 passages, back to back.
fn bulk_embeddings(
    base: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let inputs: Vec<String> = passages(64);
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        while !stop.load(Ordering::Acquire) {
            let sent = http
                .post(format!("{base}/v1/embeddings"))
                .json(&json!({"input": inputs}))
                .send()
                .await;
            if sent.is_ok_and(|r| r.status() == 200) {
                done.fetch_add(1, Ordering::AcqRel);
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}

async fn ingest_job(http: &reqwest::Client, base: &str, offset: usize, n: usize) -> anyhow::Result<String> {
    let documents: Vec<Value> = passages(offset + n)
        .into_iter()
        .enumerate()
        .skip(offset)
        .map(|(i, text)| json!({"id": format!("p{i}"), "text": text}))
        .collect();
    let reply: Value = http
        .post(format!("{base}/v1/collections/{COLLECTION}/documents"))
        .json(&json!({"documents": documents, "wait": false}))
        .send()
        .await?
        .json()
        .await?;
    Ok(reply["status_url"].as_str().unwrap_or_default().to_string())
}

/// What the mixed phase saw.
#[derive(Default)]
struct Verdicts {
    answers: usize,
    modes: std::collections::BTreeMap<String, usize>,
    wrong_mode: Vec<String>,
    over_deadline: Vec<String>,
}

/// The mode DESIGN.md's table gives for an answer's stages.
fn expected_mode(body: &Value) -> &'static str {
    let ok = |stage: &str| body["stages"][stage] == "ok";
    let dense_ok = (ok("embed") || body["stages"]["embed"] == "cached") && ok("dense");
    match (dense_ok, ok("keyword"), body["stages"]["llm"].as_str()) {
        (false, false, _) => "error",
        (_, _, Some("extractive")) => "extractive",
        (false, true, _) => "keyword_only",
        (true, false, _) => "dense_only",
        (true, true, _) => "normal",
    }
}

/// Checks one answer: header and body agree, the mode follows from its stages, and the keyword
/// stage failed exactly while the fault was on (`None`: it switched during the request).
fn judge(verdicts: &mut Verdicts, what: &str, header: Option<String>, body: &Value, fault_on: Option<bool>) {
    verdicts.answers += 1;
    let mode = body["mode"].as_str().unwrap_or("none").to_string();
    *verdicts.modes.entry(mode.clone()).or_default() += 1;
    let keyword_failed = body["stages"]["keyword"] == "failed";
    let fault_seen = fault_on.is_none_or(|on| on == keyword_failed);
    if header.as_deref() != Some(mode.as_str()) || mode != expected_mode(body) || !fault_seen {
        verdicts.wrong_mode.push(format!(
            "{what}: header {header:?}, body {mode}, degraded {}",
            body["degraded"]
        ));
    }
}

pub async fn run() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let ragway = start(data.path()).await?;
    let (base, pid) = (ragway.base.clone(), ragway.child.id());
    let http = reqwest::Client::new();
    http.post(format!("{base}/v1/collections"))
        .json(&json!({"name": COLLECTION}))
        .send()
        .await?;
    let first = ingest_job(&http, &base, 0, 300).await?;
    wait_for(&http, &base, &first).await?;

    let idle = wrk_search(&base, 10, 2)?;
    let rss_start = rss_mib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let bulk_done = Arc::new(AtomicUsize::new(0));
    let bulk = bulk_embeddings(base.clone(), stop.clone(), bulk_done.clone());
    let job = ingest_job(&http, &base, 300, 300).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = wrk_search(&base, 10, 2)?;

    let verdicts = mixed(&http, &base).await?;
    stop.store(true, Ordering::Release);
    let _ = bulk.await;
    let job_status = wait_for(&http, &base, &job).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_end = rss_mib(pid);
    report(
        idle,
        busy,
        &verdicts,
        bulk_done.load(Ordering::Acquire),
        &job_status,
        (rss_start, rss_end),
    );
    Ok(())
}

async fn wait_for(http: &reqwest::Client, base: &str, status_url: &str) -> anyhow::Result<Value> {
    loop {
        let status: Value = http
            .get(format!("{base}{status_url}"))
            .send()
            .await?
            .json()
            .await?;
        if ["done", "failed", "cancelled"].contains(&status["state"].as_str().unwrap_or("")) {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// 30 s: two `/search` clients and two `/query` clients (deadline 6 s) beside the bulk work, with
/// the keyword engine failing from 8 s to 18 s.
async fn mixed(http: &reqwest::Client, base: &str) -> anyhow::Result<Verdicts> {
    let started = Instant::now();
    let (fault_from, fault_to) = (Duration::from_secs(8), Duration::from_secs(18));
    let margin = Duration::from_millis(300);
    // After the fault the keyword breaker stays open until a probe succeeds (up to
    // resilience.breaker_open_ms = 5 s, doubled by a failed probe): either state is right then.
    let recovery = Duration::from_secs(11);
    let fault_state = move |from: Duration, to: Duration| -> Option<bool> {
        if to + margin < fault_from || from > fault_to + recovery {
            Some(false)
        } else if from > fault_from + margin && to + margin < fault_to {
            Some(true)
        } else {
            None
        }
    };
    let clients = (0..4).map(|client| {
        let (http, base) = (http.clone(), base.to_string());
        async move {
            let mut verdicts = Verdicts::default();
            let mut n = 0;
            while started.elapsed() < Duration::from_secs(30) {
                n += 1;
                let query = client >= 2;
                let (route, body) = if query {
                    ("query", json!({"query": format!("why do rivers flood, case {client}-{n}?"), "deadline_ms": 6_000}))
                } else {
                    ("search", json!({"query": format!("volcanic ash and lava flows, case {client}-{n}")}))
                };
                let from = started.elapsed();
                let sent = Instant::now();
                let Ok(response) = http.post(format!("{base}/v1/collections/{COLLECTION}/{route}")).json(&body).send().await else {
                    verdicts.wrong_mode.push(format!("{route}: no response"));
                    continue;
                };
                let header = response.headers().get("x-ragway-mode").and_then(|v| v.to_str().ok()).map(str::to_string);
                let reply: Value = response.json().await.unwrap_or(Value::Null);
                let took = sent.elapsed();
                if query && took > Duration::from_millis(6_600) {
                    verdicts.over_deadline.push(format!("{route} took {took:?}"));
                }
                judge(&mut verdicts, route, header, &reply, fault_state(from, started.elapsed()));
            }
            verdicts
        }
    });
    let fault = async {
        tokio::time::sleep(fault_from).await;
        let body =
            json!({"stage": "keyword", "kind": "error", "duration_s": (fault_to - fault_from).as_secs()});
        let _ = http
            .post(format!("{base}/admin/faults"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await;
    };
    let (results, ()) = tokio::join!(futures::future::join_all(clients), fault);
    let mut all = Verdicts::default();
    for v in results {
        all.answers += v.answers;
        for (mode, n) in v.modes {
            *all.modes.entry(mode).or_default() += n;
        }
        all.wrong_mode.extend(v.wrong_mode);
        all.over_deadline.extend(v.over_deadline);
    }
    Ok(all)
}

fn report(
    idle: (f64, f64, f64),
    busy: (f64, f64, f64),
    verdicts: &Verdicts,
    bulk_batches: usize,
    job: &Value,
    (rss_start, rss_end): (f64, f64),
) {
    println!("\n### Load: /search beside bulk work, and a mixed load with a fault (real binary, loopback)\n");
    println!("| `/search` (wrk, 2 connections, a new question per request) | req/s | p50 ms | p99 ms |\n|---|---|---|---|");
    println!("| idle | {:.1} | {:.1} | {:.1} |", idle.0, idle.1, idle.2);
    println!(
        "| while `/v1/embeddings` batches of 64 and an ingest job run | {:.1} | {:.1} | {:.1} |",
        busy.0, busy.1, busy.2
    );
    println!("\np99 under bulk work / idle p99: **{:.2}×**", busy.2 / idle.2);
    println!(
        "\nMixed 30 s (2 search + 2 query clients, bulk embeddings, ingest job, keyword fault 8–18 s): {} answers, \
         {} with a wrong or inconsistent mode, {} queries over their 6 s deadline by more than 10%; \
         {bulk_batches} bulk batches of 64 embedded; ingest job {} ({} documents, errors {}).",
        verdicts.answers,
        verdicts.wrong_mode.len(),
        verdicts.over_deadline.len(),
        job["state"],
        job["documents_done"],
        job["errors"]
    );
    println!("\nModes seen: {:?}", verdicts.modes);
    for line in verdicts.wrong_mode.iter().chain(&verdicts.over_deadline).take(10) {
        println!("- {line}");
    }
    println!(
        "\nRSS: {rss_start:.0} MiB before the load, {rss_end:.0} MiB 5 s after it ({:+.1}%).",
        (rss_end - rss_start) / rss_start * 100.0
    );
}
