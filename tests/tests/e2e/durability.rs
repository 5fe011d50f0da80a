//! Acknowledged means durable: what ragway answered 200 for (or a job reported done) survives
//! `kill -9`, in both engines. Ingestion jobs, their API, and the collection lifecycle around them
//! (damaged manifests, drop during ingest, drop-then-recreate).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragway_e2e::{Reply, Server, ServerOptions};
use serde_json::{json, Value};

/// No local LLM: these tests never generate, and a remote backend nobody calls starts instantly.
fn options(extra: &str) -> ServerOptions {
    ServerOptions {
        config_toml: format!(
            "{extra}\n\n[[llm]]\nname = \"unused\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"none\"\n"
        ),
        ..Default::default()
    }
}

/// A document whose text holds a marker found in no other document.
fn document(id: &str) -> Value {
    let marker = format!("marker{}", id.replace('-', "x"));
    json!({"id": id, "text": format!("Record {id} carries the token {marker} and a few words about durable storage on disk.")})
}

/// Waits until every job of `collection` has finished; returns them.
async fn settled_jobs(server: &Server, collection: &str) -> anyhow::Result<Vec<Value>> {
    for _ in 0..600 {
        let jobs = server.get(&format!("/v1/collections/{collection}/jobs")).await?;
        let list = jobs.body["jobs"].as_array().cloned().unwrap_or_default();
        if list
            .iter()
            .all(|j| ["done", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or("")))
        {
            return Ok(list);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("jobs of {collection} did not finish within 60 s")
}

/// The engines that find document `id` when searching for its own text.
async fn engines_finding(server: &Server, collection: &str, id: &str) -> anyhow::Result<Vec<String>> {
    let text = document(id)["text"].as_str().unwrap_or_default().to_string();
    let reply = server
        .post(
            &format!("/v1/collections/{collection}/search"),
            &json!({"query": text, "top_k": 3}),
        )
        .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let hit = reply.body["hits"]
        .as_array()
        .and_then(|hits| hits.iter().find(|h| h["doc_id"] == id).cloned());
    Ok(hit
        .and_then(|h| h["engines"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect())
}

/// A writer that sends small synchronous batches until stopped, recording every acknowledged id.
fn writer(server: &Server, round: usize, acked: Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
    let url = server.url("/v1/collections/crash/documents");
    tokio::spawn(async move {
        let Ok(http) = ragway_e2e::client() else { return };
        for batch in 0.. {
            let ids: Vec<String> = (0..3).map(|i| format!("r{round}-{batch}-{i}")).collect();
            let body = json!({"documents": ids.iter().map(|id| document(id)).collect::<Vec<_>>()});
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status() == 200 => {
                    if let Ok(mut acked) = acked.lock() {
                        acked.extend(ids);
                    }
                }
                _ => return,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_documents_survive_kill_9_in_both_engines() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = options("[ingest]\nbatch_chunks = 4");
    let mut server = Server::start(dir.path(), &options).await?;
    assert_eq!(
        server
            .post("/v1/collections", &json!({"name": "crash"}))
            .await?
            .status,
        201
    );
    // A background job, killed mid-way in round 0, must finish after the restart.
    let job_docs: Vec<Value> = (0..40).map(|i| document(&format!("job-{i}"))).collect();
    let accepted = server
        .post(
            "/v1/collections/crash/documents",
            &json!({"documents": job_docs, "wait": false}),
        )
        .await?;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let job_url = accepted.body["status_url"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let mut all_acked: Vec<String> = Vec::new();
    let mut seed: u64 = 0x9e37_79b9;
    for round in 0..20 {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = writer(&server, round, acked.clone());
        // A pseudo-random moment between 150 and 1150 ms.
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(150 + (seed >> 33) % 1_000)).await;
        drop(server); // SIGKILL
        task.abort();
        let acked: Vec<String> = acked.lock().map(|a| a.clone()).unwrap_or_default();
        server = Server::start(dir.path(), &options).await?;
        settled_jobs(&server, "crash").await?;
        for id in &acked {
            let engines = engines_finding(&server, "crash", id).await?;
            assert_eq!(
                engines,
                ["dense", "keyword"],
                "round {round}: acknowledged {id} lost"
            );
        }
        all_acked.extend(acked);
    }
    assert!(
        all_acked.len() >= 20,
        "the writer got too few acknowledgements: {}",
        all_acked.len()
    );
    let job = server.get(&job_url).await?;
    assert_eq!(job.body["state"], "done", "{:?}", job.body);
    assert_eq!(job.body["documents_done"], 40);
    for i in [0, 17, 39] {
        let engines = engines_finding(&server, "crash", &format!("job-{i}")).await?;
        assert_eq!(engines, ["dense", "keyword"], "job document {i}");
    }
    // Every acknowledged document is counted, and nothing beyond what was sent.
    let info = server.get("/v1/collections/crash").await?.body;
    let documents = info["documents"].as_u64().unwrap_or(0) as usize;
    assert!(
        documents >= all_acked.len() + 40,
        "{documents} < {}",
        all_acked.len() + 40
    );
    assert_eq!(info["chunks"].as_u64().map(|c| c as usize), Some(documents));
    server.stop().await
}

async fn wait_for_job(server: &Server, url: &str) -> anyhow::Result<Value> {
    for _ in 0..600 {
        let job = server.get(url).await?.body;
        if ["done", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or("")) {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{url} did not finish within 60 s")
}

fn docs(prefix: &str, n: usize) -> Value {
    json!({"documents": (0..n).map(|i| document(&format!("{prefix}-{i}"))).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread")]
async fn ingestion_jobs_can_be_followed_listed_and_cancelled() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = options("[ingest]\nsync_max_documents = 5\nbatch_chunks = 2");
    let server = Server::start(dir.path(), &options).await?;
    server.post("/v1/collections", &json!({"name": "jobs"})).await?;

    // Small requests answer when durable; above ingest.sync_max_documents they become jobs.
    let small = server
        .post("/v1/collections/jobs/documents", &docs("small", 3))
        .await?;
    assert_eq!((small.status, small.body["indexed"].clone()), (200, json!(3)));
    let large = server
        .post("/v1/collections/jobs/documents", &docs("large", 12))
        .await?;
    assert_eq!(large.status, 202, "{:?}", large.body);
    let url = large.body["status_url"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        url,
        format!("/v1/jobs/{}", large.body["job_id"].as_str().unwrap_or("-"))
    );
    let done = wait_for_job(&server, &url).await?;
    assert_eq!(
        (
            done["state"].clone(),
            done["documents_total"].clone(),
            done["documents_done"].clone()
        ),
        (json!("done"), json!(12), json!(12))
    );
    assert_eq!(
        (done["indexed"].clone(), done["chunks_done"].clone()),
        (json!(12), json!(12))
    );
    assert!(done["finished_at"].is_string() && done["created_at"].is_string());
    assert_eq!(server.get("/v1/collections/jobs").await?.body["documents"], 15);

    // `wait: false` makes even a small request a job; the list shows every job, oldest first.
    let quick = server
        .post(
            "/v1/collections/jobs/documents",
            &json!({"documents": [document("w-1")], "wait": false}),
        )
        .await?;
    assert_eq!(quick.status, 202);
    wait_for_job(&server, quick.body["status_url"].as_str().unwrap_or_default()).await?;
    let listed = server.get("/v1/collections/jobs/jobs").await?.body;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(3));

    // A finished job cannot be cancelled; an unknown one does not exist.
    let finished = server.delete(&url).await?;
    assert_eq!(
        (finished.status, finished.error_code()),
        (409, Some("job_finished"))
    );
    let unknown = server.get("/v1/jobs/nope").await?;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (404, Some("job_not_found"))
    );

    // Cancelled early, a long job stops after its current batch: some documents, not all.
    let long = server
        .post("/v1/collections/jobs/documents", &docs("long", 200))
        .await?;
    let url = long.body["status_url"].as_str().unwrap_or_default().to_string();
    let cancelling = server.delete(&url).await?;
    assert_eq!(cancelling.status, 202, "{:?}", cancelling.body);
    let cancelled = wait_for_job(&server, &url).await?;
    assert_eq!(cancelled["state"], "cancelled");
    let done = cancelled["documents_done"].as_u64().unwrap_or(200);
    assert!(done < 200, "cancelled after {done} documents");
    let documents = server.get("/v1/collections/jobs").await?.body["documents"].as_u64();
    assert_eq!(documents, Some(16 + done));

    server.stop().await
}

fn check(reply: &Reply, status: u16, what: &str) {
    assert_eq!(reply.status, status, "{what}: {:?}", reply.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_manifests_drops_during_ingest_and_recreated_names_are_safe() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = options("[ingest]\nbatch_chunks = 2");
    let server = Server::start(dir.path(), &options).await?;
    for name in ["good", "bad"] {
        check(
            &server.post("/v1/collections", &json!({"name": name})).await?,
            201,
            name,
        );
        check(
            &server
                .post(&format!("/v1/collections/{name}/documents"), &docs(name, 2))
                .await?,
            200,
            name,
        );
    }

    // Dropped while a job writes to it, then created again: the job fails, and nothing of it
    // lands in the new collection of the same name.
    check(
        &server.post("/v1/collections", &json!({"name": "racy"})).await?,
        201,
        "racy",
    );
    let job = server
        .post(
            "/v1/collections/racy/documents",
            &json!({"documents": docs("racy", 200)["documents"], "wait": false}),
        )
        .await?;
    check(&job, 202, "racy job");
    tokio::time::sleep(Duration::from_millis(300)).await;
    check(&server.delete("/v1/collections/racy").await?, 204, "drop racy");
    check(
        &server.post("/v1/collections", &json!({"name": "racy"})).await?,
        201,
        "recreate racy",
    );
    let ended = wait_for_job(&server, job.body["status_url"].as_str().unwrap_or_default()).await?;
    assert_eq!(ended["state"], "failed", "{ended:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recreated = server.get("/v1/collections/racy").await?.body;
    assert_eq!(
        (recreated["documents"].clone(), recreated["epoch"].clone()),
        (json!(0), json!(0))
    );
    // A client that leaves mid-write does not leave the write half done: it completes.
    check(
        &server.post("/v1/collections", &json!({"name": "left"})).await?,
        201,
        "left",
    );
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()?;
    let left = impatient
        .post(server.url("/v1/collections/left/documents"))
        .json(&docs("left", 150))
        .send()
        .await;
    assert!(left.is_err(), "the client was meant to give up first");
    let jobs = settled_jobs(&server, "left").await?;
    assert_eq!(jobs.last().map(|j| j["state"].clone()), Some(json!("done")));
    assert_eq!(server.get("/v1/collections/left").await?.body["documents"], 150);
    server.stop().await?;

    // A damaged manifest takes its collection out of service, not the server.
    std::fs::write(dir.path().join("collections/bad.json"), b"{ not json")?;
    let server = Server::start(dir.path(), &options).await?;
    let ready = server.get("/readyz").await?;
    assert!(
        ready.body["damaged_collections"]["bad"].is_string(),
        "{:?}",
        ready.body
    );
    assert_eq!(ready.body["collections"], 3, "good, racy and left still serve");
    assert_eq!(
        engines_finding(&server, "good", "good-1").await?,
        ["dense", "keyword"]
    );
    let bad = server.get("/v1/collections/bad").await?;
    assert_eq!(
        (bad.status, bad.error_code()),
        (404, Some("collection_not_found"))
    );
    let again = server.post("/v1/collections", &json!({"name": "bad"})).await?;
    assert_eq!(
        (again.status, again.error_code()),
        (409, Some("collection_exists"))
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_the_same_data_dir_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &ServerOptions::default()).await?;
    let mut second = std::process::Command::new(ragway_e2e::binary()?);
    second
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RAGWAY_MODELS", ragway_e2e::models_dir());
    let second = ragway_e2e::bounded::output(&mut second, Duration::from_secs(120))?;
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "a second process started on the same data_dir: {said}"
    );
    assert!(said.contains("is in use by another ragway process"), "{said}");
    // The first goes on serving.
    assert_eq!(server.get("/healthz").await?.status, 200);
    Ok(())
}

/// The texts of every hit of `query` in collection `name`.
async fn hit_texts(server: &Server, name: &str, query: &str) -> anyhow::Result<Vec<(String, String)>> {
    let reply = server
        .post(
            &format!("/v1/collections/{name}/search"),
            &json!({"query": query, "top_k": 10}),
        )
        .await?;
    anyhow::ensure!(reply.status == 200, "search: {:?}", reply.body);
    Ok(reply.body["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let field = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            (field("doc_id"), field("text"))
        })
        .collect())
}

/// Issue 22 item 10: a background job accepted before a synchronous ingest and a delete of the
/// same documents, but run after them (it waited behind another job), does not bring back the
/// old content or the deleted document: last acknowledged wins, per document.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_job_does_not_undo_later_writes_of_its_documents() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = options("[ingest]\nsync_max_documents = 5\nbatch_chunks = 2\nmax_concurrent_jobs = 1");
    let server = Server::start(dir.path(), &options).await?;
    server.post("/v1/collections", &json!({"name": "order"})).await?;
    let text = |id: &str, token: &str| json!({"id": id, "text": format!("Entry {id} now says {token} about the harbour.")});
    let first = json!({"documents": [text("x", "quartzfirst"), text("y", "quartzyfirst")]});
    assert_eq!(
        server
            .post("/v1/collections/order/documents", &first)
            .await?
            .status,
        200
    );

    // A long job of another collection holds the one job slot (jobs take it in turn, whatever
    // their collection); the stale job waits behind it.
    server.post("/v1/collections", &json!({"name": "filler"})).await?;
    let filler = server
        .post("/v1/collections/filler/documents", &docs("filler", 1000))
        .await?;
    assert_eq!(filler.status, 202, "{:?}", filler.body);
    let filler_url = filler.body["status_url"].as_str().unwrap_or_default().to_string();
    let stale = json!({"documents": [text("x", "quartzstale"), text("y", "quartzystale")], "wait": false});
    let queued = server.post("/v1/collections/order/documents", &stale).await?;
    assert_eq!(queued.status, 202, "{:?}", queued.body);
    let queued_url = queued.body["status_url"].as_str().unwrap_or_default().to_string();

    // Acknowledged after the queued job was: a new `x`, and `y` deleted.
    let newer = json!({"documents": [text("x", "quartznewest")]});
    let written = server.post("/v1/collections/order/documents", &newer).await?;
    assert_eq!(written.status, 200, "{:?}", written.body);
    let deleted = server.delete("/v1/collections/order/documents/y").await?;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    let still = server.get(&queued_url).await?;
    assert_eq!(
        still.body["state"], "queued",
        "the stale job ran before the later writes: make the filler longer ({:?})",
        still.body
    );
    // The order is set; the filler need not finish.
    let cancelled = server.delete(&filler_url).await?;
    assert_eq!(cancelled.status, 202, "{:?}", cancelled.body);

    let done = wait_for_job(&server, &queued_url).await?;
    assert_eq!(done["state"], "done", "{done:?}");
    assert_eq!(
        (done["indexed"].clone(), done["unchanged"].clone()),
        (json!(0), json!(2)),
        "{done:?}"
    );
    let x = hit_texts(&server, "order", "quartznewest quartzstale harbour").await?;
    let x: Vec<&String> = x.iter().filter(|(id, _)| id == "x").map(|(_, t)| t).collect();
    assert!(
        !x.is_empty() && x.iter().all(|t| t.contains("quartznewest")),
        "x: {x:?}"
    );
    let y = hit_texts(&server, "order", "quartzystale quartzyfirst harbour").await?;
    assert!(y.iter().all(|(id, _)| id != "y"), "y came back: {y:?}");
    let info = server.get("/v1/collections/order").await?;
    assert_eq!(info.body["documents"], 1, "{:?}", info.body);

    // Restarted: the collection is as acknowledged.
    server.stop().await?;
    let server = Server::start(dir.path(), &options).await?;
    let info = server.get("/v1/collections/order").await?;
    assert_eq!(info.body["documents"], 1, "{:?}", info.body);
    Ok(())
}
