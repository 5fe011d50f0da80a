use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use candle_transformers::utils::apply_repeat_penalty;
use tokenizers::Tokenizer;

use super::prefix::PrefixCache;
use super::tokenizer::tokenizer_from_gguf;
use super::LocalLlmOptions;
use crate::{ChatMessage, Generation, GenerationRequest, LlmError, Role};

// Small models loop without a mild penalty on recently generated tokens.
const REPEAT_PENALTY: f32 = 1.1;
const REPEAT_WINDOW: usize = 64;

/// The loaded model and everything needed to turn messages into an answer, used synchronously on
/// the worker thread.
pub(crate) struct ChatModel {
    weights: ModelWeights,
    tokenizer: Tokenizer,
    device: Device,
    stop_tokens: Vec<u32>,
    context: usize,
    seed: u64,
    /// L4: states after recent prompts' shared prefixes.
    prefixes: PrefixCache,
}

impl ChatModel {
    pub(crate) fn load(path: &Path, options: &LocalLlmOptions) -> Result<Self, LlmError> {
        let open_error = |e: std::io::Error| LlmError::Model(format!("cannot open {}: {e}", path.display()));
        let mut file = File::open(path).map_err(open_error)?;
        let content = gguf_file::Content::read(&mut file)?;
        let tokenizer = tokenizer_from_gguf(&content)?;
        let context = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(2048) as usize;
        // candle's quantized llama addresses positions below MAX_SEQ_LEN only (its rotary table),
        // whatever the GGUF says: a longer prompt would fail inside the model.
        let context = context.min(candle_transformers::models::quantized_llama::MAX_SEQ_LEN);
        let context = options.context_tokens.map_or(context, |limit| limit.min(context));
        let stop_tokens = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect::<Vec<_>>();
        if stop_tokens.is_empty() {
            return Err(LlmError::Model(
                "the GGUF vocabulary has no <|im_end|> token: not a ChatML model".into(),
            ));
        }
        let weights = if options.dequantize {
            let (content, mut reader) = dequantized(&content, &mut file)?;
            ModelWeights::from_gguf(content, &mut reader, &options.device)?
        } else {
            ModelWeights::from_gguf(content, &mut file, &options.device)?
        };
        Ok(Self {
            weights,
            tokenizer,
            device: options.device.clone(),
            stop_tokens,
            context,
            seed: options.seed,
            prefixes: PrefixCache::new(options.prefix_cache),
        })
    }

    /// Generates the answer, handing each new piece of text to `on_text` as soon as it decodes;
    /// stops early when `on_text` returns false (nobody is listening any more). Also says how
    /// many prompt tokens came from the prefix cache instead of prefill.
    pub(crate) fn generate(
        &mut self,
        request: &GenerationRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(Generation, usize), LlmError> {
        let prompt = self.encode(&chatml(&request.messages))?;
        if prompt.len() + request.max_tokens > self.context {
            return Err(LlmError::PromptTooLong {
                prompt: prompt.len(),
                max_tokens: request.max_tokens,
                context: self.context,
            });
        }
        let sampling = if request.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            Sampling::All {
                temperature: request.temperature,
            }
        };
        let mut sampler = LogitsProcessor::from_sampling(self.seed, sampling);
        let mut generated: Vec<u32> = Vec::new();
        let mut emitted = 0;
        let (reused, mut position) = self.prefill_prefix(&prompt, &request.messages)?;
        // Prefill of the rest in one forward pass (from position 0 the KV cache starts over).
        let mut input = Tensor::new(&prompt[position..], &self.device)?.unsqueeze(0)?;
        while generated.len() < request.max_tokens {
            let logits = self.weights.forward(&input, position)?.squeeze(0)?;
            position += input.dim(1)?;
            let start = generated.len().saturating_sub(REPEAT_WINDOW);
            let logits = apply_repeat_penalty(&logits, REPEAT_PENALTY, &generated[start..])?;
            let next = sampler.sample(&logits)?;
            if self.stop_tokens.contains(&next) {
                break;
            }
            generated.push(next);
            // Byte-level BPE may split a character across tokens; hold text back until it decodes.
            let text = self.decode(&generated)?;
            if text.len() > emitted && !text.ends_with('\u{FFFD}') {
                if !on_text(&text[emitted..]) {
                    break;
                }
                emitted = text.len();
            }
            input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
        }
        let text = self.decode(&generated)?;
        if text.len() > emitted {
            on_text(&text[emitted..]);
        }
        let generation = Generation {
            text: text.trim().to_string(),
            prompt_tokens: prompt.len(),
            completion_tokens: generated.len(),
        };
        Ok((generation, reused))
    }

