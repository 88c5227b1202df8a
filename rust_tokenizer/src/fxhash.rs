//! A small fast non-cryptographic hasher for byte-string keys (FxHash-style word mixing with a
//! final avalanche), so the hot maps need no extra dependency. Not DoS-resistant; the keys are
//! vocabulary pieces and text chunks, and a bad distribution only costs speed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0xf135_7aea_2e62_a9c5;

#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash ^ w).wrapping_mul(K).rotate_left(23);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while bytes.len() >= 8 {
            self.add(u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")));
            bytes = &bytes[8..];
        }
        if bytes.len() >= 4 {
            let lo = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as u64;
            let hi =
                u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes")) as u64;
            self.add(lo | (hi << 32));
        } else if !bytes.is_empty() {
            let a = bytes[0] as u64;
            let b = bytes[bytes.len() / 2] as u64;
            let c = bytes[bytes.len() - 1] as u64;
            self.add(a | (b << 8) | (c << 16));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxMap<K, V> = HashMap<K, V, FxBuild>;

/// A hasher for one `u64` key (character pairs of the chunker, id pairs of the BPE): one
/// multiply, the high half folded into the low half (hashbrown takes the bucket from the low bits
/// and a 7-bit tag from the top ones, both from the well-mixed high half of the product). Other
/// inputs go through [`FxHasher`]'s word mixing.
#[derive(Default, Clone, Copy)]
pub struct PairHasher {
    hash: u64,
}

impl Hasher for PairHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut h = FxHasher { hash: self.hash };
        h.write(bytes);
        self.hash = h.finish();
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.hash = (self.hash ^ i).wrapping_mul(K);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash ^ (self.hash >> 32)
    }
}

pub type PairMap<V> = HashMap<u64, V, BuildHasherDefault<PairHasher>>;
