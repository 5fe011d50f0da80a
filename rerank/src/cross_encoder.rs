use std::path::Path;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::{linear, Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config};
use ort::session::Session;
use ragway_worker::onnx::{self, ort, OnnxRuntime};
use ragway_worker::{Priority, QueueLimits, Queued, Task, Worker};
use tokenizers::{EncodeInput, Encoding, Tokenizer};
use tokio::sync::oneshot;

use crate::{RerankError, Reranker, Scores};

#[derive(Debug, Clone)]
pub struct CrossEncoderOptions {
    /// Pairs per forward pass.
    pub max_batch: usize,
    /// Query + passage are truncated (longest first) to this many tokens.
    pub max_tokens: usize,
    pub device: Device,
    /// Admission control: how many requests may wait (reranking is always interactive).
    pub queue: QueueLimits,
    /// Run the classifier on ONNX Runtime (`model.onnx` beside the weights) instead of candle.
    pub onnx: Option<OnnxRuntime>,
}

impl Default for CrossEncoderOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_tokens: 512,
            device: Device::Cpu,
            queue: QueueLimits::default(),
            onnx: None,
        }
    }
}

struct Job {
    query: String,
    passages: Vec<String>,
    reply: oneshot::Sender<Result<Scores, RerankError>>,
    span: tracing::Span,
}

impl Task for Job {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A Hugging Face `BertForSequenceClassification` (BERT, pooler, linear classifier) served from its
/// own thread. The score of a pair is the logit of the last label, which for the usual
/// single-label rerankers (e.g. ms-marco-MiniLM) is the relevance logit.
pub struct CrossEncoder {
    worker: Worker<Job>,
    model_id: String,
    backend: &'static str,
}

impl CrossEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path, model_id: &str, options: CrossEncoderOptions) -> Result<Self, RerankError> {
        let model = SequenceClassifier::load(dir, &options)?;
        let backend = model.backend();
        let max_batch = options.max_batch.max(1);
        let worker = Worker::spawn(
            "reranker",
            options.queue,
            model,
            move |model, queued: Queued<Job>, _| {
                let job = queued.task;
                let result = job
                    .span
                    .in_scope(|| model.score(&job.query, &job.passages, max_batch));
                let _ = job.reply.send(result);
                None
            },
        )
        .map_err(|e| RerankError::Model(format!("cannot start reranker thread: {e}")))?;
        Ok(Self {
            worker,
            model_id: model_id.to_string(),
            backend,
        })
    }
}

#[async_trait]
impl Reranker for CrossEncoder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn backend(&self) -> &str {
        self.backend
    }

    async fn score(&self, query: String, passages: Vec<String>) -> Result<Scores, RerankError> {
        if passages.is_empty() {
            return Ok(Scores::default());
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            query,
            passages,
            reply,
            span: tracing::Span::current(),
        };
        self.worker.submit(job, Priority::Interactive)?;
        answer.await.map_err(|_| RerankError::WorkerGone)?
    }
}

/// What runs the classifier: candle, or an ONNX Runtime session over the graph written from the
/// same weights (scripts/onnx/build_bert_onnx.py).
enum Engine {
    Candle(Box<CandleClassifier>),
    Onnx(Session),
}

struct CandleClassifier {
    bert: BertModel,
    pooler: Linear,
    classifier: Linear,
    device: Device,
}

/// The model itself, usable synchronously (the worker thread and tests call it directly).
pub(crate) struct SequenceClassifier {
    engine: Engine,
    tokenizer: Tokenizer,
    backend: &'static str,
}

