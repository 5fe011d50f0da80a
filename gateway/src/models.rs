//! Where model files come from: a local path, or `hf:<id>` downloaded from the Hugging Face Hub
//! into the model cache when the network allows.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ragway_retrieval::OnnxRuntime;
use ragway_worker::onnx::Precision;

use crate::config::{ModelBackend, ModelsConfig};

const HF_PREFIX: &str = "hf:";

/// Resolves a model directory holding `files`.
pub async fn model_dir(spec: &str, cache_dir: &Path, files: &[&str]) -> anyhow::Result<PathBuf> {
    match spec.strip_prefix(HF_PREFIX) {
        Some(id) => {
            let dir = cache_dir.join("hf").join(id.replace('/', "--"));
            for file in files {
                hf_download(id, file, &dir.join(file)).await?;
            }
            Ok(dir)
        }
        None => {
            let dir = PathBuf::from(spec);
            for file in files {
                if !dir.join(file).is_file() {
                    bail!(
                        "model directory {} has no {file}; run scripts/fetch-models.sh, or point the config at a directory that has it",
                        dir.display()
                    );
                }
            }
            Ok(dir)
        }
    }
}

/// Resolves a GGUF file: a file path, a directory holding exactly one `.gguf`, or
/// `hf:<repo id>/<file>.gguf`.
pub async fn gguf_file(spec: &str, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(rest) = spec.strip_prefix(HF_PREFIX) {
        let Some((repo, file)) = rest.rsplit_once('/') else {
            bail!("`{spec}`: write hf:<owner>/<repo>/<file>.gguf");
        };
        let path = cache_dir.join("hf").join(repo.replace('/', "--")).join(file);
        hf_download(repo, file, &path).await?;
        return Ok(path);
    }
    let path = PathBuf::from(spec);
    if path.is_file() {
        return Ok(path);
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(&path)
        .with_context(|| {
            format!(
                "LLM model {} is neither a file nor a directory; run scripts/fetch-models.sh",
                path.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{} holds no .gguf file; run scripts/fetch-models.sh",
            path.display()
        ),
        _ => bail!("{} holds several .gguf files; name one", path.display()),
    }
}

async fn hf_download(repo: &str, file: &str, target: &Path) -> anyhow::Result<()> {
    if target.is_file() {
        return Ok(());
    }
    let url = format!("https://huggingface.co/{repo}/resolve/main/{file}");
    tracing::info!(%url, "downloading model file");
    let response = reqwest::get(&url)
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| {
            format!(
                "cannot download {url}: is the Hugging Face Hub reachable? Or give a local model directory"
            )
        })?;
    let bytes = response
        .bytes()
        .await
        .with_context(|| format!("download of {url} broke off"))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let partial = target.with_extension("partial");
    std::fs::write(&partial, &bytes)?;
    std::fs::rename(&partial, target)?;
    Ok(())
}

/// The ONNX Runtime a model in `dir` runs on, or `None` for candle. `auto` takes ONNX Runtime when
/// its library and the model's graph of that `precision` are present; `onnx` requires them.
pub fn onnx_for(
    backend: ModelBackend,
    precision: Precision,
    dir: &Path,
    models: &ModelsConfig,
) -> anyhow::Result<Option<OnnxRuntime>> {
    let threads = match models.onnx_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let runtime = OnnxRuntime {
        library: models.onnx_library(),
        threads,
        precision,
    };
    let graph = runtime.graph(dir);
    let missing: Vec<String> = [&runtime.library, &graph]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    match (backend, missing.is_empty()) {
        (ModelBackend::Candle, _) => Ok(None),
        (_, true) => Ok(Some(runtime)),
        (ModelBackend::Onnx, false) => bail!(
            "backend onnx needs {}: run scripts/fetch-models.sh (it fetches ONNX Runtime and writes the graph)",
            missing.join(" and ")
        ),
        (ModelBackend::Auto, false) => {
            tracing::info!(missing = ?missing, "ONNX Runtime or the model's graph is missing: running it on candle (scripts/fetch-models.sh provides both)");
            Ok(None)
        }
    }
}
