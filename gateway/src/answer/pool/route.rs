//! Which backends may answer a request, and in which order. A [`Route`] is what the client asked
//! for as members with priorities and weights: a model group's members, one backend by its own
//! name, or for an answer over a collection every backend by its own priority. [`order`] is the
//! pure rule: by priority (lowest first); among equal priorities the member with the fewest
//! requests in flight per unit of weight; among equally loaded ones prefix affinity by weighted
//! rendezvous hashing, so a passage set keeps meeting the same backend's prompt cache and a
//! member of weight 2 takes twice the share of an idle pool.

use std::cmp::Ordering;

use crate::config::Member;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    members: Vec<Member>,
}

impl Route {
    pub fn new(members: Vec<Member>) -> Self {
        Self { members }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }
}

/// What orders one member for one request.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    pub priority: u32,
    pub weight: u32,
    pub in_flight: usize,
    /// The rendezvous hash of the request's prompt prefix with the member's name.
    pub affinity: u64,
}

/// The positions of `standings` in the order to try them.
pub fn order(standings: &[Standing]) -> Vec<usize> {
    let mut positions: Vec<usize> = (0..standings.len()).collect();
    positions.sort_by(|&a, &b| compare(&standings[a], &standings[b]));
    positions
}

fn compare(a: &Standing, b: &Standing) -> Ordering {
    let load = |s: &Standing, other: &Standing| s.in_flight as u64 * u64::from(other.weight.max(1));
    a.priority
        .cmp(&b.priority)
        .then_with(|| load(a, b).cmp(&load(b, a)))
        .then_with(|| score(b).total_cmp(&score(a)))
}

/// Weighted rendezvous: `weight / -ln(u)` with `u` the hash as a number in (0, 1); the highest
/// score wins, each member in proportion to its weight.
fn score(s: &Standing) -> f64 {
    // 52 bits and a half: exact in an f64, so `unit` stays strictly inside (0, 1).
    let unit = ((s.affinity >> 12) as f64 + 0.5) / (1u64 << 52) as f64;
    f64::from(s.weight.max(1)) / -unit.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(priority: u32, weight: u32, in_flight: usize, affinity: u64) -> Standing {
        Standing {
            priority,
            weight,
            in_flight,
            affinity,
        }
    }

    #[test]
    fn priority_first_then_load_per_weight_then_affinity() {
        let standings = [
            standing(1, 1, 0, 1),
            standing(0, 1, 2, 1),
            standing(0, 3, 3, 1),
            standing(0, 1, 0, u64::MAX / 3),
            standing(0, 1, 0, u64::MAX - 1),
        ];
        // Priority 0 first; the idle two by affinity (the larger hash scores higher), then one in
        // flight per weight (3 of 3) before two (2 of 1); priority 1 last.
        assert_eq!(order(&standings), [4, 3, 2, 1, 0]);
    }

    #[test]
    fn an_idle_pool_shares_prompts_in_proportion_to_weight() {
        let mut firsts = [0usize; 2];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..6_000 {
            let mut hash = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let standings = [standing(0, 1, 0, hash()), standing(0, 2, 0, hash())];
            firsts[order(&standings)[0]] += 1;
        }
        let share = firsts[1] as f64 / 6_000.0;
        assert!((0.62..0.71).contains(&share), "weight 2 of 3 took {share}");
    }
}
