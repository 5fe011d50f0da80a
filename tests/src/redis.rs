//! A real `redis-server` (Debian's package) on a free port, for the shared cache tier's tests;
//! and a primary with a replica watched by three sentinels ([`RedisSentinels`]), for failover.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Another address it listens on besides 127.0.0.1 (see [`RedisServer::start_also_on`]).
    also_on: Option<String>,
    /// The primary it replicates at start (`--replicaof`), as a replica.
    replica_of: Option<u16>,
    /// Its working directory: a replica's full sync writes the primary's data there
    /// (`dump.rdb`), which a server would load again at its next start.
    dir: tempfile::TempDir,
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
            replica_of: None,
            dir: tempfile::tempdir()?,
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
        let replica_of = self.replica_of.map(|port| port.to_string());
        let replica_of = match &replica_of {
            Some(port) => vec!["--replicaof", "127.0.0.1", port.as_str()],
            None => Vec::new(),
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(&bind)
            .args(&replica_of)
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
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

    /// SIGSTOP (`true`) or SIGCONT (`false`): a server that holds its connections and answers
    /// nothing, as a stalled machine would.
    pub fn pause(&self, paused: bool) -> anyhow::Result<()> {
        let pid = self.child.as_ref().context("not running")?.id();
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// Whether it is a replica in sync with its primary.
    pub fn in_sync(&self) -> bool {
        self.cli(&["INFO", "replication"])
            .is_ok_and(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
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

/// A Redis primary and its replica, watched by three sentinels (quorum 2) that fail over a
/// primary unreachable for a second.
pub struct RedisSentinels {
    /// `[0]` starts as the primary, `[1]` as its replica.
    pub servers: Vec<RedisServer>,
    sentinels: Vec<(Child, u16)>,
    _dir: tempfile::TempDir,
}

/// The name the sentinels watch the primary under.
pub const SENTINEL_MASTER: &str = "mymaster";

impl RedisSentinels {
    /// Starts them and waits until every sentinel knows the primary and its replica (at most 30 s).
    pub fn start() -> anyhow::Result<Self> {
        let primary = RedisServer::start()?;
        let mut replica = RedisServer {
            child: None,
            port: TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
            also_on: None,
            replica_of: Some(primary.port),
            dir: tempfile::tempdir()?,
        };
        replica.restart()?;
        let dir = tempfile::tempdir()?;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    dir.path().display(),
                    primary.port
                ),
            )?;
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("redis-server --sentinel did not start")?;
            sentinels.push((child, port));
        }
        let set = Self {
            servers: vec![primary, replica],
            sentinels,
            _dir: dir,
        };
        let started = Instant::now();
        while !set.settled()? {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the sentinels did not see the primary and its replica within 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(set)
    }

    /// Whether every sentinel names a primary, knows one replica, and the replica is in sync.
    fn settled(&self) -> anyhow::Result<bool> {
        for (_, port) in &self.sentinels {
            let out = self.sentinel_cli(*port, &["SENTINEL", "replicas", SENTINEL_MASTER])?;
            if !out.contains("slave") || out.contains("disconnected") {
                return Ok(false);
            }
        }
        let info = self.servers[1].cli(&["INFO", "replication"])?;
        Ok(info.contains("master_link_status:up"))
    }

    fn sentinel_cli(&self, port: u16, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &port.to_string()]).args(args);
        let output = crate::bounded::output(&mut command, Duration::from_secs(10))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The sentinels' addresses, for `cache.redis.sentinels`.
    pub fn addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The port of the server the first sentinel names as the primary now.
    pub fn primary_port(&self) -> anyhow::Result<u16> {
        let out = self.sentinel_cli(
            self.sentinels[0].1,
            &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER],
        )?;
        out.lines()
            .nth(1)
            .and_then(|port| port.trim().parse().ok())
            .context("no primary named")
    }

    /// Which of [`RedisSentinels::servers`] is the primary now.
    pub fn primary(&self) -> anyhow::Result<usize> {
        let port = self.primary_port()?;
        self.servers
            .iter()
            .position(|s| s.port == port)
            .context("the primary is none of ours")
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
