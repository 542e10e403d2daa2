//! Segment sizing (docs/WAL.md, "Segment sizes"): a log starts with a
//! 64 KiB segment and a spare of the next size, each rotation doubles the
//! next segment up to `segment_size`, and a record too large for the
//! planned size gets a segment that fits it. So an idle or small log holds
//! little disk, grown logs recover in every mode, and running out of disk
//! on a growing or fitted rotation fails the one append cleanly.

mod common;

use common::faultfs::{FaultFs, Faults};
use common::{segment_files, TempDir};
use keel::status::*;
use keel::fs::StdFs;
use keel::wal::{Durability, Options, ReadUpto, RecoveryMode, Wal};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const MODES: [RecoveryMode; 4] =
    [RecoveryMode::TolerateTail, RecoveryMode::Absolute, RecoveryMode::PointInTime, RecoveryMode::Salvage];
const DURABILITIES: [Durability; 3] = [Durability::Sync, Durability::Periodic(Duration::from_millis(100)), Durability::None];

/// Disk blocks allocated to the files of `dir` (not its size on paper).
fn allocated(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap()).filter(|m| m.is_file()).map(|m| m.blocks() * 512).sum()
}

fn spares(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("spare-"))
        .collect()
}

/// Waits until `done` holds, for the WAL's worker: without a deadline
/// that could fail a slow run (up to a minute), then fails saying `what`.
fn eventually(done: impl Fn() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{}", what());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the preparer has published a spare of `size` bytes.
fn wait_for_spare(dir: &Path, size: u64) -> PathBuf {
    let find = || spares(dir).into_iter().find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == size));
    eventually(|| find().is_some(), || format!("no spare of {size} bytes in {}: {:?}", dir.display(), spares(dir)));
    find().expect("a published spare stays until a rotation takes it")
}

fn sizes(dir: &Path) -> Vec<u64> {
    segment_files(dir).iter().map(|p| std::fs::metadata(p).unwrap().len()).collect()
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 131 + i * 7) as u8).collect()
}

/// Every record of `wal` from 1, in order.
fn read_all(wal: &Wal) -> Vec<Vec<u8>> {
    let mut r = wal.reader(1, ReadUpto::Appended).unwrap();
    let mut out = Vec::new();
    while let Some((seq, rec)) = r.next_record().unwrap() {
        assert_eq!(seq, out.len() as u64 + 1, "records are dense");
        out.push(rec);
    }
    out
}

/// Reopens the log in every recovery mode and checks it holds `expected`.
fn recovers_in_every_mode(dir: &Path, opts: &Options, expected: &[Vec<u8>]) {
    for recovery in MODES {
        let wal = Wal::open(dir, Options { recovery, ..opts.clone() }).unwrap_or_else(|e| panic!("{recovery:?}: {e}"));
        assert!(wal.recovery_report().is_none(), "{recovery:?}: a grown log is whole: {:?}", wal.recovery_report());
        assert_eq!(wal.last_seq(), expected.len() as u64, "{recovery:?}");
        assert!(read_all(&wal) == expected, "{recovery:?}: records differ after reopen");
        wal.close().unwrap();
    }
}

#[test]
fn an_idle_or_small_log_holds_at_most_a_mebibyte() {
    for durability in DURABILITIES {
        let d = TempDir::new("growth-idle");
        let opts = Options { durability, ..Options::default() };
        assert_eq!(opts.segment_size, 64 * MIB, "the default maximum");
        let wal = Wal::open(d.path(), opts.clone()).unwrap();
        wait_for_spare(d.path(), 128 * KIB);
        assert_eq!(sizes(d.path()), [64 * KIB], "{durability:?}: the first segment is small");
        let idle = allocated(d.path());
        assert!(idle <= MIB, "{durability:?}: an idle log holds {idle} bytes");
        // A few small appends, crossing one rotation.
        let mut expected = Vec::new();
        for seq in 1..=600 {
            expected.push(payload(seq, 100));
            assert_eq!(wal.append(&expected[seq as usize - 1]).unwrap(), seq);
        }
        assert_eq!(sizes(d.path()), [64 * KIB, 128 * KIB], "{durability:?}");
        wait_for_spare(d.path(), 256 * KIB);
        let small = allocated(d.path());
        assert!(small <= MIB, "{durability:?}: a small log holds {small} bytes");
        wal.close().unwrap();
        assert!(spares(d.path()).is_empty(), "close removes the spare");
        // Reopened idle: the spare is planned small again.
        let wal = Wal::open(d.path(), opts.clone()).unwrap();
        wait_for_spare(d.path(), 128 * KIB);
        let reopened = allocated(d.path());
        assert!(reopened <= MIB, "{durability:?}: a reopened small log holds {reopened} bytes");
        assert!(read_all(&wal) == expected);
        wal.close().unwrap();
    }
}

