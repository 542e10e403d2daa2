//! Opening a shard after any crash (F6): `scan` checks and loads the
//! files the manifest lists, writing nothing (it runs beside the WAL's
//! open); `load` then finishes or undoes what a seal or a merge left
//! half-done and drops what was never made durable; `replay_wal` replays
//! the WAL through the version gate (`Segments::replay` applies one
//! operation).

use super::appendable::Appendable;
use super::arena::{Kept, Slice};
use super::bloom::hash64;
use super::files::{self, Ident};
use super::key::prefix;
use super::manifest::{self, Listed, Manifest};
use super::merging::held_from;
use super::op::{OpRef, Record, BATCH_RECORD_HEADER};
use super::prefetch::prefetch;
use super::replicated::{StateChange, Tracker};
use super::sealed::Sealed;
use super::segments::Segments;
use super::steps::Steps;
use super::table::{self, Table};
use crate::error::{Error, Result};
use crate::status::{KEEL_STATUS_CORRUPTION, KEEL_STATUS_PANIC};
use crate::fs::FileSystem;
use crate::wal::{ReadUpto, Reader, Wal};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// What an open found: in a normal open only the files it moved aside;
/// in a salvage open also what is gone. `Shard::recovery_report` returns
/// it; its text form is one line per finding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Listed files that were missing or damaged, each with why and what
    /// it held (salvage open only: a normal open fails instead).
    pub lost: Vec<String>,
    /// Versions proven lost: acknowledged out of the WAL but in no segment
    /// file left (salvage open only).
    pub lost_versions: Option<(u64, u64)>,
    /// Files the manifest does not list, moved (not deleted) into
    /// `moved_to` under the segments directory.
    pub moved_aside: Vec<String>,
    pub moved_to: Option<String>,
    /// An engine's salvage open found its commit log damaged: which
    /// copies of its shards' writes it lost, and what that means for this
    /// shard (given to every shard the engine listed then).
    pub commit_log: Option<String>,
}

impl RecoveryReport {
    pub fn is_empty(&self) -> bool {
        *self == RecoveryReport::default()
    }
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.lost {
            writeln!(f, "lost: {l}")?;
        }
        if let Some((a, b)) = self.lost_versions {
            writeln!(f, "lost versions: {a}..={b} (acknowledged out of the WAL, in no segment file left)")?;
        }
        for m in &self.moved_aside {
            writeln!(f, "moved aside: {m} -> segments/{}/{m}", self.moved_to.as_deref().unwrap_or(""))?;
        }
        if let Some(l) = &self.commit_log {
            writeln!(f, "lost: {l}")?;
        }
        Ok(())
    }
}

/// What `load` returns: the segments, the manifest now on disk and the
/// highest version the segment files prove persisted (every version the
/// WAL may have been acknowledged past).
pub struct Loaded {
    pub segs: Segments,
    /// The manifest on disk: the one the open wrote, or the one it read
    /// (a salvage that lost listed files leaves it to the first pass).
    pub manifest: Manifest,
    pub proven: u64,
    /// The version the manifest records as acknowledged, or (for a
    /// manifest without one) the lowest persisted version among the
    /// segment files: every operation at or below it is durable in them
    /// (F3 keeps a source's side-car at or below its destinations), so the
    /// shard's persisted version restarts no lower than this.
    pub floor: u64,
    /// The open synced the segments directory (or wrote the manifest,
    /// which does): what it lists is durable. When false, the files were
    /// left as found, and the manifest's rename may still be in the page
    /// cache (an earlier process died inside its replace); the WAL is not
    /// acknowledged on its word before a sync (`flush::acknowledge`).
    pub synced: bool,
}

/// A missing or damaged listed file is CORRUPTION, or in a salvage open a
/// line of the report (`held`: what the file held).
fn lose(e: Error, held: String, salvage: bool, report: &mut RecoveryReport) -> Result<()> {
    if !salvage || e.status != KEEL_STATUS_CORRUPTION {
        return Err(e);
    }
    report.lost.push(format!("{}{held}", e.message));
    Ok(())
}

