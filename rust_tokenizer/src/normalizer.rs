//! SentencePiece normalization (`docs/sentencepiece-behaviour.md` §2): the `precompiled_charsmap` (a Darts-clone double array
//! plus a string pool), user-defined pieces that bypass it, SentencePiece's own per-byte UTF-8
//! validity rule, and the whitespace options.

use crate::prefix::{load4, short_word, PrefixMatcher};

/// U+2581, the whitespace symbol.
pub const WS: &[u8] = "\u{2581}".as_bytes();
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();
/// The normalizer keeps at most this many common-prefix results (and picks the longest of them).
const MAX_TRIE_RESULTS: usize = 32;

/// Length of the valid UTF-8 character at the start of `s` by SentencePiece's rules (§2.4), or
/// `None` if the first byte does not start a valid character (consume one byte then).
#[inline]
pub fn valid_char_len(s: &[u8]) -> Option<usize> {
    let b0 = *s.first()?;
    if b0 < 0x80 {
        return Some(1);
    }
    let cont = |i: usize| s.get(i).is_some_and(|&b| b & 0xC0 == 0x80);
    if b0 & 0xE0 == 0xC0 {
        if cont(1) {
            let cp = (u32::from(b0 & 0x1F) << 6) | u32::from(s[1] & 0x3F);
            if cp >= 0x80 {
                return Some(2);
            }
        }
        None
    } else if b0 & 0xF0 == 0xE0 {
        if cont(1) && cont(2) {
            let cp = (u32::from(b0 & 0x0F) << 12)
                | (u32::from(s[1] & 0x3F) << 6)
                | u32::from(s[2] & 0x3F);
            if cp >= 0x800 && !(0xD800..=0xDFFF).contains(&cp) {
                return Some(3);
            }
        }
        None
    } else if b0 & 0xF8 == 0xF0 {
        if cont(1) && cont(2) && cont(3) {
            let cp = (u32::from(b0 & 0x07) << 18)
                | (u32::from(s[1] & 0x3F) << 12)
                | (u32::from(s[2] & 0x3F) << 6)
                | u32::from(s[3] & 0x3F);
            if (0x10000..=0x10FFFF).contains(&cp) {
                return Some(4);
            }
        }
        None
    } else {
        None
    }
}

/// Character length from the lead byte alone (SentencePiece's `OneCharLen`), clamped to `rest`.
#[inline]
pub fn lead_len(b: u8, rest: usize) -> usize {
    let n = match b >> 4 {
        0..=0xB => 1,
        0xC | 0xD => 2,
        0xE => 3,
        _ => 4,
    };
    n.min(rest)
}

/// Appends SentencePiece's decoding of arbitrary bytes: valid characters copied, one U+FFFD per
/// invalid byte.
pub fn push_bytes_lossy(out: &mut Vec<u8>, mut s: &[u8]) {
    while !s.is_empty() {
        match valid_char_len(s) {
            Some(n) => {
                out.extend_from_slice(&s[..n]);
                s = &s[n..];
            }
            None => {
                out.extend_from_slice(REPLACEMENT);
                s = &s[1..];
            }
        }
    }
}

