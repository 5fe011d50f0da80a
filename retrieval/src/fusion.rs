//! Hybrid fusion: one ranked list from the dense engine's and the keyword engine's.
//!
//! Every method here is a weighted sum over the two engines of a per-engine score: `alpha` weighs
//! the dense list, `1 − alpha` the keyword list. The methods differ in what that per-engine score
//! is, and in what a chunk one engine did not return gets from it (its *floor*):
//!
//! - [`rrf`]: `1 / (k + rank)`; the raw scores are ignored. Floor 0: a chunk beyond an engine's
//!   list has an unknown rank, and RRF as published counts it as absent.
//! - [`convex`] (Bruch, Gai and Ingber, ACM TOIS 2023): the raw scores normalised per list,
//!   min-max (`(s − min) / (max − min)`) or z-score (`(s − μ) / σ`). Floor: the lowest normalised
//!   score of that list (0 for min-max, the smallest z for z-score), because a chunk the engine did
//!   not return scored at most as high as the last one it did; zero would rank it above every
//!   returned chunk with a negative z.
//! - [`dbsf`] (distribution-based score fusion, as in Qdrant's Query API): each list normalised by
//!   its own distribution, `(s − (μ − 3σ)) / 6σ` clamped to [0, 1]. Floor 0, the bottom of that
//!   range (Qdrant scores an absent point as 0 too).
//!
//! - [`adaptive`]: [`convex`] with min-max normalisation whose dense weight is set per query by
//!   how close the dense engine's best hit is to the query (its cosine similarity `s₁`):
//!   `alpha = clamp(0.5 + slope · (s₁ − anchor), 0.5, 1)`. An embedder that finds a passage very
//!   close to the question is usually right about it (dense leads), and one whose best match is
//!   middling is no better a guide than the words (equal weights, where fusing gains most). The
//!   constants ([`ADAPTIVE_ANCHOR`], [`ADAPTIVE_SLOPE`]) were chosen on two judged collections of
//!   the two kinds (docs/BENCHMARKS.md, "Fusion that carries"); they assume cosine similarities
//!   on the scale of the shipped MiniLM embedder.
//!
//! A list whose scores are all equal (or a single hit) has no spread to normalise by: its chunks
//! get the top of the range (1 for min-max, 0 for z-score, 0.5 for DBSF, the middle of its range).
//! Ties keep the order in which chunks were first seen, dense list first, so results are
//! deterministic. When one engine produced no list at all (it failed), [`fuse`] returns the other
//! list as it is: there is nothing to fuse, and its own scores mean more than rescaled ones.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::types::ScoredChunk;

/// How each list's raw scores are put on one scale before [`convex`] adds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    #[default]
    MinMax,
    ZScore,
}

/// A fusion method with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Fusion {
    Rrf {
        k: f32,
        alpha: f32,
    },
    Convex {
        alpha: f32,
        normalization: Normalization,
    },
    Dbsf {
        alpha: f32,
    },
    /// See [`adaptive`].
    Adaptive,
}

/// [`adaptive`]: the dense engine's best similarity at which both engines weigh the same.
pub const ADAPTIVE_ANCHOR: f32 = 0.75;
/// [`adaptive`]: how fast the dense weight grows with the best similarity above the anchor (it
/// reaches 1 at `anchor + 0.5 / slope`).
pub const ADAPTIVE_SLOPE: f32 = 8.0;

impl Default for Fusion {
    /// Reciprocal rank fusion with k = 60 and equal weights.
    fn default() -> Self {
        Self::Rrf { k: 60.0, alpha: 0.5 }
    }
}

impl std::fmt::Display for Fusion {
    /// A short, stable form (cache keys, logs): `rrf(k=60,alpha=0.5)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rrf { k, alpha } => write!(f, "rrf(k={k},alpha={alpha})"),
            Self::Convex { alpha, normalization } => write!(f, "convex(alpha={alpha},{normalization:?})"),
            Self::Dbsf { alpha } => write!(f, "dbsf(alpha={alpha})"),
            Self::Adaptive => write!(f, "adaptive(anchor={ADAPTIVE_ANCHOR},slope={ADAPTIVE_SLOPE})"),
        }
    }
}

