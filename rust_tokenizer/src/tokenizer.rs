//! The public Rust API: a SentencePiece BPE model that encodes and decodes byte-identically to
//! `sentencepiece` 0.2.3 (behaviour: `docs/sentencepiece-behaviour.md`).
//!
//! Pipeline: normalize the whole input (`normalizer.rs`), cut the normalized string into chunks
//! at points where no vocabulary piece can span the cut (decided per model at load time, see
//! [`ChunkRule`]), encode each chunk with SentencePiece's score/leftmost BPE agenda (`bpe.rs`),
//! memoised in a bounded per-thread chunk cache, then join (fusing unknowns across joins as
//! SentencePiece does on the whole string). Models whose pieces make cutting unsafe (reachable
//! UNUSED pieces) run BPE over the whole normalized string instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use crate::bpe::{Bpe, Tok};
use crate::cache::ChunkCache;
use crate::error::{Error, Result};
use crate::fxhash::{FxMap, FxSet};
use crate::normalizer::{lead_len, push_bytes_lossy, CharsMap, Normalizer, WS};
use crate::prefix::PrefixMatcher;
use crate::proto::{parse_model, NormalizerProto, PieceType};

/// Pieces of this many bytes or more are rejected at load, as SentencePiece does.
const MAX_PIECE_BYTES: usize = 8000;
/// Chunks longer than this are encoded without the cache (they rarely repeat).
const MAX_CACHED_CHUNK: usize = 128;

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone)]
pub(crate) struct Piece {
    pub text: Box<[u8]>,
    pub score: f32,
    pub kind: PieceType,
}

/// Where the normalized string may be cut without changing the BPE result (`docs/sentencepiece-behaviour.md` §4). Every
/// merged symbol is a mergeable piece, so a cut between adjacent characters `x y` is exact when no
/// mergeable piece (NORMAL, USER_DEFINED, UNUSED) contains `x y` next to each other. `adjacent`
/// holds every such pair (packed characters), computed at load time; the chunker cuts wherever
/// the pair is absent. This contains the spec's "cut before ▁" rules (§4) as special cases (for
/// Baichuan-7B no piece has `x▁`; for Llama only `▁▁`; for InternLM also `\t▁`, `\n▁`) and also
/// cuts inside CJK runs. Frozen user-defined symbols are always cut around (they never merge).
#[derive(Debug, Clone)]
pub(crate) struct ChunkRule {
    adjacent: FxSet<u64>,
}

#[inline]
fn pack_char(c: &[u8]) -> u32 {
    c.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
}

/// A loaded SentencePiece BPE model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    uid: u64,
    pub(crate) pieces: Vec<Piece>,
    /// Every loaded piece string (all types) to its id.
    map: FxMap<Box<[u8]>, u32>,
    /// Mergeable pieces (NORMAL, USER_DEFINED, UNUSED): string to (score order key, id).
    pub(crate) merge: FxMap<Box<[u8]>, (i32, u32)>,
    /// Mergeable pairs by id: `(left id << 32) | right id` to (score key, merged id), for every
    /// mergeable piece that splits into two mergeable pieces.
    pub(crate) pairs: FxMap<u64, (i32, u32)>,
    /// BMP code point to the id of its one-character mergeable piece, or `u32::MAX`.
    pub(crate) char_ids: Vec<u32>,
    pub(crate) ud: Option<PrefixMatcher>,
    normalizer: Normalizer,
    denormalizer: Option<Normalizer>,
    byte_fallback: bool,
    /// Byte value to its `<0xHH>` piece id (valid when `byte_fallback`).
    byte_ids: Vec<u32>,
    /// For BYTE pieces: the byte they stand for.
    byte_value: Vec<u8>,
    unk: Option<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    unk_surface: Vec<u8>,
    pub(crate) has_unused: bool,
    chunk: Option<ChunkRule>,
}

/// The ids of consecutive texts in one buffer: text `i` of the block is `ids[ends[i-1]..ends[i]]`.
#[derive(Debug, Clone, Default)]
pub struct IdBlock {
    pub ids: Vec<u32>,
    pub ends: Vec<usize>,
}

impl IdBlock {
    /// The id slices of the block's texts, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u32]> + '_ {
        self.ends.iter().scan(0usize, move |start, &end| {
            let s = &self.ids[*start..end];
            *start = end;
            Some(s)
        })
    }
}

