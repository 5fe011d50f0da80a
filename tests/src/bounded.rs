//! External programs (schemathesis, the Python SDK checks, redis-cli, a second ragway) run under
//! a wall-clock limit: past it, the program and everything it started (its process group) are
//! SIGKILLed and the test fails naming the program, the limit and what it had printed.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Runs `command` to its end, or kills it (and its children) after `limit`.
pub fn output(command: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let program = format!("{:?}", command.get_program());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    // Read both pipes while waiting: a program that fills one would otherwise block for ever.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= limit {
            kill_group(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status: match status {
            Some(status) => status,
            None => child.wait()?,
        },
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if status.is_none() {
        bail!(
            "{program} did not end within {} s and was killed; it printed:\n{}\n{}",
            limit.as_secs(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// SIGKILL to `child`'s process group (it leads one: `process_group(0)`), then to `child`.
pub(crate) fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_past_its_limit_is_killed_with_its_children() -> anyhow::Result<()> {
        let marker = format!("ragway-bounded-{}", std::process::id());
        // A shell that starts a child of its own and waits: both must go.
        let script = format!("(exec -a {marker} sleep 300) & exec -a {marker} sleep 300");
        let started = Instant::now();
        let error = output(Command::new("bash").args(["-c", &script]), Duration::from_secs(1))
            .err()
            .context("a program past its limit was not reported")?;
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(error.to_string().contains("did not end within 1 s"), "{error}");
        let left = Command::new("pgrep").args(["-f", &marker]).output()?;
        assert!(
            left.stdout.is_empty(),
            "left running: {}",
            String::from_utf8_lossy(&left.stdout)
        );
        Ok(())
    }

    #[test]
    fn a_program_within_its_limit_gives_its_output() -> anyhow::Result<()> {
        let done = output(
            Command::new("bash").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(60),
        )?;
        assert_eq!(
            (done.status.code(), &done.stdout[..], &done.stderr[..]),
            (Some(3), &b"out\n"[..], &b"err\n"[..])
        );
        Ok(())
    }
}
