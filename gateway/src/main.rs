use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ragway_gateway::app;
use ragway_gateway::config::{Config, Overrides};
use ragway_gateway::http::router;
use ragway_gateway::http::serve::{serve, ConnectionLimits};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ragway: a RAG gateway. Configuration: defaults → --config file → RAGWAY__SECTION__KEY env → flags.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML config file.
    #[arg(long, env = "RAGWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (server.listen), e.g. 127.0.0.1:8080; port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Check the configuration, print the effective values (JSON), and exit.
    #[arg(long)]
    validate_and_exit: bool,
}

/// `info`, but for Qdrant Edge's "Feature flags not initialized!": it warns each time a
/// collection's shard is opened, and its crate offers no way to initialise them (the defaults it
/// falls back to are Qdrant's own); and llama.cpp below `warn` (~140 lines of model metadata at
/// every load). Its one warning at start, `n_ctx_seq (16384) > n_ctx_train (8192)`, is the unified
/// KV cache shared by all answers; no single answer is given more than the model's window.
/// `RUST_LOG` replaces this whole filter.
const DEFAULT_LOG: &str =
    "info,qdrant_edge::common::flags=error,qdrant_edge::segment::common::flags=error,llama-cpp-2=warn";

/// How long llama.cpp's threads spin at a barrier before they sleep (libgomp's rounds).
const OPENMP_SPIN_ROUNDS: &str = "3000";

fn main() -> anyhow::Result<()> {
    bound_openmp_spinning();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// The local model's threads meet at an OpenMP barrier after each operation of each token
/// (hundreds a token), and libgomp spins 300,000 rounds there before it sleeps. Where cores are
/// shared (the embedder in this process, other processes on the machine) a spinning thread holds
/// the core that the thread it waits for needs: three ragways answering on two cores took 13×
/// as long as one (a test 4.4 s alone, 58 s three at a time). 3,000 rounds decode as fast alone
/// and three at a time took 14 s (docs/BENCHMARKS.md, "Local LLM"). libgomp reads its settings
/// once, as it is loaded, before `main`: so ragway starts itself again with `GOMP_SPINCOUNT` set
/// (the same process, its arguments unchanged), unless the operator set it or `OMP_WAIT_POLICY`.
fn bound_openmp_spinning() {
    use std::os::unix::process::CommandExt;
    if ["GOMP_SPINCOUNT", "OMP_WAIT_POLICY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some())
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let error = command
        .args(args)
        .env("GOMP_SPINCOUNT", OPENMP_SPIN_ROUNDS)
        .exec();
    // Only reached when the restart failed; ragway runs on, its threads spinning longer.
    eprintln!("ragway: could not restart itself with GOMP_SPINCOUNT={OPENMP_SPIN_ROUNDS}: {error}");
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        data_dir: cli.data_dir,
    };
    let config = Config::load(cli.config.as_deref(), &overrides).map_err(anyhow::Error::msg)?;
    if cli.validate_and_exit {
        // API keys are never in the config itself, only the names of their env variables; a
        // password or token written inside a URL is masked.
        let shown = ragway_gateway::config::redact::redacted(serde_json::to_value(&config)?);
        let effective = format!("{shown:#}\n");
        std::io::Write::write_all(&mut std::io::stdout(), effective.as_bytes())?;
        return Ok(());
    }
    let metrics = ragway_gateway::metrics::install()?;
    let listen = config.server.listen.clone();
    let limits = ConnectionLimits {
        max_connections: config.server.max_connections,
        header_timeout: Duration::from_millis(config.server.header_timeout_ms),
        shutdown_grace: Duration::from_millis(config.server.shutdown_grace_ms),
    };
    // Held until the process ends.
    let _data_dir = app::lock_data_dir(&config.server.data_dir)?;
    let state = app::load(config, metrics).await?;
    tokio::spawn(ragway_gateway::http::routes::tenants::sweep_deletions(
        state.clone(),
    ));
    let schedule = ragway_gateway::catalog::snapshots::Schedule::of(&state.config.snapshots);
    if schedule.shortest().is_some() {
        let dir = state.config.server.snapshots_dir();
        tokio::spawn(ragway_gateway::catalog::snapshots::run(
            state.collections.clone(),
            dir,
            schedule,
        ));
    }
    let stop = shutdown_signal().context("cannot install the SIGTERM handler")?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Tests and scripts read this line to find the port when listening on port 0.
    tracing::info!(address = %listener.local_addr()?, "ragway listening");
    serve(listener, router(state), limits, stop).await;
    tracing::info!("ragway stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C. The handlers are installed here, before the caller says it listens: a
/// signal sent as soon as the log says so (a test, an orchestrator) stops ragway gracefully
/// instead of killing it.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    })
}
