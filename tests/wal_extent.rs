//! The WAL never rolls back and never reissues a sequence number (issue
//! #10 §3; docs/WAL.md, "The extent record"): whole segments deleted,
//! renamed or swapped behind keel's back are caught in every recovery
//! mode, and an explicit salvage past them continues above everything
//! ever acknowledged.

mod common;

use common::{segment_files, TempDir};
use keel::status::KEEL_STATUS_CORRUPTION;
use keel::wal::{Durability, Options, ReadUpto, RecoveryMode, Wal};
use std::path::Path;

const STRICT: [RecoveryMode; 3] = [RecoveryMode::Absolute, RecoveryMode::TolerateTail, RecoveryMode::PointInTime];

fn opts(recovery: RecoveryMode) -> Options {
    Options { durability: Durability::None, recovery, segment_size: 64 << 10, prepare_ahead: false, ..Options::default() }
}

/// 520 records over three 64 KiB segments, closed cleanly.
fn write_log(dir: &Path) -> Vec<Vec<u8>> {
    let wal = Wal::open(dir, opts(RecoveryMode::Absolute)).unwrap();
    let records: Vec<Vec<u8>> = (1..=520u64).map(|i| format!("record {i} {}", "z".repeat(300)).into_bytes()).collect();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(wal.append(r).unwrap(), i as u64 + 1);
    }
    wal.close().unwrap();
    assert_eq!(segment_files(dir).len(), 3, "the log spans three segments");
    records
}

fn read_all(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    let mut r = wal.reader(0, ReadUpto::Appended).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        out.push(rec);
    }
    out
}

fn first_seq_of(name: &str) -> u64 {
    name.strip_suffix(".wal").unwrap().parse().unwrap()
}

/// Every strict mode refuses with CORRUPTION naming `names`; SALVAGE opens
/// with the records `kept` and the next append gets 521 (above all 520
/// acknowledged), which survives a clean close and an ABSOLUTE reopen.
fn strict_refuse_salvage_continues(dir: &Path, records: &[Vec<u8>], kept: std::ops::RangeInclusive<u64>, names: &[&str]) {
    for mode in STRICT {
        let err = Wal::open(dir, opts(mode)).err().unwrap_or_else(|| panic!("{mode:?} opened a log with acknowledged records missing"));
        assert_eq!(err.status, KEEL_STATUS_CORRUPTION, "{mode:?}: {err}");
        for n in names {
            assert!(err.message.contains(n), "{mode:?}: the error does not name {n}: {err}");
        }
    }
    let wal = Wal::open(dir, opts(RecoveryMode::Salvage)).unwrap();
    let report = wal.recovery_report().expect("a salvage past lost records reports them").clone();
    assert!(!report.lost.is_empty() || report.damage.is_some(), "{report:?}");
    let got = read_all(&wal);
    let want: Vec<(u64, Vec<u8>)> = kept.clone().map(|s| (s, records[s as usize - 1].clone())).collect();
    assert_eq!(got, want, "salvage keeps exactly the records that are left");
    assert_eq!(wal.last_seq(), 520, "the sequence numbers of the lost records stay used");
    assert_eq!(wal.append(b"after salvage").unwrap(), 521, "a sequence number was reissued ({report:?})");
    wal.close().unwrap();
    let wal = Wal::open(dir, opts(RecoveryMode::Absolute)).expect("the salvaged log is consistent again");
    let mut want = want;
    want.push((521, b"after salvage".to_vec()));
    assert_eq!(read_all(&wal), want);
    assert_eq!(wal.append(b"one more").unwrap(), 522);
    wal.close().unwrap();
}

#[test]
fn removing_the_last_segment_of_a_closed_log() {
    let dir = TempDir::new("extent-rm-last");
    let records = write_log(dir.path());
    let segs = segment_files(dir.path());
    let last = segs.last().unwrap().file_name().unwrap().to_str().unwrap().to_string();
    let kept_to = first_seq_of(&last) - 1;
    std::fs::remove_file(dir.path().join(&last)).unwrap();
    strict_refuse_salvage_continues(dir.path(), &records, 1..=kept_to, &[&last, &format!("{}..=520", kept_to + 1)]);
}

#[test]
fn renaming_the_intact_last_segment() {
    let dir = TempDir::new("extent-mv-last");
    let records = write_log(dir.path());
    let segs = segment_files(dir.path());
    let last = segs.last().unwrap().file_name().unwrap().to_str().unwrap().to_string();
    let kept_to = first_seq_of(&last) - 1;
    std::fs::rename(dir.path().join(&last), dir.path().join(format!("{:020}.wal", 9000))).unwrap();
    strict_refuse_salvage_continues(dir.path(), &records, 1..=kept_to, &[&last]);
}

