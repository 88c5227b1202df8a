//! The parsed vocabulary and every lookup table built from it at load time: piece strings to ids,
//! mergeable pieces and pairs for the BPE (`bpe.rs`), the per-character table, the user-defined
//! matcher, the byte pieces and special ids, and the [`ChunkRule`] that tells the encoder where
//! the normalized string may be cut. Also the one finalisation step that turns BPE symbols into
//! output ([`Vocab::finish`]: unknown fusion and byte fallback).
//!
//! Knows nothing of normalization, chunking loops or caches (`tokenizer.rs`) and nothing of the
//! BPE agenda (`bpe.rs`, which depends on this module, not on the tokenizer).

use crate::error::{Error, Result};
use crate::fxhash::{FxMap, PairMap};
use crate::normalizer::lead_len;
use crate::prefix::{short_word, PrefixMatcher};
use crate::proto::{PieceProto, PieceType, TrainerProto};

/// Pieces of this many bytes or more are rejected at load, as SentencePiece does.
const MAX_PIECE_BYTES: usize = 8000;

/// See [`Vocab::ud_short`].
const MAX_UD_SHORT: usize = 4;

/// No piece (an id slot of the BPE symbols and of the character table).
pub(crate) const NONE: u32 = u32::MAX;

/// One output symbol of a BPE run, before [`Vocab::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    /// A piece id to output as is.
    Id(u32),
    /// An unknown symbol spanning these bytes of the input.
    Unk(u32, u32),
}

#[derive(Debug, Clone)]
pub(crate) struct Piece {
    pub text: Box<[u8]>,
    pub score: f32,
    pub kind: PieceType,
}

/// Per-character table entry (index: the code point of a canonically encoded 1-3 byte UTF-8
/// character, see [`bmp_index`]), 4 bytes so that the table (256 KiB) stays in the L2 cache: the
/// id of the one-character mergeable piece in the low bits (`NO_ID`: none) and three flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CharInfo(u32);

impl CharInfo {
    /// Some user-defined piece starts with this character.
    const UD: u32 = 1 << 31;
    /// Some mergeable piece has this character followed by another one.
    const LEFT: u32 = 1 << 30;
    /// Some mergeable piece has this character preceded by another one.
    const RIGHT: u32 = 1 << 29;
    /// The only user-defined piece that starts with this character is the character itself
    /// (then `UD` is set too, and the id is that piece's).
    const UD_ONLY: u32 = 1 << 28;
    pub const NO_ID: u32 = (1 << 28) - 1;
    /// What a character outside the table gets: look everything up.
    pub const GENERIC: CharInfo = CharInfo(Self::UD | Self::LEFT | Self::RIGHT | Self::NO_ID);
    const EMPTY: CharInfo = CharInfo(Self::NO_ID);

    /// The piece id, or `NO_ID` (none, or an id too large for the table: look it up).
    #[inline]
    pub fn id(self) -> u32 {
        self.0 & Self::NO_ID
    }
    #[inline]
    pub fn starts_user_defined(self) -> bool {
        self.0 & Self::UD != 0
    }
    /// The id of the one-character user-defined piece when it is the only user-defined piece
    /// that starts with this character, else `NO_ID`.
    #[inline]
    pub fn user_defined_only(self) -> u32 {
        if self.0 & Self::UD_ONLY != 0 {
            self.id()
        } else {
            Self::NO_ID
        }
    }
    fn set_id(&mut self, id: u32) {
        self.0 = (self.0 & !Self::NO_ID) | id.min(Self::NO_ID);
    }
}

/// The per-character table: fixed-size, so that an index computed from a 3-byte UTF-8 form (at
/// most 0xFFFF) needs no bounds check.
pub(crate) type CharTable = [CharInfo; 0x10000];

