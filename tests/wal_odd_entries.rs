//! A WAL directory holding what no keel wrote: a folder, a symlink or a
//! FIFO under a log file's name, a sparse `wal.meta` of a terabyte, a
//! folder left by an earlier salvage; and a salvage that gives up records
//! a later frame proved durable. `keel-wal verify` must predict what
//! `Wal::open` does in each mode, neither may hang or abort, and the
//! recovery report must name what was lost.
mod common;
use common::{segment_files, TempDir};
use keel::wal::{Durability, Options, RecoveryMode, Wal};
use std::path::Path;
use std::process::Command;

fn opts(recovery: RecoveryMode) -> Options {
    Options { durability: Durability::None, recovery, segment_size: 64 << 10, ..Options::default() }
}
/// A cleanly closed log of 600 appends over 3 segments (records 1..=720).
fn write_log(dir: &Path) {
    let wal = Wal::open(dir, opts(RecoveryMode::TolerateTail)).unwrap();
    for i in 0..600u64 {
        if i % 10 == 9 {
            wal.append_batch(&[b"a", b"b", b"c"]).unwrap();
        } else {
            wal.append(format!("rec-{i:05}-{}", "x".repeat((i % 37) as usize * 17)).as_bytes()).unwrap();
        }
        if i % 50 == 49 {
            wal.sync().unwrap();
        }
    }
    wal.close().unwrap();
}
fn keel_wal(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-wal")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or_else(|| panic!("keel-wal killed by a signal: {:?}\n{text}", out.status)), text)
}
fn verdict(text: &str) -> &str {
    text.lines().find_map(|l| l.strip_prefix("verdict: ")).unwrap_or("<no verdict>")
}
const MODES: [(&str, RecoveryMode); 4] = [
    ("tolerate_tail", RecoveryMode::TolerateTail),
    ("absolute", RecoveryMode::Absolute),
    ("point_in_time", RecoveryMode::PointInTime),
    ("salvage", RecoveryMode::Salvage),
];

#[test]
fn verify_judges_entry_types_as_open_does() {
    let t = TempDir::new("auditf-types");
    let mut wrong = Vec::new();
    type Craft = fn(&Path, &Path);
    let cases: [(&str, Craft); 3] = [
        ("wal.meta is a directory", |d, _| {
            std::fs::remove_file(d.join("wal.meta")).unwrap();
            std::fs::create_dir(d.join("wal.meta")).unwrap();
        }),
        ("wal.meta.tmp is a directory", |d, _| std::fs::create_dir(d.join("wal.meta.tmp")).unwrap()),
        ("the last segment is a symlink", |d, aside| {
            let last = segment_files(d).pop().unwrap();
            let target = aside.join(last.file_name().unwrap());
            std::fs::rename(&last, &target).unwrap();
            std::os::unix::fs::symlink(&target, &last).unwrap();
        }),
    ];
    for (i, (what, craft)) in cases.iter().enumerate() {
        for (name, mode) in MODES {
            let root = t.path().join(format!("{i}-{name}")); // fresh per open: open may repair
            let dir = root.join("wal");
            std::fs::create_dir_all(root.join("aside")).unwrap();
            write_log(&dir);
            craft(&dir, &root.join("aside"));
            let (code, text) = keel_wal(&["verify", dir.to_str().unwrap(), "--mode", name]);
            let predicted = match code {
                3 => "cannot read",
                _ if verdict(&text).contains("would fail") => "fails with CORRUPTION",
                _ => "opens",
            };
            let actual = match Wal::open(&dir, opts(mode)) {
                Ok(w) => {
                    w.close().unwrap();
                    "opens".to_string()
                }
                Err(e) if e.status == keel::status::KEEL_STATUS_CORRUPTION => "fails with CORRUPTION".to_string(),
                Err(e) => format!("fails: {e}"),
            };
            if !(predicted == actual || (predicted == "cannot read" && actual.starts_with("fails: IO"))) {
                wrong.push(format!("{what}, {name}: keel-wal exit {code} ({predicted}: {}), Wal::open {actual}", verdict(&text)));
            }
        }
    }
    assert!(wrong.is_empty(), "verify mispredicts the open:\n{}", wrong.join("\n"));
}