#[test]
fn renaming_or_removing_the_first_segment() {
    for rename in [true, false] {
        let dir = TempDir::new("extent-first");
        let records = write_log(dir.path());
        let segs = segment_files(dir.path());
        let first = segs[0].file_name().unwrap().to_str().unwrap().to_string();
        let second = first_seq_of(segs[1].file_name().unwrap().to_str().unwrap());
        if rename {
            std::fs::rename(&segs[0], dir.path().join("00000000000000000001.wal.old")).unwrap();
        } else {
            std::fs::remove_file(&segs[0]).unwrap();
        }
        strict_refuse_salvage_continues(dir.path(), &records, second..=520, &[&first, &format!("1..={}", second - 1)]);
    }
}

#[test]
fn removing_the_middle_segment() {
    let dir = TempDir::new("extent-rm-middle");
    let records = write_log(dir.path());
    let segs = segment_files(dir.path());
    let middle = segs[1].file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(&segs[1]).unwrap();
    strict_refuse_salvage_continues(dir.path(), &records, 1..=first_seq_of(&middle) - 1, &[&middle]);
}

#[test]
fn swapping_two_segments() {
    let dir = TempDir::new("extent-swap");
    let records = write_log(dir.path());
    let segs = segment_files(dir.path());
    let (a, b) = (&segs[1], &segs[2]);
    let tmp = dir.path().join("swap");
    std::fs::rename(a, &tmp).unwrap();
    std::fs::rename(b, a).unwrap();
    std::fs::rename(&tmp, b).unwrap();
    let middle = a.file_name().unwrap().to_str().unwrap();
    strict_refuse_salvage_continues(dir.path(), &records, 1..=first_seq_of(middle) - 1, &[middle]);
}

#[test]
fn a_lost_extent_record_is_corruption_and_salvage_still_never_reissues() {
    let dir = TempDir::new("extent-meta-lost");
    let records = write_log(dir.path());
    std::fs::remove_file(dir.path().join("wal.meta")).unwrap();
    let last = segment_files(dir.path()).pop().unwrap();
    std::fs::remove_file(&last).unwrap();
    for mode in STRICT {
        let err = Wal::open(dir.path(), opts(mode)).err().expect("no extent record on a log that had one");
        assert_eq!(err.status, KEEL_STATUS_CORRUPTION);
        assert!(err.message.contains("wal.meta is missing"), "{err}");
    }
    // Without the record, the surviving headers and durable hints are what
    // proves how far the log went: the next number is above them.
    let wal = Wal::open(dir.path(), opts(RecoveryMode::Salvage)).unwrap();
    let kept = read_all(&wal);
    assert_eq!(kept.len() as u64, kept.last().unwrap().0);
    assert_eq!(kept, (1..=kept.len() as u64).map(|s| (s, records[s as usize - 1].clone())).collect::<Vec<_>>());
    let next = wal.append(b"x").unwrap();
    assert!(next > kept.len() as u64);
    wal.close().unwrap();
    Wal::open(dir.path(), opts(RecoveryMode::Absolute)).unwrap().close().unwrap();
}

#[test]
fn truncation_keeps_the_extent_record_in_step() {
    let dir = TempDir::new("extent-truncate");
    let records = write_log(dir.path());
    let wal = Wal::open(dir.path(), opts(RecoveryMode::Absolute)).unwrap();
    let second = first_seq_of(segment_files(dir.path())[1].file_name().unwrap().to_str().unwrap());
    wal.ack(second).unwrap();
    assert_eq!(wal.first_seq(), second, "the first segment was truncated");
    drop(wal);
    // A truncated prefix is not a loss; the rest still is.
    let wal = Wal::open(dir.path(), opts(RecoveryMode::Absolute)).unwrap();
    assert_eq!(read_all(&wal).len() as u64, 520 - second + 1);
    wal.close().unwrap();
    let _ = records;
}

/// A log of three segments, closed, and `wal.meta` as it was when the
/// second segment was installed (one rotation behind); the records
/// written.
fn log_with_a_record_one_rotation_behind(dir: &Path) -> (Vec<u8>, usize) {
    let wal = Wal::open(dir, opts(RecoveryMode::Absolute)).unwrap();
    let mut n = 0;
    while segment_files(dir).len() < 2 {
        n += 1;
        wal.append(format!("r{n} {}", "y".repeat(400)).as_bytes()).unwrap();
    }
    let behind = std::fs::read(dir.join("wal.meta")).unwrap();
    while segment_files(dir).len() < 3 {
        n += 1;
        wal.append(format!("r{n} {}", "y".repeat(400)).as_bytes()).unwrap();
    }
    let wal_meta_before = std::fs::read(dir.join("wal.meta")).unwrap();
    assert_ne!(behind, wal_meta_before, "rotation rewrote the record");
    wal.close().unwrap();
    (behind, n)
}

