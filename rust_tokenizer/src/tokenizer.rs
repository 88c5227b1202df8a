//! The public Rust API: a SentencePiece BPE model that encodes and decodes byte-identically to
//! `sentencepiece` 0.2.3 (behaviour: `docs/sentencepiece-behaviour.md`).
//!
//! Pipeline: normalize the whole input (`normalizer.rs`), cut the normalized string into chunks
//! at points where no vocabulary piece can span the cut (decided per model at load time, see
//! [`crate::vocab::ChunkRule`]), encode each chunk with SentencePiece's score/leftmost BPE agenda
//! (`bpe.rs`), memoised in a bounded per-thread chunk cache, then join (fusing unknowns across
//! joins as SentencePiece does on the whole string). Models whose pieces make cutting unsafe
//! (reachable UNUSED pieces) run BPE over the whole normalized string instead. The vocabulary
//! and its tables live in `vocab.rs`, the batch scheduler in `batch.rs`.

use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

pub use crate::batch::{block_size, threads_for, BlockQueue, IdBlock};
use crate::batch::{pool_for, schedule};
use crate::bpe::Bpe;
use crate::cache::ChunkCache;
use crate::error::{Error, Result};
use crate::normalizer::{le32, lead_len, push_bytes_lossy, CharsMap, Normalizer, WS};
use crate::prefix::load4;
use crate::proto::{parse_model, NormalizerProto, PieceType};
use crate::vocab::{
    bmp_index, pack_char, small_index, CharInfo, Sink, Tok, Vocab, NONE, WS_PACKED,
};

/// Chunks longer than this are encoded without the cache (they rarely repeat).
const MAX_CACHED_CHUNK: usize = 128;

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// A loaded SentencePiece BPE model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    uid: u64,
    pub(crate) vocab: Vocab,
    normalizer: Normalizer,
    denormalizer: Option<Normalizer>,
}

/// One piece of the normalized string, as the chunker hands it out.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// A frozen user-defined piece with its id.
    Frozen(u32),
    /// One character, or two that make one piece; the id of that piece from the character
    /// table or the chunk rule (`CharInfo::NO_ID`: look it up).
    Char(u32),
    /// Several characters (or, without a chunk rule, the whole string): a BPE run.
    Run,
}

/// One encode's reusable buffers plus the chunk cache, kept per thread.
#[derive(Default)]
struct Scratch {
    norm: Vec<u8>,
    bpe: Bpe,
    toks: Vec<Tok>,
    cache: ChunkCache,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Piece strings (`encode_as_pieces`): fused unknowns are the concatenated normalized surfaces.
impl Sink for Vec<Vec<u8>> {
    fn id(&mut self, vocab: &Vocab, id: u32) {
        self.push(vocab.pieces[id as usize].text.to_vec());
    }
    fn unk(&mut self, _: &Vocab, span: &[u8], fused: bool) {
        match self.last_mut() {
            Some(last) if fused => last.extend_from_slice(span),
            _ => self.push(span.to_vec()),
        }
    }
}

fn build_normalizer(spec: &NormalizerProto, wsfx: bool, origin: &str) -> Result<Normalizer> {
    let charsmap = if spec.precompiled_charsmap.is_empty() {
        None
    } else {
        Some(
            CharsMap::parse(&spec.precompiled_charsmap).map_err(|reason| Error::InvalidModel {
                origin: origin.to_string(),
                reason,
            })?,
        )
    };
    Ok(Normalizer {
        charsmap,
        add_dummy_prefix: spec.add_dummy_prefix,
        remove_extra_whitespaces: spec.remove_extra_whitespaces,
        escape_whitespaces: spec.escape_whitespaces,
        treat_whitespace_as_suffix: wsfx,
    })
}

impl Tokenizer {
    /// Reads a SentencePiece `.model` file (a serialized `ModelProto`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses a serialized `ModelProto`; `origin` names it in errors (usually the file path).
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let m = parse_model(bytes).map_err(|r| Error::InvalidModel {
            origin: origin.to_string(),
            reason: format!("cannot parse ModelProto: {r}"),
        })?;
        if m.trainer.model_type != 2 {
            let name = match m.trainer.model_type {
                1 => "UNIGRAM".to_string(),
                3 => "WORD".to_string(),
                4 => "CHAR".to_string(),
                n => format!("{n} (unknown)"),
            };
            return Err(Error::UnsupportedModelType {
                origin: origin.to_string(),
                model_type: name,
            });
        }
        let vocab = Vocab::new(m.pieces, &m.trainer, origin)?;
        let mut normalizer =
            build_normalizer(&m.normalizer, m.trainer.treat_whitespace_as_suffix, origin)?;
        if let Some(cps) = vocab.user_defined_starts() {
            normalizer.mark_user_defined_starts(
                &cps,
                &vocab.user_defined_singles(),
                &vocab.user_defined_pieces(),
            );
        }
        let denormalizer = match &m.denormalizer {
            Some(d) if !d.precompiled_charsmap.is_empty() => {
                Some(build_normalizer(d, false, origin)?)
            }
            _ => None,
        };
        Ok(Tokenizer {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            vocab,
            normalizer,
            denormalizer,
        })
    }

