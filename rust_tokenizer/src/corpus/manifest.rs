//! `manifest.json`: what a finished job (or merge) wrote, with its counts and its inputs
//! (docs/formats.md).

use serde::{Deserialize, Serialize};

use super::input;
use super::megatron::MegatronEntry;
use super::shards::{DType, ShardEntry};

pub const MANIFEST_VERSION: u32 = 1;

/// Per-file (and total) counts, as in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Documents written.
    pub documents: u64,
    /// Documents dropped for having fewer than `min_tokens` tokens (includes `empty`).
    pub dropped: u64,
    /// Dropped documents whose text was empty (after stripping), blank JSONL lines included.
    pub empty: u64,
    /// Tokens written (EOS included).
    pub tokens: u64,
    /// Decompressed input bytes consumed (line terminators included).
    pub bytes: u64,
    /// Maximal invalid UTF-8 byte sequences met (dropped or replaced per `invalid_utf8`).
    pub invalid_utf8: u64,
    /// JSONL lines that are not an object with a string at `text_field` (skipped).
    pub bad_json: u64,
    /// `--holdout`: documents (and their tokens) written to `holdout/` instead of the training
    /// shards (not in `documents`/`tokens`). Absent when 0, so plain manifests are unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holdout_documents: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holdout_tokens: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts) {
        self.documents += o.documents;
        self.dropped += o.dropped;
        self.empty += o.empty;
        self.tokens += o.tokens;
        self.bytes += o.bytes;
        self.invalid_utf8 += o.invalid_utf8;
        self.bad_json += o.bad_json;
        self.holdout_documents += o.holdout_documents;
        self.holdout_tokens += o.holdout_tokens;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    /// On-disk size in bytes (as read).
    pub size: u64,
    pub sha256: Option<String>,
    pub compression: input::Compression,
    pub jsonl: bool,
    /// "ok", or "skipped" (unreadable with --skip-bad-files; documents read before the error are kept).
    pub status: String,
    pub error: Option<String>,
    /// First bad JSONL line, "byte OFFSET: reason".
    pub first_bad_json: Option<String>,
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub path: String,
    pub sha256: String,
    pub vocab_size: usize,
    pub eos_id: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotalCounts {
    #[serde(flatten)]
    pub counts: Counts,
    pub files: u64,
    pub bad_files: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub dtype: DType,
    pub tokenizer: TokenizerInfo,
    pub append_eos: bool,
    pub min_tokens: usize,
    pub shards: Vec<ShardEntry>,
    pub megatron: Option<MegatronEntry>,
    pub counts: TotalCounts,
    pub inputs: Vec<FileEntry>,
    pub options: serde_json::Value,
    pub fingerprint: String,
    /// `--partition`: which share of which input list this is (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionInfo>,
    /// `--holdout`: where the held-out documents are (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<HoldoutInfo>,
}

impl Manifest {
    /// The manifest of the held-out directory (`--holdout`) that goes with this one: the same job
    /// (tokenizer, options, fingerprint, partition) holding the held-out `shards`, counting only the
    /// held-out documents and tokens, with no input files and no Megatron pair. `format` and
    /// `dtype` are the held-out shards' (the shard format, also beside Megatron output); `holdout`
    /// points back at this output.
    pub(super) fn holdout_of(&self, format: String, dtype: DType, shards: Vec<ShardEntry>, holdout: Option<HoldoutInfo>) -> Manifest {
        let c = &self.counts.counts;
        Manifest {
            format,
            dtype,
            shards,
            megatron: None,
            counts: TotalCounts {
                counts: Counts { documents: c.holdout_documents, tokens: c.holdout_tokens, ..Counts::default() },
                files: 0,
                bad_files: 0,
            },
            inputs: Vec::new(),
            holdout,
            ..self.clone()
        }
    }
}

/// A partition's place in the whole job, recorded in its manifest for `merge-shards`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub index: usize,
    pub count: usize,
    /// Files in the whole input list (all partitions).
    pub total_files: usize,
    /// Position in the whole list of this partition's first file.
    pub first_file: usize,
    /// sha256 of the whole input list: every file's canonical path and size, in order.
    pub inputs_sha256: String,
    /// The `fingerprint` a single run of the whole job has (the merged manifest's).
    pub whole_fingerprint: String,
}

/// `--holdout`: the rate, and the other directory (`holdout` from the training output, `..` from
/// the held-out one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldoutInfo {
    pub per_million: u32,
    pub path: String,
}
