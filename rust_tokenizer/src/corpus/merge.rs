//! `baichuan merge-shards`: joins the outputs of `baichuan tokenize --partition I/N` (N
//! directories, each a finished shard directory) into the output a single run of the whole job
//! writes, byte for byte: the documents in partition order, re-cut into shards by the same rule
//! (a shard closes after the document that brings it to `shard_tokens`), and the manifest a
//! single run writes (its `fingerprint` included). `OUT/holdout/` is merged the same way.
//!
//! Every partition is checked before anything is written: all N present once, made from the same
//! input list, tokenizer and options. The shards are copied document by document (memory: one
//! document at a time), their sha256 checked against the partition's manifest.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::resume::{option_flag, short};
use super::{
    holdout_files, our_files, read_json, remove, Counts, Manifest, PartitionInfo, Progress, TotalCounts, HOLDOUT_DIR,
    MANIFEST, PROGRESS,
};
use crate::error::{Error, Result};
use super::input::hex;
use super::shards::{self, io_err, write_json_atomic, ShardEntry, ShardWriter};

/// Options of a merge (the Python command builds this as JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    /// The partitions' output directories, in any order.
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    /// Delete an earlier output's files (ours only) in `output` first.
    #[serde(default)]
    pub overwrite: bool,
}

struct Part {
    dir: PathBuf,
    m: Manifest,
    info: PartitionInfo,
    held: Option<Manifest>,
}

fn refuse(path: &Path, reason: String) -> Error {
    Error::Input { path: path.to_path_buf(), reason }
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.to_path_buf())
}

/// The options that must agree between partitions: all but the paths' spellings and the partition.
fn comparable(options: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut v: Vec<_> = options
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "tokenizer" | "inputs" | "partition"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join(MANIFEST);
    if !p.is_file() {
        if !dir.is_dir() {
            return Err(refuse(dir, "no such directory".into()));
        }
        if dir.join(PROGRESS).is_file() {
            return Err(refuse(dir, "is an unfinished tokenize job (no manifest.json yet); finish it with `baichuan tokenize ... --resume` first".into()));
        }
        return Err(refuse(dir, "holds no manifest.json (not an output of `baichuan tokenize --partition`)".into()));
    }
    read_json(&p)
}

fn safe_member(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    if name.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(refuse(&dir.join(MANIFEST), format!("refusing shard path {name:?}")));
    }
    Ok(dir.join(p))
}

/// The shard files a manifest names exist with the sizes its counts give.
fn check_shards(dir: &Path, m: &Manifest) -> Result<()> {
    for sh in &m.shards {
        for (name, want) in [(&sh.bin, sh.tokens * m.dtype.itemsize() as u64), (&sh.idx, (sh.documents + 1) * 8)] {
            let p = safe_member(dir, name)?;
            let have = std::fs::metadata(&p).map_err(io_err(&p))?.len();
            if have != want {
                return Err(refuse(&p, format!("is {have} bytes but its manifest implies {want} (damaged partition)")));
            }
        }
    }
    Ok(())
}

