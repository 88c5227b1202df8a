//! The bulk corpus tokenizer behind `baichuan tokenize`.
//!
//! One reader thread reads the input files in order (decompressing, hashing, cutting documents)
//! and groups documents into chunks numbered 0, 1, 2, ...; `workers` threads decode and encode
//! whole chunks; the calling thread takes the encoded chunks back **in chunk order** and writes
//! them. So the output bytes depend only on the inputs and the options, never on `workers` or
//! scheduling. At most `2 * workers + 2` chunks (each about `chunk_bytes` of text) exist at any
//! time, which bounds memory whatever the corpus size.
//!
//! Durability and resume: shards are written under `.tmp` names and renamed when complete and
//! fsynced; after each shard (or, for Megatron output, each `shard_tokens` tokens) the job writes
//! `progress.json` atomically with the position in the input (file, end offset of the last
//! document) and the counts so far. `--resume` cuts back to that point and continues; the
//! manifest is written last. See docs/formats.md.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use input::{hex, DocPer, DocSpan, InputFormat, Splitter, Utf8Policy};
use megatron::{MegatronCheckpoint, MegatronEntry, MegatronWriter};
use shards::{io_err, write_json_atomic, DType, ShardEntry, ShardWriter};

pub mod input;
pub mod megatron;
pub mod merge;
pub mod shards;

pub const MANIFEST: &str = "manifest.json";
pub const PROGRESS: &str = "progress.json";
/// Held (flock) while a job writes the directory; removed at the end.
pub const LOCK: &str = ".tokenize.lock";
pub const MANIFEST_VERSION: u32 = 1;

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
    fn output_options(&self) -> serde_json::Value {
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

    fn validate(&self) -> Result<()> {
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
fn holdout_key(name: &str) -> u64 {
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

/// The shard format's dtype for a vocabulary.
fn shard_dtype(vocab: usize) -> DType {
    if vocab <= 65536 {
        DType::Uint16
    } else {
        DType::Uint32
    }
}

/// What a job needs from a tokenizer (the real one, or a simple one in tests).
pub trait Encode: Sync {
    /// Appends the ids of `text` to `out`.
    fn encode_into(&self, text: &str, out: &mut Vec<u32>);
    fn vocab_size(&self) -> usize;
    fn eos_id(&self) -> Option<u32>;
}

impl Encode for Tokenizer {
    fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        Tokenizer::encode_into(self, text.as_bytes(), out)
    }
    fn vocab_size(&self) -> usize {
        Tokenizer::vocab_size(self)
    }
    fn eos_id(&self) -> Option<u32> {
        Tokenizer::eos_id(self)
    }
}

/// Live counters for a progress bar (read from another thread).
#[derive(Debug, Default)]
pub struct Progress {
    /// On-disk (possibly compressed) input bytes read so far.
    pub raw_bytes_read: AtomicU64,
    /// On-disk size of all inputs.
    pub raw_bytes_total: AtomicU64,
    /// Bytes already covered by a previous run when resuming.
    pub raw_bytes_skipped: AtomicU64,
    /// Decompressed text bytes written out (kept or dropped).
    pub text_bytes: AtomicU64,
    pub documents: AtomicU64,
    pub dropped: AtomicU64,
    pub tokens: AtomicU64,
    pub files_done: AtomicU64,
    pub files_total: AtomicU64,
    pub cancel: AtomicBool,
    /// Warnings for the user (one line each, naming the file), taken by the caller as they come.
    pub warnings: Mutex<Vec<String>>,
}

impl Progress {
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn warn(&self, message: String) {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).push(message);
    }

    /// The warnings given since the last call.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

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
    fn add(&mut self, o: &Counts) {
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

/// The held-out shards in a checkpoint: those finished, and the one being written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HoldoutState {
    shards: Vec<ShardEntry>,
    current: Option<shards::ShardCheckpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Partial {
    file: usize,
    end: u64,
    counts: Counts,
    first_bad_json: Option<String>,
}

/// `progress.json`: everything needed to continue after the last checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    version: u32,
    fingerprint: String,
    shards: Vec<ShardEntry>,
    megatron: Option<MegatronCheckpoint>,
    files: Vec<FileEntry>,
    partial: Option<Partial>,
    /// Megatron only: all input is written and the pair is being finished.
    finishing: bool,
    /// What the job is, independent of how its paths were spelled (absent in files written
    /// before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<JobRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holdout: Option<HoldoutState>,
}

/// One input file of a job, as spelled and as it is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct InputRecord {
    /// As found from the command line (what the manifest shows).
    path: String,
    /// Canonical (absolute, links resolved).
    canonical: String,
    size: u64,
    mtime: String,
    compression: input::Compression,
    jsonl: bool,
}

/// What identifies a job for `--resume` (progress.json): the tokenizer's content, the output
/// options and the input files by canonical path, size and mtime; plus the spellings of the
/// run that started it, which a resumed run keeps so that its output is byte-identical.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    tokenizer_path: String,
    tokenizer_sha256: String,
    /// `CorpusConfig::output_options` as spelled.
    options: serde_json::Value,
    inputs: Vec<InputRecord>,
}

