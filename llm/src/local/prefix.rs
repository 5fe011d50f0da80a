//! L4 for the local model: the KV states of recent prompts, kept in memory beside llama.cpp's KV
//! cache (so that they take no cells from the answers being written, and the attention of those
//! answers runs over their own cells only). A new prompt starts from the kept prompt that shares
//! the longest common prefix with it — the instructions and the passages before the first one
//! that differs, given in a canonical order by the caller — restored into its sequence and cut
//! back to that prefix, and pays prefill only for the rest.
//!
//! This is the bookkeeping alone: which kept state (by id) holds which tokens, which to reuse,
//! which to drop. The engine holds the states and does what it says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::PrefixScope;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheOptions {
    /// How many prompts are kept; 0 turns the cache off. They live in the KV cache beside the
    /// answers being written, and make room for them when it is full.
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

struct Entry {
    seq: i32,
    tokens: Vec<i32>,
    /// The logits after its last token, when known: the same prompt again needs no prefill at
    /// all, and its answer is exactly the first one.
    logits: Option<Logits>,
    scope: Option<PrefixScope>,
    used: Instant,
}

pub(crate) type Logits = Arc<[f32]>;

/// The kept prompt to start from (its id and length), how many of its tokens the new prompt
/// shares, and — when the new prompt is that whole prompt — the logits of its last token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hit {
    pub seq: i32,
    pub kept: usize,
    pub len: usize,
    pub logits: Option<Logits>,
}

pub(crate) struct PrefixCache {
    options: PrefixCacheOptions,
    entries: Vec<Entry>,
    /// Ids for kept states, holding none now.
    free: Vec<i32>,
}

impl PrefixCache {
    /// A cache that keeps prompts under the ids `seqs` (one per entry).
    pub(crate) fn new(options: PrefixCacheOptions, seqs: std::ops::Range<i32>) -> Self {
        Self {
            options,
            entries: Vec::new(),
            free: seqs.rev().collect(),
        }
    }

    /// The tokens the kept prompts hold.
    pub(crate) fn tokens_held(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    /// Drops the prompts kept longer than the TTL allows, and those of an earlier epoch of
    /// `scope`'s collection (that collection changed: they will not be asked for again). Returns
    /// their ids, whose states are to be dropped.
    pub(crate) fn expire(&mut self, now: Instant, scope: Option<&PrefixScope>) -> Vec<i32> {
        let ttl = self.options.ttl;
        let stale = |e: &Entry| {
            now.duration_since(e.used) >= ttl
                || matches!((&e.scope, scope), (Some(kept), Some(new))
                    if kept.collection == new.collection && kept.epoch < new.epoch)
        };
        self.remove_where(stale)
    }

    /// The kept prompt sharing the longest prefix with `prompt`: all of it when it is that very
    /// prompt and its last logits are kept, else leaving at least one token of `prompt` to run
    /// (the next token's logits need one).
    pub(crate) fn best(&mut self, prompt: &[i32], now: Instant) -> Option<Hit> {
        let most = prompt.len().saturating_sub(1);
        let (entry, len) = self
            .entries
            .iter_mut()
            .map(|e| {
                let whole = e.logits.is_some() && e.tokens == prompt;
                let len = if whole {
                    prompt.len()
                } else {
                    common_prefix(&e.tokens, prompt).min(most)
                };
                (e, len)
            })
            .filter(|(_, len)| *len > 0)
            .max_by_key(|(_, len)| *len)?;
        entry.used = now;
        let logits = entry.logits.clone().filter(|_| len == prompt.len());
        Some(Hit {
            seq: entry.seq,
            kept: entry.tokens.len(),
            len,
            logits,
        })
    }

    /// Forgets the least recently used prompt other than `keep`; returns its id.
    pub(crate) fn evict_oldest(&mut self, keep: Option<i32>) -> Option<i32> {
        let oldest = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| Some(e.seq) != keep)
            .min_by_key(|(_, e)| e.used)
            .map(|(i, _)| i)?;
        let entry = self.entries.swap_remove(oldest);
        self.free.push(entry.seq);
        Some(entry.seq)
    }

    /// Forgets kept prompt `id` (its state could not be taken).
    pub(crate) fn forget(&mut self, id: i32) {
        self.remove_where(|e| e.seq == id);
    }

    /// Where to keep the state after `tokens`: an id for it, or `None` when it is already kept
    /// (or the cache is off). Prompts that `tokens` extends are dropped (the new one serves every
    /// prompt they served), and the least recently used when all entries are taken; their ids
    /// are in `dropped`.
    pub(crate) fn keep(
        &mut self,
        tokens: &[i32],
        logits: Option<Logits>,
        scope: Option<PrefixScope>,
        now: Instant,
    ) -> Keep {
        let mut dropped = Vec::new();
        if self.options.entries == 0 || tokens.is_empty() {
            return Keep { seq: None, dropped };
        }
        if let Some(same) = self.entries.iter_mut().find(|e| e.tokens == tokens) {
            same.used = now;
            same.logits = same.logits.take().or(logits);
            return Keep { seq: None, dropped };
        }
        dropped.extend(self.remove_where(|e| tokens.starts_with(&e.tokens)));
        while self.entries.len() >= self.options.entries || self.free.is_empty() {
            match self.evict_oldest(None) {
                Some(seq) => dropped.push(seq),
                None => return Keep { seq: None, dropped },
            }
        }
        let Some(seq) = self.free.pop() else {
            return Keep { seq: None, dropped };
        };
        self.entries.push(Entry {
            seq,
            tokens: tokens.to_vec(),
            logits,
            scope,
            used: now,
        });
        Keep {
            seq: Some(seq),
            dropped,
        }
    }

