//! File names inside `shards/<id>/segments/` and the other file helpers
//! (small state files are replaced by `crate::fs::replace`). All segment I/O goes through the WAL's
//! `FileSystem`, so tests inject the same faults into segments as into
//! the log.

use crate::error::{Error, Result};
use crate::fs::{File, FileSystem, TMP_SUFFIX};
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;

pub use crate::codec::{put_bytes, Cursor};

/// The appendable segment's data log.
pub const LOG: &str = "log";
/// The appendable segment's state: persisted version and durable log length.
pub const STATE: &str = "state";
/// An immutable segment: sorted, checksummed table.
pub const TABLE: &str = "sst";
/// An immutable segment's deletion side-car.
pub const DELETIONS: &str = "del";
/// Prefix of the folders unlisted files are moved aside into at open.
pub const UNLISTED_PREFIX: &str = "unlisted-";

/// Who a segment file belongs to: the shard (a random id drawn when the
/// shard's manifest is first written) and the segment. Every segment file
/// carries it (table footer, state and side-car bodies), so a file copied
/// in from another shard or renamed to another segment's name is caught
/// at open without reading its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ident {
    pub shard: u128,
    pub segment: u64,
}

impl Ident {
    pub const LEN: usize = 24;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&self.segment.to_le_bytes());
    }

    pub fn decode(c: &mut Cursor) -> Result<Ident> {
        let shard = u128::from_le_bytes(c.take(16)?.try_into().unwrap());
        Ok(Ident { shard, segment: c.u64()? })
    }

    /// CORRUPTION naming `path` unless `found` is this identity.
    pub fn check(&self, found: Ident, path: &Path) -> Result<()> {
        if found == *self {
            return Ok(());
        }
        let whose = if found.shard == self.shard { "this shard's" } else { "another shard's" };
        Err(Error::corruption(format!(
            "{}: belongs to {whose} segment {} (shard {:032x}), not segment {} of shard {:032x}: a substituted or renamed file",
            path.display(),
            found.segment,
            found.shard,
            self.segment,
            self.shard
        )))
    }
}

pub fn name(id: u64, ext: &str) -> String {
    format!("seg-{id:016}.{ext}")
}

/// Parses `seg-<id>.<ext>`; temporary files and strangers give `None`.
pub fn parse(name: &str) -> Option<(u64, &str)> {
    let rest = name.strip_prefix("seg-")?;
    let (id, ext) = rest.split_once('.')?;
    if id.len() != 16 || ext.contains('.') {
        return None;
    }
    Some((id.parse().ok()?, ext))
}

pub fn is_temporary(name: &str) -> bool {
    name.ends_with(TMP_SUFFIX)
}


pub fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    fs.sync_dir(dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

/// An error reading `path` (`what` it was doing): CORRUPTION when it is a
/// folder or another non-file where a file is listed (damage, like a
/// missing file: a salvage open leaves it out), IO otherwise.
pub fn read_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EISDIR) | Some(libc::ENODEV) => Error::corruption(format!("{}: not a regular file", path.display())),
        _ => Error::io(format!("{what} {}", path.display()), e),
    }
}

/// The whole content of `path`, or None when it does not exist; a file
/// longer than `max` bytes is CORRUPTION, found before anything is
/// allocated (a damaged length, a sparse file of terabytes, must not be
/// an allocation that aborts the process).
pub fn read_all(fs: &dyn FileSystem, path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let Some((f, len)) = open_existing(fs, path)? else { return Ok(None) };
    if len > max {
        return Err(Error::corruption(format!("{}: {len} bytes, more than such a file ever holds ({max})", path.display())));
    }
    read_whole(&*f, path, len).map(Some)
}

/// `read_all` of a small file (`seal_small`): its length is checked
/// against its frame's before the body is read.
pub fn read_small(fs: &dyn FileSystem, path: &Path) -> Result<Option<Vec<u8>>> {
    let Some((f, len)) = open_existing(fs, path)? else { return Ok(None) };
    let mut head = [0u8; SMALL_HEADER];
    let got = f.read_up_to(&mut head, 0).map_err(|e| read_error("reading", path, e))?;
    let framed = SMALL_HEADER as u64 + u64::from(u32::from_le_bytes(head[8..12].try_into().unwrap()));
    if got < SMALL_HEADER || len != framed {
        return Err(Error::corruption(format!("{}: {len} bytes where its frame says {framed}: cut short or damaged", path.display())));
    }
    read_whole(&*f, path, len).map(Some)
}

