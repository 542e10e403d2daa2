//! What a WAL retains and how its readers see it, at the edges a review
//! found: a reader of a write-behind log on a file system without a read
//! map, and a truncation whose unlink fails.

mod common;

use common::faultfs::FaultFs;
use common::TempDir;
use keel::fs::{FileSystem, StdFs};
use keel::status::*;
use keel::wal::{Durability, Options, ReadUpto, Wal};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;

fn rec(i: u64) -> Vec<u8> {
    format!("rec-{i:05}-").repeat(4).into_bytes()
}

/// A reader on a file system without a read map reads through its pread
/// window. In a write-behind log a frame can be written (numbered) and
/// still held in memory: the window read while it was held holds zeros
/// where it goes, and was taken as valid up to it, so once the frame
/// reached the file the reader decoded the zeros (CORRUPTION).
#[test]
fn a_pread_reader_never_serves_the_zeros_of_a_frame_held_behind() {
    let fs = FaultFs::new(1);
    let opts = Options {
        durability: Durability::None,
        restorable_tail: true,
        write_behind: 1 << 20,
        prepare_ahead: false,
        segment_size: 64 << 10,
        ..Options::default()
    };
    let wal = Wal::open_with_fs(Path::new("/wb"), opts, Arc::new(fs) as Arc<dyn FileSystem>).unwrap();
    wal.append(&rec(1)).unwrap();
    wal.append(&rec(2)).unwrap();
    let mut r = wal.reader(1, ReadUpto::Appended).unwrap(); // files 1 and 2
    wal.append(&rec(3)).unwrap(); // held in memory
    assert_eq!(r.next_record().unwrap(), Some((1, rec(1))));
    assert_eq!(r.next_record().unwrap(), Some((2, rec(2))));
    assert_eq!(r.next_record().unwrap(), None, "record 3 is not in the file yet");
    assert_eq!(wal.sync().unwrap(), 3); // files record 3
    let got = r.next_record().map_err(|e| (e.status, e.message));
    assert_eq!(got, Ok(Some((3, rec(3)))));
}

/// The real file system, except that removing the file named `fail` fails
/// with EIO, once.
struct FailOneRemove {
    real: StdFs,
    fail: Mutex<Option<String>>,
}

impl FileSystem for FailOneRemove {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.real.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.real.list(dir)
    }
    fn open(&self, path: &Path, writable: bool) -> std::io::Result<Arc<dyn keel::fs::File>> {
        self.real.open(path, writable)
    }
    fn create(&self, path: &Path) -> std::io::Result<Arc<dyn keel::fs::File>> {
        self.real.create(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.real.rename(from, to)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        let mut fail = self.fail.lock();
        if fail.as_deref().is_some_and(|n| path.file_name().is_some_and(|p| p == n)) {
            *fail = None;
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        drop(fail);
        self.real.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.real.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        self.real.exists(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.real.remove_dir_all(dir)
    }
    fn lock(&self, path: &Path) -> std::io::Result<Box<dyn std::any::Any + Send + Sync>> {
        self.real.lock(path)
    }
    fn map_readonly(&self, path: &Path) -> std::io::Result<Option<keel::fs::ReadMap>> {
        self.real.map_readonly(path)
    }
}

/// A truncation unlinks the segments it drops oldest first. When the
/// oldest could not go, the newer ones still went: the segment left
/// behind no longer chained to the listed ones, and the next open refused
/// the log (CORRUPTION: a segment missing in the middle). The unlinks now
/// stop at the first failure, what is left stays retained and listed, and
/// a later ack removes it.
#[test]
fn a_failed_unlink_leaves_a_log_that_opens_and_a_later_ack_finishes() {
    let d = TempDir::new("wal-unlink-fails");
    let fs = Arc::new(FailOneRemove { real: StdFs::mapped(), fail: Mutex::new(None) });
    let opts = Options { durability: Durability::None, segment_size: 64 << 10, prepare_ahead: false, ..Options::default() };
    let wal = Wal::open_with_fs(d.path(), opts.clone(), fs.clone() as Arc<dyn FileSystem>).unwrap();
    while wal.segments() < 4 {
        wal.append(&rec(wal.last_seq() + 1)).unwrap();
    }
    let last = wal.last_seq();
    *fs.fail.lock() = Some("00000000000000000001.wal".to_string());
    assert_eq!(wal.ack(last).unwrap_err().status, KEEL_STATUS_IO);
    assert_eq!(wal.first_seq(), 1, "what the failed truncation left is retained");
    wal.close().unwrap();
    let wal = Wal::open_with_fs(d.path(), opts.clone(), fs.clone() as Arc<dyn FileSystem>)
        .unwrap_or_else(|e| panic!("the log does not open after a failed unlink: {e}"));
    assert_eq!(wal.last_seq(), last);
    let mut r = wal.reader(1, ReadUpto::Appended).unwrap();
    for i in 1..=last {
        assert_eq!(r.next_record().unwrap().map(|(s, _)| s), Some(i));
    }
    drop(r);
    // Nothing fails now: the ack removes what is left.
    wal.ack(last).unwrap();
    assert!(wal.first_seq() > 1 && wal.segments() == 1, "first {} in {} segments", wal.first_seq(), wal.segments());
    assert!(!d.path().join("00000000000000000001.wal").exists());
    wal.close().unwrap();
}