/// What `scan` read from a segments directory: the manifest and the files
/// it lists, checked and loaded. `load` finishes the open from it.
pub struct Scan {
    exists: bool,
    /// None when missing, or damaged in a salvage open (`manifest_lost`).
    manifest: Option<Manifest>,
    manifest_lost: bool,
    tables: BTreeMap<u64, Sealed>,
    logs: BTreeMap<u64, Appendable>,
    damaged: BTreeSet<u64>,
    proven: u64,
    floor: u64,
}

impl Scan {
    /// Nothing read yet.
    fn empty(exists: bool) -> Scan {
        Scan { exists, manifest: None, manifest_lost: false, tables: BTreeMap::new(), logs: BTreeMap::new(), damaged: BTreeSet::new(), proven: 0, floor: u64::MAX }
    }
}

/// A shard's segments directory as its open first finds it: whether it
/// exists and its manifest, read once for the WAL's open (`persisted`)
/// and the scan.
pub struct DirManifest {
    exists: bool,
    /// None when missing, or damaged in a salvage open (`manifest_lost`).
    manifest: Option<Manifest>,
    manifest_lost: bool,
}

impl DirManifest {
    /// The version the manifest records as persisted (0 without one): the
    /// WAL's open need not read the frames of segments that hold nothing
    /// newer (the load proves the claim, or refuses the open).
    pub fn persisted(&self) -> u64 {
        self.manifest.as_ref().map_or(0, |m| m.persisted)
    }

    /// A manifest was read: the shard existed, and so did its WAL (an
    /// open makes the WAL before the first manifest).
    pub fn found(&self) -> bool {
        self.manifest.is_some()
    }
}

/// Reads the manifest of the segments directory `dir`; with `salvage` a
/// damaged one is reported in `report` and taken as lost.
pub fn read_manifest(fs: &dyn FileSystem, dir: &Path, salvage: bool, report: &mut RecoveryReport) -> Result<DirManifest> {
    let exists = fs.exists(dir).map_err(|e| Error::io(format!("looking for {}", dir.display()), e))?;
    let mut manifest_lost = false;
    let manifest = match exists.then(|| Manifest::read(fs, dir)).transpose() {
        Err(e) if salvage && e.status == KEEL_STATUS_CORRUPTION => {
            report.lost.push(e.message);
            manifest_lost = true;
            None
        }
        other => other?.flatten(),
    };
    Ok(DirManifest { exists, manifest, manifest_lost })
}