/// Pages of `path` that are in the page cache.
fn resident_pages(path: &Path) -> usize {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    // SAFETY: a fresh read-only shared map of `len` bytes of a file we
    // opened, checked below and unmapped before returning; mincore only
    // writes `len / page` bytes into `vec`, which is that long.
    unsafe {
        let ptr = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
        assert_ne!(ptr, libc::MAP_FAILED);
        let mut vec = vec![0u8; len.div_ceil(page)];
        assert_eq!(libc::mincore(ptr, len, vec.as_mut_ptr()), 0);
        libc::munmap(ptr, len);
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }
}

/// Whether `dir` is on tmpfs, whose fallocate puts pages in memory anyway.
fn on_tmpfs(dir: &Path) -> bool {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string, `st` a valid out-pointer.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    st.f_type == libc::TMPFS_MAGIC
}

/// The memory-mapped modes fault a spare's pages in only once the log has
/// written: a log that sits open holds no page cache for them. (The
/// active segment is not checked: writing its header through the map
/// reads ahead around it.)
#[test]
fn an_idle_log_faults_no_pages_in() {
    for durability in [Durability::None, Durability::Periodic(Duration::from_millis(100))] {
        let d = TempDir::new("growth-fault");
        if on_tmpfs(d.path()) {
            return;
        }
        let wal = Wal::open(d.path(), Options { durability, ..Options::default() }).unwrap();
        let spare = wait_for_spare(d.path(), 128 * KIB);
        assert_eq!(resident_pages(&spare), 0, "{durability:?}: the idle log's spare was faulted in");
        drop(wal);
        // Reopened (the recovered segment is mapped again): still nothing.
        let wal = Wal::open(d.path(), Options { durability, ..Options::default() }).unwrap();
        let spare = wait_for_spare(d.path(), 128 * KIB);
        assert_eq!(resident_pages(&spare), 0, "{durability:?}: the reopened log's spare was faulted in");
        wal.append(b"one").unwrap();
        wal.close().unwrap();
    }
}

/// A log that does not sync every append, written with `pwrite` as an
/// engine's committed shards are (the direct strategy, `none`
/// durability), reserves its segments with fallocate: its spare holds no
/// page cache (zeros written would) and still reads as zeros. Its
/// records come back after a reopen.
#[test]
fn a_log_synced_rarely_reserves_its_segments_instead_of_writing_zeros() {
    let d = TempDir::new("growth-reserve");
    if on_tmpfs(d.path()) {
        return;
    }
    let opts = Options { durability: Durability::None, ..Options::default() };
    let wal = Wal::open_with_fs(d.path(), opts.clone(), Arc::new(StdFs::direct())).unwrap();
    let spare = wait_for_spare(d.path(), 128 * KIB);
    assert_eq!(resident_pages(&spare), 0, "the spare was written, not reserved");
    assert!(std::fs::read(&spare).unwrap().iter().all(|&b| b == 0), "a reserved spare reads as zeros");
    let written: Vec<Vec<u8>> = (1..=300).map(|i| payload(i, 1000)).collect();
    for p in &written {
        wal.append(p).unwrap();
    }
    assert!(segment_files(d.path()).len() >= 3, "the appends rotated into reserved segments");
    wal.close().unwrap();
    let wal = Wal::open_with_fs(d.path(), opts, Arc::new(StdFs::direct())).unwrap();
    assert_eq!(read_all(&wal), written);
}

