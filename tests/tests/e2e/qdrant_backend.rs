//! ragway on a Qdrant server (`store.kind = "qdrant"`): the same answers as the embedded stores,
//! both engines in one Qdrant collection, and a ragway killed with SIGKILL finds its documents
//! again. Skips, saying why, where no `qdrant` binary exists (see ragway_e2e::QdrantServer).

use crate::common;

use common::{corpus, doc_ids, QUESTIONS};
use ragway_e2e::{metric, QdrantServer, Server, ServerOptions, NO_ANSWER_CACHES};
use reqwest::Method;
use serde_json::json;

fn on(qdrant: &QdrantServer) -> ServerOptions {
    ServerOptions {
        config_toml: String::new(),
        env: vec![
            ("RAGWAY__STORE__KIND".into(), "qdrant".into()),
            ("RAGWAY__STORE__URL".into(), qdrant.grpc_url()),
        ],
    }
}

/// A GET on Qdrant's REST API, as JSON.
async fn qdrant_rest(qdrant: &QdrantServer, path: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}{path}", qdrant.http_url());
    Ok(reqwest::get(url).await?.json().await?)
}

async fn search_first(
    server: &Server,
    question: &str,
    extra: serde_json::Value,
) -> anyhow::Result<Vec<String>> {
    let mut body = json!({"query": question, "top_k": 3});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let reply = server.post("/v1/collections/facts/search", &body).await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["mode"], "normal", "{:?}", reply.body);
    assert_eq!(reply.body["stages"]["dense"], "ok");
    assert_eq!(reply.body["stages"]["keyword"], "ok");
    Ok(doc_ids(&reply.body, "hits"))
}

#[tokio::test(flavor = "multi_thread")]
async fn ragway_on_a_qdrant_server_answers_and_survives_kill_9() -> anyhow::Result<()> {
    let Some(qdrant) = QdrantServer::start_or_skip("ragway_on_a_qdrant_server_answers_and_survives_kill_9")?
    else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &on(&qdrant)).await?;
    assert_eq!(
        server
            .post("/v1/collections", &json!({"name": "facts"}))
            .await?
            .status,
        201
    );
    let ingested = server.post("/v1/collections/facts/documents", &corpus()).await?;
    assert_eq!(ingested.status, 200, "{:?}", ingested.body);

    // The points are in Qdrant, with both vectors; nothing is in the embedded stores' directories.
    let listed: serde_json::Value = qdrant_rest(&qdrant, "/collections").await?;
    let names: Vec<&str> = listed["result"]["collections"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["ragway_facts"], "{listed}");
    let info: serde_json::Value = qdrant_rest(&qdrant, "/collections/ragway_facts").await?;
    assert_eq!(info["result"]["points_count"], 6, "{info}");
    assert_eq!(
        info["result"]["config"]["params"]["sparse_vectors"]["bm25"]["modifier"], "idf",
        "{info}"
    );
    assert!(!dir.path().join("dense/facts").exists() && !dir.path().join("keyword/facts").exists());

    for (question, expected) in QUESTIONS {
        let ids = search_first(&server, question, json!({})).await?;
        assert_eq!(
            ids.first().map(String::as_str),
            Some(expected),
            "{question}: {ids:?}"
        );
    }
    // Keyword search alone runs in Qdrant too (sparse vectors): a rare word finds its document.
    let keyword = search_first(
        &server,
        "chlorophyll",
        json!({"fusion": {"method": "convex", "alpha": 0.0}}),
    )
    .await?;
    assert_eq!(
        keyword.first().map(String::as_str),
        Some("photosynthesis"),
        "{keyword:?}"
    );
    let filtered = search_first(
        &server,
        "network",
        json!({"top_k": 10, "filter": {"year": 2021, "topic": "networking"}}),
    )
    .await?;
    assert_eq!(filtered, ["tcp"]);

    // Re-sending a changed document replaces its points; deleting one removes them.
    let changed = json!({"documents": [{"id": "marathon", "text": "The marathon now covers a glacier crossing in Patagonia."}]});
    assert_eq!(
        server
            .post("/v1/collections/facts/documents", &changed)
            .await?
            .status,
        200
    );
    let glacier = search_first(&server, "glacier crossing Patagonia", json!({})).await?;
    assert_eq!(glacier.first().map(String::as_str), Some("marathon"));
    assert_eq!(
        server.delete("/v1/collections/facts/documents/tcp").await?.status,
        200
    );
    let gone = search_first(&server, "three-way handshake SYN ACK", json!({"top_k": 10})).await?;
    assert!(!gone.contains(&"tcp".to_string()), "{gone:?}");

    drop(server); // SIGKILL
    let server = Server::start(dir.path(), &on(&qdrant)).await?;
    let ids = search_first(&server, QUESTIONS[0].0, json!({})).await?;
    assert_eq!(ids.first().map(String::as_str), Some(QUESTIONS[0].1));
    assert_eq!(server.delete("/v1/collections/facts").await?.status, 204);
    let listed: serde_json::Value = qdrant_rest(&qdrant, "/collections").await?;
    assert_eq!(
        listed["result"]["collections"],
        json!([]),
        "dropping the collection drops it in Qdrant"
    );
    server.stop().await
}

