//! The per-segment filter: a Bloom filter over the keys of an immutable
//! segment, so a lookup skips segments that cannot hold the key without
//! touching their index or blocks. 16 bits per key, 7 probes: about 0.07 %
//! false positives (10 bits gave 0.8 %). The extra 0.75 byte a key pays
//! for itself: a false positive costs a put a deletion mark kept in the
//! table's side-car (twelve times fewer side-car entries), and a replay or
//! a read of an absent key a search of a table block, which on a cold
//! page cache is a read from the device. A reader takes the size from the
//! filter's length, so tables written with 10 bits stay readable. The
//! hash is defined here (not std's, which may change between Rust
//! releases) because the bits are stored on disk.

const BITS_PER_KEY: usize = 16;
const PROBES: u32 = 7;

/// A stable 64-bit hash (multiply-xorshift over 8-byte words, splitmix64
/// finaliser). Stored on disk: never change it without a format version.
pub fn hash64(data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (data.len() as u64).wrapping_mul(K);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap());
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // splitmix64 finaliser
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

fn probes(hash: u64, nbits: u64) -> impl Iterator<Item = u64> {
    let h1 = hash;
    let h2 = hash.rotate_left(32) | 1;
    (0..PROBES as u64).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % nbits)
}

/// A key with its hash, computed once per lookup however many segments'
/// filters it meets.
#[derive(Clone, Copy)]
pub struct Probe<'a> {
    pub key: &'a [u8],
    pub hash: u64,
}

impl<'a> Probe<'a> {
    pub fn new(key: &'a [u8]) -> Probe<'a> {
        Probe { key, hash: hash64(key) }
    }
}

/// Builds the filter bytes for `hashes` (one per key).
pub fn build(hashes: &[u64]) -> Vec<u8> {
    // A whole number of bytes, so the reader derives the size from the length.
    let nbytes = (hashes.len() * BITS_PER_KEY).max(64).div_ceil(8);
    let nbits = nbytes as u64 * 8;
    let mut bits = vec![0u8; nbytes];
    for &h in hashes {
        for bit in probes(h, nbits) {
            bits[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    bits
}

/// Probes whose cache lines `prefetch` asks for: the first two decide
/// about three in four lookups of a key the filter does not hold (each bit
/// is set with a probability near one half).
const PREFETCHED: u64 = 2;

/// A hint that `may_contain(bits, hash)` will run soon: asks for the cache
/// lines of its first probes, so a writer checking the filters of several
/// segments waits for their misses once, together, instead of one after
/// another. Changes no result.
pub fn prefetch(bits: &[u8], hash: u64) {
    let nbits = bits.len() as u64 * 8;
    if nbits == 0 {
        return;
    }
    for bit in probes(hash, nbits).take(PREFETCHED as usize) {
        let at = (bit / 8) as usize;
        super::prefetch::prefetch(&bits[at..=at]);
    }
}

/// False means the key is certainly absent.
pub fn may_contain(bits: &[u8], hash: u64) -> bool {
    let nbits = bits.len() as u64 * 8;
    if nbits == 0 {
        return true;
    }
    probes(hash, nbits).all(|bit| bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let keys: Vec<Vec<u8>> = (0..10_000u32).map(|i| format!("key-{i}").into_bytes()).collect();
        let bits = build(&keys.iter().map(|k| hash64(k)).collect::<Vec<_>>());
        assert!(keys.iter().all(|k| may_contain(&bits, hash64(k))));
        let fp = (0..10_000u32).filter(|i| may_contain(&bits, hash64(format!("other-{i}").as_bytes()))).count();
        // ~16 bits a key and 7 probes: about 7 in 10,000.
        assert!(fp < 30, "{fp} false positives in 10000");
    }
}
