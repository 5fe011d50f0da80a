//! Fusion through the real binary: per-collection settings on create and on update (which bumps
//! the epoch), per-request overrides on `/search` and `/query`, validation, the OpenAPI document,
//! and a failed engine leaving the other's list as it is whatever the method.

use crate::common;

use common::{corpus, doc_ids};
use ragway_e2e::{Server, ServerOptions, NO_ANSWER_CACHES};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "fusion-admin-key";

fn options() -> ServerOptions {
    ServerOptions {
        config_toml: NO_ANSWER_CACHES.to_string(),
        env: vec![("RAGWAY_ADMIN_KEY".into(), ADMIN.into())],
    }
}

async fn search(server: &Server, body: Value) -> anyhow::Result<ragway_e2e::Reply> {
    server.post("/v1/collections/facts/search", &body).await
}

#[tokio::test]
async fn fusion_settings_round_trip_and_every_method_serves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &options()).await?;
    let convex = json!({"method": "convex", "alpha": 0.7, "normalization": "z_score"});
    let created = server
        .post("/v1/collections", &json!({"name": "facts", "fusion": convex}))
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["fusion"], convex);
    assert_eq!(
        server
            .post("/v1/collections/facts/documents", &corpus())
            .await?
            .status,
        200
    );
    let info = server.get("/v1/collections/facts").await?;
    assert_eq!(info.body["fusion"], convex, "stored and shown");
    let epoch = info.body["epoch"].as_u64().unwrap_or(0);

    let dbsf = json!({"method": "dbsf"});
    let patched = server
        .admin(
            Method::PATCH,
            "/v1/collections/facts",
            ADMIN,
            Some(&json!({"fusion": dbsf})),
        )
        .await?;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(
        patched.body["fusion"],
        json!({"method": "dbsf", "alpha": 0.5}),
        "defaults spelled out"
    );
    assert_eq!(
        patched.body["epoch"].as_u64(),
        Some(epoch + 1),
        "a settings change bumps the epoch"
    );
    let reset = server
        .admin(
            Method::PATCH,
            "/v1/collections/facts",
            ADMIN,
            Some(&json!({"fusion": null})),
        )
        .await?;
    assert_eq!(reset.body["fusion"], Value::Null, "back to the server default");

    let question = "How do bees tell each other where flowers are?";
    for fusion in [
        json!({"method": "rrf", "k": 10}),
        json!({"method": "rrf", "alpha": 0.9}),
        json!({"method": "convex"}),
        json!({"method": "convex", "normalization": "z_score", "alpha": 0.3}),
        json!({"method": "dbsf", "alpha": 0.6}),
        json!({"method": "adaptive"}),
    ] {
        let reply = search(&server, json!({"query": question, "top_k": 3, "fusion": fusion})).await?;
        assert_eq!(reply.status, 200, "{fusion}: {:?}", reply.body);
        assert_eq!(reply.body["mode"], "normal");
        assert_eq!(
            doc_ids(&reply.body, "hits").first().map(String::as_str),
            Some("honeybees"),
            "{fusion}"
        );
        let answer = server
            .post(
                "/v1/collections/facts/query",
                &json!({"query": question, "fusion": fusion}),
            )
            .await?;
        assert_eq!(answer.status, 200, "{fusion}: {:?}", answer.body);
    }
    // All weight on one engine gives that engine's order.
    let dense = search(
        &server,
        json!({"query": question, "top_k": 6, "fusion": {"method": "convex", "alpha": 1.0}}),
    )
    .await?;
    let keyword = search(
        &server,
        json!({"query": question, "top_k": 6, "fusion": {"method": "convex", "alpha": 0.0}}),
    )
    .await?;
    let scores = |reply: &ragway_e2e::Reply| -> Vec<f64> {
        reply.body["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["score"].as_f64())
            .collect()
    };
    // Min-max scores: the best of the weighted engine is 1; the engine left out adds nothing.
    assert_eq!(scores(&dense).first(), Some(&1.0), "{:?}", dense.body);
    assert_eq!(scores(&keyword).first(), Some(&1.0), "{:?}", keyword.body);
    assert_ne!(scores(&dense), scores(&keyword), "the weight moves the scores");

    for (bad, why) in [
        (json!({"method": "rrf", "k": 0}), "k out of range"),
        (json!({"method": "convex", "alpha": 1.5}), "alpha out of range"),
        (json!({"method": "convex", "k": 60}), "k is rrf's"),
        (
            json!({"method": "dbsf", "normalization": "min_max"}),
            "normalization is convex's",
        ),
        (json!({"method": "borda"}), "no such method"),
        (json!({"method": "rrf", "weights": [1, 2]}), "unknown field"),
        (
            json!({"method": "adaptive", "alpha": 0.5}),
            "adaptive sets its own weights",
        ),
    ] {
        let reply = search(&server, json!({"query": question, "fusion": bad})).await?;
        assert_eq!(reply.status, 400, "{why}: {:?}", reply.body);
        let created = server
            .post("/v1/collections", &json!({"name": "bad", "fusion": bad}))
            .await?;
        assert_eq!(created.status, 400, "{why} on create: {:?}", created.body);
    }
    assert_eq!(
        server.get("/v1/collections/bad").await?.status,
        404,
        "nothing created"
    );
    let spec: Value = serde_json::from_str(&server.get_text("/openapi.json").await?)?;
    let schemas = &spec["components"]["schemas"];
    // One variant per method, each with only the parameters it takes (k for rrf alone).
    let variants = schemas["FusionSettings"]["oneOf"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(variants.len(), 4, "{}", schemas["FusionSettings"]);
    let with_alpha: Vec<&Value> = variants
        .iter()
        .filter(|v| v["properties"]["alpha"].is_object())
        .collect();
    assert_eq!(with_alpha.len(), 3, "adaptive takes no alpha");
    assert!(with_alpha
        .iter()
        .all(|v| v["properties"]["alpha"]["maximum"] == 1));
    let with_k: Vec<&Value> = variants
        .iter()
        .filter(|v| v["properties"]["k"].is_object())
        .collect();
    assert_eq!(with_k.len(), 1);
    assert_eq!(with_k[0]["properties"]["method"]["enum"], json!(["rrf"]));
    assert!(spec["paths"]["/v1/collections/{name}"]["patch"].is_object());
    Ok(())
}

#[tokio::test]
async fn a_failed_engine_leaves_the_others_list_whatever_the_method() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &options()).await?;
    server.seeded(None, "facts", &corpus()).await?;
    let question = "Which volcano in Sicily erupts often?";
    let plain = |fusion: &Value| json!({"query": question, "top_k": 4, "fusion": fusion});
    let methods = [
        json!({"method": "rrf"}),
        json!({"method": "convex"}),
        json!({"method": "dbsf"}),
        json!({"method": "adaptive"}),
    ];
    let fault = json!({"stage": "dense", "kind": "error", "duration_s": 60});
    assert_eq!(
        server
            .admin(Method::POST, "/admin/faults", ADMIN, Some(&fault))
            .await?
            .status,
        200
    );
    let mut lists = Vec::new();
    for fusion in &methods {
        let reply = search(&server, plain(fusion)).await?;
        assert_eq!(reply.body["mode"], "keyword_only", "{fusion}: {:?}", reply.body);
        let scores: Vec<f64> = reply.body["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["score"].as_f64())
            .collect();
        lists.push((doc_ids(&reply.body, "hits"), scores));
    }
    assert!(
        lists.windows(2).all(|w| w[0] == w[1]),
        "the keyword list as it is, BM25 scores and all: {lists:?}"
    );
    assert!(
        lists[0].1.first().is_some_and(|s| *s > 1.0),
        "BM25 scores, not fused ones: {lists:?}"
    );
    Ok(())
}