/// The first half of a shard's open (F6, manifest.rs): checks every file
/// the manifest (`read_manifest`) lists (present, right size and
/// identity), loading tables and logs. It changes nothing on disk, so it
/// runs beside the WAL's open and a WAL that refuses the open leaves the
/// directory as found. With `salvage`, missing or damaged files are
/// reported in `report` and left out instead of failing the open.
pub fn scan(fs: &Arc<dyn FileSystem>, dir: &Path, found: DirManifest, salvage: bool, report: &mut RecoveryReport) -> Result<Scan> {
    let fsr = &**fs;
    let DirManifest { exists, manifest, manifest_lost } = found;
    let mut scan = Scan { manifest, manifest_lost, ..Scan::empty(exists) };
    let Some(m) = &scan.manifest else { return Ok(scan) };
    let ident = |segment| Ident { shard: m.shard, segment };
    let reported = report.lost.len();
    // The versions the files' data holds, leaving out what side-cars
    // record: a side-car rewritten at a later delete proves that table's
    // deletions up to then, not the puts a lost log held.
    let (mut data_proven, mut log_lost) = (0, false);
    for l in &m.segments {
        match *l {
            Listed::Table { id, size, max_version, footer_crc } => {
                // A salvage open checks every block: a damaged one met
                // later (by the replay's version gate, a merge) would fail
                // the open, or every merge, instead of being set aside.
                let checked = open_table(fsr, dir, ident(id), size, footer_crc)
                    .and_then(|t| if salvage { t.verify_blocks().map(|()| t) } else { Ok(t) });
                match checked.and_then(|t| Sealed::load(fsr, dir, ident(id), t, true)) {
                    Ok(s) => {
                        scan.proven = scan.proven.max(s.persisted());
                        scan.floor = scan.floor.min(s.persisted());
                        data_proven = data_proven.max(max_version);
                        scan.tables.insert(id, s);
                    }
                    Err(e) => {
                        lose(e, format!(" (segment {id}: versions up to {max_version})"), salvage, report)?;
                        scan.damaged.insert(id);
                    }
                }
            }
            Listed::Log { id } => match Appendable::load(fs, dir, ident(id)) {
                Ok(a) => {
                    scan.proven = scan.proven.max(a.log.persisted());
                    scan.floor = scan.floor.min(a.log.persisted());
                    data_proven = data_proven.max(a.log.persisted());
                    scan.logs.insert(id, a);
                }
                Err(e) => {
                    lose(e, format!(" (segment {id}: an appendable segment)"), salvage, report)?;
                    scan.damaged.insert(id);
                    log_lost = true;
                }
            },
        }
    }
    if log_lost {
        scan.proven = data_proven;
    }
    // Not one listed file is the manifest's, and the segment files here
    // say they are another shard's: the manifest is the stranger (copied
    // in from another shard). Keeping it would keep that shard's id,
    // persisted version, applied index and fence tokens, and a host would
    // skip entries on its word; it is taken as lost instead.
    let foreign = match salvage && scan.tables.is_empty() && scan.logs.is_empty() {
        true => foreign_owner(fsr, dir, m.shard)?.map(|owner| (owner, m.shard)),
        false => None,
    };
    if let Some((owner, own)) = foreign {
        report.lost.truncate(reported);
        report.lost.push(format!(
            "{}: of shard {own:032x}, while the segment files here are of shard {owner:032x}: another shard's manifest, taken as lost",
            manifest::path(dir).display()
        ));
        scan = Scan { manifest: None, manifest_lost: true, ..Scan::empty(exists) };
    }
    Ok(scan)
}

