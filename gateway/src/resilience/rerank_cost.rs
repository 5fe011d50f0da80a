//! Recent reranker cost, to skip reranking when it cannot fit the time left: [`Costed`] is a
//! [`Reranker`] that refuses such a call (as the request's deadline) and learns from every call
//! it lets through.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ragway_rerank::{RerankError, Reranker, Scores};
use ragway_worker::Stopped;

use super::deadline::Deadline;

const WINDOW: usize = 64;

/// Milliseconds per candidate of the last calls.
#[derive(Default)]
pub struct RerankCost {
    per_candidate_ms: Mutex<VecDeque<f64>>,
}

impl RerankCost {
    pub fn record(&self, candidates: usize, took: Duration) {
        if candidates == 0 {
            return;
        }
        if let Ok(mut samples) = self.per_candidate_ms.lock() {
            if samples.len() == WINDOW {
                samples.pop_front();
            }
            samples.push_back(took.as_secs_f64() * 1e3 / candidates as f64);
        }
    }

    /// The p95 of recent per-candidate cost times `candidates`; `None` before any call.
    pub fn estimate(&self, candidates: usize) -> Option<Duration> {
        let samples = self.per_candidate_ms.lock().ok()?;
        if samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let p95 = sorted[((sorted.len() - 1) as f64 * 0.95).round() as usize];
        // Never a panic: a cost past what a Duration holds is no estimate.
        Duration::try_from_secs_f64(p95 * candidates as f64 / 1e3).ok()
    }
}

/// A reranker that is not called when its recent cost for this many passages exceeds what is
/// left of the request's deadline ([`Deadline::current`]).
pub struct Costed<R: ?Sized> {
    inner: Arc<R>,
    cost: RerankCost,
}

impl<R: ?Sized> Costed<R> {
    pub fn new(inner: Arc<R>) -> Self {
        Self {
            inner,
            cost: RerankCost::default(),
        }
    }
}

#[async_trait]
impl<R: Reranker + ?Sized> Reranker for Costed<R> {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    async fn score(&self, query: String, passages: Vec<String>) -> Result<Scores, RerankError> {
        let candidates = passages.len();
        let left = Deadline::current().remaining();
        if self.cost.estimate(candidates).is_some_and(|cost| cost > left) {
            return Err(Stopped::Deadline.into());
        }
        let started = Instant::now();
        let scores = self.inner.score(query, passages).await?;
        self.cost.record(candidates, started.elapsed());
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_scales_with_candidates_and_uses_the_slow_tail() {
        let cost = RerankCost::default();
        assert_eq!(cost.estimate(10), None);
        for _ in 0..18 {
            cost.record(10, Duration::from_millis(10)); // 1 ms per candidate
        }
        // Two slow calls in twenty: 10 ms per candidate is the 95th percentile.
        cost.record(10, Duration::from_millis(100));
        cost.record(10, Duration::from_millis(100));
        assert_eq!(cost.estimate(20), Some(Duration::from_millis(200)));
    }
}
