//! The fenced lease table: TTL leases on named buckets, each grant
//! carrying a fencing token that is larger than every token granted
//! before it, in this process or an earlier one.
//!
//! Tokens survive restarts through a high-water mark file (`FENCE` in the
//! engine's directory): before a token is handed out, a bound above it is
//! durable (temporary file, fsync, rename, directory fsync). Bounds are
//! reserved a block at a time, so one acquire in `RESERVE_BLOCK` pays the
//! fsyncs; a restart skips what is left of the block. The first grant of
//! an open also starts at the wall clock in nanoseconds or above: a
//! `FENCE` deleted or put back from an older copy cannot make tokens go
//! back unless the clock went back as well (no open grants one token per
//! nanosecond). Leases themselves live only in memory: after a restart
//! every lease has expired.
//!
//! A holder's token and expiry are one value replaced under one lock, so
//! a release by an expired holder can never clear a newer holder's lease.
//! `check_fence` is the storage side: it rejects a token below the
//! highest it has accepted for the bucket, with no clock involved.

use super::clock::Clock;
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::status::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Tokens reserved per durable write of the high-water mark.
pub const RESERVE_BLOCK: u64 = 1024;

/// The wall clock in nanoseconds since 1970 (0 before it): the floor of an
/// open's first token. u64 nanoseconds last until the year 2554.
fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64)
}
const MAGIC: &[u8; 8] = b"KEELFNC1";
const FILE_LEN: usize = 20; // magic, u64 bound, crc32 of both

/// Rejects tokens below the highest accepted per bucket. Deterministic:
/// the same sequence of checks gives the same answers on every replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FenceCheck {
    highest: HashMap<Vec<u8>, u64>,
}

impl FenceCheck {
    /// Accepts `token` for `bucket` (and remembers it) unless a larger
    /// token was accepted before: then FENCED. An equal token passes (the
    /// same holder writing again).
    pub fn check(&mut self, bucket: &[u8], token: u64) -> Result<()> {
        check_against(self.highest(bucket), token)?;
        self.raise(bucket, token);
        Ok(())
    }

    pub fn highest(&self, bucket: &[u8]) -> Option<u64> {
        self.highest.get(bucket).copied()
    }

    /// Records `token` as accepted for `bucket` unless a larger one was:
    /// the highest only grows (replay merges tokens accepted earlier, in
    /// any order).
    pub fn raise(&mut self, bucket: &[u8], token: u64) {
        match self.highest.get_mut(bucket) {
            Some(h) => *h = (*h).max(token),
            None => {
                self.highest.insert(bucket.to_vec(), token);
            }
        }
    }

    /// Every bucket with its highest accepted token, in bucket order.
    pub fn sorted(&self) -> Vec<(&[u8], u64)> {
        let mut all: Vec<(&[u8], u64)> = self.highest.iter().map(|(b, &t)| (b.as_slice(), t)).collect();
        all.sort_unstable();
        all
    }
}

/// The fence rule alone: FENCED when `token` is below `highest`, the
/// highest token accepted so far for its bucket (None: no token yet).
pub fn check_against(highest: Option<u64>, token: u64) -> Result<()> {
    match highest {
        Some(h) if token < h => Err(Error::new(
            KEEL_STATUS_FENCED,
            format!("fencing token {token} is below {h}, the highest accepted for this bucket"),
        )),
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, Debug)]
struct Holder {
    token: u64,
    expires_at: u64,
}

struct Tokens {
    /// Next token to grant; 0 until the high-water mark has been read.
    next: u64,
    /// Every token below this bound is durably reserved.
    reserved: u64,
}

struct Table {
    tokens: Tokens,
    holders: HashMap<Vec<u8>, Holder>,
    check: FenceCheck,
}

pub struct FenceTable {
    path: PathBuf,
    fs: Arc<dyn FileSystem>,
    clock: Clock,
    table: Mutex<Table>,
}

