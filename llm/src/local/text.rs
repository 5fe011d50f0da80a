//! The answer's text as its tokens arrive: byte-level BPE may split a character across tokens,
//! so bytes are held back until they make whole characters.

#[derive(Default)]
pub(crate) struct Utf8Pieces {
    pending: Vec<u8>,
}

impl Utf8Pieces {
    /// The text `bytes` complete, if any; an incomplete character waits for the next token.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(bytes);
        let whole = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // Not a character being completed but bytes that are no UTF-8: let them through.
            Err(e) if e.error_len().is_some() => return self.flush(),
            Err(e) => e.valid_up_to(),
        };
        if whole == 0 {
            return None;
        }
        let rest = self.pending.split_off(whole);
        let text = String::from_utf8_lossy(&std::mem::replace(&mut self.pending, rest)).into_owned();
        Some(text)
    }

    /// Whatever is held back, as text (an unfinished character becomes U+FFFD).
    pub(crate) fn flush(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        Some(String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_tokens_comes_out_whole() {
        let mut pieces = Utf8Pieces::default();
        let e_acute = "é".as_bytes();
        assert_eq!(pieces.push(b"caf"), Some("caf".into()));
        assert_eq!(pieces.push(&e_acute[..1]), None);
        assert_eq!(pieces.push(&[e_acute[1], b'!']), Some("é!".into()));
        assert_eq!(pieces.flush(), None);
        assert_eq!(pieces.push(&e_acute[..1]), None);
        assert_eq!(pieces.flush(), Some("\u{FFFD}".into()));
        assert_eq!(pieces.push(&[0xFF, b'a']), Some("\u{FFFD}a".into()));
    }
}
