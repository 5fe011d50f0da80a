//! ONNX Runtime, loaded at start-up from the shared library that scripts/fetch-models.sh puts in
//! the model cache (nothing is downloaded at run time): one environment per process, one session
//! per model, owned by that model's worker thread.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use ort;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use serde::{Deserialize, Serialize};

/// Where ONNX Runtime is and how many threads a session may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxRuntime {
    /// The shared library (`libonnxruntime.so.*`).
    pub library: PathBuf,
    /// Intra-op threads per session.
    pub threads: usize,
    /// Which of the model's graphs runs.
    pub precision: Precision,
}

/// A model's graph: `fp32` equals PyTorch (1e-7); `int8` has every encoder weight matrix quantised
/// per output column and activations quantised per batch at run time (ONNX Runtime's dynamic
/// quantisation: integer GEMMs, VNNI where the CPU has it), ≈ 2.5× faster, embeddings at cosine ≈
/// 0.994 to fp32. scripts/fetch-models.sh writes both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Int8,
}

impl Precision {
    /// The graph's file name in the model's directory.
    pub fn graph_file(self) -> &'static str {
        match self {
            Self::Fp32 => "model.onnx",
            Self::Int8 => "model.int8.onnx",
        }
    }

    /// The backend's name in logs, `/readyz` and `/metrics`.
    pub fn backend_name(self) -> &'static str {
        match self {
            Self::Fp32 => "onnx",
            Self::Int8 => "onnx_int8",
        }
    }
}

impl OnnxRuntime {
    /// The graph of the model in `dir` that this runtime runs.
    pub fn graph(&self, dir: &Path) -> PathBuf {
        dir.join(self.precision.graph_file())
    }

    /// A session for the model in `dir`.
    pub fn open(&self, dir: &Path) -> Result<Session, String> {
        session(&self.library, &self.graph(dir), self.threads)
    }
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

/// Runs a BERT-shaped graph (inputs `input_ids`, `attention_mask`, `token_type_ids`) on `rows`, each
/// cut to its first `width` tokens, and returns the `output` tensor's values, row by row.
pub fn run_encoder(
    session: &mut Session,
    rows: &[&tokenizers::Encoding],
    width: usize,
    output: &str,
) -> Result<Vec<Vec<f32>>, String> {
    use tokenizers::Encoding;
    let failed = |e: ort::Error| format!("onnx: {e}");
    let shape = [rows.len(), width];
    let matrix = |field: fn(&Encoding) -> &[u32]| {
        let values: Vec<i64> = rows
            .iter()
            .flat_map(|e| field(e)[..width].iter().map(|&v| i64::from(v)))
            .collect();
        ort::value::Tensor::from_array((shape, values))
    };
    let outputs = session
        .run(ort::inputs![
            "input_ids" => matrix(Encoding::get_ids).map_err(failed)?,
            "attention_mask" => matrix(Encoding::get_attention_mask).map_err(failed)?,
            "token_type_ids" => matrix(Encoding::get_type_ids).map_err(failed)?,
        ])
        .map_err(failed)?;
    let (shape, values) = outputs[output].try_extract_tensor::<f32>().map_err(failed)?;
    let per_row = shape.get(1).map_or(1, |&n| n.max(1) as usize);
    Ok(values.chunks(per_row).map(<[f32]>::to_vec).collect())
}
