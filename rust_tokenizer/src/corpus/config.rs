//! A job's options ([`CorpusConfig`], the JSON the Python command builds) and the two rules they
//! name: which input files a `--partition` reads ([`partition_range`]) and which documents
//! `--holdout` sets aside ([`is_held_out`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::input::{DocPer, InputFormat, Utf8Policy};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Baichuan,
    Megatron,
}

fn d_min_tokens() -> usize {
    20
}
fn d_true() -> bool {
    true
}
fn d_text_field() -> String {
    "text".into()
}
fn d_shard_tokens() -> u64 {
    1 << 28
}
fn d_max_doc_bytes() -> usize {
    256 << 20
}
fn d_chunk_bytes() -> usize {
    1 << 20
}
fn d_prefix() -> String {
    "corpus_text_document".into()
}
fn d_doc_per() -> DocPer {
    DocPer::Line
}
fn d_input_format() -> InputFormat {
    InputFormat::Auto
}
fn d_format() -> OutputFormat {
    OutputFormat::Baichuan
}
fn d_utf8() -> Utf8Policy {
    Utf8Policy::Ignore
}

/// Options of one job (the Python command builds this as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusConfig {
    pub tokenizer: PathBuf,
    pub inputs: Vec<String>,
    pub output: PathBuf,
    /// Encoding threads; 0 means one per available core.
    #[serde(default)]
    pub workers: usize,
    /// Keep a document when its length (EOS included when appended) is at least this.
    #[serde(default = "d_min_tokens")]
    pub min_tokens: usize,
    #[serde(default = "d_true")]
    pub append_eos: bool,
    #[serde(default = "d_doc_per")]
    pub doc_per: DocPer,
    #[serde(default = "d_input_format")]
    pub input_format: InputFormat,
    #[serde(default = "d_text_field")]
    pub text_field: String,
    #[serde(default = "d_format")]
    pub format: OutputFormat,
    /// Baichuan format: a shard is closed once it holds at least this many tokens. Megatron
    /// format: a checkpoint is taken every this many tokens.
    #[serde(default = "d_shard_tokens")]
    pub shard_tokens: u64,
    #[serde(default = "d_utf8")]
    pub invalid_utf8: Utf8Policy,
    /// Strip each document like Python's `str.strip()` (upstream's `line.strip()`).
    #[serde(default = "d_true")]
    pub strip: bool,
    #[serde(default)]
    pub skip_bad_files: bool,
    #[serde(default)]
    pub resume: bool,
    #[serde(default)]
    pub overwrite: bool,
    #[serde(default = "d_max_doc_bytes")]
    pub max_doc_bytes: usize,
    /// Text per work unit handed to a worker.
    #[serde(default = "d_chunk_bytes")]
    pub chunk_bytes: usize,
    /// Megatron output: files are `<output>/<prefix>.bin` and `.idx`.
    #[serde(default = "d_prefix")]
    pub megatron_prefix: String,
    /// Testing aid (0 = off): right after writing its Nth checkpoint (`progress.json`), the
    /// process kills itself with SIGKILL, so resume can be tested at exact points however fast
    /// the machine is. Not part of the fingerprint.
    #[serde(default)]
    pub debug_kill_after_checkpoints: u64,
    /// `"I/N"`: read only the I-th of N contiguous shares of the input files, balanced by bytes
    /// (see [`partition_range`]); `baichuan merge-shards` joins the N outputs.
    #[serde(default)]
    pub partition: Option<String>,
    /// Documents per million held out (by [`is_held_out`]) into `OUT/holdout/`; 0: none.
    #[serde(default)]
    pub holdout_per_million: u32,
}

