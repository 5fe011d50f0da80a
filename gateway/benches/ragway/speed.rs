use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use ragway_llm::{rag_messages, GenerationRequest, Generator, LocalLlm, LocalLlmOptions, Passage};
use ragway_rerank::{CrossEncoder, CrossEncoderOptions, Reranker};
use ragway_retrieval::{BertEmbedder, BertEmbedderOptions, Embedder, Priority};
use ragway_worker::onnx::Precision;

pub fn models_dir() -> PathBuf {
    ragway_gateway::config::default_models_dir()
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    let i = ((xs.len() as f64 - 1.0) * p).round() as usize;
    xs[i]
}

/// Passage-length sentences (≈ 40–60 words), from the benchmark corpus.
pub fn passages(n: usize) -> Vec<String> {
    let corpus = crate::quality::data_dir().join("corpus.jsonl");
    std::fs::read_to_string(corpus)
        .expect("trec-dl-5k corpus")
        .lines()
        .take(n)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// ONNX Runtime as scripts/fetch-models.sh leaves it, with 2 intra-op threads.
pub fn onnx_runtime(precision: Precision) -> ragway_retrieval::OnnxRuntime {
    ragway_retrieval::OnnxRuntime {
        library: models_dir().join("onnxruntime-1.31.1/libonnxruntime.so.1.31.1"),
        threads: 2,
        precision,
    }
}

/// The backends measured side by side: candle, and ONNX Runtime's fp32 and int8 graphs.
fn backends() -> [Option<ragway_retrieval::OnnxRuntime>; 3] {
    [
        None,
        Some(onnx_runtime(Precision::Fp32)),
        Some(onnx_runtime(Precision::Int8)),
    ]
}

/// Passages/s at batch 32 and one query's latency, for candle and ONNX Runtime side by side.
pub async fn embed() -> anyhow::Result<()> {
    println!("\n### Embedding (all-MiniLM-L6-v2, CPU, tokenisation included)\n");
    println!("| backend | batches of 32: median passages/s (5 runs × 256 MS MARCO passages) | min | max | one query: p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for onnx in backends() {
        let backend = onnx.as_ref().map_or("candle", |r| r.precision.backend_name());
        let options = BertEmbedderOptions {
            bulk_slice: 32,
            onnx,
            ..Default::default()
        };
        let embedder = BertEmbedder::load(&models_dir().join("all-minilm-l6-v2"), "minilm", options)?;
        let texts = passages(32 * 8);
        embedder.embed(texts[..32].to_vec(), Priority::Bulk).await?; // warm-up
                                                                     // All 256 in one call, sorted by length and cut into batches of 32, as
                                                                     // sentence-transformers' encode(texts, batch_size=32) does.
        let mut rates = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            embedder.embed(texts.clone(), Priority::Interactive).await?;
            rates.push(texts.len() as f64 / started.elapsed().as_secs_f64());
        }
        let mut queries = Vec::new();
        for i in 0..200 {
            let started = Instant::now();
            let query = format!("what is the boiling point of water at altitude {i}");
            embedder.embed(vec![query], Priority::Interactive).await?;
            queries.push(started.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "| {backend} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
            median(rates.clone()),
            rates.iter().cloned().fold(f64::MAX, f64::min),
            rates.iter().cloned().fold(0.0, f64::max),
            percentile(queries.clone(), 0.5),
            percentile(queries, 0.99)
        );
    }
    Ok(())
}

/// A BertForSequenceClassification with MiniLM-L6's shape (6 layers, 384 hidden, 12 heads) and
/// random weights, written next to MiniLM's tokenizer.
fn random_minilm_cross_encoder(dir: &Path) -> anyhow::Result<()> {
    let minilm = models_dir().join("all-minilm-l6-v2");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(minilm.join("config.json"))?)?;
    config["id2label"] = serde_json::json!({"0": "LABEL_0"});
    std::fs::write(dir.join("config.json"), config.to_string())?;
    std::fs::copy(minilm.join("tokenizer.json"), dir.join("tokenizer.json"))?;
    let bert_config: candle_transformers::models::bert::Config = serde_json::from_value(config)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    candle_transformers::models::bert::BertModel::load(vb.pp("bert"), &bert_config)?;
    candle_nn::linear(384, 384, vb.pp("bert.pooler.dense"))?;
    candle_nn::linear(384, 1, vb.pp("classifier"))?;
    varmap.save(dir.join("model.safetensors"))?;
    Ok(())
}

/// Writes the ONNX graph of the classifier in `dir` with the venv scripts/fetch-models.sh prepared.
fn build_classifier_graph(dir: &Path) -> anyhow::Result<()> {
    let python = models_dir().join(".onnx-venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/onnx/build_bert_onnx.py");
    for precision in ["fp32", "int8"] {
        let status = std::process::Command::new(&python)
            .arg(&script)
            .arg(dir)
            .args(["classifier", precision])
            .status()?;
        anyhow::ensure!(
            status.success(),
            "{} failed to write the graph: run scripts/fetch-models.sh",
            python.display()
        );
    }
    Ok(())
}