/// The two engines' lists fused by `fusion`, best first, at most `limit`. An engine that failed
/// (`None`) leaves the other's list as it is; an engine that found nothing (`Some(&[])`) still
/// takes part.
pub fn fuse(
    fusion: &Fusion,
    dense: Option<&[ScoredChunk]>,
    keyword: Option<&[ScoredChunk]>,
    limit: usize,
) -> Vec<ScoredChunk> {
    let (dense, keyword) = match (dense, keyword) {
        (Some(dense), Some(keyword)) => (dense, keyword),
        (Some(only), None) | (None, Some(only)) => return only.iter().take(limit).cloned().collect(),
        (None, None) => return Vec::new(),
    };
    match *fusion {
        Fusion::Rrf { k, alpha } => rrf(dense, keyword, k, alpha, limit),
        Fusion::Convex { alpha, normalization } => convex(dense, keyword, alpha, normalization, limit),
        Fusion::Dbsf { alpha } => dbsf(dense, keyword, alpha, limit),
        Fusion::Adaptive => adaptive(dense, keyword, limit),
    }
}

/// The dense weight [`adaptive`] gives a query whose best dense hit scored `best`.
pub fn adaptive_alpha(best: f32) -> f32 {
    (0.5 + ADAPTIVE_SLOPE * (best - ADAPTIVE_ANCHOR)).clamp(0.5, 1.0)
}

/// Min-max convex combination weighted per query by the dense engine's best score (see the
/// module's documentation); with no dense hit, equal weights.
pub fn adaptive(dense: &[ScoredChunk], keyword: &[ScoredChunk], limit: usize) -> Vec<ScoredChunk> {
    let best = dense.iter().map(|h| h.score).fold(f32::NEG_INFINITY, f32::max);
    let alpha = if best.is_finite() {
        adaptive_alpha(best)
    } else {
        0.5
    };
    convex(dense, keyword, alpha, Normalization::MinMax, limit)
}

/// Reciprocal rank fusion: a chunk at rank `r` (from 1) of a list gets `1 / (k + r)` from it,
/// weighted `alpha` (dense) and `1 − alpha` (keyword). `alpha = 0.5` ranks as classic RRF.
pub fn rrf(
    dense: &[ScoredChunk],
    keyword: &[ScoredChunk],
    k: f32,
    alpha: f32,
    limit: usize,
) -> Vec<ScoredChunk> {
    let by_rank =
        |list: &[ScoredChunk]| -> Vec<f32> { (0..list.len()).map(|r| 1.0 / (k + r as f32 + 1.0)).collect() };
    let lists = [
        Scored::new(dense, by_rank(dense), 0.0, alpha),
        Scored::new(keyword, by_rank(keyword), 0.0, 1.0 - alpha),
    ];
    weighted_sum(&lists, limit)
}

/// Convex combination of normalised scores: `alpha · dense + (1 − alpha) · keyword`.
pub fn convex(
    dense: &[ScoredChunk],
    keyword: &[ScoredChunk],
    alpha: f32,
    normalization: Normalization,
    limit: usize,
) -> Vec<ScoredChunk> {
    let normalize = |list: &[ScoredChunk]| match normalization {
        Normalization::MinMax => min_max(list),
        Normalization::ZScore => z_score(list),
    };
    let (dense_scores, keyword_scores) = (normalize(dense), normalize(keyword));
    let lists = [
        Scored::new(dense, dense_scores.0, dense_scores.1, alpha),
        Scored::new(keyword, keyword_scores.0, keyword_scores.1, 1.0 - alpha),
    ];
    weighted_sum(&lists, limit)
}

/// Distribution-based score fusion: each list's scores mapped from `[μ − 3σ, μ + 3σ]` onto
/// `[0, 1]` (clamped), weighted `alpha` (dense) and `1 − alpha` (keyword); `alpha = 0.5` ranks as
/// Qdrant's unweighted sum.
pub fn dbsf(dense: &[ScoredChunk], keyword: &[ScoredChunk], alpha: f32, limit: usize) -> Vec<ScoredChunk> {
    let lists = [
        Scored::new(dense, distribution(dense), 0.0, alpha),
        Scored::new(keyword, distribution(keyword), 0.0, 1.0 - alpha),
    ];
    weighted_sum(&lists, limit)
}