    fn remove_where(&mut self, mut gone: impl FnMut(&Entry) -> bool) -> Vec<i32> {
        let mut removed = Vec::new();
        let free = &mut self.free;
        self.entries.retain(|e| {
            let keep = !gone(e);
            if !keep {
                removed.push(e.seq);
                free.push(e.seq);
            }
            keep
        });
        removed
    }
}

/// What [`PrefixCache::keep`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Keep {
    pub seq: Option<i32>,
    pub dropped: Vec<i32>,
}

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: usize) -> PrefixCache {
        let options = PrefixCacheOptions {
            entries,
            ttl: Duration::from_secs(60),
        };
        PrefixCache::new(options, 10..10 + entries as i32)
    }

    /// The sequence a kept prompt went to; -1 (no sequence) fails the checks that use it.
    fn seq(keep: Keep) -> i32 {
        keep.seq.unwrap_or(-1)
    }

    fn scope(collection: &str, epoch: u64) -> Option<PrefixScope> {
        Some(PrefixScope {
            collection: collection.into(),
            epoch,
        })
    }

    #[test]
    fn the_longest_common_prefix_wins_and_leaves_one_token_to_run() {
        let now = Instant::now();
        let mut c = cache(3);
        let a = seq(c.keep(&[1, 2, 3, 4, 5], None, None, now));
        let b = seq(c.keep(&[1, 2, 9, 9], None, None, now));
        assert_ne!(a, b);
        // Shares 4 tokens with the first, 2 with the second: not only whole kept prompts count.
        let hit = |seq, kept, len| {
            Some(Hit {
                seq,
                kept,
                len,
                logits: None,
            })
        };
        assert_eq!(c.best(&[1, 2, 3, 4, 7, 7], now), hit(a, 5, 4));
        assert_eq!(c.best(&[1, 2, 9, 8], now), hit(b, 4, 3));
        // The same prompt again reuses all but its last token, without its logits.
        assert_eq!(c.best(&[1, 2, 3, 4, 5], now), hit(a, 5, 4));
        assert_eq!(c.best(&[7, 1, 2], now), None);
        assert_eq!(c.best(&[1], now), None, "one token: nothing may be reused");
    }

    #[test]
    fn the_same_prompt_with_its_logits_kept_is_reused_whole() {
        let now = Instant::now();
        let mut c = cache(2);
        let logits: Logits = Arc::from(vec![0.5, 1.5]);
        let a = seq(c.keep(&[1, 2, 3], Some(logits.clone()), None, now));
        let whole = c.best(&[1, 2, 3], now);
        assert_eq!(
            whole,
            Some(Hit {
                seq: a,
                kept: 3,
                len: 3,
                logits: Some(logits)
            })
        );
        // A longer or another prompt still runs its last token.
        assert_eq!(
            c.best(&[1, 2, 3, 4], now).map(|h| (h.len, h.logits)),
            Some((3, None))
        );
        assert_eq!(
            c.best(&[1, 2, 4], now).map(|h| (h.len, h.logits)),
            Some((2, None))
        );
    }

    #[test]
    fn a_prompt_that_extends_a_kept_one_replaces_it_and_the_bound_holds() {
        let now = Instant::now();
        let mut c = cache(2);
        let first = seq(c.keep(&[1, 2], None, None, now));
        let longer = c.keep(&[1, 2, 3], None, None, now + Duration::from_secs(1));
        assert_eq!(longer.dropped, vec![first], "[1, 2] is served by [1, 2, 3]");
        assert_eq!(c.tokens_held(), 3);
        assert_eq!(c.keep(&[1, 2, 3], None, None, now).seq, None, "already kept");
        c.keep(&[5, 6], None, None, now + Duration::from_secs(2));
        // Full: the least recently used goes.
        let third = c.keep(&[7, 8], None, None, now + Duration::from_secs(3));
        assert_eq!(third.dropped, vec![longer.seq.unwrap_or(-1)]);
        assert_eq!(c.tokens_held(), 4);
        assert_eq!(c.best(&[1, 2, 3, 4], now), None);
        // Eviction spares the entry about to be used.
        let Some(hit) = c.best(&[5, 6, 1], now) else {
            panic!("[5, 6] is kept")
        };
        let evicted = c.evict_oldest(Some(hit.seq));
        assert!(evicted.is_some_and(|e| e != hit.seq), "{evicted:?}");
        assert_eq!(c.evict_oldest(Some(hit.seq)), None);
    }

    #[test]
    fn a_new_epoch_of_a_collection_drops_its_prompts_only_and_the_ttl_drops_all() {
        let now = Instant::now();
        let mut c = cache(3);
        let old = seq(c.keep(&[1, 2], None, scope("a", 1), now));
        c.keep(&[3, 4], None, scope("b", 1), now);
        c.keep(&[5, 6], None, None, now);
        assert_eq!(c.expire(now, scope("a", 1).as_ref()), Vec::<i32>::new());
        assert_eq!(c.expire(now, scope("a", 2).as_ref()), vec![old]);
        assert_eq!(c.best(&[1, 2, 3], now), None);
        assert!(c.best(&[3, 4, 5], now).is_some(), "collection b is untouched");
        assert_eq!(c.expire(now + Duration::from_secs(60), None).len(), 2);
        assert_eq!(c.tokens_held(), 0);
    }

    #[test]
    fn off_keeps_nothing() {
        let mut c = cache(0);
        assert_eq!(
            c.keep(&[1, 2], None, None, Instant::now()),
            Keep {
                seq: None,
                dropped: vec![]
            }
        );
    }
}
