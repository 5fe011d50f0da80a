//! `/import` through the real binary: an NDJSON body sent in small pieces becomes one job over
//! parts; a line's vector is stored as given (the embedder skipped: a document whose vector is
//! another text's embedding is found, dense only, by that other text), a line without one is
//! embedded; the same body again changes nothing; a bad line refuses the whole import, naming its
//! line, and leaves nothing behind; an import acknowledged with `202` and then `kill -9` finishes
//! after the restart.

use std::time::{Duration, Instant};

use ragway_e2e::{Reply, Server, ServerOptions, NO_ANSWER_CACHES};
use reqwest::Method;
use serde_json::{json, Value};

const IMPORT: &str = "/v1/collections/bulk/import";
const ADMIN: &str = "import-admin-key";

/// The job's status once it is no longer queued or running (at most 180 s).
async fn finished(server: &Server, accepted: &Reply) -> anyhow::Result<Value> {
    crate::common::job_finished(server, accepted, Duration::from_secs(180)).await
}

/// Posts `body` as NDJSON in pieces of `piece` bytes (a client streaming a large file).
async fn import(server: &Server, body: &str, piece: usize) -> anyhow::Result<Reply> {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.as_bytes().chunks(piece).map(|p| Ok(p.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(pieces));
    server.post_body(IMPORT, "application/x-ndjson", body).await
}

async fn embed(server: &Server, texts: &[&str]) -> anyhow::Result<Vec<Value>> {
    let reply = server.post("/v1/embeddings", &json!({"input": texts})).await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    Ok(reply.body["data"]
        .as_array()
        .map(|d| d.iter().map(|e| e["embedding"].clone()).collect())
        .unwrap_or_default())
}

fn line(id: &str, text: &str, vector: Option<&Value>) -> String {
    let mut doc = json!({"id": id, "text": text, "metadata": {"n": id}});
    if let Some(vector) = vector {
        doc["vector"] = vector.clone();
    }
    doc.to_string()
}

/// `count` lines, every `plain`-th without a vector, the others with `vector`.
fn lines(count: usize, plain: usize, vector: &Value) -> String {
    (0..count)
        .map(|i| {
            let text = format!("catalogue entry {i} of the warehouse inventory");
            line(&format!("item-{i}"), &text, (i % plain != 0).then_some(vector))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn documents(server: &Server) -> anyhow::Result<u64> {
    Ok(server.get("/v1/collections/bulk").await?.body["documents"]
        .as_u64()
        .unwrap_or(0))
}

/// Waits (at most 10 s) until a refused import's parts are gone.
async fn parts_removed(server: &Server) -> anyhow::Result<()> {
    let started = Instant::now();
    while leftover_parts(server)? > 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "a refused import's parts stay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn leftover_parts(server: &Server) -> anyhow::Result<usize> {
    let jobs = server.data_dir.join("jobs");
    Ok(std::fs::read_dir(jobs)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parts"))
        .count())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_stores_given_vectors_as_given_and_refuses_a_bad_line_whole() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: NO_ANSWER_CACHES.into(),
        env: vec![("RAGWAY_ADMIN_KEY".into(), ADMIN.into())],
    };
    let server = Server::start(dir.path(), &options).await?;
    server.post("/v1/collections", &json!({"name": "bulk"})).await?;
    let texts = [
        "the zebra grazes on the open savanna at dawn",
        "filing quarterly tax returns before the deadline",
    ];
    let vectors = embed(&server, &texts).await?;
    // `decoy`'s text is about taxes, its vector the zebra sentence's.
    let mut body = lines(2_100, 50, &vectors[1]);
    body.push('\n');
    body.push_str(&line("decoy", texts[1], Some(&vectors[0])));
    body.push_str("\n\n");
    body.push_str(&line("plain", "a lighthouse keeper logs the passing ships", None));
    body.push('\n');

    let accepted = import(&server, &body, 4_096).await?;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    assert_eq!(accepted.body["documents"], 2_102);
    assert_eq!(accepted.body["with_vectors"], 2_100 - 42 + 1);
    let job = finished(&server, &accepted).await?;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        (job["indexed"].clone(), job["chunks_done"].clone()),
        (json!(2_102), json!(2_102)),
        "{job}"
    );
    assert_eq!(documents(&server).await?, 2_102);
    assert_eq!(
        leftover_parts(&server)?,
        0,
        "the job's parts are removed when it ends"
    );

    // Dense only: the zebra question finds the document that came with the zebra vector.
    let fault = json!({"stage": "keyword", "kind": "error", "duration_s": 60});
    let injected = server
        .admin(Method::POST, "/admin/faults", ADMIN, Some(&fault))
        .await?;
    assert_eq!(injected.status, 200, "{:?}", injected.body);
    let search = |query: &str| json!({"query": query, "top_k": 1});
    let zebra = server
        .post(
            "/v1/collections/bulk/search",
            &search("zebras grazing on the savanna"),
        )
        .await?;
    assert_eq!(zebra.body["mode"], "dense_only", "{:?}", zebra.body);
    assert_eq!(zebra.body["hits"][0]["doc_id"], "decoy", "{:?}", zebra.body);
    assert_eq!(zebra.body["hits"][0]["metadata"]["n"], "decoy");
    // The line without a vector was embedded from its text.
    let ships = server
        .post(
            "/v1/collections/bulk/search",
            &search("who records the ships going by the lighthouse"),
        )
        .await?;
    assert_eq!(ships.body["hits"][0]["doc_id"], "plain", "{:?}", ships.body);
    server.admin(Method::DELETE, "/admin/faults", ADMIN, None).await?;

    // The same body again: nothing changes.
    let again = import(&server, &body, 65_536).await?;
    assert_eq!(again.status, 202, "{:?}", again.body);
    let job = finished(&server, &again).await?;
    assert_eq!(
        (job["indexed"].clone(), job["unchanged"].clone()),
        (json!(0), json!(2_102)),
        "{job}"
    );

    // A bad line, late in the body, refuses all of it: nothing stored, no job, no parts left.
    let jobs_before = server.get("/v1/collections/bulk/jobs").await?.body["jobs"]
        .as_array()
        .map_or(0, Vec::len);
    let fresh = lines(1_500, 1_000_000, &vectors[1]).replace("item-", "new-");
    let mut short = vectors[1].clone();
    if let Some(values) = short.as_array_mut() {
        values.pop();
    }
    let cases = [
        (
            line("new-x", "a vector one value short", Some(&short)),
            "invalid_vector",
        ),
        (
            "{\"id\": \"new-x\", \"text\": ".to_string(),
            "invalid_import_line",
        ),
        (
            line("new-7", "an id that came before", None),
            "duplicate_document_id",
        ),
        (line("new-x", " ", None), "empty_document"),
    ];
    for (bad, code) in cases {
        let body = format!("{fresh}\n{bad}\n{}", line("new-last", "after the bad line", None));
        let refused = import(&server, &body, 8_192).await?;
        assert_eq!(refused.status, 400, "{code}: {:?}", refused.body);
        assert_eq!(refused.error_code(), Some(code), "{:?}", refused.body);
        let message = refused.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("line 1501:"), "{code}: {message}");
    }
    assert_eq!(documents(&server).await?, 2_102);
    let jobs_after = server.get("/v1/collections/bulk/jobs").await?.body["jobs"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(jobs_after, jobs_before, "a refused import makes no job");
    parts_removed(&server).await?;
    Ok(())
}

/// Issue 39 item 2: storage is a collection setting, defaulting to `[store]`'s.
#[tokio::test(flavor = "multi_thread")]
async fn a_collection_keeps_the_storage_it_was_made_with() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default().with_config(NO_ANSWER_CACHES);
    let server = Server::start(dir.path(), &options).await?;
    let default = server.post("/v1/collections", &json!({"name": "bulk"})).await?;
    assert_eq!(
        default.body["storage"],
        json!({"quantization": "int8", "vectors_on_disk": true}),
        "{:?}",
        default.body
    );
    let exact = json!({"name": "exact", "storage": {"quantization": "none"}});
    let made = server.post("/v1/collections", &exact).await?;
    assert_eq!(made.status, 201, "{:?}", made.body);
    assert_eq!(
        made.body["storage"],
        json!({"quantization": "none", "vectors_on_disk": true})
    );
    // What the shard was made with is on disk (Qdrant Edge's own config), and survives a restart.
    let config: Value = serde_json::from_slice(&std::fs::read(
        server.data_dir.join("dense/exact/edge_config.json"),
    )?)?;
    assert!(config["vectors"][""]["quantization_config"].is_null(), "{config}");
    let quantized: Value = serde_json::from_slice(&std::fs::read(
        server.data_dir.join("dense/bulk/edge_config.json"),
    )?)?;
    assert!(
        quantized["vectors"][""]["quantization_config"]["scalar"].is_object(),
        "{quantized}"
    );
    drop(server);
    let server = Server::start(dir.path(), &options).await?;
    let info = server.get("/v1/collections/exact").await?;
    assert_eq!(info.body["storage"]["quantization"], "none", "{:?}", info.body);
    let bad = json!({"name": "bad", "storage": {"quantization": "int4"}});
    assert_eq!(server.post("/v1/collections", &bad).await?.status, 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_over_a_storage_quota_is_refused_whole() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default()
        .with_config(NO_ANSWER_CACHES)
        .with_admin(ADMIN);
    let server = Server::start(dir.path(), &options).await?;
    let body = json!({"name": "capped", "limits": {"documents": 1_500}});
    let created = server
        .admin(Method::POST, "/admin/tenants", ADMIN, Some(&body))
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap_or_default().to_string();
    let key = server
        .admin(Method::POST, &format!("/admin/tenants/{id}/keys"), ADMIN, None)
        .await?;
    let key = key.body["key"].as_str().unwrap_or_default().to_string();
    let made = server
        .call(
            Method::POST,
            "/v1/collections",
            Some(&key),
            Some(&json!({"name": "bulk"})),
        )
        .await?;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let vector = embed_as(&server, Some(&key)).await?;
    let over = server
        .post_body_as(
            Some(&key),
            IMPORT,
            "application/x-ndjson",
            lines(2_000, 1_000_000, &vector),
        )
        .await?;
    assert_eq!(over.status, 413, "{:?}", over.body);
    assert_eq!(over.error_code(), Some("document_quota_exceeded"));
    let info = server
        .call(Method::GET, "/v1/collections/bulk", Some(&key), None)
        .await?;
    assert_eq!(info.body["documents"], 0, "{:?}", info.body);
    parts_removed(&server).await?;
    let within = server
        .post_body_as(
            Some(&key),
            IMPORT,
            "application/x-ndjson",
            lines(1_500, 1_000_000, &vector),
        )
        .await?;
    assert_eq!(within.status, 202, "{:?}", within.body);
    Ok(())
}

async fn embed_as(server: &Server, key: Option<&str>) -> anyhow::Result<Value> {
    let body = json!({"input": ["an inventory of the warehouse"]});
    let reply = server
        .call(Method::POST, "/v1/embeddings", key, Some(&body))
        .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    Ok(reply.body["data"][0]["embedding"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_import_finishes_after_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default().with_config(NO_ANSWER_CACHES);
    let server = Server::start(dir.path(), &options).await?;
    server.post("/v1/collections", &json!({"name": "bulk"})).await?;
    let vector = embed(&server, &["an inventory of the warehouse"]).await?;
    // One line in ten is embedded: the job takes seconds, and is killed part-way.
    let body = lines(3_000, 10, &vector[0]);
    let accepted = import(&server, &body, 65_536).await?;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    drop(server); // SIGKILL, right after the 202
    let server = Server::start(dir.path(), &options).await?;
    let job = finished(&server, &accepted).await?;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["documents_done"], 3_000, "{job}");
    assert_eq!(documents(&server).await?, 3_000);
    for id in ["item-0", "item-1234", "item-2999"] {
        let found = server
            .post(
                "/v1/collections/bulk/search",
                &json!({"query": format!("catalogue entry {} of the warehouse", &id[5..]), "top_k": 3, "filter": {"n": id}}),
            )
            .await?;
        assert_eq!(found.body["hits"][0]["doc_id"], id, "{:?}", found.body);
    }
    Ok(())
}