/// Without a preparer the sizes are exact: 64 KiB, then each next one
/// twice the last, up to the maximum, then the maximum.
#[test]
fn segments_double_up_to_the_maximum() {
    for durability in [Durability::None, Durability::Sync] {
        let d = TempDir::new("growth-double");
        let opts = Options { durability, segment_size: MIB, prepare_ahead: false, ..Options::default() };
        let wal = Wal::open(d.path(), opts.clone()).unwrap();
        let mut expected = Vec::new();
        while segment_files(d.path()).len() < 7 {
            let seq = expected.len() as u64 + 1;
            expected.push(payload(seq, 4000));
            assert_eq!(wal.append(&expected[seq as usize - 1]).unwrap(), seq);
        }
        assert_eq!(sizes(d.path()), [64 * KIB, 128 * KIB, 256 * KIB, 512 * KIB, MIB, MIB, MIB], "{durability:?}");
        assert!(read_all(&wal) == expected);
        wal.close().unwrap();
        recovers_in_every_mode(d.path(), &opts, &expected);
        // Growth starts over after an open: the segment after the recovered
        // (full-size) one is planned at 128 KiB.
        let wal = Wal::open(d.path(), opts.clone()).unwrap();
        while segment_files(d.path()).len() < 8 {
            let seq = expected.len() as u64 + 1;
            expected.push(payload(seq, 4000));
            assert_eq!(wal.append(&expected[seq as usize - 1]).unwrap(), seq);
        }
        assert_eq!(sizes(d.path())[7], 128 * KIB, "{durability:?}");
        wal.close().unwrap();
        recovers_in_every_mode(d.path(), &opts, &expected);
    }
}

/// With the preparer the sizes are the same: a rotation takes the
/// prepared spare only when it is the planned size (a worker that read the
/// plan just before a rotation grew it made one too small, which is
/// passed over and replaced), else makes its own of the plan.
#[test]
fn prepared_segments_grow_to_the_maximum() {
    for durability in [Durability::None, Durability::Periodic(Duration::from_millis(50))] {
        let d = TempDir::new("growth-prepared");
        let opts = Options { durability, segment_size: MIB, ..Options::default() };
        let wal = Wal::open(d.path(), opts.clone()).unwrap();
        let mut expected = Vec::new();
        while expected.len() < 2000 {
            let seq = expected.len() as u64 + 1;
            expected.push(payload(seq, 4000));
            assert_eq!(wal.append(&expected[seq as usize - 1]).unwrap(), seq);
        }
        let s = sizes(d.path());
        assert_eq!(s[..5], [64 * KIB, 128 * KIB, 256 * KIB, 512 * KIB, MIB], "{durability:?}: {s:?}");
        assert!(s[5..].iter().all(|&n| n == MIB), "{durability:?}: {s:?}");
        assert!(s.len() >= 10, "{durability:?}: 8 MB written in {s:?}");
        wal.close().unwrap();
        recovers_in_every_mode(d.path(), &opts, &expected);
    }
}

/// The first sequence number of every segment `wal.meta` lists.
fn listed(dir: &Path) -> Vec<u64> {
    match keel::wal::extent::read(&StdFs::direct(), dir).unwrap() {
        keel::wal::extent::MetaFile::Present(e) => e.segments.iter().map(|s| s.0).collect(),
        other => panic!("no extent record in {}: {other:?}", dir.display()),
    }
}

/// The first sequence numbers of the segment files in `dir`, in order.
fn on_disk(dir: &Path) -> Vec<u64> {
    segment_files(dir).iter().map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap()).collect()
}

/// A log that prepares segments ahead leaves the extent record after a
/// rotation to its worker (the appender does not wait for it): the record
/// comes to list every segment without a close, rotation after rotation,
/// and the log recovers whole.
#[test]
fn the_preparer_records_each_rotation() {
    let d = TempDir::new("growth-recorded");
    let opts = Options { durability: Durability::Sync, segment_size: MIB, ..Options::default() };
    let wal = Wal::open(d.path(), opts.clone()).unwrap();
    let mut expected = Vec::new();
    for rotations in 1..=4 {
        while on_disk(d.path()).len() <= rotations {
            let seq = expected.len() as u64 + 1;
            expected.push(payload(seq, 4000));
            assert_eq!(wal.append(&expected[seq as usize - 1]).unwrap(), seq);
        }
        eventually(
            || listed(d.path()) == on_disk(d.path()),
            || format!("wal.meta lists {:?}, the folder holds {:?}", listed(d.path()), on_disk(d.path())),
        );
    }
    wal.close().unwrap();
    recovers_in_every_mode(d.path(), &opts, &expected);
}