/// The table index of a canonically encoded one-, two- or three-byte UTF-8 character that is
/// exactly `c`, else `None` (4-byte characters, invalid or over-long encodings).
#[inline]
pub(crate) fn bmp_index(c: &[u8]) -> Option<usize> {
    match *c {
        [a] if a < 0x80 => Some(usize::from(a)),
        [a, b] if a & 0xE0 == 0xC0 && b & 0xC0 == 0x80 && a >= 0xC2 => {
            Some((usize::from(a & 0x1F) << 6) | usize::from(b & 0x3F))
        }
        [a, b, d] if a & 0xF0 == 0xE0 && b & 0xC0 == 0x80 && d & 0xC0 == 0x80 => {
            let cp =
                (usize::from(a & 0x0F) << 12) | (usize::from(b & 0x3F) << 6) | usize::from(d & 0x3F);
            (cp >= 0x800).then_some(cp)
        }
        _ => None,
    }
}

/// The bytes of one character (1 to 4 of them) packed big-endian into a `u32`.
#[inline]
pub(crate) fn pack_char(c: &[u8]) -> u32 {
    match *c {
        [a] => u32::from(a),
        [a, b] => (u32::from(a) << 8) | u32::from(b),
        [a, b, d] => (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(d),
        _ => c.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)),
    }
}

/// Where the normalized string may be cut without changing the BPE result
/// (`docs/sentencepiece-behaviour.md` §4). Every
/// merged symbol is a mergeable piece, so a cut between adjacent characters `x y` is exact when no
/// mergeable piece (NORMAL, USER_DEFINED, UNUSED) contains `x y` next to each other. `adjacent`
/// holds every such pair (packed characters), computed at load time; the chunker cuts wherever
/// the pair is absent. This contains the spec's "cut before ▁" rules (§4) as special cases (for
/// Baichuan-7B no piece has `x▁`; for Llama only `▁▁`; for InternLM also `\t▁`, `\n▁`) and also
/// cuts inside CJK runs. Frozen user-defined symbols are always cut around (they never merge).
///
/// Most characters are in no pair at all: the table's `LEFT` (of the left character) and `RIGHT`
/// (of the right one) flags decide those cuts without hashing. (A bit matrix over the flagged
/// characters was tried: for Baichuan-7B it is 333 KiB, larger than this set, and was slower.)
#[derive(Debug, Clone)]
pub(crate) struct ChunkRule {
    /// Each adjacent pair to the id of the mergeable piece that is exactly the two characters
    /// (`NONE`: no such piece), so a chunk of two characters needs no BPE and no cache.
    adjacent: PairMap<u32>,
    /// The same for two small characters (ASCII, or `▁` as 0x80; see [`small_index`]), dense
    /// (`small[p * 129 + c]`, `CUT`: no pair): 65 KiB instead of a hash probe per pair of
    /// letters or per space and word.
    small: Box<[u32]>,
}

/// The packed `▁` (U+2581).
pub(crate) const WS_PACKED: u32 = 0xE2_9681;

/// The index of a packed character in [`ChunkRule::small`]: ASCII as itself, `▁` as 0x80.
#[inline]
pub(crate) fn small_index(packed: u32) -> Option<u32> {
    match packed {
        0..=0x7F => Some(packed),
        WS_PACKED => Some(0x80),
        _ => None,
    }
}

/// [`ChunkRule::small`]: the pair is in no mergeable piece. (Ids are below `u32::MAX / 2`.)
const CUT: u32 = u32::MAX - 1;

impl ChunkRule {
    /// `None` when no mergeable piece holds the characters `p c` (packed, with their table
    /// entries) next to each other (cut here); else the id of the piece `p c` or `NONE`.
    #[inline]
    pub fn joins(&self, p: u32, pi: CharInfo, c: u32, ci: CharInfo) -> Option<u32> {
        if pi.0 & CharInfo::LEFT != 0 && ci.0 & CharInfo::RIGHT != 0 {
            self.adjacent
                .get(&((u64::from(p) << 32) | u64::from(c)))
                .copied()
        } else {
            None
        }
    }
}

