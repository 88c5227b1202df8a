//! The crate's one error enum. The Python bindings map each variant to a Python exception once.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: invalid SentencePiece model: {reason}")]
    InvalidModel { origin: String, reason: String },
    #[error("{origin}: unsupported model type {model_type} (only BPE models are supported)")]
    UnsupportedModelType { origin: String, model_type: String },
    #[error("piece id {id} is out of range (vocabulary size {vocab_size})")]
    IdOutOfRange { id: i64, vocab_size: usize },
}

pub type Result<T> = std::result::Result<T, Error>;
