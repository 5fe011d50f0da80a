//! Snapshots: a collection written to one file and restored into a fresh data directory answers
//! the same queries with the same hits; across store kinds too (embedded → Qdrant server, when a
//! `qdrant` binary exists). Restore refuses an existing name and a bad file name. Scheduled
//! snapshots keep the newest `keep` of each collection, listed and restorable; a failing one is
//! counted and serving goes on.

use crate::common;

use common::{corpus, QUESTIONS};
use ragway_e2e::{QdrantServer, Server, ServerOptions};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-key";

fn options(extra_env: Vec<(String, String)>) -> ServerOptions {
    let mut env = vec![("RAGWAY_ADMIN_KEY".to_string(), ADMIN.to_string())];
    env.extend(extra_env);
    ServerOptions {
        config_toml: ragway_e2e::NO_ANSWER_CACHES.into(),
        env,
    }
}

/// Each question's hits (ids and scores, rounded) from `/search`.
async fn hits(server: &Server) -> anyhow::Result<Vec<Vec<(String, String)>>> {
    let mut all = Vec::new();
    for (question, _) in QUESTIONS {
        let reply = server
            .post(
                "/v1/collections/facts/search",
                &json!({"query": question, "top_k": 5}),
            )
            .await?;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.body["mode"], "normal", "{:?}", reply.body);
        let found = reply.body["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                (
                    h["chunk_id"].as_str().unwrap_or_default().to_string(),
                    format!("{:.4}", h["score"].as_f64().unwrap_or(-1.0)),
                )
            })
            .collect();
        all.push(found);
    }
    Ok(all)
}

/// `POST /admin/collections/{name}/restore` with `snapshot`.
async fn ask_restore(server: &Server, name: &str, snapshot: &str) -> anyhow::Result<ragway_e2e::Reply> {
    let body = json!({ "snapshot": snapshot });
    let path = format!("/admin/collections/{name}/restore");
    server.admin(Method::POST, &path, ADMIN, Some(&body)).await
}