impl ChunkRule {
    /// [`ChunkRule::joins`] for two small characters (their [`small_index`]es, at most 0x80).
    #[inline]
    pub fn joins_small(&self, p: u32, c: u32) -> Option<u32> {
        match self.small[(p * 129 + c) as usize] {
            CUT => None,
            id => Some(id),
        }
    }
}

/// A loaded vocabulary (the `ModelProto` pieces and trainer settings) and its lookup tables.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub(crate) pieces: Vec<Piece>,
    /// Every loaded piece string (all types) to its id.
    map: FxMap<Box<[u8]>, u32>,
    /// Mergeable pieces (NORMAL, USER_DEFINED, UNUSED): string to (score order key, id).
    pub(crate) merge: FxMap<Box<[u8]>, (i32, u32)>,
    /// Mergeable pairs by id: `(left id << 32) | right id` to (score key, merged id), for every
    /// mergeable piece that splits into two mergeable pieces.
    pub(crate) pairs: PairMap<(i32, u32)>,
    /// [`bmp_index`] to the character's entry.
    pub(crate) chars: Box<CharTable>,
    /// Whether the `UD` flags of `chars` are exact (every user-defined piece starts with a
    /// table character); if not, every character asks the matcher.
    pub(crate) ud_flags_exact: bool,
    /// User-defined pieces, valued by id.
    pub(crate) ud: Option<PrefixMatcher>,
    /// Per ASCII byte that starts at most [`MAX_UD_SHORT`] user-defined pieces, all of at most
    /// 4 bytes and one of them longer than the byte: those pieces as `(value, mask, length, id)`
    /// ([`short_word`]), longest first, compared directly instead of asking the matcher. Empty
    /// for the other bytes.
    pub(crate) ud_short: Vec<Vec<(u32, u32, u32, u32)>>,
    pub(crate) byte_fallback: bool,
    /// Byte value to its `<0xHH>` piece id (valid when `byte_fallback`).
    pub(crate) byte_ids: Vec<u32>,
    /// For BYTE pieces: the byte they stand for.
    pub(crate) byte_value: Vec<u8>,
    pub(crate) unk: Option<u32>,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) pad: Option<u32>,
    pub(crate) unk_surface: Vec<u8>,
    pub(crate) has_unused: bool,
    /// `None` when UNUSED pieces make cutting unsafe: they share one resegmentation table across
    /// the whole input (§3.6), so the BPE runs over the whole normalized string.
    pub(crate) chunk: Option<ChunkRule>,
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

/// The characters of `t` by SentencePiece's `OneCharLen` segmentation.
fn chars_of(t: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= t.len() {
            return None;
        }
        let n = lead_len(t[i], t.len() - i);
        i += n;
        Some(&t[i - n..i])
    })
}

/// Receives finished output from [`Vocab::finish`].
pub(crate) trait Sink {
    /// A piece id (including byte pieces under byte fallback).
    fn id(&mut self, vocab: &Vocab, id: u32);
    /// An unknown span of the text (no byte fallback); `fused`: it directly follows another
    /// unknown, with which SentencePiece makes one unknown symbol.
    fn unk(&mut self, vocab: &Vocab, span: &[u8], fused: bool);
}

/// Ids: a fused unknown adds nothing (the first one of the run stands for it).
impl Sink for Vec<u32> {
    #[inline]
    fn id(&mut self, _: &Vocab, id: u32) {
        self.push(id);
    }
    #[inline]
    fn unk(&mut self, vocab: &Vocab, _: &[u8], fused: bool) {
        if !fused {
            self.push(vocab.unk.unwrap_or(NONE));
        }
    }
}

