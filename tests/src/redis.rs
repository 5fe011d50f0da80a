//! A real `redis-server` (Debian's package) on a free port, for the shared cache tier's tests.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Another address it listens on besides 127.0.0.1 (see [`RedisServer::start_also_on`]).
    also_on: Option<String>,
}

impl RedisServer {
    /// Starts `redis-server` (no persistence) on a free port and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// Also listening on `address` (an address of this machine, on a link to a test's network
    /// namespace), open to clients there.
    pub fn start_also_on(address: &str) -> anyhow::Result<Self> {
        Self::start_with(Some(address.to_string()))
    }

    fn start_with(also_on: Option<String>) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self {
            child: None,
            port,
            also_on,
        };
        server.restart()?;
        Ok(server)
    }

    /// Its URL from `address` (one it listens on).
    pub fn url_on(&self, address: &str) -> String {
        format!("redis://{address}:{}/0", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let mut bind = vec!["--bind", "127.0.0.1"];
        if let Some(address) = &self.also_on {
            bind.extend([address.as_str(), "--protected-mode", "no"]);
        }
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(&bind)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server is missing: run scripts/test.sh (it installs Debian's redis-server), or apt-get install redis-server")?;
        self.child = Some(child);
        let started = Instant::now();
        while self.cli(&["PING"]).map(|r| r.trim() != "PONG").unwrap_or(true) {
            if started.elapsed() > Duration::from_secs(10) {
                bail!(
                    "redis-server on port {} did not answer PING within 10 s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `redis-cli` against it and returns its output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]).args(args);
        let output = crate::bounded::output(&mut command, Duration::from_secs(30))
            .context("redis-cli (apt-get install redis-tools) did not answer")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let out = self.cli(&["--scan", "--pattern", pattern])?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
