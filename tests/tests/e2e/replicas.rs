//! Stateless replicas: two ragway processes on one Qdrant server and one Redis, each with its own
//! (empty) data directory, serve the same collections. What one creates, ingests, deletes or
//! drops, the other sees; concurrent writes through both lose nothing; a job whose replica is
//! killed mid-way is finished by the other. Skips, saying why, where no `qdrant` binary exists
//! (see ragway_e2e::QdrantServer).

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{corpus, doc_ids, QUESTIONS};
use ragway_e2e::{QdrantServer, RedisServer, Reply, Server, ServerOptions};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-key";

/// A replica: the shared Qdrant and Redis (and snapshot directory), no local LLM (these tests
/// never generate).
fn replica(qdrant: &QdrantServer, redis: &RedisServer, snapshots: &Path, extra: &str) -> ServerOptions {
    ServerOptions {
        config_toml: format!(
            "{extra}\n\n[[llm]]\nname = \"unused\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"none\"\n"
        ),
        env: vec![
            ("RAGWAY__STORE__KIND".into(), "qdrant".into()),
            ("RAGWAY__STORE__URL".into(), qdrant.grpc_url()),
            ("RAGWAY__CACHE__REDIS__URL".into(), redis.url()),
            ("RAGWAY__SERVER__SNAPSHOT_DIR".into(), snapshots.display().to_string()),
            ("RAGWAY_ADMIN_KEY".into(), ADMIN.into()),
        ],
    }
}

