//! The test venv's Python (`RAGWAY_PYTHON`, set by scripts/test.sh) and the client checks run
//! with it: a script under tests/ that asserts on a real client's view of ragway.

use std::process::Command;
use std::time::Duration;

/// The Python that can `import` each of `modules`; fails the test, saying how to get them, if it
/// cannot.
pub fn with(modules: &str) -> String {
    let python = std::env::var("RAGWAY_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = crate::bounded::output(
        Command::new(&python).args(["-c", &format!("import {modules}")]),
        Duration::from_secs(120),
    );
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{modules} missing from {python}: run scripts/test.sh (its venv has tests/requirements.txt), or install them and set RAGWAY_PYTHON"
    );
    python
}

/// Runs `script` (a path under tests/) with `args`, within `bound`; fails with its output unless
/// it exits 0.
pub async fn check(python: String, script: &str, args: Vec<String>, bound: Duration) -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(python);
        command.arg(path).args(args);
        crate::bounded::output(&mut command, bound)
    })
    .await??;
    anyhow::ensure!(
        output.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
