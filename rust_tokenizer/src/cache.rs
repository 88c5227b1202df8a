//! The per-thread chunk cache: normalized chunk bytes -> the chunk's ids. Chunks of up to 15
//! bytes (most of them: words, CJK fragments) are keyed inline as a `u128` (bytes + length), so a
//! lookup is one integer hash and compare with no `memcmp` call; longer chunks use a byte-string
//! map. Ids live in one arena. Bounded: everything is dropped when the arena or the entry count
//! passes its cap (simple, and a hit rate that refills quickly on real text).

use crate::fxhash::FxMap;

const MAX_ENTRIES: usize = 1 << 18;
const MAX_ARENA: usize = 1 << 22;

/// Direct-mapped front table for small keys (4096 slots, 96 KB: stays in L2), so the frequent
/// chunks are found without probing the big table.
const L1_BITS: u32 = 12;
const EMPTY: u128 = u128::MAX; // never a small key: its length byte is at most 15

#[derive(Default)]
pub struct ChunkCache {
    owner: u64,
    l1: Vec<(u128, u32, u32)>,
    small: FxMap<u128, (u32, u32)>,
    big: FxMap<Box<[u8]>, (u32, u32)>,
    arena: Vec<u32>,
}

#[inline]
fn small_key(chunk: &[u8]) -> Option<u128> {
    if chunk.len() > 15 {
        return None;
    }
    let mut buf = [0u8; 16];
    buf[..chunk.len()].copy_from_slice(chunk);
    buf[15] = chunk.len() as u8;
    Some(u128::from_le_bytes(buf))
}

impl ChunkCache {
    /// Empties the cache if it belongs to another tokenizer.
    pub fn claim(&mut self, owner: u64) {
        if self.owner != owner {
            self.clear();
            self.owner = owner;
        }
    }

    fn clear(&mut self) {
        self.l1.clear();
        self.l1.resize(1 << L1_BITS, (EMPTY, 0, 0));
        self.small.clear();
        self.big.clear();
        self.arena.clear();
    }

    #[inline]
    fn slot(k: u128) -> usize {
        let h =
            ((k as u64) ^ ((k >> 64) as u64).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - L1_BITS)) as usize
    }

    #[inline]
    pub fn get(&mut self, chunk: &[u8]) -> Option<&[u32]> {
        let (start, len) = match small_key(chunk) {
            Some(k) => {
                if self.l1.is_empty() {
                    self.clear();
                }
                let slot = Self::slot(k);
                let e = self.l1[slot];
                if e.0 == k {
                    (e.1, e.2)
                } else {
                    let &(start, len) = self.small.get(&k)?;
                    self.l1[slot] = (k, start, len);
                    (start, len)
                }
            }
            None => *self.big.get(chunk)?,
        };
        self.arena.get(start as usize..(start + len) as usize)
    }

    pub fn insert(&mut self, chunk: &[u8], ids: &[u32]) {
        if self.small.len() + self.big.len() >= MAX_ENTRIES
            || self.arena.len() + ids.len() > MAX_ARENA
        {
            self.clear();
        }
        let v = (self.arena.len() as u32, ids.len() as u32);
        self.arena.extend_from_slice(ids);
        match small_key(chunk) {
            Some(k) => {
                self.small.insert(k, v);
            }
            None => {
                self.big.insert(chunk.into(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_big_keys() {
        let mut c = ChunkCache::default();
        c.claim(1);
        c.insert(b"ab", &[1, 2]);
        c.insert(b"ab\0", &[3]);
        c.insert(&[b'x'; 40], &[4, 5, 6]);
        assert_eq!(c.get(b"ab"), Some(&[1, 2][..]));
        assert_eq!(c.get(b"ab\0"), Some(&[3][..]));
        assert_eq!(c.get(&[b'x'; 40]), Some(&[4, 5, 6][..]));
        assert_eq!(c.get(b"a"), None);
        c.claim(2);
        assert_eq!(c.get(b"ab"), None);
    }
}
