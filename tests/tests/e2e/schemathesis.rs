//! A schemathesis run (PyPI, property-based) against `/openapi.json` of the real binary: every
//! response matches the schema (error bodies included), and no request gets a 5xx other than the
//! documented 503s (a dependency down or busy, or `mode: error`; the check is
//! tests/schemathesis/hooks.py). The routes that generate run fewer cases. scripts/test.sh
//! installs schemathesis and names it in `RAGWAY_SCHEMATHESIS`.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::corpus;
use ragway_e2e::{Server, ServerOptions};

/// The server's deadline for every request here: an answer that generates (the local model on two
/// cores makes ~14 tokens/s, and a case may ask for 4 choices of 1,024 tokens) ends by it.
const DEADLINE_MS: u64 = 20_000;

/// How long schemathesis waits for a response: past the server's deadline, so that a slow answer
/// is judged by what the server says when its deadline comes, not cut off by the client (its
/// default of 10 s made a long generation a "Network Error").
const REQUEST_TIMEOUT_S: u64 = DEADLINE_MS / 1_000 + 15;

/// How long one schemathesis run may take before it is killed (a run here takes under a minute).
const RUN_LIMIT: Duration = Duration::from_secs(300);

const CHECKS: &str = "no_undocumented_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance";

fn schemathesis() -> String {
    let program = std::env::var("RAGWAY_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let found = ragway_e2e::bounded::output(Command::new(&program).arg("--version"), RUN_LIMIT);
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "schemathesis is missing ({program}): run scripts/test.sh, or pip install schemathesis and set RAGWAY_SCHEMATHESIS"
    );
    program
}

/// One run over the operations `filter` selects, `examples` cases each; panics with the report
/// when it finds a problem, and returns the report.
fn run(program: &str, workdir: &Path, server: &Server, filter: &[&str], examples: u32) -> String {
    let mut command = Command::new(program);
    command
        .current_dir(workdir)
        .arg("run")
        .arg(server.url("/openapi.json"))
        .args(["--checks", CHECKS, "--phases", "coverage,fuzzing", "-w", "1"])
        .args(["--max-examples", &examples.to_string(), "--max-failures", "5"])
        .args(["--request-timeout", &REQUEST_TIMEOUT_S.to_string()])
        .args(filter)
        .env("NO_COLOR", "1")
        .env(
            "PYTHONPATH",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis"),
        )
        .env("SCHEMATHESIS_HOOKS", "hooks");
    let output = match ragway_e2e::bounded::output(&mut command, RUN_LIMIT) {
        Ok(output) => output,
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "schemathesis found problems ({filter:?}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_errors_and_no_schema_violations() -> anyhow::Result<()> {
    let program = schemathesis();
    let dir = tempfile::tempdir()?;
    let deadlines =
        format!("[resilience]\ndefault_deadline_ms = {DEADLINE_MS}\nmax_deadline_ms = {DEADLINE_MS}");
    let options = ServerOptions::default().with_config(&deadlines);
    let server = Server::start(dir.path(), &options).await?;
    server.seeded(None, "facts", &corpus()).await?;
    // Path parameters named `name` are the collection that exists, so the cases reach the handlers.
    let workdir = tempfile::tempdir()?;
    std::fs::write(
        workdir.path().join("schemathesis.toml"),
        "[parameters]\n\"path.name\" = \"facts\"\n",
    )?;
    let generating = "/(query|chat/completions)$";
    // The document states the rules the validators enforce: generated requests are mostly valid.
    let stated = "^/v1/(collections|collections/\\{name\\}/search|embeddings)$";
    let report = run(
        &program,
        workdir.path(),
        &server,
        &["--include-path-regex", stated],
        // Enough cases that the create route meets some names not taken yet and chunk settings
        // in order (overlap < chunk_words is a rule no schema can state): the warning is about
        // operations that accepted nothing.
        100,
    );
    assert!(
        !report.contains("Schema validation mismatch"),
        "the schema does not state what the server enforces:\n{report}"
    );
    run(
        &program,
        workdir.path(),
        &server,
        &[
            "--exclude-path-regex",
            generating,
            "--exclude-path",
            "/v1/collections/{name}",
        ],
        30,
    );
    run(
        &program,
        workdir.path(),
        &server,
        &["--include-path-regex", generating],
        4,
    );
    // Dropping the collection last: its own cases, then every route still answers by the schema.
    run(
        &program,
        workdir.path(),
        &server,
        &["--include-path", "/v1/collections/{name}"],
        10,
    );
    server.stop().await
}
