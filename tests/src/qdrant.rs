//! A real Qdrant server (1.18.3) on free ports with its own storage, for the tests of the `qdrant`
//! store backend, alone or as a node of a cluster on loopback ([`QdrantCluster`]). No registry here ships one: the binary is looked up as `RAGWAY_QDRANT_BIN`,
//! then `shared/bin/qdrant` beside the checkout, then `qdrant` on the PATH; where none exists the
//! tests skip and print why (a user's machine runs the official image instead).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct QdrantServer {
    child: Option<Child>,
    binary: PathBuf,
    storage: tempfile::TempDir,
    http_port: u16,
    grpc_port: u16,
    /// The address it listens on.
    host: String,
    /// In a cluster: its peer-to-peer port, and the node it joins through (none for the first).
    cluster: Option<(u16, Option<String>)>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the `qdrant` binary is, if anywhere.
pub fn qdrant_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RAGWAY_QDRANT_BIN") {
        return Some(PathBuf::from(path));
    }
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bin/qdrant");
    if beside.is_file() {
        return Some(beside);
    }
    let on_path = std::env::var_os("PATH")?;
    std::env::split_paths(&on_path)
        .map(|dir| dir.join("qdrant"))
        .find(|candidate| candidate.is_file())
}

impl QdrantServer {
    /// Starts a Qdrant server, or returns `None` after printing why the test skips.
    pub fn start_or_skip(test: &str) -> anyhow::Result<Option<Self>> {
        Self::start_on_or_skip(test, "127.0.0.1")
    }

    /// As [`QdrantServer::start_or_skip`], listening on `host` (an address of this machine).
    pub fn start_on_or_skip(test: &str, host: &str) -> anyhow::Result<Option<Self>> {
        let Some(binary) = qdrant_binary() else {
            eprintln!(
                "SKIPPED {test}: no qdrant binary (set RAGWAY_QDRANT_BIN, or put Qdrant 1.18 at ../shared/bin/qdrant or on the PATH)"
            );
            return Ok(None);
        };
        let mut server = Self::new(binary, host, None)?;
        server.restart()?;
        Ok(Some(server))
    }

    fn new(binary: PathBuf, host: &str, cluster: Option<(u16, Option<String>)>) -> anyhow::Result<Self> {
        Ok(Self {
            child: None,
            binary,
            storage: tempfile::tempdir()?,
            http_port: free_port()?,
            grpc_port: free_port()?,
            host: host.to_string(),
            cluster,
        })
    }

    /// Its peer-to-peer address, in a cluster.
    fn p2p_url(&self) -> Option<String> {
        self.cluster
            .as_ref()
            .map(|(port, _)| format!("http://{}:{port}", self.host))
    }

    /// The gRPC address the store connects to.
    pub fn grpc_url(&self) -> String {
        format!("http://{}:{}", self.host, self.grpc_port)
    }

    /// The HTTP address (REST API).
    pub fn http_url(&self) -> String {
        format!("http://{}:{}", self.host, self.http_port)
    }

    /// Starts it again on the same ports and storage (after [`QdrantServer::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.binary);
        if let (Some((port, bootstrap)), Some(uri)) = (&self.cluster, self.p2p_url()) {
            command
                .env("QDRANT__CLUSTER__ENABLED", "true")
                .env("QDRANT__CLUSTER__P2P__PORT", port.to_string())
                .args(["--uri", &uri]);
            if let Some(bootstrap) = bootstrap {
                command.args(["--bootstrap", bootstrap]);
            }
        }
        let child = command
            .env(
                "QDRANT__STORAGE__STORAGE_PATH",
                self.storage.path().join("storage"),
            )
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.storage.path().join("snapshots"),
            )
            .env("QDRANT__SERVICE__HOST", &self.host)
            .env("QDRANT__SERVICE__HTTP_PORT", self.http_port.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc_port.to_string())
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .current_dir(self.storage.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("qdrant did not answer on port {} within 30 s", self.http_port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Whether both its HTTP and gRPC ports accept connections.
    fn answers(&self) -> bool {
        let open = |port: u16| std::net::TcpStream::connect((self.host.as_str(), port)).is_ok();
        open(self.http_port) && open(self.grpc_port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Nodes of one Qdrant cluster on loopback (distributed mode: `cluster.enabled`, a p2p port
/// each, the first started with `--uri`, the others joining through it with `--bootstrap`).
pub struct QdrantCluster {
    pub nodes: Vec<QdrantServer>,
}

impl QdrantCluster {
    /// Starts `size` nodes and waits until each knows all of them (at most 60 s), or returns
    /// `None` after printing why the test skips.
    pub async fn start_or_skip(test: &str, size: usize) -> anyhow::Result<Option<Self>> {
        let Some(binary) = qdrant_binary() else {
            eprintln!("SKIPPED {test}: no qdrant binary (set RAGWAY_QDRANT_BIN, or put Qdrant 1.18 at ../shared/bin/qdrant or on the PATH)");
            return Ok(None);
        };
        let mut nodes: Vec<QdrantServer> = Vec::new();
        for _ in 0..size {
            let bootstrap = nodes.first().and_then(QdrantServer::p2p_url);
            let mut node = QdrantServer::new(binary.clone(), "127.0.0.1", Some((free_port()?, bootstrap)))?;
            node.restart()?;
            nodes.push(node);
        }
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            cluster.wait_until_peers(node, size).await?;
        }
        Ok(Some(cluster))
    }

    /// Waits until `node` counts `size` peers (at most 60 s).
    async fn wait_until_peers(&self, node: &QdrantServer, size: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let reply: anyhow::Result<serde_json::Value> = async {
                Ok(reqwest::get(format!("{}/cluster", node.http_url()))
                    .await?
                    .json()
                    .await?)
            }
            .await;
            let peers = reply
                .ok()
                .and_then(|r| r["result"]["peers"].as_object().map(|p| p.len()))
                .unwrap_or(0);
            if peers == size {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "qdrant node {} sees {peers} of {size} peers after 60 s",
                    node.http_url()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every node's gRPC address, for `store.urls`.
    pub fn grpc_urls(&self) -> Vec<String> {
        self.nodes.iter().map(QdrantServer::grpc_url).collect()
    }
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        self.kill();
    }
}
