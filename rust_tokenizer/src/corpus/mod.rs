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
//!
//! The files: `config.rs` (the job's options, the partition and holdout rules), `input.rs`
//! (finding and reading inputs, cutting documents), `pipeline.rs` (reader, encoders, in-order
//! writer), `shards.rs` and `megatron.rs` (the two output formats), `resume.rs` (`progress.json`
//! and what identifies a job), `manifest.rs` (`manifest.json`), `merge.rs` (`merge-shards`); this
//! file runs a job: inputs, output directory, resume or start, and the manifest at the end.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use input::hex;
use megatron::MegatronWriter;
use pipeline::{pipeline, Ctx};
use resume::{manifest_difference, InputRecord, JobRecord, State};
use shards::{io_err, shard_dtype, write_json_atomic, DType};

mod config;
pub mod input;
mod manifest;
pub mod megatron;
pub mod merge;
mod pipeline;
mod resume;
pub mod shards;

pub use config::{is_held_out, parse_partition, partition_range, CorpusConfig, OutputFormat, HOLDOUT_DIR, HOLDOUT_SCALE};
pub use manifest::{Counts, FileEntry, HoldoutInfo, Manifest, PartitionInfo, TokenizerInfo, TotalCounts, MANIFEST_VERSION};

pub const MANIFEST: &str = "manifest.json";
pub const PROGRESS: &str = "progress.json";
/// Held (flock) while a job writes the directory; removed at the end.
pub const LOCK: &str = ".tokenize.lock";

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
        OutputFormat::Baichuan => shard_dtype(vocab),
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
        let held = manifest.holdout_of(
            "baichuan-shards".into(),
            shard_dtype(vocab),
            holdout_shards.unwrap_or_default(),
            Some(HoldoutInfo { per_million: cfg.holdout_per_million, path: "..".into() }),
        );
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

#[cfg(test)]
mod tests;
