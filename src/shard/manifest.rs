//! The manifest (`segments/MANIFEST`): the shard's identity and the list
//! of its live segments with what each file must contain, so that open
//! can tell a missing, cut or substituted file from a crash's leftovers.
//!
//! ```text
//! body  : [u32 format = 3][u128 shard id][u64 next segment id][u64 persisted]
//!         [u64 applied index][u32 fence count] fence* [u32 count] entry*
//! fence : [u32 bucket length][bucket][u64 highest accepted token]   (in bucket order)
//! entry : [u8 kind][u64 segment id][u64 size][u64 max version][u32 footer crc32]
//!         kind 1: an appendable segment (or one being sealed): .log + .state
//!         kind 2: an immutable segment: .sst of that size and footer + .del
//! ```
//! `persisted` is the version the WAL is acknowledged up to: every
//! operation at or below it is in the listed files, so a reopen never
//! reports a lower persisted version than the shard had (format 1, without
//! it, reads as 0). The applied index and the fences are the replicated
//! state (replicated.rs) as of `persisted`: the WAL records below it that
//! changed them may be gone (formats 1 and 2, without them, read as none).
//! framed like every small file (`files::seal_small`) and replaced whole
//! (temporary file, fsync, rename, directory fsync).
//!
//! Protocol (every order is crash-safe): new files are written durably
//! first, then the manifest naming them, then old files are removed.
//! `sync` rewrites it whenever the set in memory differs from the one on
//! disk: after a seal's table, after a merge, and before every WAL
//! acknowledgement (F5), so the WAL is never acked past data that only an
//! unlisted file holds. At open, a file the manifest does not list is one
//! of: a temporary file (removed); a file of a segment id at or past the
//! manifest's next id (created ahead of the manifest that would have
//! listed it: removed); the log or state of a segment listed as a table
//! (the seal finished: removed); a table of a segment listed as a log (the
//! seal's manifest never landed: removed); a segment a listed table
//! replaced (the merge finished: removed). Anything else is moved aside
//! into `segments/unlisted-<unix seconds>/` and reported.

use super::files::{self, Cursor};
use super::replicated::{Replicated, Tracker};
use super::segments::Segments;
use super::steps::{Step, Steps};
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub const NAME: &str = "MANIFEST";
const MAGIC: u64 = 0x314e_414d_4c45_454b; // "KEELMAN1"
const FORMAT: u32 = 3;
/// The first format, without the persisted version; still read.
const FORMAT_NO_PERSISTED: u32 = 1;
/// The second, without the replicated state; still read.
const FORMAT_NO_REPLICATED: u32 = 2;
const KIND_LOG: u8 = 1;
const KIND_TABLE: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listed {
    /// An appendable segment, or one sealed whose table is not written yet.
    Log { id: u64 },
    /// An immutable segment: its table's size and footer checksum, and the
    /// largest version it holds.
    Table { id: u64, size: u64, max_version: u64, footer_crc: u32 },
}

