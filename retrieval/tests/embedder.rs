//! The embedder, on candle and on ONNX Runtime, reproduces sentence-transformers' all-MiniLM-L6-v2
//! vectors (fixture: scripts/fixtures/make_embedding_reference.py).

use std::path::{Path, PathBuf};

use ragway_retrieval::{BertEmbedder, BertEmbedderOptions, Embedder, OnnxRuntime, Priority};

fn models() -> PathBuf {
    std::env::var_os("RAGWAY_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ragway/models")))
        .unwrap_or_default()
}

/// ONNX Runtime and the embedder's graph, as scripts/fetch-models.sh leaves them.
fn onnx_runtime() -> OnnxRuntime {
    let library = models().join("onnxruntime-1.31.1/libonnxruntime.so.1.31.1");
    for needed in [library.clone(), model_dir().join("model.onnx")] {
        assert!(
            needed.is_file(),
            "{} is missing: run scripts/fetch-models.sh",
            needed.display()
        );
    }
    OnnxRuntime { library, threads: 2 }
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
    matches_sentence_transformers(Some(onnx_runtime()), "onnx").await
}

async fn matches_sentence_transformers(
    onnx: Option<OnnxRuntime>,
    backend: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    let references: Vec<Reference> = serde_json::from_slice(&std::fs::read(fixture)?)?;
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