/// One engine's list with its per-chunk scores, the score of a chunk it lacks, and its weight.
struct Scored<'a> {
    hits: &'a [ScoredChunk],
    scores: Vec<f32>,
    floor: f32,
    weight: f32,
}

impl<'a> Scored<'a> {
    fn new(hits: &'a [ScoredChunk], scores: Vec<f32>, floor: f32, weight: f32) -> Self {
        Self {
            hits,
            scores,
            floor,
            weight,
        }
    }
}

/// Every chunk of any list, scored `Σ weight · (its score in the list, or the list's floor)`,
/// best first; equal scores keep first-seen order.
fn weighted_sum(lists: &[Scored<'_>], limit: usize) -> Vec<ScoredChunk> {
    let mut order: Vec<&ScoredChunk> = Vec::new();
    let mut found: HashMap<&str, Vec<Option<f32>>> = HashMap::new();
    for (engine, list) in lists.iter().enumerate() {
        for (hit, &score) in list.hits.iter().zip(&list.scores) {
            let slots = found.entry(hit.chunk.chunk_id.as_str()).or_insert_with(|| {
                order.push(hit);
                vec![None; lists.len()]
            });
            // A chunk listed twice by one engine keeps its better place.
            slots[engine].get_or_insert(score);
        }
    }
    let mut fused: Vec<ScoredChunk> = order
        .into_iter()
        .map(|hit| {
            let slots = &found[hit.chunk.chunk_id.as_str()];
            let score = lists
                .iter()
                .zip(slots)
                .map(|(list, slot)| list.weight * slot.unwrap_or(list.floor))
                .sum();
            ScoredChunk {
                chunk: hit.chunk.clone(),
                score,
            }
        })
        .collect();
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
    fused.truncate(limit);
    fused
}

fn raw(list: &[ScoredChunk]) -> impl Iterator<Item = f32> + '_ {
    list.iter().map(|h| h.score)
}

/// Min-max scores and their floor (0).
fn min_max(list: &[ScoredChunk]) -> (Vec<f32>, f32) {
    let (min, max) = raw(list).fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| {
        (lo.min(s), hi.max(s))
    });
    let spread = max - min;
    let scores = raw(list)
        .map(|s| if spread > 0.0 { (s - min) / spread } else { 1.0 })
        .collect();
    (scores, 0.0)
}

fn mean_and_deviation(list: &[ScoredChunk]) -> (f32, f32) {
    let n = list.len().max(1) as f32;
    let mean = raw(list).sum::<f32>() / n;
    let variance = raw(list).map(|s| (s - mean).powi(2)).sum::<f32>() / n;
    (mean, variance.sqrt())
}

/// Z-scores and their floor (the smallest of them; 0 for an empty list).
fn z_score(list: &[ScoredChunk]) -> (Vec<f32>, f32) {
    let (mean, deviation) = mean_and_deviation(list);
    let scores: Vec<f32> = raw(list)
        .map(|s| {
            if deviation > 0.0 {
                (s - mean) / deviation
            } else {
                0.0
            }
        })
        .collect();
    let floor = scores.iter().copied().fold(f32::INFINITY, f32::min);
    (scores, if floor.is_finite() { floor } else { 0.0 })
}

