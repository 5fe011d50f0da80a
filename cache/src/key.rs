use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// A fixed-size hash of a cache key's parts. Parts are length-prefixed so that `("ab", "c")` and
/// `("a", "bc")` never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn new(layer: &str, parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in std::iter::once(layer.as_bytes()).chain(parts.iter().copied()) {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A question as a cache sees it: Unicode NFKC, case-folded, whitespace collapsed and trimmed, so
/// "What is  RAG?" and "what is rag?" share an entry.
pub fn normalize_query(query: &str) -> String {
    // ASCII is its own NFKC form: only case and spaces are left to fold (the common case, on
    // every cached request's path).
    if query.is_ascii() {
        return collapsed(query.chars().map(|c| c.to_ascii_lowercase()), query.len());
    }
    collapsed(query.nfkc().flat_map(char::to_lowercase), query.len())
}

/// `chars` with every run of whitespace made one space, none at either end.
fn collapsed(chars: impl Iterator<Item = char>, capacity: usize) -> String {
    let mut out = String::with_capacity(capacity);
    let mut gap = false;
    for c in chars {
        if c.is_whitespace() {
            gap = !out.is_empty();
            continue;
        }
        if gap {
            out.push(' ');
            gap = false;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_delimited_and_layers_separate() {
        assert_ne!(
            CacheKey::new("l2", &[b"ab", b"c"]),
            CacheKey::new("l2", &[b"a", b"bc"])
        );
        assert_ne!(CacheKey::new("l1", &[b"x"]), CacheKey::new("l2", &[b"x"]));
        assert_eq!(CacheKey::new("l2", &[b"x"]), CacheKey::new("l2", &[b"x"]));
        assert_eq!(CacheKey::new("l2", &[b"x"]).hex().len(), 64);
    }

    #[test]
    fn queries_normalise_case_width_and_spaces() {
        assert_eq!(normalize_query("  What is\tRAG?\n"), "what is rag?");
        // Full-width letters (NFKC) and a ligature fold to plain ones.
        assert_eq!(normalize_query("ＲＡＧ ﬁle"), "rag file");
        assert_eq!(normalize_query("STRASSE"), normalize_query("strasse"));
        // The one-pass folding is the plain definition: NFKC, lower case, words joined by one space.
        for query in [
            "",
            "   ",
            " a  b ",
            "What\u{3000}is\u{a0}RAG?",
            "ＲＡＧ\t ﬁle  Ünïcode ",
            "x\ny\r\nz",
        ] {
            let folded: String = query.nfkc().flat_map(char::to_lowercase).collect();
            let plain = folded.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(normalize_query(query), plain, "{query:?}");
        }
        assert_ne!(normalize_query("rag"), normalize_query("rags"));
    }
}