    /// Restores the state after the longest cached prefix of `prompt` (L4), and when the prompt's
    /// shared part — every message but the last — runs past it, prefills that part and keeps the
    /// state for the next prompt. Returns the tokens restored from the cache, and how many of the
    /// prompt's tokens are now in the KV cache (where prefill of the rest starts).
    fn prefill_prefix(
        &mut self,
        prompt: &[u32],
        messages: &[ChatMessage],
    ) -> Result<(usize, usize), LlmError> {
        let reused = match self.prefixes.restore(prompt) {
            Some((state, length)) => {
                self.weights = state;
                length
            }
            None => 0,
        };
        let shared = match messages.split_last() {
            Some((_, earlier)) if !earlier.is_empty() => self.encode(&closed_turns(earlier))?,
            _ => return Ok((reused, reused)),
        };
        if shared.len() > reused && shared.len() < prompt.len() && prompt.starts_with(&shared) {
            let input = Tensor::new(&shared[reused..], &self.device)?.unsqueeze(0)?;
            self.weights.forward(&input, reused)?;
            self.prefixes.store(&shared, self.weights.clone());
            return Ok((reused, shared.len()));
        }
        Ok((reused, reused))
    }

    /// What counting a prompt's tokens needs, for use off the worker thread.
    pub(crate) fn counter(&self) -> PromptCounter {
        // In a byte-level vocabulary each character of a token stands for one byte of text.
        let longest = self
            .tokenizer
            .get_vocab(true)
            .keys()
            .map(|token| token.chars().count())
            .max()
            .unwrap_or(1)
            .max(1);
        PromptCounter {
            tokenizer: self.tokenizer.clone(),
            context: self.context,
            longest,
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| LlmError::Model(format!("decode: {e}")))
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| LlmError::Model(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    }
}

/// Counts the tokens of a conversation in this model's template.
#[derive(Clone)]
pub(crate) struct PromptCounter {
    tokenizer: Tokenizer,
    pub(crate) context: usize,
    /// The most bytes of text one token stands for.
    pub(crate) longest: usize,
}

impl PromptCounter {
    pub(crate) fn count(&self, messages: &[ChatMessage]) -> Option<usize> {
        let encoding = self.tokenizer.encode(chatml(messages), false).ok()?;
        Some(encoding.get_ids().len())
    }
}

/// SmolLM2's chat template (ChatML), ending with an open assistant turn. A trailing assistant
/// message is left open, so the model continues it.
fn chatml(messages: &[ChatMessage]) -> String {
    let (open, closed) = match messages.split_last() {
        Some((last, rest)) if last.role == Role::Assistant => (Some(last), rest),
        _ => (None, messages),
    };
    let mut prompt = closed_turns(closed);
    prompt.push_str("<|im_start|>assistant\n");
    if let Some(partial) = open {
        prompt.push_str(&partial.content);
    }
    prompt
}

/// Finished turns in ChatML: what every prompt that continues this conversation starts with.
fn closed_turns(messages: &[ChatMessage]) -> String {
    let mut text = String::new();
    for m in messages {
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        text.push_str(&format!("<|im_start|>{role}\n{}<|im_end|>\n", m.content));
    }
    text
}

/// The same model with every tensor stored as f32, as an in-memory GGUF. candle keeps f32 GGUF
/// tensors as plain tensors, so every matmul becomes a dense f32 GEMM.
fn dequantized(
    content: &gguf_file::Content,
    file: &mut File,
) -> Result<(gguf_file::Content, Cursor<Vec<u8>>), LlmError> {
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let tensor = content
            .tensor(file, name, &Device::Cpu)?
            .dequantize(&Device::Cpu)?;
        tensors.push((name.as_str(), QTensor::quantize(&tensor, GgmlDType::F32)?));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> =
        content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut buffer = Cursor::new(Vec::new());
    gguf_file::write(&mut buffer, &metadata, &tensor_refs)?;
    buffer.set_position(0);
    let content = gguf_file::Content::read(&mut buffer)?;
    Ok((content, buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_ends_with_an_open_assistant_turn() {
        let prompt = chatml(&[
            ChatMessage::new(Role::System, "s"),
            ChatMessage::new(Role::User, "u"),
        ]);
        assert_eq!(
            prompt,
            "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
