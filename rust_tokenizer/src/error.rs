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
    // --- bulk corpus tokenization (issue 3) ---
    /// An input file or pattern that cannot be used (names it).
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    /// An output directory or file that cannot be written or resumed (names it).
    #[error("{path}: {reason}")]
    Output { path: PathBuf, reason: String },
    /// Invalid options for a corpus job.
    #[error("invalid corpus options: {0}")]
    Config(String),
    /// The job was cancelled (Ctrl-C); the output directory can be resumed.
    #[error("cancelled; rerun with --resume to continue")]
    Cancelled,
    /// A bug: a worker thread panicked. Reported instead of crossing into Python.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;