/// The shard the segment files in `dir` (tables and logs' state files,
/// listed or not) say they belong to, when none of them says `shard`
/// (None when one does, or none can be read).
fn foreign_owner(fs: &dyn FileSystem, dir: &Path, shard: u128) -> Result<Option<u128>> {
    let names = fs.list(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let owners: Vec<u128> = names
        .iter()
        .filter_map(|n| files::parse(n))
        .filter_map(|(id, ext)| match ext {
            files::TABLE => Table::open(fs, &dir.join(files::name(id, files::TABLE))).ok().map(|t| t.ident.shard),
            files::STATE => Appendable::owner(fs, dir, id),
            _ => None,
        })
        .collect();
    Ok(match owners.contains(&shard) {
        true => None,
        false => owners.first().copied(),
    })
}

/// The second half of a shard's open, once its WAL opened: finishes or
/// undoes what a seal or a merge left half-done, moves unlisted files
/// aside, seals logs that were being sealed and writes the manifest if
/// that changed it (a missing one too). `wal_has_records`: the shard's WAL
/// is not empty (then a missing manifest is damage, not a new shard).
pub fn load(fs: &Arc<dyn FileSystem>, dir: &Path, scan: Scan, wal_has_records: bool, salvage: bool, report: &mut RecoveryReport) -> Result<Loaded> {
    let fsr = &**fs;
    let Scan { exists, manifest, manifest_lost, mut tables, mut logs, damaged, proven, floor } = scan;
    // One folder per open that moves anything, never one an earlier open
    // used: a rename replaces a file of the same name, and two opens in
    // one second may move files of the same names (a salvage after a lost
    // manifest numbers segments from 1 again).
    let move_aside = |name: &str, report: &mut RecoveryReport| -> Result<()> {
        let folder = match &report.moved_to {
            Some(f) => f.clone(),
            None => files::unused_aside_folder(fsr, dir)?,
        };
        files::move_aside(fsr, dir, &folder, name)?;
        report.moved_aside.push(name.to_string());
        report.moved_to = Some(folder);
        Ok(())
    };
    let list = || fsr.list(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e));
    if manifest_lost {
        move_aside(manifest::NAME, report)?;
    }
    let on_disk = match manifest {
        Some(m) => m,
        None => {
            let names = if exists { list()? } else { Vec::new() };
            let segment_files: Vec<&String> = names.iter().filter(|n| files::parse(n).is_some()).collect();
            if !segment_files.is_empty() || wal_has_records {
                let what = match (segment_files.len(), wal_has_records) {
                    (0, _) => "the WAL holds records".to_string(),
                    (n, false) => format!("{n} segment files exist"),
                    (n, true) => format!("{n} segment files exist and the WAL holds records"),
                };
                let e = Error::corruption(format!(
                    "{}: missing while {what} (the list of the shard's files is lost, or an older keel without manifests wrote the shard)",
                    manifest::path(dir).display()
                ));
                lose(e, "; every segment file is moved aside and the shard holds what its WAL still has".into(), salvage, report)?;
                for n in segment_files {
                    move_aside(n, report)?;
                }
            }
            fsr.create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            if let Some(parent) = dir.parent() {
                files::sync_dir(fsr, parent)?; // the segments directory's own entry
            }
            let m = Manifest { shard: manifest::new_shard_id(), next_id: 1, persisted: 0, replicated: Default::default(), segments: Vec::new() };
            m.write(fsr, dir)?;
            m
        }
    };
    let ident = |segment| Ident { shard: on_disk.shard, segment };

    // Nothing was removed or written until every listed file was checked
    // (`scan`); the replaced lists of the listed tables explain a merge's
    // leftovers.
    let replaced: BTreeSet<u64> = tables.values().filter_map(|s| s.table()).flat_map(|t| t.replaced.iter().copied()).collect();
    let listed: BTreeMap<u64, &Listed> = on_disk.segments.iter().map(|l| (l.id(), l)).collect();
    let mut cleaned = false;
    for name in if exists { list()? } else { Vec::new() } {
        if name == manifest::NAME || name.starts_with(files::UNLISTED_PREFIX) {
            continue;
        }
        if files::is_temporary(&name) {
            // A rename that never happened; but a folder named so is not
            // keel's, and moved aside like any other unknown entry.
            match fsr.remove(&dir.join(&name)) {
                Err(e) if e.raw_os_error() == Some(libc::EISDIR) => move_aside(&name, report)?,
                other => files::remove_result(other, &dir.join(&name))?,
            }
            cleaned = true;
            continue;
        }
        let Some((id, ext)) = files::parse(&name) else {
            move_aside(&name, report)?;
            continue;
        };
        let (is_listed, leftover) = match listed.get(&id) {
            Some(Listed::Table { .. }) => ([files::TABLE, files::DELETIONS].contains(&ext), [files::LOG, files::STATE].contains(&ext)),
            Some(Listed::Log { .. }) => ([files::LOG, files::STATE, files::DELETIONS].contains(&ext), ext == files::TABLE),
            None => (false, id >= on_disk.next_id || replaced.contains(&id)),
        };
        if is_listed && !damaged.contains(&id) {
            continue;
        }
        // A salvage open deletes nothing it could be wrong about.
        if leftover && !salvage {
            files::remove(fsr, &dir.join(&name))?;
            cleaned = true;
        } else {
            move_aside(&name, report)?;
        }
    }

    // The newest log is the appendable segment; older ones were being
    // sealed when the process stopped: seal them now.
    let newest = on_disk.segments.iter().filter(|l| matches!(l, Listed::Log { .. })).map(Listed::id).max();
    let appendable = newest.and_then(|id| logs.remove(&id));
    let mut sealed_now = Vec::new();
    for (id, a) in logs {
        let t = table::write(fsr, &dir.join(files::name(id, files::TABLE)), held_from(&a.map, b""), &[], ident(id))?;
        // Deletions its frozen form saved, if any (the WAL has them all).
        let s = Sealed::load(fsr, dir, ident(id), t, false)?;
        s.write_side_car(fsr, &Steps::default())?; // at open: no background work yet
        tables.insert(id, s);
        sealed_now.push(a.log);
    }
    let mut next_id = on_disk.next_id;
    let appendable = match appendable {
        Some(a) => a,
        None => {
            next_id += 1;
            Appendable::create(fs, dir, ident(next_id - 1), proven)?
        }
    };
    let segs = Segments { shard: on_disk.shard, appendable, sealed: tables.into_values().map(Arc::new).collect(), layout: 0, applied: 0, next_id };
    // New files are durable; the manifest naming them goes next, and only
    // then are the files it no longer lists removed. Except after a
    // salvage that lost listed files: the manifest without them would
    // still record their versions persisted, and the WAL's replay of
    // what it still has of them is in memory only, so a crash before the
    // first pass would lose it with nothing left to say so. That manifest
    // is the first pass's to write, once the replay is in segment files;
    // until then the one on disk names the lost files, and the next open
    // finds the same damage.
    let now = Manifest::of(&segs, on_disk.persisted, on_disk.replicated.clone());
    let defer = !damaged.is_empty();
    let wrote = now != on_disk && !defer;
    if wrote {
        now.write(fsr, dir)?;
    }
    let removes = !sealed_now.is_empty() && !defer;
    if removes {
        for log in sealed_now {
            log.remove_files()?;
        }
    }
    // The manifest's replace ends with a sync of this folder: only the
    // removes after it, or an open that wrote no manifest but removed
    // files above, still need one (a shard's creation saves a sync, and
    // reopening one that is as it was left, all of them).
    let synced = removes || wrote || cleaned;
    if removes || (cleaned && !wrote) {
        files::sync_dir(fsr, dir)?;
    }
    // The manifest's own record wins over the files' (a merged table's
    // side-car records the oldest of its inputs); it proves the versions
    // only while every file it lists is there (a salvage open may have
    // lost some), but the count never restarts below it either way.
    let floor = if floor == u64::MAX { 0 } else { floor }.max(now.persisted);
    let proven = if damaged.is_empty() { proven.max(now.persisted) } else { proven };
    let manifest = if defer { on_disk } else { now };
    Ok(Loaded { segs, manifest, proven, floor, synced })
}

