//! The LOCK file that keeps a directory to one open engine or WAL.
//!
//! A POSIX record lock (fcntl `F_SETLK`), not `flock`: a process that
//! forks (a host starting a program, Go's os/exec, a test harness) hands
//! its child a copy of every descriptor until the child's exec, and a
//! `flock` lives on in that copy, so an engine closed and opened again
//! while another thread forks would find its own directory still locked.
//! Record locks belong to the process and no child inherits them. Two
//! things they do not do are done here: they never conflict within one
//! process, so a process-wide list of the locked files (device, inode)
//! refuses a second open; and closing any descriptor of the file drops the
//! lock, so the list is checked before the file is opened, and nothing
//! else in keel opens a LOCK file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// (device, inode) of every LOCK file this process holds.
static HELD: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

fn held() -> MutexGuard<'static, Vec<(u64, u64)>> {
    // The list stays consistent whatever panicked while holding it: every
    // change is one push or one retain.
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

fn busy() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

/// Holds the lock until dropped.
pub struct DirLock {
    /// Taken in `drop`: the descriptor closes under the list's mutex.
    file: Option<File>,
    id: (u64, u64),
}

/// Locks `path` (created if missing); WouldBlock when this or another
/// process holds it.
pub fn lock(path: &Path) -> io::Result<DirLock> {
    let mut held = held();
    if let Ok(m) = std::fs::metadata(path) {
        if held.contains(&(m.dev(), m.ino())) {
            return Err(busy());
        }
    }
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    let m = file.metadata()?;
    let id = (m.dev(), m.ino());
    if held.contains(&id) {
        // The path now names a file this process locked under another
        // name (it was renamed in between): closing this descriptor would
        // drop that lock, so it stays open for the process's life.
        std::mem::forget(file);
        return Err(busy());
    }
    // SAFETY: `flock` is a plain C struct, valid zeroed; fcntl reads it
    // during the call only, on a descriptor we own.
    let set = unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl)
    };
    if set != 0 {
        let e = io::Error::last_os_error();
        // Held by another process (this one holds no lock on the file, so
        // closing the descriptor here releases nothing).
        return Err(match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EAGAIN) => busy(),
            _ => e,
        });
    }
    held.push(id);
    Ok(DirLock { file: Some(file), id })
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let mut held = held();
        held.retain(|h| *h != self.id);
        // Closed before the mutex is released: a lock() waiting for it
        // must not take the record lock that this close would then drop.
        drop(self.file.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_process_and_free_again_after_drop() {
        let dir = crate::test_dir::TestDir::new("dirlock");
        let path = dir.join("LOCK");
        let first = lock(&path).unwrap();
        assert_eq!(lock(&path).err().map(|e| e.kind()), Some(io::ErrorKind::WouldBlock));
        // The refused attempt closed nothing of the holder's: still held.
        assert_eq!(lock(&path).err().map(|e| e.kind()), Some(io::ErrorKind::WouldBlock));
        drop(first);
        drop(lock(&path).unwrap());
    }
}
