//! Opening a shard's segments after any crash (F6, first half): finish or
//! undo what a seal or a merge left half-done, drop what was never made
//! durable, and load the rest. The WAL replay (the second half) is in
//! `Segments::replay`, driven by `Shard::open`.

use super::appendable::Appendable;
use super::files;
use super::sealed::Sealed;
use super::segments::Segments;
use super::table::{self, Table};
use crate::error::{Error, Result};
use crate::wal::FileSystem;
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