const ADMIN: &str = "test-admin-key";

async fn searches_by_path(server: &Server, path: &str) -> anyhow::Result<f64> {
    let exposition = server.get_text("/metrics").await?;
    Ok(metric(
        &exposition,
        &format!("ragway_retrieval_paths_total{{path=\"{path}\"}}"),
    ))
}

/// While both engines are healthy a search is one round trip to Qdrant (fused there for
/// equal-weight RRF and DBSF, by ragway otherwise) and finds what two searches find; with a fault
/// in one engine, each is searched through its own guard and only that stage degrades.
#[tokio::test(flavor = "multi_thread")]
async fn one_round_trip_while_healthy_and_each_engine_degrades_on_its_own() -> anyhow::Result<()> {
    let Some(qdrant) =
        QdrantServer::start_or_skip("one_round_trip_while_healthy_and_each_engine_degrades_on_its_own")?
    else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let mut options = on(&qdrant);
    options.config_toml = NO_ANSWER_CACHES.into();
    options.env.push(("RAGWAY_ADMIN_KEY".into(), ADMIN.into()));
    let server = Server::start(dir.path(), &options).await?;
    assert_eq!(
        server
            .post("/v1/collections", &json!({"name": "facts"}))
            .await?
            .status,
        201
    );
    assert_eq!(
        server
            .post("/v1/collections/facts/documents", &corpus())
            .await?
            .status,
        200
    );

    let fusions = [
        json!({}),
        json!({"fusion": {"method": "rrf", "k": 60, "alpha": 0.5}}),
        json!({"fusion": {"method": "dbsf", "alpha": 0.5}}),
        json!({"fusion": {"method": "convex", "alpha": 0.7}}),
    ];
    for fusion in &fusions {
        for (question, expected) in QUESTIONS {
            let ids = search_first(&server, question, fusion.clone()).await?;
            assert_eq!(
                ids.first().map(String::as_str),
                Some(expected),
                "{fusion}: {question}"
            );
        }
    }
    let searches = (fusions.len() * QUESTIONS.len()) as f64;
    assert_eq!(searches_by_path(&server, "one_round_trip").await?, searches);
    assert_eq!(searches_by_path(&server, "per_engine").await?, 0.0);

    for (stage, mode, other) in [
        ("keyword", "dense_only", "dense"),
        ("dense", "keyword_only", "keyword"),
    ] {
        let fault = json!({"stage": stage, "kind": "error", "duration_s": 60});
        let reply = server
            .admin(Method::POST, "/admin/faults", ADMIN, Some(&fault))
            .await?;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let (question, expected) = QUESTIONS[3];
        let reply = server
            .post(
                "/v1/collections/facts/search",
                &json!({"query": question, "top_k": 3}),
            )
            .await?;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.body["mode"], mode, "{:?}", reply.body);
        assert_eq!(reply.body["stages"][stage], "failed", "{:?}", reply.body);
        assert_eq!(reply.body["stages"][other], "ok", "{:?}", reply.body);
        assert_eq!(
            doc_ids(&reply.body, "hits").first().map(String::as_str),
            Some(expected)
        );
        let cleared = server.admin(Method::DELETE, "/admin/faults", ADMIN, None).await?;
        assert_eq!(cleared.status, 204);
    }
    assert_eq!(searches_by_path(&server, "per_engine").await?, 2.0);
    server.stop().await
}

