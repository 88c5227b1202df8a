//! Output side: atomic files (temp name, fsync, rename, fsync of the directory) and the
//! project's own shard format (`shard-NNNNN.bin` + `shard-NNNNN.idx`, see docs/formats.md).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use super::input::hex;

pub const TMP_SUFFIX: &str = ".tmp";

/// Token storage type on disk (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Uint16,
    Uint32,
    Int32,
}

impl DType {
    pub fn itemsize(self) -> usize {
        match self {
            DType::Uint16 => 2,
            DType::Uint32 | DType::Int32 => 4,
        }
    }
    /// Appends `ids` as little-endian elements. Ids must fit (the dtype was chosen from the vocab).
    pub fn encode_into(self, ids: &[u32], out: &mut Vec<u8>) {
        out.reserve(ids.len() * self.itemsize());
        match self {
            DType::Uint16 => {
                for &id in ids {
                    out.extend_from_slice(&(id as u16).to_le_bytes());
                }
            }
            DType::Uint32 | DType::Int32 => {
                for &id in ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
    }
}

/// The shard format's dtype for a vocabulary.
pub fn shard_dtype(vocab: usize) -> DType {
    if vocab <= 65536 {
        DType::Uint16
    } else {
        DType::Uint32
    }
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// fsyncs a directory so that renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let f = File::open(dir).map_err(io_err(dir))?;
        f.sync_all().map_err(io_err(dir))?;
    }
    Ok(())
}

/// A file written under `<name>.tmp` and renamed to its name only when complete and fsynced;
/// hashes what it writes.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    w: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = tmp_path(path);
        let f = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(AtomicFile { path: path.to_path_buf(), tmp, w: BufWriter::with_capacity(1 << 20, f), hasher: Sha256::new(), bytes: 0 })
    }

    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        self.w.write_all(data).map_err(io_err(&self.tmp))
    }

    /// Flushes and fsyncs what was written so far (the file stays under its `.tmp` name); returns
    /// its length, for a checkpoint that [`AtomicFile::reopen`] can go back to.
    pub fn sync(&mut self) -> Result<u64> {
        self.w.flush().map_err(io_err(&self.tmp))?;
        self.w.get_ref().sync_data().map_err(io_err(&self.tmp))?;
        Ok(self.bytes)
    }

    /// Continues a file from a checkpoint: its `.tmp` (or, when it was committed since, its final
    /// name, renamed back) cut to `len` bytes, those bytes hashed again, writing after them.
    pub fn reopen(path: &Path, len: u64) -> Result<Self> {
        use std::io::{Read, Seek};
        let tmp = tmp_path(path);
        if !tmp.exists() && path.exists() {
            std::fs::rename(path, &tmp).map_err(io_err(path))?;
        }
        let mut f = reopen_truncated(&tmp, len)?;
        f.seek(std::io::SeekFrom::Start(0)).map_err(io_err(&tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = f.read(&mut buf[..left.min(1 << 20) as usize]).map_err(io_err(&tmp))?;
            if n == 0 {
                return Err(Error::Output { path: tmp, reason: "ended before its checkpoint; cannot resume (rerun with --overwrite)".into() });
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        f.seek(std::io::SeekFrom::Start(len)).map_err(io_err(&tmp))?;
        Ok(AtomicFile { path: path.to_path_buf(), tmp, w: BufWriter::with_capacity(1 << 20, f), hasher, bytes: len })
    }

    /// Flushes, fsyncs, renames to the final name, fsyncs the directory. Returns (bytes, sha256).
    pub fn commit(self) -> Result<(u64, String)> {
        let AtomicFile { path, tmp, w, hasher, bytes } = self;
        let f = w.into_inner().map_err(|e| Error::Io { path: tmp.clone(), source: e.into_error() })?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok((bytes, hex(&hasher.finalize())))
    }
}

/// Writes `value` as pretty JSON (with a final newline) to `path` atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Output { path: path.to_path_buf(), reason: e.to_string() })?;
    text.push(b'\n');
    let mut f = AtomicFile::create(path)?;
    f.write_all(&text)?;
    f.commit()?;
    Ok(())
}

/// One finished shard, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub bin: String,
    pub idx: String,
    pub documents: u64,
    pub tokens: u64,
    pub bin_sha256: String,
    pub idx_sha256: String,
}

pub fn shard_name(index: usize) -> (String, String) {
    (format!("shard-{index:05}.bin"), format!("shard-{index:05}.idx"))
}

/// A shard being written, as a checkpoint records it: its number and what its `.tmp` files hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCheckpoint {
    pub index: usize,
    pub documents: u64,
    pub tokens: u64,
    pub bin_bytes: u64,
    pub idx_bytes: u64,
}

/// Writes one shard: tokens to `.bin`, uint64 document offsets (in tokens) to `.idx`.
pub struct ShardWriter {
    index: usize,
    bin_name: String,
    idx_name: String,
    bin: AtomicFile,
    idx: AtomicFile,
    dtype: DType,
    documents: u64,
    tokens: u64,
    buf: Vec<u8>,
}