/// CLI names of the output options, for messages.
fn option_flag(key: &str) -> String {
    match key {
        "append_eos" => "--no-eos".into(),
        "strip" => "--no-strip".into(),
        "shard_tokens" => "--shard-size".into(),
        "invalid_utf8" => "--invalid-utf8".into(),
        "holdout_per_million" => "--holdout (per million)".into(),
        k => format!("--{}", k.replace('_', "-")),
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// The output options other than the tokenizer's and inputs' spellings.
fn spelling_free(options: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut v: Vec<(String, serde_json::Value)> = options
        .as_object()
        .map(|o| o.iter().filter(|(k, _)| *k != "tokenizer" && *k != "inputs").map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// How the options of two jobs differ (spellings of paths aside), one phrase per option.
fn options_difference(then: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let (a, b) = (spelling_free(then), spelling_free(now));
    let mut out = Vec::new();
    for (k, v) in &b {
        let old = a.iter().find(|(ka, _)| ka == k).map(|(_, va)| va.clone()).unwrap_or(serde_json::Value::Null);
        if &old != v {
            out.push(format!("{} was {old} and is now {v}", option_flag(k)));
        }
    }
    out
}

impl JobRecord {
    /// What differs between the job that wrote the progress file (`self`) and this run (`now`),
    /// or None when they are the same job however spelled.
    fn difference(&self, now: &JobRecord) -> Option<String> {
        let mut why = Vec::new();
        if self.tokenizer_sha256 != now.tokenizer_sha256 {
            why.push(format!(
                "the tokenizer differs ({} has sha256 {}..., the job was started with {}, sha256 {}...)",
                now.tokenizer_path,
                short(&now.tokenizer_sha256),
                self.tokenizer_path,
                short(&self.tokenizer_sha256)
            ));
        }
        why.extend(options_difference(&self.options, &now.options));
        why.extend(inputs_difference(&self.inputs, &now.inputs));
        if why.is_empty() {
            None
        } else {
            const SHOWN: usize = 4;
            let n = why.len();
            why.truncate(SHOWN);
            let mut s = why.join("; ");
            if n > SHOWN {
                s.push_str(&format!("; and {} more difference(s)", n - SHOWN));
            }
            Some(s)
        }
    }
}

/// How two input lists differ, by canonical path, order, size, mtime and how they are read.
fn inputs_difference(then: &[InputRecord], now: &[InputRecord]) -> Vec<String> {
    let mut why = Vec::new();
    for t in then {
        if !now.iter().any(|n| n.canonical == t.canonical) {
            why.push(format!("input {} ({}) is no longer among the inputs", t.path, t.canonical));
        }
    }
    for n in now {
        match then.iter().find(|t| t.canonical == n.canonical) {
            None => why.push(format!("input {} ({}) is new", n.path, n.canonical)),
            Some(t) => {
                if t.size != n.size {
                    why.push(format!("input {} changed since (size {} then, {} now)", n.path, t.size, n.size));
                } else if t.mtime != n.mtime {
                    why.push(format!("input {} was modified since", n.path));
                }
                if (t.compression, t.jsonl) != (n.compression, n.jsonl) {
                    why.push(format!("input {} is read as another kind of file than {} (its name)", n.path, t.path));
                }
            }
        }
    }
    if why.is_empty() && then.iter().map(|t| &t.canonical).ne(now.iter().map(|n| &n.canonical)) {
        let i = then.iter().zip(now).position(|(t, n)| t.canonical != n.canonical).unwrap_or(0);
        why.push(format!("the inputs come in another order (position {}: {} then, {} now)", i + 1, then[i].path, now[i].path));
    }
    why
}

/// Why a finished job's manifest does not describe the job of `now` (paths' spellings aside),
/// comparing the input files' contents with the recorded sha256. None: the same job.
fn manifest_difference(m: &Manifest, now: &JobRecord) -> Result<Option<String>> {
    let mut why = Vec::new();
    if m.tokenizer.sha256 != now.tokenizer_sha256 {
        why.push(format!(
            "the tokenizer differs ({} has sha256 {}..., the job used {}, sha256 {}...)",
            now.tokenizer_path,
            short(&now.tokenizer_sha256),
            m.tokenizer.path,
            short(&m.tokenizer.sha256)
        ));
    }
    why.extend(options_difference(&m.options, &now.options));
    if m.inputs.len() != now.inputs.len() {
        why.push(format!("{} input files then, {} now", m.inputs.len(), now.inputs.len()));
    } else {
        for (t, n) in m.inputs.iter().zip(&now.inputs) {
            if t.size != n.size || (t.compression, t.jsonl) != (n.compression, n.jsonl) {
                why.push(format!("input {} is not the job's {} (size or kind differs)", n.path, t.path));
            }
        }
        if why.is_empty() {
            // Same sizes: compare contents (reads the inputs once).
            for (t, n) in m.inputs.iter().zip(&now.inputs) {
                let Some(want) = &t.sha256 else { continue };
                if &sha256_file(Path::new(&n.path))? != want {
                    why.push(format!("input {} has other contents than the job's {}", n.path, t.path));
                    break;
                }
            }
        }
    }
    Ok(if why.is_empty() { None } else { Some(why.join("; ")) })
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Runs a job with the tokenizer named in the config.
pub fn run(cfg: &CorpusConfig, progress: &Progress) -> Result<Manifest> {
    let bytes = std::fs::read(&cfg.tokenizer).map_err(io_err(&cfg.tokenizer))?;
    let tok = Tokenizer::from_bytes(&bytes, &cfg.tokenizer.display().to_string())?;
    let sha = hex(&Sha256::digest(&bytes));
    run_with(cfg, &tok, &sha, progress)
}

// ---------------------------------------------------------------- pipeline items

enum Item {
    Doc { file: u32, start: usize, len: usize, span: DocSpan, held: bool },
    FileEnd { file: u32, sha256: String, size: u64 },
    Bad { file: u32, error: String },
    Fatal(Error),
}

struct Chunk {
    seq: u64,
    data: Vec<u8>,
    items: Vec<Item>,
}

enum Outcome {
    Kept { ntok: usize },
    Dropped,
    Empty,
    BadJson(String),
}

enum OutItem {
    Doc { file: u32, span: DocSpan, invalid_utf8: u64, outcome: Outcome, held: bool },
    FileEnd { file: u32, sha256: String, size: u64 },
    Bad { file: u32, error: String },
    Fatal(Error),
}

struct Encoded {
    seq: u64,
    items: Vec<OutItem>,
    tokens: Vec<u32>,
}

struct InputFile {
    /// Where to read it.
    path: PathBuf,
    /// How the manifest names it (the spelling of the run that started the job).
    name: String,
    size: u64,
    jsonl: bool,
}

fn is_our_file(name: &str, prefix: &str) -> bool {
    name == MANIFEST
        || name == PROGRESS
        || name.starts_with(&format!("{MANIFEST}{}", shards::TMP_SUFFIX))
        || name.starts_with(&format!("{PROGRESS}{}", shards::TMP_SUFFIX))
        || (name.starts_with("shard-") && (name.contains(".bin") || name.contains(".idx")))
        || name.starts_with(&format!("{prefix}."))
}

fn our_files(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if is_our_file(&name, prefix) {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Our files in `OUT/holdout/` (none when it does not exist).
fn holdout_files(out: &Path) -> Result<Vec<PathBuf>> {
    let dir = out.join(HOLDOUT_DIR);
    if dir.is_dir() {
        our_files(&dir, "\0")
    } else {
        Ok(Vec::new())
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&text).map_err(|e| Error::Output { path: path.to_path_buf(), reason: format!("unreadable: {e}") })
}

/// Runs a job with a given encoder; `tokenizer_sha256` identifies it in the manifest.
pub fn run_with<E: Encode>(cfg: &CorpusConfig, enc: &E, tokenizer_sha256: &str, progress: &Progress) -> Result<Manifest> {
    cfg.validate()?;
    let vocab = enc.vocab_size();
    if vocab == 0 {
        return Err(Error::Config(format!("{}: the tokenizer has an empty vocabulary", cfg.tokenizer.display())));
    }
    let eos = if cfg.append_eos {
        Some(enc.eos_id().ok_or_else(|| {
            Error::Config(format!("{}: the tokenizer has no EOS piece; use --no-eos", cfg.tokenizer.display()))
        })?)
    } else {
        None
    };
    let dtype = match cfg.format {
        OutputFormat::Baichuan => {
            if vocab <= 65536 {
                DType::Uint16
            } else {
                DType::Uint32
            }
        }
        OutputFormat::Megatron => megatron::megatron_dtype(vocab),
    };
    let workers = if cfg.workers == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        cfg.workers
    };

    // Inputs, with what identifies their content for resume.
    let found = input::discover_excluding(&cfg.inputs, Some(&cfg.output))?;
    for w in input::skipped_warnings(&found.skipped) {
        progress.warn(w);
    }
    let paths = found.files;
    if paths.is_empty() {
        if let Some(s) = found.skipped.first() {
            return Err(Error::Input {
                path: PathBuf::from(&cfg.inputs[0]),
                reason: format!(
                    "nothing to read: the inputs hold only our own outputs ({} and {} more; see the warnings)",
                    s.path.display(),
                    found.skipped.len() - 1
                ),
            });
        }
        return Err(Error::Config("the inputs name no file".into()));
    }
    let mut files = Vec::with_capacity(paths.len());
    let mut ident = Vec::with_capacity(paths.len());
    let mut records = Vec::with_capacity(paths.len());
    for p in paths {
        let (size, mtime) = match std::fs::metadata(&p) {
            Ok(m) => {
                let mt = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
                (m.len(), mt)
            }
            Err(source) if cfg.skip_bad_files => {
                let _ = source;
                (0, 0)
            }
            Err(source) => return Err(Error::Io { path: p, source }),
        };
        ident.push(serde_json::json!([p.to_string_lossy(), size, mtime.to_string()]));
        let jsonl = input::is_jsonl(&p, cfg.input_format);
        let canonical = p.canonicalize().or_else(|_| std::path::absolute(&p)).unwrap_or_else(|_| p.clone());
        records.push(InputRecord {
            path: p.to_string_lossy().into_owned(),
            canonical: canonical.to_string_lossy().into_owned(),
            size,
            mtime: mtime.to_string(),
            compression: input::Compression::from_path(&p),
            jsonl,
        });
        files.push(InputFile { name: p.to_string_lossy().into_owned(), path: p, size, jsonl });
    }
    let options = cfg.output_options();
    let fingerprint_of = |options: &serde_json::Value, ident: &[serde_json::Value]| {
        let v = serde_json::json!({"options": options, "tokenizer_sha256": tokenizer_sha256, "inputs": ident, "version": MANIFEST_VERSION});
        hex(&Sha256::digest(v.to_string().as_bytes()))
    };
    // --partition: this job is a contiguous share of the whole list; record the whole.
    let mut partition = None;
    if let Some((index, count)) = cfg.partition_spec()? {
        let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
        let range = partition_range(&sizes, index, count);
        let listed: Vec<serde_json::Value> = records.iter().map(|r| serde_json::json!([r.canonical, r.size])).collect();
        let mut whole_options = options.clone();
        if let Some(o) = whole_options.as_object_mut() {
            o.remove("partition");
        }
        partition = Some(PartitionInfo {
            index,
            count,
            total_files: files.len(),
            first_file: range.start,
            inputs_sha256: hex(&Sha256::digest(serde_json::Value::Array(listed).to_string().as_bytes())),
            whole_fingerprint: fingerprint_of(&whole_options, &ident),
        });
        files = files.drain(range.clone()).collect();
        ident = ident.drain(range.clone()).collect();
        records = records.drain(range).collect();
    }
    let job = JobRecord {
        tokenizer_path: cfg.tokenizer.to_string_lossy().into_owned(),
        tokenizer_sha256: tokenizer_sha256.to_string(),
        options: options.clone(),
        inputs: records,
    };
    let fingerprint = fingerprint_of(&options, &ident);
    progress.files_total.store(files.len() as u64, Ordering::Relaxed);
    progress.raw_bytes_total.store(files.iter().map(|f| f.size).sum(), Ordering::Relaxed);

    // Output directory and what a previous run left there.
    let out = &cfg.output;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    // One job per directory: an advisory lock, released by the OS if the process dies.
    let lock_p = out.join(LOCK);
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_p).map_err(io_err(&lock_p))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Error::Output { path: out.clone(), reason: "another tokenize job is writing here".into() })
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(Error::Io { path: lock_p, source }),
    }
    // (The lock file stays: removing it would let a waiting job lock a file no one else sees.)
    let result = run_locked(cfg, enc, progress, files, job, fingerprint, vocab, eos, dtype, workers, partition);
    drop(lock);
    result
}

#[allow(clippy::too_many_arguments)]
fn run_locked<E: Encode>(
    cfg: &CorpusConfig,
    enc: &E,
    progress: &Progress,
    mut files: Vec<InputFile>,
    mut job: JobRecord,
    mut fingerprint: String,
    vocab: usize,
    eos: Option<u32>,
    dtype: DType,
    workers: usize,
    partition: Option<PartitionInfo>,
) -> Result<Manifest> {
    let out = &cfg.output;
    if let Ok(out_abs) = out.canonicalize() {
        for f in &files {
            if f.path.canonicalize().map(|p| p.starts_with(&out_abs)).unwrap_or(false) {
                return Err(Error::Input {
                    path: f.path.clone(),
                    reason: format!("is inside the output directory {}; choose an output outside the inputs", out.display()),
                });
            }
        }
    }
    let manifest_p = out.join(MANIFEST);
    let progress_p = out.join(PROGRESS);
    let prefix_p = out.join(&cfg.megatron_prefix);
    if cfg.overwrite {
        for f in our_files(out, &cfg.megatron_prefix)?.into_iter().chain(holdout_files(out)?) {
            remove(&f)?;
        }
        let _ = std::fs::remove_dir(out.join(HOLDOUT_DIR)); // only when left empty
    }
    if manifest_p.exists() {
        let m: Manifest = read_json(&manifest_p)?;
        if !cfg.resume {
            return Err(Error::Output { path: out.clone(), reason: "already holds a finished job; use --overwrite to replace it".into() });
        }
        if m.fingerprint != fingerprint {
            if let Some(why) = manifest_difference(&m, &job)? {
                return Err(Error::Output {
                    path: out.clone(),
                    reason: format!("holds a finished job with other inputs or options: {why}; use --overwrite to replace it"),
                });
            }
        }
        remove(&progress_p)?;
        let lp = MegatronWriter::lengths_tmp(&prefix_p);
        remove(&lp)?;
        return Ok(m);
    }
    let mut state: Option<State> = None;
    if progress_p.exists() {
        if !cfg.resume {
            return Err(Error::Output {
                path: out.clone(),
                reason: "holds an interrupted job; use --resume to continue it or --overwrite to start again".into(),
            });
        }
        let s: State = read_json(&progress_p)?;
        if s.fingerprint != fingerprint {
            let Some(then) = s.job.clone() else {
                return Err(Error::Output {
                    path: progress_p.clone(),
                    reason: "was written for other inputs, input contents, tokenizer or options (by an older version, \
                             which does not record which); cannot resume (use --overwrite to start again)"
                        .into(),
                });
            };
            if let Some(why) = then.difference(&job) {
                return Err(Error::Output {
                    path: progress_p.clone(),
                    reason: format!("was written for another job: {why}; cannot resume (use --overwrite to start again)"),
                });
            }
            // The same job, spelled otherwise: continue it as it was started, so that the
            // output is byte-identical to an uninterrupted run.
            for (f, r) in files.iter_mut().zip(&then.inputs) {
                f.name = r.path.clone();
            }
            fingerprint = s.fingerprint.clone();
            job = then;
        }
        state = Some(s);
    } else if !cfg.resume && (!our_files(out, &cfg.megatron_prefix)?.is_empty() || !holdout_files(out)?.is_empty()) {
        return Err(Error::Output { path: out.clone(), reason: "already holds shard files; use --resume or --overwrite".into() });
    }
    // Cut back to the checkpoint: drop everything not recorded as complete.
    let keep_shards: Vec<String> = state.as_ref().map(|s| s.shards.iter().flat_map(|e| [e.bin.clone(), e.idx.clone()]).collect()).unwrap_or_default();
    let keep_mega = state.as_ref().map(|s| s.megatron.is_some()).unwrap_or(false);
    for f in our_files(out, &cfg.megatron_prefix)? {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let keep = name == PROGRESS
            || keep_shards.contains(&name)
            || (keep_mega
                && (f == MegatronWriter::bin_tmp(&prefix_p) || f == MegatronWriter::lengths_tmp(&prefix_p)
                    || (state.as_ref().map(|s| s.finishing).unwrap_or(false) && name == format!("{}.bin", cfg.megatron_prefix))));
        if !keep {
            remove(&f)?;
        }
    }
    // The held-out shards likewise: keep those recorded, and the one being written (cut back
    // to its recorded length when it is reopened).
    let hs = state.as_ref().and_then(|s| s.holdout.clone()).unwrap_or_default();
    let mut keep_holdout: Vec<String> = hs.shards.iter().flat_map(|e| [e.bin.clone(), e.idx.clone()]).collect();
    if let Some(cp) = &hs.current {
        let (b, i) = shards::shard_name(cp.index);
        keep_holdout.extend([format!("{b}{}", shards::TMP_SUFFIX), format!("{i}{}", shards::TMP_SUFFIX), b, i]);
    }
    for f in holdout_files(out)? {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !keep_holdout.contains(&name) {
            remove(&f)?;
        }
    }
    let state = state.unwrap_or(State {
        version: MANIFEST_VERSION,
        fingerprint: fingerprint.clone(),
        shards: Vec::new(),
        megatron: None,
        files: Vec::new(),
        partial: None,
        finishing: false,
        job: None,
        holdout: None,
    });

    let ctx = Ctx { cfg, files: &files, job: &job, dtype, cfg_vocab: vocab, eos, progress, out, progress_p: &progress_p, prefix_p: &prefix_p };
    let (shards_done, mega_entry, file_entries, holdout_shards) = if state.finishing {
        let at = state.megatron.unwrap_or_default();
        let e = megatron::finish_files(&prefix_p, dtype, at)?;
        (Vec::new(), Some(e), state.files.clone(), state.holdout.map(|h| h.shards))
    } else {
        pipeline(&ctx, enc, workers, state)?
    };

    let mut total = Counts::default();
    for f in &file_entries {
        total.add(&f.counts);
    }
    let manifest = Manifest {
        format: match cfg.format {
            OutputFormat::Baichuan => "baichuan-shards".into(),
            OutputFormat::Megatron => "megatron-mmap".into(),
        },
        version: MANIFEST_VERSION,
        dtype,
        tokenizer: TokenizerInfo {
            path: job.tokenizer_path.clone(),
            sha256: job.tokenizer_sha256.clone(),
            vocab_size: vocab,
            eos_id: enc.eos_id(),
        },
        append_eos: cfg.append_eos,
        min_tokens: cfg.min_tokens,
        shards: shards_done,
        megatron: mega_entry,
        counts: TotalCounts {
            counts: total,
            files: file_entries.len() as u64,
            bad_files: file_entries.iter().filter(|f| f.status != "ok").count() as u64,
        },
        inputs: file_entries,
        options: job.options.clone(),
        fingerprint,
        partition,
        holdout: (cfg.holdout_per_million > 0)
            .then(|| HoldoutInfo { per_million: cfg.holdout_per_million, path: HOLDOUT_DIR.into() }),
    };
    if cfg.holdout_per_million > 0 {
        // The held-out documents: a shard directory of their own, written before the main manifest.
        let c = &manifest.counts.counts;
        let held = Manifest {
            format: "baichuan-shards".into(),
            dtype: shard_dtype(vocab),
            shards: holdout_shards.unwrap_or_default(),
            megatron: None,
            counts: TotalCounts {
                counts: Counts { documents: c.holdout_documents, tokens: c.holdout_tokens, ..Counts::default() },
                files: 0,
                bad_files: 0,
            },
            inputs: Vec::new(),
            holdout: Some(HoldoutInfo { per_million: cfg.holdout_per_million, path: "..".into() }),
            ..manifest.clone()
        };
        let dir = out.join(HOLDOUT_DIR);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        write_json_atomic(&dir.join(MANIFEST), &held)?;
    }
    write_json_atomic(&manifest_p, &manifest)?;
    remove(&progress_p)?;
    remove(&MegatronWriter::lengths_tmp(&prefix_p))?;
    shards::sync_dir(out)?;
    Ok(manifest)
}

struct Ctx<'a> {
    cfg: &'a CorpusConfig,
    files: &'a [InputFile],
    job: &'a JobRecord,
    dtype: DType,
    /// The tokenizer's vocabulary size.
    cfg_vocab: usize,
    eos: Option<u32>,
    progress: &'a Progress,
    out: &'a Path,
    progress_p: &'a Path,
    prefix_p: &'a Path,
}

type PipelineOut = (Vec<ShardEntry>, Option<MegatronEntry>, Vec<FileEntry>, Option<Vec<ShardEntry>>);

fn pipeline<E: Encode>(ctx: &Ctx<'_>, enc: &E, workers: usize, state: State) -> Result<PipelineOut> {
    let start_file = state.files.len();
    let skip_until = state.partial.as_ref().map(|p| {
        debug_assert_eq!(p.file, start_file);
        p.end
    });
    let skipped_bytes: u64 = ctx.files[..start_file.min(ctx.files.len())].iter().map(|f| f.size).sum();
    ctx.progress.raw_bytes_skipped.store(skipped_bytes, Ordering::Relaxed);
    ctx.progress.files_done.store(start_file as u64, Ordering::Relaxed);

    let in_flight = 2 * workers + 2;
    let (slot_tx, slot_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        slot_tx.send(()).map_err(|_| Error::Internal("slot channel".into()))?;
    }
    let (work_tx, work_rx) = sync_channel::<Chunk>(in_flight);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (res_tx, res_rx) = channel::<Encoded>();

    let stop = AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(move |s| {
        s.spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| reader(ctx, start_file, skip_until, stop, &slot_rx, &work_tx)));
            if r.is_err() {
                // Tell the writer (it sees a chunk it cannot place and reports this).
                let _ = work_tx.send(Chunk { seq: u64::MAX, data: Vec::new(), items: vec![Item::Fatal(Error::Internal("the reader thread panicked".into()))] });
            }
        });
        for _ in 0..workers {
            let work_rx = work_rx.clone();
            let res_tx = res_tx.clone();
            s.spawn(move || worker(ctx, enc, &work_rx, &res_tx));
        }
        drop(work_rx);
        drop(res_tx);
        let r = writer(ctx, state, res_rx, slot_tx);
        if r.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        r
    })
}

