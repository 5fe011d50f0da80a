use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::{Reply, ScriptedOpenAi};

/// How long a request of the test client may take in all: past the longest deadline a test gives
/// the server (a local generation of the schemathesis run, 20 s; the default 60 s), so a server
/// that never answers fails the test in minutes instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(150);
/// How long [`Server::stop`] waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The test client: connect and whole-request timeouts.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// The model cache the set-up scripts fill (scripts/fetch-models.sh).
pub fn models_dir() -> PathBuf {
    std::env::var_os("RAGWAY_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ragway/models")))
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// The `ragway` binary of the same build profile as the running test.
pub fn binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/ragway
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let bin = profile_dir.join("ragway");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p ragway-gateway` (scripts/test.sh does)",
            bin.display()
        );
    }
    Ok(bin)
}

#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Extra TOML appended to the test config.
    pub config_toml: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl ServerOptions {
    /// Appends TOML to the test config.
    pub fn with_config(mut self, toml: &str) -> Self {
        self.config_toml.push('\n');
        self.config_toml.push_str(toml);
        self.config_toml.push('\n');
        self
    }

    /// An OpenAI-compatible LLM backend `name` served by `llm` (a scripted stand-in), without
    /// retries so that tests see each failure once.
    pub fn with_scripted_llm(self, name: &str, llm: &ScriptedOpenAi) -> Self {
        let url = &llm.base_url;
        self.with_config(&format!(
            "[[llm]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{url}\"\nmodel = \"scripted-{name}\"\nmax_retries = 0"
        ))
    }

    /// The local model (SmolLM2) as LLM backend `name`.
    pub fn with_local_llm(self, name: &str) -> Self {
        let model = models_dir().join("smollm2-135m-instruct");
        self.with_config(&format!(
            "[[llm]]\nname = \"{name}\"\nkind = \"local\"\nmodel = \"{}\"",
            model.display()
        ))
    }

    /// Tenants with API keys (`auth.mode = "keys"`) and `/admin` open to `admin_key`.
    pub fn with_admin(mut self, admin_key: &str) -> Self {
        self.env.push(("RAGWAY_ADMIN_KEY".into(), admin_key.into()));
        self.env.push(("RAGWAY__AUTH__MODE".into(), "keys".into()));
        self
    }
}

pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    http: reqwest::Client,
}

impl Server {
    /// Starts ragway on `data_dir` and waits until it listens.
    pub async fn start(data_dir: &Path, options: &ServerOptions) -> anyhow::Result<Self> {
        Self::launch(data_dir, options, None).await
    }

    /// Starts ragway inside `namespace`, listening on its own address there.
    pub async fn start_in(
        namespace: &crate::Namespace,
        data_dir: &Path,
        options: &ServerOptions,
    ) -> anyhow::Result<Self> {
        Self::launch(data_dir, options, Some(namespace)).await
    }

    async fn launch(
        data_dir: &Path,
        options: &ServerOptions,
        namespace: Option<&crate::Namespace>,
    ) -> anyhow::Result<Self> {
        let models = models_dir();
        for needed in ["all-minilm-l6-v2/model.safetensors", "smollm2-135m-instruct"] {
            if !models.join(needed).exists() {
                bail!(
                    "model {} is missing: run scripts/fetch-models.sh (or set RAGWAY_MODELS)",
                    models.join(needed).display()
                );
            }
        }
        let config_path = data_dir.join("test-config.toml");
        std::fs::create_dir_all(data_dir)?;
        // Short answers keep the tests quick; everything else is the shipped default.
        let config = format!("[generation]\nmax_tokens = 40\n\n{}", options.config_toml);
        std::fs::write(&config_path, config)?;
        // `ip netns exec` execs ragway in the namespace: the child is ragway itself.
        let (mut command, listen) = match namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &namespace.name]).arg(binary()?);
                (command, format!("{}:0", namespace.inside))
            }
            None => (Command::new(binary()?), "127.0.0.1:0".to_string()),
        };
        let mut child = command
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--config")
            .arg(&config_path)
            .env("RAGWAY_MODELS", &models)
            .env("RUST_LOG", "info")
            // Tests of anything but tenants run open; theirs set `RAGWAY__AUTH__MODE=keys`.
            .env("RAGWAY__AUTH__MODE", "open")
            .envs(options.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (address_tx, address_rx) = mpsc::channel();
        // Echo the server's log into the test output, and report the address it listens on.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[ragway] {line}");
                if let Some(rest) = line.split("address=").nth(1) {
                    let address = rest.split_whitespace().next().unwrap_or_default().to_string();
                    let _ = address_tx.send(address);
                }
            }
        });
        let address = tokio::task::spawn_blocking(move || address_rx.recv_timeout(Duration::from_secs(180)))
            .await?
            .context("ragway did not report its address within 180 s (see its log above)")?;
        Ok(Self {
            child,
            base: format!("http://{address}"),
            data_dir: data_dir.to_path_buf(),
            http: client()?,
        })
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server process's resident memory, in bytes (`VmRSS`).
    pub fn resident_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .context("no VmRSS in /proc/<pid>/status")?;
        Ok(kib * 1024)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        reply(self.http.get(self.url(path)).send().await?).await
    }

    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.http.get(self.url(path)).send().await?.text().await?)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        reply(self.http.post(self.url(path)).json(body).send().await?).await
    }

    /// Posts raw bytes as JSON, for malformed-input tests.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> anyhow::Result<Reply> {
        let request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        reply(request.send().await?).await
    }

    /// Posts `body` (bytes, or a stream) as `content_type`.
    pub async fn post_body(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<Reply> {
        self.post_body_as(None, path, content_type, body).await
    }

    /// [`Server::post_body`] with `Authorization: Bearer <key>` when `key` is given.
    pub async fn post_body_as(
        &self,
        key: Option<&str>,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<Reply> {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        reply(request.send().await?).await
    }

    /// Posts `files` (name, bytes) as `file` parts of a multipart form, and `urls` as `url` parts.
    pub async fn upload(
        &self,
        path: &str,
        files: &[(&str, Vec<u8>)],
        urls: &[&str],
    ) -> anyhow::Result<Reply> {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            let part = reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string());
            form = form.part("file", part);
        }
        for url in urls {
            form = form.text("url", url.to_string());
        }
        reply(self.http.post(self.url(path)).multipart(form).send().await?).await
    }

    /// Sends `body` with `Authorization: Bearer <key>` when `key` is given (a tenant's key).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        reply(request.send().await?).await
    }

    /// Sends `body` (with a tenant's key, when given) and reads the whole body, JSON or SSE, as
    /// text: (status, text).
    pub async fn call_text(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, String)> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// Sends `body` to an admin route with `Authorization: Bearer <key>`.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        reply(request.send().await?).await
    }

    /// Posts and reads the whole (SSE) body: status, headers and text.
    pub async fn post_sse(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, String)> {
        let response = self.http.post(self.url(path)).json(body).send().await?;
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        Ok((status, headers, response.text().await?))
    }

    /// Posts and reads the whole (SSE) body: status, `x-ragway-mode`, content type and text.
    pub async fn post_stream(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Option<String>, String, String)> {
        let response = self.http.post(self.url(path)).json(body).send().await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (mode, content_type) = (
            header("x-ragway-mode"),
            header("content-type").unwrap_or_default(),
        );
        let status = response.status().as_u16();
        Ok((status, mode, content_type, response.text().await?))
    }

    /// Creates collection `name` (with `key`, when given) and ingests `documents` into it;
    /// fails unless both succeed.
    pub async fn seeded(&self, key: Option<&str>, name: &str, documents: &Value) -> anyhow::Result<()> {
        let post = reqwest::Method::POST;
        let created = self
            .call(
                post.clone(),
                "/v1/collections",
                key,
                Some(&serde_json::json!({"name": name})),
            )
            .await?;
        if created.status != 201 {
            bail!("creating {name}: {} {}", created.status, created.body);
        }
        let path = format!("/v1/collections/{name}/documents");
        let ingested = self.call(post, &path, key, Some(documents)).await?;
        if ingested.status != 200 {
            bail!("ingesting into {name}: {} {}", ingested.status, ingested.body);
        }
        Ok(())
    }

    /// Creates a tenant with `body`'s fields and one key for it: (id, key).
    pub async fn tenant(&self, admin_key: &str, body: &Value) -> anyhow::Result<(String, String)> {
        let post = reqwest::Method::POST;
        let created = self
            .admin(post.clone(), "/admin/tenants", admin_key, Some(body))
            .await?;
        let id = created.body["id"].as_str().unwrap_or_default().to_string();
        if created.status != 201 || id.is_empty() {
            bail!("creating a tenant: {} {}", created.status, created.body);
        }
        let key = self
            .admin(post, &format!("/admin/tenants/{id}/keys"), admin_key, None)
            .await?;
        let secret = key.body["key"].as_str().unwrap_or_default().to_string();
        if key.status != 201 || secret.is_empty() {
            bail!("creating a key: {} {}", key.status, key.body);
        }
        Ok((id, secret))
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        reply(self.http.delete(self.url(path)).send().await?).await
    }

    /// SIGTERM, then wait for a clean exit; SIGKILL after [`STOP_GRACE`] (graceful shutdown
    /// waits for open connections), which fails the test.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let started = std::time::Instant::now();
        let exit = loop {
            if let Some(exit) = self.child.try_wait()? {
                break exit;
            }
            if started.elapsed() >= STOP_GRACE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "ragway did not exit within {} s of SIGTERM and was killed",
                    STOP_GRACE.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !exit.success() {
            bail!("ragway exited with {exit} after SIGTERM");
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn reply(response: reqwest::Response) -> anyhow::Result<Reply> {
    let status = response.status().as_u16();
    let mode_header = response
        .headers()
        .get("x-ragway-mode")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let backend_header = response
        .headers()
        .get("x-ragway-backend")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = response.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .with_context(|| format!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)))?
    };
    Ok(Reply {
        status,
        mode_header,
        backend_header,
        retry_after,
        body,
    })
}
