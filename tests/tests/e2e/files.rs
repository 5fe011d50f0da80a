//! `/files` through the real binary, with files LibreOffice made (tests/fixtures/files,
//! scripts/fixtures/make_files.sh): a PDF, a DOCX, HTML and Markdown in one upload become four
//! documents indexed by a job; a search finds the passage on the PDF's third page and under the
//! DOCX's heading, with `source`, `page` and `heading`, and citations carry them; the same file
//! again changes nothing; bad files are refused whole with their code, nothing stored; URLs are
//! fetched only where allowed. The LLM is the scripted stand-in (ragway_e2e::ScriptedOpenAi).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ragway_e2e::{Reply, Script, ScriptedOpenAi, Server, ServerOptions, NO_ANSWER_CACHES};
use serde_json::{json, Value};

const FILES: &str = "/v1/collections/staff/files";

fn fixture(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/files")
        .join(name);
    Ok(std::fs::read(path)?)
}

/// The job's status once it is no longer queued or running (at most 120 s).
async fn finished(server: &Server, accepted: &Reply) -> anyhow::Result<Value> {
    crate::common::job_finished(server, accepted, Duration::from_secs(120)).await
}

const NOTES: &str = "# Closing\n\nThe last one out locks the back door and sets the alarm code.\n\n## Waste\n\n| Bin | Collected |\n|---|---|\n| Glass | Tuesday |\n| Compost | Friday |\n";