/// Blocks of consecutive texts handed out from both ends: the calling thread takes blocks from
/// the front, pool workers from the back. With two threads each thus encodes one long run of
/// consecutive texts (its chunk cache sees related text), and they meet wherever the work
/// balances. Block sizes follow [`Tokenizer::block_size`].
#[derive(Debug)]
pub struct BlockQueue {
    n_texts: usize,
    block: usize,
    /// (next block from the front, one past the next block from the back)
    span: Mutex<(usize, usize)>,
}

impl BlockQueue {
    pub fn new(n_texts: usize, threads: usize) -> Self {
        let block = Tokenizer::block_size(n_texts, threads);
        BlockQueue {
            n_texts,
            block,
            span: Mutex::new((0, n_texts.div_ceil(block))),
        }
    }

    fn range(&self, b: usize) -> std::ops::Range<usize> {
        b * self.block..((b + 1) * self.block).min(self.n_texts)
    }

    /// The texts of the next block from the front, if any is left.
    pub fn front(&self) -> Option<std::ops::Range<usize>> {
        let mut g = self.span.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= g.1 {
            return None;
        }
        g.0 += 1;
        Some(self.range(g.0 - 1))
    }

    /// The texts of the next block from the back, if any is left.
    pub fn back(&self) -> Option<std::ops::Range<usize>> {
        let mut g = self.span.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= g.1 {
            return None;
        }
        g.1 -= 1;
        Some(self.range(g.1))
    }

