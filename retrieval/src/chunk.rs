use serde_json::{Map, Value};

use crate::types::Chunk;

/// How documents are cut into chunks. Counted in whitespace-separated words, which keeps chunks
/// comfortably under the embedder's 256-token window at the default size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkingOptions {
    pub chunk_words: usize,
    pub overlap_words: usize,
}

impl Default for ChunkingOptions {
    fn default() -> Self {
        Self {
            chunk_words: 120,
            overlap_words: 24,
        }
    }
}

impl ChunkingOptions {
    /// How many chunks [`chunk_document`] makes of a text of `words` words.
    pub fn chunks_for(&self, words: usize) -> usize {
        let size = self.chunk_words.max(1);
        let step = size - self.overlap_words.min(size - 1);
        match words {
            0 => 0,
            w if w <= size => 1,
            w => 1 + (w - size).div_ceil(step),
        }
    }
}

/// Cuts `text` into overlapping windows of words. Each chunk is a slice of the original text, so
/// punctuation and line breaks inside a chunk are kept as written.
pub fn chunk_document(
    doc_id: &str,
    text: &str,
    metadata: &Map<String, Value>,
    options: ChunkingOptions,
) -> Vec<Chunk> {
    let words: Vec<(usize, usize)> = word_spans(text);
    if words.is_empty() {
        return Vec::new();
    }
    let size = options.chunk_words.max(1);
    // An overlap as large as the chunk would never advance; the gateway validates this, and the
    // clamp keeps the function total for any caller.
    let step = size - options.overlap_words.min(size - 1);
    let mut chunks = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + size).min(words.len());
        let (from, _) = words[start];
        let (_, to) = words[end - 1];
        chunks.push(Chunk {
            chunk_id: format!("{doc_id}#{}", chunks.len()),
            doc_id: doc_id.to_string(),
            text: text[from..to].to_string(),
            metadata: metadata.clone(),
        });
        if end == words.len() {
            return chunks;
        }
        start += step;
    }
}

/// Byte ranges of the whitespace-separated words of `text`.
fn word_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len()));
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> String {
        (0..n).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn short_text_is_one_chunk_with_original_spacing() {
        let text = "  Hello,\n world!  ";
        let chunks = chunk_document("d", text, &Map::new(), ChunkingOptions::default());
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, "Hello,\n world!");
        assert_eq!(chunks[0].chunk_id, "d#0");
    }

    #[test]
    fn windows_overlap_and_cover_every_word() {
        let opts = ChunkingOptions {
            chunk_words: 10,
            overlap_words: 3,
        };
        // Windows start every 7 words: 0, 7, 14; the third reaches the last word (w23).
        let chunks = chunk_document("doc", &words(24), &Map::new(), opts);
        assert_eq!(chunks.len(), 3);
        assert!(chunks[0].text.starts_with("w0 ") && chunks[0].text.ends_with(" w9"));
        assert!(chunks[1].text.starts_with("w7 ") && chunks[1].text.ends_with(" w16"));
        assert!(chunks[2].text.starts_with("w14 ") && chunks[2].text.ends_with(" w23"));
        // One word more needs a fourth window.
        let chunks = chunk_document("doc", &words(25), &Map::new(), opts);
        assert_eq!(chunks.len(), 4);
        assert!(chunks[3].text.starts_with("w21 ") && chunks[3].text.ends_with(" w24"));
        for i in 0..25 {
            let word = format!("w{i}");
            assert!(
                chunks.iter().any(|c| c.text.split(' ').any(|w| w == word)),
                "{word} lost"
            );
        }
    }

    #[test]
    fn empty_text_has_no_chunks_and_full_overlap_still_advances() {
        assert!(chunk_document("d", " \n ", &Map::new(), ChunkingOptions::default()).is_empty());
        let opts = ChunkingOptions {
            chunk_words: 4,
            overlap_words: 4,
        };
        let chunks = chunk_document("d", &words(6), &Map::new(), opts);
        assert_eq!(chunks.len(), 3);
    }

    #[test]
    fn chunks_for_counts_what_chunk_document_makes() {
        for (size, overlap) in [(5, 0), (5, 2), (1, 0), (120, 24)] {
            let options = ChunkingOptions {
                chunk_words: size,
                overlap_words: overlap,
            };
            for words in 0..40 {
                let text = vec!["w"; words].join(" ");
                let made = chunk_document("d", &text, &Map::new(), options).len();
                assert_eq!(
                    options.chunks_for(words),
                    made,
                    "size {size} overlap {overlap} words {words}"
                );
            }
        }
    }
}
