//! Megatron-LM `MMapIndexedDataset` writer (`PREFIX.bin` + `PREFIX.idx`), written from
//! `docs/formats.md` ("Megatron byte layout"): one sequence per document (no sentence splitting),
//! `doc_index = [0, 1, ..., N]`, dtype code 8 (uint16) when vocab < 65500 else 4 (int32).
//!
//! Streaming with bounded memory: tokens go to `PREFIX.bin.tmp` and each document's length
//! (u32 LE) to `PREFIX.lengths.tmp`; `finish` builds `PREFIX.idx` from the lengths file in one
//! pass, then renames `.bin.tmp` to `.bin`. Both growing files can be cut back to a checkpoint
//! (`resume`).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use super::shards::{io_err, reopen_truncated, sync_dir, AtomicFile, DType};

pub const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
pub const HEADER_LEN: u64 = 34;

/// Megatron's rule (`optimal_dtype` / `__best_fitting_dtype`).
pub fn megatron_dtype(vocab_size: usize) -> DType {
    if vocab_size < 65500 {
        DType::Uint16
    } else {
        DType::Int32
    }
}

pub fn dtype_code(d: DType) -> u8 {
    match d {
        DType::Uint16 => 8,
        DType::Int32 => 4,
        DType::Uint32 => 4, // never produced by megatron_dtype
    }
}

/// Where the writer stands at a checkpoint (stored in the progress file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MegatronCheckpoint {
    pub sequences: u64,
    pub tokens: u64,
}

/// The finished pair, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MegatronEntry {
    pub bin: String,
    pub idx: String,
    pub dtype_code: u8,
    pub sequences: u64,
    pub documents: u64,
    pub tokens: u64,
    pub bin_sha256: String,
    pub idx_sha256: String,
}

pub struct MegatronWriter {
    prefix: PathBuf,
    dtype: DType,
    bin: BufWriter<File>,
    lengths: BufWriter<File>,
    at: MegatronCheckpoint,
    buf: Vec<u8>,
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl MegatronWriter {
    pub fn bin_tmp(prefix: &Path) -> PathBuf {
        with_suffix(prefix, ".bin.tmp")
    }
    pub fn lengths_tmp(prefix: &Path) -> PathBuf {
        with_suffix(prefix, ".lengths.tmp")
    }

    /// Starts from scratch, or from checkpoint `at` (files cut back to it).
    pub fn open(prefix: &Path, dtype: DType, at: Option<MegatronCheckpoint>) -> Result<Self> {
        let bin_p = Self::bin_tmp(prefix);
        let len_p = Self::lengths_tmp(prefix);
        let (bin, lengths, at) = match at {
            None => (
                File::create(&bin_p).map_err(io_err(&bin_p))?,
                File::create(&len_p).map_err(io_err(&len_p))?,
                MegatronCheckpoint::default(),
            ),
            Some(at) => (
                reopen_truncated(&bin_p, at.tokens * dtype.itemsize() as u64)?,
                reopen_truncated(&len_p, at.sequences * 4)?,
                at,
            ),
        };
        Ok(MegatronWriter {
            prefix: prefix.to_path_buf(),
            dtype,
            bin: BufWriter::with_capacity(1 << 20, bin),
            lengths: BufWriter::with_capacity(1 << 16, lengths),
            at,
            buf: Vec::new(),
        })
    }

    pub fn write_doc(&mut self, ids: &[u32]) -> Result<()> {
        if ids.len() > i32::MAX as usize {
            return Err(Error::Output { path: self.prefix.clone(), reason: "a document exceeds 2^31-1 tokens".into() });
        }
        self.buf.clear();
        self.dtype.encode_into(ids, &mut self.buf);
        let bin_p = Self::bin_tmp(&self.prefix);
        self.bin.write_all(&self.buf).map_err(io_err(&bin_p))?;
        let len_p = Self::lengths_tmp(&self.prefix);
        self.lengths.write_all(&(ids.len() as u32).to_le_bytes()).map_err(io_err(&len_p))?;
        self.at.sequences += 1;
        self.at.tokens += ids.len() as u64;
        Ok(())
    }

    /// Makes everything written so far durable and returns the checkpoint to record.
    pub fn checkpoint(&mut self) -> Result<MegatronCheckpoint> {
        let bin_p = Self::bin_tmp(&self.prefix);
        let len_p = Self::lengths_tmp(&self.prefix);
        self.bin.flush().map_err(io_err(&bin_p))?;
        self.bin.get_ref().sync_data().map_err(io_err(&bin_p))?;
        self.lengths.flush().map_err(io_err(&len_p))?;
        self.lengths.get_ref().sync_data().map_err(io_err(&len_p))?;
        Ok(self.at)
    }

    /// Writes `.idx` (atomically) from the lengths file, renames `.bin.tmp` to `.bin`, removes the
    /// lengths file.
    pub fn finish(mut self) -> Result<MegatronEntry> {
        let at = self.checkpoint()?;
        drop(self.bin);
        drop(self.lengths);
        finish_files(&self.prefix, self.dtype, at)
    }
}

/// The finishing step on its own, so that a resumed job that died while finishing can redo it.
pub fn finish_files(prefix: &Path, dtype: DType, at: MegatronCheckpoint) -> Result<MegatronEntry> {
    let bin_tmp = MegatronWriter::bin_tmp(prefix);
    let len_p = MegatronWriter::lengths_tmp(prefix);
    let bin_final = with_suffix(prefix, ".bin");
    let idx_final = with_suffix(prefix, ".idx");
    let n = at.sequences;
    let itemsize = dtype.itemsize() as u64;

    // .idx: header, lengths (i32), pointers (i64 bytes), doc_index (i64 0..=n)
    let mut idx = AtomicFile::create(&idx_final)?;
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&1u64.to_le_bytes());
    header.push(dtype_code(dtype));
    header.extend_from_slice(&n.to_le_bytes());
    header.extend_from_slice(&(n + 1).to_le_bytes());
    idx.write_all(&header)?;
    let read_lengths = |f: &mut dyn FnMut(u32) -> Result<()>| -> Result<()> {
        let file = File::open(&len_p).map_err(io_err(&len_p))?;
        let mut r = BufReader::with_capacity(1 << 20, file).take(n * 4);
        let mut b = [0u8; 4];
        for _ in 0..n {
            r.read_exact(&mut b).map_err(io_err(&len_p))?;
            f(u32::from_le_bytes(b))?;
        }
        Ok(())
    };
    read_lengths(&mut |len| idx.write_all(&(len as i32).to_le_bytes()))?;
    let mut ptr: i64 = 0;
    let mut total_tokens = 0u64;
    read_lengths(&mut |len| {
        idx.write_all(&ptr.to_le_bytes())?;
        ptr += len as i64 * itemsize as i64;
        total_tokens += len as u64;
        Ok(())
    })?;
    if total_tokens != at.tokens {
        return Err(Error::Output {
            path: len_p.clone(),
            reason: format!("lengths sum to {total_tokens} tokens but {} were written", at.tokens),
        });
    }
    for j in 0..=n {
        idx.write_all(&(j as i64).to_le_bytes())?;
    }
    let (_, idx_sha256) = idx.commit()?;