#[test]
fn an_extent_record_one_rotation_behind_is_accepted() {
    // A crash between installing a segment and rewriting wal.meta leaves
    // the record listing the segments before it; the new segment's header
    // links to the last listed one, so the log is whole.
    let dir = TempDir::new("extent-behind");
    let (behind, n) = log_with_a_record_one_rotation_behind(dir.path());
    std::fs::write(dir.path().join("wal.meta"), &behind).unwrap();
    let wal = Wal::open(dir.path(), opts(RecoveryMode::Absolute)).unwrap();
    assert_eq!(read_all(&wal).len(), n);
    assert!(wal.recovery_report().is_none());
    wal.close().unwrap();
}

#[test]
fn logs_written_in_format_version_1_still_open() {
    let dir = TempDir::new("extent-v1");
    let records = write_log(dir.path());
    // What the previous release wrote: version 1 headers (zeros where the
    // link is) and no extent record.
    std::fs::remove_file(dir.path().join("wal.meta")).unwrap();
    for seg in segment_files(dir.path()) {
        let mut b = std::fs::read(&seg).unwrap();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[24..60].fill(0);
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&seg, b).unwrap();
    }
    let wal = Wal::open(dir.path(), opts(RecoveryMode::Absolute)).unwrap();
    assert_eq!(read_all(&wal).len(), records.len());
    assert_eq!(wal.append(b"v2").unwrap(), 521);
    wal.close().unwrap();
    assert!(dir.path().join("wal.meta").exists(), "the record is written from the first open on");
    Wal::open(dir.path(), opts(RecoveryMode::Absolute)).unwrap().close().unwrap();
}

/// The extent record is a floor, not the only one: a record left behind
/// by a rewrite that failed (a transient EIO fails no append) or never ran
/// before a power loss lists fewer segments than were created. When
/// recovery then sets the later segments aside (the first one's unsynced
/// tail torn), their headers, read by the scan, still prove how far the
/// log went: no number below the last one's first sequence number is
/// handed out again.
#[test]
fn a_stale_extent_record_never_lowers_the_floor_below_the_segments_set_aside() {
    let dir = TempDir::new("extent-stale-floor");
    let (behind, _) = log_with_a_record_one_rotation_behind(dir.path());
    let segs = segment_files(dir.path());
    let top = first_seq_of(segs[2].file_name().unwrap().to_str().unwrap());
    std::fs::write(dir.path().join("wal.meta"), &behind).unwrap();
    // The first segment's last 4 KiB of frames never reached the disk.
    let first = std::fs::read(&segs[0]).unwrap();
    let end = first.len() - first.iter().rev().take_while(|&&b| b == 0).count();
    let mut torn = first.clone();
    torn[end.saturating_sub(4096).max(4096)..end].fill(0);
    std::fs::write(&segs[0], &torn).unwrap();
    for mode in [RecoveryMode::TolerateTail, RecoveryMode::Salvage] {
        let copy = TempDir::new("extent-stale-floor-open");
        for s in segment_files(dir.path()) {
            std::fs::copy(&s, copy.path().join(s.file_name().unwrap())).unwrap();
        }
        std::fs::copy(dir.path().join("wal.meta"), copy.path().join("wal.meta")).unwrap();
        let wal = match Wal::open(copy.path(), opts(mode)) {
            Ok(wal) => wal,
            Err(e) => {
                assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{mode:?}: {e}");
                continue;
            }
        };
        let next = wal.append(b"x").unwrap();
        assert!(next >= top, "{mode:?}: the next append got {next}, below {top}, the first number of a segment that existed");
        wal.close().unwrap();
    }
}