/// Opens a listed table and checks it is the one the manifest lists.
fn open_table(fs: &dyn FileSystem, dir: &Path, ident: Ident, size: u64, footer_crc: u32) -> Result<Table> {
    let path = dir.join(files::name(ident.segment, files::TABLE));
    if !fs.exists(&path).map_err(|e| Error::io(format!("looking for {}", path.display()), e))? {
        return Err(Error::corruption(format!("{}: missing", path.display())));
    }
    let t = Table::open(fs, &path)?;
    ident.check(t.ident, &path)?;
    if t.size() as u64 != size {
        return Err(Error::corruption(format!("{}: {} bytes, the manifest lists {size} (cut short or replaced)", path.display(), t.size())));
    }
    if t.footer_crc != footer_crc {
        return Err(Error::corruption(format!("{}: not the table the manifest lists (footer checksum differs)", path.display())));
    }
    Ok(t)
}

/// What `replay_wal` did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replayed {
    /// The lowest version that changed anything (everything below it is
    /// in the segments already); None when nothing changed.
    pub first_changed: Option<u64>,
    /// Operations read from the WAL and put through the version gate.
    pub records: u64,
    /// Their bytes, each with its record header as a write counts it
    /// (`backlog.rs`).
    pub bytes: u64,
}

/// A run of WAL records, copied out of the log and sorted (see `replay_wal`).
#[derive(Default)]
struct Run {
    bytes: Vec<u8>,
    records: Vec<RunRecord>,
    /// Values of puts read in place: they stay in the mapped WAL segment,
    /// where the appendable segment's map holds them too, and their
    /// records in `bytes` stop where the value would begin. A restart that
    /// replays a gigabyte of puts otherwise spent most of its time in the
    /// kernel, zeroing fresh pages for the copies.
    held: Vec<Slice>,
    /// The mapped segment the last values were held in.
    kept: Option<Kept>,
    /// The sum of the held values' lengths.
    held_bytes: usize,
    /// The run's changes of the replicated state, in version order.
    states: Vec<(u64, StateChange)>,
    /// The bytes of those state records (not copied into `bytes`).
    state_bytes: usize,
}

