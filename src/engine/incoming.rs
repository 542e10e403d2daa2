//! Shards being received by a transfer (docs/TRANSFER.md, "Receiver").
//! While one is received the engine holds it in its own slot and the host
//! cannot open or drop it (BUSY); a file `INCOMING` in the shard's
//! directory says so across restarts too, until a transfer finishes it
//! (or the host drops the shard).

use super::{Engine, Slot, CREATING};
use crate::error::{Error, Result};
use crate::shard::Shard;
use crate::status::*;

/// The file that marks a shard whose transfer has not finished.
pub(super) const MARKER: &str = "INCOMING";
const MARKER_BODY: &[u8] = b"keel incoming shard\n";

pub(super) fn busy(id: u32) -> Error {
    Error::new(KEEL_STATUS_BUSY, format!("shard {id} is being received by a transfer that has not finished"))
}

impl Engine {
    /// Takes shard `id` in for a transfer. With `base`, a new empty shard
    /// whose versions up to `base` come from a snapshot (an existing shard
    /// of that id is dropped first); without, the existing shard, which
    /// then receives a WAL delta (NOT_FOUND when there is none, CORRUPTION
    /// when it is listed but its folder is gone). BUSY when the shard is
    /// open or already being received.
    pub(crate) fn receive_shard(&self, id: u32, base: Option<u64>) -> Result<Shard> {
        let dir = self.shard_dir(id);
        let (reserved, replaced, listed, lost_copies) = {
            // A host's close left pending (RESOURCE, its handle maybe
            // gone) is retried here too, as before an open or a drop.
            let mut guard = self.lock_for(id)?;
            let state = guard.as_mut().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "engine is closed"))?;
            let replaced = match state.slots.get(&id) {
                Some(Slot::Opening) | Some(Slot::Incoming(_)) => return Err(busy(id)),
                Some(Slot::Dropping) => return Err(super::dropping(id)),
                Some(Slot::Open(s)) if !s.close_finished() => {
                    return Err(Error::new(KEEL_STATUS_BUSY, format!("shard {id} is open (or still closing) here; close it before receiving it")))
                }
                Some(Slot::Received(s)) if base.is_none() => {
                    // Received earlier and not opened since: a WAL delta
                    // goes on in the shard as it is.
                    let s = s.clone();
                    crate::fs::replace(&*self.fs, &dir.join(MARKER), MARKER_BODY)?;
                    state.slots.insert(id, Slot::Incoming(s.clone()));
                    return Ok(s);
                }
                // Replaced by a snapshot: closed before it is dropped.
                Some(Slot::Received(s)) => Some(s.clone()),
                _ => None,
            };
            self.check_not_held(id)?;
            let listed = state.list.contains(id);
            if base.is_none() && !listed {
                return Err(super::not_found(id));
            }
            // Checked before the marker is written into it, which would
            // fail as IO: the source then sends a snapshot, as for any
            // damaged copy.
            if base.is_none() && !self.exists(&dir)? {
                return Err(super::missing_listed(&dir, id));
            }
            (self.reserve(state, id, Slot::Opening), replaced, listed, state.lost_copies_of(id))
        };
        // The id is reserved (`Opening`): the drop of the shard a snapshot
        // replaces and the new shard's create run outside the mutex.
        if let Some(s) = replaced {
            s.close_for_good()?;
        }
        if base.is_some() {
            if listed {
                self.drop_reserved(&reserved)?;
            }
            self.create_incoming(id)?;
        } else {
            crate::fs::replace(&*self.fs, &dir.join(MARKER), MARKER_BODY)?;
            // A copy this engine handed over earlier (and never dropped)
            // comes back by WAL delta: once finished it is this node's to
            // write again. The marker is durable first, so a crash in
            // between leaves it incoming, not writable.
            crate::shard::remove_moved(&*self.fs, &dir)?;
        }
        let fs = self.injected_fs.then(|| self.fs.clone());
        let opened = match base {
            Some(v) => Shard::open_incoming(&dir, self.opts.clone(), fs, Some(&self.host), v),
            // The shard as it is, WAL delta to come: what the commit log
            // lost of it is lost from the copy the delta starts from.
            None => Shard::open_hosted(&dir, self.opts.clone(), fs, &self.host, None, lost_copies),
        };
        self.settle(reserved, opened, Slot::Incoming)
    }

    /// Creates shard `id`, reserved by the caller, for a snapshot, and
    /// lists it already marked incoming: listed before its marker, a
    /// failure or a crash in between left an empty shard that the host
    /// opened as its own. The folder is made as `shards/.new-<id>` with
    /// the marker in it, listed (the commit point), then renamed into
    /// place; engine open removes a `.new-<id>` whose id is not listed
    /// and renames a listed one into place (`Engine::finish_interrupted`).
    fn create_incoming(&self, id: u32) -> Result<()> {
        let shards_dir = self.dir.join("shards");
        let dir = self.shard_dir(id);
        let staged = shards_dir.join(format!("{CREATING}{id}"));
        self.check_unlisted(id)?;
        // An empty folder of the id (a create cut before its listing)
        // would keep engine open from renaming the staged one into
        // place; a staged one is an earlier attempt's. The directory sync
        // below makes both removals durable before the listing.
        for stale in [&dir, &staged] {
            if self.exists(stale)? {
                self.fs.remove_dir_all(stale).map_err(|e| Error::io(format!("removing {}", stale.display()), e))?;
            }
        }
        self.fs.create_dir_all(&staged).map_err(|e| Error::io(format!("creating {}", staged.display()), e))?;
        crate::fs::replace(&*self.fs, &staged.join(MARKER), MARKER_BODY)?;
        self.sync_dir(&shards_dir)?;
        self.with_list("the shard was being received", |list| list.add(&*self.fs, id))?;
        self.fs.rename(&staged, &dir).map_err(|e| Error::io(format!("renaming {}", staged.display()), e))?;
        self.sync_dir(&shards_dir)
    }

    /// Ends the reception of shard `id`. `finished`: its data is complete
    /// and durable, so the marker goes and the shard stays open for the
    /// host, whose next `open_shard` takes it without recovering it again;
    /// otherwise the shard is closed and the marker stays (opening it stays
    /// BUSY until a later transfer finishes it or the host drops it).
    pub(crate) fn release_incoming(&self, id: u32, finished: bool) -> Result<()> {
        let (shard, reserved) = {
            let mut guard = self.shards.lock();
            let state = guard.as_mut().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "engine is closed"))?;
            match state.slots.remove(&id) {
                // Reserved while the marker goes or the shard closes,
                // outside the mutex: a drop or another reception of the
                // id meanwhile would work on files the close still writes.
                Some(Slot::Incoming(s)) => (s, self.reserve(state, id, Slot::Opening)),
                Some(other) => {
                    state.slots.insert(id, other);
                    return Err(Error::invalid(format!("shard {id} is not being received")));
                }
                None => return Err(Error::invalid(format!("shard {id} is not being received"))),
            }
        };
        if !finished {
            let closed = shard.close_for_good();
            drop(reserved);
            return closed;
        }
        let dir = self.shard_dir(id);
        let marker = dir.join(MARKER);
        let unmarked = self
            .fs
            .remove(&marker)
            .map_err(|e| Error::io(format!("removing {}", marker.display()), e))
            .and_then(|()| self.sync_dir(&dir));
        match unmarked {
            Ok(()) => self.settle(reserved, Ok(shard), Slot::Received).map(drop),
            Err(e) => {
                // Closed, its slot freed: opening it is BUSY while the
                // marker is there, as for any unfinished reception.
                let _ = shard.close_for_good();
                self.settle(reserved, Err(e), Slot::Incoming).map(drop)
            }
        }
    }
}
