//! Byte-identical SentencePiece BPE tokenizer (see `../shared/notes/sentencepiece-bpe.md` for the
//! behaviour it reproduces) and the bulk corpus tokenization pipeline.
//!
//! This crate knows nothing of Python: the bindings live in `py.rs` behind the `python` feature.

pub mod error;
pub mod tokenizer;
// bulk corpus tokenization (issue 3)
pub mod corpus;
pub mod input;
pub mod megatron;
pub mod shards;

mod bpe;
mod cache;
mod fxhash;
mod normalizer;
mod prefix;
mod proto;

#[cfg(feature = "python")]
mod py;
#[cfg(feature = "python")]
mod py_corpus;

pub use error::{Error, Result};
pub use tokenizer::Tokenizer;