/// Copies `snapshot` from one data dir to another's `snapshots/` and restores it as `facts`.
async fn restore(
    from: &std::path::Path,
    to_dir: &std::path::Path,
    to: &Server,
    snapshot: &str,
) -> anyhow::Result<Value> {
    std::fs::create_dir_all(to_dir.join("snapshots"))?;
    std::fs::copy(
        from.join("snapshots").join(snapshot),
        to_dir.join("snapshots").join(snapshot),
    )?;
    let restored = ask_restore(to, "facts", snapshot).await?;
    assert_eq!(restored.status, 201, "{:?}", restored.body);
    Ok(restored.body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_snapshot_answers_the_same_queries_with_the_same_hits() -> anyhow::Result<()> {
    let first_dir = tempfile::tempdir()?;
    let first = Server::start(first_dir.path(), &options(vec![])).await?;
    first.post("/v1/collections", &json!({"name": "facts"})).await?;
    assert_eq!(
        first
            .post("/v1/collections/facts/documents", &corpus())
            .await?
            .status,
        200
    );
    let expected = hits(&first).await?;

    let taken = first
        .admin(Method::POST, "/admin/collections/facts/snapshot", ADMIN, None)
        .await?;
    assert_eq!(taken.status, 200, "{:?}", taken.body);
    assert_eq!(taken.body["documents"], 6);
    let snapshot = taken.body["snapshot"].as_str().unwrap_or_default().to_string();
    let missing = first
        .admin(Method::POST, "/admin/collections/nope/snapshot", ADMIN, None)
        .await?;
    assert_eq!(missing.status, 404);
    let no_key = first
        .post("/admin/collections/facts/snapshot", &json!({}))
        .await?;
    assert_eq!(no_key.status, 401);
    // Restoring over an existing collection, or from a path, is refused.
    let exists = ask_restore(&first, "facts", &snapshot).await?;
    assert_eq!(exists.status, 409, "{:?}", exists.body);
    let escaped = ask_restore(&first, "other", "../collections/facts.json").await?;
    assert_eq!(escaped.status, 400, "{:?}", escaped.body);

    // A fresh data directory, the embedded stores.
    let second_dir = tempfile::tempdir()?;
    let second = Server::start(second_dir.path(), &options(vec![])).await?;
    let restored = restore(first_dir.path(), second_dir.path(), &second, &snapshot).await?;
    assert_eq!(restored["documents"], 6, "{restored}");
    assert_eq!(hits(&second).await?, expected, "the same hits after a restore");
    // Its documents are known: re-sending one unchanged indexes nothing.
    let again = second.post("/v1/collections/facts/documents", &corpus()).await?;
    assert_eq!(again.body["indexed"], 0, "{:?}", again.body);
    second.stop().await?;

    // A Qdrant server restores the same file.
    let Some(qdrant) = QdrantServer::start_or_skip(
        "a_restored_snapshot_answers_the_same_queries_with_the_same_hits (Qdrant part)",
    )?
    else {
        return first.stop().await;
    };
    let third_dir = tempfile::tempdir()?;
    let env = vec![
        ("RAGWAY__STORE__KIND".to_string(), "qdrant".to_string()),
        ("RAGWAY__STORE__URL".to_string(), qdrant.grpc_url()),
    ];
    let third = Server::start(third_dir.path(), &options(env)).await?;
    restore(first_dir.path(), third_dir.path(), &third, &snapshot).await?;
    let on_qdrant = hits(&third).await?;
    // Dense search sees the same vectors; BM25 is another engine's, so the fused order may move
    // below the top: each question's first hit is the same.
    let first_hits = |all: &Vec<Vec<(String, String)>>| -> Vec<String> {
        all.iter()
            .map(|q| q.first().map(|(id, _)| id.clone()).unwrap_or_default())
            .collect()
    };
    assert_eq!(
        first_hits(&on_qdrant),
        first_hits(&expected),
        "the same first hits on a Qdrant server"
    );
    third.stop().await?;
    first.stop().await
}

/// The scheduled snapshots of `collection` listed now.
async fn listed(server: &Server, collection: &str) -> anyhow::Result<Vec<Value>> {
    let list = server.admin(Method::GET, "/admin/snapshots", ADMIN, None).await?;
    anyhow::ensure!(list.status == 200, "{:?}", list.body);
    Ok(list.body["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["collection"] == collection)
        .cloned()
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_snapshots_keep_the_newest_and_restore() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = options(Vec::new()).with_config("[snapshots]\nevery_s = 1\nkeep = 2");
    let server = Server::start(dir.path(), &options).await?;
    server.seeded(None, "facts", &corpus()).await?;
    let started = std::time::Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 4 {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "snapshots seen: {seen:?}"
        );
        for snapshot in listed(&server, "facts").await? {
            seen.insert(snapshot["snapshot"].as_str().unwrap_or_default().to_string());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let kept = listed(&server, "facts").await?;
    assert!(kept.len() <= 2, "keep = 2: {kept:?} (of {seen:?})");
    let newest = kept
        .last()
        .and_then(|s| s["snapshot"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        kept.iter().all(|s| s["bytes"].as_u64().is_some_and(|b| b > 0)),
        "{kept:?}"
    );
    let restored = server
        .admin(
            Method::POST,
            "/admin/collections/copy/restore",
            ADMIN,
            Some(&json!({"snapshot": newest})),
        )
        .await?;
    assert_eq!(restored.status, 201, "{:?}", restored.body);
    assert_eq!(
        restored.body["documents"],
        corpus()["documents"].as_array().map(Vec::len).unwrap_or(0)
    );
    let found = server
        .post(
            "/v1/collections/copy/search",
            &json!({"query": QUESTIONS[0].0, "top_k": 1}),
        )
        .await?;
    assert_eq!(
        found.body["hits"][0]["doc_id"], QUESTIONS[0].1,
        "{:?}",
        found.body
    );
    Ok(())
}

/// Issue 39 item 4: a collection on a schedule of its own, none for the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_collection_can_have_a_snapshot_schedule_of_its_own() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = options(Vec::new()).with_config("[snapshots.collections.facts]\nevery_s = 1\nkeep = 1");
    let server = Server::start(dir.path(), &options).await?;
    server.seeded(None, "facts", &corpus()).await?;
    server.seeded(None, "other", &corpus()).await?;
    let started = std::time::Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "snapshots of facts seen: {seen:?}"
        );
        for snapshot in listed(&server, "facts").await? {
            seen.insert(snapshot["snapshot"].as_str().unwrap_or_default().to_string());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(listed(&server, "facts").await?.len() <= 1, "keep = 1");
    assert!(
        listed(&server, "other").await?.is_empty(),
        "no schedule for the others"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_scheduled_snapshot_is_counted_and_serving_goes_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The snapshot directory is a file: every snapshot fails.
    let blocked = dir.path().join("not-a-directory");
    std::fs::write(&blocked, b"x")?;
    let env = vec![(
        "RAGWAY__SERVER__SNAPSHOT_DIR".to_string(),
        blocked.display().to_string(),
    )];
    let options = options(env).with_config("[snapshots]\nevery_s = 1");
    let server = Server::start(&dir.path().join("data"), &options).await?;
    server.seeded(None, "facts", &corpus()).await?;
    let failed = "ragway_snapshots_total{outcome=\"failed\"}";
    let started = std::time::Instant::now();
    while ragway_e2e::metric(&server.get_text("/metrics").await?, failed) < 2.0 {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no failed snapshot counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let found = server
        .post(
            "/v1/collections/facts/search",
            &json!({"query": QUESTIONS[0].0, "top_k": 1}),
        )
        .await?;
    assert_eq!(found.body["mode"], "normal", "{:?}", found.body);
    assert_eq!(found.body["hits"][0]["doc_id"], QUESTIONS[0].1);
    Ok(())
}
