use std::path::Path;

use async_trait::async_trait;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use ort::session::Session;
use ragway_worker::onnx::{self, ort, OnnxRuntime};
use ragway_worker::{Priority, Queue, QueueLimits, Queued, Step, Task, Worker};
use tokenizers::{Encoding, Tokenizer};
use tokio::sync::oneshot;

use super::{Embedder, Embeddings};
use crate::error::RetrievalError;

#[derive(Debug, Clone)]
pub struct BertEmbedderOptions {
    /// Texts per forward pass.
    pub max_batch: usize,
    /// Longer inputs are truncated; all-MiniLM-L6-v2 was trained on 256.
    pub max_tokens: usize,
    pub device: Device,
    /// Texts of a bulk job embedded at a time: a query waits behind at most this many.
    pub bulk_slice: usize,
    /// Admission control: how many jobs may wait in each lane.
    pub queue: QueueLimits,
    /// Run the encoder on ONNX Runtime (`model.onnx` beside the weights) instead of candle.
    pub onnx: Option<OnnxRuntime>,
}

impl Default for BertEmbedderOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_tokens: 256,
            device: Device::Cpu,
            bulk_slice: 2,
            queue: QueueLimits::default(),
            onnx: None,
        }
    }
}

struct Job {
    texts: Vec<String>,
    /// The order a bulk job's slices take: shortest texts first, so that each slice pads little.
    order: Vec<usize>,
    /// How many texts of `order` are embedded.
    done: usize,
    /// By input position; filled slice by slice.
    vectors: Vec<Vec<f32>>,
    tokens: usize,
    reply: oneshot::Sender<Result<Embeddings, RetrievalError>>,
    span: tracing::Span,
}

impl Task for Job {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A sentence-transformers BERT (mean pooling, L2 norm) on its own worker thread, so that model
/// work never blocks the async runtime. Queries waiting together are merged into one batch; a bulk
/// job runs one batch at a time, so a query waits behind at most one batch of it.
pub struct BertEmbedder {
    worker: Worker<Job>,
    model_id: String,
    dimension: usize,
    backend: &'static str,
}

impl BertEmbedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path, model_id: &str, options: BertEmbedderOptions) -> Result<Self, RetrievalError> {
        let model = SentenceBert::load(dir, &options)?;
        let dimension = model.dimension;
        let backend = match &options.onnx {
            Some(runtime) => runtime.precision.backend_name(),
            None => "candle",
        };
        let max_batch = options.max_batch.max(1);
        let slice = options.bulk_slice.clamp(1, max_batch);
        let worker = Worker::spawn("embedder", options.queue, model, move |model, queued, queue| {
            step(model, queued, queue, max_batch, slice)
        })
        .map_err(|e| RetrievalError::Model(format!("cannot start embedder thread: {e}")))?;
        Ok(Self {
            worker,
            model_id: model_id.to_string(),
            dimension,
            backend,
        })
    }
}

#[async_trait]
impl Embedder for BertEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn backend(&self) -> &str {
        self.backend
    }

    async fn embed(&self, texts: Vec<String>, priority: Priority) -> Result<Embeddings, RetrievalError> {
        if texts.is_empty() {
            return Ok(Embeddings {
                vectors: Vec::new(),
                tokens: 0,
            });
        }
        let (reply, answer) = oneshot::channel();
        // Characters stand in for tokens here; the model sorts each slice by its real tokens.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let job = Job {
            vectors: vec![Vec::new(); texts.len()],
            order,
            done: 0,
            texts,
            tokens: 0,
            reply,
            span: tracing::Span::current(),
        };
        self.worker.submit(job, priority)?;
        answer.await.map_err(|_| RetrievalError::WorkerGone)?
    }
}

/// One worker step: interactive jobs waiting together become one batch; a bulk job gets one slice
/// and is handed back if texts remain.
fn step(
    model: &mut SentenceBert,
    queued: Queued<Job>,
    queue: &Queue<Job>,
    max_batch: usize,
    slice: usize,
) -> Step<Job> {
    if queued.priority == Priority::Interactive {
        let mut jobs = vec![queued.task];
        let mut texts = jobs[0].texts.len();
        while texts < max_batch {
            let Some(job) = queue.try_pop_interactive() else {
                break;
            };
            texts += job.texts.len();
            jobs.push(job);
        }
        embed_whole(model, jobs, max_batch);
        return None;
    }
    let mut queued = queued;
    let job = &mut queued.task;
    let positions = &job.order[job.done..(job.done + slice).min(job.texts.len())];
    let texts: Vec<&str> = positions.iter().map(|&i| job.texts[i].as_str()).collect();
    match job.span.in_scope(|| model.embed(&texts, max_batch)) {
        Ok((vectors, tokens)) => {
            for (&i, vector) in positions.iter().zip(vectors) {
                job.vectors[i] = vector;
            }
            job.done += positions.len();
            job.tokens += tokens;
        }
        Err(e) => {
            let _ = queued.task.reply.send(Err(e));
            return None;
        }
    }
    if job.done < job.texts.len() {
        return Some(queued);
    }
    let Job {
        vectors,
        tokens,
        reply,
        ..
    } = queued.task;
    let _ = reply.send(Ok(Embeddings { vectors, tokens }));
    None
}

