//! The key type of in-memory sorted maps: keys up to 23 bytes live inline
//! (no heap allocation, and a B-tree search compares bytes already in the
//! node instead of chasing a pointer per comparison, which dominated
//! replay and point lookups on large appendable segments). Longer keys
//! are boxed. It orders, hashes and borrows as `[u8]`, so maps are
//! searched with plain byte slices.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

const INLINE: usize = 23;

/// The first 16 bytes of `key`, zero-padded, as a big-endian number: a
/// sort or search key that decides most comparisons with one integer
/// compare. Different prefixes order their keys as the bytes do (where a
/// key runs out, padding compares like a shorter key); equal prefixes need
/// the whole keys.
pub fn prefix(key: &[u8]) -> u128 {
    let mut p = [0u8; 16];
    let n = key.len().min(16);
    p[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(p)
}

#[derive(Clone)]
pub enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Key {
    pub fn new(key: &[u8]) -> Key {
        if key.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline { len: key.len() as u8, bytes }
        } else {
            Key::Heap(key.into())
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Heap(b) => b,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl Hash for Key {
    /// As its bytes hash (`Borrow<[u8]>` requires it): hash maps keyed by
    /// `Key` are searched with byte slices too.
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_slice().hash(h)
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    /// Two inline keys are zero-padded past their length, so their first
    /// 16 bytes read as big-endian numbers order them as their bytes do
    /// wherever those differ (see `prefix`): one integer compare instead of
    /// a call to memcmp decides most comparisons of a B-tree search.
    fn cmp(&self, other: &Key) -> Ordering {
        if let (Key::Inline { bytes: a, .. }, Key::Inline { bytes: b, .. }) = (self, other) {
            let head = |k: &[u8; INLINE]| u128::from_be_bytes(k[..16].try_into().expect("INLINE >= 16"));
            match head(a).cmp(&head(b)) {
                Ordering::Equal => {}
                unequal => {
                    debug_assert_eq!(unequal, self.as_slice().cmp(other.as_slice()));
                    return unequal;
                }
            }
        }
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::Key;
    use std::collections::BTreeMap;

    #[test]
    fn orders_and_finds_like_byte_slices() {
        let keys: Vec<Vec<u8>> = vec![vec![], b"a".to_vec(), vec![b'a'; 23], vec![b'a'; 24], b"b".to_vec(), vec![0xff; 40]];
        let mut m = BTreeMap::new();
        for (i, k) in keys.iter().enumerate().rev() {
            m.insert(Key::new(k), i);
        }
        let order: Vec<usize> = m.values().copied().collect();
        assert_eq!(order, (0..keys.len()).collect::<Vec<_>>());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.get(k.as_slice()), Some(&i));
        }
        assert_eq!(m.get(&b"c"[..]), None);
    }

    #[test]
    fn inline_keys_compare_like_their_bytes_across_padding() {
        // Zero bytes inside a key against the padding of a shorter one,
        // and keys equal in their first 16 bytes.
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\x01".to_vec(),
            vec![7; 16],
            [vec![7; 16], vec![0]].concat(),
            [vec![7; 16], vec![1]].concat(),
            vec![7; 23],
            vec![7; 24],
            vec![0xff; 23],
        ];
        for a in &keys {
            for b in &keys {
                assert_eq!(Key::new(a).cmp(&Key::new(b)), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }
}
