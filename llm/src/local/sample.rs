//! Choosing the next token from the model's logits: greedy at temperature 0, else drawn from the
//! temperature-scaled distribution with the request's seed; both with a mild penalty on the
//! tokens just generated (small models loop without one). The penalty touches only those few
//! tokens' logits, not the whole vocabulary.

use std::collections::VecDeque;

const REPEAT_PENALTY: f32 = 1.1;
const REPEAT_WINDOW: usize = 64;

pub(crate) struct Sampler {
    temperature: f32,
    /// xorshift64* state.
    state: u64,
    recent: VecDeque<i32>,
    scratch: Vec<f32>,
}

impl Sampler {
    pub(crate) fn new(temperature: f64, seed: u64) -> Self {
        Self {
            temperature: temperature.max(0.0) as f32,
            state: seed.max(1),
            recent: VecDeque::with_capacity(REPEAT_WINDOW),
            scratch: Vec::new(),
        }
    }

    /// The next token, remembered for the penalty.
    pub(crate) fn sample(&mut self, logits: &[f32]) -> i32 {
        self.scratch.clear();
        self.scratch.extend_from_slice(logits);
        for (i, &token) in self.recent.iter().enumerate() {
            if self.recent.iter().take(i).any(|&earlier| earlier == token) {
                continue;
            }
            if let Some(logit) = self.scratch.get_mut(token as usize) {
                *logit = if *logit > 0.0 {
                    *logit / REPEAT_PENALTY
                } else {
                    *logit * REPEAT_PENALTY
                };
            }
        }
        let token = if self.temperature == 0.0 {
            argmax(&self.scratch)
        } else {
            let draw = self.next_unit();
            drawn(&mut self.scratch, self.temperature, draw)
        };
        if self.recent.len() == REPEAT_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
        token
    }

    /// A uniform draw in [0, 1).
    fn next_unit(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn argmax(values: &[f32]) -> i32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as i32
}

/// The token at `draw` (in [0, 1)) of the softmax of `logits / temperature`; `logits` is
/// overwritten with the unnormalised probabilities.
fn drawn(logits: &mut [f32], temperature: f32, draw: f64) -> i32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0f64;
    for logit in logits.iter_mut() {
        *logit = ((*logit - max) / temperature).exp();
        total += f64::from(*logit);
    }
    let mut left = draw * total;
    for (i, &p) in logits.iter().enumerate() {
        left -= f64::from(p);
        if left < 0.0 {
            return i as i32;
        }
    }
    argmax(logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_and_the_penalty_lowers_what_was_just_said() {
        let mut sampler = Sampler::new(0.0, 1);
        assert_eq!(sampler.sample(&[0.0, 2.0, 1.95]), 1);
        // 2.0 / 1.1 < 1.95: the repeat gives way to the runner-up.
        assert_eq!(sampler.sample(&[0.0, 2.0, 1.95]), 2);
        // Negative logits are pushed further down, not up.
        let mut sampler = Sampler::new(0.0, 1);
        assert_eq!(sampler.sample(&[-1.0, -1.05, -3.0]), 0);
        assert_eq!(sampler.sample(&[-1.0, -1.05, -3.0]), 1);
    }

    #[test]
    fn a_temperature_draws_by_probability_and_the_seed_repeats_the_draws() {
        let logits = [0.0, (3.0f32).ln(), f32::NEG_INFINITY];
        let draws = |seed| {
            let mut sampler = Sampler::new(1.0, seed);
            // No penalty between draws: a fresh sampler each time, the seed carried on.
            (0..4000)
                .map(|_| {
                    let token = sampler.sample(&logits);
                    sampler.recent.clear();
                    token
                })
                .collect::<Vec<_>>()
        };
        let first = draws(42);
        assert_eq!(first, draws(42), "the same seed, the same answer");
        assert_ne!(first, draws(43));
        let ones = first.iter().filter(|&&t| t == 1).count() as f64 / first.len() as f64;
        assert!((0.72..0.78).contains(&ones), "token 1 has p = 0.75, drawn {ones}");
        assert!(!first.contains(&2), "p = 0 is never drawn");
    }
}