/// A record larger than the planned segment gets a segment that fits it
/// (the next power of two), lands intact and is recovered; a batch too.
#[test]
fn a_record_larger_than_the_segment_gets_a_segment_that_fits() {
    for durability in DURABILITIES {
        let d = TempDir::new("growth-fit");
        let opts = Options { durability, ..Options::default() };
        let wal = Wal::open(d.path(), opts.clone()).unwrap();
        let mut expected: Vec<Vec<u8>> = (1..=10).map(|s| payload(s, 100)).collect();
        for (i, p) in expected.iter().enumerate() {
            assert_eq!(wal.append(p).unwrap(), i as u64 + 1);
        }
        let big = payload(11, MIB as usize);
        assert_eq!(wal.append(&big).unwrap(), 11);
        expected.push(big);
        assert_eq!(sizes(d.path()), [64 * KIB, 2 * MIB], "{durability:?}: 1 MiB + headers fits 2 MiB");
        // A batch larger than what is left of that segment, and of the plan.
        let parts: Vec<Vec<u8>> = (12..=14).map(|s| payload(s, 500 * KIB as usize)).collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        assert_eq!(wal.append_batch(&refs).unwrap(), 12);
        expected.extend(parts);
        assert_eq!(sizes(d.path()), [64 * KIB, 2 * MIB, 4 * MIB], "{durability:?}: the plan after a 2 MiB segment");
        for s in 15..=20 {
            expected.push(payload(s, 100));
            assert_eq!(wal.append(&expected[s as usize - 1]).unwrap(), s);
        }
        assert!(read_all(&wal) == expected, "{durability:?}: records differ while open");
        wal.close().unwrap();
        recovers_in_every_mode(d.path(), &opts, &expected);
        // The largest record the default allows (16 MiB) fits too.
        let wal = Wal::open(d.path(), opts.clone()).unwrap();
        let largest = payload(21, 16 * MIB as usize);
        assert_eq!(wal.append(&largest).unwrap(), 21);
        expected.push(largest);
        assert_eq!(*sizes(d.path()).last().unwrap(), 32 * MIB, "{durability:?}");
        let too_big = wal.append(&vec![0u8; 16 * MIB as usize + 1]).unwrap_err();
        assert_eq!(too_big.status, KEEL_STATUS_INVALID_ARGUMENT, "the record limit is unchanged: {too_big}");
        wal.close().unwrap();
        recovers_in_every_mode(d.path(), &opts, &expected);
    }
}

/// Segments whose size is not the configured `segment_size` are not
/// damage: a log written with a small maximum opens with a large one and
/// the other way round, and appends continue in the recovered segment.
#[test]
fn segments_of_another_size_than_configured_open() {
    let d = TempDir::new("growth-resize");
    let mut expected = Vec::new();
    let mut append_some = |opts: &Options, n: u64| {
        let wal = Wal::open(d.path(), opts.clone()).unwrap();
        assert!(read_all(&wal) == expected, "{} MiB maximum: records differ", opts.segment_size >> 20);
        for _ in 0..n {
            let seq = expected.len() as u64 + 1;
            expected.push(payload(seq, 3000));
            assert_eq!(wal.append(&expected[seq as usize - 1]).unwrap(), seq);
        }
        wal.close().unwrap();
        recovers_in_every_mode(d.path(), opts, &expected);
    };
    let fixed = Options { durability: Durability::None, segment_size: 64 * KIB, ..Options::default() };
    let grown = Options { segment_size: 4 * MIB, ..fixed.clone() };
    append_some(&fixed, 100); // five 64 KiB segments, all of the configured size
    append_some(&grown, 800); // 128 KiB up to 2 MiB, the last one partly used
    append_some(&fixed, 700); // fills that 2 MiB segment, then 64 KiB ones
    let s = sizes(d.path());
    assert!(s.iter().any(|&n| n > 64 * KIB), "{s:?}");
    assert_eq!(*s.last().unwrap(), 64 * KIB, "{s:?}");
}

