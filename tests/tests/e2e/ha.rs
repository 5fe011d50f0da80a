//! Nothing single may fail: ragway on a real three-node Qdrant cluster (distributed mode on
//! loopback) loses a node under reads and writes — every read answered, every acknowledged
//! write found afterwards — and takes the node back once it answers again. Skips, saying why,
//! where no `qdrant` binary exists (see ragway_e2e::QdrantServer).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ragway_e2e::{metric, QdrantCluster, Server, ServerOptions};
use serde_json::{json, Value};

use crate::common::{corpus, doc_ids};

fn on_cluster(cluster: &QdrantCluster) -> ServerOptions {
    let urls: Vec<String> = cluster.grpc_urls().iter().map(|u| format!("\"{u}\"")).collect();
    ServerOptions {
        config_toml: String::new(),
        env: vec![
            ("RAGWAY__STORE__KIND".into(), "qdrant".into()),
            ("RAGWAY__STORE__URLS".into(), format!("[{}]", urls.join(","))),
        ],
    }
}

fn note(id: &str) -> Value {
    json!({"id": id, "text": format!("Note {id} is about the lighthouse keeper token{} and the tide tables.", id.replace('-', "x"))})
}

/// The first hit's document for `id`'s own words.
async fn finds(server: &Server, id: &str) -> anyhow::Result<bool> {
    let text = note(id)["text"].as_str().unwrap_or_default().to_string();
    let reply = server
        .post(
            "/v1/collections/facts/search",
            &json!({"query": text, "top_k": 1}),
        )
        .await?;
    Ok(reply.status == 200 && doc_ids(&reply.body, "hits").first().map(String::as_str) == Some(id))
}

async fn node_up(server: &Server, url: &str) -> anyhow::Result<f64> {
    let metrics = server.get_text("/metrics").await?;
    Ok(metric(
        &metrics,
        &format!("ragway_store_node_up{{node=\"{url}\"}}"),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qdrant_cluster_loses_a_node_under_reads_and_writes() -> anyhow::Result<()> {
    let test = "a_qdrant_cluster_loses_a_node_under_reads_and_writes";
    let Some(mut cluster) = QdrantCluster::start_or_skip(test, 3).await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let server = Arc::new(Server::start(dir.path(), &on_cluster(&cluster)).await?);
    let created = server.post("/v1/collections", &json!({"name": "facts"})).await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let ingested = server.post("/v1/collections/facts/documents", &corpus()).await?;
    assert_eq!(ingested.status, 200, "{:?}", ingested.body);

    // A cluster's collection: 2 shards of 2 replicas each (the defaults with several nodes).
    let listed: Value = reqwest::get(format!("{}/collections", cluster.nodes[1].http_url()))
        .await?
        .json()
        .await?;
    let name = listed["result"]["collections"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find_map(|c| c["name"].as_str().filter(|n| n.ends_with("facts")))
        })
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no Qdrant collection for facts: {listed}"))?;
    let info: Value = reqwest::get(format!("{}/collections/{name}", cluster.nodes[2].http_url()))
        .await?
        .json()
        .await?;
    let params = &info["result"]["config"]["params"];
    assert_eq!(
        (
            params["shard_number"].as_u64(),
            params["replication_factor"].as_u64()
        ),
        (Some(2), Some(2)),
        "{info}"
    );

    // Reads and writes all along; a node is killed with SIGKILL a second in.
    let running = Arc::new(AtomicBool::new(true));
    let reader = tokio::spawn({
        let (server, running) = (server.clone(), running.clone());
        async move {
            let (mut answered, mut failed) = (0, Vec::new());
            while running.load(Ordering::Relaxed) {
                // A new question each time: no cache answers for the store.
                let question = format!("Which planet is red? ({answered})");
                let reply = server
                    .post(
                        "/v1/collections/facts/search",
                        &json!({"query": question, "top_k": 3}),
                    )
                    .await?;
                match (reply.status, reply.body["mode"].as_str()) {
                    (200, Some("normal")) => answered += 1,
                    _ => failed.push(reply.body),
                }
            }
            anyhow::Ok((answered, failed))
        }
    });
    let writer = tokio::spawn({
        let (server, running) = (server.clone(), running.clone());
        async move {
            let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
            let mut i = 0;
            while running.load(Ordering::Relaxed) {
                let id = format!("w-{i}");
                i += 1;
                let reply = server
                    .post(
                        "/v1/collections/facts/documents",
                        &json!({"documents": [note(&id)]}),
                    )
                    .await?;
                match reply.status {
                    200 => acknowledged.push(id),
                    _ => refused.push(reply.body),
                }
            }
            anyhow::Ok((acknowledged, refused))
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = cluster.nodes[0].grpc_url();
    cluster.nodes[0].kill();
    let started = Instant::now();
    while node_up(&server, &killed).await? != 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the dead node is still in use"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    running.store(false, Ordering::Relaxed);
    let (answered, failed) = reader.await??;
    let (acknowledged, refused) = writer.await??;
    eprintln!(
        "reads: {answered} answered, {} not; writes: {} acknowledged, {} refused",
        failed.len(),
        acknowledged.len(),
        refused.len()
    );
    assert!(failed.is_empty(), "reads not answered in full: {failed:?}");
    assert!(refused.is_empty(), "writes refused: {refused:?}");
    assert!(acknowledged.len() > 5, "too few writes to tell: {acknowledged:?}");

    // Every acknowledged write is found with one node still down.
    for id in &acknowledged {
        assert!(
            finds(&server, id).await?,
            "{id} was acknowledged and is not found"
        );
    }

    // The node comes back; ragway takes it into use again.
    cluster.nodes[0].restart()?;
    let started = Instant::now();
    while node_up(&server, &killed).await? != 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the node that came back is not in use"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = acknowledged.last().cloned().unwrap_or_default();
    assert!(finds(&server, &last).await?);
    match Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(_) => anyhow::bail!("the server is still shared"),
    }
}
