//! The cache layers against the real binary: L1 hits that run no stage, invalidation by document
//! changes and by re-creating a collection, the shared Redis tier (a real `redis-server` on a free
//! port) across restarts, processes and a Redis crash, and `cache_only` answers from entries kept
//! past their TTL. The LLM is a scripted OpenAI-compatible stand-in (named as such:
//! ragway_e2e::ScriptedOpenAi), so that every call it gets can be counted.

use crate::common;

use std::time::Duration;

use common::{corpus, doc_ids};
use ragway_e2e::{metric, RedisServer, Reply, Script, ScriptedOpenAi, Server, ServerOptions};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-key";
const QUESTION: &str = "What pressure is used to brew an espresso?";

fn options(llm: &ScriptedOpenAi, extra: &str) -> ServerOptions {
    ServerOptions {
        config_toml: format!(
            "{extra}\n[[llm]]\nname = \"scripted\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nmax_retries = 0\n",
            llm.base_url
        ),
        env: vec![("RAGWAY_ADMIN_KEY".into(), ADMIN.into())],
    }
}

fn redis_config(redis: &RedisServer) -> String {
    format!(
        "[cache.redis]\nurl = \"{}\"\ntimeout_ms = 200\n\n[resilience]\nbreaker_failures = 2\nbreaker_open_ms = 300\nbreaker_max_open_ms = 300\n",
        redis.url()
    )
}

async fn query(server: &Server, question: &str) -> anyhow::Result<Reply> {
    server
        .post(
            "/v1/collections/facts/query",
            &json!({"query": question, "top_k": 3}),
        )
        .await
}

async fn setup(server: &Server) -> anyhow::Result<()> {
    let created = server.post("/v1/collections", &json!({"name": "facts"})).await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let ingested = server.post("/v1/collections/facts/documents", &corpus()).await?;
    assert_eq!(ingested.status, 200, "{:?}", ingested.body);
    Ok(())
}

/// How often each stage ran, from `ragway_stage_duration_seconds_count`.
async fn stage_runs(server: &Server) -> anyhow::Result<[f64; 3]> {
    let text = server.get_text("/metrics").await?;
    let count = |stage: &str| {
        metric(
            &text,
            &format!("ragway_stage_duration_seconds_count{{stage=\"{stage}\"}}"),
        )
    };
    Ok([count("dense"), count("keyword"), count("llm")])
}

