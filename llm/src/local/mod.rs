mod model;
mod prefix;
mod tokenizer;

use std::path::Path;

use async_trait::async_trait;
use candle_core::Device;
use ragway_worker::{Priority, QueueLimits, Queued, Task, Worker};
use tokio::sync::mpsc;

use crate::{ChatMessage, GenerationRequest, Generator, LlmError, StreamEvent, TokenStream};
pub(crate) use model::ChatModel;
use model::PromptCounter;
pub use prefix::PrefixCacheOptions;

#[derive(Debug, Clone)]
pub struct LocalLlmOptions {
    pub device: Device,
    /// Run every matmul on f32 weights dequantized once at load. Prefill becomes one large f32
    /// GEMM per layer instead of per-block dequantization, which is many times faster on CPU; see
    /// docs/BENCHMARKS.md. Costs ~4 bytes per parameter of memory.
    pub dequantize: bool,
    /// Seed for sampling when temperature > 0.
    pub seed: u64,
    /// Use at most this many tokens of the model's context window; `None`: all of it.
    pub context_tokens: Option<usize>,
    /// Admission control: how many requests may wait for the model.
    pub queue: QueueLimits,
    /// L4: states after recent prompts' shared prefixes.
    pub prefix_cache: PrefixCacheOptions,
}

impl Default for LocalLlmOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dequantize: true,
            seed: 299_792_458,
            context_tokens: None,
            queue: QueueLimits {
                interactive: 8,
                bulk: 0,
            },
            prefix_cache: PrefixCacheOptions::default(),
        }
    }
}

struct Job {
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

/// A GGUF chat model (llama architecture, ChatML template) on its own thread. Requests are served
/// one at a time: on a CPU one generation already uses every core.
pub struct LocalLlm {
    worker: Worker<Job>,
    counter: PromptCounter,
    name: String,
    model: String,
}

impl LocalLlm {
    pub fn load(gguf: &Path, name: &str, options: LocalLlmOptions) -> Result<Self, LlmError> {
        let chat = ChatModel::load(gguf, &options)?;
        let model = gguf
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string());
        let counter = chat.counter();
        let backend = name.to_string();
        let worker = Worker::spawn(
            &format!("llm-{name}"),
            options.queue,
            chat,
            move |chat, queued: Queued<Job>, _| {
                let job = queued.task;
                let events = &job.events;
                // Generation stops as soon as nobody listens.
                let result = job.span.in_scope(|| {
                    chat.generate(&job.request, &mut |piece| {
                        events.send(Ok(StreamEvent::Text(piece.to_string()))).is_ok()
                    })
                });
                let last = result.map(|(g, reused)| {
                    record_prefix_use(&backend, reused);
                    StreamEvent::Done {
                        prompt_tokens: g.prompt_tokens,
                        completion_tokens: g.completion_tokens,
                    }
                });
                let _ = events.send(last);
                None
            },
        )
        .map_err(|e| LlmError::Model(format!("cannot start LLM thread: {e}")))?;
        Ok(Self {
            worker,
            counter,
            name: name.to_string(),
            model,
        })
    }
}

#[async_trait]
impl Generator for LocalLlm {
    fn name(&self) -> &str {
        &self.name
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn context_window(&self) -> Option<usize> {
        Some(self.counter.context)
    }

    fn count_tokens(&self, messages: &[ChatMessage]) -> Option<usize> {
        self.counter.count(messages)
    }

    fn longest_token_bytes(&self) -> Option<usize> {
        Some(self.counter.longest)
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

/// L4's counters: a hit or a miss, and the prompt tokens whose prefill the cache saved.
fn record_prefix_use(backend: &str, reused: usize) {
    let result = if reused > 0 { "hit" } else { "miss" };
    metrics::counter!("ragway_cache_requests_total", "layer" => "l4", "result" => result).increment(1);
    metrics::counter!("ragway_llm_prefix_tokens_reused_total", "backend" => backend.to_string())
        .increment(reused as u64);
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}
