//! Shards being received by a transfer (docs/TRANSFER.md, "Receiver").
//! While one is received the engine holds it in its own slot and the host
//! cannot open or drop it (BUSY); a file `INCOMING` in the shard's
//! directory says so across restarts too, until a transfer finishes it
//! (or the host drops the shard).

use super::{Engine, Slot};
use crate::error::{Error, Result};
use crate::shard::Shard;
use crate::status::*;

/// The file that marks a shard whose transfer has not finished.
pub(super) const MARKER: &str = "INCOMING";

pub(super) fn busy(id: u32) -> Error {
    Error::new(KEEL_STATUS_BUSY, format!("shard {id} is being received by a transfer that has not finished"))
}

impl Engine {
    /// Takes shard `id` in for a transfer. With `base`, a new empty shard
    /// whose versions up to `base` come from a snapshot (an existing shard
    /// of that id is dropped first); without, the existing shard, which
    /// then receives a WAL delta (NOT_FOUND when there is none). BUSY when
    /// the shard is open or already being received.
    pub(crate) fn receive_shard(&self, id: u32, base: Option<u64>) -> Result<Shard> {
        let dir = self.shard_dir(id);
        {
            let mut guard = self.shards.lock();
            let state = guard.as_mut().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "engine is closed"))?;
            match state.slots.get(&id) {
                Some(Slot::Opening) | Some(Slot::Incoming(_)) => return Err(busy(id)),
                Some(Slot::Open(s)) if !s.is_closed() => {
                    return Err(Error::new(KEEL_STATUS_BUSY, format!("shard {id} is open here; close it before receiving it")))
                }
                _ => {}
            }
            match base {
                Some(_) => {
                    if state.list.contains(id) {
                        self.drop_unopened(state, id)?;
                    }
                    self.create_dir(&mut state.list, id)?;
                }
                None if !state.list.contains(id) => {
                    return Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("shard {id} does not exist")))
                }
                None => {}
            }
            crate::fs::replace(&*self.fs, &dir.join(MARKER), b"keel incoming shard\n")?;
            state.slots.insert(id, Slot::Opening);
        }
        let fs = self.injected_fs.then(|| self.fs.clone());
        let opened = match base {
            Some(v) => Shard::open_incoming(&dir, self.opts.clone(), fs, Some(&self.host), v),
            None => Shard::open_in(&dir, self.opts.clone(), fs, Some(&self.host)),
        };
        self.settle(id, opened, Slot::Incoming)
    }

    /// Ends the reception of shard `id` and closes it. `finished`: its
    /// data is complete and durable, so the marker goes and the host may
    /// open it; otherwise the marker stays (opening it stays BUSY until a
    /// later transfer finishes it or the host drops it).
    pub(crate) fn release_incoming(&self, id: u32, finished: bool) -> Result<()> {
        let shard = {
            let mut guard = self.shards.lock();
            let state = guard.as_mut().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "engine is closed"))?;
            match state.slots.remove(&id) {
                Some(Slot::Incoming(s)) => s,
                Some(other) => {
                    state.slots.insert(id, other);
                    return Err(Error::invalid(format!("shard {id} is not being received")));
                }
                None => return Err(Error::invalid(format!("shard {id} is not being received"))),
            }
        };
        let closed = shard.close();
        if finished {
            closed?;
            let dir = self.shard_dir(id);
            let marker = dir.join(MARKER);
            self.fs.remove(&marker).map_err(|e| Error::io(format!("removing {}", marker.display()), e))?;
            self.sync_dir(&dir)?;
        }
        Ok(())
    }
}