/// One record of a run: where it and its key sit in the run's bytes.
struct RunRecord {
    prefix: u128,
    seq: u64,
    start: usize,
    len: u32,
    key_start: usize,
    key_len: u32,
    /// The immutable segments whose filters let the key through
    /// (`Segments::replay`).
    candidates: u64,
    /// The index of the put's value in `Run::held`, or `NOT_HELD`.
    held: u32,
}

const NOT_HELD: u32 = u32::MAX;

/// The searches of immutable segments a run's apply will make, for the
/// reading thread to announce (`Sealed::will_search`) as soon as it has
/// handed the run over. Each search of a table reads a block, which on a
/// cold page cache is a read from the device; a key's filter lets it
/// through a table that does not hold it about once in 1,400, which over
/// a run of hundreds of thousands of keys still reaches most of every
/// table. Announced, those reads are in flight together while the
/// applying thread works, instead of the applying thread waiting for each
/// in turn (a restart at the default bound with a cold cache: 1.07 s to
/// 0.88 s, the medians of five).
#[derive(Default)]
struct Searches {
    keys: Vec<u8>,
    /// (segment index, where the key sits in `keys`, its length), in the
    /// run's key order.
    searches: Vec<(usize, usize, usize)>,
}

impl Searches {
    fn clear(&mut self) {
        self.keys.clear();
        self.searches.clear();
    }

    fn push(&mut self, segment: usize, key: &[u8]) {
        self.searches.push((segment, self.keys.len(), key.len()));
        self.keys.extend_from_slice(key);
    }

    fn announce(&self, sealed: &[Arc<Sealed>]) {
        // Per segment, the chunk announced last: in key order a segment's
        // searches move front to back, so each chunk is asked for once.
        let mut last = vec![None; sealed.len().min(64)];
        for &(i, at, len) in &self.searches {
            last[i] = sealed[i].will_search(&self.keys[at..at + len], last[i]);
        }
    }
}

impl Run {
    fn key(&self, r: &RunRecord) -> &[u8] {
        &self.bytes[r.key_start..r.key_start + r.key_len as usize]
    }