/// The reader's output side: the chunk being filled and its sequence number.
struct ChunkOut<'a> {
    chunk: Chunk,
    chunk_bytes: usize,
    slot_rx: &'a Receiver<()>,
    work_tx: &'a SyncSender<Chunk>,
}

impl ChunkOut<'_> {
    fn full(&self) -> bool {
        self.chunk.data.len() >= self.chunk_bytes || self.chunk.items.len() >= 65536
    }
    /// Sends the current chunk when a slot is free. False when the pipeline is shutting down.
    fn flush(&mut self) -> bool {
        if self.chunk.items.is_empty() {
            return true;
        }
        let next = Chunk { seq: self.chunk.seq + 1, data: Vec::with_capacity(self.chunk_bytes + 4096), items: Vec::new() };
        let full = std::mem::replace(&mut self.chunk, next);
        if self.slot_rx.recv().is_err() {
            return false;
        }
        self.work_tx.send(full).is_ok()
    }
    /// Queues an item; flushes when the chunk is full.
    fn push(&mut self, item: Item) -> bool {
        self.chunk.items.push(item);
        if self.full() {
            self.flush()
        } else {
            true
        }
    }
}

fn reader(ctx: &Ctx<'_>, start_file: usize, skip_until: Option<u64>, stop: &AtomicBool, slot_rx: &Receiver<()>, work_tx: &SyncSender<Chunk>) {
    let cfg = ctx.cfg;
    let mut out = ChunkOut {
        chunk: Chunk { seq: 0, data: Vec::with_capacity(cfg.chunk_bytes + 4096), items: Vec::new() },
        chunk_bytes: cfg.chunk_bytes,
        slot_rx,
        work_tx,
    };
    let counter = Arc::new(AtomicU64::new(0));
    let stopped = || ctx.progress.cancel.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
    for fi in start_file..ctx.files.len() {
        if stopped() {
            return;
        }
        let f = &ctx.files[fi];
        let skip = if fi == start_file { skip_until } else { None };
        let per = if f.jsonl { DocPer::Line } else { cfg.doc_per };
        let mut failed: Option<Error> = None;
        let mut sniff = input::BinarySniffer::default();
        let key = holdout_key(&f.name);
        let mut ordinal = 0u64;
        match input::open_input(&f.path, counter.clone()) {
            Err(e) => failed = Some(e),
            Ok(mut inp) => {
                let mut splitter = Splitter::new(per, cfg.max_doc_bytes);
                loop {
                    let start = out.chunk.data.len();
                    match splitter.next_doc(inp.reader(), &mut out.chunk.data) {
                        Ok(None) => break,
                        Ok(Some(span)) => {
                            if let Some(v) = sniff.feed(&out.chunk.data[start..]) {
                                ctx.progress.warn(input::binary_warning(&f.path, v, cfg.invalid_utf8));
                            }
                            let held = is_held_out(key, ordinal, cfg.holdout_per_million);
                            ordinal += 1;
                            if skip.is_some_and(|end| span.end <= end) {
                                out.chunk.data.truncate(start);
                                continue;
                            }
                            let len = out.chunk.data.len() - start;
                            if !out.push(Item::Doc { file: fi as u32, start, len, span, held }) {
                                return;
                            }
                            ctx.progress.raw_bytes_read.store(counter.load(Ordering::Relaxed), Ordering::Relaxed);
                            if stopped() {
                                return;
                            }
                        }
                        Err(source) => {
                            out.chunk.data.truncate(start);
                            failed = Some(Error::Io { path: f.path.clone(), source });
                            break;
                        }
                    }
                }
                if failed.is_none() {
                    match inp.finish() {
                        Ok((sha256, size)) => {
                            if !out.push(Item::FileEnd { file: fi as u32, sha256, size }) {
                                return;
                            }
                        }
                        Err(source) => failed = Some(Error::Io { path: f.path.clone(), source }),
                    }
                }
            }
        }
        ctx.progress.raw_bytes_read.store(counter.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Some(v) = sniff.finish() {
            ctx.progress.warn(input::binary_warning(&f.path, v, cfg.invalid_utf8));
        }
        if let Some(e) = failed {
            if cfg.skip_bad_files {
                if !out.push(Item::Bad { file: fi as u32, error: e.to_string() }) {
                    return;
                }
            } else {
                out.chunk.items.push(Item::Fatal(e));
                out.flush();
                return;
            }
        }
    }
    out.flush();
}

fn worker<E: Encode>(ctx: &Ctx<'_>, enc: &E, work_rx: &Mutex<Receiver<Chunk>>, res_tx: &Sender<Encoded>) {
    loop {
        let chunk = {
            let rx = work_rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(c) => c,
                Err(_) => return,
            }
        };
        let seq = chunk.seq;
        let encoded = match catch_unwind(AssertUnwindSafe(|| encode_chunk(ctx, enc, chunk))) {
            Ok(e) => e,
            Err(_) => Encoded { seq, items: vec![OutItem::Fatal(Error::Internal("a worker thread panicked while encoding".into()))], tokens: Vec::new() },
        };
        if res_tx.send(encoded).is_err() {
            return;
        }
    }
}

