//! Placeholder for the public Rust API of the tokenizer (issue 2 replaces the body; the signatures
//! are the contract other modules code against).

use std::path::Path;

use crate::error::{Error, Result};

/// A loaded SentencePiece BPE model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pieces: Vec<String>,
}

impl Tokenizer {
    /// Reads a SentencePiece `.model` file (a serialized `ModelProto`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses a serialized `ModelProto`; `origin` names it in errors (usually the file path).
    pub fn from_bytes(_bytes: &[u8], origin: &str) -> Result<Self> {
        Err(Error::InvalidModel { origin: origin.to_string(), reason: "not implemented yet".into() })
    }

    /// Encodes text exactly as `SentencePieceProcessor.encode(text)` does (no BOS/EOS).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_bytes(text.as_bytes())
    }

    /// Encodes raw bytes (invalid UTF-8 is handled as SentencePiece does: U+FFFD per bad byte).
    pub fn encode_bytes(&self, _text: &[u8]) -> Vec<u32> {
        Vec::new()
    }

    /// Decodes ids exactly as `SentencePieceProcessor.decode(ids)` does.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        for &id in ids {
            if id as usize >= self.pieces.len() {
                return Err(Error::IdOutOfRange { id: id as i64, vocab_size: self.pieces.len() });
            }
        }
        Ok(String::new())
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        None
    }
    pub fn eos_id(&self) -> Option<u32> {
        None
    }
    pub fn unk_id(&self) -> Option<u32> {
        None
    }
    pub fn pad_id(&self) -> Option<u32> {
        None
    }
}
