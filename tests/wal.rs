//! WAL behaviour through the Rust API, on the real file system.

mod common;

use common::{segment_files, TempDir};
use keel::status::*;
use keel::fs::{File, FileSystem, StdFs};
use keel::wal::{Durability, Options, ReadUpto, RecoveryMode, Wal};
use std::any::Any;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;

fn small(durability: Durability) -> Options {
    Options { durability, segment_size: 64 << 10, ..Options::default() }
}

fn read_all(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut r = wal.reader(from, ReadUpto::Appended).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        out.push(rec);
    }
    out
}

fn record(i: u64) -> Vec<u8> {
    format!("record-{i}-").repeat((i % 7 + 1) as usize).into_bytes()
}


#[test]
fn round_trip_batches_and_reopen() {
    let d = TempDir::new("roundtrip");
    let mut expected = Vec::new();
    {
        let wal = Wal::open(d.path(), Options::default()).unwrap();
        assert_eq!((wal.first_seq(), wal.last_seq(), wal.durable_seq()), (1, 0, 0));
        for i in 1..=10 {
            assert_eq!(wal.append(&record(i)).unwrap(), i);
            expected.push((i, record(i)));
        }
        let batch: Vec<Vec<u8>> = (11..=15).map(record).collect();
        let refs: Vec<&[u8]> = batch.iter().map(|r| &r[..]).collect();
        assert_eq!(wal.append_batch(&refs).unwrap(), 11);
        expected.extend((11..=15).map(|i| (i, record(i))));
        assert_eq!(wal.append(b"").unwrap(), 16, "empty records are records");
        expected.push((16, Vec::new()));
        assert_eq!(wal.durable_seq(), 16, "sync mode: durable covers every returned append");
        assert_eq!(read_all(&wal, 0), expected);
        assert_eq!(read_all(&wal, 13), expected[12..].to_vec(), "reading from inside a batch");
        wal.close().unwrap();
    }
    let wal = Wal::open(d.path(), Options::default()).unwrap();
    assert_eq!((wal.first_seq(), wal.last_seq(), wal.durable_seq()), (1, 16, 16));
    assert_eq!(read_all(&wal, 0), expected);
    assert_eq!(wal.append(b"after").unwrap(), 17, "sequence numbers continue after reopen");
}

#[test]
fn concurrent_appenders_get_dense_unique_sequences() {
    let d = TempDir::new("concurrent");
    let wal = Arc::new(Wal::open(d.path(), small(Durability::Sync)).unwrap());
    let threads = 8;
    let per = 150;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..per).map(|i| (wal.append(format!("t{t}-i{i}").as_bytes()).unwrap(), format!("t{t}-i{i}"))).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut got: Vec<(u64, String)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    got.sort();
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs, (1..=(threads * per) as u64).collect::<Vec<_>>());
    assert!(wal.durable_seq() >= (threads * per) as u64);
    let back = read_all(&wal, 0);
    for ((s1, data), (s2, rec)) in got.iter().zip(back.iter()) {
        assert_eq!((s1, data.as_bytes()), (s2, &rec[..]));
    }
}

#[test]
fn rotation_ack_keep_from_and_reader_pins() {
    let d = TempDir::new("truncate");
    let wal = Wal::open(d.path(), small(Durability::None)).unwrap();
    let payload = vec![7u8; 1000];
    for _ in 0..400 {
        wal.append(&payload).unwrap();
    }
    let before = segment_files(d.path()).len();
    assert!(before >= 5, "400 KB in 64 KiB segments makes several segments, got {before}");

    // A reader at 1 pins every segment.
    let mut pinned = wal.reader(1, ReadUpto::Appended).unwrap();
    wal.ack(300).unwrap();
    assert_eq!(wal.first_seq(), 1, "a reader pins its segments");
    assert_eq!(segment_files(d.path()).len(), before);
    assert_eq!(pinned.next_record().unwrap().unwrap().0, 1);
    drop(pinned);

    // keep_from holds records >= 100 whatever ack says.
    wal.set_keep_from(100).unwrap();
    wal.ack(300).unwrap();
    let first = wal.first_seq();
    assert!(first > 1 && first <= 100, "first retained {first} must be in (1, 100]");
    wal.set_keep_from(u64::MAX).unwrap();
    wal.ack(300).unwrap();
    let first = wal.first_seq();
    assert!(first > 100 && first <= 301, "first retained {first} must be in (100, 301]");
    assert!(segment_files(d.path()).len() < before);
    let err = wal.reader(first - 1, ReadUpto::Durable).err().unwrap();
    assert_eq!(err.status, KEEL_STATUS_TRUNCATED);
    assert_eq!(wal.set_keep_from(first - 1).unwrap_err().status, KEEL_STATUS_TRUNCATED);
    assert_eq!(wal.ack(10_000).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);

    // The active segment is never deleted, even when everything is acked.
    wal.ack(400).unwrap();
    assert_eq!(segment_files(d.path()).len(), 1);
    assert_eq!(read_all(&wal, 0).last().unwrap().0, 400);
    drop(wal);
    let wal = Wal::open(d.path(), small(Durability::None)).unwrap();
    assert_eq!(wal.last_seq(), 400, "a missing prefix is fine after reopen");
}

