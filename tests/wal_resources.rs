//! Running out of descriptors is transient (docs/WAL.md, "Errors"): an
//! append whose segment rotation meets EMFILE fails with RESOURCE and
//! leaves the log usable, and readers share the open segments, so 10,000
//! of them fit in a small descriptor table.
//!
//! Each scenario lowers RLIMIT_NOFILE, so it runs in a child process (this
//! test binary re-executed with `KEEL_RESOURCE_CHILD=<scenario>|<dir>`)
//! where the low limit cannot hit the test harness.

mod common;

use common::TempDir;
use keel::status::*;
use keel::wal::{Durability, Options, ReadUpto, Wal};
use std::path::Path;
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "KEEL_RESOURCE_CHILD";
const SEGMENT: u64 = 64 << 10;

/// Runs `scenario` in a child process (re-executing `test`, which must hand
/// over to `child_main` first thing) and fails with its output if it fails.
fn run_in_child(test: &str, scenario: &str) {
    let tmp = TempDir::new(scenario);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{scenario}|{}", tmp.path().display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child {scenario} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In a child: runs its scenario and returns true; in the parent: false.
fn child_main() -> bool {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return false };
    let (scenario, dir) = spec.split_once('|').unwrap();
    match scenario {
        "rotation" => rotation_child(Path::new(dir)),
        "readers" => readers_child(Path::new(dir)),
        other => panic!("unknown scenario {other}"),
    }
    true
}

