//! Opening an existing log: scan every segment (`scan.rs`, shared with
//! `keel-wal verify`), then apply the recovery mode to the first damage
//! (W5). The outcome table is in docs/WAL.md.

use crate::fs::{File, FileSystem};
use super::scan::{find_damage, scan_segment, Damage, SegmentFile, SegmentScan};
use super::segment::{self, Active, SegmentMeta};
use super::RecoveryMode;
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// What recovery leaves behind: the retained segments in order, the last
/// one opened for appends (None when the log has no segment yet), and the
/// sequence number the next append gets.
pub struct Recovered {
    pub segments: Vec<SegmentMeta>,
    pub active: Option<Active>,
    pub next_seq: u64,
}

pub fn read_all(file: &dyn File) -> std::io::Result<Vec<u8>> {
    let len = file.len()? as usize;
    let mut buf = vec![0u8; len];
    let mut at = 0;
    while at < len {
        let n = file.read_at(&mut buf[at..], at as u64)?;
        if n == 0 {
            buf.truncate(at);
            break;
        }
        at += n;
    }
    Ok(buf)
}

fn read_and_scan(fs: &dyn FileSystem, name: String, path: std::path::PathBuf, first_seq: u64) -> Result<SegmentScan> {
    // Mapped when the file system can (no copy, no fresh zeroed buffer per
    // segment); read into memory otherwise.
    let mapped = fs.map_readonly(&path).map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
    let owned;
    let bytes: &[u8] = match &mapped {
        Some(m) => m.bytes(),
        None => {
            let file = fs.open(&path, false).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            owned = read_all(&*file).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            &owned
        }
    };
    let seg = SegmentFile { name, path, first_seq, size: bytes.len() as u64 };
    Ok(scan_segment(seg, bytes, |_, _| Ok::<(), std::convert::Infallible>(())).unwrap_or_else(|never| match never {}))
}

fn describe(d: &Damage, scans: &[SegmentScan]) -> String {
    format!(
        "WAL damage in segment {} at offset {} (sequence {}): {}{}",
        scans[d.seg].file.path.display(),
        d.offset,
        d.seq,
        d.reason,
        if d.proof.is_some() { "; valid records written after it was durable follow the damage" } else { "" }
    )
}

/// Scans the log in `dir` and repairs it as `mode` allows.
pub fn recover(fs: &dyn FileSystem, dir: &Path, mode: RecoveryMode, segment_size: u64) -> Result<Recovered> {
    let names = fs.list(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut removed_temp = false;
    let mut found = Vec::new();
    for name in names {
        if name.ends_with(segment::TEMP_SUFFIX) {
            // A segment that never finished W8 holds no acknowledged record.
            fs.remove(&dir.join(&name)).map_err(|e| Error::io(format!("removing stray {name}"), e))?;
            removed_temp = true;
        } else if let Some(first_seq) = segment::parse_name(&name) {
            found.push((first_seq, name));
        }
    }
    if removed_temp {
        fs.sync_dir(dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
    }
    found.sort();
    let scans = found
        .into_iter()
        .map(|(first_seq, name)| read_and_scan(fs, name.clone(), dir.join(&name), first_seq))
        .collect::<Result<Vec<_>>>()?;

    // How many segments stay, and where the last one's valid data ends.
    let mut keep = scans.len();
    let mut cut: Option<(usize, u64)> = None;
    if let Some(d) = find_damage(&scans) {
        // Damage that no later frame vouches for is the unsynced tail a
        // crash leaves (writeback reaches the disk in any order, so valid
        // frames may follow it, and in NONE/PERIODIC mode a full segment
        // may be unsynced when the next one starts); nothing there was ever
        // part of D. A bad segment header is never a tail: headers are
        // synced before a segment is used (W8).
        if !d.opens(mode) {
            return Err(Error::corruption(format!("{} (recovery mode {:?})", describe(&d, &scans), mode)));
        }
        if d.sets_aside(scans.len()) {
            set_aside(fs, dir, &scans, &d)?;
        }
        keep = d.kept_segments();
        if d.in_frames && !d.bad_header {
            cut = Some((d.seg, d.offset));
        }
    }

    let next_seq = match keep {
        0 => scans.first().map_or(1, |s| s.file.first_seq.max(1)),
        k => scans[k - 1].next_seq,
    };
    let active = match keep {
        0 => None,
        k => Some(open_active(fs, &scans[k - 1], cut.filter(|(s, _)| *s == k - 1).map(|(_, o)| o), segment_size)?),
    };
    let segments = scans
        .into_iter()
        .take(keep)
        .map(|s| SegmentMeta { first_seq: s.file.first_seq, path: s.file.path })
        .collect();
    Ok(Recovered { segments, active, next_seq })
}

/// Moves the segments that recovery gives up into `<dir>/salvaged-<ns>/`
/// (never deleting data): segments after the damage are moved, a damaged
/// segment whose prefix stays in the log is copied first.
fn set_aside(fs: &dyn FileSystem, dir: &Path, scans: &[SegmentScan], d: &Damage) -> Result<()> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let aside = dir.join(format!("salvaged-{stamp}"));
    let io = |what: &str, e| Error::io(format!("{what} while setting damaged WAL segments aside in {}", aside.display()), e);
    fs.create_dir_all(&aside).map_err(|e| io("creating the folder", e))?;
    let damaged = &scans[d.seg];
    if !d.bad_header && d.in_frames {
        let name = damaged.file.path.file_name().unwrap();
        let src = fs.open(&damaged.file.path, false).map_err(|e| io("opening", e))?;
        let bytes = read_all(&*src).map_err(|e| io("reading", e))?;
        let copy = fs.create(&aside.join(name)).map_err(|e| io("creating a copy", e))?;
        copy.write_at(&[&bytes], 0).map_err(|e| io("copying", e))?;
        copy.sync_data().map_err(|e| io("syncing a copy", e))?;
    }
    for s in &scans[d.kept_segments()..] {
        let name = s.file.path.file_name().unwrap();
        fs.rename(&s.file.path, &aside.join(name)).map_err(|e| io("moving", e))?;
    }
    fs.sync_dir(&aside).map_err(|e| io("syncing", e))?;
    fs.sync_dir(dir).map_err(|e| io("syncing", e))?;
    Ok(())
}

/// Opens the last retained segment for appends at the end of its valid
/// data; with `cut`, zeroes everything after that offset first and syncs.
fn open_active(fs: &dyn FileSystem, scan: &SegmentScan, cut: Option<u64>, segment_size: u64) -> Result<Active> {
    let path = &scan.file.path;
    let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
    let file: Arc<dyn File> = fs.open(path, true).map_err(|e| io("opening", e))?;
    let header = scan.header.as_ref().expect("a kept segment has a valid header");
    let len = file.len().map_err(|e| io("reading the size of", e))?;
    if let Some(offset) = cut {
        let zeros = vec![0u8; 1 << 20];
        let mut at = offset;
        while at < len {
            let n = ((len - at) as usize).min(zeros.len());
            file.write_at(&[&zeros[..n]], at).map_err(|e| io("zeroing the torn tail of", e))?;
            at += n as u64;
        }
    }
    // Records recovered from the page cache (a process crash in NONE or
    // PERIODIC mode) become durable before D claims them.
    file.sync_data().map_err(|e| io("syncing", e))?;
    let capacity = len.max(segment_size);
    file.allocate(capacity).map_err(|e| io("allocating", e))?;
    Ok(Active { file, salt: header.salt, offset: scan.end, capacity })
}
