//! The model's thread: llama.cpp with one context whose unified KV cache holds every answer being
//! written (one sequence each), and L4's kept prompt states beside it in memory. Each step decodes one
//! batch: the next token of every answer under way and as much of the waiting prompts as the
//! batch has room for (continuous batching). A new answer joins at the next step; one whose
//! caller is gone leaves it, and its cells are freed at once.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{DecodeError, LlamaStateSeqFlags, SeqState};
use ragway_worker::Queue;

use super::chatml::chatml;
use super::prefix::{Logits, PrefixCache, PrefixCacheOptions};
use super::sample::Sampler;
use super::text::Utf8Pieces;
use super::{backend, tokenize, Counts, Job};
use crate::{LlmError, StreamEvent};

/// How the context is built and shared.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub threads: i32,
    /// The most tokens one answer may take, prompt and completion.
    pub window: usize,
    /// The KV cache's size in tokens, shared by every answer under way and the kept prompts.
    pub kv_tokens: usize,
    /// Answers written together.
    pub parallel: usize,
    /// Tokens one step decodes at most.
    pub batch: usize,
    pub seed: u64,
    pub prefixes: PrefixCacheOptions,
    /// The backend's name, for metrics.
    pub name: String,
}

/// Builds the context and serves `queue` until it closes. `ready` hears whether the context
/// could be built.
pub(crate) fn run(
    model: &LlamaModel,
    settings: Settings,
    counts: &Counts,
    queue: &Queue<Job>,
    ready: std::sync::mpsc::Sender<Result<(), LlmError>>,
) {
    let mut engine = match Engine::new(model, settings, counts) {
        Ok(engine) => {
            let _ = ready.send(Ok(()));
            engine
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    loop {
        if engine.idle() {
            match queue.pop() {
                Some(queued) => engine.waiting.push_back(queued.task),
                None => return,
            }
        }
        engine.admit_waiting(queue);
        engine.step();
    }
}

struct Slot {
    job: Job,
    /// The prompt's token ids.
    prompt: Vec<i32>,
    /// Prompt tokens in the KV cache.
    fed: usize,
    /// Of those, the ones copied from a kept prompt.
    reused: usize,
    generated: usize,
    /// The token sampled last, to be decoded next.
    next: Option<LlamaToken>,
    sampler: Sampler,
    text: Utf8Pieces,
    /// Where this step's batch has its logits.
    logits: Option<i32>,
    /// The logits after the whole prompt: kept with it (L4), or taken from the kept prompt
    /// when this is that prompt again (then nothing is prefilled).
    first_logits: Option<Logits>,
}

impl Slot {
    /// The KV cells it may come to hold, at most.
    fn cells(&self) -> usize {
        self.prompt.len() + self.job.request.max_tokens
    }

    fn send(&self, event: Result<StreamEvent, LlmError>) -> bool {
        self.job.events.send(event).is_ok()
    }
}

struct Engine<'m> {
    model: &'m LlamaModel,
    counts: &'m Counts,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    /// Index = the answer's sequence id.
    slots: Vec<Option<Slot>>,
    /// Taken from the queue, waiting for a slot or for room in the KV cache.
    waiting: VecDeque<Job>,
    prefixes: PrefixCache,
    /// The kept prompts' states, by the prefix cache's ids.
    states: Vec<Option<SeqState>>,
    /// The KV cache ran out of cells under the answers under way: none joins until one ends.
    full: bool,
    settings: Settings,
}

impl<'m> Engine<'m> {
    fn new(model: &'m LlamaModel, settings: Settings, counts: &'m Counts) -> Result<Self, LlmError> {
        let sequences = settings.parallel;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(settings.kv_tokens as u32))
            .with_n_batch(settings.batch as u32)
            .with_n_seq_max(sequences as u32)
            .with_kv_unified(true)
            .with_n_threads(settings.threads)
            .with_n_threads_batch(settings.threads);
        let ctx = model
            .new_context(backend()?, params)
            .map_err(|e| LlmError::Model(format!("cannot create the llama.cpp context: {e}")))?;
        Ok(Self {
            model,
            counts,
            ctx,
            batch: LlamaBatch::new(settings.batch, 1),
            slots: (0..settings.parallel).map(|_| None).collect(),
            waiting: VecDeque::new(),
            prefixes: PrefixCache::new(settings.prefixes, 0..settings.prefixes.entries as i32),
            states: (0..settings.prefixes.entries).map(|_| None).collect(),
            full: false,
            settings,
        })
    }

    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.slots.iter().all(Option::is_none)
    }

    fn active(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Starts the answers that wait, taking more from the queue while slots are free.
    fn admit_waiting(&mut self, queue: &Queue<Job>) {
        if self.full && self.active() > 0 {
            return;
        }
        self.full = false;
        while self.active() < self.settings.parallel {
            let job = match self.waiting.pop_front() {
                Some(job) => job,
                None => match queue.try_pop_interactive() {
                    Some(job) => job,
                    None => return,
                },
            };
            if let Some(unplaced) = self.admit(job) {
                self.waiting.push_front(unplaced);
                return;
            }
        }
    }

    /// Gives `job` a sequence, starting from the kept prompt that shares most of its prompt;
    /// hands it back when the KV cache has no room for it until an answer under way finishes.
    fn admit(&mut self, job: Job) -> Option<Job> {
        if job.events.is_closed() {
            return None;
        }
        let _entered = job.span.clone().entered();
        let request = &job.request;
        let prompt: Vec<i32> = tokenize(self.model, &chatml(&request.messages))
            .into_iter()
            .map(|t| t.0)
            .collect();
        if prompt.len() + request.max_tokens > self.settings.window {
            let _ = job.events.send(Err(LlmError::PromptTooLong {
                prompt: prompt.len(),
                max_tokens: request.max_tokens,
                context: self.settings.window,
            }));
            return None;
        }
        if request.max_tokens == 0 {
            let done = StreamEvent::Done {
                prompt_tokens: prompt.len(),
                completion_tokens: 0,
            };
            let _ = job.events.send(Ok(done));
            return None;
        }
        let now = Instant::now();
        for id in self.prefixes.expire(now, request.prefix_scope.as_ref()) {
            self.states[id as usize] = None;
        }
        let hit = self.prefixes.best(&prompt, now);
        // A kept prompt is restored whole, then cut back to what this prompt shares with it.
        let need = prompt.len().max(hit.as_ref().map_or(0, |h| h.kept)) + request.max_tokens;
        if self.active() > 0 && self.cells_held() + need > self.settings.kv_tokens {
            return Some(job);
        }
        let Some(seq) = self.slots.iter().position(Option::is_none) else {
            return Some(job);
        };
        let (reused, first_logits) = match hit {
            Some(h) if self.restore(h.seq, seq as i32, h.len) => (h.len, h.logits),
            _ => (0, None),
        };
        let sampler = Sampler::new(request.temperature, self.settings.seed);
        self.slots[seq] = Some(Slot {
            job,
            prompt,
            fed: reused,
            reused,
            generated: 0,
            next: None,
            sampler,
            text: Utf8Pieces::default(),
            logits: None,
            first_logits,
        });
        None
    }

    /// The cells the answers under way may hold, at most.
    fn cells_held(&self) -> usize {
        self.slots.iter().flatten().map(Slot::cells).sum()
    }

    /// Puts the first `len` tokens of kept prompt `id` into sequence `seq`.
    fn restore(&mut self, id: i32, seq: i32, len: usize) -> bool {
        let Some(state) = &self.states[id as usize] else {
            return false;
        };
        let restored = self.ctx.state_seq_set(state, seq).is_ok()
            && self
                .ctx
                .clear_kv_cache_seq(Some(seq as u32), Some(len as u32), None)
                == Ok(true);
        if !restored {
            tracing::warn!(
                backend = self.settings.name,
                "a kept prompt state could not be restored"
            );
            self.clear(seq);
        }
        restored
    }

    /// One batch: each answer's next token, then prompts as far as the batch has room.
    fn step(&mut self) {
        self.drop_abandoned();
        // The same prompt again: its first token comes from the kept logits, nothing to prefill.
        for seq in 0..self.slots.len() {
            let known = |s: &Slot| s.generated == 0 && s.next.is_none() && s.fed == s.prompt.len();
            if self.slots[seq].as_ref().is_some_and(known) {
                self.sample(seq);
            }
        }
        self.batch.clear();
        let mut planned: Vec<(usize, usize)> = Vec::new();
        let mut n = 0i32;
        for (seq, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            slot.logits = None;
            if let Some(token) = slot.next {
                let position = (slot.prompt.len() + slot.generated - 1) as i32;
                if self.batch.add(token, position, &[seq as i32], true).is_ok() {
                    slot.logits = Some(n);
                    n += 1;
                }
            }
        }
        for (seq, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            let room = self.settings.batch.saturating_sub(n as usize);
            if slot.next.is_some() || slot.fed == slot.prompt.len() || room == 0 {
                continue;
            }
            let mut end = slot.fed;
            for &token in slot.prompt[slot.fed..].iter().take(room) {
                let last = end + 1 == slot.prompt.len();
                if self
                    .batch
                    .add(LlamaToken(token), end as i32, &[seq as i32], last)
                    .is_err()
                {
                    break;
                }
                if last {
                    slot.logits = Some(n);
                }
                n += 1;
                end += 1;
            }
            planned.push((seq, end));
        }
        if n == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            self.decode_failed(e);
            return;
        }
        for (seq, end) in planned {
            if let Some(slot) = &mut self.slots[seq] {
                slot.fed = end;
            }
        }
        for seq in 0..self.slots.len() {
            self.sample(seq);
        }
    }

    /// Takes the next token of answer `seq`: where this step computed its logits, or for the first
    /// token of a prompt seen whole before, from the logits kept with it.
    fn sample(&mut self, seq: usize) {
        let model = self.model;
        let vocab = model.vocab();
        let keeping = self.settings.prefixes.entries > 0;
        let Some(slot) = &mut self.slots[seq] else { return };
        let token = match (slot.logits.take(), slot.generated) {
            (None, 0) => match &slot.first_logits {
                Some(logits) => slot.sampler.sample(logits),
                None => return,
            },
            (None, _) => return,
            (Some(index), 0) if keeping => {
                let logits: Logits = self.ctx.get_logits_ith(index).into();
                let token = slot.sampler.sample(&logits);
                slot.first_logits = Some(logits);
                token
            }
            (Some(index), _) => slot.sampler.sample(self.ctx.get_logits_ith(index)),
        };
        let token = LlamaToken(token);
        if slot.generated == 0 {
            record_prefix_use(&self.settings.name, self.counts, slot.reused);
        }
        if vocab.is_eog(token) {
            return self.finish(seq);
        }
        slot.generated += 1;
        let piece = vocab.token_to_piece(token, false, None);
        let heard = slot
            .text
            .push(&piece)
            .is_none_or(|text| slot.send(Ok(StreamEvent::Text(text))));
        if !heard {
            return self.abandon(seq);
        }
        if slot.generated >= slot.job.request.max_tokens {
            return self.finish(seq);
        }
        slot.next = Some(token);
    }

    /// The answer is complete: its counts go out, its prompt is kept for the next one (L4).
    fn finish(&mut self, seq: usize) {
        let Some(slot) = &mut self.slots[seq] else { return };
        if let Some(rest) = slot.text.flush() {
            slot.send(Ok(StreamEvent::Text(rest)));
        }
        slot.send(Ok(StreamEvent::Done {
            prompt_tokens: slot.prompt.len(),
            completion_tokens: slot.generated,
        }));
        self.release(seq);
    }

    /// Frees answer `seq`'s sequence, keeping its prompt's state when all of it was decoded.
    fn release(&mut self, seq: usize) {
        let Some(slot) = self.slots[seq].take() else {
            return;
        };
        self.full = false;
        if slot.fed == slot.prompt.len() {
            self.keep_prompt(seq as i32, slot);
        }
        self.clear(seq as i32);
    }

    /// Keeps the state of `slot`'s prompt (in sequence `seq`) for the prompts to come (L4):
    /// at most `cache.l4.max_entries` of them, and at most `kv_tokens` tokens in all.
    fn keep_prompt(&mut self, seq: i32, slot: Slot) {
        let ids = &slot.prompt;
        let scope = slot.job.request.prefix_scope.clone();
        let keep = self.prefixes.keep(ids, slot.first_logits, scope, Instant::now());
        for dropped in keep.dropped {
            self.states[dropped as usize] = None;
        }
        let Some(id) = keep.seq else { return };
        // The answer's own cells are not part of the prompt.
        let cut = self
            .ctx
            .clear_kv_cache_seq(Some(seq as u32), Some(ids.len() as u32), None);
        let state = match cut {
            Ok(true) => self.ctx.state_seq_get(seq, LlamaStateSeqFlags::empty()).ok(),
            _ => None,
        };
        self.states[id as usize] = state;
        if self.states[id as usize].is_none() {
            self.prefixes.forget(id);
        }
        while self.prefixes.tokens_held() > self.settings.kv_tokens {
            match self.prefixes.evict_oldest(None) {
                Some(old) => self.states[old as usize] = None,
                None => break,
            }
        }
    }

    /// Answers whose caller is gone (deadline, disconnect) stop now.
    fn drop_abandoned(&mut self) {
        for seq in 0..self.slots.len() {
            if self.slots[seq].as_ref().is_some_and(|s| s.job.events.is_closed()) {
                self.abandon(seq);
            }
        }
    }

    fn abandon(&mut self, seq: usize) {
        metrics::counter!("ragway_llm_answers_abandoned_total", "backend" => self.settings.name.clone())
            .increment(1);
        self.counts.answers_abandoned.fetch_add(1, Ordering::Relaxed);
        self.release(seq);
    }

    /// A batch that did not decode: with the KV cache full, the newest answer waits again; any
    /// other failure ends the answers in it.
    fn decode_failed(&mut self, error: DecodeError) {
        if error == DecodeError::NoKvCacheSlot {
            let newest = self
                .slots
                .iter()
                .rposition(|s| s.as_ref().is_some_and(|s| s.next.is_none()));
            if let Some(seq) = newest.filter(|_| self.active() > 1) {
                if let Some(slot) = self.slots[seq].take() {
                    self.clear(seq as i32);
                    self.full = true;
                    self.waiting.push_front(slot.job);
                    return;
                }
            }
        }
        tracing::error!(backend = self.settings.name, error = %error, "llama.cpp could not decode a batch");
        for seq in 0..self.slots.len() {
            if let Some(slot) = self.slots[seq].take() {
                slot.send(Err(LlmError::Model(format!("decode failed: {error}"))));
                self.clear(seq as i32);
            }
        }
    }

    fn clear(&mut self, seq: i32) {
        let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
    }
}

/// L4's counters: a hit or a miss, and the prompt tokens whose prefill the cache saved.
fn record_prefix_use(backend: &str, counts: &Counts, reused: usize) {
    counts
        .prefix_tokens_reused
        .fetch_add(reused as u64, Ordering::Relaxed);
    let result = if reused > 0 { "hit" } else { "miss" };
    metrics::counter!("ragway_cache_requests_total", "layer" => "l4", "result" => result).increment(1);
    metrics::counter!("ragway_llm_prefix_tokens_reused_total", "backend" => backend.to_string())
        .increment(reused as u64);
}
