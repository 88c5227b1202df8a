//! Longest-prefix matcher over the USER_DEFINED pieces (SentencePiece's `PrefixMatcher`): a byte
//! trie with a 256-entry root table, so text whose first byte starts no user-defined piece is
//! rejected with one table lookup.

/// A word of at most 4 bytes (no NUL byte) as `(value, mask)` over a little-endian 4-byte
/// read ([`load4`]): the text starts with the word iff `load4(text) & mask == value`.
pub fn short_word(w: &[u8]) -> Option<(u32, u32)> {
    if w.is_empty() || w.len() > 4 || w.contains(&0) {
        return None;
    }
    let mut v = [0u8; 4];
    v[..w.len()].copy_from_slice(w);
    let mask = if w.len() == 4 {
        u32::MAX
    } else {
        (1u32 << (8 * w.len())) - 1
    };
    Some((u32::from_le_bytes(v), mask))
}

/// The first 4 bytes of `s`, little-endian, padded with NUL bytes (which no word holds).
#[inline]
pub fn load4(s: &[u8]) -> u32 {
    match s.get(..4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => load_short(s),
    }
}

#[cold]
#[inline(never)]
fn load_short(s: &[u8]) -> u32 {
    s.iter()
        .take(4)
        .rev()
        .fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
}

#[derive(Debug, Clone)]
struct Node {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    /// The value of the word ending here, or `NOT_A_WORD`.
    value: u32,
}

const NOT_A_WORD: u32 = u32::MAX;

impl Default for Node {
    fn default() -> Self {
        Node {
            children: Vec::new(),
            value: NOT_A_WORD,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PrefixMatcher {
    nodes: Vec<Node>,
    root: Box<[u32; 256]>,
}

impl PrefixMatcher {
    /// A matcher over `(word, value)` pairs (values below `u32::MAX`; a repeated word keeps the
    /// last value).
    pub fn new<'a>(words: impl IntoIterator<Item = (&'a [u8], u32)>) -> Self {
        let mut nodes = vec![Node::default()];
        for (w, value) in words {
            if w.is_empty() {
                continue;
            }
            let mut cur = 0usize;
            for &b in w {
                cur = match nodes[cur].children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => nodes[cur].children[i].1 as usize,
                    Err(i) => {
                        let id = nodes.len() as u32;
                        nodes.push(Node::default());
                        nodes[cur].children.insert(i, (b, id));
                        id as usize
                    }
                };
            }
            nodes[cur].value = value;
        }
        let mut root = Box::new([0u32; 256]);
        for &(b, id) in &nodes[0].children {
            root[b as usize] = id;
        }
        PrefixMatcher { nodes, root }
    }

    /// Whether some word starts with byte `b`.
    #[inline]
    pub fn may_start(&self, b: u8) -> bool {
        self.root[b as usize] != 0
    }

    /// Length of the longest word that is a prefix of `s`, if any.
    #[inline]
    pub fn longest(&self, s: &[u8]) -> Option<usize> {
        self.longest_value(s).map(|x| x.0)
    }

    /// The longest word that is a prefix of `s`, if any: its length and value.
    #[inline]
    pub fn longest_value(&self, s: &[u8]) -> Option<(usize, u32)> {
        let first = *s.first()?;
        let mut cur = self.root[first as usize] as usize;
        if cur == 0 {
            return None;
        }
        let mut best = None;
        let mut i = 1;
        loop {
            let node = &self.nodes[cur];
            if node.value != NOT_A_WORD {
                best = Some((i, node.value));
            }
            let Some(&b) = s.get(i) else { break };
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(k) => cur = node.children[k].1 as usize,
                Err(_) => break,
            }
            i += 1;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_match() {
        let m = PrefixMatcher::new([(&b"<br>"[..], 7), (b"<br/>", 8), (b"1", 9), (b"ab", 10)]);
        assert_eq!(m.longest(b"<br/>x"), Some(5));
        assert_eq!(m.longest(b"<br>"), Some(4));
        assert_eq!(m.longest(b"<b"), None);
        assert_eq!(m.longest(b"12"), Some(1));
        assert_eq!(m.longest_value(b"<br/>x"), Some((5, 8)));
        assert_eq!(m.longest(b""), None);
        assert!(!m.may_start(b'x'));
    }

    #[test]
    fn short_words() {
        let (v, m) = short_word(b"---").unwrap();
        assert_eq!(load4(b"----x") & m, v);
        assert_eq!(load4(b"---") & m, v);
        assert_ne!(load4(b"--") & m, v);
        assert_ne!(load4(b"-->-") & m, v);
        let (v, m) = short_word(b"abcd").unwrap();
        assert_eq!(load4(b"abcde") & m, v);
        assert_ne!(load4(b"abc") & m, v);
        assert!(short_word(b"abcde").is_none());
        assert!(short_word(b"a\0").is_none());
    }
}