fn layer(reply: &Reply) -> Option<&str> {
    reply.body["cache"]["layer"].as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_question_is_an_l1_hit_until_the_collection_changes() -> anyhow::Result<()> {
    let llm = ScriptedOpenAi::start(Script::Answer("Nine bars [1].".into())).await?;
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &options(&llm, "")).await?;
    setup(&server).await?;

    let first = query(&server, QUESTION).await?;
    assert_eq!((first.status, first.body["mode"].as_str()), (200, Some("normal")));
    assert_eq!(first.body["cache"], Value::Null, "{:?}", first.body);
    let (calls, runs) = (llm.calls(), stage_runs(&server).await?);

    // Asked again, differently spaced and cased: the whole answer comes from L1.
    let again = query(&server, "  what PRESSURE is used to brew an   espresso?").await?;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["mode"], "normal");
    assert_eq!(layer(&again), Some("l1"), "{:?}", again.body);
    assert_eq!(again.body["cache"]["stale"], false);
    assert_eq!(again.body["answer"], first.body["answer"]);
    assert_eq!(again.body["citations"], first.body["citations"]);
    for stage in ["embed", "dense", "keyword"] {
        assert_eq!(again.body["stages"][stage], "cached", "{stage}");
    }
    assert_eq!(llm.calls(), calls, "no LLM call on an L1 hit");
    assert_eq!(
        stage_runs(&server).await?,
        runs,
        "no store was searched on an L1 hit"
    );
    let metrics = server.get_text("/metrics").await?;
    assert!(
        metric(
            &metrics,
            "ragway_cache_requests_total{layer=\"l1\",result=\"hit\"}"
        ) >= 1.0
    );

    // A streamed answer is served from L1 like a JSON one: its events replay the answer.
    let streamed = json!({"query": QUESTION, "top_k": 3, "stream": true});
    let (status, mode, _, text) = server
        .post_stream("/v1/collections/facts/query", &streamed)
        .await?;
    assert_eq!((status, mode.as_deref()), (200, Some("normal")));
    let events = ragway_e2e::parse_sse(&text);
    let meta: Value = serde_json::from_str(&events[0].data)?;
    assert_eq!(meta["cache"]["layer"], "l1", "{meta}");
    assert_eq!(meta["stages"]["dense"], "cached");
    let replayed: String = events
        .iter()
        .filter(|e| e.event == "delta")
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|d| d["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(replayed, first.body["answer"].as_str().unwrap_or_default());
    assert_eq!(llm.calls(), calls, "the streamed answer came from L1");

    // A streamed answer L1 does not hold is generated over passages from L3, and kept in L1.
    let other = json!({"query": QUESTION, "top_k": 3, "stream": true, "filter": {"topic": "food"}});
    let (_, _, _, text) = server.post_stream("/v1/collections/facts/query", &other).await?;
    let meta: Value = serde_json::from_str(&ragway_e2e::parse_sse(&text)[0].data)?;
    assert_eq!(meta["cache"], Value::Null, "{meta}");
    assert_eq!(llm.calls(), calls + 1, "the stream's answer was generated");
    let (_, _, _, text) = server.post_stream("/v1/collections/facts/query", &other).await?;
    let meta: Value = serde_json::from_str(&ragway_e2e::parse_sse(&text)[0].data)?;
    assert_eq!(meta["cache"]["layer"], "l1", "a streamed answer is kept: {meta}");
    assert_eq!(llm.calls(), calls + 1);

    // /search is cached the same way.
    let search = json!({"query": "espresso crema pressure", "top_k": 3});
    let miss = server.post("/v1/collections/facts/search", &search).await?;
    let hit = server.post("/v1/collections/facts/search", &search).await?;
    assert_eq!((layer(&miss), layer(&hit)), (None, Some("l1")));
    assert_eq!(hit.body["hits"], miss.body["hits"]);

    // A new document bumps the epoch: the next question is a miss and may find it.
    let new_doc = json!({"documents": [{"id": "moka", "text": "A moka pot brews coffee on the stove at about one and a half bars of pressure, far less than an espresso machine."}]});
    assert_eq!(
        server
            .post("/v1/collections/facts/documents", &new_doc)
            .await?
            .status,
        200
    );
    let after_ingest = server.post("/v1/collections/facts/search", &search).await?;
    assert_eq!(layer(&after_ingest), None, "{:?}", after_ingest.body);
    assert!(doc_ids(&after_ingest.body, "hits").contains(&"moka".to_string()));
    let calls = llm.calls();
    assert_eq!(layer(&query(&server, QUESTION).await?), None);
    assert_eq!(llm.calls(), calls + 1, "the LLM answered again after the change");

    // Deleting a document is a change too.
    assert_eq!(
        server
            .delete("/v1/collections/facts/documents/moka")
            .await?
            .status,
        200
    );
    let after_delete = server.post("/v1/collections/facts/search", &search).await?;
    assert_eq!(layer(&after_delete), None);
    assert!(!doc_ids(&after_delete.body, "hits").contains(&"moka".to_string()));

    // Drop and re-create under the same name with other content: no old answer is served.
    assert_eq!(
        layer(&query(&server, QUESTION).await?),
        None,
        "asked after the delete"
    );
    assert_eq!(layer(&query(&server, QUESTION).await?), Some("l1"));
    assert_eq!(server.delete("/v1/collections/facts").await?.status, 204);
    server.post("/v1/collections", &json!({"name": "facts"})).await?;
    let other = json!({"documents": [{"id": "tea", "text": "Green tea is steeped at about eighty degrees for two to three minutes."}]});
    server.post("/v1/collections/facts/documents", &other).await?;
    let recreated = query(&server, QUESTION).await?;
    assert_eq!(layer(&recreated), None, "{:?}", recreated.body);
    assert_eq!(doc_ids(&recreated.body, "citations"), ["tea"]);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_entries_answer_cache_only_when_retrieval_is_down() -> anyhow::Result<()> {
    let llm = ScriptedOpenAi::start(Script::Answer("Nine bars [1].".into())).await?;
    let dir = tempfile::tempdir()?;
    let short = "[cache]\nstale_if_error_s = 3600\n\n[cache.l1]\nttl_s = 1\nmax_entries = 100\n\n[cache.l3]\nttl_s = 1\nmax_entries = 100\n";
    let server = Server::start(dir.path(), &options(&llm, short)).await?;
    setup(&server).await?;
    let asked = query(&server, QUESTION).await?;
    assert_eq!(asked.body["mode"], "normal");
    let search = json!({"query": QUESTION, "top_k": 3});
    assert_eq!(
        server.post("/v1/collections/facts/search", &search).await?.body["mode"],
        "normal"
    );
    tokio::time::sleep(Duration::from_millis(1_300)).await;

    // The question's embedding is still in L2, so the dense store itself must fail.
    for stage in ["dense", "keyword"] {
        let body = json!({"stage": stage, "kind": "error", "duration_s": 60});
        let reply = server
            .admin(Method::POST, "/admin/faults", ADMIN, Some(&body))
            .await?;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    // Asked before, now expired: served as stored, and the answer says how.
    let stale = query(&server, QUESTION).await?;
    assert_eq!(stale.status, 200, "{:?}", stale.body);
    assert_eq!(stale.body["mode"], "cache_only");
    assert_eq!(stale.mode_header.as_deref(), Some("cache_only"));
    assert_eq!(stale.body["cache"]["stale"], true);
    assert_eq!(stale.body["answer"], asked.body["answer"]);
    let degraded: Vec<&str> = stale.body["degraded"]
        .as_array()
        .map(|d| d.iter().filter_map(|x| x["stage"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        degraded.contains(&"dense") && degraded.contains(&"keyword"),
        "{degraded:?}"
    );
    let stale_search = server.post("/v1/collections/facts/search", &search).await?;
    assert_eq!(stale_search.body["mode"], "cache_only", "{:?}", stale_search.body);
    assert_eq!(stale_search.body["hits"].as_array().map(Vec::len), Some(3));

    // Never asked: nothing to fall back on.
    let new = query(&server, "How do bees tell each other where flowers are?").await?;
    assert_eq!((new.status, new.body["mode"].as_str()), (503, Some("error")));
    let metrics = server.get_text("/metrics").await?;
    assert!(metric(&metrics, "ragway_answers_total{mode=\"cache_only\"}") >= 2.0);
    let stale = |layer: &str| {
        metric(
            &metrics,
            &format!("ragway_cache_requests_total{{layer=\"{layer}\",result=\"stale\"}}"),
        )
    };
    assert!(stale("l1") + stale("l3") >= 2.0, "{metrics}");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_shares_answers_across_restarts_but_not_across_deployments() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let llm = ScriptedOpenAi::start(Script::Answer("Nine bars [1].".into())).await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let config = redis_config(&redis);
    let a = Server::start(dir_a.path(), &options(&llm, &config)).await?;
    setup(&a).await?;
    assert_eq!(layer(&query(&a, QUESTION).await?), None);
    tokio::time::sleep(Duration::from_millis(200)).await; // the background write to Redis
    assert!(
        !redis.keys("ragway:l1:facts:*")?.is_empty(),
        "the answer reached Redis"
    );

    // Restarted on the same data: the local tier is empty, Redis still has the answer.
    a.stop().await?;
    let a = Server::start(dir_a.path(), &options(&llm, &config)).await?;
    let calls = llm.calls();
    let through_redis = query(&a, QUESTION).await?;
    assert_eq!(layer(&through_redis), Some("l1"), "{:?}", through_redis.body);
    assert_eq!(llm.calls(), calls);

    // Another deployment with its own data, on the same Redis: same name, same documents, but
    // another collection generation, so it never sees the first one's entries.
    let b = Server::start(dir_b.path(), &options(&llm, &config)).await?;
    setup(&b).await?;
    assert_eq!(layer(&query(&b, QUESTION).await?), None);
    assert_eq!(layer(&query(&b, QUESTION).await?), Some("l1"));
    // Both answers are in Redis (B's was written in the background), each under its generation.
    for _ in 0..50 {
        if redis.keys("ragway:l1:facts:*")?.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(redis.keys("ragway:l1:facts:*")?.len(), 2);

    // An operator invalidation on A reaches B through pub/sub: B's local entries go too.
    let dropped = a
        .admin(
            Method::POST,
            "/admin/cache/invalidate",
            ADMIN,
            Some(&json!({"collection": "facts"})),
        )
        .await?;
    assert_eq!(dropped.status, 200, "{:?}", dropped.body);
    assert!(
        dropped.body["invalidated"].as_u64() >= Some(1),
        "{:?}",
        dropped.body
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(layer(&query(&b, QUESTION).await?), None, "B dropped its entries");
    let bad = a
        .admin(
            Method::POST,
            "/admin/cache/invalidate",
            ADMIN,
            Some(&json!({"layer": "l9"})),
        )
        .await?;
    assert_eq!((bad.status, bad.error_code()), (400, Some("unknown_cache_layer")));
    a.stop().await?;
    b.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_crash_never_fails_an_answer_and_sharing_resumes() -> anyhow::Result<()> {
    let mut redis = RedisServer::start()?;
    let llm = ScriptedOpenAi::start(Script::Answer("Nine bars [1].".into())).await?;
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &options(&llm, &redis_config(&redis))).await?;
    setup(&server).await?;
    let ready = server.get("/readyz").await?;
    assert_eq!(ready.body["dependencies"]["redis"], "closed", "{:?}", ready.body);

    redis.kill();
    let questions = [
        "Which volcano in Sicily erupts often?",
        "How do plants make oxygen from sunlight?",
        "How long is the running race from the Greek legend?",
        "How do bees tell each other where flowers are?",
    ];
    for question in questions {
        let reply = query(&server, question).await?;
        assert_eq!(
            (reply.status, reply.body["mode"].as_str()),
            (200, Some("normal")),
            "{:?}",
            reply.body
        );
        assert_eq!(layer(&reply), None);
    }
    // The local tier still serves, and Redis is behind an open breaker, not in every answer.
    assert_eq!(layer(&query(&server, questions[0]).await?), Some("l1"));
    let ready = server.get("/readyz").await?;
    assert_eq!(ready.status, 200, "Redis down is no reason to be unready");
    assert_ne!(ready.body["dependencies"]["redis"], "closed", "{:?}", ready.body);
    let metrics = server.get_text("/metrics").await?;
    assert!(
        metric(
            &metrics,
            "ragway_cache_requests_total{layer=\"l1\",result=\"error\"}"
        ) >= 1.0
    );

    // Redis back: after the breaker's pause, answers are shared again.
    redis.restart()?;
    let mut shared = false;
    for attempt in 0..20 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let question = format!("What is brewed at nine bars of pressure, take {attempt}?");
        assert_eq!(query(&server, &question).await?.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !redis.keys("ragway:l1:facts:*")?.is_empty() {
            shared = true;
            break;
        }
    }
    assert!(shared, "answers reach Redis again once it is back");

    // An operator can fail the Redis tier on purpose: answers carry on, its breaker opens.
    let fault = json!({"stage": "redis", "kind": "error", "duration_s": 60});
    let injected = server
        .admin(Method::POST, "/admin/faults", ADMIN, Some(&fault))
        .await?;
    assert_eq!(injected.status, 200, "{:?}", injected.body);
    for i in 0..3 {
        let reply = query(
            &server,
            &format!("Which coffee is brewed under pressure, try {i}?"),
        )
        .await?;
        assert_eq!((reply.status, reply.body["mode"].as_str()), (200, Some("normal")));
    }
    let ready = server.get("/readyz").await?;
    assert_ne!(ready.body["dependencies"]["redis"], "closed", "{:?}", ready.body);
    server.stop().await
}

/// L4: the local model keeps its state after the passages, so another question over the same
/// passages prefills only the question, and the answer is exactly what a cold prefill gives; a new
/// epoch of the collection drops what was kept over it.
#[tokio::test(flavor = "multi_thread")]
async fn the_local_model_reuses_the_passages_prefix() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions {
        config_toml: ragway_e2e::NO_ANSWER_CACHES.to_string(),
        ..Default::default()
    };
    let server = Server::start(dir.path(), &options).await?;
    setup(&server).await?;
    let reused = |metrics: &str| {
        metric(
            metrics,
            "ragway_llm_prefix_tokens_reused_total{backend=\"local\"}",
        )
    };
    // All six documents every time: the same passage set in whatever rank order.
    let ask = |question: &'static str| {
        let server = &server;
        async move {
            server
                .post(
                    "/v1/collections/facts/query",
                    &json!({"query": question, "top_k": 6}),
                )
                .await
        }
    };
    let cold = ask(QUESTION).await?;
    assert_eq!(cold.body["stages"]["llm"], "local", "{:?}", cold.body);
    let before = reused(&server.get_text("/metrics").await?);
    assert_eq!(before, 0.0, "nothing to reuse on the first prompt");

    let warm = ask(QUESTION).await?;
    let after = reused(&server.get_text("/metrics").await?);
    let prompt = warm.body["usage"]["prompt_tokens"].as_f64().unwrap_or(0.0);
    assert_eq!(after, prompt, "the same prompt again: all of its state is reused");
    assert_eq!(
        warm.body["answer"], cold.body["answer"],
        "prefix reuse changed the answer"
    );

    // Another question, the passages in another rank order: the same prefix.
    let other = ask("Which volcano in Sicily erupts often?").await?;
    assert_eq!(other.body["mode"], "normal");
    let again = reused(&server.get_text("/metrics").await?);
    assert!(again - after > 0.5 * prompt, "reused {} more", again - after);
    let metrics = server.get_text("/metrics").await?;
    assert_eq!(
        metric(
            &metrics,
            "ragway_cache_requests_total{layer=\"l4\",result=\"hit\"}"
        ),
        2.0
    );

    // A change to the collection (a new epoch) drops the prompts kept over it: the same
    // question over the same six passages is prefilled afresh.
    let patched = server
        .admin(
            Method::PATCH,
            "/v1/collections/facts",
            ADMIN,
            Some(&json!({"fusion": {"method": "rrf"}})),
        )
        .await?;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    let fresh = ask(QUESTION).await?;
    assert_eq!(fresh.body["mode"], "normal", "{:?}", fresh.body);
    let after_change = reused(&server.get_text("/metrics").await?);
    assert_eq!(
        after_change, again,
        "nothing kept from the earlier epoch was reused"
    );
    server.stop().await
}