impl Vocab {
    /// Validates the pieces as SentencePiece's `ModelInterface` does and builds the tables.
    pub(crate) fn new(
        pieces: Vec<PieceProto>,
        trainer: &TrainerProto,
        origin: &str,
    ) -> Result<Self> {
        let bf = trainer.byte_fallback;
        let mut pieces: Vec<Piece> = pieces
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
        let mut ud_words: Vec<(&[u8], u32)> = Vec::new();
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
                        ud_words.push((t, id));
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

        let mut chars: Box<CharTable> = vec![CharInfo::EMPTY; 0x10000]
            .into_boxed_slice()
            .try_into()
            .map_err(|_| invalid(origin, "character table size"))?;
        for (t, &(_, id)) in merge.iter() {
            if let Some(cp) = bmp_index(t) {
                chars[cp].set_id(id);
            }
        }
        let mut ud_flags_exact = true;
        let mut ud_longer = vec![false; chars.len()];
        for &(t, _) in &ud_words {
            let first = chars_of(t).next();
            match first.and_then(bmp_index) {
                Some(cp) => {
                    chars[cp].0 |= CharInfo::UD;
                    if first.map(<[u8]>::len) == Some(t.len()) {
                        chars[cp].0 |= CharInfo::UD_ONLY;
                    } else {
                        ud_longer[cp] = true;
                    }
                }
                None => ud_flags_exact = false,
            }
        }
        for (c, &longer) in chars.iter_mut().zip(&ud_longer) {
            if longer {
                c.0 &= !CharInfo::UD_ONLY;
            }
        }
        let mut ud_short: Vec<Vec<(u32, u32, u32, u32)>> = vec![Vec::new(); 0x80];
        for (b, list) in ud_short.iter_mut().enumerate() {
            let mut starting: Vec<(&[u8], u32)> = ud_words
                .iter()
                .filter(|(t, _)| usize::from(t[0]) == b)
                .copied()
                .collect();
            starting.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
            let short: Vec<(u32, u32, u32, u32)> = starting
                .iter()
                .filter_map(|&(t, id)| short_word(t).map(|(v, m)| (v, m, t.len() as u32, id)))
                .collect();
            if short.len() == starting.len()
                && short.len() <= MAX_UD_SHORT
                && starting.iter().any(|(t, _)| t.len() > 1)
            {
                *list = short;
            }
        }
        let ud = if ud_words.is_empty() {
            None
        } else {
            Some(PrefixMatcher::new(ud_words.iter().copied()))
        };

        let chunk = if has_unused {
            None
        } else {
            // Every pair of adjacent characters in a mergeable piece (packed); characters
            // outside the table are GENERIC (all flags on).
            let mut adjacent: PairMap<u32> = PairMap::default();
            let mut both = Vec::new();
            for t in merge.keys() {
                let mut prev: Option<&[u8]> = None;
                for c in chars_of(t) {
                    if let Some(p) = prev {
                        let key = (u64::from(pack_char(p)) << 32) | u64::from(pack_char(c));
                        adjacent.entry(key).or_insert_with(|| {
                            both.clear();
                            both.extend_from_slice(p);
                            both.extend_from_slice(c);
                            merge.get(&both[..]).map_or(NONE, |x| x.1)
                        });
                        if let Some(i) = bmp_index(p) {
                            chars[i].0 |= CharInfo::LEFT;
                        }
                        if let Some(j) = bmp_index(c) {
                            chars[j].0 |= CharInfo::RIGHT;
                        }
                    }
                    prev = Some(c);
                }
            }
            let mut small = vec![CUT; 129 * 129].into_boxed_slice();
            for (&k, &id) in &adjacent {
                if let (Some(p), Some(c)) = (small_index((k >> 32) as u32), small_index(k as u32)) {
                    small[(p * 129 + c) as usize] = id;
                }
            }
            Some(ChunkRule { adjacent, small })
        };

        let mut pairs: PairMap<(i32, u32)> = PairMap::default();
        for (t, &(score, id)) in merge.iter() {
            for k in 1..t.len() {
                if let (Some(&(_, l)), Some(&(_, r))) = (merge.get(&t[..k]), merge.get(&t[k..])) {
                    pairs.insert((u64::from(l) << 32) | u64::from(r), (score, id));
                }
            }
        }

        let lookup = |s: &[u8]| map.get(s).copied().or(unk_index);
        let kind_of = |id: u32| pieces[id as usize].kind;
        let unk = lookup(&trainer.unk_piece).filter(|&id| kind_of(id) == PieceType::Unknown);
        let control = |s: &[u8]| lookup(s).filter(|&id| kind_of(id) == PieceType::Control);
        let bos = control(&trainer.bos_piece);
        let eos = control(&trainer.eos_piece);
        let pad = control(&trainer.pad_piece);

        Ok(Vocab {
            pieces,
            map,
            merge,
            pairs,
            chars,
            ud_flags_exact,
            ud,
            ud_short,
            byte_fallback: bf,
            byte_ids,
            byte_value,
            unk,
            bos,
            eos,
            pad,
            unk_surface: trainer.unk_surface.clone(),
            has_unused,
            chunk,
        })
    }

