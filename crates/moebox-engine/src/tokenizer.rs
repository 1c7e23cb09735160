//! `tokenizer.json` through Hugging Face `tokenizers`, and incremental detokenisation for
//! streaming.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("cannot tokenize the prompt: {0}")]
    Encode(String),
    #[error("cannot decode tokens: {0}")]
    Decode(String),
}

/// A loaded tokenizer; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_model_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| TokenizerError::Load {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { inner })
    }

    /// Encodes text as the model's exporter does: the tokenizer's own post-processor decides
    /// whether a BOS is added; special tokens written in the text (by a chat template) are
    /// recognised as such.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Decodes ids to text, leaving out special tokens (EOS, chat markers).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Turns a stream of token ids into a stream of text chunks. A chunk is released only when it
/// ends on a whole UTF-8 character, so a multi-byte character split across tokens is never
/// sent in halves.
///
/// It decodes a short window of recent tokens twice (with and without the newest) and emits the
/// difference: decoders such as SentencePiece's need the preceding token to place spaces.
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token; returns the text that became final, possibly empty.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with(char::REPLACEMENT_CHARACTER) {
            let chunk = match full.get(prefix.len()..) {
                Some(chunk) if full.starts_with(prefix.as_str()) => chunk.to_owned(),
                // The decoder rewrote earlier text (rare normalisers): send what is new by chars.
                _ => full.chars().skip(prefix.chars().count()).collect(),
            };
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(chunk)
        } else {
            Ok(String::new())
        }
    }

    /// End of the stream: whatever is held back (an incomplete character decodes to U+FFFD).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String, TokenizerError> {
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(match full.get(prefix.len()..) {
            Some(rest) if full.starts_with(prefix.as_str()) => rest.to_owned(),
            _ => full.chars().skip(prefix.chars().count()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Tokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-moe");
        Tokenizer::from_model_dir(&dir).expect("fixture tokenizer loads")
    }

    #[test]
    fn round_trips_text() {
        let tokenizer = fixture();
        let text = "The ledger balances. Café — 漢字 🎉";
        let ids = tokenizer.encode(text).expect("encodes");
        assert_eq!(tokenizer.decode(&ids).expect("decodes"), text);
    }

    #[test]
    fn streaming_never_splits_a_character_and_rebuilds_the_text() {
        let tokenizer = fixture();
        let text = "naïve café, 漢字かな, emoji 🎉🚀 and plain ascii.";
        let ids = tokenizer.encode(text).expect("encodes");
        let mut decoder = IncrementalDecoder::new();
        let mut chunks = Vec::new();
        for &id in &ids {
            let chunk = decoder.push(&tokenizer, id).expect("decodes");
            assert!(
                !chunk.contains(char::REPLACEMENT_CHARACTER),
                "split char in {chunk:?}"
            );
            chunks.push(chunk);
        }
        chunks.push(decoder.finish(&tokenizer).expect("finishes"));
        assert_eq!(chunks.concat(), text);
        // The text has multi-byte characters spread over several byte-level tokens, so some
        // pushes must have held text back.
        assert!(ids.len() > chunks.iter().filter(|c| !c.is_empty()).count());
    }

    #[test]
    fn byte_tokens_of_one_character_are_held_until_complete() {
        let tokenizer = fixture();
        // Encode a rare 4-byte character: a byte-level BPE with a 512 vocabulary has no merge
        // for it, so it arrives as several byte tokens.
        let ids = tokenizer.encode("𝄞").expect("encodes");
        assert!(ids.len() > 1, "expected byte tokens, got {ids:?}");
        let mut decoder = IncrementalDecoder::new();
        for &id in &ids[..ids.len() - 1] {
            assert_eq!(decoder.push(&tokenizer, id).expect("decodes"), "");
        }
        assert_eq!(
            decoder
                .push(&tokenizer, ids[ids.len() - 1])
                .expect("decodes"),
            "𝄞"
        );
    }

    #[test]
    fn incomplete_character_at_the_end_is_flushed_as_replacement() {
        let tokenizer = fixture();
        let ids = tokenizer.encode("𝄞").expect("encodes");
        let mut decoder = IncrementalDecoder::new();
        assert_eq!(decoder.push(&tokenizer, ids[0]).expect("decodes"), "");
        assert_eq!(decoder.finish(&tokenizer).expect("finishes"), "\u{FFFD}");
    }

    #[test]
    fn missing_tokenizer_names_the_path() {
        let err = Tokenizer::from_model_dir(Path::new("/nonexistent")).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/tokenizer.json"),
            "{err}"
        );
    }
}