    /// Refills the run with the next records of the log (up to `run_bytes`;
    /// none at its end), sorts them by key, then version, and notes which
    /// of `sealed` (the shard's immutable segments) may hold each key;
    /// `searches` gets the searches of them the run's apply will make.
    /// With `keep`, put values read in place stay where they are (`held`).
    /// `log_end`: the log's last version; a run takes at most 1/`TAIL_PARTS`
    /// of the records from its first one to there (`MIN_TAIL_RUN` at least).
    fn read(&mut self, reader: &mut Reader, run_bytes: usize, log_end: u64, keep: bool, sealed: &[Arc<Sealed>], searches: &mut Searches) -> Result<()> {
        self.bytes.clear();
        self.records.clear();
        self.states.clear();
        self.state_bytes = 0;
        self.held.clear();
        self.held_bytes = 0;
        let mut max_records = usize::MAX;
        while self.bytes.len() + self.held_bytes + self.state_bytes < run_bytes && self.records.len() + self.states.len() < max_records {
            let Some((seq, record, in_place)) = reader.peek_in_place()? else { break };
            if max_records == usize::MAX {
                // Each record of the log has a version of its own.
                max_records = (log_end.saturating_sub(seq) as usize / TAIL_PARTS).max(MIN_TAIL_RUN);
            }
            let op = match Record::decode(record)? {
                Record::Op(op) => op,
                Record::State(change) => {
                    self.state_bytes += record.len();
                    self.states.push((seq, change));
                    reader.advance();
                    continue;
                }
            };
            let value = match (op, in_place) {
                (OpRef::Put { value, .. }, Some(place)) if keep && self.held.len() < NOT_HELD as usize => {
                    if !self.kept.as_ref().is_some_and(|k| k.holds(value)) {
                        // SAFETY: the segment is mapped memory that
                        // `place.owner()` keeps, and the records the log
                        // handed out in it never change (`InPlace`).
                        self.kept = Some(unsafe { Kept::new(place.owner(), place.segment()) });
                    }
                    self.kept.as_ref().filter(|k| k.holds(value)).map(|k| k.slice(value))
                }
                _ => None,
            };
            let (copied, held) = match value {
                Some(value) => {
                    self.held_bytes += value.len();
                    // A put's value is the end of its record.
                    let head = &record[..record.len() - value.len()];
                    self.held.push(value);
                    (head, self.held.len() as u32 - 1)
                }
                None => (record, NOT_HELD),
            };
            let key = op.key();
            let key_at = key.as_ptr() as usize - record.as_ptr() as usize;
            self.records.push(RunRecord {
                prefix: prefix(key),
                seq,
                start: self.bytes.len(),
                len: copied.len() as u32,
                key_start: self.bytes.len() + key_at,
                key_len: key.len() as u32,
                candidates: 0,
                held,
            });
            self.bytes.extend_from_slice(copied);
            reader.advance();
        }
        let mut records = std::mem::take(&mut self.records);
        records.sort_unstable_by(|a, b| a.prefix.cmp(&b.prefix).then_with(|| self.key(a).cmp(self.key(b))).then(a.seq.cmp(&b.seq)));
        // Every replayed key is looked up in every immutable segment (the
        // version gate), and almost always a filter says it is not there.
        // Asking the filters here, one segment at a time over the whole
        // run, takes that off the applying thread, and each segment's
        // filter stays in the cache while it is asked.
        searches.clear();
        if !sealed.is_empty() {
            let hashes: Vec<u64> = records.iter().map(|r| hash64(self.key(r))).collect();
            for (i, s) in sealed.iter().take(64).enumerate() {
                for (r, &hash) in records.iter_mut().zip(&hashes) {
                    if s.may_hold(hash) {
                        r.candidates |= 1 << i;
                    }
                }
            }
            for r in &records {
                for i in (0..64).filter(|i| r.candidates & (1 << i) != 0) {
                    searches.push(i, self.key(r));
                }
            }
        }
        self.records = records;
        Ok(())
    }

    /// Applies the run in its sorted order, its state changes to
    /// `replicated`; lowers `first_changed` to the lowest version that
    /// changed a key (the segments hold no state changes: the manifest
    /// does, up to the persisted version, and merging one again is
    /// harmless).
    fn apply(&self, segs: &mut Segments, replicated: &mut Tracker, first_changed: &mut Option<u64>) -> Result<()> {
        for (seq, change) in &self.states {
            replicated.logged(*seq, change.clone());
        }
        // The data log records of the run, staged until the replay ends:
        // each is the WAL record plus its version, kind and checksum.
        segs.appendable.reserve(self.bytes.len() + self.records.len() * 16);
        for (i, r) in self.records.iter().enumerate() {
            // In key order the records sit anywhere in the run's bytes, and
            // held values anywhere in the mapped log: ask for a record a few
            // places ahead so its bytes are in the cache by the time it is
            // decoded and copied (the staged record copies its value).
            if let Some(ahead) = self.records.get(i + PREFETCH_AHEAD) {
                prefetch(&self.bytes[ahead.start..ahead.start + ahead.len as usize]);
                if let Some(value) = self.held.get(ahead.held as usize) {
                    prefetch(value);
                }
            }
            let mut op = OpRef::decode(&self.bytes[r.start..r.start + r.len as usize])?;
            let held = (r.held != NOT_HELD).then(|| &self.held[r.held as usize]);
            if let Some(value) = held {
                op = OpRef::Put { key: op.key(), value };
            }
            if segs.replay(op, r.seq, r.candidates, held)? {
                *first_changed = Some(first_changed.map_or(r.seq, |f: u64| f.min(r.seq)));
            }
        }
        Ok(())
    }
}

