//! Byte-identical SentencePiece BPE tokenizer (see `docs/sentencepiece-behaviour.md` for the
//! behaviour it reproduces) and the bulk corpus tokenization pipeline.
//!
//! This crate knows nothing of Python: the bindings live in `py.rs` behind the `python` feature.

pub mod batch;
pub mod error;
pub mod tokenizer;

// bulk corpus tokenization (issue 3): the job, its input reading and its output formats
pub mod corpus;

mod bpe;
mod cache;
mod fxhash;
mod normalizer;
mod prefix;
mod proto;
mod vocab;

#[cfg(feature = "python")]
mod py;
#[cfg(feature = "python")]
mod py_corpus;

/// Entry points for the fuzz targets in `fuzz/` and the randomized tests (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    /// The normalizer's `precompiled_charsmap` of a serialized model, if it parses.
    pub fn charsmap_of_model(model: &[u8]) -> Option<Vec<u8>> {
        crate::proto::parse_model(model).ok().map(|m| m.normalizer.precompiled_charsmap)
    }

    /// Parses a charsmap blob and, if valid, normalizes `text` with it under every flag
    /// combination. Must never panic.
    pub fn charsmap(blob: &[u8], text: &[u8]) {
        if let Ok(cm) = crate::normalizer::CharsMap::parse(blob) {
            let mut n = crate::normalizer::Normalizer {
                charsmap: Some(cm),
                add_dummy_prefix: false,
                remove_extra_whitespaces: false,
                escape_whitespaces: false,
                treat_whitespace_as_suffix: false,
            };
            let mut out = Vec::new();
            for flags in 0..16u8 {
                n.add_dummy_prefix = flags & 1 != 0;
                n.remove_extra_whitespaces = flags & 2 != 0;
                n.escape_whitespaces = flags & 4 != 0;
                n.treat_whitespace_as_suffix = flags & 8 != 0;
                n.normalize(text, None, &mut out);
            }
        }
    }
}

pub use error::{Error, Result};
pub use tokenizer::Tokenizer;
