mod model;
mod tokenizer;

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::thread;

use async_trait::async_trait;
use candle_core::Device;
use tokio::sync::oneshot;

use crate::{Generation, GenerationRequest, Generator, LlmError};
pub(crate) use model::ChatModel;

#[derive(Debug, Clone)]
pub struct LocalLlmOptions {
    pub device: Device,
    /// Run every matmul on f32 weights dequantized once at load. Prefill becomes one large f32
    /// GEMM per layer instead of per-block dequantization, which is many times faster on CPU; see
    /// docs/BENCHMARKS.md. Costs ~4 bytes per parameter of memory.
    pub dequantize: bool,
    /// Seed for sampling when temperature > 0.
    pub seed: u64,
}

impl Default for LocalLlmOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dequantize: true,
            seed: 299_792_458,
        }
    }
}

struct Job {
    request: GenerationRequest,
    reply: oneshot::Sender<Result<Generation, LlmError>>,
    span: tracing::Span,
}

/// A GGUF chat model (llama architecture, ChatML template) on its own thread. Requests are served
/// one at a time: on a CPU one generation already uses every core.
pub struct LocalLlm {
    jobs: std_mpsc::Sender<Job>,
    name: String,
    model: String,
}

impl LocalLlm {
    pub fn load(gguf: &Path, name: &str, options: LocalLlmOptions) -> Result<Self, LlmError> {
        let mut chat = ChatModel::load(gguf, &options)?;
        let model = gguf
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string());
        let (jobs, queue) = std_mpsc::channel::<Job>();
        thread::Builder::new()
            .name(format!("llm-{name}"))
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    // A caller that gave up (deadline) no longer needs its answer.
                    if job.reply.is_closed() {
                        continue;
                    }
                    let result = job.span.in_scope(|| chat.generate(&job.request));
                    let _ = job.reply.send(result);
                }
            })
            .map_err(|e| LlmError::Model(format!("cannot start LLM thread: {e}")))?;
        Ok(Self {
            jobs,
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

    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            reply,
            span: tracing::Span::current(),
        };
        self.jobs.send(job).map_err(|_| LlmError::WorkerGone)?;
        answer.await.map_err(|_| LlmError::WorkerGone)?
    }
}
