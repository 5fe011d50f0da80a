use ahash::AHashMap;
use candle_core::quantized::gguf_file::Content;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::LlmError;

// llama.cpp's token types: 3 = control (e.g. <|im_start|>), 4 = user-defined. Both must never be
// split by BPE, and are skipped when decoding the answer.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Rebuilds the model's Hugging Face tokenizer from the vocabulary stored in the GGUF file:
/// GPT-2 byte-level BPE, digits split one by one (SmolLM2's pre-tokenizer), special tokens by type.
pub(crate) fn tokenizer_from_gguf(content: &Content) -> Result<Tokenizer, LlmError> {
    let list = |key: &str| {
        content
            .metadata
            .get(key)
            .ok_or_else(|| LlmError::Model(format!("GGUF has no `{key}`")))?
            .to_vec()
            .map_err(|e| LlmError::Model(format!("GGUF `{key}`: {e}")))
    };
    let tokens = list("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<Result<Vec<String>, _>>()?;
    let merges = list("tokenizer.ggml.merges")?
        .iter()
        .map(|v| {
            let merge = v.to_string()?;
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| candle_core::Error::Msg(format!("merge without a space: {merge}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let types = list("tokenizer.ggml.token_type")?
        .iter()
        .map(|v| v.to_i32().map(i64::from))
        .collect::<Result<Vec<i64>, _>>()?;

    let vocab: AHashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| LlmError::Model(format!("BPE from GGUF vocabulary: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre: Vec<PreTokenizerWrapper> =
        vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()];
    tokenizer.with_pre_tokenizer(Some(Sequence::new(pre)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == CONTROL || t == USER_DEFINED)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| LlmError::Model(format!("special tokens: {e}")))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn gguf() -> PathBuf {
        let models = std::env::var_os("RAGWAY_MODELS")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ragway/models")))
            .unwrap_or_default();
        let path = models.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            path.is_file(),
            "{} is missing: run scripts/fetch-models.sh",
            path.display()
        );
        path
    }

    fn tokenizer() -> Result<Tokenizer, Box<dyn std::error::Error + Send + Sync>> {
        let mut file = std::fs::File::open(gguf())?;
        let content = Content::read(&mut file)?;
        Ok(tokenizer_from_gguf(&content)?)
    }

    #[test]
    fn chatml_markers_are_single_special_tokens() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let tokenizer = tokenizer()?;
        let ids = tokenizer
            .encode("<|im_start|>user\nHi<|im_end|>", false)?
            .get_ids()
            .to_vec();
        assert_eq!(ids.first(), Some(&1), "{ids:?}");
        assert_eq!(ids.last(), Some(&2), "{ids:?}");
        assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(2));
        // Special tokens are dropped when decoding an answer.
        assert_eq!(tokenizer.decode(&ids, true)?, "user\nHi");
        Ok(())
    }

    #[test]
    fn text_round_trips_and_digits_split_one_by_one() -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    {
        let tokenizer = tokenizer()?;
        for text in [
            "Hello, world!",
            "  two  spaces\nand a newline",
            "café — naïve ✓",
            "x = 12345;",
        ] {
            let ids = tokenizer.encode(text, false)?.get_ids().to_vec();
            assert_eq!(tokenizer.decode(&ids, false)?, text);
        }
        let digits = tokenizer.encode("12345", false)?;
        assert_eq!(digits.get_ids().len(), 5, "{:?}", digits.get_tokens());
        // A common word is one BPE token, with GPT-2's leading-space marker.
        let word = tokenizer.encode(" the", false)?;
        assert_eq!(word.get_tokens(), ["Ġthe"]);
        Ok(())
    }
}