/// Reads and checks every partition; sorted by index. Writes nothing.
fn check(cfg: &MergeConfig) -> Result<Vec<Part>> {
    if cfg.inputs.is_empty() {
        return Err(Error::Config("no partitions given".into()));
    }
    let out_abs = canonical(&cfg.output);
    let mut parts: Vec<Part> = Vec::new();
    for dir in &cfg.inputs {
        let m = read_manifest(dir)?;
        if m.format != "baichuan-shards" {
            return Err(refuse(dir, format!("is {} output; merge-shards joins the shard format only", m.format)));
        }
        let Some(info) = m.partition.clone() else {
            return Err(refuse(dir, "was not made with --partition (its manifest records no partition)".into()));
        };
        let spec = format!("{}/{}", info.index, info.count);
        let abs = canonical(dir);
        if out_abs.starts_with(&abs) {
            return Err(refuse(&cfg.output, format!("is partition {spec}'s directory {} (or inside it); choose another --output", dir.display())));
        }
        if let Some(p) = parts.iter().find(|p| canonical(&p.dir) == abs) {
            return Err(refuse(dir, format!("is given twice (also as {})", p.dir.display())));
        }
        if let Some(p0) = parts.first() {
            let (f, i0) = (&p0.dir, &p0.info);
            let first = format!("{} (partition {}/{})", f.display(), i0.index, i0.count);
            if info.count != i0.count {
                return Err(refuse(dir, format!("is partition {spec}, but {first} counts {} partitions", i0.count)));
            }
            if m.tokenizer.sha256 != p0.m.tokenizer.sha256 {
                return Err(refuse(
                    dir,
                    format!(
                        "partition {spec} was made with another tokenizer ({}, sha256 {}...) than {first}: {}, sha256 {}...",
                        m.tokenizer.path,
                        short(&m.tokenizer.sha256),
                        p0.m.tokenizer.path,
                        short(&p0.m.tokenizer.sha256)
                    ),
                ));
            }
            let (a, b) = (comparable(&p0.m.options), comparable(&m.options));
            let mut why = Vec::new();
            for (k, v) in &b {
                let old = a.iter().find(|(ka, _)| ka == k).map(|(_, va)| va.clone()).unwrap_or(serde_json::Value::Null);
                if &old != v {
                    why.push(format!("{} {v} here, {old} there", option_flag(k)));
                }
            }
            for (k, v) in &a {
                if !b.iter().any(|(kb, _)| kb == k) {
                    why.push(format!("{} absent here, {v} there", option_flag(k)));
                }
            }
            if !why.is_empty() {
                return Err(refuse(dir, format!("partition {spec} was made with other options than {first}: {}", why.join("; "))));
            }
            if (info.total_files, &info.inputs_sha256) != (i0.total_files, &i0.inputs_sha256) {
                return Err(refuse(
                    dir,
                    format!(
                        "partition {spec} was made from another input list than {first} ({} files, list sha256 {}..., vs {} files, {}...)",
                        info.total_files,
                        short(&info.inputs_sha256),
                        i0.total_files,
                        short(&i0.inputs_sha256)
                    ),
                ));
            }
        }
        if let Some(p) = parts.iter().find(|p| p.info.index == info.index) {
            return Err(refuse(dir, format!("is partition {spec}, and so is {}: a partition is given twice", p.dir.display())));
        }
        check_shards(dir, &m)?;
        let held = match &m.holdout {
            None => None,
            Some(h) => {
                let hd = safe_member(dir, &h.path)?;
                let hm = read_manifest(&hd)?;
                check_shards(&hd, &hm)?;
                Some(hm)
            }
        };
        parts.push(Part { dir: dir.clone(), m, info, held });
    }
    parts.sort_by_key(|p| p.info.index);
    let n = parts[0].info.count;
    if parts.len() != n {
        let have: Vec<usize> = parts.iter().map(|p| p.info.index).collect();
        let missing: Vec<String> = (0..n).filter(|i| !have.contains(i)).map(|i| format!("{i}/{n}")).collect();
        let given: Vec<String> = have.iter().map(|i| format!("{i}/{n}")).collect();
        return Err(Error::Config(format!(
            "partition {} {} missing (given: {}); merge needs all {n}",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" },
            given.join(", ")
        )));
    }
    let mut next = 0usize;
    for p in &parts {
        if p.info.first_file != next {
            return Err(refuse(
                &p.dir,
                format!("partition {}/{n} starts at input file {} but the partitions before it end at {next}", p.info.index, p.info.first_file),
            ));
        }
        next += p.m.inputs.len();
    }
    if next != parts[0].info.total_files {
        return Err(refuse(&parts[n - 1].dir, format!("the partitions hold {next} input files, not the {} of the job", parts[0].info.total_files)));
    }
    Ok(parts)
}

/// Refuses a non-empty output (unless `overwrite`, which deletes only our files there).
fn prepare_output(cfg: &MergeConfig) -> Result<()> {
    let out = &cfg.output;
    if out.exists() && !out.is_dir() {
        return Err(Error::Output { path: out.clone(), reason: "is not a directory".into() });
    }
    if !out.is_dir() {
        return Ok(());
    }
    let nonempty = std::fs::read_dir(out).map_err(io_err(out))?.next().is_some();
    if !nonempty {
        return Ok(());
    }
    if !cfg.overwrite {
        return Err(Error::Output {
            path: out.clone(),
            reason: "is not empty; use --overwrite to replace an earlier output there (only its shard files and manifests are deleted)".into(),
        });
    }
    for f in our_files(out, "\0")?.into_iter().chain(holdout_files(out)?) {
        remove(&f)?;
    }
    let _ = std::fs::remove_dir(out.join(HOLDOUT_DIR));
    Ok(())
}