#[tokio::test(flavor = "multi_thread")]
async fn files_become_searchable_documents_with_their_pages_and_headings() -> anyhow::Result<()> {
    let answer = "Every twenty-one days.";
    let llm = ScriptedOpenAi::start(Script::Answer(answer.into())).await?;
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default()
        .with_config(NO_ANSWER_CACHES)
        .with_scripted_llm("scripted", &llm);
    let server = Server::start(dir.path(), &options).await?;
    server.post("/v1/collections", &json!({"name": "staff"})).await?;

    let files = [
        ("handbook.pdf", fixture("handbook.pdf")?),
        ("handbook.docx", fixture("handbook.docx")?),
        ("handbook.html", fixture("handbook.html")?),
        ("notes.md", NOTES.as_bytes().to_vec()),
    ];
    let accepted = server.upload(FILES, &files, &[]).await?;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let read = accepted.body["files"].as_array().cloned().unwrap_or_default();
    let formats: Vec<&str> = read.iter().filter_map(|f| f["format"].as_str()).collect();
    assert_eq!(formats, ["pdf", "docx", "html", "markdown"]);
    assert_eq!(read[0]["pages"], 3);
    let job = finished(&server, &accepted).await?;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        (job["documents_done"].clone(), job["indexed"].clone()),
        (json!(4), json!(4)),
        "{job}"
    );
    let chunks: u64 = read.iter().filter_map(|f| f["chunks"].as_u64()).sum();
    assert_eq!(job["chunks_done"], chunks, "{job}");
    assert_eq!(job["chunks_total"], chunks, "{job}");

    let found = server
        .post(
            "/v1/collections/staff/search",
            &json!({"query": "How often is the espresso machine descaled?", "top_k": 6}),
        )
        .await?;
    assert_eq!(found.body["mode"], "normal", "{:?}", found.body);
    let hits = found.body["hits"].as_array().cloned().unwrap_or_default();
    let hit_of = |doc: &str| hits.iter().find(|h| h["doc_id"] == doc).cloned();
    let pdf = hit_of("handbook.pdf").unwrap_or_default();
    assert!(
        pdf["text"]
            .as_str()
            .is_some_and(|t| t.contains("twenty-one days")),
        "{pdf}"
    );
    assert_eq!(pdf["metadata"]["page"], 3, "{pdf}");
    assert_eq!(pdf["metadata"]["source"], "handbook.pdf");
    assert_eq!(pdf["metadata"]["format"], "pdf");
    let docx = hit_of("handbook.docx").unwrap_or_default();
    assert_eq!(docx["metadata"]["heading"], "Espresso machine care", "{docx}");
    assert!(
        docx["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Espresso machine care\n")),
        "{docx}"
    );

    // A table row is a line of cells; a filter finds a page.
    let price = server
        .post(
            "/v1/collections/staff/search",
            &json!({"query": "price of a large flat white", "top_k": 3, "filter": {"source": "handbook.docx"}}),
        )
        .await?;
    let top = &price.body["hits"][0];
    assert!(
        top["text"]
            .as_str()
            .is_some_and(|t| t.contains("Flat white | 3.20 | 3.80")),
        "{top}"
    );
    let page_one = server
        .post(
            "/v1/collections/staff/search",
            &json!({"query": "descaled", "filter": {"source": "handbook.pdf", "page": 1}}),
        )
        .await?;
    let pages: Vec<&Value> = page_one.body["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| &h["metadata"]["page"])
        .collect();
    assert!(
        !pages.is_empty() && pages.iter().all(|p| **p == json!(1)),
        "{pages:?}"
    );

    let asked = server
        .post(
            "/v1/collections/staff/query",
            &json!({"query": "How often is the espresso machine descaled?", "filter": {"source": "handbook.pdf"}}),
        )
        .await?;
    let cited = asked.body["citations"].as_array().cloned().unwrap_or_default();
    assert!(
        cited
            .iter()
            .any(|c| c["metadata"]["source"] == "handbook.pdf" && c["metadata"]["page"] == 3),
        "{:?}",
        asked.body
    );

    // The same file again: nothing changes.
    let epoch = job["epoch"].clone();
    let again = server.upload(FILES, &files[..1], &[]).await?;
    assert_eq!(again.status, 202, "{:?}", again.body);
    let job = finished(&server, &again).await?;
    assert_eq!(
        (job["indexed"].clone(), job["unchanged"].clone()),
        (json!(0), json!(1)),
        "{job}"
    );
    assert_eq!(job["epoch"], epoch, "{job}");
    let info = server.get("/v1/collections/staff").await?.body;
    assert_eq!(info["documents"], 4, "{info}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_are_refused_whole_and_nothing_is_stored() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options =
        ServerOptions::default().with_config("[limits]\nmax_file_bytes = 100000\nmax_files_per_request = 3");
    let server = Server::start(dir.path(), &options).await?;
    server.post("/v1/collections", &json!({"name": "staff"})).await?;
    let good = ("notes.md", NOTES.as_bytes().to_vec());
    let bomb = {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("word/document.xml", zip::write::SimpleFileOptions::default())?;
        zip.write_all(&vec![b' '; 8 << 20])?;
        zip.finish()?.into_inner()
    };
    type File = (&'static str, Vec<u8>);
    let cases: Vec<(File, u16, &str)> = vec![
        (("empty.txt", Vec::new()), 400, "empty_file"),
        (("large.txt", vec![b'a'; 200_000]), 413, "file_too_large"),
        (
            ("fake.pdf", b"this is not a PDF".to_vec()),
            415,
            "unsupported_file_type",
        ),
        (
            (
                "image.bin",
                vec![0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0xff, 0x00],
            ),
            415,
            "unsupported_file_type",
        ),
        (
            ("encrypted.pdf", fixture("encrypted.pdf")?),
            422,
            "encrypted_file",
        ),
        (
            ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog".to_vec()),
            422,
            "unreadable_file",
        ),
        (
            (
                "blank.html",
                b"<html><body><script>x()</script></body></html>".to_vec(),
            ),
            422,
            "no_text_in_file",
        ),
        (("bomb.docx", bomb), 413, "file_too_large"),
    ];
    for (bad, status, code) in cases {
        let name = bad.0;
        // The good file first: it is read, but the request fails whole.
        let refused = server.upload(FILES, &[good.clone(), bad], &[]).await?;
        assert_eq!(
            (refused.status, refused.error_code()),
            (status, Some(code)),
            "{name}: {:?}",
            refused.body
        );
        let message = refused.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(name),
            "{name}: the message names the file: {message}"
        );
    }
    let none = server.upload(FILES, &[], &[]).await?;
    assert_eq!(none.error_code(), Some("no_files"), "{:?}", none.body);
    let four: Vec<(&str, Vec<u8>)> = ["a.md", "b.md", "c.md", "d.md"]
        .iter()
        .map(|n| (*n, NOTES.as_bytes().to_vec()))
        .collect();
    let many = server.upload(FILES, &four, &[]).await?;
    assert_eq!(many.error_code(), Some("too_many_files"), "{:?}", many.body);
    let url = server.upload(FILES, &[], &[&server.url("/openapi.json")]).await?;
    assert_eq!(
        (url.status, url.error_code()),
        (403, Some("url_fetch_disabled")),
        "{:?}",
        url.body
    );
    let missing = server.upload("/v1/collections/nope/files", &[good], &[]).await?;
    assert_eq!(missing.status, 404);

    let info = server.get("/v1/collections/staff").await?.body;
    assert_eq!(
        (info["documents"].clone(), info["chunks"].clone()),
        (json!(0), json!(0)),
        "nothing stored: {info}"
    );
    let jobs = server.get("/v1/collections/staff/jobs").await?.body;
    assert_eq!(jobs["jobs"], json!([]), "no job started: {jobs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn urls_are_fetched_where_the_operator_allows() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default().with_config("[ingest]\nallow_url_fetch = true");
    let server = Server::start(dir.path(), &options).await?;
    server.post("/v1/collections", &json!({"name": "staff"})).await?;
    // ragway's own health answer, over real HTTP: a small JSON file read as text.
    let accepted = server.upload(FILES, &[], &[&server.url("/healthz")]).await?;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    assert_eq!(accepted.body["files"][0]["id"], "healthz");
    assert_eq!(accepted.body["files"][0]["format"], "text");
    let job = finished(&server, &accepted).await?;
    assert_eq!(job["state"], "done", "{job}");
    let refused = server.upload(FILES, &[], &["ftp://example.com/a.pdf"]).await?;
    assert_eq!(refused.error_code(), Some("invalid_url"), "{:?}", refused.body);
    let gone = server
        .upload(FILES, &[], &[&server.url("/no/such/file.pdf")])
        .await?;
    assert_eq!(
        (gone.status, gone.error_code()),
        (422, Some("url_fetch_failed")),
        "{:?}",
        gone.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_files_progress_shows_while_it_is_indexed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &ServerOptions::default()).await?;
    server.post("/v1/collections", &json!({"name": "staff"})).await?;
    // One document of some 240 chunks: one batch, embedded in parts.
    let paragraph = |i: usize| {
        format!("Paragraph {i}: the grinder burrs are checked, the hopper is filled and the shot is timed at twenty-eight seconds before service begins on the morning shift number {i}.")
    };
    let text: String = (0..1_200).map(paragraph).collect::<Vec<_>>().join("\n\n");
    let accepted = server
        .upload(FILES, &[("manual.txt", text.into_bytes())], &[])
        .await?;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let total = accepted.body["files"][0]["chunks"].as_u64().unwrap_or(0);
    assert!(total > 150, "{total} chunks");
    let url = accepted.body["status_url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let started = Instant::now();
    let mut seen = Vec::new();
    let status = loop {
        let status = server.get(&url).await?.body;
        if status["state"] == "running" {
            seen.push(status["chunks_done"].as_u64().unwrap_or(0));
        }
        if !matches!(status["state"].as_str(), Some("queued" | "running")) {
            break status;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "job still {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(
        (status["chunks_done"].as_u64(), status["chunks_total"].as_u64()),
        (Some(total), Some(total))
    );
    assert!(
        seen.iter().any(|&done| done > 0 && done < total),
        "the job's chunks_done moved while its one document was embedded: {seen:?} of {total}"
    );
    Ok(())
}

/// Starts an upload whose body never finishes arriving, with `key`: it holds an upload turn.
async fn trickling(server: &Server, key: &str) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let address = server.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&address).await?;
    let head = format!(
        "POST {FILES} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {key}\r\ncontent-type: multipart/form-data; boundary=b\r\ncontent-length: 100000\r\n\r\n--b\r\n"
    );
    slow.write_all(head.as_bytes()).await?;
    slow.flush().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(slow)
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_at_once_are_bounded_in_all_and_per_tenant() -> anyhow::Result<()> {
    const ADMIN: &str = "files-admin";
    let dir = tempfile::tempdir()?;
    let options = ServerOptions::default()
        .with_config("[limits]\nmax_concurrent_uploads = 2\nmax_concurrent_uploads_per_tenant = 1")
        .with_admin(ADMIN);
    let server = Server::start(dir.path(), &options).await?;
    let mut keys = Vec::new();
    for name in ["acme", "globex", "initech"] {
        let (_, key) = server.tenant(ADMIN, &json!({ "name": name })).await?;
        let created = server
            .call(
                reqwest::Method::POST,
                "/v1/collections",
                Some(&key),
                Some(&json!({"name": "staff"})),
            )
            .await?;
        anyhow::ensure!(created.status == 201, "{:?}", created.body);
        keys.push(key);
    }
    let good = ("notes.md", NOTES.as_bytes().to_vec());
    let upload = |key: String| {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(good.1.clone()).file_name(good.0),
        );
        let http = ragway_e2e::client();
        let url = server.url(FILES);
        async move {
            let response = http?.post(url).bearer_auth(key).multipart(form).send().await?;
            let status = response.status().as_u16();
            let retry = response.headers().contains_key("retry-after");
            let body: Value = response.json().await?;
            anyhow::Ok((status, body["error"]["code"].as_str().map(str::to_string), retry))
        }
    };
    // acme's one upload is still arriving: its next waits its turn, globex's does not.
    let acme_slow = trickling(&server, &keys[0]).await?;
    assert_eq!(
        upload(keys[0].clone()).await?,
        (429, Some("upload_quota_exceeded".into()), true)
    );
    assert_eq!(upload(keys[1].clone()).await?.0, 202);
    // globex holds the server's second turn: initech is told the server is busy.
    let globex_slow = trickling(&server, &keys[1]).await?;
    assert_eq!(
        upload(keys[2].clone()).await?,
        (503, Some("overloaded".into()), true)
    );
    // They leave: the turns are free again.
    drop((acme_slow, globex_slow));
    let started = Instant::now();
    while upload(keys[2].clone()).await?.0 != 202 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "turns not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
