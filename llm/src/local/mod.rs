//! The local model: a GGUF chat model run in process by llama.cpp (`llama-cpp-2`), on its own
//! thread, writing several answers at once.

mod chatml;
mod engine;
mod prefix;
mod sample;
mod text;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use ragway_worker::{Priority, QueueLimits, Task, Worker};
use tokio::sync::mpsc;

use crate::{ChatMessage, GenerationRequest, Generator, LlmError, StreamEvent, TokenStream};
use chatml::chatml;
pub use prefix::PrefixCacheOptions;

#[derive(Debug, Clone)]
pub struct LocalLlmOptions {
    /// Offload the model to the GPU (with the `cuda` feature).
    pub gpu: bool,
    /// llama.cpp's threads; 0: one per core.
    pub threads: usize,
    /// Seed for sampling when temperature > 0.
    pub seed: u64,
    /// Use at most this many tokens of the model's context window per answer; `None`: all of it
    /// (as far as the KV cache holds).
    pub context_tokens: Option<usize>,
    /// The KV cache's size in tokens, shared by the answers being written; L4's kept prompt
    /// states (in memory) hold at most as many tokens again.
    pub kv_tokens: usize,
    /// Answers written together, in one batch per step.
    pub parallel: usize,
    /// Admission control: how many requests may wait for a place among them.
    pub queue: QueueLimits,
    /// L4: the states after recent prompts.
    pub prefix_cache: PrefixCacheOptions,
}

impl Default for LocalLlmOptions {
    fn default() -> Self {
        Self {
            gpu: false,
            threads: 0,
            seed: 299_792_458,
            context_tokens: None,
            kv_tokens: 16_384,
            parallel: 8,
            queue: QueueLimits {
                interactive: 8,
                bulk: 0,
            },
            prefix_cache: PrefixCacheOptions::default(),
        }
    }
}

pub(crate) struct Job {
    request: GenerationRequest,
    events: mpsc::UnboundedSender<Result<StreamEvent, LlmError>>,
    span: tracing::Span,
}

impl Task for Job {
    /// A caller that gave up (deadline, client gone) no longer needs its answer.
    fn abandoned(&self) -> bool {
        self.events.is_closed()
    }
}

/// What the model's thread has done since it was loaded.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    prefix_tokens_reused: AtomicU64,
    answers_abandoned: AtomicU64,
}

/// [`LocalLlm::stats`]: counts since the model was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLlmStats {
    /// Prompt tokens whose KV state came from a kept prompt instead of prefill (L4).
    pub prefix_tokens_reused: u64,
    /// Answers stopped because their caller was gone.
    pub answers_abandoned: u64,
}

/// A GGUF chat model (ChatML template) served by llama.cpp on its own thread.
pub struct LocalLlm {
    worker: Worker<Job>,
    counts: Arc<Counts>,
    model: Arc<LlamaModel>,
    window: usize,
    longest: usize,
    name: String,
    model_name: String,
}

impl LocalLlm {
    pub fn load(gguf: &Path, name: &str, options: LocalLlmOptions) -> Result<Self, LlmError> {
        let params = LlamaModelParams::default().with_n_gpu_layers(if options.gpu { u32::MAX } else { 0 });
        let model = LlamaModel::load_from_file(backend()?, gguf, &params)
            .map_err(|e| LlmError::Model(format!("cannot load {}: {e}", gguf.display())))?;
        let vocab = model.vocab();
        if vocab.tokenize(b"<|im_end|>", false, true).len() != 1 {
            return Err(LlmError::Model(
                "the GGUF vocabulary has no <|im_end|> token: not a ChatML model".into(),
            ));
        }
        let longest = vocab
            .tokens()
            .map(|t| vocab.token_to_piece(t, false, None).len())
            .max()
            .unwrap_or(1)
            .max(1);
        let kv_tokens = options.kv_tokens.max(1);
        let trained = model.n_ctx_train() as usize;
        let window = options
            .context_tokens
            .map_or(trained, |limit| limit.min(trained))
            .min(kv_tokens);
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let settings = engine::Settings {
            threads: threads as i32,
            window,
            kv_tokens,
            parallel: options.parallel.max(1),
            batch: 2048.min(kv_tokens),
            seed: options.seed,
            prefixes: options.prefix_cache,
            name: name.to_string(),
        };
        let counts = Arc::new(Counts::default());
        let model = Arc::new(model);
        let (shared, engine_counts) = (model.clone(), counts.clone());
        let (ready, built) = std::sync::mpsc::channel();
        let worker = Worker::spawn_with(&format!("llm-{name}"), options.queue, move |queue| {
            engine::run(&shared, settings, &engine_counts, queue, ready)
        })
        .map_err(|e| LlmError::Model(format!("cannot start LLM thread: {e}")))?;
        built.recv().map_err(|_| LlmError::WorkerGone)??;
        let model_name = gguf
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string());
        Ok(Self {
            worker,
            counts,
            model,
            window,
            longest,
            name: name.to_string(),
            model_name,
        })
    }
}

impl LocalLlm {
    pub fn stats(&self) -> LocalLlmStats {
        LocalLlmStats {
            prefix_tokens_reused: self.counts.prefix_tokens_reused.load(Ordering::Relaxed),
            answers_abandoned: self.counts.answers_abandoned.load(Ordering::Relaxed),
        }
    }
}

/// llama.cpp's backend, set up once per process; its logs go to `tracing` (target `llama-cpp-2`).
fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LlmError::Model(format!("cannot start llama.cpp: {e}")))
}

/// A prompt in the model's tokens, its special tokens (`<|im_start|>`) recognised as such and a
/// BOS token first where the model asks for one.
fn tokenize(model: &LlamaModel, text: &str) -> Vec<LlamaToken> {
    model.vocab().tokenize(text.as_bytes(), true, true)
}

#[async_trait]
impl Generator for LocalLlm {
    fn name(&self) -> &str {
        &self.name
    }

    fn model(&self) -> &str {
        &self.model_name
    }

    fn context_window(&self) -> Option<usize> {
        Some(self.window)
    }

    fn count_tokens(&self, messages: &[ChatMessage]) -> Option<usize> {
        Some(tokenize(&self.model, &chatml(messages)).len())
    }

    fn longest_token_bytes(&self) -> Option<usize> {
        Some(self.longest)
    }

    async fn stream(&self, request: GenerationRequest) -> Result<TokenStream, LlmError> {
        let (events, receiver) = mpsc::unbounded_channel();
        let job = Job {
            request,
            events,
            span: tracing::Span::current(),
        };
        self.worker.submit(job, Priority::Interactive)?;
        Ok(Box::pin(tokio_stream_from(receiver)))
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}