fn limit_open_files(n: u64) {
    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: setrlimit reads the struct we pass by reference and nothing else.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(r, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Opens /dev/null until the descriptor table is full; the caller holds
/// the files (dropping them frees the table).
fn fill_fd_table(held: &mut Vec<std::fs::File>) {
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return,
            Err(e) => panic!("open /dev/null: {e}"),
        }
    }
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

/// Every record of the log at `dir`, checked dense from 1 with its payload.
fn check_log(dir: &Path, opts: &Options, last: u64, len: usize) {
    let wal = Wal::open(dir, opts.clone()).unwrap();
    assert_eq!(wal.last_seq(), last, "recovered up to {} instead of {last}", wal.last_seq());
    let mut r = wal.reader(1, ReadUpto::Durable).unwrap();
    for seq in 1..=last {
        let (s, data) = r.next_record().unwrap().unwrap_or_else(|| panic!("record {seq} missing"));
        assert_eq!(s, seq, "sequence numbers are not dense");
        assert!(data == payload(seq, len), "record {seq} differs");
    }
    assert!(r.next_record().unwrap().is_none());
    drop(r);
    wal.close().unwrap();
}

/// EMFILE while rotating: RESOURCE, never IO or POISONED; appends, syncs,
/// acks and close keep working, and once descriptors are back the next
/// append takes the next sequence number.
fn rotation_child(base: &Path) {
    limit_open_files(128);
    const LEN: usize = 1000;
    for (name, durability) in [("sync", Durability::Sync), ("none", Durability::None)] {
        let dir = base.join(name);
        let opts = Options { durability, segment_size: SEGMENT, ..Options::default() };
        let wal = Wal::open(&dir, opts.clone()).unwrap();
        let mut held = Vec::new();
        fill_fd_table(&mut held);
        // Appends within the active segment need no descriptor; the one that
        // needs the next segment cannot get one.
        let mut last = 0;
        let failed = loop {
            match wal.append(&payload(last + 1, LEN)) {
                Ok(seq) => {
                    assert_eq!(seq, last + 1);
                    last = seq;
                }
                Err(e) => break e,
            }
            assert!(last < 2 * SEGMENT / LEN as u64, "{name}: no rotation within two segments");
        };
        assert_eq!(failed.status, KEEL_STATUS_RESOURCE, "{name}: rotation without descriptors: {failed}");
        for _ in 0..3 {
            fill_fd_table(&mut held); // what the failed attempt freed
            let e = wal.append(&payload(last + 1, LEN)).unwrap_err();
            assert_eq!(e.status, KEEL_STATUS_RESOURCE, "{name}: the log must stay usable: {e}");
            assert_eq!(wal.last_seq(), last, "{name}: a failed append consumed a sequence number");
        }
        assert_eq!(wal.sync().unwrap(), last, "{name}: sync after RESOURCE");
        wal.ack(1).unwrap();
        held.clear();
        for _ in 0..2 * SEGMENT / LEN as u64 {
            let seq = wal.append(&payload(last + 1, LEN)).unwrap_or_else(|e| panic!("{name}: append after fds came back: {e}"));
            assert_eq!(seq, last + 1, "{name}: sequence numbers must stay dense");
            last = seq;
        }
        wal.close().unwrap();
        check_log(&dir, &opts, last, LEN);
    }
}

#[test]
fn emfile_on_rotation_returns_resource_and_does_not_poison() {
    if child_main() {
        return;
    }
    run_in_child("emfile_on_rotation_returns_resource_and_does_not_poison", "rotation");
}

/// Resident memory of this process in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// How many memory maps of files in `dir` this process has.
fn maps_of(dir: &Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir = dir.to_str().unwrap();
    maps.lines().filter(|l| l.contains(dir)).count()
}

/// 10,000 readers that have read the log and wait for more, with a
/// descriptor table of 256: all open and read, appends (and rotations)
/// still work, every reader then reads the new records, and the idle
/// readers cost little memory.
fn readers_child(dir: &Path) {
    limit_open_files(256);
    const READERS: usize = 10_000;
    const LEN: usize = 3000;
    const PART: u64 = 25; // records of a part: 75 KB, more than one segment
    // Payloads computed once: the readers compare 10,000 copies.
    let payloads: Vec<Vec<u8>> = (0..=2 * PART).map(|seq| payload(seq, LEN)).collect();
    let wal = Wal::open(dir, Options { segment_size: SEGMENT, ..Options::default() }).unwrap();
    let mut last = 0;
    let mut append_part = |wal: &Wal| {
        for _ in 0..PART {
            last = wal.append(&payloads[last as usize + 1]).unwrap();
        }
        last
    };
    let first_part = append_part(&wal);
    let before = rss();
    let mut readers: Vec<_> = (0..READERS).map(|_| wal.reader(1, ReadUpto::Durable).unwrap()).collect();
    let read_all = |readers: &mut Vec<keel::wal::Reader>, from: u64, to: u64| {
        for (i, r) in readers.iter_mut().enumerate() {
            for seq in from..=to {
                let (s, data) = r
                    .next_record()
                    .unwrap_or_else(|e| panic!("reader {i} at {seq}: {e}"))
                    .unwrap_or_else(|| panic!("reader {i}: record {seq} missing"));
                assert_eq!(s, seq);
                assert!(data == payloads[seq as usize], "reader {i}: record {seq} differs");
            }
            assert!(r.next_record().unwrap().is_none(), "reader {i} read past the end");
        }
    };
    read_all(&mut readers, 1, first_part);
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 << 20, "{READERS} idle readers take {} MiB", grown >> 20);
    let second_part = append_part(&wal);
    read_all(&mut readers, first_part + 1, second_part);
    // All of them wait in the same segment: one map of it between them
    // (the SYNC-mode writer maps nothing), and none once they are gone.
    assert_eq!(maps_of(dir), 1, "{READERS} readers in one segment");
    drop(readers);
    assert_eq!(maps_of(dir), 0, "a segment stays mapped after its last reader");
    wal.close().unwrap();
}

#[test]
fn ten_thousand_idle_readers_share_segments_under_a_low_fd_limit() {
    if child_main() {
        return;
    }
    run_in_child("ten_thousand_idle_readers_share_segments_under_a_low_fd_limit", "readers");
}
