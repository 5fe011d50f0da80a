//! Nothing single may fail: ragway on a real three-node Qdrant cluster (distributed mode on
//! loopback) loses a node under reads and writes — every read answered, every acknowledged
//! write found afterwards — and takes the node back once it answers again; ragway on Redis
//! Sentinel (Debian's redis-server as primary, replica and three sentinels) follows a failover
//! of the killed primary and keeps every acknowledged write. Skip, saying why, where no
//! `qdrant` binary exists (see ragway_e2e::QdrantServer).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ragway_e2e::{
    metric, QdrantCluster, QdrantServer, RedisSentinels, Server, ServerOptions, SENTINEL_MASTER,
};
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

/// What a writer saw: the documents acknowledged (and when), and the refusals (status, body).
type Writes = (Vec<(String, Instant)>, Vec<(u16, Value)>);

/// Writes one document at a time (`<prefix>-<n>`) until `running` is false.
fn writer(
    server: &Arc<Server>,
    running: &Arc<AtomicBool>,
    prefix: &'static str,
) -> tokio::task::JoinHandle<anyhow::Result<Writes>> {
    let (server, running) = (server.clone(), running.clone());
    tokio::spawn(async move {
        let (mut written, mut refused) = (Vec::new(), Vec::new());
        let mut i = 0;
        while running.load(Ordering::Relaxed) {
            let id = format!("{prefix}-{i}");
            i += 1;
            let reply = server
                .post(
                    "/v1/collections/facts/documents",
                    &json!({"documents": [note(&id)]}),
                )
                .await?;
            match reply.status {
                200 => written.push((id, Instant::now())),
                status => {
                    refused.push((status, reply.body));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Ok((written, refused))
    })
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
    let writer = writer(&server, &running, "w");
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
    let (written, refused) = writer.await??;
    let acknowledged: Vec<String> = written.into_iter().map(|(id, _)| id).collect();
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

/// ragway on Redis Sentinel (a primary, its replica, three sentinels) and one Qdrant server:
/// collections and jobs live in Redis. The primary is killed with SIGKILL under writes: writes
/// resume on the promoted replica within the failover time, without a restart of ragway, and
/// every write acknowledged before or after is still recorded and found.
#[tokio::test(flavor = "multi_thread")]
async fn redis_fails_over_under_writes_and_keeps_what_was_acknowledged() -> anyhow::Result<()> {
    let test = "redis_fails_over_under_writes_and_keeps_what_was_acknowledged";
    let Some(qdrant) = QdrantServer::start_or_skip(test)? else {
        return Ok(());
    };
    let mut redis = RedisSentinels::start()?;
    let sentinels: Vec<String> = redis.addresses().iter().map(|a| format!("\"{a}\"")).collect();
    let options = ServerOptions {
        config_toml: String::new(),
        env: vec![
            ("RAGWAY__STORE__KIND".into(), "qdrant".into()),
            ("RAGWAY__STORE__URL".into(), qdrant.grpc_url()),
            (
                "RAGWAY__CACHE__REDIS__SENTINELS".into(),
                format!("[{}]", sentinels.join(",")),
            ),
            ("RAGWAY__CACHE__REDIS__MASTER".into(), SENTINEL_MASTER.into()),
        ],
    };
    let dir = tempfile::tempdir()?;
    let server = Arc::new(Server::start(dir.path(), &options).await?);
    // The primary is known once a sentinel has named it (within a watch period).
    let started = Instant::now();
    let created = loop {
        let created = server.post("/v1/collections", &json!({"name": "facts"})).await?;
        if created.status != 503 || started.elapsed() > Duration::from_secs(5) {
            break created;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(created.status, 201, "{:?}", created.body);

    let running = Arc::new(AtomicBool::new(true));
    let writer = writer(&server, &running, "r");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = redis.primary()?;
    redis.servers[old].kill();
    let killed = Instant::now();
    // Sentinel promotes the replica; ragway follows it.
    let promoted = loop {
        let now = redis.primary()?;
        if now != old {
            break now;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.store(false, Ordering::Relaxed);
    let (written, refused) = writer.await??;
    let before = written.iter().filter(|(_, at)| *at < killed).count();
    let after: Vec<_> = written.iter().filter(|(_, at)| *at > killed).collect();
    eprintln!(
        "writes: {before} acknowledged before the kill, {} after, {} refused; primary {old} -> {promoted}",
        after.len(),
        refused.len()
    );
    assert!(
        before > 0 && !after.is_empty(),
        "writes did not resume: {refused:?}"
    );
    let resumed = after[0].1.duration_since(killed);
    eprintln!("first write acknowledged {resumed:?} after the kill");
    assert!(
        resumed < Duration::from_secs(15),
        "writes resumed only after {resumed:?}"
    );
    for (status, body) in &refused {
        assert_eq!(*status, 503, "{body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }

    // What was acknowledged is recorded on the promoted primary and found.
    // A write cut by the kill was refused, but its recorded job may still finish it.
    let info = server.get("/v1/collections/facts").await?;
    let documents = info.body["documents"].as_u64().unwrap_or(0) as usize;
    assert!(
        (written.len()..=written.len() + refused.len()).contains(&documents),
        "{} acknowledged, {} refused: {:?}",
        written.len(),
        refused.len(),
        info.body
    );
    for (id, _) in &written {
        assert!(
            finds(&server, id).await?,
            "{id} was acknowledged and is not found"
        );
    }
    let metrics = server.get_text("/metrics").await?;
    assert!(
        metric(&metrics, "ragway_redis_failovers_total") >= 1.0,
        "no failover seen"
    );

    // The old primary comes back as a replica of the new one; writes go on.
    redis.servers[old].restart()?;
    let started = Instant::now();
    while !redis.servers[old].in_sync() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the old primary did not rejoin as a replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let write = |id: &'static str| {
        let server = server.clone();
        async move {
            server
                .post(
                    "/v1/collections/facts/documents",
                    &json!({"documents": [note(id)]}),
                )
                .await
        }
    };
    assert_eq!(write("r-rejoined").await?.status, 200);

    // With the replica stalled, no lease (and so no change) counts: a promoted replica would not
    // know it. The write is refused as retryable, and goes through once the replica is back.
    let unreplicated = |m: &str| metric(m, "ragway_redis_unreplicated_writes_total");
    let before = unreplicated(&server.get_text("/metrics").await?);
    redis.servers[old].pause(true)?;
    let stalled = write("r-stalled").await;
    redis.servers[old].pause(false)?;
    let stalled = stalled?;
    assert_eq!(stalled.status, 503, "{:?}", stalled.body);
    assert!(unreplicated(&server.get_text("/metrics").await?) > before);
    assert_eq!(write("r-last").await?.status, 200);
    match Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(_) => anyhow::bail!("the server is still shared"),
    }
}
