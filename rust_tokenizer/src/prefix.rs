//! Longest-prefix matcher over the USER_DEFINED pieces (SentencePiece's `PrefixMatcher`): a byte
//! trie with a 256-entry root table, so text whose first byte starts no user-defined piece is
//! rejected with one table lookup.

#[derive(Debug, Clone, Default)]
struct Node {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    terminal: bool,
}

#[derive(Debug, Clone)]
pub struct PrefixMatcher {
    nodes: Vec<Node>,
    root: Box<[u32; 256]>,
}

impl PrefixMatcher {
    pub fn new<'a>(words: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut nodes = vec![Node::default()];
        for w in words {
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
            nodes[cur].terminal = true;
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
        let first = *s.first()?;
        let mut cur = self.root[first as usize] as usize;
        if cur == 0 {
            return None;
        }
        let mut best = None;
        let mut i = 1;
        loop {
            let node = &self.nodes[cur];
            if node.terminal {
                best = Some(i);
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
        let m = PrefixMatcher::new([&b"<br>"[..], b"<br/>", b"1", b"ab"]);
        assert_eq!(m.longest(b"<br/>x"), Some(5));
        assert_eq!(m.longest(b"<br>"), Some(4));
        assert_eq!(m.longest(b"<b"), None);
        assert_eq!(m.longest(b"12"), Some(1));
        assert_eq!(m.longest(b""), None);
        assert!(!m.may_start(b'x'));
    }
}
