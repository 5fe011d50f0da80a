use sha2::{Digest, Sha256};

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
}