/// Deleting a tenant while Qdrant is down: its keys stop at once, the answer is 503 with
/// `Retry-After` and the tenant stays (`deleting`), and a retry once Qdrant is back drops its
/// collections and only then forgets it: nothing is left stored and unreachable.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_deleted_while_qdrant_is_down_is_deleted_by_a_retry() -> anyhow::Result<()> {
    let Some(mut qdrant) =
        QdrantServer::start_or_skip("a_tenant_deleted_while_qdrant_is_down_is_deleted_by_a_retry")?
    else {
        return Ok(());
    };
    const ADMIN: &str = "qdrant-admin-key";
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &on(&qdrant).with_admin(ADMIN)).await?;
    let (id, key) = server.tenant(ADMIN, &json!({"name": "leaving"})).await?;
    server.seeded(Some(&key), "notes", &corpus()).await?;
    let stored = |collections: &serde_json::Value| {
        collections["result"]["collections"]
            .as_array()
            .is_some_and(|all| {
                all.iter()
                    .any(|c| c["name"].as_str().is_some_and(|n| n.contains(&id)))
            })
    };
    assert!(
        stored(&qdrant_rest(&qdrant, "/collections").await?),
        "the tenant's collection is in Qdrant"
    );

    qdrant.kill();
    // A store's own failure is named, its words (addresses, paths) are only logged.
    let late = json!({"documents": [{"id": "late", "text": "A note written while Qdrant is down."}]});
    let failed = server
        .call(
            Method::POST,
            "/v1/collections/notes/documents",
            Some(&key),
            Some(&late),
        )
        .await?;
    assert_eq!(
        (failed.status, failed.error_code()),
        (503, Some("dense_store_failed")),
        "{:?}",
        failed.body
    );
    assert_eq!(
        failed.body["error"]["message"], "the dense store failed (the server log has the details)",
        "{:?}",
        failed.body
    );
    let path = format!("/admin/tenants/{id}");
    let cut = server.admin(Method::DELETE, &path, ADMIN, None).await?;
    assert_eq!(
        (cut.status, cut.error_code(), cut.retry_after),
        (503, Some("tenant_deletion_unfinished"), Some(5)),
        "{:?}",
        cut.body
    );
    let refused = server
        .call(Method::GET, "/v1/collections", Some(&key), None)
        .await?;
    assert_eq!(
        refused.status, 401,
        "the keys of a tenant being deleted still work"
    );
    let listed = server.admin(Method::GET, &path, ADMIN, None).await?;
    assert_eq!(
        (listed.status, &listed.body["deleting"]),
        (200, &json!(true)),
        "{:?}",
        listed.body
    );

    qdrant.restart()?;
    let started = std::time::Instant::now();
    loop {
        let retry = server.admin(Method::DELETE, &path, ADMIN, None).await?;
        if retry.status == 204 {
            break;
        }
        assert_eq!(retry.status, 503, "{:?}", retry.body);
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "never finished: {:?}",
            retry.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(server.admin(Method::GET, &path, ADMIN, None).await?.status, 404);
    assert!(
        !stored(&qdrant_rest(&qdrant, "/collections").await?),
        "the tenant's collection is still in Qdrant"
    );
    server.stop().await
}