#[test]
fn verify_calls_a_wal_what_open_opens_as_one() {
    let t = TempDir::new("auditf-notwal");
    let mut wrong = Vec::new();
    // A `salvaged-*` entry marks a WAL for open whether a folder or not.
    for mark in ["spare-0.wal.tmp", "salvaged-1", "salvaged-2"] {
        let dir = t.path().join(mark);
        std::fs::create_dir_all(&dir).unwrap();
        if mark == "salvaged-1" {
            std::fs::create_dir(dir.join(mark)).unwrap();
        } else {
            std::fs::write(dir.join(mark), b"").unwrap();
        }
        std::fs::write(dir.join("notes.txt"), b"operator notes").unwrap();
        let (code, text) = keel_wal(&["verify", dir.to_str().unwrap()]);
        let opened = Wal::open(&dir, opts(RecoveryMode::TolerateTail)).map(|w| w.close().unwrap());
        if code == 3 && opened.is_ok() {
            wrong.push(format!("{mark}: keel-wal exit 3 ({}), but Wal::open opens it", text.trim()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Polls until `done()` or the task at `proc_path` sleeps in `open` of a
/// FIFO waiting for a writer (wchan `wait_for_partner`): then it is stuck
/// until someone opens the write end, i.e. forever. No timing involved.
fn blocks_on_fifo(proc_path: &str, done: &mut dyn FnMut() -> bool) -> bool {
    loop {
        if done() {
            return false;
        }
        if std::fs::read_to_string(format!("{proc_path}/wchan")).is_ok_and(|w| w.trim() == "wait_for_partner") {
            return true;
        }
        std::thread::yield_now();
    }
}
fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn keel_wal_does_not_hang_on_a_fifo_named_wal_meta() {
    let t = TempDir::new("auditf-fifo-meta");
    let dir = t.path().join("wal");
    write_log(&dir);
    std::fs::remove_file(dir.join("wal.meta")).unwrap();
    mkfifo(&dir.join("wal.meta"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel-wal"))
        .args(["verify", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut status = None;
    let hung = blocks_on_fifo(&format!("/proc/{pid}"), &mut || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if hung {
        child.kill().unwrap(); // our own child, by its handle
        child.wait().unwrap();
    }
    assert!(!hung, "keel-wal verify blocks forever opening the FIFO wal.meta");
    assert_eq!(status.unwrap().code(), Some(3));
}

#[test]
fn wal_open_does_not_hang_on_a_fifo_in_the_directory() {
    let mut hangs = Vec::new();
    for what in ["wal.meta", "00000000000000099999.wal"] {
        let t = TempDir::new("auditf-fifo-open");
        let dir = t.path().join("wal");
        write_log(&dir);
        if what == "wal.meta" {
            std::fs::remove_file(dir.join(what)).unwrap();
        }
        mkfifo(&dir.join(what));
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        let opener = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            Wal::open(&d, opts(RecoveryMode::Salvage)).map(|w| w.close()).map_err(|e| e.to_string())
        });
        let tid = rx.recv().unwrap();
        let task = format!("/proc/self/task/{tid}");
        let hung = blocks_on_fifo(&task, &mut || opener.is_finished());
        if hung {
            // Release it (open and close the write end: EOF); a segment FIFO is opened twice.
            drop(std::fs::OpenOptions::new().write(true).open(dir.join(what)).unwrap());
            if blocks_on_fifo(&task, &mut || opener.is_finished()) {
                drop(std::fs::OpenOptions::new().write(true).open(dir.join(what)).unwrap());
            }
        }
        let result = opener.join().unwrap();
        if hung {
            hangs.push(format!("Wal::open blocks forever on a FIFO named {what} (released by hand, then: {result:?})"));
        }
    }
    assert!(hangs.is_empty(), "{}", hangs.join("\n"));
}

#[test]
fn a_huge_sparse_wal_meta_aborts_neither_the_tool_nor_open() {
    if let Ok(dir) = std::env::var("AUDITF_OPEN_DIR") {
        // The child: the open whose outcome the parent checks.
        let r = Wal::open(Path::new(&dir), opts(RecoveryMode::Salvage));
        println!("open returned: {:?}", r.map(|w| w.close()).map_err(|e| e.to_string()));
        return;
    }
    let t = TempDir::new("auditf-bigmeta");
    let dir = t.path().join("wal");
    write_log(&dir);
    // 1 TiB, sparse: no disk space used.
    std::fs::OpenOptions::new().write(true).open(dir.join("wal.meta")).unwrap().set_len(1 << 40).unwrap();
    let tool = Command::new(env!("CARGO_BIN_EXE_keel-wal")).args(["verify", dir.to_str().unwrap()]).output().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["a_huge_sparse_wal_meta_aborts_neither_the_tool_nor_open", "--exact", "--nocapture", "--test-threads=1"])
        .env("AUDITF_OPEN_DIR", &dir)
        .output()
        .unwrap();
    let mut wrong = Vec::new();
    if tool.status.code().is_none() {
        wrong.push(format!("keel-wal verify died: {:?}: {}", tool.status, String::from_utf8_lossy(&tool.stderr).trim()));
    }
    if !child.status.success() {
        let err = String::from_utf8_lossy(&child.stderr);
        wrong.push(format!("Wal::open (salvage) died: {:?}: {}", child.status, err.lines().find(|l| l.contains("alloc")).unwrap_or("")));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Offset of the frame holding record `seq` in a segment.
fn frame_offset(bytes: &[u8], seq: u64) -> usize {
    use keel::wal::format::{decode_frame, decode_segment_header, Decoded, SEGMENT_HEADER_LEN};
    let salt = decode_segment_header(bytes).unwrap().salt;
    let mut off = SEGMENT_HEADER_LEN as usize;
    loop {
        match decode_frame(&bytes[off..], salt) {
            Decoded::Frame(h) if h.seq <= seq && seq < h.seq + h.count.max(1) as u64 => return off,
            Decoded::Frame(h) => off += h.size() as usize,
            other => panic!("record {seq} not found: {other:?} at {off}"),
        }
    }
}
/// Records 1..=110 appended, synced at 100 and at 110 (D = 110; frames
/// 101..=110 carry hint 100), then a crash (the copy; no close), then one
/// payload byte of record `damaged` rots.
fn crashed_log_with_rot(t: &TempDir, damaged: u64) -> std::path::PathBuf {
    let (live, dir) = (t.path().join("live"), t.path().join("crash"));
    let wal = Wal::open(&live, opts(RecoveryMode::TolerateTail)).unwrap();
    for i in 1..=110u64 {
        assert_eq!(wal.append(format!("record-{i:04}").as_bytes()).unwrap(), i);
        if i == 100 {
            wal.sync().unwrap();
        }
    }
    wal.sync().unwrap(); // D = 110: every record is on stable storage
    common::copy_tree(&live, &dir); // what a crash now leaves
    wal.close().unwrap();
    let seg = segment_files(&dir).pop().unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    let at = frame_offset(&b, damaged) + 32 + 3;
    b[at] ^= 0x40;
    std::fs::write(&seg, b).unwrap();
    dir
}

#[test]
fn salvage_reports_the_durable_records_it_gave_up_as_lost() {
    let t = TempDir::new("auditf-lost");
    let dir = crashed_log_with_rot(&t, 50);
    let wal = Wal::open(&dir, opts(RecoveryMode::Salvage)).unwrap();
    let report = wal.recovery_report().cloned().expect("a lossy open has a report");
    wal.close().unwrap();
    assert!(
        report.lost.iter().any(|&(a, b)| a <= 50 && 100 <= b),
        "records 50..=100 were proven durable (hint 100) and are gone from the log, yet lost = {:?}\n{report:?}",
        report.lost
    );
}