impl SequenceClassifier {
    pub(crate) fn load(dir: &Path, options: &CrossEncoderOptions) -> Result<Self, RerankError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| RerankError::Model(format!("cannot read {}: {e}", dir.join(name).display())))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| RerankError::Model(format!("bad config.json: {e}")))?;
        let max_tokens = options.max_tokens.min(config.max_position_embeddings);
        let tokenizer = ragway_worker::batch_tokenizer(&read("tokenizer.json")?, max_tokens)
            .map_err(RerankError::Model)?;
        let engine = match &options.onnx {
            Some(runtime) => Engine::Onnx(runtime.open(dir).map_err(RerankError::Model)?),
            None => Engine::Candle(Box::new(CandleClassifier::load(
                &read("model.safetensors")?,
                &config,
                options,
            )?)),
        };
        let backend = options
            .onnx
            .as_ref()
            .map_or("candle", |r| r.precision.backend_name());
        Ok(Self {
            engine,
            tokenizer,
            backend,
        })
    }

    pub(crate) fn backend(&self) -> &'static str {
        self.backend
    }

    /// Relevance score per passage (the last label's logit), in passage order.
    pub(crate) fn score(
        &mut self,
        query: &str,
        passages: &[String],
        max_batch: usize,
    ) -> Result<Scores, RerankError> {
        let mut scored = Scores::default();
        for batch in passages.chunks(max_batch) {
            let (logits, tokens) = self.logits_and_tokens(query, batch)?;
            scored.tokens += tokens;
            scored
                .scores
                .extend(logits.iter().map(|row| row.last().copied().unwrap_or(f32::NAN)));
        }
        Ok(scored)
    }

    /// Raw classifier logits, one row of labels per passage.
    #[cfg(test)]
    pub(crate) fn logits(&mut self, query: &str, passages: &[String]) -> Result<Vec<Vec<f32>>, RerankError> {
        Ok(self.logits_and_tokens(query, passages)?.0)
    }

    /// Logits, and the real (unpadded) tokens of the pairs.
    fn logits_and_tokens(
        &mut self,
        query: &str,
        passages: &[String],
    ) -> Result<(Vec<Vec<f32>>, usize), RerankError> {
        let inputs: Vec<EncodeInput> = passages
            .iter()
            .map(|p| EncodeInput::Dual(query.into(), p.as_str().into()))
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| RerankError::Model(format!("tokenizer: {e}")))?;
        let tokens = encodings
            .iter()
            .map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count())
            .sum();
        let logits = match &mut self.engine {
            Engine::Candle(model) => model.logits(&encodings)?.to_vec2::<f32>()?,
            Engine::Onnx(session) => onnx_logits(session, &encodings)?,
        };
        Ok((logits, tokens))
    }
}

impl CandleClassifier {
    fn load(weights: &[u8], config: &Config, options: &CrossEncoderOptions) -> Result<Self, RerankError> {
        // In memory rather than mmap: candle's mmap constructor is `unsafe`, which the workspace forbids.
        let tensors = candle_core::safetensors::load_buffer(weights, &options.device)?;
        // The classifier's shape is the label count; config files do not always state it
        // (transformers omits the default of two).
        let num_labels = tensors
            .get("classifier.weight")
            .ok_or_else(|| {
                RerankError::Model(
                    "model.safetensors has no classifier.weight: not a sequence classifier".into(),
                )
            })?
            .dim(0)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &options.device);
        Ok(Self {
            bert: BertModel::load(vb.pp("bert"), config)?,
            pooler: linear(config.hidden_size, config.hidden_size, vb.pp("bert.pooler.dense"))?,
            classifier: linear(config.hidden_size, num_labels, vb.pp("classifier"))?,
            device: options.device.clone(),
        })
    }

    fn logits(&self, encodings: &[Encoding]) -> Result<Tensor, RerankError> {
        let ids = stack(encodings, Encoding::get_ids, &self.device)?;
        let type_ids = stack(encodings, Encoding::get_type_ids, &self.device)?;
        let mask = stack(encodings, Encoding::get_attention_mask, &self.device)?;
        let hidden = self.bert.forward(&ids, &type_ids, Some(&mask))?;
        // BERT's pooler: the [CLS] position through a dense layer and tanh.
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        Ok(self.classifier.forward(&pooled)?)
    }
}

fn onnx_logits(session: &mut Session, encodings: &[Encoding]) -> Result<Vec<Vec<f32>>, RerankError> {
    let width = encodings.first().map_or(0, |e| e.get_ids().len());
    let rows: Vec<&Encoding> = encodings.iter().collect();
    onnx::run_encoder(session, &rows, width, "logits").map_err(RerankError::Model)
}