impl ShardWriter {
    pub fn create(dir: &Path, index: usize, dtype: DType) -> Result<Self> {
        let (bin_name, idx_name) = shard_name(index);
        let bin = AtomicFile::create(&dir.join(&bin_name))?;
        let mut idx = AtomicFile::create(&dir.join(&idx_name))?;
        idx.write_all(&0u64.to_le_bytes())?;
        Ok(ShardWriter { index, bin_name, idx_name, bin, idx, dtype, documents: 0, tokens: 0, buf: Vec::new() })
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// Where a shard being written stands, for a checkpoint (`progress.json`).
    pub fn checkpoint(&mut self) -> Result<ShardCheckpoint> {
        let bin_bytes = self.bin.sync()?;
        let idx_bytes = self.idx.sync()?;
        Ok(ShardCheckpoint { index: self.index, documents: self.documents, tokens: self.tokens, bin_bytes, idx_bytes })
    }

    /// Continues a shard from a checkpoint (its files cut back to the recorded lengths).
    pub fn resume(dir: &Path, dtype: DType, cp: &ShardCheckpoint) -> Result<Self> {
        let (bin_name, idx_name) = shard_name(cp.index);
        if cp.bin_bytes != cp.tokens * dtype.itemsize() as u64 || cp.idx_bytes != (cp.documents + 1) * 8 {
            return Err(Error::Output { path: dir.join(&bin_name), reason: "inconsistent checkpoint; cannot resume (rerun with --overwrite)".into() });
        }
        let bin = AtomicFile::reopen(&dir.join(&bin_name), cp.bin_bytes)?;
        let idx = AtomicFile::reopen(&dir.join(&idx_name), cp.idx_bytes)?;
        Ok(ShardWriter { index: cp.index, bin_name, idx_name, bin, idx, dtype, documents: cp.documents, tokens: cp.tokens, buf: Vec::new() })
    }

    /// Appends one document given as its on-disk bytes (`ntok` elements of this shard's dtype).
    pub fn write_doc_bytes(&mut self, raw: &[u8], ntok: u64) -> Result<()> {
        self.bin.write_all(raw)?;
        self.tokens += ntok;
        self.documents += 1;
        self.idx.write_all(&self.tokens.to_le_bytes())
    }

    pub fn write_doc(&mut self, ids: &[u32]) -> Result<()> {
        self.buf.clear();
        self.dtype.encode_into(ids, &mut self.buf);
        self.bin.write_all(&self.buf)?;
        self.tokens += ids.len() as u64;
        self.documents += 1;
        self.idx.write_all(&self.tokens.to_le_bytes())
    }

    /// Makes the shard durable under its final names (`.bin` first, then `.idx`).
    pub fn commit(self) -> Result<ShardEntry> {
        let (_, bin_sha256) = self.bin.commit()?;
        let (_, idx_sha256) = self.idx.commit()?;
        Ok(ShardEntry {
            bin: self.bin_name,
            idx: self.idx_name,
            documents: self.documents,
            tokens: self.tokens,
            bin_sha256,
            idx_sha256,
        })
    }
}

/// Opens a file for appending after truncating it to `len` bytes (resume of a growing file).
pub fn reopen_truncated(path: &Path, len: u64) -> Result<File> {
    let f = OpenOptions::new().read(true).write(true).open(path).map_err(io_err(path))?;
    let have = f.metadata().map_err(io_err(path))?.len();
    if have < len {
        return Err(Error::Output {
            path: path.to_path_buf(),
            reason: format!("is {have} bytes but the progress file recorded {len}; cannot resume (rerun with --overwrite)"),
        });
    }
    f.set_len(len).map_err(io_err(path))?;
    let mut f = f;
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(len)).map_err(io_err(path))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_layout() {
        let dir = std::env::temp_dir().join(format!("bc-shard-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = ShardWriter::create(&dir, 3, DType::Uint16).unwrap();
        w.write_doc(&[1, 2, 3]).unwrap();
        w.write_doc(&[65535]).unwrap();
        let e = w.commit().unwrap();
        assert_eq!(e.bin, "shard-00003.bin");
        assert_eq!((e.documents, e.tokens), (2, 4));
        let bin = std::fs::read(dir.join("shard-00003.bin")).unwrap();
        assert_eq!(bin, vec![1, 0, 2, 0, 3, 0, 255, 255]);
        let idx = std::fs::read(dir.join("shard-00003.idx")).unwrap();
        let offs: Vec<u64> = idx.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(offs, vec![0, 3, 4]);
        assert!(!dir.join("shard-00003.bin.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A shard resumed from a checkpoint (after more was written, even after it was committed)
    /// ends byte-identical, checksums included, to one written in one go.
    #[test]
    fn shard_checkpoint_and_resume() {
        let dir = std::env::temp_dir().join(format!("bc-shard-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let docs: Vec<Vec<u32>> = (0..20u32).map(|i| (0..i % 7 + 1).map(|j| i * 100 + j).collect()).collect();
        let mut w = ShardWriter::create(&dir, 0, DType::Uint16).unwrap();
        for d in &docs {
            w.write_doc(d).unwrap();
        }
        let want = w.commit().unwrap();
        let want_bytes = (std::fs::read(dir.join("shard-00000.bin")).unwrap(), std::fs::read(dir.join("shard-00000.idx")).unwrap());
        for committed in [false, true] {
            std::fs::remove_file(dir.join("shard-00000.bin")).unwrap();
            std::fs::remove_file(dir.join("shard-00000.idx")).unwrap();
            let mut w = ShardWriter::create(&dir, 0, DType::Uint16).unwrap();
            for d in &docs[..8] {
                w.write_doc(d).unwrap();
            }
            let cp = w.checkpoint().unwrap();
            for d in &docs[8..12] {
                w.write_doc(d).unwrap(); // lost: written after the checkpoint
            }
            if committed {
                w.commit().unwrap();
            } else {
                w.checkpoint().unwrap();
                drop(w);
            }
            let mut w = ShardWriter::resume(&dir, DType::Uint16, &cp).unwrap();
            for d in &docs[8..] {
                w.write_doc(d).unwrap();
            }
            assert_eq!(w.commit().unwrap(), want, "committed {committed}");
            let got = (std::fs::read(dir.join("shard-00000.bin")).unwrap(), std::fs::read(dir.join("shard-00000.idx")).unwrap());
            assert_eq!(got, want_bytes);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
