//! The web console (`/console`) through the real binary: its files are served from the binary
//! with a policy that lets no inline code run, and `server.console = false` takes them away; the
//! public routes it reads (a collection's documents a page at a time, a tenant's own usage, every
//! collection for the operator); and the console itself in a real headless Chromium (Debian's),
//! driven by Playwright from PyPI (tests/console/check.py), which writes a screenshot of each page
//! under tests/screenshots/console/.

use std::time::Duration;

use ragway_e2e::{Reply, Server, ServerOptions};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "console-admin-key";

fn keys() -> ServerOptions {
    ServerOptions::default().with_admin(ADMIN)
}

async fn admin(server: &Server, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Reply> {
    server.admin(method, path, ADMIN, body).await
}

/// A new tenant with `limits` and one key: (id, key).
async fn tenant(server: &Server, name: &str, limits: Value) -> anyhow::Result<(String, String)> {
    let body = json!({"name": name, "limits": limits});
    let created = admin(server, Method::POST, "/admin/tenants", Some(&body)).await?;
    anyhow::ensure!(created.status == 201, "tenant: {:?}", created.body);
    let id = created.body["id"].as_str().unwrap_or_default().to_string();
    let key = admin(server, Method::POST, &format!("/admin/tenants/{id}/keys"), None).await?;
    anyhow::ensure!(key.status == 201, "key: {:?}", key.body);
    Ok((id, key.body["key"].as_str().unwrap_or_default().to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_served_from_the_binary_and_can_be_turned_off() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &keys()).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let root = http.get(server.url("/")).send().await?;
    assert_eq!(root.status().as_u16(), 303);
    assert_eq!(root.headers()["location"], "/console");
    for (path, kind, holds) in [
        ("/console", "text/html", "/console/console.js"),
        ("/console/console.js", "text/javascript", "function render()"),
        (
            "/console/metrics.js",
            "text/javascript",
            "export function quantile",
        ),
        ("/console/console.css", "text/css", ".badge"),
    ] {
        let page = http.get(server.url(path)).send().await?;
        assert_eq!(page.status().as_u16(), 200, "{path}");
        let headers = page.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}: {headers:?}");
        let policy = header("content-security-policy");
        assert!(
            policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"),
            "{path}: {policy}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert!(page.text().await?.contains(holds), "{path}");
    }
    // Only the console's own files: anything else under it is the API's JSON 404.
    let unknown = server.get("/console/other.js").await?;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (404, Some("route_not_found"))
    );
    server.stop().await?;

    let off = keys().with_config("[server]\nconsole = false");
    let server = Server::start(dir.path(), &off).await?;
    let page = server.get("/console").await?;
    assert_eq!((page.status, page.error_code()), (404, Some("route_not_found")));
    server.stop().await
}

/// The routes the console reads, as any client reads them.
#[tokio::test(flavor = "multi_thread")]
async fn a_collections_documents_list_by_page_and_a_tenant_reads_its_own_usage() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &keys()).await?;
    let (id, key) = tenant(
        &server,
        "acme",
        json!({"documents": 50, "llm_tokens_per_day": 1000}),
    )
    .await?;
    let (_, other) = tenant(&server, "other", json!({})).await?;
    let call = |method: Method, path: String, key: String, body: Option<Value>| {
        let server = &server;
        async move { server.call(method, &path, Some(&key), body.as_ref()).await }
    };
    let made = call(
        Method::POST,
        "/v1/collections".into(),
        key.clone(),
        Some(json!({"name": "notes"})),
    )
    .await?;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let ids = ["a-1", "a-2", "a-3", "b-1", "b-2"];
    let documents: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "text": format!("Note {id} says something about the harbour.")}))
        .collect();
    let written = call(
        Method::POST,
        "/v1/collections/notes/documents".into(),
        key.clone(),
        Some(json!({"documents": documents})),
    )
    .await?;
    assert_eq!(written.status, 200, "{:?}", written.body);

    // Pages in id order, each naming the next; a prefix keeps to its ids.
    let list = |query: &str| {
        call(
            Method::GET,
            format!("/v1/collections/notes/documents{query}"),
            key.clone(),
            None,
        )
    };
    let listed = |reply: &Reply| -> Vec<String> {
        reply.body["documents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["id"].as_str().map(str::to_string))
            .collect()
    };
    let first = list("?limit=2").await?;
    assert_eq!(
        (first.status, listed(&first)),
        (200, vec!["a-1".to_string(), "a-2".into()])
    );
    assert_eq!(first.body["next_after"], "a-2");
    assert_eq!(first.body["documents"][0]["chunks"], 1);
    assert!(first.body["documents"][0]["content_hash"]
        .as_str()
        .is_some_and(|h| h.len() == 64));
    let second = list("?limit=2&after=a-2").await?;
    assert_eq!(listed(&second), ["a-3", "b-1"]);
    let last = list("?limit=2&after=b-1").await?;
    assert_eq!(listed(&last), ["b-2"]);
    assert!(last.body.get("next_after").is_none(), "{:?}", last.body);
    let prefixed = list("?prefix=b-").await?;
    assert_eq!(listed(&prefixed), ["b-1", "b-2"]);
    let after_in_prefix = list("?prefix=a-&after=a-1").await?;
    assert_eq!(listed(&after_in_prefix), ["a-2", "a-3"]);
    let deleted = call(
        Method::DELETE,
        "/v1/collections/notes/documents/a-2".into(),
        key.clone(),
        None,
    )
    .await?;
    assert_eq!(deleted.status, 200);
    assert_eq!(listed(&list("?prefix=a-").await?), ["a-1", "a-3"]);
    for bad in ["?limit=0", "?limit=1001", "?limit=many"] {
        let refused = list(bad).await?;
        assert_eq!(
            (refused.status, refused.error_code()),
            (400, Some("invalid_query_string")),
            "{bad}: {:?}",
            refused.body
        );
    }
    // Another tenant's collection does not exist for it.
    let theirs = call(
        Method::GET,
        "/v1/collections/notes/documents".into(),
        other.clone(),
        None,
    )
    .await?;
    assert_eq!(theirs.status, 404, "{:?}", theirs.body);

    // A tenant's own usage: what its operator sees, with its limits.
    let own = call(Method::GET, "/v1/usage?days=3".into(), key.clone(), None).await?;
    assert_eq!(own.status, 200, "{:?}", own.body);
    let operators = admin(
        &server,
        Method::GET,
        &format!("/admin/tenants/{id}/usage?days=3"),
        None,
    )
    .await?;
    assert_eq!(own.body, operators.body);
    assert_eq!(own.body["tenant"], id.as_str());
    assert_eq!(own.body["name"], "acme");
    assert_eq!(own.body["limits"]["documents"], 50);
    assert_eq!(own.body["limits"]["llm_tokens_per_day"], 1000);
    assert_eq!(own.body["storage"]["documents"], 4);
    assert!(
        own.body["days"][0]["embedding_tokens"].as_u64().unwrap_or(0) > 0,
        "{:?}",
        own.body
    );
    let others = call(Method::GET, "/v1/usage".into(), other.clone(), None).await?;
    assert_eq!(others.body["storage"]["documents"], 0, "{:?}", others.body);
    let days = call(Method::GET, "/v1/usage?days=63".into(), key.clone(), None).await?;
    assert_eq!(days.status, 400);
    assert_eq!(server.get("/v1/usage").await?.status, 401);

    // The operator sees every collection by its full name.
    let all = admin(&server, Method::GET, "/admin/collections", None).await?;
    let names: Vec<&str> = all.body["collections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, [format!("{id}.notes")]);
    let refused = server
        .call(Method::GET, "/admin/collections", Some(&key), None)
        .await?;
    assert_eq!(refused.status, 403);
    server.stop().await
}

/// Issue 26's walk through the console, in Chromium: see tests/console/check.py.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_works_in_a_real_browser() -> anyhow::Result<()> {
    let python = ragway_e2e::python::with("playwright");
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &keys()).await?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("screenshots/console");
    let notes = dir.path().join("closing.md");
    std::fs::write(
        &notes,
        "# Closing\n\nThe last one out locks the back door and sets the alarm code.\n",
    )?;
    let args = vec![
        server.url(""),
        ADMIN.into(),
        root.join("fixtures/files/handbook.pdf").display().to_string(),
        notes.display().to_string(),
        shots.display().to_string(),
    ];
    ragway_e2e::python::check(python, "console/check.py", args, Duration::from_secs(420)).await?;
    eprintln!("console screenshots: {}", shots.display());
    server.stop().await
}
