//! ONNX Runtime, loaded at start-up from the shared library that scripts/fetch-models.sh puts in
//! the model cache (nothing is downloaded at run time): one environment per process, one session
//! per model, owned by that model's worker thread.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use ort;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

/// Where ONNX Runtime is and how many threads a session may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxRuntime {
    /// The shared library (`libonnxruntime.so.*`).
    pub library: PathBuf,
    /// Intra-op threads per session.
    pub threads: usize,
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime, loaded from `library` by the first caller.
pub fn environment(library: &Path) -> Result<Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            if !library.is_file() {
                return Err(format!(
                    "the ONNX Runtime library {} is missing: run scripts/fetch-models.sh",
                    library.display()
                ));
            }
            ort::init_from(library)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?
                .with_name("ragway")
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
        })
        .clone()
}

/// A session for the graph `model`, with every graph optimisation and `threads` intra-op threads.
pub fn session(library: &Path, model: &Path, threads: usize) -> Result<Session, String> {
    let environment = environment(library)?;
    let failed = |e: String| format!("cannot open {}: {e}", model.display());
    Session::builder(&environment)
        .map_err(|e| failed(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| failed(e.to_string()))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| failed(e.to_string()))?
        .commit_from_file(model)
        .map_err(|e| failed(e.to_string()))
}
