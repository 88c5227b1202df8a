//! SentencePiece's BPE agenda over one piece of normalized text (`docs/sentencepiece-behaviour.md`
//! §3): initial symbols
//! (characters, or frozen user-defined pieces when asked), candidate pairs scored by the merged
//! piece's score, highest score first and leftmost on ties (`f32::total_cmp` order), stale entries
//! detected by byte length, UNUSED pieces resegmented at the end.
//!
//! Symbols are byte ranges of the input, so merged strings are slices of it and a lookup is one
//! hash of a slice: nothing is allocated per symbol.

use std::collections::BinaryHeap;

use crate::fxhash::FxMap;
use crate::normalizer::lead_len;
use crate::proto::PieceType;
use crate::vocab::{Tok, Vocab, NONE};

/// Resegmentation recursion cap (0.2.x).
const MAX_RESEG_DEPTH: u32 = 100;
/// Below this many symbols a linear scan for the best pair beats the heap.
const LINEAR_MAX: usize = 24;
/// Longest text one BPE run handles (positions are `u32`).
pub(crate) const MAX_RUN_BYTES: usize = u32::MAX as usize;

#[derive(Debug, Clone, Copy)]
struct Sym {
    start: u32,
    end: u32,
    /// Id of the mergeable piece equal to this symbol, or `NONE`.
    id: u32,
    prev: u32,
    next: u32,
    frozen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cand {
    score: i32,
    /// `!left`, so that the smaller left index ranks higher.
    left_rev: u32,
    right: u32,
    size: u32,
}

/// Reusable buffers for BPE runs.
#[derive(Default)]
pub struct Bpe {
    syms: Vec<Sym>,
    heap: BinaryHeap<Cand>,
    /// Linear mode: score key of the pair (i, next(i)), or `None`.
    pair: Vec<Option<i32>>,
}

type Rev<'a> = FxMap<&'a [u8], ((u32, u32), (u32, u32))>;

impl Bpe {
    /// Encodes `text` (non-empty, normalized) and appends its symbols to `out`. With `with_ud`
    /// the user-defined pieces are matched (longest first) and frozen; otherwise the caller has
    /// already taken them out.
    pub fn run(&mut self, tok: &Vocab, text: &[u8], with_ud: bool, out: &mut Vec<Tok>) {
        let n = text.len();
        if n >= MAX_RUN_BYTES {
            // Positions are u32. A single unbreakable run of 4 GiB cannot be merged here; rather
            // than fail, emit it character by character (SentencePiece itself refuses inputs over
            // 4 GiB in its parallel API; the Python binding refuses such texts up front).
            let mut pos = 0;
            while pos < n {
                let len = lead_len(text[pos], n - pos);
                let c = &text[pos..pos + len];
                match tok.lookup(c) {
                    Some(id)
                        if matches!(tok.kind(id), PieceType::Normal | PieceType::UserDefined) =>
                    {
                        out.push(Tok::Id(id))
                    }
                    // Positions past u32 cannot be recorded: unknown characters there become unk.
                    _ => out.push(Tok::Unk(
                        pos.min(MAX_RUN_BYTES) as u32,
                        (pos + len).min(MAX_RUN_BYTES) as u32,
                    )),
                }
                pos += len;
            }
            return;
        }
        let syms = &mut self.syms;
        syms.clear();
        let mut pos = 0usize;
        let ud = if with_ud { tok.ud.as_ref() } else { None };
        while pos < n {
            let mut len = 0;
            let mut frozen = false;
            if let Some(m) = ud {
                if m.may_start(text[pos]) {
                    if let Some(l) = m.longest(&text[pos..]) {
                        len = l;
                        frozen = true;
                    }
                }
            }
            if len == 0 {
                len = lead_len(text[pos], n - pos);
            }
            let i = syms.len() as u32;
            let id = if frozen {
                NONE
            } else {
                tok.char_id(&text[pos..pos + len])
            };
            syms.push(Sym {
                start: pos as u32,
                end: (pos + len) as u32,
                id,
                prev: if i == 0 { NONE } else { i - 1 },
                next: i + 1,
                frozen,
            });
            pos += len;
        }
        if let Some(last) = syms.last_mut() {
            last.next = NONE;
        }
        let mut rev: Option<Rev<'_>> = if tok.has_unused {
            Some(FxMap::default())
        } else {
            None
        };

        if syms.len() <= LINEAR_MAX && rev.is_none() {
            self.linear(tok, text);
        } else {
            self.heap(tok, text, &mut rev);
        }