#[test]
fn pins_per_holder_keep_the_lowest_and_release_on_drop() {
    let d = TempDir::new("pins");
    let wal = Wal::open(d.path(), small(Durability::None)).unwrap();
    let payload = vec![7u8; 1000];
    for _ in 0..400 {
        wal.append(&payload).unwrap();
    }
    // Three holders: two pins and the host's keep_from. The lowest wins,
    // and a later holder does not overwrite an earlier one.
    let low = wal.pin(150).unwrap();
    let mut high = wal.pin(250).unwrap();
    wal.set_keep_from(320).unwrap();
    wal.ack(380).unwrap();
    let first = wal.first_seq();
    assert!(first > 1 && first <= 150, "first retained {first} must be in (1, 150]");
    assert_eq!(read_all(&wal, 150).first().unwrap().0, 150);

    // Dropping the lowest leaves the next one in charge.
    drop(low);
    wal.ack(380).unwrap();
    let first = wal.first_seq();
    assert!(first > 150 && first <= 250, "first retained {first} must be in (150, 250]");

    // A pin moves forward only.
    high.advance(100);
    assert_eq!(high.from(), 250);
    high.advance(330);
    wal.ack(380).unwrap();
    let first = wal.first_seq();
    assert!(first > 250 && first <= 320, "keep_from 320 now holds: first retained {first} must be in (250, 320]");

    // Nothing below the first retained record can be pinned; everything
    // retained can, in one step.
    assert_eq!(wal.pin(first - 1).err().unwrap().status, KEEL_STATUS_TRUNCATED);
    assert_eq!(wal.pin_retained().unwrap().from(), first);
    drop(high);
    wal.set_keep_from(u64::MAX).unwrap();
    wal.ack(380).unwrap();
    assert!(wal.first_seq() > 320);
}

#[test]
fn reader_follows_the_log_and_respects_the_durable_watermark() {
    let d = TempDir::new("follow");
    let wal = Wal::open(d.path(), small(Durability::None)).unwrap();
    let mut durable = wal.reader(0, ReadUpto::Durable).unwrap();
    let mut appended = wal.reader(0, ReadUpto::Appended).unwrap();
    assert!(appended.next_record().unwrap().is_none());
    for i in 1..=300 {
        wal.append(&record(i)).unwrap();
    }
    assert!(durable.next_record().unwrap().is_none(), "nothing synced yet in None mode");
    for i in 1..=300 {
        assert_eq!(appended.next_record().unwrap(), Some((i, record(i))));
    }
    assert_eq!(wal.sync().unwrap(), 300);
    for i in 1..=300 {
        assert_eq!(durable.next_record().unwrap(), Some((i, record(i))));
    }
    assert!(durable.next_record().unwrap().is_none());
    // Tailing one record at a time: each read comes after its append, and
    // the read-ahead window must not serve the zeros seen before it.
    for i in 301..=400 {
        wal.append(&record(i)).unwrap();
        assert_eq!(appended.next_record().unwrap(), Some((i, record(i))));
        assert!(appended.next_record().unwrap().is_none());
    }
    wal.close().unwrap();
    assert_eq!(durable.next_record().unwrap_err().status, KEEL_STATUS_CLOSED);
}