/// 20 (query, passage) pairs per call, candle and ONNX Runtime side by side.
pub async fn rerank() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    random_minilm_cross_encoder(dir.path())?;
    build_classifier_graph(dir.path())?;
    println!("\n### Cross-encoder (MiniLM-L6 shape, random weights, CPU)\n");
    println!("| backend | pairs per call | median pairs/s | median ms per call |\n|---|---|---|---|");
    for onnx in backends() {
        let backend = onnx.as_ref().map_or("candle", |r| r.precision.backend_name());
        let options = CrossEncoderOptions {
            onnx,
            ..Default::default()
        };
        let reranker = CrossEncoder::load(dir.path(), "random-minilm-l6", options)?;
        let query = "what causes left ventricular hypertrophy".to_string();
        let docs = passages(20);
        reranker.score(query.clone(), docs.clone()).await?;
        let mut rates = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            reranker.score(query.clone(), docs.clone()).await?;
            rates.push(docs.len() as f64 / started.elapsed().as_secs_f64());
        }
        let m = median(rates);
        println!(
            "| {backend} | {} | {m:.1} | {:.0} |",
            docs.len(),
            docs.len() as f64 / m * 1e3
        );
    }
    Ok(())
}

pub async fn llm() -> anyhow::Result<()> {
    let gguf = models_dir().join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let docs = passages(6);
    // Each prompt its own passages' order, so that no prompt starts like another (no L4 reuse).
    let prompt = |round: usize| {
        let mut shown: Vec<Passage> = docs
            .iter()
            .enumerate()
            .map(|(i, t)| Passage {
                doc_id: if i % 2 == 0 { "a" } else { "b" },
                text: t,
            })
            .collect();
        let turn = round % shown.len();
        shown.rotate_left(turn);
        let mut messages = rag_messages("What does the first passage say? Answer in detail.", &shown);
        messages[0].content = format!("Request {round}. {}", messages[0].content);
        messages
    };
    let request = |round, max_tokens| GenerationRequest {
        messages: prompt(round),
        max_tokens,
        temperature: 0.0,
        prefix_scope: None,
    };
    println!("\n### Local LLM (SmolLM2-135M-Instruct Q4_1 GGUF, llama.cpp, CPU)\n");
    println!("| prompt tokens | median prefill ms | prefill tokens/s | decode tokens/s |\n|---|---|---|---|");
    let llm = LocalLlm::load(&gguf, "local", LocalLlmOptions::default())?;
    llm.generate(request(100, 1)).await?; // warm-up
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut prompt_tokens = 0;
    for round in 0..6 {
        let started = Instant::now();
        let first = llm.generate(request(2 * round, 1)).await?;
        let t1 = started.elapsed().as_secs_f64();
        prompt_tokens = first.prompt_tokens;
        let started = Instant::now();
        let long = llm.generate(request(2 * round + 1, 64)).await?;
        let tn = started.elapsed().as_secs_f64();
        prefill.push(t1);
        if long.completion_tokens > 1 {
            decode.push((long.completion_tokens - 1) as f64 / (tn - t1).max(1e-9));
        }
    }
    let p = median(prefill);
    println!(
        "| {} | {:.0} | {:.0} | {:.1} |",
        prompt_tokens,
        p * 1e3,
        prompt_tokens as f64 / p,
        median(decode)
    );

    println!("\n#### Answers written together (64 tokens each, distinct prompts, one sitting)\n");
    println!("| prompt | concurrent answers | wall s | prompt tokens | completion tokens | aggregate completion tokens/s |\n|---|---|---|---|---|---|");
    let short = |round: usize| GenerationRequest {
        messages: vec![ragway_llm::ChatMessage::new(
            ragway_llm::Role::User,
            format!("Story {round}: write a long story about a lighthouse keeper."),
        )],
        max_tokens: 64,
        temperature: 0.0,
        prefix_scope: None,
    };
    let mut round = 1000;
    for grounded in [false, true] {
        for n in [1usize, 2, 4, 8] {
            let requests: Vec<_> = (0..n)
                .map(|_| {
                    round += 1;
                    if grounded {
                        request(round, 64)
                    } else {
                        short(round)
                    }
                })
                .collect();
            let started = Instant::now();
            let answers =
                futures::future::try_join_all(requests.into_iter().map(|r| llm.generate(r))).await?;
            let wall = started.elapsed().as_secs_f64();
            let prompt: usize = answers.iter().map(|a| a.prompt_tokens).sum();
            let tokens: usize = answers.iter().map(|a| a.completion_tokens).sum();
            let kind = if grounded { "RAG (6 passages)" } else { "short" };
            println!(
                "| {kind} | {n} | {wall:.2} | {prompt} | {tokens} | {:.1} |",
                tokens as f64 / wall
            );
        }
    }
    Ok(())
}