    /// Hands out nothing more (on an error: the workers stop after their current block).
    pub fn close(&self) {
        let mut g = self.span.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = g.0;
    }
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

fn invalid(origin: &str, reason: impl Into<String>) -> Error {
    Error::InvalidModel {
        origin: origin.to_string(),
        reason: reason.into(),
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse_byte_piece(p: &[u8]) -> Option<u8> {
    if p.len() != 6 || &p[..3] != b"<0x" || p[5] != b'>' {
        return None;
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    Some(hex(p[3])? * 16 + hex(p[4])?)
}

/// `f32::total_cmp` order as an `i32` key.
#[inline]
pub(crate) fn score_key(f: f32) -> i32 {
    let b = f.to_bits() as i32;
    b ^ ((((b >> 31) as u32) >> 1) as i32)
}

fn build_normalizer(spec: &NormalizerProto, wsfx: bool, origin: &str) -> Result<Normalizer> {
    let charsmap = if spec.precompiled_charsmap.is_empty() {
        None
    } else {
        Some(CharsMap::parse(&spec.precompiled_charsmap).map_err(|r| invalid(origin, r))?)
    };
    Ok(Normalizer {
        charsmap,
        add_dummy_prefix: spec.add_dummy_prefix,
        remove_extra_whitespaces: spec.remove_extra_whitespaces,
        escape_whitespaces: spec.escape_whitespaces,
        treat_whitespace_as_suffix: wsfx,
    })
}

fn pool_for(threads: usize) -> std::result::Result<Arc<rayon::ThreadPool>, String> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&threads) {
        return Ok(p.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("baichuan-tok-{i}"))
        .build()
        .map_err(|e| e.to_string())?;
    let pool = Arc::new(pool);
    pools.insert(threads, pool.clone());
    Ok(pool)
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
        let m = parse_model(bytes)
            .map_err(|r| invalid(origin, format!("cannot parse ModelProto: {r}")))?;
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
        let bf = m.trainer.byte_fallback;
        let mut pieces: Vec<Piece> = m
            .pieces
            .into_iter()
            .map(|p| Piece {
                text: p.piece.into_boxed_slice(),
                score: p.score,
                kind: p.kind,
            })
            .collect();
        if pieces.len() > u32::MAX as usize / 2 {
            return Err(invalid(origin, "too many pieces"));
        }
        // 0.2.x: with byte fallback a "\0" piece becomes UNUSED (and is then skipped).
        if bf {
            for p in pieces.iter_mut() {
                if &*p.text == b"\0" {
                    p.kind = PieceType::Unused;
                }
            }
        }
        let mut map: FxMap<Box<[u8]>, u32> = FxMap::default();
        let mut merge: FxMap<Box<[u8]>, (i32, u32)> = FxMap::default();
        let mut ud_words: Vec<&[u8]> = Vec::new();
        let mut unk_index: Option<u32> = None;
        let mut byte_ids = vec![u32::MAX; 256];
        let mut byte_value = vec![0u8; pieces.len()];
        let mut has_unused = false;
        for (i, p) in pieces.iter().enumerate() {
            let id = i as u32;
            let t = &*p.text;
            if t.len() >= MAX_PIECE_BYTES {
                return Err(invalid(
                    origin,
                    format!("piece {i} is too long ({} bytes)", t.len()),
                ));
            }
            if t.is_empty() {
                return Err(invalid(origin, format!("piece {i} must not be empty")));
            }
            if t == b"\0" && p.kind == PieceType::Unused {
                continue;
            }
            if t.contains(&0) {
                return Err(invalid(
                    origin,
                    format!("piece {i} must not include null character"),
                ));
            }
            if map.insert(t.into(), id).is_some() {
                return Err(invalid(
                    origin,
                    format!("piece {i} ({}) is already defined", show(t)),
                ));
            }
            match p.kind {
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused => {
                    merge.insert(t.into(), (score_key(p.score), id));
                    if p.kind == PieceType::UserDefined {
                        ud_words.push(t);
                    }
                    if p.kind == PieceType::Unused {
                        has_unused = true;
                    }
                }
                PieceType::Unknown => {
                    if unk_index.is_some() {
                        return Err(invalid(
                            origin,
                            format!("piece {i}: unk is already defined"),
                        ));
                    }
                    unk_index = Some(id);
                }
                PieceType::Byte => {
                    if !bf {
                        return Err(invalid(
                            origin,
                            format!(
                                "piece {i} ({}) is a byte piece but byte_fallback is off",
                                show(t)
                            ),
                        ));
                    }
                    let Some(b) = parse_byte_piece(t) else {
                        return Err(invalid(
                            origin,
                            format!("piece {i} ({}) is not a <0xHH> byte piece", show(t)),
                        ));
                    };
                    byte_ids[b as usize] = id;
                    byte_value[i] = b;
                }
                PieceType::Control => {}
            }
        }
        if unk_index.is_none() && !bf {
            return Err(invalid(origin, "unk is not defined"));
        }
        if bf && byte_ids.contains(&u32::MAX) {
            return Err(invalid(
                origin,
                "byte_fallback is on but there are not 256 byte pieces <0x00>..<0xFF>",
            ));
        }
        let ud = if ud_words.is_empty() {
            None
        } else {
            Some(PrefixMatcher::new(ud_words.iter().copied()))
        };

        let lookup = |s: &[u8]| map.get(s).copied().or(unk_index);
        let kind_of = |id: u32| pieces[id as usize].kind;
        let unk = lookup(&m.trainer.unk_piece).filter(|&id| kind_of(id) == PieceType::Unknown);
        let control = |s: &[u8]| lookup(s).filter(|&id| kind_of(id) == PieceType::Control);
        let bos = control(&m.trainer.bos_piece);
        let eos = control(&m.trainer.eos_piece);
        let pad = control(&m.trainer.pad_piece);

        let wsfx = m.trainer.treat_whitespace_as_suffix;
        let normalizer = build_normalizer(&m.normalizer, wsfx, origin)?;
        let denormalizer = match &m.denormalizer {
            Some(d) if !d.precompiled_charsmap.is_empty() => {
                Some(build_normalizer(d, false, origin)?)
            }
            _ => None,
        };

        let chunk = if has_unused {
            // UNUSED pieces share one resegmentation table across the whole input (§3.6).
            None
        } else {
            let mut adjacent = FxSet::default();
            for t in merge.keys() {
                let mut prev: Option<u32> = None;
                let mut i = 0;
                while i < t.len() {
                    let n = lead_len(t[i], t.len() - i);
                    let c = pack_char(&t[i..i + n]);
                    if let Some(p) = prev {
                        adjacent.insert((u64::from(p) << 32) | u64::from(c));
                    }
                    prev = Some(c);
                    i += n;
                }
            }
            Some(ChunkRule { adjacent })
        };
        let mut pairs: FxMap<u64, (i32, u32)> = FxMap::default();
        for (t, &(score, id)) in merge.iter() {
            for k in 1..t.len() {
                if let (Some(&(_, l)), Some(&(_, r))) = (merge.get(&t[..k]), merge.get(&t[k..])) {
                    pairs.insert((u64::from(l) << 32) | u64::from(r), (score, id));
                }
            }
        }
        let mut char_ids = vec![u32::MAX; 0x10000];
        for (t, &(_, id)) in merge.iter() {
            if let Ok(s) = std::str::from_utf8(t) {
                let mut it = s.chars();
                if let (Some(c), None) = (it.next(), it.next()) {
                    if (c as u32) < 0x10000 {
                        char_ids[c as usize] = id;
                    }
                }
            }
        }
        let unk_surface = m.trainer.unk_surface.clone();
        Ok(Tokenizer {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            pieces,
            map,
            merge,
            pairs,
            char_ids,
            ud,
            normalizer,
            denormalizer,
            byte_fallback: bf,
            byte_ids,
            byte_value,
            unk,
            bos,
            eos,
            pad,
            unk_surface,
            has_unused,
            chunk,
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
    /// `num_threads`: `None` = all cores (rayon's global pool), `Some(0)` is treated as 1.
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

    /// Encodes `texts` in parallel in blocks of consecutive texts, each block's ids in one
    /// buffer (no allocation per text). Blocks come back in order.
    pub fn encode_blocks<T: AsRef<[u8]> + Sync>(
        &self,
        texts: &[T],
        num_threads: Option<usize>,
    ) -> Vec<IdBlock> {
        let mut out: Vec<(usize, IdBlock)> = Vec::new();
        let sink = Mutex::new(&mut out);
        self.encode_blocks_with(texts, num_threads, |i, b| {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push((i, b));
        });
        out.sort_unstable_by_key(|x| x.0);
        out.into_iter().map(|x| x.1).collect()
    }

    /// How many texts go in one block for `texts` texts on `threads` threads.
    pub fn block_size(texts: usize, threads: usize) -> usize {
        (texts / (threads.max(1) * 16)).clamp(1, 256)
    }

    /// Streaming form of [`Tokenizer::encode_blocks`]: `sink(first, block)` is called from the
    /// worker threads as blocks finish (in any order); the block holds the ids of texts
    /// `first .. first + block.ends.len()`. Blocks are split off by rayon's halving, so each
    /// worker encodes long runs of consecutive texts (fewer chunks that two threads' caches
    /// both miss than with interleaved blocks: docs/performance.md). Returns the block size.
    pub fn encode_blocks_with<T: AsRef<[u8]> + Sync>(
        &self,
        texts: &[T],
        num_threads: Option<usize>,
        sink: impl Fn(usize, IdBlock) + Sync + Send,
    ) -> usize {
        if texts.is_empty() {
            return 1;
        }
        let run = || {
            let block = Self::block_size(texts.len(), rayon::current_num_threads());
            texts
                .par_chunks(block)
                .enumerate()
                .for_each(|(i, chunk)| sink(i * block, self.encode_block(chunk)));
            block
        };
        self.in_pool(num_threads, run)
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

    /// `workers` pool threads take blocks from the back of `queue` until it is empty, handing
    /// each finished block to `sink(first_text, block)`; returns when all are done. The caller
    /// (another thread) takes blocks from the front meanwhile: see [`BlockQueue`].
    pub fn encode_from_back<T: AsRef<[u8]> + Sync>(
        &self,
        texts: &[T],
        queue: &BlockQueue,
        workers: usize,
        sink: impl Fn(usize, IdBlock) + Sync + Send,
    ) {
        let work = || {
            while let Some(r) = queue.back() {
                let first = r.start;
                sink(first, self.encode_block(&texts[r]));
            }
        };
        match pool_for(workers.clamp(1, 1024)) {
            Ok(pool) => {
                pool.broadcast(|_| work());
            }
            Err(_) => work(), // no pool (thread limits): this thread is the one worker
        }
    }

    /// The number of worker threads `num_threads` stands for.
    pub fn threads_for(num_threads: Option<usize>) -> usize {
        match num_threads {
            None => rayon::current_num_threads(),
            Some(n) => n.clamp(1, 1024),
        }
    }

    fn in_pool<R: Send>(&self, num_threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
        match num_threads {
            None => f(),
            Some(n) => {
                let n = n.clamp(1, 1024);
                match pool_for(n) {
                    Ok(pool) => pool.install(f),
                    // A pool that cannot be built (thread limits): run on the global pool.
                    Err(_) => f(),
                }
            }
        }
    }

    /// Pieces as SentencePiece's `encode(text, out_type=str)` gives them (fused unknowns are the
    /// concatenated normalized surfaces).
    pub fn encode_as_pieces(&self, text: &[u8]) -> Vec<String> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        if text.is_empty() {
            return Vec::new();
        }
        let mut s = Scratch::default();
        self.normalizer
            .normalize(text, self.ud.as_ref(), &mut s.norm);
        let norm = std::mem::take(&mut s.norm);
        let mut prev_unk = false;
        let mut emit = |toks: &[Tok], base: &[u8], out: &mut Vec<Vec<u8>>| {
            for t in toks {
                match *t {
                    Tok::Id(id) => {
                        out.push(self.pieces[id as usize].text.to_vec());
                        prev_unk = false;
                    }
                    Tok::Unk(a, b) => {
                        let w = &base[a as usize..b as usize];
                        if self.byte_fallback {
                            for &c in w {
                                out.push(
                                    self.pieces[self.byte_ids[c as usize] as usize]
                                        .text
                                        .to_vec(),
                                );
                            }
                        } else if prev_unk {
                            if let Some(last) = out.last_mut() {
                                last.extend_from_slice(w);
                            }
                        } else {
                            out.push(w.to_vec());
                            prev_unk = true;
                        }
                    }
                }
            }
        };
        self.for_each_chunk(&norm, |piece, frozen_id| match frozen_id {
            Some(id) => emit(&[Tok::Id(id)], piece, &mut out),
            None => {
                s.toks.clear();
                s.bpe.run(self, piece, self.chunk.is_none(), &mut s.toks);
                let toks = std::mem::take(&mut s.toks);
                emit(&toks, piece, &mut out);
                s.toks = toks;
            }
        });
        out.into_iter()
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .collect()
    }

    /// SentencePiece's `normalize(text)`.
    pub fn normalize(&self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.normalizer.normalize(text, self.ud.as_ref(), &mut out);
        out
    }

    /// Reference path for tests and fuzzing: SentencePiece's algorithm literally, one BPE run over
    /// the whole normalized string (user-defined pieces frozen inside it), no chunking, no cache.
    /// [`Tokenizer::encode_bytes`] must always equal this.
    #[doc(hidden)]
    pub fn encode_whole(&self, text: &[u8]) -> Vec<u32> {
        let norm = self.normalize(text);
        if norm.is_empty() {
            return Vec::new();
        }
        let mut bpe = Bpe::default();
        let mut toks = Vec::new();
        bpe.run(self, &norm, true, &mut toks);
        let unk = self.unk.unwrap_or(u32::MAX);
        let mut out = Vec::new();
        let mut prev_unk = false;
        for t in toks {
            match t {
                Tok::Id(id) => {
                    out.push(id);
                    prev_unk = false;
                }
                Tok::Unk(a, b) => {
                    if self.byte_fallback {
                        out.extend(
                            norm[a as usize..b as usize]
                                .iter()
                                .map(|&c| self.byte_ids[c as usize]),
                        );
                    } else if !prev_unk {
                        out.push(unk);
                        prev_unk = true;
                    }
                }
            }
        }
        out
    }

    /// Calls `f(chunk, frozen_id)` for each chunk of the normalized string in order: frozen
    /// user-defined symbols come with their id; other chunks are BPE'd independently. Without a
    /// chunk rule the whole string is one chunk (with its user-defined symbols inside).
    fn for_each_chunk<'a>(&self, norm: &'a [u8], mut f: impl FnMut(&'a [u8], Option<u32>)) {
        let Some(rule) = &self.chunk else {
            if !norm.is_empty() {
                f(norm, None);
            }
            return;
        };
        let n = norm.len();
        let mut start = 0usize;
        let mut pos = 0usize;
        let mut prev_char: u32 = u32::MAX; // packed previous char inside the current chunk
        let ud = self.ud.as_ref();
        while pos < n {
            let b = norm[pos];
            if let Some(m) = ud {
                if m.may_start(b) {
                    if let Some(len) = m.longest(&norm[pos..]) {
                        if pos > start {
                            f(&norm[start..pos], None);
                        }
                        let w = &norm[pos..pos + len];
                        let id = self.map[w];
                        f(w, Some(id));
                        pos += len;
                        start = pos;
                        prev_char = u32::MAX;
                        continue;
                    }
                }
            }
            let clen = lead_len(b, n - pos);
            let c = pack_char(&norm[pos..pos + clen]);
            if pos > start
                && !rule
                    .adjacent
                    .contains(&((u64::from(prev_char) << 32) | u64::from(c)))
            {
                f(&norm[start..pos], None);
                start = pos;
            }
            prev_char = c;
            pos += clen;
        }
        if pos > start {
            f(&norm[start..pos], None);
        }
    }

    fn encode_with(&self, text: &[u8], s: &mut Scratch, out: &mut Vec<u32>) {
        s.cache.claim(self.uid);
        let base = out.len();
        let mut norm = std::mem::take(&mut s.norm);
        self.normalizer.normalize(text, self.ud.as_ref(), &mut norm);
        let unk = self.unk.unwrap_or(u32::MAX);
        let fuse = !self.byte_fallback;
        let cache_ok = self.chunk.is_some();
        self.for_each_chunk(&norm, |chunk, frozen_id| {
            if let Some(id) = frozen_id {
                out.push(id);
                return;
            }
            let start = out.len();
            if cache_ok && lead_len(chunk[0], chunk.len()) == chunk.len() {
                // One character: its own piece, or unknown.
                let id = crate::bpe::char_id(self, chunk);
                if id != crate::bpe::NONE {
                    out.push(id);
                } else if self.byte_fallback {
                    out.extend(chunk.iter().map(|&c| self.byte_ids[c as usize]));
                } else if out.len() == base || out.last() != Some(&unk) {
                    out.push(unk);
                }
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
            s.toks.clear();
            s.bpe.run(self, chunk, !cache_ok, &mut s.toks);
            // Finalize this chunk on its own (fusing unknowns inside it), then fuse at the join.
            let mut prev_unk = false;
            for t in &s.toks {
                match *t {
                    Tok::Id(id) => {
                        out.push(id);
                        prev_unk = false;
                    }
                    Tok::Unk(a, b) => {
                        if self.byte_fallback {
                            for &c in &chunk[a as usize..b as usize] {
                                out.push(self.byte_ids[c as usize]);
                            }
                        } else if !prev_unk {
                            out.push(unk);
                            prev_unk = true;
                        }
                    }
                }
            }
            if cache_ok && chunk.len() <= MAX_CACHED_CHUNK {
                s.cache.insert(chunk, &out[start..]);
            }
            if fuse
                && start > base
                && out.len() > start
                && out[start] == unk
                && out[start - 1] == unk
            {
                out.remove(start);
            }
        });
        s.norm = norm;
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
            if id as usize >= self.pieces.len() {
                return Err(Error::IdOutOfRange {
                    id: id as i64,
                    vocab_size: self.pieces.len(),
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
            let p = &self.pieces[id as usize];
            if p.kind == PieceType::Byte {
                bytes_q.push(self.byte_value[id as usize]);
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
            if Some(id) == self.unk || p.kind == PieceType::Unknown {
                out.extend_from_slice(&self.unk_surface);
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
        self.pieces.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// The piece string of `id` (any type), lossily decoded if the model stores invalid UTF-8.
    pub fn id_to_piece(&self, id: u32) -> Result<String> {
        self.pieces
            .get(id as usize)
            .map(|p| String::from_utf8_lossy(&p.text).into_owned())
            .ok_or(Error::IdOutOfRange {
                id: i64::from(id),
                vocab_size: self.pieces.len(),
            })
    }

    /// `PieceToId`: the id of a piece string (any type), else the unknown piece's id.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.map.get(piece.as_bytes()).copied().or(self.unk)
    }

    /// Score of a piece.
    pub fn score(&self, id: u32) -> Option<f32> {
        self.pieces.get(id as usize).map(|p| p.score)
    }

    /// Whether encoding cuts the normalized string into independently encoded chunks (false:
    /// whole-string BPE).
    pub fn uses_chunking(&self) -> bool {
        self.chunk.is_some()
    }

    #[inline]
    pub(crate) fn lookup(&self, s: &[u8]) -> Option<u32> {
        self.map.get(s).copied()
    }
    #[inline]
    pub(crate) fn kind(&self, id: u32) -> PieceType {
        self.pieces[id as usize].kind
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[cfg(test)]
mod tests {
    use super::BlockQueue;

    #[test]
    fn block_queue_hands_out_every_text_once_from_both_ends() {
        for n in [1usize, 5, 64, 1000, 4097] {
            for threads in [2usize, 3, 8] {
                let q = BlockQueue::new(n, threads);
                let mut seen = vec![0u8; n];
                let (mut fronts, mut backs) = (Vec::new(), Vec::new());
                loop {
                    let f = q.front();
                    let b = q.back();
                    if f.is_none() && b.is_none() {
                        break;
                    }
                    fronts.extend(f.clone());
                    backs.extend(b.clone());
                    for r in f.into_iter().chain(b) {
                        for i in r {
                            seen[i] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "n={n} threads={threads}");
                // the front walks up, the back walks down
                assert!(fronts.windows(2).all(|w| w[0].end == w[1].start));
                assert!(backs.windows(2).all(|w| w[1].end == w[0].start));
            }
        }
        let q = BlockQueue::new(10_000, 2);
        assert!(q.front().is_some());
        q.close();
        assert!(q.front().is_none() && q.back().is_none());
    }
}