/// How many records ahead of the one being applied `Run::apply` fetches
/// the record's bytes.
const PREFETCH_AHEAD: usize = 16;

/// The first run of a replay is this fraction of `run_bytes`.
const FIRST_RUN_PARTS: usize = 16;

/// A run takes at most this fraction of the records left to the log's
/// end, and at least `MIN_TAIL_RUN` records (see `replay_wal`).
const TAIL_PARTS: usize = 2;
const MIN_TAIL_RUN: usize = 65536;

/// Replays the WAL from `from` (the first version the segment files may
/// lack; 0 for the first retained record) into `segs`, in runs: the
/// records of a run (up to `run_bytes`, 64 MiB by default) are copied,
/// sorted by key and then version, and applied in that order. Operations
/// on different keys commute and those on one key keep their log order,
/// so the state is the one replay in log order gives; but in key order
/// each B-tree search walks the path the previous one left in the cache,
/// where in log order every search was a string of cache misses. A second
/// thread reads and sorts the next run while this one applies the current
/// one, so only the first run's read and the last run's apply are not
/// overlapped: the first runs are small, and near the log's end a run
/// takes at most half the records left (`TAIL_PARTS`). Without that rule a
/// replay of 64 MiB of 100 B puts ended with a run of half its records,
/// applied alone (a quarter of its time). State records go to
/// `replicated`, in version order.
pub fn replay_wal(segs: &mut Segments, replicated: &mut Tracker, wal: &Wal, from: u64, run_bytes: usize) -> Result<Replayed> {
    let mut reader = wal.reader(from, ReadUpto::Appended)?;
    let log_end = wal.last_seq();
    // Replay seals nothing: the reader thread asks the same segments'
    // filters as the applying one searches.
    let sealed = segs.sealed.clone();
    // Two runs circulate: one being applied here, one being read there.
    let (full_tx, full) = crossbeam_channel::bounded::<Result<Run>>(1);
    let (empty, empty_rx) = crossbeam_channel::bounded::<Run>(2);
    for _ in 0..2 {
        empty.send(Run::default()).expect("the receiver is here");
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // The first runs are small and each is twice the last, up to
            // `run_bytes`: nothing is applied until a whole run is read
            // and sorted, so a replay of a single full run would leave
            // this thread alone reading first and then idle. Reading is
            // faster than applying, so the next run is ready in time.
            let mut run_bytes_now = (run_bytes / FIRST_RUN_PARTS).max(1);
            let mut searches = Searches::default();
            // Values are kept in place from the second run on: a replay
            // that fits the first run copies them (they are few, and a
            // small or idle shard then holds no WAL segment mapped).
            let mut keep = false;
            // Ends when the log ends, on an error, or when the applying
            // side has gone (its channel ends dropped).
            while let Ok(mut run) = empty_rx.recv() {
                let result = run.read(&mut reader, run_bytes_now, log_end, keep, &sealed, &mut searches).map(|()| run);
                run_bytes_now = run_bytes_now.saturating_mul(2).min(run_bytes);
                keep = true;
                let last = result.as_ref().map_or(true, |run| run.records.is_empty() && run.states.is_empty());
                if full_tx.send(result).is_err() || last {
                    return;
                }
                searches.announce(&sealed);
            }
        });
        // Owned by this closure: an early return drops them, which ends the
        // reader thread wherever it waits, so the scope's join cannot hang.
        let (full, empty) = (full, empty);
        let mut replayed = Replayed::default();
        loop {
            let run = full.recv().map_err(|_| Error::new(KEEL_STATUS_PANIC, "the WAL replay reader stopped"))??;
            if run.records.is_empty() && run.states.is_empty() {
                return Ok(replayed);
            }
            let records = run.records.len() + run.states.len();
            replayed.records += records as u64;
            replayed.bytes += (run.bytes.len() + run.held_bytes + run.state_bytes + records * BATCH_RECORD_HEADER) as u64;
            run.apply(segs, replicated, &mut replayed.first_changed)?;
            let _ = empty.send(run);
        }
    })
}