impl FenceTable {
    /// A table whose high-water mark lives at `path` (read on the first
    /// acquire, so opening costs no I/O). Expiries use `clock`.
    pub fn new(path: PathBuf, fs: Arc<dyn FileSystem>, clock: Clock) -> FenceTable {
        FenceTable {
            path,
            fs,
            clock,
            table: Mutex::new(Table {
                tokens: Tokens { next: 0, reserved: 0 },
                holders: HashMap::new(),
                check: FenceCheck::default(),
            }),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn now(&self) -> Result<u64> {
        self.clock.now().ok_or_else(|| Error::new(KEEL_STATUS_IO, "the clock reads no time (failed or unset); refusing to grant a lease"))
    }

    /// Grants `bucket` for `ttl` and returns its fencing token; BUSY while
    /// another holder's lease is unexpired. INVALID_ARGUMENT for a zero or
    /// overflowing TTL; IO/NO_SPACE when the high-water mark cannot be
    /// made durable (no token is granted then); CORRUPTION when the
    /// high-water mark file is damaged.
    pub fn try_acquire(&self, bucket: &[u8], ttl: Duration) -> Result<u64> {
        let ttl = u64::try_from(ttl.as_nanos()).ok().filter(|&t| t != 0).ok_or_else(|| Error::invalid("the TTL must be above zero and fit 64-bit nanoseconds"))?;
        let now = self.now()?;
        let expires_at = now.checked_add(ttl).ok_or_else(|| Error::invalid("the TTL overflows the clock"))?;
        let mut t = self.table.lock();
        if let Some(h) = t.holders.get(bucket) {
            if now < h.expires_at {
                return Err(Error::new(
                    KEEL_STATUS_BUSY,
                    format!("the bucket is held (token {}) for {} ns more", h.token, h.expires_at - now),
                ));
            }
        }
        let token = self.next_token(&mut t.tokens)?;
        t.holders.insert(bucket.to_vec(), Holder { token, expires_at });
        Ok(token)
    }

    /// Whether `token` holds `bucket` now (false too when the clock fails).
    pub fn validate(&self, bucket: &[u8], token: u64) -> bool {
        let Some(now) = self.clock.now() else { return false };
        self.table.lock().holders.get(bucket).is_some_and(|h| h.token == token && now < h.expires_at)
    }

    /// Releases `bucket` if `token` holds it and has not expired; returns
    /// whether it did. An expired or superseded holder changes nothing.
    pub fn release(&self, bucket: &[u8], token: u64) -> bool {
        let Some(now) = self.clock.now() else { return false };
        let mut t = self.table.lock();
        let held = t.holders.get(bucket).is_some_and(|h| h.token == token && now < h.expires_at);
        if held {
            t.holders.remove(bucket);
        }
        held
    }

    /// The storage-side fence: FENCED when `token` is below the highest
    /// token accepted for `bucket`, which otherwise becomes `token`.
    pub fn check_fence(&self, bucket: &[u8], token: u64) -> Result<()> {
        self.table.lock().check.check(bucket, token)
    }

    fn next_token(&self, tokens: &mut Tokens) -> Result<u64> {
        if tokens.next == 0 {
            let mark = self.read_mark()?;
            *tokens = Tokens { next: mark.max(wall_clock_ns()).max(1), reserved: mark };
        }
        if tokens.next >= tokens.reserved {
            let bound = tokens.next.checked_add(RESERVE_BLOCK).ok_or_else(|| Error::invalid("fencing tokens are exhausted"))?;
            self.write_mark(bound)?;
            tokens.reserved = bound;
        }
        let token = tokens.next;
        tokens.next += 1;
        Ok(token)
    }

    /// The durable bound: every token below it may have been granted.
    /// A missing file reads as 0 (an engine that never granted one looks
    /// the same): the wall-clock floor of `next_token` covers that case.
    fn read_mark(&self) -> Result<u64> {
        let f = match self.fs.open(&self.path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(format!("opening {}", self.path.display()), e)),
        };
        let mut buf = [0u8; FILE_LEN + 1];
        let len = f.read_up_to(&mut buf, 0).map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        let bad = || Error::corruption(format!("{}: damaged fencing high-water mark; tokens cannot be kept monotonic", self.path.display()));
        if len != FILE_LEN || &buf[..8] != MAGIC {
            return Err(bad());
        }
        let crc = u32::from_le_bytes(buf[16..20].try_into().unwrap());
        if crc32fast::hash(&buf[..16]) != crc {
            return Err(bad());
        }
        Ok(u64::from_le_bytes(buf[8..16].try_into().unwrap()))
    }

    /// Replaces the high-water mark atomically and durably.
    fn write_mark(&self, bound: u64) -> Result<()> {
        let mut bytes = [0u8; FILE_LEN];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..16].copy_from_slice(&bound.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..16]);
        bytes[16..20].copy_from_slice(&crc.to_le_bytes());
        crate::fs::replace(&*self.fs, &self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;
    use crate::test_dir::TestDir;
    use std::path::Path;

    fn table(dir: &Path, now: u64) -> FenceTable {
        FenceTable::new(dir.join("FENCE"), Arc::new(StdFs::direct()), Clock::manual(now))
    }

    const SEC: Duration = Duration::from_secs(1);
    const NS: u64 = 1_000_000_000;

    #[test]
    fn acquire_busy_validate_release_and_expiry() {
        let dir = TestDir::new("fence-basic");
        let t = table(&dir, 1000);
        let a = t.try_acquire(b"b", SEC).unwrap();
        assert_eq!(t.try_acquire(b"b", SEC).unwrap_err().status, KEEL_STATUS_BUSY);
        assert!(t.validate(b"b", a));
        assert!(!t.validate(b"b", a + 1));
        assert!(!t.release(b"b", a + 1), "a non-matching token clears nothing");
        assert!(t.validate(b"b", a));
        // Expiry is exclusive: at expires_at the lease is gone.
        t.clock().set(1000 + NS).unwrap();
        assert!(!t.validate(b"b", a));
        let b = t.try_acquire(b"b", SEC).unwrap();
        assert!(b > a);
        // The expired holder's release never clears the newer holder.
        assert!(!t.release(b"b", a));
        assert!(t.validate(b"b", b));
        assert!(t.release(b"b", b));
        assert!(!t.validate(b"b", b));
        let c = t.try_acquire(b"b", SEC).unwrap();
        assert!(c > b);
    }

    #[test]
    fn a_failing_clock_grants_and_validates_nothing() {
        let dir = TestDir::new("fence-clock");
        let t = table(&dir, 1000);
        let a = t.try_acquire(b"b", SEC).unwrap();
        t.clock().set(0).unwrap();
        assert!(!t.validate(b"b", a));
        assert!(!t.release(b"b", a));
        assert_eq!(t.try_acquire(b"c", SEC).unwrap_err().status, KEEL_STATUS_IO);
        t.clock().set(1000).unwrap();
        assert_eq!(t.try_acquire(b"c", Duration::ZERO).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
        t.clock().set(u64::MAX - 1).unwrap();
        assert_eq!(t.try_acquire(b"c", SEC).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    }

    #[test]
    fn tokens_grow_across_restarts_and_leases_do_not_survive_them() {
        let dir = TestDir::new("fence-restart");
        let mut last = 0;
        for round in 0..3 {
            let t = table(&dir, 1000);
            // Every lease of the previous incarnation has expired.
            let first = t.try_acquire(b"b", SEC).unwrap();
            assert!(first > last, "round {round}: {first} after {last}");
            assert!(t.release(b"b", first));
            for _ in 0..(RESERVE_BLOCK + 5) {
                let tok = t.try_acquire(b"b", SEC).unwrap();
                assert!(tok > last);
                last = tok;
                assert!(t.release(b"b", tok));
            }
        }
    }

    #[test]
    fn a_lost_or_older_high_water_mark_never_lets_tokens_go_back() {
        let dir = TestDir::new("fence-lost");
        let path = dir.join("FENCE");
        let t = table(&dir, 1000);
        let first = t.try_acquire(b"b", SEC).unwrap();
        assert!(t.release(b"b", first));
        let older = std::fs::read(&path).unwrap();
        let mut last = first;
        for _ in 0..(RESERVE_BLOCK + 5) {
            last = t.try_acquire(b"b", SEC).unwrap();
            assert!(t.release(b"b", last));
        }
        drop(t);
        // Put back from an older copy: it bounds fewer tokens than were granted.
        std::fs::write(&path, &older).unwrap();
        let t = table(&dir, 1000);
        let after = t.try_acquire(b"b", SEC).unwrap();
        assert!(after > last, "{after} after {last} with an older FENCE");
        assert!(t.release(b"b", after));
        drop(t);
        // Deleted.
        std::fs::remove_file(&path).unwrap();
        let again = table(&dir, 1000).try_acquire(b"b", SEC).unwrap();
        assert!(again > after, "{again} after {after} with FENCE deleted");
    }

    #[test]
    fn a_damaged_high_water_mark_is_refused_not_reset() {
        let dir = TestDir::new("fence-damaged");
        table(&dir, 1000).try_acquire(b"b", SEC).unwrap();
        let path = dir.join("FENCE");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(table(&dir, 1000).try_acquire(b"b", SEC).unwrap_err().status, KEEL_STATUS_CORRUPTION);
    }

    #[test]
    fn the_fence_check_rejects_tokens_below_the_highest_accepted() {
        let mut f = FenceCheck::default();
        f.check(b"x", 5).unwrap();
        f.check(b"x", 5).unwrap();
        assert_eq!(f.check(b"x", 4).unwrap_err().status, KEEL_STATUS_FENCED);
        f.check(b"y", 1).unwrap();
        f.check(b"x", 9).unwrap();
        assert_eq!(f.check(b"x", 5).unwrap_err().status, KEEL_STATUS_FENCED);
        assert_eq!(f.highest(b"x"), Some(9));
    }
}
