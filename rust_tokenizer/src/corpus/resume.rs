//! `progress.json` and `--resume`: the checkpoint a job writes as it goes ([`State`]), and what
//! identifies a job across runs ([`JobRecord`]), so that a resume continues only the same job
//! (however its paths are spelled) and otherwise says what differs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::input;
use super::manifest::{Counts, FileEntry, Manifest};
use super::megatron::MegatronCheckpoint;
use super::shards::{self, ShardEntry};
use super::sha256_file;
use crate::error::Result;

/// The held-out shards in a checkpoint: those finished, and the one being written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct HoldoutState {
    pub(super) shards: Vec<ShardEntry>,
    pub(super) current: Option<shards::ShardCheckpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Partial {
    pub(super) file: usize,
    pub(super) end: u64,
    pub(super) counts: Counts,
    pub(super) first_bad_json: Option<String>,
}

/// `progress.json`: everything needed to continue after the last checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) version: u32,
    pub(super) fingerprint: String,
    pub(super) shards: Vec<ShardEntry>,
    pub(super) megatron: Option<MegatronCheckpoint>,
    pub(super) files: Vec<FileEntry>,
    pub(super) partial: Option<Partial>,
    /// Megatron only: all input is written and the pair is being finished.
    pub(super) finishing: bool,
    /// What the job is, independent of how its paths were spelled (absent in files written
    /// before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) job: Option<JobRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) holdout: Option<HoldoutState>,
}

/// One input file of a job, as spelled and as it is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InputRecord {
    /// As found from the command line (what the manifest shows).
    pub(super) path: String,
    /// Canonical (absolute, links resolved).
    pub(super) canonical: String,
    pub(super) size: u64,
    pub(super) mtime: String,
    pub(super) compression: input::Compression,
    pub(super) jsonl: bool,
}

/// What identifies a job for `--resume` (progress.json): the tokenizer's content, the output
/// options and the input files by canonical path, size and mtime; plus the spellings of the
/// run that started it, which a resumed run keeps so that its output is byte-identical.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct JobRecord {
    pub(super) tokenizer_path: String,
    pub(super) tokenizer_sha256: String,
    /// `CorpusConfig::output_options` as spelled.
    pub(super) options: serde_json::Value,
    pub(super) inputs: Vec<InputRecord>,
}

/// CLI names of the output options, for messages.
pub(super) fn option_flag(key: &str) -> String {
    match key {
        "append_eos" => "--no-eos".into(),
        "strip" => "--no-strip".into(),
        "shard_tokens" => "--shard-size".into(),
        "invalid_utf8" => "--invalid-utf8".into(),
        "holdout_per_million" => "--holdout (per million)".into(),
        k => format!("--{}", k.replace('_', "-")),
    }
}

pub(super) fn short(sha: &str) -> &str {
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
    pub(super) fn difference(&self, now: &JobRecord) -> Option<String> {
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
pub(super) fn manifest_difference(m: &Manifest, now: &JobRecord) -> Result<Option<String>> {
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