/// The precompiled charsmap: a Darts-clone double array over UTF-8 keys, values are offsets of
/// NUL-terminated replacement strings in `pool`.
#[derive(Debug, Clone)]
pub struct CharsMap {
    units: Vec<u32>,
    pool: Vec<u8>,
    /// For each byte: does the root have a child with that label? (no: nothing can match)
    root_child: Box<[bool; 256]>,
    /// Per BMP code point: `BMP_PLAIN` (no key starts with it: it maps to itself), `BMP_SLOW`
    /// (a key ends inside or at it: take the full walk), or `node + 2` (keys continue past it:
    /// it maps to itself unless the next byte continues the walk from `node`).
    bmp: Box<Bmp>,
    /// Every character that starts a user-defined piece is `BMP_SLOW` in `bmp`
    /// ([`Normalizer::mark_user_defined_starts`]): the fast path need not ask the matcher.
    ud_marked: bool,
    /// Per byte: an ASCII character other than the space that maps to itself (`BMP_PLAIN`) and
    /// starts no user-defined piece (valid once `ud_marked`); false for bytes >= 0x80.
    ascii_plain: Box<[bool; 256]>,
    /// Per byte (valid once `ud_marked`): how the ASCII loop of [`Normalizer::normalize`] takes
    /// it (`A_*`); `A_SLOW` for bytes >= 0x80.
    ascii_cls: Box<[u8; 256]>,
    /// Per ASCII byte, for the `A_UD` ones: every user-defined piece starting with it, longest
    /// first, and what the character is when none matches (`A_PLAIN`, `A_NEXT` or `A_SLOW`).
    ud_ascii: Vec<(ShortWords, u8)>,
}

/// User-defined pieces as `(value, mask, length)` ([`short_word`]).
type ShortWords = Vec<(u32, u32, usize)>;

/// The ASCII loop's byte classes. Not taken there: the general path decides.
const A_SLOW: u8 = 0;
/// Maps to itself whatever follows, starts no user-defined piece.
const A_PLAIN: u8 = 1;
/// Maps to itself unless the next byte continues a charsmap key, and no ASCII byte does
/// (e.g. a letter that composes with a following combining mark): plain before ASCII.
const A_NEXT: u8 = 2;
/// The space, written as the whitespace symbol (no charsmap key or user-defined piece starts
/// with it, no `remove_extra_whitespaces`).
const A_SPACE: u8 = 3;
/// Starts a few user-defined pieces of at most 4 bytes (no spaces in them): compared directly
/// ([`CharsMap::ud_ascii`]).
const A_UD: u8 = 4;
/// At most this many user-defined pieces per `A_UD` byte (more: the matcher decides).
const MAX_UD_ASCII: usize = 4;

/// One entry per BMP code point: a fixed-size array, so that an index computed from a 3-byte
/// UTF-8 form (at most 0xFFFF) needs no bounds check.
type Bmp = [u32; 0x10000];

const BMP_PLAIN: u32 = 0;
const BMP_SLOW: u32 = 1;

#[inline]
fn has_leaf(u: u32) -> bool {
    (u >> 8) & 1 == 1
}
#[inline]
fn value(u: u32) -> u32 {
    u & 0x7FFF_FFFF
}
#[inline]
fn label(u: u32) -> u32 {
    u & 0x8000_00FF
}
#[inline]
fn offset(u: u32) -> usize {
    ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize
}

impl CharsMap {
    /// Parses and validates the blob (§2.1).
    pub fn parse(blob: &[u8]) -> Result<Self, String> {
        if blob.len() <= 4 {
            return Err(format!(
                "precompiled_charsmap is too short ({} bytes)",
                blob.len()
            ));
        }
        let t = u32::from_le_bytes(blob[..4].try_into().expect("4 bytes")) as usize;
        if t >= blob.len() - 4 {
            return Err(format!(
                "precompiled_charsmap trie size {t} exceeds the blob ({} bytes)",
                blob.len()
            ));
        }
        if t < 1024 || !t.is_multiple_of(1024) {
            return Err(format!(
                "precompiled_charsmap trie size {t} is not a positive multiple of 1024"
            ));
        }
        let units: Vec<u32> = blob[4..4 + t]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let pool = blob[4 + t..].to_vec();
        if pool.last() != Some(&0) {
            return Err("precompiled_charsmap string pool does not end with a NUL byte".into());
        }
        for &u in &units {
            if u & 0x8000_0000 != 0 && value(u) as usize >= pool.len() {
                return Err(format!(
                    "precompiled_charsmap leaf value {} is outside the {}-byte string pool",
                    value(u),
                    pool.len()
                ));
            }
        }
        let mut root_child = Box::new([false; 256]);
        let root = offset(units[0]);
        for b in 0..256usize {
            let pos = root ^ b;
            if let Some(&u) = units.get(pos) {
                root_child[b] = label(u) == b as u32;
            }
        }
        let mut cm = CharsMap {
            units,
            pool,
            root_child,
            bmp: vec![BMP_PLAIN; 0x10000]
                .into_boxed_slice()
                .try_into()
                .map_err(|_| "BMP table size".to_string())?,
            ud_marked: false,
            ascii_plain: Box::new([false; 256]),
            ascii_cls: Box::new([A_SLOW; 256]),
            ud_ascii: Vec::new(),
        };
        for cp in 0..0x10000u32 {
            cm.bmp[cp as usize] = cm.classify(cp);
        }
        Ok(cm)
    }