impl Listed {
    pub fn id(&self) -> u64 {
        match *self {
            Listed::Log { id } | Listed::Table { id, .. } => id,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The shard's identity, carried by every segment file.
    pub shard: u128,
    /// Every segment id below this has been handed out.
    pub next_id: u64,
    /// Every version at or below it is in the listed files (the WAL's
    /// acknowledgement); never lowered.
    pub persisted: u64,
    /// The replicated state as of `persisted`.
    pub replicated: Replicated,
    pub segments: Vec<Listed>,
}

/// A fresh shard identity: random enough that two shards never share one.
pub fn new_shard_id() -> u128 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    (a as u128) << 64 | h.finish() as u128
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(NAME)
}

impl Manifest {
    /// The manifest describing `segs` as they are in memory, with every
    /// version up to `persisted` in its files, and `replicated` as of it.
    pub fn of(segs: &Segments, persisted: u64, replicated: Replicated) -> Manifest {
        let mut segments: Vec<Listed> = segs
            .sealed
            .iter()
            .map(|s| match s.listable() {
                Some(t) => Listed::Table { id: s.id, size: t.size() as u64, max_version: t.max_version, footer_crc: t.footer_crc },
                None => Listed::Log { id: s.id },
            })
            .collect();
        segments.push(Listed::Log { id: segs.appendable.id });
        Manifest { shard: segs.shard, next_id: segs.next_id, persisted, replicated, segments }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(44 + self.segments.len() * 29);
        b.extend_from_slice(&FORMAT.to_le_bytes());
        b.extend_from_slice(&self.shard.to_le_bytes());
        b.extend_from_slice(&self.next_id.to_le_bytes());
        b.extend_from_slice(&self.persisted.to_le_bytes());
        self.replicated.encode_into(&mut b);
        b.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            let (kind, id, size, max_version, crc) = match *s {
                Listed::Log { id } => (KIND_LOG, id, 0, 0, 0),
                Listed::Table { id, size, max_version, footer_crc } => (KIND_TABLE, id, size, max_version, footer_crc),
            };
            b.push(kind);
            for v in [id, size, max_version] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&crc.to_le_bytes());
        }
        files::seal_small(MAGIC, &b)
    }

    fn decode(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let bad = |why: String| Error::corruption(format!("{}: {why}", path.display()));
        let mut c = Cursor { bytes: files::open_small(MAGIC, bytes, path)? };
        let format = c.u32()?;
        if ![FORMAT, FORMAT_NO_REPLICATED, FORMAT_NO_PERSISTED].contains(&format) {
            return Err(bad(format!("manifest format {format} is not supported")));
        }
        let shard = u128::from_le_bytes(c.take(16)?.try_into().unwrap());
        let next_id = c.u64()?;
        let persisted = if format == FORMAT_NO_PERSISTED { 0 } else { c.u64()? };
        let replicated = if format == FORMAT { Replicated::decode(&mut c)? } else { Replicated::default() };
        let count = c.u32()?;
        let mut segments = Vec::new();
        for _ in 0..count {
            let kind = c.u8()?;
            let (id, size, max_version, footer_crc) = (c.u64()?, c.u64()?, c.u64()?, c.u32()?);
            if id >= next_id {
                return Err(bad(format!("segment {id} is not below the next id {next_id}")));
            }
            segments.push(match kind {
                KIND_LOG => Listed::Log { id },
                KIND_TABLE => Listed::Table { id, size, max_version, footer_crc },
                k => return Err(bad(format!("segment entry of unknown kind {k}"))),
            });
        }
        if !c.bytes.is_empty() {
            return Err(bad("trailing bytes after the last segment".into()));
        }
        Ok(Manifest { shard, next_id, persisted, replicated, segments })
    }

    /// Reads the manifest of `dir`; None when there is none.
    pub fn read(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Manifest>> {
        let p = path(dir);
        files::read_small(fs, &p)?.map(|b| Manifest::decode(&b, &p)).transpose()
    }

    /// The version the manifest of shard folder `shard_dir` records as
    /// persisted (0 without a readable one): a WAL's open need not read
    /// the frames of segments that hold nothing newer (the shard's load
    /// proves the claim, or refuses to open it).
    pub fn persisted_of(fs: &dyn FileSystem, shard_dir: &Path) -> u64 {
        Manifest::read(fs, &shard_dir.join("segments")).ok().flatten().map_or(0, |m| m.persisted)
    }

    /// Replaces the manifest of `dir` with this one, durably.
    pub fn write(&self, fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        crate::fs::replace(fs, &path(dir), &self.encode())
    }
}

/// The manifest last written, shared by the flush job's steps.
pub struct Written {
    on_disk: parking_lot::Mutex<Manifest>,
    /// Its folder was synced since it was read or written, so the
    /// manifest is durable (false after a reopen that left the folder as
    /// found: `recovery::Loaded::synced`).
    durable: AtomicBool,
}