        let mut i = if self.syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            let s = self.syms[i as usize];
            if s.id != NONE && rev.is_none() {
                // A mergeable piece and no UNUSED pieces in the model: NORMAL or USER_DEFINED.
                out.push(Tok::Id(s.id));
            } else {
                emit(tok, text, (s.start, s.end), 0, rev.as_ref(), out);
            }
            i = s.next;
        }
    }

    #[inline]
    fn score_of(tok: &Vocab, text: &[u8], l: &Sym, r: &Sym) -> Option<(i32, u32)> {
        if l.frozen || r.frozen {
            return None;
        }
        if l.id != NONE && r.id != NONE {
            // Both are pieces: the pair table holds every mergeable concatenation of two pieces.
            return tok
                .pairs
                .get(&((u64::from(l.id) << 32) | u64::from(r.id)))
                .copied();
        }
        // A character that is not a mergeable piece (rare): look the string up.
        tok.merge
            .get(&text[l.start as usize..r.end as usize])
            .copied()
    }

    /// Few symbols: keep the score of each adjacent pair and scan for the best one.
    fn linear(&mut self, tok: &Vocab, text: &[u8]) {
        let syms = &mut self.syms;
        let pair = &mut self.pair;
        pair.clear();
        for i in 0..syms.len() {
            let p = if i + 1 < syms.len() {
                Self::score_of(tok, text, &syms[i], &syms[i + 1])
            } else {
                None
            };
            pair.push(p.map(|x| x.0));
        }
        loop {
            // Best pair: highest score, leftmost on ties. Walk the live list in order.
            let mut best: Option<(i32, u32)> = None;
            let mut i = 0u32;
            while i != NONE {
                if let Some(sc) = pair[i as usize] {
                    if best.is_none_or(|(b, _)| sc > b) {
                        best = Some((sc, i));
                    }
                }
                i = syms[i as usize].next;
            }
            let Some((_, l)) = best else { break };
            let l = l as usize;
            let r = syms[l].next as usize;
            syms[l].id = Self::score_of(tok, text, &syms[l], &syms[r]).map_or(NONE, |x| x.1);
            syms[l].end = syms[r].end;
            syms[l].next = syms[r].next;
            let rn = syms[r].next;
            if rn != NONE {
                syms[rn as usize].prev = l as u32;
            }
            pair[r] = None;
            let nx = syms[l].next;
            pair[l] = if nx == NONE {
                None
            } else {
                Self::score_of(tok, text, &syms[l], &syms[nx as usize]).map(|x| x.0)
            };
            let pv = syms[l].prev;
            if pv != NONE {
                pair[pv as usize] =
                    Self::score_of(tok, text, &syms[pv as usize], &syms[l]).map(|x| x.0);
            }
        }
    }

    fn heap<'a>(&mut self, tok: &Vocab, text: &'a [u8], rev: &mut Option<Rev<'a>>) {
        let syms = &mut self.syms;
        let heap = &mut self.heap;
        heap.clear();
        let push = |heap: &mut BinaryHeap<Cand>,
                    rev: &mut Option<Rev<'a>>,
                    syms: &[Sym],
                    l: u32,
                    r: u32| {
            let (ls, rs) = (&syms[l as usize], &syms[r as usize]);
            if let Some((score, id)) = Self::score_of(tok, text, ls, rs) {
                heap.push(Cand {
                    score,
                    left_rev: !l,
                    right: r,
                    size: rs.end - ls.start,
                });
                if let Some(rev) = rev.as_mut() {
                    if tok.kind(id) == PieceType::Unused {
                        rev.insert(
                            &text[ls.start as usize..rs.end as usize],
                            ((ls.start, ls.end), (rs.start, rs.end)),
                        );
                    }
                }
            }
        };
        for i in 1..syms.len() {
            push(heap, rev, syms, (i - 1) as u32, i as u32);
        }
        while let Some(top) = heap.pop() {
            let l = !top.left_rev as usize;
            let r = top.right as usize;
            let (ls, rs) = (syms[l], syms[r]);
            if ls.start == ls.end
                || rs.start == rs.end
                || (ls.end - ls.start) + (rs.end - rs.start) != top.size
            {
                continue;
            }
            syms[l].end = rs.end;
            syms[l].id = top_id(tok, text, &ls, &rs);
            syms[r].end = syms[r].start; // empty
            syms[l].next = rs.next;
            if rs.next != NONE {
                syms[rs.next as usize].prev = l as u32;
            }
            if ls.prev != NONE {
                push(heap, rev, syms, ls.prev, l as u32);
            }
            if rs.next != NONE {
                push(heap, rev, syms, l as u32, rs.next);
            }
        }
    }
}

#[inline]
fn top_id(tok: &Vocab, text: &[u8], l: &Sym, r: &Sym) -> u32 {
    Bpe::score_of(tok, text, l, r).map_or(NONE, |x| x.1)
}

/// Resegments UNUSED pieces and classifies the symbol (`docs/sentencepiece-behaviour.md` §3.6).
fn emit(
    tok: &Vocab,
    text: &[u8],
    r: (u32, u32),
    depth: u32,
    rev: Option<&Rev<'_>>,
    out: &mut Vec<Tok>,
) {
    let w = &text[r.0 as usize..r.1 as usize];
    let id = tok.lookup(w);
    if depth > MAX_RESEG_DEPTH {
        match id {
            Some(id) if tok.kind(id) != PieceType::Unknown => out.push(Tok::Id(id)),
            _ => out.push(Tok::Unk(r.0, r.1)),
        }
        return;
    }
    let Some(id) = id else {
        out.push(Tok::Unk(r.0, r.1));
        return;
    };
    match tok.kind(id) {
        PieceType::Control | PieceType::Byte | PieceType::Unknown => out.push(Tok::Unk(r.0, r.1)),
        PieceType::Unused => match rev.and_then(|m| m.get(w)) {
            Some(&(a, b)) => {
                emit(tok, text, a, depth + 1, rev, out);
                emit(tok, text, b, depth + 1, rev, out);
            }
            None => out.push(Tok::Unk(r.0, r.1)),
        },
        PieceType::Normal | PieceType::UserDefined => out.push(Tok::Id(id)),
    }
}