    fn classify(&self, cp: u32) -> u32 {
        let Some(c) = char::from_u32(cp) else {
            return BMP_SLOW;
        };
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        let units = &self.units;
        let mut pos = offset(units[0]);
        for (i, &b) in bytes.iter().enumerate() {
            pos ^= b as usize;
            let Some(&u) = units.get(pos) else {
                return BMP_PLAIN;
            };
            if label(u) != u32::from(b) {
                return BMP_PLAIN;
            }
            pos ^= offset(u);
            if has_leaf(u) {
                return BMP_SLOW;
            }
            if i + 1 == bytes.len() {
                return match u32::try_from(pos) {
                    Ok(p) if p < u32::MAX - 2 => p + 2,
                    _ => BMP_SLOW,
                };
            }
        }
        BMP_SLOW
    }

    /// Whether byte `b` continues the walk from node `pos`.
    #[inline]
    fn continues(&self, pos: usize, b: u8) -> bool {
        match self.units.get(pos ^ b as usize) {
            Some(&u) => label(u) == u32::from(b),
            None => false,
        }
    }

    /// Longest match at the start of `s`: `(bytes consumed, replacement)`.
    #[inline]
    pub fn longest<'a>(&'a self, s: &[u8]) -> Option<(usize, &'a [u8])> {
        if !self.root_child[*s.first()? as usize] {
            return None;
        }
        let units = &self.units;
        let mut pos = offset(units[0]);
        let mut best: Option<(usize, u32)> = None;
        let mut found = 0usize;
        for (i, &b) in s.iter().enumerate() {
            pos ^= b as usize;
            let Some(&u) = units.get(pos) else { break };
            if label(u) != u32::from(b) {
                break;
            }
            pos ^= offset(u);
            if has_leaf(u) {
                let Some(&leaf) = units.get(pos) else { break };
                found += 1;
                if found <= MAX_TRIE_RESULTS {
                    best = Some((i + 1, value(leaf)));
                }
            }
        }
        let (len, off) = best?;
        let off = off as usize;
        let rest = self.pool.get(off..)?;
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        Some((len, &rest[..end]))
    }
}