    /// The table indices of the first characters of the user-defined pieces, if every one has
    /// one (see [`crate::normalizer::Normalizer::mark_user_defined_starts`]).
    pub(crate) fn user_defined_starts(&self) -> Option<Vec<usize>> {
        self.ud_flags_exact.then(|| {
            (0..self.chars.len())
                .filter(|&i| self.chars[i].starts_user_defined())
                .collect()
        })
    }

    /// The table indices of the characters (other than the space) that are a user-defined
    /// piece of their own and start no longer one: normalization copies them unchanged.
    pub(crate) fn user_defined_singles(&self) -> Vec<usize> {
        (0..self.chars.len())
            .filter(|&i| i != usize::from(b' ') && self.chars[i].0 & CharInfo::UD_ONLY != 0)
            .collect()
    }

    /// Every user-defined piece.
    pub(crate) fn user_defined_pieces(&self) -> Vec<&[u8]> {
        self.pieces
            .iter()
            .filter(|p| p.kind == PieceType::UserDefined)
            .map(|p| &*p.text)
            .collect()
    }

    /// The id of a piece string (any type), if loaded.
    #[inline]
    pub(crate) fn lookup(&self, s: &[u8]) -> Option<u32> {
        self.map.get(s).copied()
    }

    #[inline]
    pub(crate) fn kind(&self, id: u32) -> PieceType {
        self.pieces[id as usize].kind
    }

    /// The id of the mergeable piece equal to the one character `c`, or [`NONE`].
    #[inline]
    pub(crate) fn char_id(&self, c: &[u8]) -> u32 {
        match bmp_index(c) {
            // The table is exact for these encodings.
            Some(i) => match self.chars[i].id() {
                CharInfo::NO_ID => self.merge.get(c).map_or(NONE, |x| x.1),
                id => id,
            },
            None => self.merge.get(c).map_or(NONE, |x| x.1),
        }
    }

    /// The one finalisation of BPE output (SentencePiece's processor-level unknown handling):
    /// `toks` of `text` go to `sink` in order; an unknown span becomes byte pieces under byte
    /// fallback, else one unknown, fused with a directly preceding unknown. `prev_unk` carries
    /// "the last output was an unknown" across calls.
    #[inline]
    pub(crate) fn finish(
        &self,
        toks: &[Tok],
        text: &[u8],
        prev_unk: &mut bool,
        sink: &mut impl Sink,
    ) {
        for t in toks {
            match *t {
                Tok::Id(id) => {
                    sink.id(self, id);
                    *prev_unk = false;
                }
                Tok::Unk(a, b) => {
                    let span = &text[a as usize..b as usize];
                    if self.byte_fallback {
                        for &c in span {
                            sink.id(self, self.byte_ids[c as usize]);
                        }
                    } else {
                        sink.unk(self, span, *prev_unk);
                        *prev_unk = true;
                    }
                }
            }
        }
    }
}
