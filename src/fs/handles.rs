//! Shared open files: one handle per path, however many users hold it.
//!
//! `Handles<T>` hands out an `Arc<T>` for a path and opens the file only
//! when nobody holds it yet, so every reader of a WAL segment shares one
//! map (or one descriptor) of it: 10,000 readers cost one handle per
//! segment, not one each. The cache keeps only weak references: a handle
//! is closed when its last user drops it (no descriptor or map stays behind
//! for an idle file) and opened again by the next user that asks. `T` is
//! whatever an open file is for the caller (a map plus its parsed header,
//! a descriptor, ...), so one type serves every component.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

/// One shared handle per path (see the module comment).
pub struct Handles<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    open: HashMap<PathBuf, Weak<T>>,
    /// Entries of closed handles are swept when the map reaches this size
    /// (twice the entries left by the previous sweep: amortised O(1)).
    sweep_at: usize,
}

const MIN_SWEEP: usize = 64;

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Handles { inner: Mutex::new(Inner { open: HashMap::new(), sweep_at: MIN_SWEEP }) }
    }
}

impl<T> Handles<T> {
    /// The handle of `path`, shared with everyone else who holds it; `open`
    /// runs only when nobody does. It runs outside the cache's lock, so a
    /// slow open never holds up users of other files; if two users open the
    /// same file at once, the first to finish wins and the other's handle
    /// is dropped, so there is still one.
    pub fn get<E>(&self, path: &Path, open: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E> {
        if let Some(h) = self.inner.lock().open.get(path).and_then(Weak::upgrade) {
            return Ok(h);
        }
        let fresh = Arc::new(open()?);
        let mut inner = self.inner.lock();
        if let Some(h) = inner.open.get(path).and_then(Weak::upgrade) {
            return Ok(h);
        }
        if inner.open.len() >= inner.sweep_at {
            inner.open.retain(|_, w| w.strong_count() > 0);
            inner.sweep_at = (2 * inner.open.len()).max(MIN_SWEEP);
        }
        inner.open.insert(path.to_path_buf(), Arc::downgrade(&fresh));
        Ok(fresh)
    }

    /// How many handles are open (held by someone) right now.
    pub fn open_count(&self) -> usize {
        self.inner.lock().open.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io;

    #[test]
    fn one_handle_per_path_closed_with_its_last_user_and_reopened_on_demand() {
        let handles: Handles<String> = Handles::default();
        let opens = Cell::new(0);
        let open = |name: &str| {
            opens.set(opens.get() + 1);
            Ok::<_, io::Error>(name.to_string())
        };
        let a1 = handles.get(Path::new("a"), || open("a")).unwrap();
        let a2 = handles.get(Path::new("a"), || open("a")).unwrap();
        let b = handles.get(Path::new("b"), || open("b")).unwrap();
        assert!(Arc::ptr_eq(&a1, &a2), "two users of one path share one handle");
        assert_eq!((opens.get(), handles.open_count()), (2, 2));
        drop(a1);
        assert_eq!(handles.open_count(), 2, "a is still held");
        drop(a2);
        assert_eq!(handles.open_count(), 1, "a closed with its last user");
        let a3 = handles.get(Path::new("a"), || open("a")).unwrap();
        assert_eq!((opens.get(), a3.as_str(), b.as_str()), (3, "a", "b"), "a closed handle is opened again on demand");
    }

    #[test]
    fn a_failed_open_is_returned_and_cached_nowhere() {
        let handles: Handles<String> = Handles::default();
        let e = handles.get(Path::new("a"), || Err(io::Error::from_raw_os_error(libc::EMFILE))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
        assert_eq!(handles.open_count(), 0);
        let a = handles.get(Path::new("a"), || Ok::<_, io::Error>("a".to_string())).unwrap();
        assert_eq!(a.as_str(), "a");
    }

    #[test]
    fn entries_of_closed_handles_are_swept() {
        let handles: Handles<u64> = Handles::default();
        let kept: Vec<Arc<u64>> = (0..10).map(|i| handles.get(Path::new(&format!("kept{i}")), || Ok::<_, ()>(i)).unwrap()).collect();
        for i in 0..10_000u64 {
            drop(handles.get(Path::new(&format!("gone{i}")), || Ok::<_, ()>(i)).unwrap());
        }
        let entries = handles.inner.lock().open.len();
        assert!(entries <= 2 * MIN_SWEEP, "{entries} entries kept for 10 open handles");
        assert_eq!(handles.open_count(), kept.len());
    }
}
