//! The embedder, on candle and on ONNX Runtime, reproduces sentence-transformers' all-MiniLM-L6-v2
//! vectors (fixture: scripts/fixtures/make_embedding_reference.py).

use std::path::{Path, PathBuf};

use ragway_retrieval::{BertEmbedder, BertEmbedderOptions, Embedder, OnnxRuntime, Precision, Priority};

fn models() -> PathBuf {
    std::env::var_os("RAGWAY_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ragway/models")))
        .unwrap_or_default()
}

/// ONNX Runtime and the embedder's graph, as scripts/fetch-models.sh leaves them.
fn onnx_runtime(precision: Precision) -> OnnxRuntime {
    let library = models().join("onnxruntime-1.31.1/libonnxruntime.so.1.31.1");
    for needed in [library.clone(), model_dir().join(precision.graph_file())] {
        assert!(
            needed.is_file(),
            "{} is missing: run scripts/fetch-models.sh",
            needed.display()
        );
    }
    OnnxRuntime {
        library,
        threads: 2,
        precision,
    }
}

fn model_dir() -> PathBuf {
    let dir = models().join("all-minilm-l6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-models.sh (or set RAGWAY_MODELS)",
        dir.display()
    );
    dir
}

#[derive(serde::Deserialize)]
struct Reference {
    text: String,
    vector: Vec<f32>,
}

#[tokio::test]
async fn candle_vectors_match_sentence_transformers() -> Result<(), Box<dyn std::error::Error>> {
    matches_sentence_transformers(None, "candle").await
}

#[tokio::test]
async fn onnx_vectors_match_sentence_transformers() -> Result<(), Box<dyn std::error::Error>> {
    matches_sentence_transformers(Some(onnx_runtime(Precision::Fp32)), "onnx").await
}

/// The int8 graph trades exactness for speed: every vector stays within cosine 0.98 of
/// sentence-transformers', and it is not the fp32 graph under another name.
#[tokio::test]
async fn onnx_int8_vectors_stay_close_to_sentence_transformers() -> Result<(), Box<dyn std::error::Error>> {
    let references = references()?;
    let options = BertEmbedderOptions {
        onnx: Some(onnx_runtime(Precision::Int8)),
        ..Default::default()
    };
    let embedder = BertEmbedder::load(&model_dir(), "all-minilm-l6-v2", options)?;
    assert_eq!(embedder.backend(), "onnx_int8");
    let texts: Vec<String> = references.iter().map(|r| r.text.clone()).collect();
    let embeddings = embedder.embed(texts, Priority::Bulk).await?;
    let mut largest_difference = 0f32;
    for (got, reference) in embeddings.vectors.iter().zip(&references) {
        let cosine: f32 = got.iter().zip(&reference.vector).map(|(a, b)| a * b).sum();
        assert!(cosine > 0.98, "{:.40}: cosine {cosine}", reference.text);
        let difference = got
            .iter()
            .zip(&reference.vector)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        largest_difference = largest_difference.max(difference);
    }
    assert!(
        largest_difference > 1e-4,
        "int8 vectors equal fp32 ones: the fp32 graph ran"
    );
    Ok(())
}

fn references() -> Result<Vec<Reference>, Box<dyn std::error::Error>> {
    // The package's directory as the test runner says it now (a build shared by two checkouts may
    // have been compiled in the other one), else as it was at compile time.
    let package = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(),
        std::path::PathBuf::from,
    );
    let fixture = package.join("tests/fixtures/minilm_reference.json");
    Ok(serde_json::from_slice(&std::fs::read(fixture)?)?)
}

async fn matches_sentence_transformers(
    onnx: Option<OnnxRuntime>,
    backend: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let references = references()?;
    // Batches of 2 force the length-sorted batching and padding paths.
    let options = BertEmbedderOptions {
        max_batch: 2,
        bulk_slice: 2,
        onnx,
        ..Default::default()
    };
    let embedder = BertEmbedder::load(&model_dir(), "all-minilm-l6-v2", options)?;
    assert_eq!(embedder.backend(), backend);
    assert_eq!(embedder.dimension(), 384);
    let texts: Vec<String> = references.iter().map(|r| r.text.clone()).collect();
    let embeddings = embedder.embed(texts, Priority::Bulk).await?;
    assert_eq!(embeddings.vectors.len(), references.len());
    // The long text is truncated at 256 tokens, so the count is bounded by it.
    assert!(
        embeddings.tokens > 256 && embeddings.tokens <= 256 + 2 * 40,
        "{}",
        embeddings.tokens
    );
    for (got, reference) in embeddings.vectors.iter().zip(&references) {
        let max_diff = got
            .iter()
            .zip(&reference.vector)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max_diff < 1e-4,
            "{:.40}: max difference {max_diff}",
            reference.text
        );
    }
    // One at a time gives the same vector as inside a padded batch.
    let single = embedder
        .embed(vec![references[1].text.clone()], Priority::Interactive)
        .await?;
    let diff = single.vectors[0]
        .iter()
        .zip(&embeddings.vectors[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "{diff}");
    Ok(())
}