/// A segment file made shorter behind keel's back, at a frame boundary,
/// leaves no damaged byte: the records simply stop. The header records
/// the length the segment was allocated with, which no crash takes back
/// (it is synced before the segment gets a name), so the cut is found:
/// strict modes refuse, and the lenient ones keep what is left and
/// continue above every number the lost bytes could have held, here
/// above all 200 acknowledged in SYNC mode. A header written before the
/// length was recorded (zeros there) reads as before: a shorter log.
#[test]
fn a_segment_cut_short_at_a_frame_boundary_never_reissues_a_number() {
    const FRAME: u64 = 128; // 32-byte header + a 96-byte record
    let dir = TempDir::new("extent-cut");
    let opts = |recovery| Options { durability: Durability::Sync, ..opts(recovery) };
    let wal = Wal::open(dir.path(), opts(RecoveryMode::Absolute)).unwrap();
    let record = |i: u64| format!("{i:08} {}", "y".repeat(87)).into_bytes();
    for i in 1..=200u64 {
        assert_eq!(wal.append(&record(i)).unwrap(), i);
    }
    assert_eq!(wal.durable_seq(), 200);
    // As a killed process leaves it: no MARK frame, no closing extent
    // record (the copy leaves the live log's lock behind).
    std::mem::forget(wal);
    let base = TempDir::new("extent-cut-base");
    common::copy_tree(dir.path(), base.path());
    let segs = segment_files(base.path());
    assert_eq!(segs.len(), 1, "one 64 KiB segment holds the 200 records");
    let cut_to = 64 + 150 * FRAME; // records 1..=150 stay whole
    std::fs::OpenOptions::new().write(true).open(&segs[0]).unwrap().set_len(cut_to).unwrap();

    for mode in [RecoveryMode::Absolute, RecoveryMode::TolerateTail] {
        let err = Wal::open(base.path(), opts(mode)).err().unwrap_or_else(|| panic!("{mode:?} opened a log cut short"));
        assert_eq!(err.status, KEEL_STATUS_CORRUPTION, "{mode:?}: {err}");
        assert!(err.message.contains("its tail was cut"), "{mode:?}: {err}");
    }
    for mode in [RecoveryMode::PointInTime, RecoveryMode::Salvage] {
        let work = TempDir::new("extent-cut-open");
        common::copy_tree(base.path(), work.path());
        let wal = Wal::open(work.path(), opts(mode)).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let want: Vec<(u64, Vec<u8>)> = (1..=150).map(|i| (i, record(i))).collect();
        assert_eq!(read_all(&wal), want, "{mode:?} keeps the records before the cut");
        // The lost bytes could have held a record every 4 bytes.
        let floor = 151 + (64 * 1024 - cut_to) / 4;
        assert_eq!(wal.last_seq(), floor - 1, "{mode:?}: numbers the lost tail may have used stay used");
        let report = wal.recovery_report().expect("the cut is reported").clone();
        assert!(report.damage.as_deref().is_some_and(|d| d.contains("its tail was cut")), "{mode:?}: {report:?}");
        assert_eq!(report.skipped, Some((151, floor - 1)), "{mode:?}");
        assert_eq!(wal.append(b"after the cut").unwrap(), floor, "{mode:?}: a number was reissued");
        wal.close().unwrap();
        let wal = Wal::open(work.path(), opts(RecoveryMode::Absolute)).expect("the repaired log is whole again");
        assert_eq!(read_all(&wal).last(), Some(&(floor, b"after the cut".to_vec())));
        wal.close().unwrap();
    }
    // The header as keel wrote it before recording the allocated length.
    let mut b = std::fs::read(&segs[0]).unwrap();
    b[44..52].fill(0);
    let crc = crc32fast::hash(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&segs[0], b).unwrap();
    let wal = Wal::open(base.path(), opts(RecoveryMode::TolerateTail)).expect("an unrecorded length cannot tell the cut");
    assert_eq!(wal.last_seq(), 150);
    wal.close().unwrap();
}

/// An extent record with a valid checksum but numbers no log reaches (D
/// at u64::MAX) is damage to report, not arithmetic to overflow: the
/// strict modes refuse it and SALVAGE opens with no number left to give.
#[test]
fn an_extent_record_claiming_the_last_numbers_is_refused_without_a_panic() {
    use keel::wal::extent::{self, Extent, MetaFile};
    let t = TempDir::new("extent-max");
    let dir = t.path().join("wal");
    write_log(&dir);
    let fs = keel::fs::StdFs::direct();
    let MetaFile::Present(e) = extent::read(&fs, &dir).unwrap() else { panic!("the log has an extent record") };
    extent::write(&fs, &dir, &Extent { durable: u64::MAX, next_seq: u64::MAX, ..e }).unwrap();
    for mode in STRICT {
        let err = Wal::open(&dir, opts(mode)).err().unwrap_or_else(|| panic!("{mode:?} opened it"));
        assert_eq!(err.status, KEEL_STATUS_CORRUPTION, "{mode:?}: {err}");
    }
    let wal = Wal::open(&dir, opts(RecoveryMode::Salvage)).unwrap();
    let err = wal.append(b"one more").unwrap_err();
    assert_eq!(err.status, keel::status::KEEL_STATUS_INVALID_ARGUMENT, "{err}");
    wal.close().unwrap();
}
