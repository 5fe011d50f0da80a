use std::path::Path;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{linear, Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config};
use ragway_worker::{Priority, QueueLimits, Queued, Task, Worker};
use tokenizers::{EncodeInput, Encoding, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::oneshot;

use crate::{RerankError, Reranker};

#[derive(Debug, Clone)]
pub struct CrossEncoderOptions {
    /// Pairs per forward pass.
    pub max_batch: usize,
    /// Query + passage are truncated (longest first) to this many tokens.
    pub max_tokens: usize,
    pub device: Device,
    /// Admission control: how many requests may wait (reranking is always interactive).
    pub queue: QueueLimits,
}

impl Default for CrossEncoderOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_tokens: 512,
            device: Device::Cpu,
            queue: QueueLimits::default(),
        }
    }
}

struct Job {
    query: String,
    passages: Vec<String>,
    reply: oneshot::Sender<Result<Vec<f32>, RerankError>>,
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
}

impl CrossEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path, model_id: &str, options: CrossEncoderOptions) -> Result<Self, RerankError> {
        let model = SequenceClassifier::load(dir, &options)?;
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
        })
    }
}

#[async_trait]
impl Reranker for CrossEncoder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    async fn score(&self, query: String, passages: Vec<String>) -> Result<Vec<f32>, RerankError> {
        if passages.is_empty() {
            return Ok(Vec::new());
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

/// The model itself, usable synchronously (the worker thread and tests call it directly).
pub(crate) struct SequenceClassifier {
    bert: BertModel,
    pooler: Linear,
    classifier: Linear,
    tokenizer: Tokenizer,
    device: Device,
}

impl SequenceClassifier {
    pub(crate) fn load(dir: &Path, options: &CrossEncoderOptions) -> Result<Self, RerankError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| RerankError::Model(format!("cannot read {}: {e}", dir.join(name).display())))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| RerankError::Model(format!("bad config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| RerankError::Model(format!("bad tokenizer.json: {e}")))?;
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..tokenizer.get_padding().cloned().unwrap_or_default()
        };
        tokenizer.with_padding(Some(padding));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: options.max_tokens.min(config.max_position_embeddings),
                ..Default::default()
            }))
            .map_err(|e| RerankError::Model(format!("bad truncation: {e}")))?;
        // In memory rather than mmap: candle's mmap constructor is `unsafe`, which the workspace forbids.
        let tensors = candle_core::safetensors::load_buffer(&read("model.safetensors")?, &options.device)?;
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
        let bert = BertModel::load(vb.pp("bert"), &config)?;
        let pooler = linear(config.hidden_size, config.hidden_size, vb.pp("bert.pooler.dense"))?;
        let classifier = linear(config.hidden_size, num_labels, vb.pp("classifier"))?;
        Ok(Self {
            bert,
            pooler,
            classifier,
            tokenizer,
            device: options.device.clone(),
        })
    }

    /// Relevance score per passage (the last label's logit), in passage order.
    pub(crate) fn score(
        &self,
        query: &str,
        passages: &[String],
        max_batch: usize,
    ) -> Result<Vec<f32>, RerankError> {
        let mut scores = Vec::with_capacity(passages.len());
        for batch in passages.chunks(max_batch) {
            let logits = self.logits(query, batch)?;
            let last = logits.dim(D::Minus1)? - 1;
            scores.extend(
                logits
                    .narrow(D::Minus1, last, 1)?
                    .squeeze(D::Minus1)?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(scores)
    }

    /// Raw classifier logits, `[passages, labels]`.
    pub(crate) fn logits(&self, query: &str, passages: &[String]) -> Result<Tensor, RerankError> {
        let inputs: Vec<EncodeInput> = passages
            .iter()
            .map(|p| EncodeInput::Dual(query.into(), p.as_str().into()))
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| RerankError::Model(format!("tokenizer: {e}")))?;
        let ids = stack(&encodings, Encoding::get_ids, &self.device)?;
        let type_ids = stack(&encodings, Encoding::get_type_ids, &self.device)?;
        let mask = stack(&encodings, Encoding::get_attention_mask, &self.device)?;
        let hidden = self.bert.forward(&ids, &type_ids, Some(&mask))?;
        // BERT's pooler: the [CLS] position through a dense layer and tanh.
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        Ok(self.classifier.forward(&pooled)?)
    }
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

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert-classifier")
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
    fn logits_match_pytorch_transformers() -> Result<(), Box<dyn std::error::Error>> {
        let expected: Vec<Expected> =
            serde_json::from_slice(&std::fs::read(fixture().join("expected_logits.json"))?)?;
        let model = SequenceClassifier::load(&fixture(), &CrossEncoderOptions::default())?;
        let mut checked = 0;
        for query in [
            "what is the capital of france",
            "how does ragway answer a question",
            "unknownword xyz",
        ] {
            let cases: Vec<&Expected> = expected.iter().filter(|e| e.query == query).collect();
            let passages: Vec<String> = cases.iter().map(|e| e.passage.clone()).collect();
            let logits = model.logits(query, &passages)?.to_vec2::<f32>()?;
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
        let scores = reranker.score(query, passages).await?;
        assert_eq!(scores.len(), cases.len());
        for (score, case) in scores.iter().zip(&cases) {
            let last = case.logits[case.logits.len() - 1];
            assert!((score - last).abs() < 1e-4);
        }
        assert!(reranker.score("q".into(), vec![]).await?.is_empty());
        Ok(())
    }
}