impl CorpusConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    /// The options that determine the output bytes (not workers, resume, overwrite, chunking).
    pub(super) fn output_options(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "tokenizer": self.tokenizer.to_string_lossy(),
            "inputs": self.inputs,
            "min_tokens": self.min_tokens,
            "append_eos": self.append_eos,
            "doc_per": self.doc_per,
            "input_format": self.input_format,
            "text_field": self.text_field,
            "format": self.format,
            "shard_tokens": self.shard_tokens,
            "invalid_utf8": self.invalid_utf8,
            "strip": self.strip,
            "skip_bad_files": self.skip_bad_files,
            "max_doc_bytes": self.max_doc_bytes,
            "megatron_prefix": self.megatron_prefix,
        });
        // Only when used, so that a plain job's options (and output bytes) stay as they were.
        if let Some(o) = v.as_object_mut() {
            if let Some(p) = &self.partition {
                o.insert("partition".into(), serde_json::Value::String(p.clone()));
            }
            if self.holdout_per_million > 0 {
                o.insert("holdout_per_million".into(), self.holdout_per_million.into());
            }
        }
        v
    }

    /// The parsed `--partition`, if any.
    pub fn partition_spec(&self) -> Result<Option<(usize, usize)>> {
        self.partition.as_deref().map(parse_partition).transpose()
    }

    pub(super) fn validate(&self) -> Result<()> {
        if self.inputs.is_empty() {
            return Err(Error::Config("no inputs".into()));
        }
        if self.shard_tokens == 0 {
            return Err(Error::Config("shard_tokens must be positive".into()));
        }
        if self.chunk_bytes == 0 || self.max_doc_bytes == 0 {
            return Err(Error::Config("chunk_bytes and max_doc_bytes must be positive".into()));
        }
        if self.doc_per == DocPer::File && self.input_format == InputFormat::Jsonl {
            return Err(Error::Config("--doc-per file cannot be used with JSONL input".into()));
        }
        let p = &self.megatron_prefix;
        if p.is_empty() || p.contains('/') || p.contains('\\') || p.starts_with('.') {
            return Err(Error::Config(format!("invalid megatron prefix {p:?}")));
        }
        if self.partition_spec()?.is_some() && self.format == OutputFormat::Megatron {
            return Err(Error::Config("--partition works with the shard format only (merge-shards cannot join Megatron pairs)".into()));
        }
        if self.holdout_per_million > HOLDOUT_SCALE {
            return Err(Error::Config(format!("--holdout must be at most 1 ({} per million given)", self.holdout_per_million)));
        }
        Ok(())
    }
}

/// `--holdout` is kept in units of one document per million.
pub const HOLDOUT_SCALE: u32 = 1_000_000;
/// The sub-directory of the output holding the held-out documents (a shard directory of its own).
pub const HOLDOUT_DIR: &str = "holdout";

/// Parses a partition spec `I/N` (0 <= I < N); the error names it.
pub fn parse_partition(spec: &str) -> Result<(usize, usize)> {
    let bad = |why: &str| Error::Config(format!("--partition {spec}: {why}"));
    let (i, n) = spec.split_once('/').ok_or_else(|| bad("expected I/N, e.g. 0/4 (the first of 4 shares)"))?;
    let num = |t: &str| -> Option<usize> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok()).flatten()
    };
    let (Some(i), Some(n)) = (num(i), num(n)) else {
        return Err(bad("expected I/N with whole numbers, e.g. 0/4 (the first of 4 shares)"));
    };
    if n == 0 {
        return Err(bad("the count N must be at least 1"));
    }
    if i >= n {
        return Err(bad(&format!("the index I must be below N (0 to {})", n - 1)));
    }
    Ok((i, n))
}

/// The files (indices into the ordered input list) of partition `index` of `count`.
///
/// Contiguous in input order, so the partitions' outputs concatenated are a single run's. A file
/// goes to the share its middle byte falls in: file `k` with `before` bytes ahead of it and size
/// `s` is in partition `floor((before + s/2) * count / total)`. A file is never split, so one
/// file larger than `total / count` makes its partition that long and may leave a neighbour
/// empty. With no bytes at all (empty files), files are shared by count.
pub fn partition_range(sizes: &[u64], index: usize, count: usize) -> std::ops::Range<usize> {
    let total: u128 = sizes.iter().map(|&s| s as u128).sum();
    let n = sizes.len();
    let mut before: u128 = 0;
    let mut part = Vec::with_capacity(n);
    for (k, &s) in sizes.iter().enumerate() {
        let p = if total == 0 { k * count / n.max(1) } else { ((2 * before + s as u128) * count as u128 / (2 * total)) as usize };
        part.push(p.min(count - 1));
        before += s as u128;
    }
    let start = part.iter().position(|&p| p >= index).unwrap_or(n);
    let end = part.iter().position(|&p| p > index).unwrap_or(n);
    start..end.max(start)
}

/// A 64-bit key of an input file for [`is_held_out`]: from its name as the manifest shows it.
pub(super) fn holdout_key(name: &str) -> u64 {
    let d = Sha256::digest(name.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Whether document number `ordinal` (counting every document cut from the file, kept or not,
/// from 0) of the file with key `key` is held out at `per_million`. A fixed hash (splitmix64) of
/// both, so the choice depends on neither workers nor partitions nor resumes.
pub fn is_held_out(key: u64, ordinal: u64, per_million: u32) -> bool {
    if per_million == 0 {
        return false;
    }
    let mut z = key ^ ordinal.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % u64::from(HOLDOUT_SCALE) < u64::from(per_million)
}