/// DBSF scores: `[μ − 3σ, μ + 3σ]` onto `[0, 1]`.
/// Each score mapped from `[μ − 3σ, μ + 3σ]` onto `[0, 1]`, σ the sample deviation (as Qdrant's
/// DBSF has it); a single score, or equal ones, map to 0.5.
fn distribution(list: &[ScoredChunk]) -> Vec<f32> {
    let n = list.len() as f32;
    let mean = raw(list).sum::<f32>() / n.max(1.0);
    let variance = raw(list).map(|s| (s - mean).powi(2)).sum::<f32>() / (n - 1.0).max(1.0);
    let deviation = variance.sqrt();
    raw(list)
        .map(|s| {
            if deviation > 0.0 {
                ((s - (mean - 3.0 * deviation)) / (6.0 * deviation)).clamp(0.0, 1.0)
            } else {
                0.5
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::types::Chunk;

    fn hits(scored: &[(&str, f32)]) -> Vec<ScoredChunk> {
        scored
            .iter()
            .map(|(id, score)| ScoredChunk {
                chunk: Chunk {
                    chunk_id: id.to_string(),
                    doc_id: id.to_string(),
                    text: String::new(),
                    metadata: Map::new(),
                },
                score: *score,
            })
            .collect()
    }

    fn ids(fused: &[ScoredChunk]) -> Vec<&str> {
        fused.iter().map(|h| h.chunk.chunk_id.as_str()).collect()
    }

    const RRF: Fusion = Fusion::Rrf { k: 60.0, alpha: 0.5 };
    const MIN_MAX: Fusion = Fusion::Convex {
        alpha: 0.5,
        normalization: Normalization::MinMax,
    };
    const Z: Fusion = Fusion::Convex {
        alpha: 0.5,
        normalization: Normalization::ZScore,
    };
    const DBSF: Fusion = Fusion::Dbsf { alpha: 0.5 };

    #[test]
    fn adaptive_weighs_the_words_equally_unless_the_embedder_is_sure() {
        assert_eq!(adaptive_alpha(0.40), 0.5);
        assert_eq!(adaptive_alpha(ADAPTIVE_ANCHOR), 0.5);
        assert!((adaptive_alpha(ADAPTIVE_ANCHOR + 0.025) - 0.7).abs() < 1e-6);
        assert_eq!(adaptive_alpha(0.95), 1.0);
        // Dense barely prefers `a`; keyword is sure of `b`.
        let keyword = hits(&[("b", 20.0), ("a", 5.0), ("d", 1.0)]);
        let middling = hits(&[("a", 0.60), ("b", 0.59), ("c", 0.20)]);
        // Best dense similarity 0.60: equal weights, the keyword engine's certainty carries `b`.
        assert_eq!(
            ids(&fuse(&Fusion::Adaptive, Some(&middling), Some(&keyword), 10))[0],
            "b"
        );
        // The same lists, the embedder now very close to `a` (0.95 and 0.94): dense alone orders.
        let sure = hits(&[("a", 0.95), ("b", 0.94), ("c", 0.20)]);
        let fused = fuse(&Fusion::Adaptive, Some(&sure), Some(&keyword), 10);
        assert_eq!(ids(&fused)[..3], ["a", "b", "c"]);
        // No dense hit at all: keyword's order, as equal weights give it.
        assert_eq!(
            ids(&fuse(&Fusion::Adaptive, Some(&[]), Some(&keyword), 10)),
            ["b", "a", "d"]
        );
    }

    #[test]
    fn rrf_rewards_a_chunk_both_engines_found() {
        let dense = hits(&[("a", 0.9), ("b", 0.8), ("c", 0.7)]);
        let keyword = hits(&[("c", 12.0), ("d", 3.0)]);
        let fused = fuse(&RRF, Some(&dense), Some(&keyword), 10);
        assert_eq!(ids(&fused), ["c", "a", "b", "d"]);
        let expected_c = 0.5 * (1.0 / 63.0 + 1.0 / 61.0);
        assert!((fused[0].score - expected_c).abs() < 1e-7);
        // alpha weighs the engines: all on keyword puts its order first.
        let keyword_only = fuse(
            &Fusion::Rrf { k: 60.0, alpha: 0.0 },
            Some(&dense),
            Some(&keyword),
            10,
        );
        assert_eq!(ids(&keyword_only)[..2], ["c", "d"]);
    }

    #[test]
    fn convex_min_max_uses_the_scores_rrf_ignores() {
        // Dense is sure of `a` and not of `b`; keyword barely prefers `b` to `a`.
        let dense = hits(&[("a", 0.95), ("b", 0.30), ("c", 0.29)]);
        let keyword = hits(&[("b", 10.0), ("a", 9.9), ("d", 1.0)]);
        assert_eq!(ids(&fuse(&MIN_MAX, Some(&dense), Some(&keyword), 10))[0], "a");
        // RRF only sees the ranks, which tie a and b; first seen (dense's a) wins the tie.
        let rrf = fuse(&RRF, Some(&dense), Some(&keyword), 10);
        assert_eq!(rrf[0].score, rrf[1].score);
        // alpha near 0 trusts keyword alone.
        let keyword_heavy = Fusion::Convex {
            alpha: 0.01,
            normalization: Normalization::MinMax,
        };
        assert_eq!(
            ids(&fuse(&keyword_heavy, Some(&dense), Some(&keyword), 10))[0],
            "b"
        );
    }

    #[test]
    fn a_chunk_in_one_list_gets_that_engines_floor() {
        let dense = hits(&[("a", 3.0), ("b", 2.0), ("c", 1.0)]);
        let keyword = hits(&[("x", 5.0), ("a", 4.0), ("b", 3.0)]);
        // z-score floor is the lowest z of the list (−1.22 here), not 0: `c`, last of dense and
        // absent from keyword, must not outrank `b`, found by both.
        let z = fuse(&Z, Some(&dense), Some(&keyword), 10);
        let pos = |id: &str| ids(&z).iter().position(|x| *x == id);
        assert!(pos("b") < pos("c"), "{:?}", ids(&z));
        let c = z.iter().find(|h| h.chunk.chunk_id == "c").map(|h| h.score);
        let floor = -(1.5f32).sqrt();
        assert!((c.unwrap_or(0.0) - 0.5 * (floor + floor)).abs() < 1e-5, "{c:?}");
        // min-max and DBSF floors are 0.
        let mm = fuse(&MIN_MAX, Some(&dense), Some(&keyword), 10);
        let x = mm.iter().find(|h| h.chunk.chunk_id == "x").map(|h| h.score);
        assert_eq!(x, Some(0.5 * 0.0 + 0.5 * 1.0));
    }

    #[test]
    fn one_empty_list_and_one_missing_engine() {
        let dense = hits(&[("a", 0.9), ("b", 0.5)]);
        for fusion in [RRF, MIN_MAX, Z, DBSF] {
            // An engine that found nothing: the other's order, rescored.
            assert_eq!(
                ids(&fuse(&fusion, Some(&dense), Some(&[]), 10)),
                ["a", "b"],
                "{fusion}"
            );
            // An engine that failed: the other's list as it is, scores included.
            let alone = fuse(&fusion, Some(&dense), None, 1);
            assert_eq!((ids(&alone), alone[0].score), (vec!["a"], 0.9), "{fusion}");
            assert!(fuse(&fusion, None, None, 5).is_empty());
            assert!(fuse(&fusion, Some(&[]), Some(&[]), 5).is_empty());
        }
    }

    #[test]
    fn equal_scores_and_ties_are_deterministic() {
        let dense = hits(&[("a", 0.5), ("b", 0.5)]);
        let keyword = hits(&[("c", 2.0), ("d", 2.0)]);
        for fusion in [RRF, MIN_MAX, Z, DBSF] {
            let fused = fuse(&fusion, Some(&dense), Some(&keyword), 10);
            assert!(
                fused.iter().all(|h| h.score.is_finite()),
                "{fusion}: no NaN from a zero spread"
            );
            let again = fuse(&fusion, Some(&dense), Some(&keyword), 10);
            assert_eq!(ids(&fused), ids(&again));
        }
        // Equal weights and equal normalised scores: first seen first (dense, then keyword).
        assert_eq!(
            ids(&fuse(&MIN_MAX, Some(&dense), Some(&keyword), 10)),
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            ids(&fuse(&DBSF, Some(&dense), Some(&keyword), 10)),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn dbsf_maps_three_deviations_onto_the_unit_range() {
        let list = hits(&[("a", 1.0), ("b", 2.0), ("c", 3.0)]);
        let scores = distribution(&list);
        // The sample deviation: squares 1 + 0 + 1 over n − 1 = 2.
        let deviation = 1.0f32;
        let expected = |s: f32| (s - (2.0 - 3.0 * deviation)) / (6.0 * deviation);
        for (got, s) in scores.iter().zip([1.0, 2.0, 3.0]) {
            assert!((got - expected(s)).abs() < 1e-6);
        }
        assert!((scores[1] - 0.5).abs() < 1e-6, "the mean maps to the middle");
    }

    #[test]
    fn the_limit_cuts_the_fused_list() {
        let dense = hits(&[("a", 3.0), ("b", 2.0), ("c", 1.0)]);
        let keyword = hits(&[("d", 3.0), ("e", 2.0)]);
        for fusion in [RRF, MIN_MAX, Z, DBSF] {
            assert_eq!(
                fuse(&fusion, Some(&dense), Some(&keyword), 2).len(),
                2,
                "{fusion}"
            );
        }
    }
}