/// Appends the next record (`len` bytes) and, when it succeeds, checks
/// its sequence number and adds it to `expected`.
fn append_next(wal: &Wal, expected: &mut Vec<Vec<u8>>, len: usize) -> keel::Result<u64> {
    let p = payload(expected.len() as u64 + 1, len);
    let seq = wal.append(&p)?;
    assert_eq!(seq, expected.len() as u64 + 1, "sequence numbers stay dense");
    expected.push(p);
    Ok(seq)
}

/// A FaultFs log with the default maximum segment size (prepare_ahead
/// off: the faults hit the appender's own rotation).
fn fault_wal(fs: &FaultFs, durability: Durability) -> Wal {
    let opts = Options { durability, prepare_ahead: false, ..Options::default() };
    Wal::open_with_fs(Path::new("/faultfs/wal"), opts, Arc::new(fs.clone())).unwrap()
}

/// ENOSPC on the rotation that grows the log or fits a large record:
/// NO_SPACE, no sequence number consumed, the log usable (appends that fit
/// go on) and, once space is back, the same append succeeds; everything
/// acknowledged survives a power loss.
#[test]
fn no_space_on_a_growing_or_fitting_rotation_fails_cleanly() {
    for durability in [Durability::Sync, Durability::None] {
        for fault in [Faults { nospace_create: 1000, ..Faults::default() }, Faults { nospace_allocate: 1000, ..Faults::default() }] {
            let fs = FaultFs::new(7);
            let wal = fault_wal(&fs, durability);
            let mut expected: Vec<Vec<u8>> = Vec::new();
            append_next(&wal, &mut expected, 100).unwrap();
            fs.set_faults(fault);
            // The fitting rotation fails...
            let e = append_next(&wal, &mut expected, MIB as usize).unwrap_err();
            assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "{durability:?} {fault:?}: {e}");
            assert_eq!(wal.last_seq(), 1, "the failed append consumed nothing");
            // ...and so does the growing one, once the first segment is full;
            // appends that fit go on meanwhile.
            let e = loop {
                match append_next(&wal, &mut expected, 3000) {
                    Ok(_) => assert!(expected.len() < 30, "no rotation within 64 KiB"),
                    Err(e) => break e,
                }
            };
            assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "{durability:?} {fault:?}: {e}");
            assert!(expected.len() > 10);
            assert_eq!(wal.sync().unwrap(), expected.len() as u64, "the log is not poisoned");
            fs.set_faults(Faults::default());
            for len in [3000, MIB as usize, 100] {
                append_next(&wal, &mut expected, len).unwrap();
            }
            assert_eq!(wal.sync().unwrap(), expected.len() as u64);
            assert!(read_all(&wal) == expected);
            fs.crash();
            drop(wal);
            let wal = fault_wal(&fs, durability);
            assert!(read_all(&wal) == expected, "{durability:?} {fault:?}: records differ after a power loss");
            wal.close().unwrap();
        }
    }
}

/// A segment that holds no record yet cannot be followed (the next one
/// would take its name, which is its first sequence number): a first
/// record too large for a new log's 64 KiB segment replaces that segment
/// by one that fits, with the same header.
#[test]
fn a_first_record_larger_than_the_first_segment_replaces_it() {
    for durability in DURABILITIES {
        let d = TempDir::new("growth-first");
        let opts = Options { durability, ..Options::default() };
        let wal = Wal::open(d.path(), opts.clone()).unwrap();
        let mut expected = vec![payload(1, 300 * KIB as usize)];
        assert_eq!(wal.append(&expected[0]).unwrap(), 1);
        assert_eq!(sizes(d.path()), [512 * KIB], "{durability:?}: one segment, replaced by a larger one");
        for s in 2..=5 {
            expected.push(payload(s, 100));
            assert_eq!(wal.append(&expected[s as usize - 1]).unwrap(), s);
        }
        assert!(read_all(&wal) == expected);
        wal.close().unwrap();
        recovers_in_every_mode(d.path(), &opts, &expected);
    }
}