    /// Encodes text exactly as `SentencePieceProcessor.encode(text)` does (no BOS/EOS).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_bytes(text.as_bytes())
    }

    /// Encodes raw bytes (invalid UTF-8 is handled as SentencePiece does: U+FFFD per bad byte).
    pub fn encode_bytes(&self, text: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out);
        out
    }

    /// Appends the ids of `text` to `out`.
    pub fn encode_into(&self, text: &[u8], out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => self.encode_with(text, &mut s, out),
            Err(_) => self.encode_with(text, &mut Scratch::default(), out),
        })
    }

    /// Encodes many texts in parallel; the result equals per-text [`Tokenizer::encode_bytes`].
    /// `num_threads`: `None` = all cores, `Some(0)` is treated as 1.
    pub fn encode_batch<T: AsRef<[u8]> + Sync>(
        &self,
        texts: &[T],
        num_threads: Option<usize>,
    ) -> Vec<Vec<u32>> {
        let mut out = Vec::with_capacity(texts.len());
        for b in self.encode_blocks(texts, num_threads) {
            out.extend(b.iter().map(<[u32]>::to_vec));
        }
        out
    }

    /// Like [`Tokenizer::encode_batch`] but returns all ids concatenated plus `len + 1` offsets.
    pub fn encode_batch_flat<T: AsRef<[u8]> + Sync>(
        &self,
        texts: &[T],
        num_threads: Option<usize>,
    ) -> (Vec<u32>, Vec<u64>) {
        let blocks = self.encode_blocks(texts, num_threads);
        let total: usize = blocks.iter().map(|b| b.ids.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(texts.len() + 1);
        offsets.push(0u64);
        for b in &blocks {
            for t in b.iter() {
                ids.extend_from_slice(t);
                offsets.push(ids.len() as u64);
            }
        }
        (ids, offsets)
    }

    /// Encodes `texts` in blocks of consecutive texts with the batch scheduler
    /// ([`crate::batch::schedule`]), each block's ids in one buffer (no allocation per text).
    /// Blocks come back in order.
    pub fn encode_blocks<T: AsRef<[u8]> + Sync>(
        &self,
        texts: &[T],
        num_threads: Option<usize>,
    ) -> Vec<IdBlock> {
        let mut out: Vec<(usize, IdBlock)> = Vec::new();
        let done: std::result::Result<(), std::convert::Infallible> = schedule(
            texts.len(),
            threads_for(num_threads),
            |r| self.encode_block(&texts[r]),
            |step| step(),
            |first, b| {
                out.push((first, b));
                Ok(())
            },
        );
        let Ok(()) = done;
        out.sort_unstable_by_key(|x| x.0);
        out.into_iter().map(|x| x.1).collect()
    }

    /// The ids of `texts`, in one block.
    pub fn encode_block<T: AsRef<[u8]>>(&self, texts: &[T]) -> IdBlock {
        let bytes: usize = texts.iter().map(|t| t.as_ref().len()).sum();
        let mut b = IdBlock {
            ids: Vec::with_capacity(bytes / 3 + 8),
            ends: Vec::with_capacity(texts.len()),
        };
        for t in texts {
            self.encode_into(t.as_ref(), &mut b.ids);
            b.ends.push(b.ids.len());
        }
        b
    }

    fn in_pool<R: Send>(&self, num_threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
        match num_threads {
            None => f(),
            Some(n) => match pool_for(n.clamp(1, 1024)) {
                Ok(pool) => pool.install(f),
                // A pool that cannot be built (thread limits): run on the global pool.
                Err(_) => f(),
            },
        }
    }

    /// Pieces as SentencePiece's `encode(text, out_type=str)` gives them (fused unknowns are the
    /// concatenated normalized surfaces).
    pub fn encode_as_pieces(&self, text: &[u8]) -> Vec<String> {
        if text.is_empty() {
            return Vec::new();
        }
        let v = &self.vocab;
        let norm = self.normalize(text);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let (mut bpe, mut toks) = (Bpe::default(), Vec::new());
        let mut prev_unk = false;
        self.for_each_chunk::<false>(&norm, &mut Vec::new(), |_, chunk, kind| {
            let one;
            let toks: &[Tok] = match kind {
                Chunk::Frozen(id) => {
                    one = [Tok::Id(id)];
                    &one
                }
                Chunk::Char(id) => {
                    let id = if id == CharInfo::NO_ID { v.char_id(chunk) } else { id };
                    one = [if id == NONE {
                        Tok::Unk(0, chunk.len() as u32)
                    } else {
                        Tok::Id(id)
                    }];
                    &one
                }
                Chunk::Run => {
                    toks.clear();
                    bpe.run(v, chunk, v.chunk.is_none(), &mut toks);
                    &toks
                }
            };
            v.finish(toks, chunk, &mut prev_unk, &mut out);
        });
        out.into_iter()
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .collect()
    }

    /// SentencePiece's `normalize(text)`.
    pub fn normalize(&self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.normalizer
            .normalize(text, self.vocab.ud.as_ref(), &mut out);
        out
    }

    /// Reference path for tests and fuzzing: SentencePiece's algorithm literally, one BPE run over
    /// the whole normalized string (user-defined pieces frozen inside it), no chunking, no cache.
    /// [`Tokenizer::encode_bytes`] must always equal this.
    #[doc(hidden)]
    pub fn encode_whole(&self, text: &[u8]) -> Vec<u32> {
        let norm = self.normalize(text);
        let mut out = Vec::new();
        if norm.is_empty() {
            return out;
        }
        let mut toks = Vec::new();
        Bpe::default().run(&self.vocab, &norm, true, &mut toks);
        self.vocab.finish(&toks, &norm, &mut false, &mut out);
        out
    }

    /// Calls `f(chunk, kind)` for each chunk of the normalized string in order. Without a chunk
    /// rule the whole string is one [`Chunk::Run`] (with its user-defined symbols inside).
    ///
    /// One pass, one table entry per character: the entry says whether a user-defined piece may
    /// start here, its flags decide most cuts without hashing
    /// ([`crate::vocab::ChunkRule::joins`]), and a chunk of one character carries its piece id
    /// from the same entry.
    ///
    /// With `DIRECT`, a chunk whose id is known (a frozen user-defined piece, a character with
    /// its id in the table, two characters that are one piece) is pushed to `ids` here instead
    /// of going through `f`; `f` gets `ids` and the other chunks (`Chunk::Char(NO_ID)` and
    /// `Chunk::Run`). Without it every chunk goes through `f`, `ids` untouched.
    #[inline]
    fn for_each_chunk<'a, const DIRECT: bool>(
        &self,
        norm: &'a [u8],
        ids: &mut Vec<u32>,
        mut f: impl FnMut(&mut Vec<u32>, &'a [u8], Chunk),
    ) {
        let v = &self.vocab;
        let Some(rule) = &v.chunk else {
            if !norm.is_empty() {
                f(ids, norm, Chunk::Run);
            }
            return;
        };
        let ud = v.ud.as_ref();
        let ud_exact = v.ud_flags_exact;
        // The inner loops below leave every character that may start a user-defined piece to the
        // general code: those with the table flag (set only when there are user-defined pieces)
        // and, when the flags are not exact, those whose first byte starts one.
        let loose = ud.filter(|_| !ud_exact);
        let n = norm.len();
        let mut start = 0usize; // the current chunk
        let mut prev_at = 0usize; // where its last character starts
        let mut prev = 0u32; // that character, packed
        let mut prev_info = CharInfo::GENERIC; // and its table entry
        let mut pos = 0usize;
        // The id of the piece made of the chunk's two characters when the chunk has exactly
        // two so far (`NONE`: more, or no such piece): such a chunk needs no BPE and no cache.
        let mut two = NONE;
        macro_rules! flush {
            () => {
                if prev_at == start {
                    let id = prev_info.id();
                    if DIRECT && id != CharInfo::NO_ID {
                        ids.push(id);
                    } else {
                        f(ids, &norm[start..pos], Chunk::Char(id));
                    }
                } else if two != NONE {
                    if DIRECT {
                        ids.push(two);
                    } else {
                        f(ids, &norm[start..pos], Chunk::Char(two));
                    }
                } else {
                    f(ids, &norm[start..pos], Chunk::Run);
                }
            };
        }
        // The character at `pos` (`$packed`, `$info`) after the previous one: the chunk goes on
        // if the pair can be inside a piece (remembering a two-character piece's id), else the
        // chunk so far is emitted and a new one starts here.
        macro_rules! join_or_cut {
            ($packed:expr, $info:expr) => {
                match rule.joins(prev, prev_info, $packed, $info) {
                    None => {
                        flush!();
                        start = pos;
                    }
                    Some(both) => two = if prev_at == start { both } else { NONE },
                }
            };
        }
        while pos < n {
            // A small character (ASCII or `▁`) after a small one in a chunk: one table entry
            // and one dense pair-table entry per character; a user-defined start or another
            // character takes the general code.
            if let (Some(mut ps), true) = (small_index(prev), pos > start) {
                while let Some(&b) = norm.get(pos) {
                    let (c, clen, cp) = if b < 0x80 {
                        (u32::from(b), 1, usize::from(b))
                    } else if b == 0xE2 && norm.get(pos + 1..pos + 3) == Some(&[0x96, 0x81]) {
                        (0x80, 3, 0x2581)
                    } else {
                        break;
                    };
                    let info = v.chars[cp];
                    if info.starts_user_defined() || loose.is_some_and(|m| m.may_start(b)) {
                        break;
                    }
                    match rule.joins_small(ps, c) {
                        None => {
                            flush!();
                            start = pos;
                        }
                        Some(both) => two = if prev_at == start { both } else { NONE },
                    }
                    prev_at = pos;
                    prev = if c < 0x80 { c } else { WS_PACKED };
                    ps = c;
                    prev_info = info;
                    pos += clen;
                }
                if pos >= n {
                    break;
                }
            }
            // The same for a 3-byte character (CJK) after a 3-byte character in a chunk, four
            // bytes read at once (the last character of the string takes the general code).
            if prev >= 0xE0_0000 && pos > start {
                while let Some(w) = le32(norm, pos) {
                    if w & 0x00C0_C0F0 != 0x0080_80E0 {
                        break;
                    }
                    let cp = ((w & 0x0F) << 12) | ((w & 0x3F00) >> 2) | ((w >> 16) & 0x3F);
                    if cp < 0x800 {
                        break;
                    }
                    let info = v.chars[cp as usize];
                    if info.starts_user_defined() || loose.is_some_and(|m| m.may_start(w as u8)) {
                        break;
                    }
                    let packed = w.swap_bytes() >> 8;
                    join_or_cut!(packed, info);
                    prev_at = pos;
                    prev = packed;
                    prev_info = info;
                    pos += 3;
                }
            }
            let b = norm[pos];
            // The character, its length and its table entry: ASCII and well-formed 3-byte
            // characters (CJK) decoded inline, the rest through `bmp_index`.
            let (clen, packed, info) = if b < 0x80 {
                (1, u32::from(b), v.chars[usize::from(b)])
            } else if b & 0xF0 == 0xE0 && n - pos >= 3 {
                let (b1, b2) = (norm[pos + 1], norm[pos + 2]);
                let packed = (u32::from(b) << 16) | (u32::from(b1) << 8) | u32::from(b2);
                let cp = (usize::from(b & 0x0F) << 12)
                    | (usize::from(b1 & 0x3F) << 6)
                    | usize::from(b2 & 0x3F);
                let info = if b1 & 0xC0 == 0x80 && b2 & 0xC0 == 0x80 && cp >= 0x800 {
                    v.chars[cp]
                } else {
                    CharInfo::GENERIC
                };
                (3, packed, info)
            } else {
                let clen = lead_len(b, n - pos);
                let c = &norm[pos..pos + clen];
                let info = bmp_index(c).map_or(CharInfo::GENERIC, |i| v.chars[i]);
                (clen, pack_char(c), info)
            };
            if info.starts_user_defined() || loose.is_some_and(|m| m.may_start(b)) {
                if let Some(m) = ud {
                    let hit = match info.user_defined_only() {
                        CharInfo::NO_ID => match v.ud_short.get(usize::from(b)) {
                            // A few short pieces: compared directly (longest first; a match
                            // means the bytes are there, see `short_word`).
                            Some(words) if !words.is_empty() => {
                                let x = load4(&norm[pos..]);
                                words
                                    .iter()
                                    .find(|w| x & w.1 == w.0)
                                    .map(|w| (w.2 as usize, w.3))
                            }
                            _ => m.longest_value(&norm[pos..]),
                        },
                        id => Some((clen, id)),
                    };
                    if let Some((len, id)) = hit {
                        if pos > start {
                            flush!();
                        }
                        if DIRECT {
                            ids.push(id);
                        } else {
                            f(ids, &norm[pos..pos + len], Chunk::Frozen(id));
                        }
                        pos += len;
                        start = pos;
                        continue;
                    }
                }
            }
            if pos > start {
                join_or_cut!(packed, info);
            }
            prev_at = pos;
            prev = packed;
            prev_info = info;
            pos += clen;
        }
        if pos > start {
            flush!();
        }
    }

    fn encode_with(&self, text: &[u8], s: &mut Scratch, out: &mut Vec<u32>) {
        s.cache.claim(self.uid);
        let v = &self.vocab;
        let base = out.len();
        let mut norm = std::mem::take(&mut s.norm);
        self.normalizer.normalize(text, v.ud.as_ref(), &mut norm);
        let unk = v.unk.unwrap_or(NONE);
        let fuse = !v.byte_fallback;
        let cache_ok = v.chunk.is_some();
        self.for_each_chunk::<true>(&norm, out, |out, chunk, kind| {
            let id = match kind {
                Chunk::Frozen(id) => id,
                Chunk::Char(CharInfo::NO_ID) => v.char_id(chunk),
                Chunk::Char(id) => id,
                Chunk::Run => NONE,
            };
            if id != NONE {
                out.push(id);
                return;
            }
            if let Chunk::Char(_) = kind {
                // An unknown character: byte pieces, or an unknown fused with a preceding one.
                let mut prev_unk = out.len() > base && out.last() == Some(&unk);
                v.finish(&[Tok::Unk(0, chunk.len() as u32)], chunk, &mut prev_unk, out);
                return;
            }
            if cache_ok && chunk.len() <= MAX_CACHED_CHUNK {
                if let Some(ids) = s.cache.get(chunk) {
                    let skip = usize::from(
                        fuse && out.len() > base
                            && ids.first() == Some(&unk)
                            && out.last() == Some(&unk),
                    );
                    let ids = &ids[skip..];
                    if ids.len() <= 4 {
                        // Tiny copies: pushes beat a memmove call.
                        for &id in ids {
                            out.push(id);
                        }
                    } else {
                        out.extend_from_slice(ids);
                    }
                    return;
                }
            }
            self.encode_run(chunk, s, out, base);
        });
        s.norm = norm;
    }

    /// A chunk that is not in the cache: BPE, cached, fused with a preceding unknown. Kept out
    /// of line, so that the chunker's loops (each of which emits chunks) stay small.
    #[inline(never)]
    fn encode_run(&self, chunk: &[u8], s: &mut Scratch, out: &mut Vec<u32>, base: usize) {
        let v = &self.vocab;
        let unk = v.unk.unwrap_or(NONE);
        let cache_ok = v.chunk.is_some();
        let start = out.len();
        s.toks.clear();
        s.bpe.run(v, chunk, !cache_ok, &mut s.toks);
        // Finish this chunk on its own (fusing unknowns inside it), then fuse at the join.
        v.finish(&s.toks, chunk, &mut false, out);
        if cache_ok && chunk.len() <= MAX_CACHED_CHUNK {
            s.cache.insert(chunk, &out[start..]);
        }
        if !v.byte_fallback
            && start > base
            && out.len() > start
            && out[start] == unk
            && out[start - 1] == unk
        {
            out.remove(start);
        }
    }

    /// Decodes ids exactly as `SentencePieceProcessor.decode(ids)` does.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_to_bytes(ids)?).into_owned())
    }

    /// Decodes many id sequences in parallel (each one on its own, as `decode(list_of_lists)`).
    pub fn decode_batch<T: AsRef<[u32]> + Sync>(
        &self,
        seqs: &[T],
        num_threads: Option<usize>,
    ) -> Result<Vec<String>> {
        let run = || {
            seqs.par_iter()
                .map(|s| self.decode(s.as_ref()))
                .collect::<Result<Vec<String>>>()
        };
        self.in_pool(num_threads, run)
    }

    /// Decodes ids to bytes (`decode(..., out_type=bytes)`).
    pub fn decode_to_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        for &id in ids {
            if id as usize >= self.vocab.pieces.len() {
                return Err(Error::IdOutOfRange {
                    id: id as i64,
                    vocab_size: self.vocab.pieces.len(),
                });
            }
        }
        let strip_start =
            self.normalizer.add_dummy_prefix || self.normalizer.remove_extra_whitespaces;
        let rew = self.normalizer.remove_extra_whitespaces;
        let mut out: Vec<u8> = Vec::new();
        let mut bytes_q: Vec<u8> = Vec::new();
        let mut at_start = true;
        for &id in ids {
            let p = &self.vocab.pieces[id as usize];
            if p.kind == PieceType::Byte {
                bytes_q.push(self.vocab.byte_value[id as usize]);
                continue;
            }
            if !bytes_q.is_empty() {
                push_bytes_lossy(&mut out, &bytes_q);
                bytes_q.clear();
            }
            if !out.is_empty() {
                at_start = false;
            }
            if p.kind == PieceType::Control {
                continue;
            }
            let mut t: &[u8] = &p.text;
            let mut stripped = false;
            if at_start && strip_start {
                if let Some(rest) = t.strip_prefix(WS) {
                    t = rest;
                    stripped = true;
                }
                if rew {
                    stripped = false;
                }
            }
            if Some(id) == self.vocab.unk || p.kind == PieceType::Unknown {
                out.extend_from_slice(&self.vocab.unk_surface);
            } else {
                let mut rest = t;
                while let Some(i) = find(rest, WS) {
                    out.extend_from_slice(&rest[..i]);
                    out.push(b' ');
                    rest = &rest[i + WS.len()..];
                }
                out.extend_from_slice(rest);
            }
            if stripped || !out.is_empty() {
                at_start = false;
            }
        }
        if !bytes_q.is_empty() {
            push_bytes_lossy(&mut out, &bytes_q);
        }
        if let Some(d) = &self.denormalizer {
            let mut n = Vec::new();
            d.normalize(&out, None, &mut n);
            out = n;
        }
        Ok(out)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.pieces.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.vocab.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.vocab.eos
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.vocab.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.vocab.pad
    }

    /// The piece string of `id` (any type), lossily decoded if the model stores invalid UTF-8.
    pub fn id_to_piece(&self, id: u32) -> Result<String> {
        self.vocab.pieces
            .get(id as usize)
            .map(|p| String::from_utf8_lossy(&p.text).into_owned())
            .ok_or(Error::IdOutOfRange {
                id: i64::from(id),
                vocab_size: self.vocab.pieces.len(),
            })
    }

    /// `PieceToId`: the id of a piece string (any type), else the unknown piece's id.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.vocab.lookup(piece.as_bytes()).or(self.vocab.unk)
    }

    /// Score of a piece.
    pub fn score(&self, id: u32) -> Option<f32> {
        self.vocab.pieces.get(id as usize).map(|p| p.score)
    }

    /// Whether encoding cuts the normalized string into independently encoded chunks (false:
    /// whole-string BPE).
    pub fn uses_chunking(&self) -> bool {
        self.vocab.chunk.is_some()
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}