fn stack(
    encodings: &[Encoding],
    field: fn(&Encoding) -> &[u32],
    device: &Device,
) -> Result<Tensor, RerankError> {
    let rows = encodings
        .iter()
        .map(|e| Tensor::new(field(e), device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The package's directory as the test runner says it now (a build shared by two checkouts
    /// may have been compiled in the other one), else as it was at compile time.
    fn fixture() -> PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
            .join("tests/fixtures/tiny-bert-classifier")
    }

    #[derive(serde::Deserialize)]
    struct Expected {
        query: String,
        passage: String,
        logits: Vec<f32>,
    }

    /// Logits of a random BertForSequenceClassification match PyTorch `transformers` (see
    /// scripts/fixtures/make_tiny_cross_encoder.py). Pairs of one query are scored as one padded
    /// batch, so padding and attention masking are checked too.
    #[test]
    fn candle_logits_match_pytorch_transformers() -> Result<(), Box<dyn std::error::Error>> {
        logits_match_pytorch_transformers(CrossEncoderOptions::default(), "candle")
    }

    /// The fixture's graph is written by scripts/test.sh (scripts/onnx/build_bert_onnx.py).
    #[test]
    fn onnx_logits_match_pytorch_transformers() -> Result<(), Box<dyn std::error::Error>> {
        let models = std::env::var_os("RAGWAY_MODELS")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ragway/models")))
            .unwrap_or_default();
        let library = models.join("onnxruntime-1.31.1/libonnxruntime.so.1.31.1");
        for needed in [library.clone(), fixture().join("model.onnx")] {
            assert!(
                needed.is_file(),
                "{} is missing: run scripts/test.sh (it fetches ONNX Runtime and writes the fixture's graph)",
                needed.display()
            );
        }
        let options = CrossEncoderOptions {
            onnx: Some(OnnxRuntime {
                library,
                threads: 1,
                precision: Default::default(),
            }),
            ..Default::default()
        };
        logits_match_pytorch_transformers(options, "onnx")
    }

    fn logits_match_pytorch_transformers(
        options: CrossEncoderOptions,
        backend: &str,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let expected: Vec<Expected> =
            serde_json::from_slice(&std::fs::read(fixture().join("expected_logits.json"))?)?;
        let mut model = SequenceClassifier::load(&fixture(), &options)?;
        assert_eq!(model.backend(), backend);
        let mut checked = 0;
        for query in [
            "what is the capital of france",
            "how does ragway answer a question",
            "unknownword xyz",
        ] {
            let cases: Vec<&Expected> = expected.iter().filter(|e| e.query == query).collect();
            let passages: Vec<String> = cases.iter().map(|e| e.passage.clone()).collect();
            let logits = model.logits(query, &passages)?;
            for (case, got) in cases.iter().zip(&logits) {
                assert_eq!(got.len(), case.logits.len());
                for (g, e) in got.iter().zip(&case.logits) {
                    assert!(
                        (g - e).abs() < 1e-4,
                        "{query} / {}: {got:?} vs {:?}",
                        case.passage,
                        case.logits
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(checked, expected.len());
        Ok(())
    }

    #[tokio::test]
    async fn async_scores_are_the_last_logit_in_passage_order() -> Result<(), Box<dyn std::error::Error>> {
        let expected: Vec<Expected> =
            serde_json::from_slice(&std::fs::read(fixture().join("expected_logits.json"))?)?;
        let options = CrossEncoderOptions {
            max_batch: 1,
            ..Default::default()
        };
        let reranker = CrossEncoder::load(&fixture(), "tiny", options)?;
        let query = "what is the capital of france".to_string();
        let cases: Vec<&Expected> = expected.iter().filter(|e| e.query == query).collect();
        let passages = cases.iter().map(|e| e.passage.clone()).collect();
        let scored = reranker.score(query, passages).await?;
        assert!(scored.tokens > cases.len(), "{}", scored.tokens);
        let scores = scored.scores;
        assert_eq!(scores.len(), cases.len());
        for (score, case) in scores.iter().zip(&cases) {
            let last = case.logits[case.logits.len() - 1];
            assert!((score - last).abs() < 1e-4);
        }
        assert!(reranker.score("q".into(), vec![]).await?.scores.is_empty());
        Ok(())
    }
}