#[test]
fn periodic_mode_syncs_in_the_background() {
    let d = TempDir::new("periodic");
    let opts = Options { durability: Durability::Periodic(std::time::Duration::from_millis(5)), ..Options::default() };
    let wal = Wal::open(d.path(), opts).unwrap();
    let seq = wal.append(b"x").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while wal.durable_seq() < seq {
        assert!(std::time::Instant::now() < deadline, "background sync never advanced D");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn limits_and_locking() {
    let d = TempDir::new("limits");
    let wal = Wal::open(d.path(), small(Durability::None)).unwrap();
    let too_big = vec![0u8; 64 << 10];
    assert_eq!(wal.append(&too_big).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    assert_eq!(wal.append_batch(&[]).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    assert_eq!(Wal::open(d.path(), Options::default()).err().unwrap().status, KEEL_STATUS_BUSY);
    let bad = Options { segment_size: 1000, ..Options::default() };
    assert_eq!(Wal::open(&d.path().join("x"), bad).err().unwrap().status, KEEL_STATUS_INVALID_ARGUMENT);
    // The largest allowed record fits in a fresh segment.
    let limit = vec![1u8; (64 << 10) - 104];
    let seq = wal.append(&limit).unwrap();
    assert_eq!(read_all(&wal, seq)[0].1, limit);
}

/// Whether `needle` occurs in the log's segment files (what a crash of
/// the process would leave, the page cache being kept).
fn on_file(dir: &Path, needle: &[u8]) -> bool {
    segment_files(dir).iter().any(|f| std::fs::read(f).unwrap().windows(needle.len()).any(|w| w == needle))
}

/// A write-behind log holds its newest frames in memory: they reach the
/// file when the held bytes reach the limit, and before a reader, a sync
/// or a close (so each sees or makes durable every record appended). The
/// option is refused where no other log holds the records and no caller
/// waits for them (a `none` log without a restorable tail, `periodic`).
#[test]
fn write_behind_holds_frames_until_the_limit_a_reader_or_a_sync() {
    let d = TempDir::new("write-behind");
    let opts = Options { restorable_tail: true, write_behind: 4096, ..small(Durability::None) };
    let periodic = Durability::Periodic(std::time::Duration::from_millis(5));
    for refused in [Options { restorable_tail: false, ..opts.clone() }, Options { durability: periodic, ..opts.clone() }] {
        assert_eq!(Wal::open(&d.path().join("refused"), refused).err().unwrap().status, KEEL_STATUS_INVALID_ARGUMENT);
    }
    let wal = Wal::open(d.path(), opts).unwrap();
    let held = |i: u64| format!("held-{i:04}-").repeat(8).into_bytes();
    wal.append(&held(1)).unwrap();
    wal.append(&held(2)).unwrap();
    assert_eq!(wal.last_seq(), 2, "held frames have their sequence numbers");
    assert!(!on_file(d.path(), &held(1)) && !on_file(d.path(), &held(2)), "held frames are not written yet");
    // A reader writes them first and reads them.
    assert_eq!(read_all(&wal, 1), vec![(1, held(1)), (2, held(2))]);
    assert!(on_file(d.path(), &held(2)));
    // Past the limit one write takes every held frame.
    let mut i = 3;
    while !on_file(d.path(), &held(3)) {
        assert!(i < 3 + 4096 / 96 + 2, "no frame written after more than the limit");
        wal.append(&held(i)).unwrap();
        i += 1;
    }
    assert!(on_file(d.path(), &held(i - 1)), "the frames are written together, the last with the first");
    // A sync writes what is held and makes it durable.
    wal.append(&held(i)).unwrap();
    assert!(!on_file(d.path(), &held(i)));
    assert_eq!(wal.sync().unwrap(), i);
    assert!(on_file(d.path(), &held(i)));
    // So does a close (its mark frame included); the reopened log has all.
    wal.append(&held(i + 1)).unwrap();
    wal.close().unwrap();
    let wal = Wal::open(d.path(), small(Durability::None)).unwrap();
    assert_eq!(read_all(&wal, 1), (1..=i + 1).map(|j| (j, held(j))).collect::<Vec<_>>());
}

/// A `sync` log holds what `append_deferred` logs until its caller waits
/// for it: the wait writes the held frames with one write and makes them
/// durable; an `append`, which syncs, writes them before its own frame.
#[test]
fn a_sync_log_holds_deferred_frames_until_they_are_waited_for() {
    let d = TempDir::new("sync-write-behind");
    let wal = Wal::open(d.path(), Options { write_behind: 4096, ..small(Durability::Sync) }).unwrap();
    let held = |i: u64| format!("deferred-{i:04}-").repeat(8).into_bytes();
    assert_eq!(wal.append_deferred(&[&held(1)]).unwrap(), 1);
    assert_eq!(wal.append_deferred(&[&held(2), &held(3)]).unwrap(), 2);
    assert!(!on_file(d.path(), &held(1)) && !on_file(d.path(), &held(3)), "held, not written");
    assert_eq!(wal.durable_seq(), 0);
    wal.wait_durable(3).unwrap();
    assert_eq!(wal.durable_seq(), 3);
    assert!(on_file(d.path(), &held(1)) && on_file(d.path(), &held(3)), "the wait wrote them");
    assert_eq!(wal.append_deferred(&[&held(4)]).unwrap(), 4);
    assert_eq!(wal.append(&held(5)).unwrap(), 5, "a synced append after a held one");
    assert_eq!(wal.durable_seq(), 5);
    assert!(on_file(d.path(), &held(4)) && on_file(d.path(), &held(5)));
    wal.close().unwrap();
    let wal = Wal::open(d.path(), small(Durability::Sync)).unwrap();
    assert_eq!(read_all(&wal, 1), (1..=5).map(|j| (j, held(j))).collect::<Vec<_>>());
}

/// Appends `n` records with small segments and closes; returns the records.
fn fill(dir: &Path, n: u64) -> Vec<(u64, Vec<u8>)> {
    let wal = Wal::open(dir, small(Durability::None)).unwrap();
    for i in 1..=n {
        wal.append(&record(i)).unwrap();
    }
    wal.close().unwrap();
    (1..=n).map(|i| (i, record(i))).collect()
}

fn open_mode(dir: &Path, recovery: RecoveryMode) -> keel::Result<Wal> {
    Wal::open(dir, Options { recovery, ..small(Durability::None) })
}

/// Offset just past the last non-zero byte, rounded up to the frame alignment.
fn data_end(bytes: &[u8]) -> usize {
    let last = bytes.iter().rposition(|&b| b != 0).unwrap();
    (last + 8) & !7
}

#[test]
fn torn_tail_is_cut_except_in_absolute_mode() {
    let d = TempDir::new("torn");
    let expected = fill(d.path(), 50);
    let seg = segment_files(d.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = data_end(&bytes);
    // A frame header promising more than was written: a torn write.
    bytes[end..end + 12].copy_from_slice(&[1, 2, 3, 4, 200, 0, 0, 0, 1, 0, 0, 0]);
    std::fs::write(&seg, &bytes).unwrap();

    let err = open_mode(d.path(), RecoveryMode::Absolute).err().unwrap();
    assert_eq!(err.status, KEEL_STATUS_CORRUPTION);
    let wal = open_mode(d.path(), RecoveryMode::TolerateTail).unwrap();
    assert_eq!(read_all(&wal, 0), expected);
    assert_eq!(wal.append(b"next").unwrap(), 51);
    drop(wal);
    // The tail was zeroed and synced: even absolute mode now opens cleanly.
    assert_eq!(open_mode(d.path(), RecoveryMode::Absolute).unwrap().last_seq(), 51);
}

#[test]
fn mid_log_corruption_follows_the_recovery_mode() {
    let d = TempDir::new("midlog");
    let expected = fill(d.path(), 3000);
    let segs = segment_files(d.path());
    assert!(segs.len() >= 3);
    // Flip one payload byte of a record in the first segment.
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[64 + 32 + 3] ^= 0x40;
    std::fs::write(&segs[0], &bytes).unwrap();

    for mode in [RecoveryMode::TolerateTail, RecoveryMode::Absolute, RecoveryMode::PointInTime] {
        let err = open_mode(d.path(), mode).err().unwrap();
        assert_eq!(err.status, KEEL_STATUS_CORRUPTION, "{mode:?}");
        assert!(err.message.contains("follow the damage"), "{mode:?}: {}", err.message);
    }
    assert_eq!(segment_files(d.path()), segs, "a refused open changes nothing");

    let wal = open_mode(d.path(), RecoveryMode::Salvage).unwrap();
    assert!(read_all(&wal, 0).is_empty(), "the first record was damaged: the valid prefix is empty");
    assert_eq!(wal.last_seq(), 3000, "the sequence numbers of the records given up are never reissued");
    drop(wal);
    let aside: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("salvaged-"))
        .collect();
    assert_eq!(aside.len(), 1);
    let kept: usize = std::fs::read_dir(d.path().join(&aside[0])).unwrap().count();
    assert_eq!(kept, segs.len(), "salvage keeps a copy of every segment it gave up");
    let _ = expected;
}

#[test]
fn missing_middle_segment_is_corruption_and_stray_temp_files_are_removed() {
    let d = TempDir::new("hole");
    fill(d.path(), 3000);
    let segs = segment_files(d.path());
    std::fs::write(d.path().join("00000000000000099999.wal.tmp"), b"half-made segment").unwrap();
    let moved = d.path().join("moved");
    std::fs::rename(&segs[1], &moved).unwrap();
    let err = open_mode(d.path(), RecoveryMode::TolerateTail).err().unwrap();
    assert_eq!(err.status, KEEL_STATUS_CORRUPTION);
    assert!(err.message.contains("missing, replaced or swapped"), "{}", err.message);
    std::fs::rename(&moved, &segs[1]).unwrap();
    let wal = open_mode(d.path(), RecoveryMode::TolerateTail).unwrap();
    assert_eq!(wal.last_seq(), 3000);
    assert!(!d.path().join("00000000000000099999.wal.tmp").exists());
}

/// The unfinished files (`*.wal.tmp`) in `dir`, sorted.
fn temp_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wal.tmp"))
        .collect();
    names.sort();
    names
}

/// Unfinished files an earlier process left (a spare, a segment never
/// installed, a stray an earlier open moved aside and never removed) are
/// out of the writers' names when the open returns, and gone once a
/// worker or the close has removed them; a log that prepares nothing
/// ahead removes them during its open. The log's records are untouched.
#[test]
fn files_an_earlier_process_left_unfinished_are_moved_aside_then_removed() {
    for prepare_ahead in [true, false] {
        let d = TempDir::new("strays");
        let written = fill(d.path(), 500);
        let left = ["spare-1.wal.tmp", "00000000000000000501.wal.tmp", "stray-4.wal.tmp"];
        let mark = b"left by an earlier process".repeat(2600);
        for name in left {
            std::fs::write(d.path().join(name), &mark).unwrap();
        }
        let wal = Wal::open(d.path(), Options { prepare_ahead, ..small(Durability::Sync) }).unwrap();
        let seen = temp_files(d.path());
        // The earlier files keep no name a writer of this open may use (a
        // spare this open prepared may be there, but not with their bytes).
        let moved = |n: &String| ["stray-4.", "stray-5.", "stray-6."].iter().any(|s| n.starts_with(s));
        let earlier = |n: &String| std::fs::read(d.path().join(n)).is_ok_and(|b| b.starts_with(&mark[..26]));
        assert!(seen.iter().all(|n| moved(n) || (n.starts_with("spare-") && !earlier(n))), "{seen:?}");
        if !prepare_ahead {
            assert!(seen.is_empty(), "a log that prepares nothing ahead removes them during its open: {seen:?}");
        }
        assert_eq!(read_all(&wal, 0), written);
        wal.append(b"after").unwrap();
        wal.close().unwrap();
        assert_eq!(temp_files(d.path()), Vec::<String>::new());
        let wal = Wal::open(d.path(), small(Durability::Sync)).unwrap();
        assert_eq!(wal.last_seq(), 501);
    }
}

/// The real file system with switches that make syncs fail (with the
/// errno in `sync_errno`, 0 for none) or segment creation fail with ENOSPC.
struct FlakyFs {
    sync_errno: Arc<AtomicI32>,
    panic_on_sync: Arc<AtomicBool>,
    nospace_on_create: Arc<AtomicBool>,
    /// Writes that carry the bytes `full-` fail with ENOSPC.
    nospace_on_marker: Arc<AtomicBool>,
    /// Such a write first writes half its bytes, as a write(2) that the
    /// disk filled during returns short and the next one fails.
    nospace_partial: Arc<AtomicBool>,
    /// Writes that carry the record `t0-50` panic.
    panic_on_marker: Arc<AtomicBool>,
    /// Writes that carry the bytes `oom-` write half their bytes, then
    /// fail with ENOMEM (the page cache could not take the rest).
    enomem_on_marker: Arc<AtomicBool>,
    syncs: Arc<AtomicU32>,
}

struct FlakyFile {
    inner: Arc<dyn File>,
    sync_errno: Arc<AtomicI32>,
    panic_on_sync: Arc<AtomicBool>,
    nospace_on_marker: Arc<AtomicBool>,
    nospace_partial: Arc<AtomicBool>,
    panic_on_marker: Arc<AtomicBool>,
    enomem_on_marker: Arc<AtomicBool>,
    syncs: Arc<AtomicU32>,
}

impl File for FlakyFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.inner.read_at(buf, off)
    }
    fn write_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        if self.panic_on_marker.load(Ordering::SeqCst) && parts.iter().any(|p| p.windows(5).any(|w| w == b"t0-50")) {
            panic!("injected panic in a write");
        }
        if self.nospace_on_marker.load(Ordering::SeqCst) && parts.iter().any(|p| p.windows(5).any(|w| w == b"full-")) {
            if self.nospace_partial.load(Ordering::SeqCst) {
                let bytes = parts.concat();
                self.inner.write_at(&[&bytes[..bytes.len() / 2]], off)?;
            }
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if self.enomem_on_marker.load(Ordering::SeqCst) && parts.iter().any(|p| p.windows(4).any(|w| w == b"oom-")) {
            let bytes = parts.concat();
            self.inner.write_at(&[&bytes[..bytes.len() / 2]], off)?;
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.inner.write_at(parts, off)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn reserve(&self, len: u64) -> io::Result<()> {
        self.inner.reserve(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        match self.sync_errno.load(Ordering::SeqCst) {
            0 => {}
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
        if self.panic_on_sync.load(Ordering::SeqCst) {
            panic!("injected panic in fdatasync");
        }
        self.inner.sync_data()
    }
}

impl FlakyFs {
    fn wrap(&self, f: Arc<dyn File>) -> Arc<dyn File> {
        Arc::new(FlakyFile {
            inner: f,
            sync_errno: self.sync_errno.clone(),
            panic_on_sync: self.panic_on_sync.clone(),
            nospace_on_marker: self.nospace_on_marker.clone(),
            nospace_partial: self.nospace_partial.clone(),
            panic_on_marker: self.panic_on_marker.clone(),
            enomem_on_marker: self.enomem_on_marker.clone(),
            syncs: self.syncs.clone(),
        })
    }
}

impl FileSystem for FlakyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdFs::direct().create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdFs::direct().list(dir)
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn File>> {
        Ok(self.wrap(StdFs::direct().open(path, writable)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        if self.nospace_on_create.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(self.wrap(StdFs::direct().create(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs::direct().rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        StdFs::direct().remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdFs::direct().sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        StdFs::direct().exists(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdFs::direct().remove_dir_all(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        StdFs::direct().lock(path)
    }
}

fn flaky() -> (Arc<FlakyFs>, Arc<AtomicI32>, Arc<AtomicBool>) {
    let sync_errno = Arc::new(AtomicI32::new(0));
    let nospace = Arc::new(AtomicBool::new(false));
    let fs = Arc::new(FlakyFs {
        sync_errno: sync_errno.clone(),
        panic_on_sync: Arc::default(),
        nospace_on_create: nospace.clone(),
        nospace_on_marker: Arc::default(),
        nospace_partial: Arc::default(),
        panic_on_marker: Arc::default(),
        enomem_on_marker: Arc::default(),
        syncs: Arc::default(),
    });
    (fs, sync_errno, nospace)
}

#[test]
fn failed_fsync_poisons_and_is_never_retried_into_an_ack() {
    let d = TempDir::new("eio");
    let (fs, eio, _) = flaky();
    // No preparer: its spare's sync, at a moment of the worker's choosing,
    // would land in the sync count checked below.
    let opts = Options { prepare_ahead: false, ..Options::default() };
    let wal = Wal::open_with_fs(d.path(), opts, fs.clone()).unwrap();
    wal.append(b"one").unwrap();
    eio.store(libc::EIO, Ordering::SeqCst);
    let err = wal.append(b"two").unwrap_err();
    assert_eq!(err.status, KEEL_STATUS_IO, "{err}");
    assert_eq!(wal.durable_seq(), 1, "D freezes at the last successful sync");
    eio.store(0, Ordering::SeqCst);
    let syncs = fs.syncs.load(Ordering::SeqCst);
    assert_eq!(wal.append(b"three").unwrap_err().status, KEEL_STATUS_POISONED);
    assert_eq!(wal.sync().unwrap_err().status, KEEL_STATUS_POISONED);
    assert_eq!(fs.syncs.load(Ordering::SeqCst), syncs, "a poisoned WAL never syncs again");
    assert_eq!(wal.durable_seq(), 1);
    assert_eq!(wal.close().unwrap_err().status, KEEL_STATUS_POISONED);
    // Reopening recovers what reached the file (record 2 was written, not acknowledged).
    let wal = Wal::open(d.path(), Options::default()).unwrap();
    assert!(wal.last_seq() >= 1);
    assert_eq!(read_all(&wal, 0)[0], (1, b"one".to_vec()));
}

/// An fdatasync that itself fails with ENOMEM or EAGAIN, which keel
/// reports as RESOURCE (out of memory), may have dropped the pages it
/// could not write back, as one failing with EIO: the log is poisoned and
/// D stays. The WAL took every RESOURCE from a sync for the engine's
/// descriptor cache failing to reopen the segment (no fdatasync ran): it
/// stayed usable and the next sync, which found nothing left to write,
/// reported the record durable. Both syncs: a group commit's, and the
/// one of a full segment at a rotation (a log with a restorable tail).
#[test]
fn an_fdatasync_failing_with_enomem_or_eagain_poisons_the_log() {
    for errno in [libc::ENOMEM, libc::EAGAIN] {
        let d = TempDir::new("enomem-sync");
        let (fs, sync_errno, _) = flaky();
        let opts = Options { prepare_ahead: false, ..Options::default() };
        let wal = Wal::open_with_fs(d.path(), opts, fs.clone()).unwrap();
        wal.append(b"one").unwrap();
        sync_errno.store(errno, Ordering::SeqCst);
        let err = wal.append(b"two").unwrap_err();
        sync_errno.store(0, Ordering::SeqCst);
        let later = wal.sync().map_err(|e| e.status);
        assert!(
            err.status == KEEL_STATUS_IO && later == Err(KEEL_STATUS_POISONED) && wal.durable_seq() == 1,
            "errno {errno}: the failed sync returned {err}; the next sync {later:?}, D {}",
            wal.durable_seq()
        );

        let d = TempDir::new("enomem-rotation");
        let (fs, sync_errno, _) = flaky();
        let opts = Options { prepare_ahead: false, restorable_tail: true, ..small(Durability::None) };
        let wal = Wal::open_with_fs(d.path(), opts, fs.clone()).unwrap();
        sync_errno.store(errno, Ordering::SeqCst);
        let err = loop {
            if let Err(e) = wal.append(&[7u8; 4000]) {
                break e;
            }
        };
        sync_errno.store(0, Ordering::SeqCst);
        assert_eq!(wal.segments(), 1, "errno {errno}: the append that failed was the first rotation's ({err})");
        let later = wal.append(&[7u8; 4000]).map_err(|e| e.status);
        assert!(
            err.status == KEEL_STATUS_IO && later == Err(KEEL_STATUS_POISONED) && wal.durable_seq() == 0,
            "errno {errno}: the full segment's failed sync returned {err}; the next append {later:?}, D {}",
            wal.durable_seq()
        );
    }
}

/// A frame write that fails with ENOMEM after part of its bytes reached
/// the file poisons the log, as any failed frame write but a full disk
/// (W9). It was taken for the descriptor cache's failed reopen (RESOURCE):
/// the next, shorter frame went to the same offset and the failed one's
/// tail stayed after it, garbage past the end of a cleanly closed log.
#[test]
fn a_frame_write_failing_with_enomem_poisons_the_log() {
    let d = TempDir::new("enomem-write");
    let (fs, _, _) = flaky();
    fs.enomem_on_marker.store(true, Ordering::SeqCst);
    let opts = Options { prepare_ahead: false, ..small(Durability::None) };
    let wal = Wal::open_with_fs(d.path(), opts, fs.clone()).unwrap();
    assert_eq!(wal.append(b"one").unwrap(), 1);
    let err = wal.append(format!("oom-{}", "x".repeat(3000)).as_bytes()).unwrap_err();
    let later = wal.append(b"two").map_err(|e| e.status);
    assert!(
        err.status == KEEL_STATUS_IO && later == Err(KEEL_STATUS_POISONED),
        "the failed write returned {err}; the next append {later:?}"
    );
    drop(wal);
    let wal = Wal::open(d.path(), small(Durability::None)).unwrap();
    assert_eq!(read_all(&wal, 0), [(1, b"one".to_vec())]);
    wal.close().unwrap();
}

/// Group commit parks appenders behind a leader: when the leader's sync
/// fails (EIO, or a panic inside the file system), every parked appender
/// must wake with an error (none may hang and none may succeed after D
/// froze), and the log stays poisoned.
fn group_sync_failure_wakes_every_parked_appender(name: &str, fail: fn(&FlakyFs), first_error: u32) {
    let d = TempDir::new(name);
    let (fs, _, _) = flaky();
    let wal = Arc::new(Wal::open_with_fs(d.path(), Options::default(), fs.clone()).unwrap());
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let (wal, fs) = (wal.clone(), fs.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if t == 0 && i == 50 {
                        fail(&fs);
                    }
                    match wal.append(format!("t{t}-{i}").as_bytes()) {
                        Ok(seq) => assert!(wal.durable_seq() >= seq),
                        Err(e) => return e.status,
                    }
                }
                unreachable!()
            })
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let statuses: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let _ = tx.send(statuses);
    });
    let statuses = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("an appender hung after a failed sync");
    assert!(statuses.contains(&first_error), "{statuses:?}");
    assert!(statuses.iter().all(|&s| s == first_error || s == KEEL_STATUS_POISONED), "{statuses:?}");
    let frozen = wal.durable_seq();
    assert_eq!(wal.append(b"later").unwrap_err().status, KEEL_STATUS_POISONED);
    assert_eq!(wal.durable_seq(), frozen);
}

#[test]
fn a_failed_group_sync_wakes_every_parked_appender_with_an_error() {
    group_sync_failure_wakes_every_parked_appender("eio-group", |fs| fs.sync_errno.store(libc::EIO, Ordering::SeqCst), KEEL_STATUS_IO);
}

/// An fdatasync that fails with ENOSPC (writeback found no room, as on a
/// thin-provisioned device: tests/failing_device.rs meets it for real)
/// may have lost the written pages as EIO does: the log is poisoned and
/// the call says IO, not NO_SPACE, which would promise that a retry can
/// succeed.
#[test]
fn a_sync_that_fails_with_enospc_poisons_the_log_and_says_io() {
    group_sync_failure_wakes_every_parked_appender("enospc-group", |fs| fs.sync_errno.store(libc::ENOSPC, Ordering::SeqCst), KEEL_STATUS_IO);
}

#[test]
fn a_panicking_group_sync_poisons_and_wakes_every_parked_appender() {
    group_sync_failure_wakes_every_parked_appender("panic-group", |fs| fs.panic_on_sync.store(true, Ordering::SeqCst), KEEL_STATUS_PANIC);
}

/// As above, with the panic in the leader's write of the group's frames
/// (thread 0's 50th record): the leader must still hand over, or every
/// appender parked behind it waits forever.
#[test]
fn a_panicking_group_write_poisons_and_wakes_every_parked_appender() {
    group_sync_failure_wakes_every_parked_appender("panic-write", |fs| fs.panic_on_marker.store(true, Ordering::SeqCst), KEEL_STATUS_PANIC);
}

/// SYNC-mode appenders hand their frames to the group-commit leader, which
/// writes a group with one write. A full disk must still fail only the
/// appends it hits: here every write carrying a "full-" record fails with
/// ENOSPC, so each group holding one is retried frame by frame; the other
/// appends of the group succeed, and the log holds exactly them, densely.
#[test]
fn a_full_disk_fails_only_the_appends_it_hits_inside_a_group() {
    let d = TempDir::new("nospace-group");
    let (fs, _, _) = flaky();
    fs.nospace_on_marker.store(true, Ordering::SeqCst);
    let wal = Arc::new(Wal::open_with_fs(d.path(), small(Durability::Sync), fs.clone()).unwrap());
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut ok = Vec::new();
                for i in 0..150 {
                    let full = (t + i) % 7 == 0;
                    let payload = format!("{}{t}-{i}-{}", if full { "full-" } else { "ok-" }, "x".repeat(i % 50));
                    match wal.append(payload.as_bytes()) {
                        Ok(seq) => {
                            assert!(!full, "an append whose write fails succeeded");
                            ok.push((seq, payload.into_bytes()));
                        }
                        Err(e) => {
                            assert!(full, "append {payload} failed: {e}");
                            assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "{e}");
                        }
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok: Vec<(u64, Vec<u8>)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    ok.sort();
    let seqs: Vec<u64> = ok.iter().map(|r| r.0).collect();
    assert_eq!(seqs, (1..=ok.len() as u64).collect::<Vec<_>>(), "failed appends consumed no sequence number");
    assert_eq!(read_all(&wal, 0), ok);
    fs.nospace_on_marker.store(false, Ordering::SeqCst);
    Arc::try_unwrap(wal).ok().unwrap().close().unwrap();
    let wal = Wal::open(d.path(), small(Durability::Sync)).unwrap();
    assert_eq!(read_all(&wal, 0), ok, "after reopen");
}

#[test]
fn disk_full_on_rotation_fails_cleanly_and_the_log_goes_on() {
    let d = TempDir::new("enospc");
    let (fs, _, nospace) = flaky();
    let wal = Wal::open_with_fs(d.path(), small(Durability::Sync), fs).unwrap();
    let payload = vec![3u8; 4000];
    let mut last = 0;
    nospace.store(true, Ordering::SeqCst);
    let err = loop {
        match wal.append(&payload) {
            Ok(s) => last = s,
            Err(e) => break e,
        }
    };
    assert_eq!(err.status, KEEL_STATUS_NO_SPACE, "{err}");
    assert_eq!(wal.last_seq(), last, "the failed append consumed no sequence number");
    nospace.store(false, Ordering::SeqCst);
    assert_eq!(wal.append(&payload).unwrap(), last + 1, "space is back: appends go on, no hole");
    drop(wal);
    let wal = Wal::open(d.path(), small(Durability::Sync)).unwrap();
    let back = read_all(&wal, 0);
    assert_eq!(back.len() as u64, last + 1);
    assert!(back.iter().enumerate().all(|(i, (s, p))| *s == i as u64 + 1 && *p == payload));
}

#[test]
fn a_spare_segment_is_prepared_ahead_and_removed_on_close() {
    let d = TempDir::new("spare");
    let wal = Wal::open(d.path(), small(Durability::Sync)).unwrap();
    let spares = || -> Vec<PathBuf> {
        std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("spare-"))
            .collect()
    };
    let wait_for_spare = || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !spares().iter().any(|p| std::fs::metadata(p).map(|m| m.len() >= 64 << 10).unwrap_or(false)) {
            assert!(std::time::Instant::now() < deadline, "the preparer never made a spare segment");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    wait_for_spare();
    let payload = vec![9u8; 4000];
    for _ in 0..20 {
        wal.append(&payload).unwrap(); // > 64 KiB: at least one rotation
    }
    assert!(segment_files(d.path()).len() >= 2);
    wait_for_spare(); // the next one is prepared again after the rotation
    wal.close().unwrap();
    assert!(spares().is_empty(), "close removes the spare");
    let wal = Wal::open(d.path(), small(Durability::Sync)).unwrap();
    assert_eq!(read_all(&wal, 0).len(), 20);
}

/// The last numbers of the 64-bit range: an append that would pass
/// u64::MAX - 1 is refused before anything is written, whichever path
/// writes it (a SYNC append goes through the group commit's combined
/// write, the other modes write their own frame), and nothing wraps.
#[test]
fn appends_past_the_last_sequence_number_are_refused_in_every_mode() {
    for durability in [Durability::Sync, Durability::None] {
        let d = TempDir::new("exhausted");
        // An extent record alone starts a log high (as a shard received
        // from a peer's snapshot does).
        let start = keel::wal::extent::Extent { durable: 0, next_seq: u64::MAX - 2, segments: Vec::new() };
        keel::wal::extent::write(&StdFs::direct(), d.path(), &start).unwrap();
        let wal = Wal::open(d.path(), small(durability)).unwrap();
        assert_eq!(wal.append(b"a").unwrap(), u64::MAX - 2, "{durability:?}");
        let err = wal.append_batch(&[b"b", b"c"]).expect_err("a batch past u64::MAX - 1 was taken");
        assert_eq!(err.status, KEEL_STATUS_INVALID_ARGUMENT, "{durability:?}: {}", err.message);
        assert_eq!(wal.last_seq(), u64::MAX - 2, "{durability:?}: the refused batch took no number");
        assert_eq!(wal.append(b"d").unwrap(), u64::MAX - 1, "{durability:?}: the log is still usable");
        let err = wal.append(b"e").expect_err("a record numbered u64::MAX was taken");
        assert_eq!(err.status, KEEL_STATUS_INVALID_ARGUMENT, "{durability:?}: {}", err.message);
        assert_eq!(wal.last_seq(), u64::MAX - 1, "{durability:?}");
        wal.close().unwrap();
        let wal = Wal::open(d.path(), small(durability)).unwrap();
        assert_eq!(wal.last_seq(), u64::MAX - 1, "{durability:?}: reopened");
        let got: Vec<(u64, Vec<u8>)> = read_all(&wal, 0);
        assert_eq!(got, vec![(u64::MAX - 2, b"a".to_vec()), (u64::MAX - 1, b"d".to_vec())], "{durability:?}");
    }
}

/// Waiting for a record that was never appended is a bad argument, not a
/// wait: no sync can make it durable (the caller would spin forever,
/// leading one empty group commit after another).
#[test]
fn waiting_for_a_record_never_appended_is_refused() {
    for durability in [Durability::Sync, Durability::None] {
        let d = TempDir::new("wait-beyond");
        let wal = Wal::open(d.path(), small(durability)).unwrap();
        let last = wal.append(b"a").unwrap();
        wal.wait_durable(last).unwrap();
        let err = wal.wait_durable(last + 1).expect_err("a wait for a record never appended returned");
        assert_eq!(err.status, KEEL_STATUS_INVALID_ARGUMENT, "{durability:?}: {}", err.message);
        assert_eq!(wal.append(b"b").unwrap(), last + 1, "{durability:?}: the log is still usable");
        wal.wait_durable(last + 1).unwrap();
        wal.close().unwrap();
    }
}

/// An open that recovers the log and then fails (here the disk is too
/// full for its extent record) removes the unfinished files an earlier
/// process left, as a refused recovery does: nothing else would, and a
/// stray spare holds the very space the next open needs.
#[test]
fn an_open_that_fails_after_recovery_removes_the_stray_files() {
    use common::hookfs::{Call, HookFs};
    for prepare_ahead in [false, true] {
        let d = TempDir::new("stray-nospace");
        let opts = Options { durability: Durability::None, prepare_ahead, ..Options::default() };
        let wal = Wal::open(d.path(), opts.clone()).unwrap();
        wal.append(b"one").unwrap();
        wal.close().unwrap();
        std::fs::write(d.path().join("spare-3.wal.tmp"), vec![0u8; 64 << 10]).unwrap();
        let fs = HookFs::new(|call, path| match call == Call::Create && path.file_name().is_some_and(|n| n == "wal.meta.tmp") {
            true => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            false => Ok(()),
        });
        let err = Wal::open_with_fs(d.path(), opts.clone(), fs).err().expect("the extent record cannot be written");
        assert_eq!(err.status, KEEL_STATUS_NO_SPACE, "{err}");
        let left = temp_files(d.path());
        assert!(left.is_empty(), "prepare_ahead {prepare_ahead}: the failed open left {left:?}");
        let wal = Wal::open(d.path(), opts).unwrap();
        assert_eq!(wal.append(b"two").unwrap(), 2);
        wal.close().unwrap();
    }
}

/// A stray file whose name takes the last number (no keel writes one, but
/// anything may be left in the folder) must not stop the open: the next
/// stray name is not an addition that overflows.
#[test]
fn a_stray_named_with_the_last_number_is_removed_like_any() {
    let d = TempDir::new("stray-max");
    let opts = Options { prepare_ahead: false, ..small(Durability::None) };
    let wal = Wal::open(d.path(), opts.clone()).unwrap();
    wal.append(b"one").unwrap();
    wal.close().unwrap();
    for name in [format!("stray-{}.wal.tmp", u64::MAX), "spare-1.wal.tmp".to_string()] {
        std::fs::write(d.path().join(name), b"left by an earlier process").unwrap();
    }
    let wal = Wal::open(d.path(), opts).unwrap();
    let left = temp_files(d.path());
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(wal.append(b"two").unwrap(), 2);
    wal.close().unwrap();
}

/// A rotation whose directory sync fails after the new segment was
/// renamed into place, with an error that leaves the log usable (ENOSPC),
/// leaves the log as it was: appends that fit go on in the old segment,
/// and the log, closed cleanly, opens even in ABSOLUTE mode with exactly
/// the acknowledged records (no segment named for a number the old one
/// went on to use is left behind).
#[test]
fn a_rotation_whose_directory_sync_fails_leaves_no_segment_behind() {
    use common::hookfs::{Call, HookFs};
    let d = TempDir::new("syncdir-nospace");
    let full = Arc::new(AtomicBool::new(false));
    let f = full.clone();
    let fs = HookFs::new(move |call, _| match call == Call::SyncDir && f.swap(false, Ordering::SeqCst) {
        true => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        false => Ok(()),
    });
    let opts = Options { prepare_ahead: false, ..small(Durability::Sync) };
    let wal = Wal::open_with_fs(d.path(), opts.clone(), fs).unwrap();
    let mut acked = Vec::new();
    for i in 1..=60 {
        let r = vec![i as u8; 1000];
        assert_eq!(wal.append(&r).unwrap(), i);
        acked.push((i, r));
    }
    full.store(true, Ordering::SeqCst);
    let big = vec![0xEE; 8000];
    match wal.append(&big) {
        Ok(seq) => acked.push((seq, big)),
        Err(e) => assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "{e}"),
    }
    // A record that still fits the first segment.
    let small_rec = b"fits".to_vec();
    if let Ok(seq) = wal.append(&small_rec) {
        acked.push((seq, small_rec));
    }
    wal.close().unwrap();
    let wal = Wal::open(d.path(), Options { recovery: RecoveryMode::Absolute, ..small(Durability::Sync) })
        .unwrap_or_else(|e| panic!("a cleanly closed log that lost nothing: {e}"));
    assert_eq!(read_all(&wal, 0), acked);
    wal.close().unwrap();
}

/// A write that the disk filled during may have put part of its frame in
/// the file before it failed. The next frame, shorter, goes to the same
/// offset; what the failed one left past it must not stay, or a log
/// closed cleanly after it ends in garbage that ABSOLUTE refuses as a
/// torn tail.
#[test]
fn a_frame_write_cut_short_by_a_full_disk_leaves_nothing_past_the_log() {
    for durability in [Durability::Sync, Durability::None] {
        let d = TempDir::new("nospace-partial");
        let (fs, _, _) = flaky();
        fs.nospace_on_marker.store(true, Ordering::SeqCst);
        fs.nospace_partial.store(true, Ordering::SeqCst);
        let opts = Options { prepare_ahead: false, ..small(durability) };
        let wal = Wal::open_with_fs(d.path(), opts, fs.clone()).unwrap();
        assert_eq!(wal.append(b"one").unwrap(), 1);
        let err = wal.append(format!("full-{}", "x".repeat(3000)).as_bytes()).unwrap_err();
        assert_eq!(err.status, KEEL_STATUS_NO_SPACE, "{durability:?}: {err}");
        assert_eq!(wal.append(b"two").unwrap(), 2, "{durability:?}: the failed append consumed nothing");
        wal.close().unwrap();
        let wal = Wal::open(d.path(), Options { recovery: RecoveryMode::Absolute, ..small(durability) })
            .unwrap_or_else(|e| panic!("{durability:?}: a cleanly closed log that lost nothing: {e}"));
        assert_eq!(read_all(&wal, 0), [(1, b"one".to_vec()), (2, b"two".to_vec())]);
        wal.close().unwrap();
    }
}
