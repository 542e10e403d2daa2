//! A small deterministic mutation engine for the stable runner
//! (`tests/smoke.rs`): seeded, no coverage feedback. It knows the WAL's
//! shape only as far as "integers are little-endian u32/u64 at aligned
//! offsets", which is what reaches the length, count and sequence fields.

/// xorshift64*: fast and reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING_U32: [u32; 12] = [0, 1, 2, 3, 4, 7, 8, 31, 32, 0x7fff_ffff, 0xffff_fff8, 0xffff_ffff];
const INTERESTING_U64: [u64; 9] = [0, 1, 2, 3, 0x7fff_ffff_ffff_ffff, u64::MAX - 8, u64::MAX - 2, u64::MAX - 1, u64::MAX];

/// Applies 1 to 4 random mutations to `data` (its first byte is the
/// flags byte of every target, toggled now and then); `pool` supplies
/// splice material. Keeps `data` at most `max_len` long.
pub fn mutate(data: &mut Vec<u8>, rng: &mut Rng, pool: &[Vec<u8>], max_len: usize) {
    for _ in 0..1 + rng.below(4) {
        mutate_once(data, rng, pool);
    }
    data.truncate(max_len);
}

fn mutate_once(data: &mut Vec<u8>, rng: &mut Rng, pool: &[Vec<u8>]) {
    if data.is_empty() {
        data.push(rng.next() as u8);
        return;
    }
    let n = data.len();
    match rng.below(12) {
        0 => {
            let bit = rng.below(n * 8);
            data[bit / 8] ^= 1 << (bit % 8);
        }
        1 => {
            let at = rng.below(n);
            data[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
        }
        2 => {
            let at = rng.below(n + 1);
            let k = 1 + rng.below(8);
            let fill: Vec<u8> = (0..k).map(|_| rng.next() as u8).collect();
            data.splice(at..at, fill);
        }
        3 => {
            let at = rng.below(n);
            let k = 1 + rng.below((n - at).min(64));
            data.drain(at..at + k);
        }
        4 => {
            // Copy a range over another place (duplicates frames and headers).
            let from = rng.below(n);
            let k = 1 + rng.below((n - from).min(128));
            let chunk = data[from..from + k].to_vec();
            let to = rng.below(n + 1);
            if rng.below(2) == 0 {
                data.splice(to..to, chunk);
            } else {
                let end = (to + k).min(n);
                data.splice(to..end, chunk);
            }
        }
        5 => {
            if let Some(other) = pool.get(rng.below(pool.len().max(1))) {
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let k = 1 + rng.below(other.len() - from);
                    let at = rng.below(n + 1);
                    let end = if rng.below(2) == 0 { at } else { n };
                    data.splice(at..end, other[from..from + k].iter().copied());
                }
            }
        }
        6 | 7 => {
            if n >= 4 {
                // Little-endian u32 at an offset 1 + 4k or 4k (the targets
                // carry a flags byte before the on-disk bytes).
                let at = (rng.below(n / 4) * 4 + rng.below(2)).min(n - 4);
                let v = match rng.below(3) {
                    0 => INTERESTING_U32[rng.below(INTERESTING_U32.len())],
                    1 => (n as u32).wrapping_add(rng.below(17) as u32).wrapping_sub(8),
                    _ => {
                        let old = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                        old.wrapping_add(rng.below(9) as u32).wrapping_sub(4)
                    }
                };
                data[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        8 | 9 => {
            if n >= 8 {
                let at = (rng.below(n / 8) * 8 + rng.below(2)).min(n - 8);
                let old = u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
                let v = match rng.below(3) {
                    0 => INTERESTING_U64[rng.below(INTERESTING_U64.len())],
                    1 => old.wrapping_add(rng.below(5) as u64).wrapping_sub(2),
                    _ => old >> (1 + rng.below(63)),
                };
                data[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        10 => data.truncate(rng.below(n + 1)),
        _ => data[0] ^= 1 << rng.below(8),
    }
}
