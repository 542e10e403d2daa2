//! Opening a shard after any crash (F6): `load` finishes or undoes what a
//! seal or a merge left half-done, drops what was never made durable and
//! loads the rest; `replay_wal` then replays the WAL through the version
//! gate (`Segments::replay` applies one operation).

use super::appendable::Appendable;
use super::files;
use super::key::prefix;
use super::op::OpRef;
use super::sealed::Sealed;
use super::segments::Segments;
use super::table::{self, Table};
use crate::error::{Error, Result};
use crate::status::KEEL_STATUS_PANIC;
use crate::fs::FileSystem;
use crate::wal::{ReadUpto, Reader, Wal};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

pub fn load(fs: &Arc<dyn FileSystem>, dir: &Path) -> Result<Segments> {
    let remove = |name: &str| files::remove(&**fs, &dir.join(name));
    fs.create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    if let Some(parent) = dir.parent() {
        files::sync_dir(&**fs, parent)?; // the segments directory's own entry
    }
    let mut ids: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let names = fs.list(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for name in names {
        if files::is_temporary(&name) {
            // A table or state file whose rename never happened.
            remove(&name)?;
        } else if let Some((id, ext)) = files::parse(&name) {
            ids.entry(id).or_default().insert(ext.to_string());
        }
    }
    let next_id = ids.keys().next_back().map_or(1, |id| id + 1);

    // Tables first: a merged table names the segments it replaced, whose
    // files may have outlived it in a crash.
    let mut tables = BTreeMap::new();
    for (&id, exts) in &ids {
        if exts.contains(files::TABLE) {
            tables.insert(id, Table::open(&**fs, &dir.join(files::name(id, files::TABLE)))?);
        }
    }
    let replaced: BTreeSet<u64> = tables.values().flat_map(|t| t.replaced.iter().copied()).collect();
    for id in &replaced {
        tables.remove(id);
        for ext in [files::TABLE, files::DELETIONS, files::LOG, files::STATE] {
            remove(&files::name(*id, ext))?;
        }
    }
    // A table with a log of the same id: the seal finished, the log is spare.
    let mut logs = Vec::new();
    for (&id, exts) in &ids {
        if replaced.contains(&id) {
            continue;
        }
        if tables.contains_key(&id) {
            remove(&files::name(id, files::LOG))?;
            remove(&files::name(id, files::STATE))?;
        } else if exts.contains(files::LOG) || exts.contains(files::STATE) {
            logs.push(id);
        }
    }
    // The newest log is the appendable segment; older ones were being
    // sealed when the process stopped: seal them now.
    let appendable_id = logs.pop();
    for id in logs {
        let a = Appendable::load(fs, dir, id)?;
        let t = table::write(&**fs, &dir.join(files::name(id, files::TABLE)), a.map.into_iter().map(|(k, e)| Ok((k.as_slice().to_vec(), e))), &[])?;
        a.log.remove_files()?;
        tables.insert(id, t);
    }
    let mut sealed = Vec::new();
    for (id, t) in tables {
        sealed.push(Arc::new(Sealed::load(&**fs, dir, id, t)?));
    }
    let appendable = match appendable_id {
        Some(id) => Appendable::load(fs, dir, id)?,
        None => Appendable::create(fs, dir, next_id, 0)?,
    };
    files::sync_dir(&**fs, dir)?;
    let next_id = next_id.max(appendable.id + 1);
    Ok(Segments { appendable, sealed, applied: 0, next_id })
}

/// A run of WAL records, copied out of the log and sorted (see `replay_wal`).
#[derive(Default)]
struct Run {
    bytes: Vec<u8>,
    records: Vec<RunRecord>,
}

/// One record of a run: where it and its key sit in the run's bytes.
struct RunRecord {
    prefix: u128,
    seq: u64,
    start: usize,
    len: u32,
    key_start: usize,
    key_len: u32,
}

impl Run {
    fn key(&self, r: &RunRecord) -> &[u8] {
        &self.bytes[r.key_start..r.key_start + r.key_len as usize]
    }

    /// Refills the run with the next records of the log (up to `run_bytes`;
    /// none at its end) and sorts them by key, then version.
    fn read(&mut self, reader: &mut Reader, run_bytes: usize) -> Result<()> {
        self.bytes.clear();
        self.records.clear();
        while self.bytes.len() < run_bytes {
            let Some((seq, record)) = reader.peek()? else { break };
            let key = OpRef::decode(record)?.key();
            let key_at = key.as_ptr() as usize - record.as_ptr() as usize;
            self.records.push(RunRecord {
                prefix: prefix(key),
                seq,
                start: self.bytes.len(),
                len: record.len() as u32,
                key_start: self.bytes.len() + key_at,
                key_len: key.len() as u32,
            });
            self.bytes.extend_from_slice(record);
            reader.advance();
        }
        let mut records = std::mem::take(&mut self.records);
        records.sort_unstable_by(|a, b| a.prefix.cmp(&b.prefix).then_with(|| self.key(a).cmp(self.key(b))).then(a.seq.cmp(&b.seq)));
        self.records = records;
        Ok(())
    }

    /// Applies the run in its sorted order; lowers `first_changed` to the
    /// lowest version that changed anything.
    fn apply(&self, segs: &mut Segments, first_changed: &mut Option<u64>) -> Result<()> {
        for r in &self.records {
            let op = OpRef::decode(&self.bytes[r.start..r.start + r.len as usize])?;
            if segs.replay(op, r.seq)? {
                *first_changed = Some(first_changed.map_or(r.seq, |f: u64| f.min(r.seq)));
            }
        }
        Ok(())
    }
}

/// Replays the whole WAL into `segs`, in runs: the records of a run (up to
/// `run_bytes`, 64 MiB by default) are copied, sorted by key and then
/// version, and applied in that order. Operations on different keys
/// commute and those on one key keep their log order, so the state is the
/// one replay in log order gives; but in key order each B-tree search
/// walks the path the previous one left in the cache, where in log order
/// every search was a string of cache misses. A second thread reads and
/// sorts the next run while this one applies the current one. Returns the
/// lowest version replay changed (everything below it is in the segments
/// already).
pub fn replay_wal(segs: &mut Segments, wal: &Wal, run_bytes: usize) -> Result<Option<u64>> {
    let mut reader = wal.reader(0, ReadUpto::Appended)?;
    // Two runs circulate: one being applied here, one being read there.
    let (full_tx, full) = crossbeam_channel::bounded::<Result<Run>>(1);
    let (empty, empty_rx) = crossbeam_channel::bounded::<Run>(2);
    for _ in 0..2 {
        empty.send(Run::default()).expect("the receiver is here");
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // Ends when the log ends, on an error, or when the applying
            // side has gone (its channel ends dropped).
            while let Ok(mut run) = empty_rx.recv() {
                let result = run.read(&mut reader, run_bytes).map(|()| run);
                let last = result.as_ref().map_or(true, |run| run.records.is_empty());
                if full_tx.send(result).is_err() || last {
                    return;
                }
            }
        });
        // Owned by this closure: an early return drops them, which ends the
        // reader thread wherever it waits, so the scope's join cannot hang.
        let (full, empty) = (full, empty);
        let mut first_changed = None;
        loop {
            let run = full.recv().map_err(|_| Error::new(KEEL_STATUS_PANIC, "the WAL replay reader stopped"))??;
            if run.records.is_empty() {
                return Ok(first_changed);
            }
            run.apply(segs, &mut first_changed)?;
            let _ = empty.send(run);
        }
    })
}