fn encode_chunk<E: Encode>(ctx: &Ctx<'_>, enc: &E, chunk: Chunk) -> Encoded {
    let cfg = ctx.cfg;
    let mut tokens = Vec::with_capacity(chunk.data.len() / 2);
    let mut items = Vec::with_capacity(chunk.items.len());
    for item in chunk.items {
        match item {
            Item::Doc { file, start, len, span, held } => {
                let bytes = &chunk.data[start..start + len];
                let (text, invalid_utf8) = input::decode_utf8(bytes, cfg.invalid_utf8);
                let jsonl = ctx.files[file as usize].jsonl;
                let text = match input::document_text(&text, jsonl, &cfg.text_field, cfg.strip) {
                    Ok(Some(t)) => t,
                    Ok(None) => {
                        items.push(OutItem::Doc { file, span, invalid_utf8, outcome: Outcome::Empty, held });
                        continue;
                    }
                    Err(reason) => {
                        items.push(OutItem::Doc { file, span, invalid_utf8, outcome: Outcome::BadJson(reason), held });
                        continue;
                    }
                };
                let text: &str = &text;
                let before = tokens.len();
                if !text.is_empty() {
                    enc.encode_into(text, &mut tokens);
                }
                let n = tokens.len() - before + usize::from(ctx.eos.is_some());
                let zero_len = n == 0 && (text.is_empty() || cfg.format == OutputFormat::Megatron);
                let outcome = if zero_len || n < cfg.min_tokens {
                    // (Megatron output never gets zero-length sequences.)
                    tokens.truncate(before);
                    if text.is_empty() {
                        Outcome::Empty
                    } else {
                        Outcome::Dropped
                    }
                } else {
                    if let Some(e) = ctx.eos {
                        tokens.push(e);
                    }
                    Outcome::Kept { ntok: n }
                };
                items.push(OutItem::Doc { file, span, invalid_utf8, outcome, held });
            }
            Item::FileEnd { file, sha256, size } => items.push(OutItem::FileEnd { file, sha256, size }),
            Item::Bad { file, error } => items.push(OutItem::Bad { file, error }),
            Item::Fatal(e) => items.push(OutItem::Fatal(e)),
        }
    }
    Encoded { seq: chunk.seq, items, tokens }
}