/// `path` opened for reading with its length, or None when it does not exist.
fn open_existing(fs: &dyn FileSystem, path: &Path) -> Result<Option<(Arc<dyn File>, u64)>> {
    let f = match fs.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let len = f.len().map_err(|e| read_error("reading", path, e))?;
    Ok(Some((f, len)))
}

/// The first `len` bytes of `f`, the file at `path`.
fn read_whole(f: &dyn File, path: &Path, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    read_exact(f, &mut buf, 0).map_err(|e| read_error("reading", path, e))?;
    Ok(buf)
}

pub fn read_exact(f: &dyn File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    match f.read_up_to(buf, off)? {
        n if n == buf.len() => Ok(()),
        _ => Err(ErrorKind::UnexpectedEof.into()),
    }
}

/// A name for a folder of files moved aside that no entry of `dir` has:
/// `unlisted-<unix seconds>`, or with `-2`, `-3`... after it when an
/// earlier open in the same second took that.
pub fn unused_aside_folder(fs: &dyn FileSystem, dir: &Path) -> Result<String> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut n = 1u64;
    loop {
        let name = match n {
            1 => format!("{UNLISTED_PREFIX}{secs}"),
            n => format!("{UNLISTED_PREFIX}{secs}-{n}"),
        };
        let path = dir.join(&name);
        if !fs.exists(&path).map_err(|e| Error::io(format!("looking for {}", path.display()), e))? {
            return Ok(name);
        }
        n += 1;
    }
}

/// Moves `name` out of `dir` into `dir/<folder>/` (created if needed),
/// durably: files keel does not know are kept for the operator, never
/// deleted.
pub fn move_aside(fs: &dyn FileSystem, dir: &Path, folder: &str, name: &str) -> Result<()> {
    let to = dir.join(folder);
    fs.create_dir_all(&to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
    let from = dir.join(name);
    fs.rename(&from, &to.join(name)).map_err(|e| Error::io(format!("moving {} into {}", from.display(), to.display()), e))?;
    sync_dir(fs, &to)?;
    sync_dir(fs, dir)
}

/// Removes `path`; a file already gone is fine.
pub fn remove(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    remove_result(fs.remove(path), path)
}

/// The outcome of removing `path`, as `remove` reports it.
pub fn remove_result(r: std::io::Result<()>, path: &Path) -> Result<()> {
    match r {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io(format!("removing {}", path.display()), e)),
        _ => Ok(()),
    }
}

/// The frame of a small file before its body (`seal_small`).
const SMALL_HEADER: usize = 16;

/// Frames a small file: `[magic u64][len u32][crc u32][body]`.
pub fn seal_small(magic: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SMALL_HEADER + body.len());
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks a file framed by `seal_small` and returns its body.
pub fn open_small<'a>(magic: u64, bytes: &'a [u8], path: &Path) -> Result<&'a [u8]> {
    let bad = |why: &str| Error::corruption(format!("{}: {why}", path.display()));
    if bytes.len() < 16 || u64::from_le_bytes(bytes[..8].try_into().unwrap()) != magic {
        return Err(bad("bad magic or cut short"));
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let body = bytes.get(16..16 + len).ok_or_else(|| bad("cut short"))?;
    if bytes.len() != 16 + len || crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        assert_eq!(parse(&name(42, TABLE)), Some((42, TABLE)));
        assert_eq!(parse("seg-0000000000000001.sst.tmp"), None);
        assert_eq!(parse("LOCK"), None);
        assert!(is_temporary("seg-0000000000000001.sst.tmp"));
    }

    #[test]
    fn small_files_reject_damage() {
        let f = seal_small(7, b"hello");
        assert_eq!(open_small(7, &f, Path::new("x")).unwrap(), b"hello");
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 1;
            assert!(open_small(7, &g, Path::new("x")).is_err(), "flip at {i}");
        }
        assert!(open_small(7, &f[..f.len() - 1], Path::new("x")).is_err());
    }
}