/// Polls `path` on `server` until `done` holds for its reply (at most `seconds`).
async fn eventually(
    server: &Server,
    path: &str,
    seconds: u64,
    done: impl Fn(&Reply) -> bool,
) -> anyhow::Result<Reply> {
    let started = Instant::now();
    loop {
        let reply = server.get(path).await?;
        if done(&reply) {
            return Ok(reply);
        }
        if started.elapsed() > Duration::from_secs(seconds) {
            anyhow::bail!(
                "{path}: still {} {:?} after {seconds} s",
                reply.status,
                reply.body
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the job `accepted` names has applied a few documents on replica `a`, checks it is
/// not done yet, and kills `a` (SIGKILL, mid-job); the job's status URL.
async fn killed_mid_job(a: Server, accepted: &Reply) -> anyhow::Result<String> {
    let status_url = accepted.body["status_url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let midway = eventually(&a, &status_url, 60, |r| {
        r.body["documents_done"].as_u64() >= Some(8)
    })
    .await?;
    assert_ne!(
        midway.body["state"], "done",
        "the job finished before A could be killed: {:?}",
        midway.body
    );
    drop(a);
    Ok(status_url)
}

async fn first_hit(server: &Server, collection: &str, query: &str) -> anyhow::Result<Option<String>> {
    let reply = server
        .post(
            &format!("/v1/collections/{collection}/search"),
            &json!({"query": query, "top_k": 3}),
        )
        .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["mode"], "normal", "{:?}", reply.body);
    Ok(doc_ids(&reply.body, "hits").into_iter().next())
}

fn note(id: &str) -> Value {
    json!({"id": id, "text": format!("Note {id} is about the lighthouse keeper token{} and the tide tables.", id.replace('-', "x"))})
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_serve_the_same_collections() -> anyhow::Result<()> {
    let Some(qdrant) = QdrantServer::start_or_skip("two_replicas_serve_the_same_collections")? else {
        return Ok(());
    };
    let redis = RedisServer::start()?;
    let (dir_a, dir_b, snapshots) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let options = replica(&qdrant, &redis, snapshots.path(), "");
    let a = Server::start(dir_a.path(), &options).await?;
    let b = Server::start(dir_b.path(), &options).await?;

    // Created through A: B knows it, and refuses the name.
    let created = a.post("/v1/collections", &json!({"name": "facts"})).await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    eventually(&b, "/v1/collections/facts", 5, |r| r.status == 200).await?;
    let taken = b.post("/v1/collections", &json!({"name": "facts"})).await?;
    assert_eq!(
        (taken.status, taken.error_code()),
        (409, Some("collection_exists"))
    );

    // Created through one and written through the other at once (no wait for the other to
    // follow the registry): found.
    assert_eq!(
        a.post("/v1/collections", &json!({"name": "quick"})).await?.status,
        201
    );
    let quick = b
        .post(
            "/v1/collections/quick/documents",
            &json!({"documents": [note("q-1")]}),
        )
        .await?;
    assert_eq!(quick.status, 200, "{:?}", quick.body);

    // Ingested through A, found through B; the job is visible through B.
    let ingested = a.post("/v1/collections/facts/documents", &corpus()).await?;
    assert_eq!(ingested.status, 200, "{:?}", ingested.body);
    eventually(&b, "/v1/collections/facts", 5, |r| r.body["documents"] == 6).await?;
    for (question, expected) in QUESTIONS {
        assert_eq!(
            first_hit(&b, "facts", question).await?.as_deref(),
            Some(expected),
            "{question}"
        );
    }
    let jobs = b.get("/v1/collections/facts/jobs").await?;
    let job = jobs.body["jobs"][0].clone();
    assert_eq!(
        (job["state"].as_str(), job["indexed"].as_u64()),
        (Some("done"), Some(6)),
        "{jobs:?}"
    );
    let by_id = b
        .get(&format!("/v1/jobs/{}", job["id"].as_str().unwrap_or_default()))
        .await?;
    assert_eq!(by_id.body["state"], "done", "{:?}", by_id.body);

    // Written through both at once: every document of both lands (changes are serialised across
    // replicas, each starting from the other's manifest).
    let batch = |prefix: &str| json!({"documents": (0..12).map(|i| note(&format!("{prefix}-{i}"))).collect::<Vec<_>>()});
    let (batch_a, batch_b) = (batch("a"), batch("b"));
    let (from_a, from_b) = tokio::join!(
        a.post("/v1/collections/facts/documents", &batch_a),
        b.post("/v1/collections/facts/documents", &batch_b)
    );
    assert_eq!((from_a?.status, from_b?.status), (200, 200));
    for server in [&a, &b] {
        let info = eventually(server, "/v1/collections/facts", 5, |r| r.body["documents"] == 30).await?;
        assert_eq!(info.body["chunks"], 30, "{:?}", info.body);
    }
    let (query_a, query_b) = (note("b-7")["text"].clone(), note("a-3")["text"].clone());
    assert_eq!(
        first_hit(&a, "facts", query_a.as_str().unwrap_or_default())
            .await?
            .as_deref(),
        Some("b-7")
    );
    assert_eq!(
        first_hit(&b, "facts", query_b.as_str().unwrap_or_default())
            .await?
            .as_deref(),
        Some("a-3")
    );

    // Deleted through B: gone through A.
    assert_eq!(
        b.delete("/v1/collections/facts/documents/espresso").await?.status,
        200
    );
    eventually(&a, "/v1/collections/facts", 5, |r| r.body["documents"] == 29).await?;
    let hit = first_hit(&a, "facts", "What pressure is used to brew coffee shots?").await?;
    assert_ne!(hit.as_deref(), Some("espresso"));

    // Snapshotted through A into the shared snapshot directory, restored through B.
    let taken = a
        .admin(Method::POST, "/admin/collections/facts/snapshot", ADMIN, None)
        .await?;
    assert_eq!(taken.status, 200, "{:?}", taken.body);
    let restore = json!({"snapshot": taken.body["snapshot"]});
    let restored = b
        .admin(
            Method::POST,
            "/admin/collections/copy/restore",
            ADMIN,
            Some(&restore),
        )
        .await?;
    assert_eq!(restored.status, 201, "{:?}", restored.body);
    let copy = eventually(&a, "/v1/collections/copy", 5, |r| r.body["documents"] == 29).await?;
    assert_eq!(copy.body["chunks"], 29, "{:?}", copy.body);
    assert_eq!(
        first_hit(&a, "copy", query_b.as_str().unwrap_or_default())
            .await?
            .as_deref(),
        Some("a-3")
    );

    // Dropped through A: gone through B; re-created through B, empty for A.
    assert_eq!(a.delete("/v1/collections/facts").await?.status, 204);
    eventually(&b, "/v1/collections/facts", 5, |r| r.status == 404).await?;
    assert_eq!(
        b.post("/v1/collections", &json!({"name": "facts"})).await?.status,
        201
    );
    eventually(&a, "/v1/collections/facts", 5, |r| {
        r.status == 200 && r.body["documents"] == 0
    })
    .await?;

    // Nothing of it lives in either replica's data directory.
    for dir in [&dir_a, &dir_b] {
        for sub in ["collections", "jobs"] {
            let path = dir.path().join(sub);
            let entries = std::fs::read_dir(&path).map(|d| d.count()).unwrap_or(0);
            assert_eq!(entries, 0, "{} holds files", path.display());
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_of_a_killed_replica_finishes_on_the_other() -> anyhow::Result<()> {
    let Some(qdrant) = QdrantServer::start_or_skip("a_job_of_a_killed_replica_finishes_on_the_other")? else {
        return Ok(());
    };
    let mut redis = RedisServer::start()?;
    let (dir_a, dir_b, snapshots) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let options = replica(&qdrant, &redis, snapshots.path(), "[ingest]\nbatch_chunks = 4");
    let a = Server::start(dir_a.path(), &options).await?;
    let b = Server::start(dir_b.path(), &options).await?;
    assert_eq!(
        a.post("/v1/collections", &json!({"name": "bulk"})).await?.status,
        201
    );

    let documents: Vec<Value> = (0..160).map(|i| note(&format!("n-{i}"))).collect();
    let accepted = a
        .post(
            "/v1/collections/bulk/documents",
            &json!({"documents": documents, "wait": false}),
        )
        .await?;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let status_url = killed_mid_job(a, &accepted).await?;

    // B claims the job once A's lease expires, and finishes it.
    let done = eventually(&b, &status_url, 120, |r| r.body["state"] == "done").await?;
    assert_eq!(done.body["documents_done"], 160, "{:?}", done.body);
    let info = eventually(&b, "/v1/collections/bulk", 5, |r| r.body["documents"] == 160).await?;
    assert_eq!(info.body["chunks"], 160, "{:?}", info.body);
    for id in ["n-0", "n-80", "n-159"] {
        let text = note(id)["text"].as_str().unwrap_or_default().to_string();
        assert_eq!(first_hit(&b, "bulk", &text).await?.as_deref(), Some(id));
    }

    // A writer that died between recording what it writes and finishing (as a SIGKILL there
    // leaves the manifest): the next change, on another replica, removes those documents from
    // both stores and the manifest first.
    let key = "ragway:collection:bulk";
    let mut manifest: Value = serde_json::from_str(&redis.cli(&["GET", key])?)?;
    manifest["pending"] = json!(["n-80"]);
    manifest["changes"] = json!(manifest["changes"].as_u64().unwrap_or(0) + 1);
    assert_eq!(redis.cli(&["SET", key, &manifest.to_string()])?.trim(), "OK");
    let late = json!({"documents": [note("late")]});
    assert_eq!(b.post("/v1/collections/bulk/documents", &late).await?.status, 200);
    let info = b.get("/v1/collections/bulk").await?;
    assert_eq!(info.body["documents"], 160, "n-80 out, late in: {:?}", info.body);
    let stored: Value = serde_json::from_str(&redis.cli(&["GET", key])?)?;
    assert!(stored.get("pending").is_none(), "{stored}");
    let kept = redis.cli(&["HEXISTS", "ragway:collection:bulk:documents", "n-80"])?;
    assert_eq!(kept.trim(), "0", "n-80's record is removed");
    let late = redis.cli(&["HEXISTS", "ragway:collection:bulk:documents", "late"])?;
    assert_eq!(late.trim(), "1", "the late document's record is written");
    let text = note("n-80")["text"].as_str().unwrap_or_default().to_string();
    assert_ne!(first_hit(&b, "bulk", &text).await?.as_deref(), Some("n-80"));

    // Redis down: reads still answer, changes are refused (503, retry), nothing half-written.
    redis.kill();
    let text = note("n-3")["text"].as_str().unwrap_or_default().to_string();
    assert_eq!(first_hit(&b, "bulk", &text).await?.as_deref(), Some("n-3"));
    let refused = b
        .post(
            "/v1/collections/bulk/documents",
            &json!({"documents": [note("down")]}),
        )
        .await?;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.retry_after, Some(1));
    // Back empty (this one keeps no data): the replica records its collections again.
    redis.restart()?;
    eventually(&b, "/v1/collections/bulk", 10, |r| r.status == 200).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["EXISTS", key])?.trim() != "1" {
        anyhow::ensure!(Instant::now() < deadline, "the registry was not re-seeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = b
        .post(
            "/v1/collections/bulk/documents",
            &json!({"documents": [note("up")]}),
        )
        .await?;
    assert_eq!(again.status, 200, "{:?}", again.body);
    let info = b.get("/v1/collections/bulk").await?;
    assert_eq!(info.body["documents"], 161, "{:?}", info.body);
    Ok(())
}

/// Issue 39: an import's parts live in Redis, so the import one replica acknowledged and then
/// died with is finished by the other.
#[tokio::test(flavor = "multi_thread")]
async fn an_import_of_a_killed_replica_finishes_on_the_other() -> anyhow::Result<()> {
    let Some(qdrant) = QdrantServer::start_or_skip("an_import_of_a_killed_replica_finishes_on_the_other")?
    else {
        return Ok(());
    };
    let redis = RedisServer::start()?;
    let (dir_a, dir_b, snapshots) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let options = replica(
        &qdrant,
        &redis,
        snapshots.path(),
        "[ingest]\nimport_batch_chunks = 8",
    );
    let a = Server::start(dir_a.path(), &options).await?;
    let b = Server::start(dir_b.path(), &options).await?;
    assert_eq!(
        a.post("/v1/collections", &json!({"name": "bulk"})).await?.status,
        201
    );
    // Lines without vectors (embedded in batches of 8): the job takes long enough to be cut.
    let body: Vec<String> = (0..1_100).map(|i| note(&format!("n-{i}")).to_string()).collect();
    let accepted = a
        .post_body(
            "/v1/collections/bulk/import",
            "application/x-ndjson",
            body.join("\n"),
        )
        .await?;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let parts = redis.keys(&format!(
        "ragway:job:{}:part:*",
        accepted.body["job_id"].as_str().unwrap_or_default()
    ))?;
    assert_eq!(parts.len(), 2, "1,100 lines in parts of 1,024: {parts:?}");
    let status_url = killed_mid_job(a, &accepted).await?;

    let done = eventually(&b, &status_url, 240, |r| r.body["state"] == "done").await?;
    assert_eq!(done.body["documents_done"], 1_100, "{:?}", done.body);
    eventually(&b, "/v1/collections/bulk", 5, |r| r.body["documents"] == 1_100).await?;
    for id in ["n-0", "n-1050"] {
        let text = note(id)["text"].as_str().unwrap_or_default().to_string();
        assert_eq!(first_hit(&b, "bulk", &text).await?.as_deref(), Some(id));
    }
    let left = redis.keys("ragway:job:*:part:*")?;
    assert!(left.is_empty(), "a finished import's parts are removed: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_started_while_qdrant_is_down_serves_once_it_is_back() -> anyhow::Result<()> {
    let Some(mut qdrant) =
        QdrantServer::start_or_skip("a_replica_started_while_qdrant_is_down_serves_once_it_is_back")?
    else {
        return Ok(());
    };
    let redis = RedisServer::start()?;
    let (dir_a, dir_b, snapshots) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let options = replica(&qdrant, &redis, snapshots.path(), "");
    let a = Server::start(dir_a.path(), &options).await?;
    assert_eq!(
        a.post("/v1/collections", &json!({"name": "facts"})).await?.status,
        201
    );
    assert_eq!(
        a.post("/v1/collections/facts/documents", &corpus()).await?.status,
        200
    );

    qdrant.kill();
    let b = Server::start(dir_b.path(), &options).await?;
    // It knows the collection but cannot open it: not "missing", unavailable for now.
    let down = b.get("/v1/collections/facts").await?;
    assert_eq!(
        (down.status, down.error_code()),
        (503, Some("collection_unavailable")),
        "{:?}",
        down.body
    );
    assert_eq!(down.retry_after, Some(1));
    let ready = b.get("/readyz").await?;
    assert!(
        ready.body["damaged_collections"].get("facts").is_some(),
        "{:?}",
        ready.body
    );

    // Back: the replica opens it by itself (nothing asks for the collection meanwhile).
    qdrant.restart()?;
    eventually(&b, "/readyz", 60, |r| {
        r.body["damaged_collections"].get("facts").is_none()
    })
    .await?;
    let (question, expected) = QUESTIONS[2];
    assert_eq!(first_hit(&b, "facts", question).await?.as_deref(), Some(expected));
    Ok(())
}

/// A document of `words` words, distinct per `id`.
/// Waits (5 s at most) until `server` serves collection `name` to the tenant of `key` (made
/// through another replica).
async fn sees(server: &Server, key: &str, name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let path = format!("/v1/collections/{name}");
    while server.call(Method::GET, &path, Some(key), None).await?.status != 200 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(5), "never saw `{name}`");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Issue 40 item 2, across replicas: four 20-document ingests at once under a 40-document quota,
/// two through each replica. The check and the hold are one step in Redis (what the tenant's
/// collections store, as the registry counts it with each change, plus every unfinished job's
/// hold), so two fit and two are refused (413), whichever replica took them, and never more than
/// 40 documents are stored. (With the check per process, each replica let two through: 80.)
/// Afterwards the holds are gone (each job's ended), and a write that fits is admitted. The
/// tenant's collection cap holds across replicas the same way.
#[tokio::test(flavor = "multi_thread")]
async fn storage_quotas_hold_across_replicas() -> anyhow::Result<()> {
    let Some(qdrant) = QdrantServer::start_or_skip("storage_quotas_hold_across_replicas")? else {
        return Ok(());
    };
    let redis = RedisServer::start()?;
    let (dir_a, dir_b, snapshots) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let mut options = replica(&qdrant, &redis, snapshots.path(), "");
    options.env.push(("RAGWAY__AUTH__MODE".into(), "keys".into()));
    let a = Server::start(dir_a.path(), &options).await?;
    let b = Server::start(dir_b.path(), &options).await?;
    let tenant = json!({"name": "racer", "limits": {"documents": 40, "collections": 5}});
    let created = a
        .admin(Method::POST, "/admin/tenants", ADMIN, Some(&tenant))
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap_or_default();
    let key = a
        .admin(Method::POST, &format!("/admin/tenants/{id}/keys"), ADMIN, None)
        .await?;
    let key = key.body["key"].as_str().unwrap_or_default().to_string();
    for lane in 1..=4 {
        let body = json!({ "name": format!("lane{lane}") });
        let created = a
            .call(Method::POST, "/v1/collections", Some(&key), Some(&body))
            .await?;
        assert_eq!(created.status, 201, "{:?}", created.body);
    }
    // B knows the key and the four collections.
    sees(&b, &key, "lane4").await?;
    let batch = |lane: usize| json!({"documents": (0..20).map(|i| note(&format!("r{lane}-{i}"))).collect::<Vec<_>>()});
    let path = |lane: usize| format!("/v1/collections/lane{lane}/documents");
    let (paths, batches): (Vec<String>, Vec<Value>) = (1..=4).map(|lane| (path(lane), batch(lane))).unzip();
    let post = |lane: usize| {
        let server = if lane.is_multiple_of(2) { &a } else { &b };
        server.call(Method::POST, &paths[lane], Some(&key), Some(&batches[lane]))
    };
    let (one, two, three, four) = tokio::join!(post(0), post(1), post(2), post(3));
    let mut outcomes: Vec<(u16, Option<String>)> = [one?, two?, three?, four?]
        .iter()
        .map(|r| (r.status, r.error_code().map(str::to_string)))
        .collect();
    outcomes.sort();
    let refused = (413, Some("document_quota_exceeded".to_string()));
    assert_eq!(
        outcomes,
        [(200, None), (200, None), refused.clone(), refused],
        "{outcomes:?}"
    );
    // What B stores, once it has followed A's changes (within a second).
    let started = Instant::now();
    let (stored, written) = loop {
        let (mut stored, mut written) = (0, 0);
        for lane in 1..=4 {
            let info = b
                .call(
                    Method::GET,
                    &format!("/v1/collections/lane{lane}"),
                    Some(&key),
                    None,
                )
                .await?;
            let documents = info.body["documents"].as_u64().unwrap_or(0);
            stored += documents;
            if documents > 0 {
                written = lane;
            }
        }
        if stored >= 40 || started.elapsed() > Duration::from_secs(5) {
            break (stored, written);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stored, 40);
    let holds = redis.cli(&["HLEN", &format!("ragway:storage:{id}:holds")])?;
    assert_eq!(holds.trim(), "0", "every job ended, so nothing is held");

    // Replacing a stored document grows nothing: admitted at the limit, through either replica.
    let lane = written;
    let again = json!({"documents": [note(&format!("r{lane}-0"))]});
    for server in [&a, &b] {
        let replaced = server
            .call(Method::POST, &path(lane), Some(&key), Some(&again))
            .await?;
        assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    }
    let more = json!({"documents": [note("one-more")]});
    let over = a.call(Method::POST, &path(lane), Some(&key), Some(&more)).await?;
    assert_eq!(
        over.error_code(),
        Some("document_quota_exceeded"),
        "{:?}",
        over.body
    );

    // One more collection fits the tenant's five: of two created at once through both
    // replicas, one is (the registry counts the tenant's collections in the same step).
    let (five, six) = (json!({"name": "lane5"}), json!({"name": "lane6"}));
    let (five, six) = tokio::join!(
        a.call(Method::POST, "/v1/collections", Some(&key), Some(&five)),
        b.call(Method::POST, "/v1/collections", Some(&key), Some(&six)),
    );
    let mut created: Vec<(u16, Option<String>)> = [five?, six?]
        .iter()
        .map(|r| (r.status, r.error_code().map(str::to_string)))
        .collect();
    created.sort();
    assert_eq!(
        created,
        [(201, None), (429, Some("collection_quota_exceeded".to_string()))]
    );

    // A background job's room is held while it waits and runs on one replica (its embedder
    // slowed by a fault), against writes through the other.
    let patient = json!({"name": "patient", "limits": {"documents": 30}});
    let created = a
        .admin(Method::POST, "/admin/tenants", ADMIN, Some(&patient))
        .await?;
    let id = created.body["id"].as_str().unwrap_or_default();
    let key = a
        .admin(Method::POST, &format!("/admin/tenants/{id}/keys"), ADMIN, None)
        .await?;
    let key = key.body["key"].as_str().unwrap_or_default().to_string();
    let made = a
        .call(
            Method::POST,
            "/v1/collections",
            Some(&key),
            Some(&json!({"name": "slow"})),
        )
        .await?;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let slow = json!({"stage": "embedder", "kind": "delay", "delay_ms": 3000, "duration_s": 60});
    assert_eq!(
        a.admin(Method::POST, "/admin/faults", ADMIN, Some(&slow))
            .await?
            .status,
        200
    );
    let docs = |prefix: &str, n: usize| json!({"documents": (0..n).map(|i| note(&format!("{prefix}-{i}"))).collect::<Vec<_>>(), "wait": false});
    let queued = a
        .call(
            Method::POST,
            "/v1/collections/slow/documents",
            Some(&key),
            Some(&docs("q", 20)),
        )
        .await?;
    assert_eq!(queued.status, 202, "{:?}", queued.body);
    sees(&b, &key, "slow").await?;
    let over = b
        .call(
            Method::POST,
            "/v1/collections/slow/documents",
            Some(&key),
            Some(&docs("o", 11)),
        )
        .await?;
    assert_eq!(
        over.error_code(),
        Some("document_quota_exceeded"),
        "{:?}",
        over.body
    );
    assert_eq!(
        a.admin(Method::DELETE, "/admin/faults", ADMIN, None)
            .await?
            .status,
        204
    );
    let status_url = queued.body["status_url"].as_str().unwrap_or_default().to_string();
    let started = Instant::now();
    while a.call(Method::GET, &status_url, Some(&key), None).await?.body["state"] != "done" {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the job never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fits = b
        .call(
            Method::POST,
            "/v1/collections/slow/documents",
            Some(&key),
            Some(&docs("f", 10)),
        )
        .await?;
    assert_eq!(fits.status, 202, "{:?}", fits.body);
    Ok(())
}

fn long_note(id: usize, words: usize) -> Value {
    let text: Vec<String> = (0..words)
        .map(|w| format!("w{}x{}", (id * 7919 + w * 104_729) % 5003, w % 17))
        .collect();
    json!({"id": format!("long-{id}"), "text": text.join(" ")})
}

/// Item 7 of issue 22, with a real partition: replica A, in a network namespace of its own,
/// takes a collection's lease for a large batch; its link to Redis is cut (Qdrant stays
/// reachable) for longer than the lease lives, while replica B takes the lease over and deletes
/// a document (acknowledged). The link heals while A is still embedding. A's change, made from
/// the manifest it read before, must be refused (503 `write_fenced`), not written over B's; the
/// deleted document must not come back on either replica; and A's job, which B claimed when A's
/// lease on it lapsed, is finished by B.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_cut_off_from_redis_cannot_overwrite_what_another_wrote() -> anyhow::Result<()> {
    let test = "a_replica_cut_off_from_redis_cannot_overwrite_what_another_wrote";
    let namespace = ragway_e2e::Namespace::create()?;
    let [qdrant_host, redis_host] = namespace.host.clone();
    let Some(qdrant) = QdrantServer::start_on_or_skip(test, &qdrant_host)? else {
        return Ok(());
    };
    let redis = RedisServer::start_also_on(&redis_host)?;
    let (dir_a, dir_b, snapshots) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    // Store requests of at most 2 s: a change's lease lives 10 s (see lease::ttl_for).
    let base = replica(&qdrant, &redis, snapshots.path(), "[store]\ntimeout_ms = 2000");
    let mut options_a = base.clone().with_config("[ingest]\nbatch_chunks = 100000");
    options_a.env.retain(|(k, _)| k != "RAGWAY__CACHE__REDIS__URL");
    options_a
        .env
        .push(("RAGWAY__CACHE__REDIS__URL".into(), redis.url_on(&redis_host)));
    let a = Server::start_in(&namespace, dir_a.path(), &options_a).await?;
    let b = Server::start(dir_b.path(), &base).await?;

    let created = b
        .post(
            "/v1/collections",
            &json!({"name": "fenced", "chunk_words": 40, "chunk_overlap_words": 8}),
        )
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let seeded = b
        .post(
            "/v1/collections/fenced/documents",
            &json!({"documents": [note("old")]}),
        )
        .await?;
    assert_eq!(seeded.status, 200, "{:?}", seeded.body);
    eventually(&a, "/v1/collections/fenced", 10, |r| r.body["documents"] == 1).await?;

    // A's one batch: 40 documents of 800 words, ~1,000 chunks to embed under one lease (about
    // 25 s here, with B busy too; the lease lapses 10 s after the cut).
    const DOCUMENTS: usize = 40;
    let documents: Vec<Value> = (0..DOCUMENTS).map(|i| long_note(i, 800)).collect();
    let body = json!({ "documents": documents });
    let started = Instant::now();
    let ingest = {
        let url = a.url("/v1/collections/fenced/documents");
        let client = ragway_e2e::client()?;
        tokio::spawn(async move {
            let response = client.post(url).json(&body).send().await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<Value>().await?))
        })
    };
    let lock = "ragway:collection:fenced:lock";
    while redis.cli(&["EXISTS", lock])?.trim() != "1" {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "A never took the collection's lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    namespace.cut(&redis_host)?;
    let cut = started.elapsed();

    // B waits out A's lease, then deletes (acknowledged).
    let deleted = b.delete("/v1/collections/fenced/documents/old").await?;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    let acknowledged = started.elapsed();
    namespace.heal(&redis_host)?;
    assert!(
        !ingest.is_finished(),
        "A's batch ended before the link healed ({cut:?} cut, {acknowledged:?} healed): too small a batch to test fencing here"
    );

    let (status, reply) = ingest.await??;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (503, Some("write_fenced")),
        "A's stale change (cut at {cut:?}, healed at {acknowledged:?}, answered at {:?}): {reply:?}",
        started.elapsed()
    );

    // The job B claimed from A finishes there; the deleted document stays deleted everywhere.
    let jobs = eventually(&b, "/v1/collections/fenced/jobs", 240, |r| {
        r.body["jobs"]
            .as_array()
            .is_some_and(|jobs| jobs.len() == 2 && jobs.iter().all(|j| j["state"] == "done"))
    })
    .await?;
    assert_eq!(
        jobs.body["jobs"][1]["documents_done"], DOCUMENTS,
        "{:?}",
        jobs.body
    );
    for server in [&a, &b] {
        // Not one more: `old` is not listed again by either.
        let info = eventually(server, "/v1/collections/fenced", 10, |r| {
            r.body["documents"] == DOCUMENTS
        })
        .await;
        assert!(info.is_ok(), "{}: {info:?}", server.base);
        assert_ne!(
            first_hit(server, "fenced", "the lighthouse keeper tokenold")
                .await?
                .as_deref(),
            Some("old")
        );
    }
    // Every change recorded once, in order: none was written over another.
    let changes = redis.cli(&["LRANGE", "ragway:collection:fenced:changes", "0", "-1"])?;
    let numbers: Vec<u64> = changes
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|change| change["change"].as_u64())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    Ok(())
}