/// The same on the fault file system: a replacement that meets ENOSPC
/// fails the append cleanly, and a power loss right after a replacement
/// leaves a log that opens whole; a segment filled with nothing but the
/// MARK frames of clean closes is replaced too.
#[test]
fn replacing_a_segment_without_records_survives_faults() {
    for durability in [Durability::Sync, Durability::None] {
        let fs = FaultFs::new(11);
        let wal = fault_wal(&fs, durability);
        let mut expected = Vec::new();
        fs.set_faults(Faults { nospace_allocate: 1000, ..Faults::default() });
        let e = append_next(&wal, &mut expected, 200 * KIB as usize).unwrap_err();
        assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "{durability:?}: {e}");
        fs.set_faults(Faults::default());
        append_next(&wal, &mut expected, 200 * KIB as usize).unwrap();
        wal.sync().unwrap();
        fs.crash();
        drop(wal);
        let wal = fault_wal(&fs, durability);
        assert!(read_all(&wal) == expected, "{durability:?}: after a power loss");
        wal.close().unwrap();

        // Only clean closes, until their MARK frames fill a 64 KiB segment
        // (a MARK frame is 32 bytes) and the next one needs another.
        let fs = FaultFs::new(12);
        let opts = Options { durability, segment_size: 64 * KIB, prepare_ahead: false, ..Options::default() };
        let open = || Wal::open_with_fs(Path::new("/faultfs/wal"), opts.clone(), Arc::new(fs.clone())).unwrap();
        for _ in 0..(64 * KIB / 32) + 2 {
            open().close().unwrap();
        }
        let wal = open();
        assert_eq!(wal.append(b"at last").unwrap(), 1, "{durability:?}");
        drop(wal);
        fs.crash();
        let wal = open();
        assert_eq!(read_all(&wal), [b"at last".to_vec()], "{durability:?}");
        wal.close().unwrap();
    }
}

/// A segment that held only MARK frames when the log opened was verified
/// up to their end by the open's scan; once a record too large for it
/// replaces it with a new file, the frames written there from its header
/// on were never verified, and a reader must check them.
#[test]
fn a_reader_verifies_the_frames_of_a_replaced_segment() {
    use keel::fs::FileSystem;
    use keel::wal::format::{decode_segment_header, PendingFrame, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
    let fs = FaultFs::new(13);
    let opts = Options { durability: Durability::None, segment_size: 64 * KIB, prepare_ahead: false, ..Options::default() };
    let open = || Wal::open_with_fs(Path::new("/faultfs/wal"), opts.clone(), Arc::new(fs.clone())).unwrap();
    open().close().unwrap();
    // The MARK frames of many clean closes, written here in one go.
    let seg = Path::new("/faultfs/wal").join(keel::wal::segment_file_name(1));
    let file = fs.open(&seg, true).unwrap();
    let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_at(&mut head, 0).unwrap();
    let salt = decode_segment_header(&head).unwrap().salt;
    let marks = 1500;
    for i in 0..marks {
        file.write_at(&[&PendingFrame::mark().header(salt, 1, 0)], SEGMENT_HEADER_LEN + FRAME_HEADER_LEN as u64 * i).unwrap();
    }
    file.sync_data().unwrap();
    drop(file);

    let wal = open();
    let record = payload(1, 20 * KIB as usize);
    assert_eq!(wal.append(&record).unwrap(), 1);
    assert_eq!(wal.segments(), 1, "the segment of MARK frames was replaced, not followed");
    // The record's bytes change on the device after it was written.
    let file = fs.open(&seg, true).unwrap();
    let at = SEGMENT_HEADER_LEN + FRAME_HEADER_LEN as u64 + 100;
    file.write_at(&[&[!record[100]]], at).unwrap();
    let got = wal.reader(1, ReadUpto::Appended).unwrap().next_record();
    match got {
        Err(e) => assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}"),
        Ok(r) => panic!("a damaged record was handed out unverified: {:?}", r.map(|(s, d)| (s, d[100]))),
    }
    drop(wal);
}