/// `kill -9` of this very process (the `debug_kill_after_checkpoints` testing aid).
fn kill_self() {
    #[cfg(unix)]
    // SAFETY: getpid and kill have no preconditions; SIGKILL ends the process here.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort();
}

struct Writer<'a> {
    ctx: &'a Ctx<'a>,
    fingerprint: String,
    shards: Vec<ShardEntry>,
    shard: Option<ShardWriter>,
    mega: Option<MegatronWriter>,
    mega_cp: Option<MegatronCheckpoint>,
    since_checkpoint: u64,
    files: Vec<FileEntry>,
    cur: Option<Partial>,
    checkpoints_written: u64,
    holdout: Option<HoldoutWriter>,
}

/// Writes the held-out documents into `OUT/holdout/` (shard format, same shard size). Its shard
/// in progress is fsynced at every checkpoint of the job and recorded there, so a resume cuts it
/// back to that point (`ShardWriter::resume`).
struct HoldoutWriter {
    dir: PathBuf,
    dtype: DType,
    limit: u64,
    shards: Vec<ShardEntry>,
    cur: Option<ShardWriter>,
}

impl HoldoutWriter {
    fn open(dir: PathBuf, dtype: DType, limit: u64, state: HoldoutState) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let cur = match &state.current {
            Some(cp) => Some(ShardWriter::resume(&dir, dtype, cp)?),
            None => None,
        };
        Ok(HoldoutWriter { dir, dtype, limit, shards: state.shards, cur })
    }

    fn write_doc(&mut self, ids: &[u32]) -> Result<()> {
        if self.cur.is_none() {
            self.cur = Some(ShardWriter::create(&self.dir, self.shards.len(), self.dtype)?);
        }
        let sh = self.cur.as_mut().expect("just set");
        sh.write_doc(ids)?;
        if sh.tokens() >= self.limit {
            let entry = self.cur.take().expect("present").commit()?;
            self.shards.push(entry);
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<HoldoutState> {
        let current = match self.cur.as_mut() {
            Some(w) => Some(w.checkpoint()?),
            None => None,
        };
        Ok(HoldoutState { shards: self.shards.clone(), current })
    }

    /// Commits the shard in progress; the finished list.
    fn finish(&mut self) -> Result<Vec<ShardEntry>> {
        if let Some(w) = self.cur.take() {
            let entry = w.commit()?;
            self.shards.push(entry);
        }
        Ok(self.shards.clone())
    }
}

impl<'a> Writer<'a> {
    fn new(ctx: &'a Ctx<'a>, state: State) -> Result<Self> {
        let mega = match ctx.cfg.format {
            OutputFormat::Megatron => Some(MegatronWriter::open(ctx.prefix_p, ctx.dtype, state.megatron)?),
            OutputFormat::Baichuan => None,
        };
        let holdout = match ctx.cfg.holdout_per_million {
            0 => None,
            _ => Some(HoldoutWriter::open(
                ctx.out.join(HOLDOUT_DIR),
                shard_dtype(ctx.cfg_vocab),
                ctx.cfg.shard_tokens,
                state.holdout.clone().unwrap_or_default(),
            )?),
        };
        let mut total = Counts::default();
        for f in &state.files {
            total.add(&f.counts);
        }
        if let Some(p) = &state.partial {
            total.add(&p.counts);
        }
        let pr = ctx.progress;
        pr.documents.store(total.documents, Ordering::Relaxed);
        pr.dropped.store(total.dropped, Ordering::Relaxed);
        pr.tokens.store(total.tokens, Ordering::Relaxed);
        pr.text_bytes.store(total.bytes, Ordering::Relaxed);
        Ok(Writer {
            ctx,
            fingerprint: state.fingerprint,
            shards: state.shards,
            shard: None,
            mega,
            mega_cp: state.megatron,
            since_checkpoint: 0,
            files: state.files,
            cur: state.partial,
            checkpoints_written: 0,
            holdout,
        })
    }

    fn cur_for(&mut self, file: u32) -> Result<&mut Partial> {
        let file = file as usize;
        if file != self.files.len() {
            return Err(Error::Internal(format!("items out of order: file {file} after {} files", self.files.len())));
        }
        if self.cur.as_ref().map(|c| c.file) != Some(file) {
            self.cur = Some(Partial { file, end: 0, counts: Counts::default(), first_bad_json: None });
        }
        Ok(self.cur.as_mut().expect("just set"))
    }

    fn save_state(&mut self, finishing: bool) -> Result<()> {
        let holdout = match self.holdout.as_mut() {
            Some(h) => Some(h.checkpoint()?),
            None => None,
        };
        let st = State {
            holdout,
            version: MANIFEST_VERSION,
            fingerprint: self.fingerprint.clone(),
            shards: self.shards.clone(),
            megatron: self.mega_cp,
            files: self.files.clone(),
            partial: self.cur.clone(),
            finishing,
            job: Some(self.ctx.job.clone()),
        };
        write_json_atomic(self.ctx.progress_p, &st)?;
        self.checkpoints_written += 1;
        if self.checkpoints_written == self.ctx.cfg.debug_kill_after_checkpoints {
            kill_self();
        }
        Ok(())
    }

    fn write_doc(&mut self, ids: &[u32]) -> Result<()> {
        let limit = self.ctx.cfg.shard_tokens;
        if let Some(m) = self.mega.as_mut() {
            m.write_doc(ids)?;
            self.since_checkpoint += ids.len() as u64;
            if self.since_checkpoint >= limit {
                self.mega_cp = Some(m.checkpoint()?);
                self.since_checkpoint = 0;
                self.save_state(false)?;
            }
            return Ok(());
        }
        if self.shard.is_none() {
            self.shard = Some(ShardWriter::create(self.ctx.out, self.shards.len(), self.ctx.dtype)?);
        }
        let sh = self.shard.as_mut().expect("just set");
        sh.write_doc(ids)?;
        if sh.tokens() >= limit {
            let entry = self.shard.take().expect("present").commit()?;
            self.shards.push(entry);
            self.save_state(false)?;
        }
        Ok(())
    }

    fn file_done(&mut self, file: u32, status: &str, sha256: Option<String>, size: u64, error: Option<String>) -> Result<()> {
        let (counts, first_bad_json) = {
            let c = self.cur_for(file)?;
            (c.counts.clone(), c.first_bad_json.clone())
        };
        self.cur = None;
        let f = &self.ctx.files[file as usize];
        self.files.push(FileEntry {
            path: f.name.clone(),
            size,
            sha256,
            compression: input::Compression::from_path(&f.path),
            jsonl: f.jsonl,
            status: status.into(),
            error,
            first_bad_json,
            counts,
        });
        self.ctx.progress.files_done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn process(&mut self, enc: Encoded) -> Result<()> {
        let pr = self.ctx.progress;
        let mut off = 0usize;
        for item in enc.items {
            match item {
                OutItem::Doc { file, span, invalid_utf8, outcome, held } => {
                    let cur = self.cur_for(file)?;
                    cur.end = span.end;
                    cur.counts.bytes += span.consumed;
                    cur.counts.invalid_utf8 += invalid_utf8;
                    pr.text_bytes.fetch_add(span.consumed, Ordering::Relaxed);
                    match outcome {
                        Outcome::Kept { ntok } => {
                            if held {
                                cur.counts.holdout_documents += 1;
                                cur.counts.holdout_tokens += ntok as u64;
                            } else {
                                cur.counts.documents += 1;
                                cur.counts.tokens += ntok as u64;
                            }
                            pr.documents.fetch_add(1, Ordering::Relaxed);
                            pr.tokens.fetch_add(ntok as u64, Ordering::Relaxed);
                            let end = off + ntok;
                            let ids = enc.tokens.get(off..end).ok_or_else(|| Error::Internal("token buffer too short".into()))?;
                            off = end;
                            match (held, self.holdout.as_mut()) {
                                (true, Some(h)) => h.write_doc(ids)?,
                                _ => self.write_doc(ids)?,
                            }
                        }
                        Outcome::Dropped => {
                            cur.counts.dropped += 1;
                            pr.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Empty => {
                            cur.counts.dropped += 1;
                            cur.counts.empty += 1;
                            pr.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::BadJson(reason) => {
                            cur.counts.bad_json += 1;
                            if cur.first_bad_json.is_none() {
                                cur.first_bad_json = Some(format!("byte {}: {reason}", span.end - span.consumed));
                            }
                        }
                    }
                }
                OutItem::FileEnd { file, sha256, size } => self.file_done(file, "ok", Some(sha256), size, None)?,
                OutItem::Bad { file, error } => {
                    let size = self.ctx.files[file as usize].size;
                    self.file_done(file, "skipped", None, size, Some(error))?
                }
                OutItem::Fatal(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<PipelineOut> {
        if self.files.len() != self.ctx.files.len() {
            return Err(Error::Internal(format!("{} of {} files were finished", self.files.len(), self.ctx.files.len())));
        }
        if let Some(sh) = self.shard.take() {
            let entry = sh.commit()?;
            self.shards.push(entry);
        }
        let held = match self.holdout.as_mut() {
            Some(h) => Some(h.finish()?),
            None => None,
        };
        let mega = match self.mega.take() {
            Some(mut m) => {
                self.mega_cp = Some(m.checkpoint()?);
                self.save_state(true)?;
                Some(m.finish()?)
            }
            None => None,
        };
        Ok((self.shards, mega, self.files, held))
    }
}

fn writer(ctx: &Ctx<'_>, state: State, res_rx: Receiver<Encoded>, slot_tx: SyncSender<()>) -> Result<PipelineOut> {
    let mut w = Writer::new(ctx, state)?;
    let mut pending: BTreeMap<u64, Encoded> = BTreeMap::new();
    let mut next = 0u64;
    for enc in res_rx.iter() {
        pending.insert(enc.seq, enc);
        while let Some(e) = pending.remove(&next) {
            w.process(e)?;
            next += 1;
            let _ = slot_tx.send(());
        }
        if ctx.progress.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
    }
    if ctx.progress.cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    if let Some((_, mut e)) = pending.pop_last() {
        if let Some(OutItem::Fatal(err)) = e.items.pop() {
            return Err(err);
        }
        return Err(Error::Internal("the pipeline lost a chunk".into()));
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// One id per byte (id = byte + 3), EOS = 2; cancels the job after `cancel_after` documents.
    struct ByteEnc<'a> {
        cancel_after: Option<u64>,
        seen: AtomicU64,
        progress: Option<&'a Progress>,
    }
    impl Encode for ByteEnc<'_> {
        fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
            let n = self.seen.fetch_add(1, Ordering::SeqCst);
            if let (Some(k), Some(p)) = (self.cancel_after, self.progress) {
                if n >= k {
                    p.cancel();
                }
            }
            out.extend(text.bytes().map(|b| b as u32 + 3));
        }
        fn vocab_size(&self) -> usize {
            259
        }
        fn eos_id(&self) -> Option<u32> {
            Some(2)
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bc-corpus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn make_corpus(dir: &Path) {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for i in 0..5 {
            let mut f = File::create(dir.join(format!("sub/f{i}.txt"))).unwrap();
            for j in 0..400 {
                writeln!(f, "  document {i}-{j} {}\u{3000}", "x".repeat((i * 7 + j * 13) % 90)).unwrap();
            }
        }
        std::fs::write(dir.join("bad.txt"), b"ok line that is long enough to keep\n\xff\xfe invalid bytes here, long enough too\r\n\r\n").unwrap();
        let mut gz = flate2::write::GzEncoder::new(File::create(dir.join("z.txt.gz")).unwrap(), flate2::Compression::default());
        for j in 0..300 {
            writeln!(gz, "gzip line {j} with some padding text").unwrap();
        }
        gz.finish().unwrap();
        let zs = zstd::encode_all(&b"{\"text\": \"a zstd json document that is long enough\"}\nnot json\n\n{\"other\": 1}\n"[..], 3).unwrap();
        std::fs::write(dir.join("y.jsonl.zst"), zs).unwrap();
    }

    fn cfg(inp: &Path, out: &Path, workers: usize, format: OutputFormat) -> CorpusConfig {
        let mut c: CorpusConfig = CorpusConfig::from_json(&format!(
            r#"{{"tokenizer": "t.model", "inputs": [{:?}], "output": {:?}}}"#,
            inp.to_string_lossy(),
            out.to_string_lossy()
        ))
        .unwrap();
        c.workers = workers;
        c.format = format;
        c.shard_tokens = 3000;
        c.chunk_bytes = 2000;
        c
    }

    fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn deterministic_and_resumable() {
        let root = tmpdir("det");
        let inp = root.join("in");
        make_corpus(&inp);
        for format in [OutputFormat::Baichuan, OutputFormat::Megatron] {
            let mut reference = None;
            for workers in [1, 2, 3] {
                let out = root.join(format!("out-{format:?}-{workers}"));
                let p = Progress::default();
                let enc = ByteEnc { cancel_after: None, seen: AtomicU64::new(0), progress: None };
                let m = run_with(&cfg(&inp, &out, workers, format), &enc, "sha", &p).unwrap();
                assert_eq!(m.counts.files, 8);
                assert_eq!(m.counts.counts.invalid_utf8, 2); // \xff and \xfe: two maximal invalid subparts, as Python counts
                assert_eq!(m.counts.counts.bad_json, 2);
                let bytes = dir_bytes(&out);
                assert!(bytes.iter().all(|(n, _)| !n.ends_with(".tmp") && n != PROGRESS), "{:?}", bytes.iter().map(|b| &b.0).collect::<Vec<_>>());
                match &reference {
                    None => reference = Some(bytes),
                    Some(r) => assert_eq!(r, &bytes, "workers {workers}"),
                }
            }
            let reference = reference.unwrap();
            // Interrupt at several points, then resume.
            for k in [0u64, 37, 1100, 2150] {
                let out = root.join(format!("res-{format:?}-{k}"));
                let p = Progress::default();
                let enc = ByteEnc { cancel_after: Some(k), seen: AtomicU64::new(0), progress: Some(&p) };
                let r = run_with(&cfg(&inp, &out, 2, format), &enc, "sha", &p);
                if r.is_ok() {
                    continue;
                }
                assert!(matches!(r, Err(Error::Cancelled)));
                let p = Progress::default();
                let enc = ByteEnc { cancel_after: None, seen: AtomicU64::new(0), progress: None };
                let mut c = cfg(&inp, &out, 2, format);
                let wrote_something = std::fs::read_dir(&out).unwrap().any(|e| e.unwrap().file_name() != LOCK);
                if wrote_something {
                    // (cancelled before anything but the lock was written: a fresh run is fine)
                    assert!(run_with(&c, &enc, "sha", &p).is_err(), "no --resume must refuse");
                }
                c.resume = true;
                run_with(&c, &enc, "sha", &p).unwrap();
                assert_eq!(dir_bytes(&out), reference, "format {format:?} cancel after {k}");
                // Resuming a finished job is a no-op.
                run_with(&c, &enc, "sha", &p).unwrap();
                assert_eq!(dir_bytes(&out), reference);
            }
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// `--resume` takes the same job spelled otherwise (trailing '/', `.` components, another
    /// tokenizer path with the same content) and finishes it byte-identically; another job is
    /// refused with what differs.
    #[test]
    fn resume_is_by_job_not_spelling() {
        let root = tmpdir("spell");
        let inp = root.join("in");
        make_corpus(&inp);
        let spelled = |s: &str, out: &Path| {
            let mut c = cfg(&inp, out, 2, OutputFormat::Baichuan);
            c.inputs = vec![format!("{}/{s}", root.display())];
            c
        };
        let enc = || ByteEnc { cancel_after: None, seen: AtomicU64::new(0), progress: None };
        let reference = root.join("ref");
        run_with(&spelled("in/", &reference), &enc(), "sha", &Progress::default()).unwrap();
        let out = root.join("out");
        let p = Progress::default();
        let cancelling = ByteEnc { cancel_after: Some(1100), seen: AtomicU64::new(0), progress: Some(&p) };
        assert!(matches!(run_with(&spelled("in/", &out), &cancelling, "sha", &p), Err(Error::Cancelled)));
        assert!(out.join(PROGRESS).exists());
        // another job: refused, naming each difference
        let mut other = spelled("./in", &out);
        other.resume = true;
        other.min_tokens = 7;
        let err = run_with(&other, &enc(), "other-sha", &Progress::default()).unwrap_err().to_string();
        assert!(err.contains("was written for another job: the tokenizer differs (t.model has sha256 other-sha..."), "{err}");
        assert!(err.contains("--min-tokens was 20 and is now 7"), "{err}");
        assert!(err.ends_with("cannot resume (use --overwrite to start again)"), "{err}");
        let mut fewer = spelled("in/sub", &out);
        fewer.resume = true;
        let err = run_with(&fewer, &enc(), "sha", &Progress::default()).unwrap_err().to_string();
        assert!(err.contains("bad.txt") && err.contains("is no longer among the inputs"), "{err}");
        // the same job spelled otherwise: finishes as it was started
        let mut same = spelled("./in", &out);
        same.resume = true;
        same.tokenizer = PathBuf::from("./elsewhere/t.model");
        run_with(&same, &enc(), "sha", &Progress::default()).unwrap();
        assert_eq!(dir_bytes(&out), dir_bytes(&reference));
        // and, finished, it is nothing to do
        run_with(&same, &enc(), "sha", &Progress::default()).unwrap();
        assert_eq!(dir_bytes(&out), dir_bytes(&reference));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn partition_specs_and_ranges() {
        assert_eq!(parse_partition("0/1").unwrap(), (0, 1));
        assert_eq!(parse_partition("2/3").unwrap(), (2, 3));
        for bad in ["3/3", "0/0", "-1/2", "a/b", "1", "1/", "/2", "1/2/3", "+1/2", " 1/2"] {
            let e = parse_partition(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("--partition {bad}:")), "{e}");
        }
        let cover = |sizes: &[u64], n: usize| -> Vec<std::ops::Range<usize>> {
            let rs: Vec<_> = (0..n).map(|i| partition_range(sizes, i, n)).collect();
            let mut next = 0;
            for r in &rs {
                assert_eq!(r.start, next, "{sizes:?} / {n}: {rs:?}");
                next = r.end;
            }
            assert_eq!(next, sizes.len(), "{sizes:?} / {n}: {rs:?}");
            rs
        };
        assert_eq!(cover(&[10, 10, 10], 3), vec![0..1, 1..2, 2..3]);
        // by bytes, not by count: one big file is a share of its own
        assert_eq!(cover(&[5, 5, 5, 5, 20], 2), vec![0..4, 4..5]);
        // a file is never split: a dominating file leaves a neighbour empty
        assert_eq!(cover(&[1, 100, 1], 3), vec![0..1, 1..2, 2..3]);
        assert_eq!(cover(&[100, 1, 1], 3), vec![0..0, 0..1, 1..3]); // (its middle byte is in share 1)
        assert_eq!(cover(&[0, 0, 0, 0], 2), vec![0..2, 2..4]);
        assert_eq!(cover(&[7], 4), vec![0..0, 0..0, 0..1, 1..1]);
        assert_eq!(cover(&[], 2), vec![0..0, 0..0]);
        let mut x = 12345u64;
        for n in 1..6 {
            let sizes: Vec<u64> = (0..40)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (x >> 33) % 1000
                })
                .collect();
            let rs = cover(&sizes, n);
            let total: u64 = sizes.iter().sum();
            for r in rs {
                let got: u64 = sizes[r].iter().sum();
                assert!(got <= total / n as u64 + 1000, "{got} of {total} / {n}");
            }
        }
        // the held-out choice: a fixed function of (file key, ordinal)
        let held: Vec<u64> = (0..100_000).filter(|&i| is_held_out(42, i, 1000)).collect();
        assert!((60..140).contains(&held.len()), "{}", held.len());
        assert_eq!(held, (0..100_000).filter(|&i| is_held_out(42, i, 1000)).collect::<Vec<_>>());
        assert!(!(0..1000).any(|i| is_held_out(42, i, 0)));
        assert!((0..1000).all(|i| is_held_out(42, i, HOLDOUT_SCALE)));
    }

    /// `--holdout` with interruptions at many points and `--partition` + merge: byte-identical to
    /// an uninterrupted single run, in both formats (Megatron: holdout only).
    #[test]
    fn holdout_and_partitions() {
        let root = tmpdir("hold");
        let inp = root.join("in");
        make_corpus(&inp);
        let enc = || ByteEnc { cancel_after: None, seen: AtomicU64::new(0), progress: None };
        let with = |out: &Path, format: OutputFormat| {
            let mut c = cfg(&inp, out, 2, format);
            c.holdout_per_million = 100_000;
            c.shard_tokens = 1500;
            c
        };
        let tree = |d: &Path| {
            let mut v = dir_bytes(d);
            v.retain(|(n, _)| n != LOCK && n != HOLDOUT_DIR);
            v.extend(dir_bytes(&d.join(HOLDOUT_DIR)).into_iter().map(|(n, b)| (format!("holdout/{n}"), b)));
            v
        };
        for format in [OutputFormat::Baichuan, OutputFormat::Megatron] {
            let reference = root.join(format!("ref-{format:?}"));
            let m = run_with(&with(&reference, format), &enc(), "sha", &Progress::default()).unwrap();
            let c = &m.counts.counts;
            assert!(c.holdout_documents > 20 && c.holdout_documents * 5 < c.documents, "{c:?}");
            let held = tree(&reference);
            assert!(held.iter().filter(|(n, _)| n.starts_with("holdout/shard-")).count() >= 4);
            for k in [0u64, 37, 700, 1100, 1500, 2150] {
                let out = root.join(format!("res-{format:?}-{k}"));
                let p = Progress::default();
                let cancelling = ByteEnc { cancel_after: Some(k), seen: AtomicU64::new(0), progress: Some(&p) };
                if run_with(&with(&out, format), &cancelling, "sha", &p).is_ok() {
                    continue;
                }
                let mut c = with(&out, format);
                c.resume = true;
                run_with(&c, &enc(), "sha", &Progress::default()).unwrap();
                assert_eq!(tree(&out), held, "format {format:?} cancel after {k}");
            }
        }
        // 3 partitions, merged: the single run's files
        let reference = root.join("ref-Baichuan");
        let parts: Vec<PathBuf> = (0..3)
            .map(|i| {
                let out = root.join(format!("part{i}"));
                let mut c = with(&out, OutputFormat::Baichuan);
                c.partition = Some(format!("{i}/3"));
                c.workers = i + 1;
                run_with(&c, &enc(), "sha", &Progress::default()).unwrap();
                out
            })
            .collect();
        let merged = root.join("merged");
        let mc = merge::MergeConfig { inputs: vec![parts[1].clone(), parts[2].clone(), parts[0].clone()], output: merged.clone(), overwrite: false };
        merge::merge(&mc, &Progress::default()).unwrap();
        assert_eq!(tree(&merged), tree(&reference));
        // more partitions than files: empty partitions write an empty manifest, and merge fine
        let parts10: Vec<PathBuf> = (0..10)
            .map(|i| {
                let out = root.join(format!("ten{i}"));
                let mut c = with(&out, OutputFormat::Baichuan);
                c.partition = Some(format!("{i}/10"));
                let m = run_with(&c, &enc(), "sha", &Progress::default()).unwrap();
                assert_eq!(m.partition.as_ref().map(|p| p.total_files), Some(8));
                out
            })
            .collect();
        assert!(parts10.iter().any(|p| std::fs::read_to_string(p.join(MANIFEST)).unwrap().contains("\"inputs\": []")));
        let m10 = root.join("merged10");
        merge::merge(&merge::MergeConfig { inputs: parts10, output: m10.clone(), overwrite: false }, &Progress::default()).unwrap();
        assert_eq!(tree(&m10), tree(&reference));
        // nothing is written when a partition is missing
        let mc = merge::MergeConfig { inputs: vec![parts[0].clone(), parts[2].clone()], output: root.join("m2"), overwrite: false };
        let e = merge::merge(&mc, &Progress::default()).unwrap_err().to_string();
        assert!(e.contains("partition 1/3 is missing"), "{e}");
        assert!(!root.join("m2").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bad_files() {
        let root = tmpdir("bad");
        let inp = root.join("in");
        make_corpus(&inp);
        // a truncated gzip file: readable start, error later
        let gz = std::fs::read(inp.join("z.txt.gz")).unwrap();
        std::fs::write(inp.join("zz.txt.gz"), &gz[..gz.len() / 2]).unwrap();
        let enc = ByteEnc { cancel_after: None, seen: AtomicU64::new(0), progress: None };
        let out = root.join("out");
        let err = run_with(&cfg(&inp, &out, 2, OutputFormat::Baichuan), &enc, "sha", &Progress::default()).unwrap_err();
        assert!(err.to_string().contains("zz.txt.gz"), "{err}");
        let mut c = cfg(&inp, &out, 2, OutputFormat::Baichuan);
        c.skip_bad_files = true;
        c.overwrite = true;
        let m = run_with(&c, &enc, "sha", &Progress::default()).unwrap();
        assert_eq!(m.counts.bad_files, 1);
        let bad = m.inputs.iter().find(|f| f.status != "ok").unwrap();
        assert!(bad.path.ends_with("zz.txt.gz") && bad.error.is_some());
        // missing input: error naming it
        let mut c = cfg(&root.join("nope"), &root.join("o2"), 1, OutputFormat::Baichuan);
        c.inputs.push("/nonexistent/*.txt".into());
        let err = run_with(&c, &enc, "sha", &Progress::default()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