/// Embeds several jobs' texts together and answers each.
fn embed_whole(model: &mut SentenceBert, jobs: Vec<Job>, max_batch: usize) {
    let texts: Vec<&str> = jobs
        .iter()
        .flat_map(|j| j.texts.iter().map(String::as_str))
        .collect();
    let total = texts.len();
    let span = jobs[0].span.clone();
    let result = span.in_scope(|| model.embed(&texts, max_batch));
    let mut offset = 0;
    for job in jobs {
        let n = job.texts.len();
        let part = match &result {
            Ok((vectors, tokens)) => Ok(Embeddings {
                vectors: vectors[offset..offset + n].to_vec(),
                // Tokens are attributed to each job in proportion to its share of texts.
                tokens: tokens * n / total.max(1),
            }),
            Err(e) => Err(RetrievalError::Model(e.to_string())),
        };
        offset += n;
        // The caller may have given up (deadline); nothing to do then.
        let _ = job.reply.send(part);
    }
}

/// What runs the encoder: candle, or an ONNX Runtime session over the graph written from the same
/// weights (scripts/onnx/build_bert_onnx.py: pooling and normalisation are inside the graph).
enum Engine {
    Candle { model: Box<BertModel>, device: Device },
    Onnx(Session),
}

struct SentenceBert {
    engine: Engine,
    tokenizer: Tokenizer,
    dimension: usize,
}

impl SentenceBert {
    fn load(dir: &Path, options: &BertEmbedderOptions) -> Result<Self, RetrievalError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| RetrievalError::Model(format!("cannot read {}: {e}", dir.join(name).display())))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| RetrievalError::Model(format!("bad config.json: {e}")))?;
        let tokenizer = tokenizer(&read("tokenizer.json")?, options.max_tokens)?;
        let engine = match &options.onnx {
            Some(runtime) => Engine::Onnx(runtime.open(dir).map_err(RetrievalError::Model)?),
            None => {
                // Read into memory instead of mmap: candle's mmap constructor is `unsafe`, which
                // the workspace forbids, and a 90 MB copy at start-up costs nothing that matters.
                let weights = read("model.safetensors")?;
                let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &options.device)
                    .map_err(|e| RetrievalError::Model(format!("cannot load model.safetensors: {e}")))?;
                Engine::Candle {
                    model: Box::new(BertModel::load(vb, &config)?),
                    device: options.device.clone(),
                }
            }
        };
        Ok(Self {
            engine,
            tokenizer,
            dimension: config.hidden_size,
        })
    }

    /// Embeds texts sorted by length so that each batch pads little, then restores input order.
    fn embed(&mut self, texts: &[&str], max_batch: usize) -> Result<(Vec<Vec<f32>>, usize), RetrievalError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| RetrievalError::Model(format!("tokenizer: {e}")))?;
        let lengths: Vec<usize> = encodings
            .iter()
            .map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count())
            .collect();
        let tokens = lengths.iter().sum();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| lengths[i]);
        let mut vectors = vec![Vec::new(); texts.len()];
        for batch in order.chunks(max_batch.max(1)) {
            // Padding is on the right, so cutting every row at this batch's longest input only
            // drops padding.
            let width = batch.iter().map(|&i| lengths[i]).max().unwrap_or(0).max(1);
            let rows: Vec<&Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
            for (&i, v) in batch.iter().zip(self.forward(&rows, width)?) {
                vectors[i] = v;
            }
        }
        Ok((vectors, tokens))
    }

    fn forward(&mut self, rows: &[&Encoding], width: usize) -> Result<Vec<Vec<f32>>, RetrievalError> {
        match &mut self.engine {
            Engine::Candle { model, device } => candle_forward(model, device, rows, width),
            Engine::Onnx(session) => onnx_forward(session, rows, width),
        }
    }
}

fn candle_forward(
    model: &BertModel,
    device: &Device,
    rows: &[&Encoding],
    width: usize,
) -> Result<Vec<Vec<f32>>, RetrievalError> {
    let ids = stack(rows, |e| e.get_ids(), width, device)?;
    let mask = stack(rows, |e| e.get_attention_mask(), width, device)?;
    let type_ids = ids.zeros_like()?;
    let hidden = model.forward(&ids, &type_ids, Some(&mask))?;
    // Mean over real tokens only, then L2 normalisation: sentence-transformers' pooling.
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?;
    let mean = summed.broadcast_div(&counts)?;
    let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
    let unit = mean.broadcast_div(&norms)?;
    Ok(unit.to_vec2::<f32>()?)
}

fn onnx_forward(
    session: &mut Session,
    rows: &[&Encoding],
    width: usize,
) -> Result<Vec<Vec<f32>>, RetrievalError> {
    onnx::run_encoder(session, rows, width, "sentence_embedding").map_err(RetrievalError::Model)
}

fn tokenizer(json: &[u8], max_tokens: usize) -> Result<Tokenizer, RetrievalError> {
    ragway_worker::batch_tokenizer(json, max_tokens).map_err(RetrievalError::Model)
}

fn stack(
    rows: &[&Encoding],
    field: impl Fn(&Encoding) -> &[u32],
    width: usize,
    device: &Device,
) -> Result<candle_core::Tensor, RetrievalError> {
    let rows = rows
        .iter()
        .map(|e| candle_core::Tensor::new(&field(e)[..width], device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(candle_core::Tensor::stack(&rows, 0)?)
}
