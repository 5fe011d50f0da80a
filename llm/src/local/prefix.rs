//! L4 for the local model: its state (the KV cache) after the shared part of recent prompts, so
//! that a prompt starting with the same tokens pays prefill only for the rest. candle's KV cache
//! cannot be cut back to a shorter prefix, so the state is kept at one point per prompt — after
//! every message but the last, which for a grounded answer is everything before the question —
//! and restored by cloning the weights (their tensors are shared, only the cache is new).

use std::time::{Duration, Instant};

use candle_transformers::models::quantized_llama::ModelWeights;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheOptions {
    /// How many prefixes are kept (each holds its KV cache: ≈ 46 KB per token for SmolLM2-135M);
    /// 0 turns the cache off.
    pub entries: usize,
    pub ttl: Duration,
}

impl Default for PrefixCacheOptions {
    fn default() -> Self {
        Self {
            entries: 4,
            ttl: Duration::from_secs(600),
        }
    }
}

struct Prefix {
    tokens: Vec<u32>,
    state: ModelWeights,
    used: Instant,
}

pub(crate) struct PrefixCache {
    options: PrefixCacheOptions,
    entries: Vec<Prefix>,
}

impl PrefixCache {
    pub(crate) fn new(options: PrefixCacheOptions) -> Self {
        Self {
            options,
            entries: Vec::new(),
        }
    }

    /// The state after the longest kept prefix of `prompt` that leaves at least one token to
    /// run (the next token's logits need one), and that prefix's length.
    pub(crate) fn restore(&mut self, prompt: &[u32]) -> Option<(ModelWeights, usize)> {
        let ttl = self.options.ttl;
        self.entries.retain(|e| e.used.elapsed() < ttl);
        let best = self
            .entries
            .iter_mut()
            .filter(|e| e.tokens.len() < prompt.len() && prompt.starts_with(&e.tokens))
            .max_by_key(|e| e.tokens.len())?;
        best.used = Instant::now();
        Some((best.state.clone(), best.tokens.len()))
    }

    /// Keeps `state`, the model after `tokens`, dropping the least recently used beyond the bound.
    pub(crate) fn store(&mut self, tokens: &[u32], state: ModelWeights) {
        if self.options.entries == 0 || self.entries.iter().any(|e| e.tokens == tokens) {
            return;
        }
        if self.entries.len() >= self.options.entries {
            if let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used) {
                self.entries.swap_remove(oldest);
            }
        }
        self.entries.push(Prefix {
            tokens: tokens.to_vec(),
            state,
            used: Instant::now(),
        });
    }
}