    // .bin: rename unless a previous attempt already did
    if bin_tmp.exists() {
        let f = File::open(&bin_tmp).map_err(io_err(&bin_tmp))?;
        let have = f.metadata().map_err(io_err(&bin_tmp))?.len();
        if have != at.tokens * itemsize {
            return Err(Error::Output { path: bin_tmp.clone(), reason: format!("is {have} bytes, expected {}", at.tokens * itemsize) });
        }
        f.sync_all().map_err(io_err(&bin_tmp))?;
        std::fs::rename(&bin_tmp, &bin_final).map_err(io_err(&bin_final))?;
    }
    if let Some(dir) = prefix.parent() {
        sync_dir(dir)?;
    }
    let bin_sha256 = super::sha256_file(&bin_final)?;
    let name = |p: &Path| p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(MegatronEntry {
        bin: name(&bin_final),
        idx: name(&idx_final),
        dtype_code: dtype_code(dtype),
        sequences: n,
        documents: n,
        tokens: at.tokens,
        bin_sha256,
        idx_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of `docs/formats.md`, "Megatron byte layout".
    #[test]
    fn worked_example_bytes() {
        let dir = std::env::temp_dir().join(format!("bc-mega-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = dir.join("ex");
        let mut w = MegatronWriter::open(&prefix, megatron_dtype(50257), None).unwrap();
        w.write_doc(&[464, 3290, 50256]).unwrap();
        w.write_doc(&[15496, 50256]).unwrap();
        let cp = w.checkpoint().unwrap();
        w.write_doc(&[999]).unwrap(); // cut back by the resume below
        drop(w);
        let mut w = MegatronWriter::open(&prefix, DType::Uint16, Some(cp)).unwrap();
        w.write_doc(&[40, 588, 257, 50256]).unwrap();
        w.finish().unwrap();
        let idx = std::fs::read(dir.join("ex.idx")).unwrap();
        let expect: Vec<u8> = [
            "4d 4d 49 44 49 44 58 00 00 01 00 00 00 00 00 00",
            "00 08 03 00 00 00 00 00 00 00 04 00 00 00 00 00",
            "00 00 03 00 00 00 02 00 00 00 04 00 00 00 00 00",
            "00 00 00 00 00 00 06 00 00 00 00 00 00 00 0a 00",
            "00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00",
            "00 00 00 00 00 00 02 00 00 00 00 00 00 00 03 00",
            "00 00 00 00 00 00",
        ]
        .join(" ")
        .split(' ')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
        assert_eq!(idx, expect);
        let bin = std::fs::read(dir.join("ex.bin")).unwrap();
        let expect_bin: Vec<u8> = "d0 01 da 0c 50 c4 88 3c 50 c4 28 00 4c 02 01 01 50 c4"
            .split(' ')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        assert_eq!(bin, expect_bin);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