/// Copies the documents of `sources` (directory, shard) in order into new shards in `out`.
fn copy_shards(sources: &[(PathBuf, &ShardEntry)], out: &Path, m: &Manifest, limit: u64, progress: &Progress) -> Result<Vec<ShardEntry>> {
    let itemsize = m.dtype.itemsize() as u64;
    let mut done: Vec<ShardEntry> = Vec::new();
    let mut cur: Option<ShardWriter> = None;
    let mut buf: Vec<u8> = Vec::new();
    for (dir, sh) in sources {
        // Both files streamed (the index too: a shard of short documents has a large one).
        let idx_p = safe_member(dir, &sh.idx)?;
        let mut ri = BufReader::with_capacity(1 << 16, File::open(&idx_p).map_err(io_err(&idx_p))?);
        let mut hi = Sha256::new();
        let mut next_off = || -> Result<u64> {
            let mut b = [0u8; 8];
            ri.read_exact(&mut b).map_err(io_err(&idx_p))?;
            hi.update(b);
            Ok(u64::from_le_bytes(b))
        };
        let mut prev = next_off()?;
        let bin_p = safe_member(dir, &sh.bin)?;
        let mut r = BufReader::with_capacity(1 << 20, File::open(&bin_p).map_err(io_err(&bin_p))?);
        let mut h = Sha256::new();
        for _ in 0..sh.documents {
            if progress.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let off = next_off()?;
            let ntok = off.checked_sub(prev).ok_or_else(|| refuse(&idx_p, "offsets decrease (damaged partition)".into()))?;
            prev = off;
            buf.resize((ntok * itemsize) as usize, 0);
            r.read_exact(&mut buf).map_err(io_err(&bin_p))?;
            h.update(&buf);
            let w = match cur.as_mut() {
                Some(w) => w,
                None => cur.insert(ShardWriter::create(out, done.len(), m.dtype)?),
            };
            w.write_doc_bytes(&buf, ntok)?;
            if w.tokens() >= limit {
                done.push(cur.take().expect("present").commit()?);
            }
            progress.raw_bytes_read.fetch_add(buf.len() as u64, Ordering::Relaxed);
            progress.documents.fetch_add(1, Ordering::Relaxed);
            progress.tokens.fetch_add(ntok, Ordering::Relaxed);
        }
        if prev != sh.tokens || hex(&hi.finalize()) != sh.idx_sha256 {
            return Err(refuse(&idx_p, "its sha256 differs from its manifest's (damaged partition)".into()));
        }
        if hex(&h.finalize()) != sh.bin_sha256 {
            return Err(refuse(&bin_p, "its sha256 differs from its manifest's (damaged partition)".into()));
        }
        progress.files_done.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(w) = cur.take() {
        done.push(w.commit()?);
    }
    Ok(done)
}

/// Merges the partitions; returns the merged manifest (as a single run writes it).
pub fn merge(cfg: &MergeConfig, progress: &Progress) -> Result<Manifest> {
    let parts = check(cfg)?;
    prepare_output(cfg)?;
    let p0 = &parts[0];
    let limit = p0.m.options.get("shard_tokens").and_then(|v| v.as_u64()).unwrap_or(1 << 28);
    let all = |held: bool| -> Vec<(PathBuf, &ShardEntry)> {
        parts
            .iter()
            .flat_map(|p| {
                let (dir, m) = if held {
                    (p.dir.join(p.m.holdout.as_ref().map(|h| h.path.as_str()).unwrap_or(HOLDOUT_DIR)), p.held.as_ref())
                } else {
                    (p.dir.clone(), Some(&p.m))
                };
                m.map(|m| m.shards.iter().map(move |s| (dir.clone(), s)).collect::<Vec<_>>()).unwrap_or_default()
            })
            .collect()
    };
    let main = all(false);
    let held = all(true);
    let bytes = |v: &[(PathBuf, &ShardEntry)], m: &Manifest| v.iter().map(|(_, s)| s.tokens * m.dtype.itemsize() as u64).sum::<u64>();
    let hm0 = p0.held.as_ref();
    progress.raw_bytes_total.store(bytes(&main, &p0.m) + hm0.map(|m| bytes(&held, m)).unwrap_or(0), Ordering::Relaxed);
    progress.files_total.store((main.len() + held.len()) as u64, Ordering::Relaxed);

    let out = &cfg.output;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let shards_done = copy_shards(&main, out, &p0.m, limit, progress)?;
    let mut counts = Counts::default();
    let (mut files, mut bad_files) = (0, 0);
    let mut inputs = Vec::new();
    for p in &parts {
        counts.add(&p.m.counts.counts);
        files += p.m.counts.files;
        bad_files += p.m.counts.bad_files;
        inputs.extend(p.m.inputs.iter().cloned());
    }
    let mut options = p0.m.options.clone();
    if let Some(o) = options.as_object_mut() {
        o.remove("partition");
    }
    let manifest = Manifest {
        shards: shards_done,
        counts: TotalCounts { counts, files, bad_files },
        inputs,
        options,
        fingerprint: p0.info.whole_fingerprint.clone(),
        partition: None,
        ..p0.m.clone()
    };
    if let (Some(hm), Some(h)) = (hm0, &p0.m.holdout) {
        let hdir = out.join(&h.path);
        std::fs::create_dir_all(&hdir).map_err(io_err(&hdir))?;
        let shards = copy_shards(&held, &hdir, hm, limit, progress)?;
        let held_manifest = manifest.holdout_of(hm.format.clone(), hm.dtype, shards, hm.holdout.clone());
        write_json_atomic(&hdir.join(MANIFEST), &held_manifest)?;
    }
    write_json_atomic(&out.join(MANIFEST), &manifest)?;
    shards::sync_dir(out)?;
    Ok(manifest)
}