/// The four bytes at `s[at..]` as a little-endian `u32` (one load), if there are four.
#[inline]
pub(crate) fn le32(s: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = s.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Normalizer settings plus the charsmap.
#[derive(Debug, Clone)]
pub struct Normalizer {
    pub charsmap: Option<CharsMap>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub treat_whitespace_as_suffix: bool,
}

impl Normalizer {
    /// The whitespace symbol written for an ASCII space.
    pub fn ws(&self) -> &'static [u8] {
        if self.escape_whitespaces {
            WS
        } else {
            b" "
        }
    }

    /// Sends the characters (BMP code points) that start user-defined pieces down the general
    /// path, so that the fast path needs no matcher lookup for the others. `cps` must hold the
    /// first character of every user-defined piece, `words` every user-defined piece. Without a
    /// charsmap this does nothing.
    ///
    /// `singles` (a subset of `cps`, without the space) are the characters whose only
    /// user-defined piece is the character itself: the matcher would return them unchanged, so
    /// they are marked to be copied as they are.
    pub fn mark_user_defined_starts(&mut self, cps: &[usize], singles: &[usize], words: &[&[u8]]) {
        let rew = self.remove_extra_whitespaces;
        let Some(cm) = &mut self.charsmap else {
            return;
        };
        // What each ASCII character is to the charsmap alone (before the marking below).
        let mut cls = [A_SLOW; 256];
        for b in 0..0x80u8 {
            cls[usize::from(b)] = match cm.bmp[usize::from(b)] {
                BMP_PLAIN => A_PLAIN,
                BMP_SLOW => A_SLOW,
                // Keys continue past it: plain before an ASCII byte if none continues one.
                node if (0..0x80u8).all(|x| !cm.continues((node - 2) as usize, x)) => A_NEXT,
                _ => A_SLOW,
            };
        }
        for &cp in cps {
            if let Some(e) = cm.bmp.get_mut(cp) {
                *e = BMP_SLOW;
            }
        }
        for &cp in singles {
            if let Some(e) = cm.bmp.get_mut(cp) {
                *e = BMP_PLAIN;
            }
        }
        cm.ud_marked = true;
        for b in 0..0x80u8 {
            cm.ascii_plain[usize::from(b)] = b != b' ' && cm.bmp[usize::from(b)] == BMP_PLAIN;
        }
        // The ASCII loop: a user-defined piece wins at its first byte (the longest), else the
        // charsmap decides as for any character.
        let mut ud_ascii: Vec<(ShortWords, u8)> = vec![(Vec::new(), A_SLOW); 0x80];
        for b in 0..0x80u8 {
            let i = usize::from(b);
            let mut starting: Vec<Box<[u8]>> = words
                .iter()
                .filter(|w| w.first() == Some(&b))
                .map(|w| Box::<[u8]>::from(*w))
                .collect();
            cm.ascii_cls[i] = if b == b' ' {
                if !rew && starting.is_empty() && cls[i] == A_PLAIN {
                    A_SPACE
                } else {
                    A_SLOW
                }
            } else if starting.is_empty() {
                cls[i]
            } else if cm.ascii_plain[i] {
                // A single: the piece is the character itself.
                A_PLAIN
            } else if starting.len() <= MAX_UD_ASCII
                && starting
                    .iter()
                    .all(|w| !w.contains(&b' ') && short_word(w).is_some())
            {
                starting.sort_by_key(|w| std::cmp::Reverse(w.len()));
                let short = starting
                    .iter()
                    .filter_map(|w| short_word(w).map(|(v, m)| (v, m, w.len())))
                    .collect();
                ud_ascii[i] = (short, cls[i]);
                A_UD
            } else {
                A_SLOW
            };
        }
        cm.ud_ascii = ud_ascii;
    }

    /// Fast path: `Some(len)` if the character at the start of `s` normalizes to itself and is
    /// neither a space nor the start of a user-defined piece (then `NormalizePrefix` would return
    /// exactly these bytes). `None`: take the general path.
    #[inline]
    fn fast_char(&self, s: &[u8], ud: Option<&PrefixMatcher>) -> Option<usize> {
        let b = s[0];
        if let Some(m) = ud {
            if m.may_start(b) {
                return None;
            }
        }
        let (cp, len) = if b < 0x80 {
            if b == b' ' {
                return None;
            }
            (u32::from(b), 1)
        } else if b & 0xF0 == 0xE0 {
            if s.len() < 3 || s[1] & 0xC0 != 0x80 || s[2] & 0xC0 != 0x80 {
                return None;
            }
            let cp = (u32::from(b & 0x0F) << 12)
                | (u32::from(s[1] & 0x3F) << 6)
                | u32::from(s[2] & 0x3F);
            if cp < 0x800 || (0xD800..=0xDFFF).contains(&cp) {
                return None;
            }
            (cp, 3)
        } else if b & 0xE0 == 0xC0 {
            if s.len() < 2 || s[1] & 0xC0 != 0x80 {
                return None;
            }
            let cp = (u32::from(b & 0x1F) << 6) | u32::from(s[1] & 0x3F);
            if cp < 0x80 {
                return None;
            }
            (cp, 2)
        } else {
            return None;
        };
        let Some(cm) = &self.charsmap else {
            return Some(len);
        };
        match cm.bmp[cp as usize] {
            BMP_PLAIN => Some(len),
            BMP_SLOW => None,
            node => match s.get(len) {
                Some(&next) if cm.continues((node - 2) as usize, next) => None,
                _ => Some(len),
            },
        }
    }

    /// `NormalizePrefix` (§2.3): replacement and bytes consumed. `s` is non-empty.
    #[inline]
    fn prefix<'a>(&'a self, s: &'a [u8], ud: Option<&PrefixMatcher>) -> (&'a [u8], usize) {
        let b = s[0];
        if let Some(m) = ud {
            if m.may_start(b) {
                if let Some(n) = m.longest(s) {
                    return (&s[..n], n);
                }
            }
        }
        if let Some(cm) = &self.charsmap {
            if let Some((n, r)) = cm.longest(s) {
                return (r, n);
            }
        }
        if b < 0x80 {
            return (&s[..1], 1);
        }
        match valid_char_len(s) {
            Some(n) => (&s[..n], n),
            None => (REPLACEMENT, 1),
        }
    }

    /// Normalizes `input` into `out` (cleared first), §2.5.
    pub fn normalize(&self, mut input: &[u8], ud: Option<&PrefixMatcher>, out: &mut Vec<u8>) {
        out.clear();
        if input.is_empty() {
            return;
        }
        let rew = self.remove_extra_whitespaces;
        if rew {
            while !input.is_empty() {
                let (r, n) = self.prefix(input, ud);
                if r != b" " {
                    break;
                }
                input = &input[n..];
            }
        }
        if input.is_empty() {
            return;
        }
        let ws = self.ws();
        out.reserve(input.len() + input.len() / 4 + 4);
        if self.add_dummy_prefix && !self.treat_whitespace_as_suffix {
            out.extend_from_slice(ws);
        }
        let mut prev_space = rew;
        let escape = self.escape_whitespaces;
        // With the user-defined starts marked in the charsmap table, the fast path skips the
        // matcher (the general path still matches them).
        let (fast_ud, ascii_plain, bmp) = match &self.charsmap {
            Some(cm) if cm.ud_marked => (None, Some(&*cm.ascii_plain), Some(&*cm.bmp)),
            _ => (ud, None, None),
        };
        // A space that maps to itself and starts no user-defined piece, without
        // remove_extra_whitespaces: written as the whitespace symbol without the general path.
        let space_fast = !rew
            && !ud.is_some_and(|m| m.may_start(b' '))
            && self
                .charsmap
                .as_ref()
                .is_none_or(|cm| !cm.root_child[usize::from(b' ')]);
        let ascii = match &self.charsmap {
            Some(cm) if cm.ud_marked => Some((&*cm.ascii_cls, &cm.ud_ascii[..])),
            _ => None,
        };
        while !input.is_empty() {
            // ASCII, byte by byte by the class table: plain characters, spaces and the
            // user-defined pieces that start with few-piece characters (see `A_*`).
            if let Some((cls, ud_ascii)) = ascii {
                let mut i = 0;
                while let Some(&b) = input.get(i) {
                    let mut c = cls[usize::from(b)];
                    if c == A_UD {
                        let (words, alone) = &ud_ascii[usize::from(b)];
                        // A match means `len` bytes are there: words hold no NUL, the
                        // padding of a short read.
                        let x = load4(&input[i..]);
                        if let Some(&(_, _, len)) = words.iter().find(|w| x & w.1 == w.0) {
                            out.extend_from_slice(&input[i..i + len]);
                            i += len;
                            continue;
                        }
                        c = *alone;
                    }
                    match c {
                        A_PLAIN => out.push(b),
                        A_NEXT if input.get(i + 1).is_none_or(|&x| x < 0x80) => out.push(b),
                        A_SPACE if escape => out.extend_from_slice(&[0xE2, 0x96, 0x81]),
                        A_SPACE => out.push(b' '),
                        _ => break,
                    }
                    i += 1;
                }
                if i > 0 {
                    input = &input[i..];
                    prev_space = false;
                    continue;
                }
            }
            // A run of characters that normalize to themselves is copied in one go.
            let mut run = 0;
            while run < input.len() {
                if let (true, Some(plain)) = (input[run] < 0x80, ascii_plain) {
                    if plain[usize::from(input[run])] {
                        run += 1;
                        while run < input.len() && plain[usize::from(input[run])] {
                            run += 1;
                        }
                        continue;
                    }
                }
                match self.fast_char(&input[run..], fast_ud) {
                    Some(3) if bmp.is_some() => {
                        run += 3;
                        // A CJK run: the following well-formed 3-byte characters that map to
                        // themselves (the cases where `fast_char` returns `Some(3)` for a
                        // `BMP_PLAIN` entry), without the general checks.
                        // Four bytes read at once (the last character of the input goes
                        // through `fast_char`).
                        let Some(bmp) = bmp else { continue };
                        while let Some(w) = le32(input, run) {
                            if w & 0x00C0_C0F0 != 0x0080_80E0 {
                                break;
                            }
                            let cp = ((w & 0x0F) << 12) | ((w & 0x3F00) >> 2) | ((w >> 16) & 0x3F);
                            if cp < 0x800 || bmp[cp as usize] != BMP_PLAIN {
                                break;
                            }
                            run += 3;
                        }
                    }
                    Some(len) => run += len,
                    None => break,
                }
            }
            if run > 0 {
                out.extend_from_slice(&input[..run]);
                input = &input[run..];
                prev_space = false;
                continue;
            }
            if space_fast && input[0] == b' ' {
                out.extend_from_slice(ws);
                input = &input[1..];
                prev_space = false;
                continue;
            }
            let (mut r, n) = self.prefix(input, ud);
            if prev_space {
                while let [b' ', rest @ ..] = r {
                    r = rest;
                }
            }
            if !r.is_empty() {
                if escape && r.contains(&b' ') {
                    for &c in r {
                        if c == b' ' {
                            out.extend_from_slice(WS);
                        } else {
                            out.push(c);
                        }
                    }
                } else {
                    out.extend_from_slice(r);
                }
                prev_space = r.last() == Some(&b' ');
            }
            input = &input[n..];
            if !rew {
                prev_space = false;
            }
        }
        if rew {
            while out.ends_with(ws) {
                out.truncate(out.len() - ws.len());
            }
        }
        if self.add_dummy_prefix && self.treat_whitespace_as_suffix {
            out.extend_from_slice(ws);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_rules() {
        assert_eq!(valid_char_len(b"a"), Some(1));
        assert_eq!(valid_char_len("中".as_bytes()), Some(3));
        assert_eq!(valid_char_len(b"\xe4\xb8"), None);
        assert_eq!(valid_char_len(b"\xed\xa0\x80"), None);
        assert_eq!(valid_char_len(b"\xc0\x80"), None);
        assert_eq!(valid_char_len(b"\xf4\x90\x80\x80"), None);
        assert_eq!(valid_char_len("🦒".as_bytes()), Some(4));
        let mut v = Vec::new();
        push_bytes_lossy(&mut v, b"\xe4\xb8x");
        assert_eq!(String::from_utf8(v).unwrap(), "\u{FFFD}\u{FFFD}x");
    }

    #[test]
    fn identity_options() {
        let n = Normalizer {
            charsmap: None,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
            treat_whitespace_as_suffix: false,
        };
        let mut out = Vec::new();
        n.normalize(b"  the   fox  ", None, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "\u{2581}the\u{2581}fox"
        );
        n.normalize(b"   ", None, &mut out);
        assert!(out.is_empty());
    }
}
