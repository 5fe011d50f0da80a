//! Sections into chunks of at most `max_tokens` of the embedder's tokens (text-splitter: the
//! largest unit that fits — paragraphs, then lines, sentences, words), never across a section,
//! each chunk keeping its section's page and heading. The heading is also written at the top of
//! each of its chunks, so a chunk read alone (by the embedder, the reranker, a reader) says what
//! it is about.

use std::path::Path;

use text_splitter::{ChunkConfig, ChunkSizer, TextSplitter};
use tokenizers::Tokenizer;

use crate::{Extracted, FileError};

/// Counts tokens as the collection's embedder does (its `tokenizer.json`, without truncation),
/// or estimates them (a token per four bytes) for an embedder whose tokenizer is not at hand.
pub enum TokenCounter {
    Tokenizer(Box<Tokenizer>),
    Estimate,
}

impl TokenCounter {
    /// The tokenizer in a model directory (`tokenizer.json`).
    pub fn from_model_dir(dir: &Path) -> Result<Self, FileError> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| FileError::Unreadable(format!("{}: {e}", path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| FileError::Unreadable(e.to_string()))?;
        Ok(Self::Tokenizer(Box::new(tokenizer)))
    }

    pub fn count(&self, text: &str) -> usize {
        match self {
            Self::Tokenizer(tokenizer) => tokenizer
                .encode_fast(text, false)
                .map_or(text.len().div_ceil(4), |e| e.len()),
            Self::Estimate => text.len().div_ceil(4),
        }
    }
}

impl ChunkSizer for &TokenCounter {
    fn size(&self, chunk: &str) -> usize {
        self.count(chunk)
    }
}

/// One chunk of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub page: Option<u32>,
    pub heading: Option<String>,
}

/// Cuts `extracted` into chunks of at most `max_tokens` (an `overlap` of tokens shared with the
/// chunk before, within a section).
pub fn split(extracted: &Extracted, counter: &TokenCounter, max_tokens: usize, overlap: usize) -> Vec<Piece> {
    let mut pieces = Vec::new();
    for section in &extracted.sections {
        let prefix = section
            .heading
            .as_ref()
            .map(|h| format!("{h}\n"))
            .unwrap_or_default();
        // The heading counts against the chunk it heads.
        let room = max_tokens
            .saturating_sub(counter.count(&prefix))
            .max(max_tokens / 2)
            .max(1);
        let config = ChunkConfig::new(room)
            .with_sizer(counter)
            .with_overlap(overlap.min(room.saturating_sub(1)))
            .unwrap_or_else(|_| ChunkConfig::new(room).with_sizer(counter));
        let splitter = TextSplitter::new(config);
        for chunk in splitter.chunks(&section.text) {
            pieces.push(Piece {
                text: format!("{prefix}{chunk}"),
                page: section.page,
                heading: section.heading.clone(),
            });
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, Section};

    fn extracted(sections: Vec<Section>) -> Extracted {
        Extracted {
            format: Format::Text,
            pages: None,
            sections,
        }
    }

    #[test]
    fn chunks_stay_within_their_section_and_their_budget() {
        let long = (0..200)
            .map(|i| format!("Sentence number {i} is here."))
            .collect::<Vec<_>>()
            .join(" ");
        let sections = vec![
            Section {
                text: long.clone(),
                page: Some(1),
                heading: Some("Intro".into()),
            },
            Section {
                text: "Short second page.".into(),
                page: Some(2),
                heading: None,
            },
        ];
        let counter = TokenCounter::Estimate;
        let pieces = split(&extracted(sections), &counter, 64, 8);
        assert!(pieces.len() > 5, "{}", pieces.len());
        for piece in &pieces {
            assert!(
                counter.count(&piece.text) <= 64,
                "{} tokens: {}",
                counter.count(&piece.text),
                piece.text
            );
        }
        let last = pieces.last().cloned();
        assert_eq!(
            last,
            Some(Piece {
                text: "Short second page.".into(),
                page: Some(2),
                heading: None
            })
        );
        assert!(pieces[..pieces.len() - 1]
            .iter()
            .all(|p| p.page == Some(1) && p.text.starts_with("Intro\nSentence")));
        // Sentences are not cut in the middle.
        assert!(pieces[0].text.ends_with('.'), "{}", pieces[0].text);
    }
}