impl Written {
    pub fn new(on_disk: Manifest, durable: bool) -> Written {
        Written { on_disk: parking_lot::Mutex::new(on_disk), durable: AtomicBool::new(durable) }
    }

    pub fn is_durable(&self) -> bool {
        self.durable.load(Ordering::Acquire)
    }

    /// Syncs the folder unless the manifest is known durable: a process
    /// that died between its rename and the folder's sync left a manifest
    /// that a crash may still take back.
    pub fn make_durable(&self, fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        if !self.is_durable() {
            files::sync_dir(fs, dir)?;
            self.durable.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Writes the manifest of `segs`, with every version up to `persisted`
    /// in its files and the replicated state as of it, unless the one on
    /// disk already says the same. Call before removing a file it no
    /// longer lists, and before acknowledging the WAL (with the version to
    /// acknowledge).
    pub fn sync(
        &self,
        fs: &dyn FileSystem,
        dir: &Path,
        segs: &parking_lot::RwLock<Segments>,
        replicated: &parking_lot::Mutex<Tracker>,
        persisted: u64,
        steps: &Steps,
    ) -> Result<()> {
        let mut on_disk = self.on_disk.lock();
        let persisted = persisted.max(on_disk.persisted);
        let state = replicated.lock().at(persisted);
        let now = Manifest::of(&segs.read(), persisted, state);
        if now != *on_disk {
            steps.at(Step::Manifest);
            now.write(fs, dir)?;
            *on_disk = now;
            self.durable.store(true, Ordering::Release);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fences(all: &[(&[u8], u64)]) -> crate::lease::FenceCheck {
        let mut f = crate::lease::FenceCheck::default();
        for (b, t) in all {
            f.raise(b, *t);
        }
        f
    }

    #[test]
    fn manifests_round_trip_and_reject_damage() {
        let m = Manifest {
            shard: 0x1234_5678_9abc_def0_1122_3344_5566_7788,
            next_id: 9,
            persisted: 76,
            replicated: Replicated { applied_index: 41, fences: fences(&[(b"b", 7), (b"", 3)]) },
            segments: vec![Listed::Table { id: 3, size: 4096, max_version: 77, footer_crc: 5 }, Listed::Log { id: 8 }],
        };
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes, Path::new("m")).unwrap(), m);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(Manifest::decode(&b, Path::new("m")).is_err(), "flip at {i}");
        }
        assert_ne!(new_shard_id(), new_shard_id());
    }

    /// A manifest of an older `format` holding one log segment (id 2),
    /// with the persisted version when that format has one.
    fn older_manifest(format: u32, persisted: Option<u64>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&format.to_le_bytes());
        body.extend_from_slice(&7u128.to_le_bytes());
        body.extend_from_slice(&3u64.to_le_bytes());
        if let Some(p) = persisted {
            body.extend_from_slice(&p.to_le_bytes());
        }
        body.extend_from_slice(&1u32.to_le_bytes());
        body.push(KIND_LOG);
        for v in [2u64, 0, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&0u32.to_le_bytes());
        files::seal_small(MAGIC, &body)
    }

    #[test]
    fn a_first_format_manifest_reads_with_persisted_zero() {
        let m = Manifest { shard: 7, next_id: 3, persisted: 0, replicated: Replicated::default(), segments: vec![Listed::Log { id: 2 }] };
        assert_eq!(Manifest::decode(&older_manifest(FORMAT_NO_PERSISTED, None), Path::new("m")).unwrap(), m);
    }

    #[test]
    fn a_second_format_manifest_reads_with_no_replicated_state() {
        let m = Manifest { shard: 7, next_id: 3, persisted: 12, replicated: Replicated::default(), segments: vec![Listed::Log { id: 2 }] };
        assert_eq!(Manifest::decode(&older_manifest(FORMAT_NO_REPLICATED, Some(12)), Path::new("m")).unwrap(), m);
    }
}
