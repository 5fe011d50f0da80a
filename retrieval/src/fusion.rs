use std::collections::HashMap;

use crate::types::ScoredChunk;

/// Reciprocal rank fusion: each list contributes `1 / (k + rank)` (rank from 1) to every chunk it
/// holds. Scores of the input lists are ignored, which is what makes BM25 and cosine comparable.
/// Ties keep the order in which chunks were first seen, so the result is deterministic.
pub fn reciprocal_rank_fusion(lists: &[Vec<ScoredChunk>], k: f32, limit: usize) -> Vec<ScoredChunk> {
    let mut fused: Vec<ScoredChunk> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for list in lists {
        for (rank, hit) in list.iter().enumerate() {
            let contribution = 1.0 / (k + rank as f32 + 1.0);
            match position.get(&hit.chunk.chunk_id) {
                Some(&i) => fused[i].score += contribution,
                None => {
                    position.insert(hit.chunk.chunk_id.clone(), fused.len());
                    fused.push(ScoredChunk {
                        chunk: hit.chunk.clone(),
                        score: contribution,
                    });
                }
            }
        }
    }
    // Stable sort keeps first-seen order among equal scores.
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
    fused.truncate(limit);
    fused
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::types::Chunk;

    fn hits(ids: &[&str]) -> Vec<ScoredChunk> {
        ids.iter()
            .map(|id| ScoredChunk {
                chunk: Chunk {
                    chunk_id: id.to_string(),
                    doc_id: id.to_string(),
                    text: String::new(),
                    metadata: Map::new(),
                },
                score: 99.0,
            })
            .collect()
    }

    #[test]
    fn chunk_found_by_both_lists_wins() {
        let fused = reciprocal_rank_fusion(&[hits(&["a", "b", "c"]), hits(&["c", "d"])], 60.0, 10);
        let ids: Vec<_> = fused.iter().map(|h| h.chunk.chunk_id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b", "d"]);
        let expected_c = 1.0 / 63.0 + 1.0 / 61.0;
        assert!((fused[0].score - expected_c).abs() < 1e-7);
    }

    #[test]
    fn limit_and_empty_lists() {
        assert!(reciprocal_rank_fusion(&[vec![], vec![]], 60.0, 5).is_empty());
        let fused = reciprocal_rank_fusion(&[hits(&["a", "b", "c"])], 60.0, 2);
        assert_eq!(fused.len(), 2);
    }
}
