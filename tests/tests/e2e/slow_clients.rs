//! A server that sheds slow clients: headers, bodies and idle keep-alive connections have
//! deadlines, connections are capped (503 beyond), and nobody unauthenticated is waited for.
//! Spoken to over raw TCP, the way a slow or hostile client would.

use crate::common;

use std::time::Duration;

use anyhow::Context;
use ragway_e2e::{Server, ServerOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to `server` and sends `bytes`, leaving the connection open.
async fn send(server: &Server, bytes: &str) -> anyhow::Result<TcpStream> {
    let address = server.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(bytes.as_bytes()).await?;
    Ok(stream)
}

/// What the server writes until it closes the connection, or `None` if it is still open after
/// `within`.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut read = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    closed.ok().map(|()| String::from_utf8_lossy(&read).into_owned())
}

/// The status and JSON body of the one response in `raw`.
fn response(raw: &str) -> anyhow::Result<(u16, Value)> {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {raw:?}"))?;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

const SLOW_HEADERS: &str = "POST /v1/collections HTTP/1.1\r\nHost: x\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_while_search_answers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default()
        .with_config("[server]\nheader_timeout_ms = 1500\nbody_timeout_ms = 1500\nmax_connections = 1000");
    let server = Server::start(dir.path(), &options).await?;
    server.seeded(None, "facts", &common::corpus()).await?;

    // 300 connections that send half their headers and then nothing.
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(send(&server, SLOW_HEADERS).await?);
    }
    for i in 0..5 {
        let query = json!({"query": format!("question {i}: which volcano erupts in Sicily?"), "top_k": 3});
        let reply = server.post("/v1/collections/facts/search", &query).await?;
        assert_eq!(
            (reply.status, &reply.body["mode"]),
            (200, &json!("normal")),
            "{:?}",
            reply.body
        );
    }
    for (i, stream) in slow.iter_mut().enumerate() {
        let closed = until_closed(stream, Duration::from_secs(20)).await;
        assert!(
            closed.is_some(),
            "slow connection {i} still open 20 s after a 1.5 s header timeout"
        );
    }

    // A body that stops half-way: 408, in ragway's error shape.
    let head = "POST /v1/collections/facts/search HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
    let mut stream = send(&server, &format!("{head}{{\"query\": ")).await?;
    let raw = until_closed(&mut stream, Duration::from_secs(20))
        .await
        .context("a stalled body was not answered within 20 s")?;
    let (status, body) = response(&raw)?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (408, &json!("request_timeout")),
        "{raw}"
    );

    // An idle keep-alive connection is closed once its answer is out.
    let mut stream = send(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let raw = until_closed(&mut stream, Duration::from_secs(20))
        .await
        .context("an idle keep-alive connection was still open 20 s after its answer")?;
    assert_eq!(response(&raw)?.0, 200, "{raw}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_get_503_and_nobody_unauthenticated_is_waited_for() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default()
        .with_admin("the-admin-key")
        .with_config("[server]\nheader_timeout_ms = 2000\nbody_timeout_ms = 30000\nmax_connections = 4");
    let server = Server::start(dir.path(), &options).await?;

    // A body announced but never sent, to an admin and to a tenant route, without a key: refused
    // at once (401), not after the 30 s body timeout.
    for path in ["/admin/tenants", "/v1/collections"] {
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n");
        let mut stream = send(&server, &head).await?;
        let raw = until_closed(&mut stream, Duration::from_secs(10))
            .await
            .with_context(|| format!("{path} without a key waited for the body"))?;
        assert_eq!(response(&raw)?.0, 401, "{path}: {raw}");
    }

    // Four connections that say nothing take every place; the fifth is told to come back.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(send(&server, "").await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fifth = send(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let raw = until_closed(&mut fifth, Duration::from_secs(10))
        .await
        .context("a connection over the cap was not answered")?;
    let (status, body) = response(&raw)?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("overloaded")),
        "{raw}"
    );
    assert!(raw.to_ascii_lowercase().contains("retry-after: 1"), "{raw}");

    // Once the header timeout has closed them, there is room again.
    for stream in &mut idle {
        until_closed(stream, Duration::from_secs(20))
            .await
            .context("an idle connection outlived the header timeout")?;
    }
    let reply = server.get("/healthz").await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    Ok(())
}

const ADMIN: &str = "slow-clients-admin-key";

/// Issue 38 item 2: a client that opens a stream of a fast backend and stops reading (a socket
/// with a tiny receive window) pins nothing. The backend is read only as the client takes the
/// answer (ragway's memory stays flat: it grew 2.9 GiB in 40 s behind such a client), and once the
/// client has taken nothing for `resilience.client_stall_timeout_ms` the stream is cut: the
/// tenant's only stream place is free again and what was produced is charged.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_its_stream_is_cut_and_pins_nothing() -> anyhow::Result<()> {
    let llm = ragway_e2e::ScriptedOpenAi::start(ragway_e2e::Script::Flood { words: 20_000_000 }).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default()
        .with_admin(ADMIN)
        .with_scripted_llm("flood", &llm)
        .with_config("[resilience]\nclient_stall_timeout_ms = 5000");
    let server = Server::start(dir.path(), &options).await?;
    let limits = json!({"name": "reader", "limits": {"concurrent_streams": 1}});
    let (id, key) = server.tenant(ADMIN, &limits).await?;
    let before = server.resident_bytes()?;

    let body = json!({"model": "flood", "stream": true, "messages": [{"role": "user", "content": "go"}]})
        .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(2048)?;
    let mut stalled = socket
        .connect(server.base.trim_start_matches("http://").parse()?)
        .await?;
    stalled.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut head)).await??;
    assert!(
        String::from_utf8_lossy(&head[..read]).starts_with("HTTP/1.1 200"),
        "the stream began: {:?}",
        String::from_utf8_lossy(&head[..read])
    );
    // The client reads nothing more. Meanwhile ragway holds no more than a bounded buffer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = server.resident_bytes()?.saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "ragway grew {} MiB behind a client that reads nothing",
        grown >> 20
    );

    // Cut after 5 s without reading: the tenant's one stream place is free again.
    let http = ragway_e2e::client()?;
    let started = std::time::Instant::now();
    loop {
        let next = http
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .body(body.clone())
            .header("content-type", "application/json")
            .send()
            .await?;
        if next.status() == 200 {
            break; // dropped unread: this stream ends with it
        }
        assert_eq!(next.status(), 429, "only the stream place is in the way");
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the stalled stream still holds the tenant's place"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let usage = format!("/admin/tenants/{id}/usage");
    let started = std::time::Instant::now();
    loop {
        let charged = server.admin(reqwest::Method::GET, &usage, ADMIN, None).await?;
        if charged.body["days"][0]["tokens_out"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "what the cut stream produced was never charged: {:?}",
            charged.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
    server.stop().await
}
