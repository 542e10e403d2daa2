//! Damage to a shard directory's files (missing, truncated, renamed,
//! duplicated, swapped, substituted): a normal open fails with CORRUPTION
//! naming the file, never opens with data silently missing; a salvage
//! open (`Options::salvage`) opens what is left and reports what is gone.
//! docs/STORAGE.md has the table of outcomes. The last part flips single
//! bytes of every file (`KEEL_BIT_ROT_SEED` replays a sweep).

mod common;

use common::rng::Rng;
use common::TempDir;
use keel::fs::{File, FileSystem, ReadMap};
use keel::shard::{Entry, Fence, Op, Options, Shard, Value};
use keel::status::*;
use keel::wal::Durability;
use std::any::Any;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

fn options() -> Options {
    Options {
        durability: Durability::None,
        wal_segment_size: 64 << 10,
        flush_interval: None,
        seal_bytes: 8 << 10,
        max_sealed: 8,
        ..Options::default()
    }
}

fn seg_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

/// The segment files of a shard with extension `ext`, in id order.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(seg_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn corruption(dir: &Path, opts: Options) -> String {
    match Shard::open(dir, opts) {
        Ok(s) => {
            let n = s.scan(b"", None).unwrap().count();
            s.close().unwrap();
            panic!("the damaged shard opened with {n} keys instead of failing with CORRUPTION");
        }
        Err(e) => {
            assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}");
            e.message
        }
    }
}

fn list(s: &Shard, key: &[u8]) -> usize {
    match s.get(key).unwrap().map(|e| e.value) {
        Some(Value::Posting(items)) => items.len(),
        other => panic!("{other:?}"),
    }
}

/// 200 keys sealed into tables and acknowledged out of the WAL (later
/// writes rotate it past them), then 300 other keys.
fn shard_with_tables(dir: &Path) {
    let s = Shard::open(dir, options()).unwrap();
    for i in 0..200 {
        s.put(format!("old{i:04}").as_bytes(), &[b'o'; 1000]).unwrap();
    }
    s.flush(true).unwrap();
    for i in 0..300 {
        s.put(format!("new{i:04}").as_bytes(), &[b'n'; 1000]).unwrap();
    }
    s.flush(true).unwrap();
    s.close().unwrap();
    let first = Shard::open(dir, options()).unwrap();
    assert!(first.stats().wal_first_seq > 200, "the WAL no longer holds the first 200 keys: {:?}", first.stats());
    assert!(first.stats().sealed_segments >= 1);
    first.close().unwrap();
}

#[test]
fn a_deleted_table_is_corruption() {
    let dir = TempDir::new("corrupt-table");
    shard_with_tables(dir.path());
    let tables = files(dir.path(), "sst");
    std::fs::remove_file(&tables[0]).unwrap();
    let msg = corruption(dir.path(), options());
    assert!(msg.contains(tables[0].file_name().unwrap().to_str().unwrap()), "{msg}");
}

#[test]
fn a_deleted_segments_directory_is_corruption() {
    let dir = TempDir::new("corrupt-segdir");
    let s = Shard::open(dir.path(), options()).unwrap();
    for i in 0..201 {
        s.append(b"list", format!("item-{i:04}-{}", "x".repeat(500)).as_bytes()).unwrap();
    }
    s.close().unwrap();
    std::fs::remove_dir_all(seg_dir(dir.path())).unwrap();
    corruption(dir.path(), options());
}

/// 30 items persisted in the appendable segment and acknowledged out of
/// the WAL, 10 more after them.
fn shard_with_appendable_list(dir: &Path) {
    let opts = Options { seal_bytes: 1 << 20, ..options() };
    let s = Shard::open(dir, opts.clone()).unwrap();
    for i in 0..30 {
        s.append(b"list", format!("{i:04}{}", "x".repeat(4000)).as_bytes()).unwrap();
    }
    s.flush(true).unwrap();
    for i in 30..40 {
        s.append(b"list", format!("{i:04}").as_bytes()).unwrap();
    }
    assert_eq!(list(&s, b"list"), 40);
    s.close().unwrap();
}

#[test]
fn a_deleted_state_file_is_corruption_and_stays_detected() {
    let dir = TempDir::new("corrupt-state");
    shard_with_appendable_list(dir.path());
    let states = files(dir.path(), "state");
    assert_eq!(states.len(), 1);
    std::fs::remove_file(&states[0]).unwrap();
    let msg = corruption(dir.path(), Options { seal_bytes: 1 << 20, ..options() });
    assert!(msg.contains(states[0].file_name().unwrap().to_str().unwrap()), "{msg}");
    // A failed open writes nothing: the damage is still there to see.
    corruption(dir.path(), Options { seal_bytes: 1 << 20, ..options() });
}

/// A shard with several tables (with side-cars that hold deletions), an
/// appendable segment and a WAL that no longer holds the tables' writes.
fn fixture(dir: &Path, fill: u8) {
    let s = Shard::open(dir, options()).unwrap();
    for i in 0..300 {
        s.put(format!("key{i:04}").as_bytes(), &[fill; 500]).unwrap();
        if i % 50 == 49 {
            // The pass seals and merges after it answers; the second pass
            // runs only once that is done, so the writes below never race
            // the seal into the frozen segment (which files hold what, and
            // so what each damage hits, is then the same every run).
            s.flush(true).unwrap();
            s.flush(true).unwrap();
        }
    }
    for i in (0..300).step_by(15) {
        s.delete(format!("key{i:04}").as_bytes()).unwrap();
    }
    for i in 0..20 {
        s.append(b"list", format!("item{i}-{fill}").as_bytes()).unwrap();
    }
    s.flush(true).unwrap();
    s.close().unwrap();
    let s = Shard::open(dir, options()).unwrap();
    assert!(s.stats().wal_first_seq > 1, "{:?}", s.stats());
    assert!(s.recovery_report().is_empty(), "{}", s.recovery_report());
    s.close().unwrap();
    assert!(files(dir, "sst").len() >= 2, "{:?}", files(dir, "sst"));
    assert!(files(dir, "del").len() >= 2);
    assert_eq!(files(dir, "state").len(), 1);
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn cut(p: &Path) {
    let bytes = std::fs::read(p).unwrap();
    std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
}

fn swap(a: &Path, b: &Path) {
    let tmp = a.with_extension("swap");
    std::fs::rename(a, &tmp).unwrap();
    std::fs::rename(b, a).unwrap();
    std::fs::rename(&tmp, b).unwrap();
}

type Damage = fn(&Path, &Path) -> Vec<String>;

/// Each damage gets the shard directory and a second, unrelated shard's
/// directory, and returns the names of which at least one must appear
/// in the CORRUPTION message.
fn damages() -> Vec<(&'static str, Damage)> {
    vec![
        ("table missing", |d, _| {
            let t = &files(d, "sst")[0];
            std::fs::remove_file(t).unwrap();
            vec![name(t)]
        }),
        ("table cut short", |d, _| {
            let t = &files(d, "sst")[0];
            cut(t);
            vec![name(t)]
        }),
        ("table renamed", |d, _| {
            let t = &files(d, "sst")[0];
            std::fs::rename(t, t.with_extension("sst.old")).unwrap();
            vec![name(t)]
        }),
        ("two tables swapped", |d, _| {
            let t = files(d, "sst");
            swap(&t[0], &t[1]);
            vec![name(&t[0]), name(&t[1])]
        }),
        ("a table duplicated over another", |d, _| {
            let t = files(d, "sst");
            std::fs::copy(&t[1], &t[0]).unwrap();
            vec![name(&t[0])]
        }),
        ("a table from another shard", |d, other| {
            let t = &files(d, "sst")[0];
            std::fs::copy(&files(other, "sst")[0], t).unwrap();
            vec![name(t)]
        }),
        ("side-car missing", |d, _| {
            let t = &files(d, "del")[0];
            std::fs::remove_file(t).unwrap();
            vec![name(t)]
        }),
        ("two side-cars swapped", |d, _| {
            let t = files(d, "del");
            swap(&t[0], &t[1]);
            vec![name(&t[0]), name(&t[1])]
        }),
        ("side-car cut short", |d, _| {
            let t = &files(d, "del")[0];
            cut(t);
            vec![name(t)]
        }),
        ("state missing", |d, _| {
            let t = &files(d, "state")[0];
            std::fs::remove_file(t).unwrap();
            vec![name(t)]
        }),
        ("state from another shard", |d, other| {
            let t = &files(d, "state")[0];
            std::fs::copy(&files(other, "state")[0], t).unwrap();
            vec![name(t)]
        }),
        ("log missing", |d, _| {
            let t = &files(d, "log")[0];
            std::fs::remove_file(t).unwrap();
            vec![name(t)]
        }),
        ("log cut short", |d, _| {
            let t = &files(d, "log")[0];
            cut(t);
            vec![name(t)]
        }),
        ("log from another shard", |d, other| {
            let t = &files(d, "log")[0];
            std::fs::copy(&files(other, "log")[0], t).unwrap();
            vec![name(t)]
        }),
        ("log and a table swapped", |d, _| {
            let (l, t) = (&files(d, "log")[0], &files(d, "sst")[0]);
            swap(l, t);
            vec![name(l), name(t)]
        }),
        ("manifest missing", |d, _| {
            std::fs::remove_file(seg_dir(d).join("MANIFEST")).unwrap();
            vec!["MANIFEST".into()]
        }),
        ("manifest cut short", |d, _| {
            cut(&seg_dir(d).join("MANIFEST"));
            vec!["MANIFEST".into()]
        }),
        ("manifest from another shard", |d, other| {
            std::fs::copy(seg_dir(other).join("MANIFEST"), seg_dir(d).join("MANIFEST")).unwrap();
            ["sst", "log", "state", "del"].iter().flat_map(|e| files(d, e)).map(|p| name(&p)).collect()
        }),
        ("segments directory missing", |d, _| {
            std::fs::remove_dir_all(seg_dir(d)).unwrap();
            vec!["MANIFEST".into()]
        }),
        ("segments directory restored from an older copy", |d, _| {
            // A consistent old state: every file matches the old manifest,
            // but the WAL starts past what those files hold.
            let old = d.join("segments-backup");
            std::fs::remove_dir_all(seg_dir(d)).unwrap();
            std::fs::rename(old, seg_dir(d)).unwrap();
            vec!["WAL starts at".into()]
        }),
    ]
}

#[test]
fn damaged_files_of_every_kind_are_corruption_and_salvage_opens_the_rest() {
    let other = TempDir::new("corrupt-other");
    fixture(other.path(), b'w'); // other contents: its files differ from ours
    for (what, damage) in damages() {
        let dir = TempDir::new("corrupt-matrix");
        if what.contains("older copy") {
            // The backup is taken early; more writes then move the WAL on.
            let s = Shard::open(dir.path(), options()).unwrap();
            for i in 0..100 {
                s.put(format!("early{i:03}").as_bytes(), &[b'e'; 500]).unwrap();
            }
            s.close().unwrap();
            common::copy_tree(&seg_dir(dir.path()), &dir.path().join("segments-backup"));
        }
        fixture(dir.path(), b'v');
        let names = damage(dir.path(), other.path());
        eprintln!("damage: {what}");
        let msg = corruption(dir.path(), options());
        assert!(names.iter().any(|n| msg.contains(n.as_str())), "{what}: {msg} names none of {names:?}");
        // A failed open changes nothing: the same damage is found again.
        assert_eq!(corruption(dir.path(), options()), msg, "{what}");
        // Salvage opens what is left and says what is gone.
        let s = Shard::open(dir.path(), Options { salvage: true, ..options() }).unwrap_or_else(|e| panic!("{what}: salvage: {e}"));
        let report = s.recovery_report().to_string();
        assert!(!report.is_empty(), "{what}: empty salvage report");
        s.put(b"after", b"salvage").unwrap();
        s.close().unwrap();
        // ...and its first flush made that the shard's state.
        let s = Shard::open(dir.path(), options()).unwrap_or_else(|e| panic!("{what}: reopen after salvage: {e}"));
        assert!(s.get(b"after").unwrap().is_some(), "{what}");
        s.close().unwrap();
    }
}

#[test]
fn salvage_reports_missing_files_with_what_they_held() {
    let dir = TempDir::new("corrupt-salvage");
    shard_with_appendable_list(dir.path());
    let state = files(dir.path(), "state")[0].clone();
    std::fs::remove_file(&state).unwrap();
    let opts = Options { seal_bytes: 1 << 20, salvage: true, ..options() };
    let s = Shard::open(dir.path(), opts).unwrap();
    let r = s.recovery_report().clone();
    assert!(r.lost.iter().any(|l| l.contains(&name(&state))), "{r}");
    // The WAL holds only the last 10 items: the versions of the first 30
    // are reported lost, and the list holds what is left.
    let (a, b) = r.lost_versions.expect("versions lost");
    assert!(a == 1 && b < 40, "{r}");
    assert!(list(&s, b"list") < 40);
    // The damaged log was moved aside, not deleted.
    assert!(r.moved_aside.iter().any(|m| m.ends_with(".log")), "{r}");
    s.close().unwrap();
}

#[test]
fn unlisted_files_are_moved_aside_and_leftovers_removed() {
    let dir = TempDir::new("corrupt-unlisted");
    fixture(dir.path(), b'v');
    let seg = seg_dir(dir.path());
    std::fs::write(seg.join("notes.txt"), b"an operator's file").unwrap();
    std::fs::write(seg.join("seg-0000000000000001.sst.tmp"), b"a rename that never happened").unwrap();
    let s = Shard::open(dir.path(), options()).unwrap();
    let r = s.recovery_report().clone();
    assert_eq!(r.moved_aside, vec!["notes.txt".to_string()], "{r}");
    assert!(r.lost.is_empty() && r.lost_versions.is_none(), "{r}");
    let aside = seg.join(r.moved_to.as_deref().unwrap());
    assert_eq!(std::fs::read(aside.join("notes.txt")).unwrap(), b"an operator's file");
    assert!(!seg.join("seg-0000000000000001.sst.tmp").exists());
    assert_eq!(s.get(b"key0001").unwrap().unwrap().value, Value::Bytes(vec![b'v'; 500]));
    s.close().unwrap();
}

/// A shard with `wal_bytes` of WAL kept (the WAL's first segment
/// pinned), an unlisted file and a half-done rename in its segments
/// directory, and a WAL segment whose header is damaged. The open fails
/// on the WAL and leaves the segments directory as it was: the segments'
/// scan, which runs beside the WAL's open once the WAL is large, writes
/// nothing before the WAL's verdict.
fn refused_wal_leaves_segments_alone(wal_bytes: usize) {
    let dir = TempDir::new("corrupt-refused-wal");
    let s = Shard::open(dir.path(), options()).unwrap();
    s.set_keep_from(1).unwrap();
    let (mut i, mut written) = (0, 0);
    while written < wal_bytes {
        s.put(format!("key{i:06}").as_bytes(), &[b'w'; 1000]).unwrap();
        (i, written) = (i + 1, written + 1000);
    }
    s.flush(true).unwrap();
    s.close().unwrap();
    let seg = seg_dir(dir.path());
    std::fs::write(seg.join("notes.txt"), b"an operator's file").unwrap();
    std::fs::write(seg.join("seg-0000000000000001.sst.tmp"), b"a rename that never happened").unwrap();
    let before = |seg: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(seg).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    let found = before(&seg);
    let mut wal: Vec<PathBuf> = std::fs::read_dir(dir.path().join("wal")).unwrap().map(|e| e.unwrap().path()).collect();
    wal.sort();
    assert!(wal.len() >= 3, "{wal:?}");
    let walled: u64 = wal.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(walled >= wal_bytes as u64, "the WAL keeps {walled} bytes");
    let mut bytes = std::fs::read(&wal[1]).unwrap();
    bytes[..8].copy_from_slice(b"NOTAWAL!");
    std::fs::write(&wal[1], bytes).unwrap();
    let message = corruption(dir.path(), options());
    assert!(message.contains(".wal"), "{message}");
    assert_eq!(before(&seg), found, "the refused open changed the segments directory");
}

#[test]
fn a_refused_wal_leaves_the_segments_directory_as_found() {
    refused_wal_leaves_segments_alone(256 << 10); // scanned after the WAL's open
    refused_wal_leaves_segments_alone(8 << 20); // scanned beside it
}

/// An older copy of MANIFEST put back (same files listed, a lower applied
/// index and fence tokens) is CORRUPTION: the WAL starts past what that
/// manifest records persisted, so the entries and tokens it lacks were
/// acknowledged out of the WAL, and opening with it would take them again.
/// Salvage opens and says so.
#[test]
fn an_older_manifest_is_corruption_and_salvage_reports_it() {
    use keel::shard::{Fence, Op};
    let dir = TempDir::new("shard-older-manifest");
    let opts = Options { seal_bytes: 1 << 30, ..options() }; // no seal: the old copy lists the same files
    let s = Shard::open(dir.path(), opts.clone()).unwrap();
    let big = vec![b'x'; 4000];
    let fence = |token| Some(Fence { bucket: b"b".to_vec(), token });
    for i in 1..=5u64 {
        s.apply(i, &[Op::Put { key: format!("k{i}").into(), value: big.clone() }], fence(i)).unwrap();
    }
    s.flush(true).unwrap();
    let manifest = seg_dir(dir.path()).join("MANIFEST");
    let old = std::fs::read(&manifest).unwrap();
    for i in 6..=100u64 {
        s.apply(i, &[Op::Put { key: format!("k{i}").into(), value: big.clone() }], fence(i)).unwrap();
    }
    for i in 0..60 {
        s.put(format!("p{i}").as_bytes(), &big).unwrap(); // the entries' segments become full
    }
    s.flush(true).unwrap();
    let first = s.stats().wal_first_seq;
    assert!(first > 6, "the WAL was cut past the entries (it starts at {first})");
    s.close().unwrap();
    std::fs::write(&manifest, &old).unwrap();
    let why = corruption(dir.path(), opts.clone());
    assert!(why.contains("an older copy of the manifest"), "{why}");
    let s = Shard::open(dir.path(), Options { salvage: true, ..opts.clone() }).unwrap();
    assert!(s.recovery_report().lost.iter().any(|l| l.contains("an older copy of the manifest")), "{:?}", s.recovery_report());
    s.close().unwrap();
}

/// A small file (MANIFEST, a `.state`, a side-car) whose length says 4
/// TiB, a sparse file as a bad truncate or a damaged inode leaves: the
/// open reads its frame first and fails with CORRUPTION, where reading it
/// whole was an allocation that aborted the process.
#[test]
fn a_huge_small_file_is_corruption_not_an_abort() {
    for which in ["MANIFEST", "state", "del"] {
        let dir = TempDir::new("corrupt-huge");
        fixture(dir.path(), b'h');
        let p = match which {
            "MANIFEST" => seg_dir(dir.path()).join("MANIFEST"),
            ext => files(dir.path(), ext)[0].clone(),
        };
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(1 << 42).unwrap();
        let why = corruption(dir.path(), options());
        assert!(why.contains(&name(&p)), "{which}: {why}");
        // Salvage leaves the damaged file out; the MANIFEST is moved aside.
        let s = Shard::open(dir.path(), Options { salvage: true, ..options() }).unwrap_or_else(|e| panic!("{which}: salvage: {e}"));
        s.close().unwrap();
    }
}

/// Holds every flush pass at its start until `die` is set, then fails it
/// there: what a crash right after the open leaves. Held, not failed at
/// once: a failed pass poisons the shard, and the test reads it first.
#[derive(Default)]
struct DieAtFirstPass {
    die: std::sync::atomic::AtomicBool,
}

impl keel::shard::StepHook for DieAtFirstPass {
    fn at(&self, step: keel::shard::Step) {
        if step == keel::shard::Step::PassStart {
            while !self.die.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            panic!("the process dies before its first pass");
        }
    }
}

/// A salvage that lost a table replays what the WAL still has of it (here
/// all of it: the WAL is pinned from 1) into memory. The manifest without
/// that table is written by the first pass, after the replay is in
/// segment files: a crash before that leaves the manifest naming the lost
/// table, so the next open finds the same damage instead of a manifest
/// claiming versions persisted that no file holds (which silently lost
/// the replayed keys). A salvage then recovers them again.
#[test]
fn a_crash_right_after_a_salvage_loses_nothing_it_recovered() {
    let dir = TempDir::new("corrupt-salvage-crash");
    let s = Shard::open(dir.path(), options()).unwrap();
    s.set_keep_from(1).unwrap(); // a follower pins the WAL
    for i in 0..300 {
        s.put(format!("key{i:04}").as_bytes(), &[b'v'; 500]).unwrap();
        if i % 50 == 49 {
            s.flush(true).unwrap();
            s.flush(true).unwrap();
        }
    }
    s.flush(true).unwrap();
    s.close().unwrap();
    let lost = files(dir.path(), "sst")[0].clone();
    std::fs::remove_file(&lost).unwrap();

    let hook = std::sync::Arc::new(DieAtFirstPass::default());
    let die = Options { steps: keel::shard::Steps::new(hook.clone()), ..options() };
    let s = Shard::open(dir.path(), Options { salvage: true, ..die.clone() }).unwrap();
    assert_eq!(s.scan(b"", None).unwrap().count(), 300, "salvage recovered every key from the WAL");
    hook.die.store(true, std::sync::atomic::Ordering::Release);
    let _ = s.close(); // the first pass never got past its start

    let why = corruption(dir.path(), die);
    assert!(why.contains(&name(&lost)), "{why}");
    let s = Shard::open(dir.path(), Options { salvage: true, ..options() }).unwrap();
    assert_eq!(s.scan(b"", None).unwrap().count(), 300);
    s.flush(true).unwrap(); // the pass writes the manifest of what is left
    s.close().unwrap();
    let s = Shard::open(dir.path(), options()).expect("after a pass the shard opens normally");
    assert_eq!(s.scan(b"", None).unwrap().count(), 300);
    s.close().unwrap();
}

/// Files moved aside by one open are never replaced by another's: two
/// salvages after a lost manifest (segment ids start at 1 again) move
/// files of the same names, and within one second they used to share a
/// folder, the second rename replacing the only copy of the first table.
#[test]
fn moving_aside_never_replaces_a_file_moved_aside_before() {
    let dir = TempDir::new("corrupt-aside-twice");
    fixture(dir.path(), b'a');
    let salvage = Options { salvage: true, ..options() };
    let held = |folder: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(folder).unwrap().map(|e| e.unwrap().path()).map(|p| (name(&p), std::fs::read(&p).unwrap())).collect();
        v.sort();
        v
    };
    let mut folders = Vec::new();
    let mut first_held = Vec::new();
    for round in 0..2 {
        std::fs::remove_file(seg_dir(dir.path()).join("MANIFEST")).unwrap();
        let s = Shard::open(dir.path(), salvage.clone()).unwrap();
        let folder = seg_dir(dir.path()).join(s.recovery_report().moved_to.clone().expect("the segment files are moved aside"));
        if round == 0 {
            first_held = held(&folder);
            assert!(first_held.iter().any(|(n, _)| n.ends_with(".sst")), "{first_held:?}");
        }
        folders.push(folder);
        for i in 0..300 {
            s.put(format!("again{i:03}").as_bytes(), &[b'b'; 400]).unwrap();
        }
        s.flush(true).unwrap();
        s.flush(true).unwrap(); // seals: tables numbered from 1 again
        s.close().unwrap();
    }
    assert_ne!(folders[0], folders[1], "two opens moved files into one folder");
    assert!(held(&folders[0]) == first_held, "the second salvage changed what the first moved aside");
}

/// A shard whose WAL folder is gone lost its WAL: the open fails with
/// CORRUPTION naming it and leaves no new WAL behind (the WAL's open used
/// to make one, empty, before the segments were checked against it).
#[test]
fn a_lost_wal_folder_is_corruption_and_is_not_made_again() {
    for salvage in [false, true] {
        let dir = TempDir::new("corrupt-wal-lost");
        fixture(dir.path(), b'w');
        std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
        let e = Shard::open(dir.path(), Options { salvage, ..options() }).err().expect("a shard without its WAL");
        assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}");
        assert!(e.message.contains("the shard's WAL was lost"), "{e}");
        assert!(!dir.path().join("wal").exists(), "salvage {salvage}: the failed open made a WAL");
    }
}

/// A folder named like a temporary file is not keel's leftover: it is
/// moved aside like any unknown entry, where removing it failed every
/// open with IO.
#[test]
fn a_folder_named_like_a_temporary_file_is_moved_aside() {
    let dir = TempDir::new("corrupt-tmp-folder");
    fixture(dir.path(), b't');
    let odd = seg_dir(dir.path()).join("seg-0000000000000099.sst.tmp");
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join("inside"), b"an operator's file").unwrap();
    let s = Shard::open(dir.path(), options()).expect("the open moves the folder aside");
    let report = s.recovery_report().clone();
    s.close().unwrap();
    assert_eq!(report.moved_aside, vec!["seg-0000000000000099.sst.tmp".to_string()], "{report}");
    let kept = seg_dir(dir.path()).join(report.moved_to.unwrap()).join("seg-0000000000000099.sst.tmp/inside");
    assert_eq!(std::fs::read(kept).unwrap(), b"an operator's file");
}

/// A listed file replaced by a folder of the same name is damage like a
/// missing file: CORRUPTION naming it (it was IO, which a salvage open
/// refused too), and a salvage open leaves it out.
#[test]
fn a_listed_file_replaced_by_a_folder_is_corruption() {
    for which in ["sst", "del", "state", "log", "MANIFEST"] {
        let dir = TempDir::new("corrupt-folder");
        fixture(dir.path(), b'f');
        let p = match which {
            "MANIFEST" => seg_dir(dir.path()).join("MANIFEST"),
            ext => files(dir.path(), ext)[0].clone(),
        };
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        let why = corruption(dir.path(), options());
        assert!(why.contains(&name(&p)), "{which}: {why}");
        let s = Shard::open(dir.path(), Options { salvage: true, ..options() }).unwrap_or_else(|e| panic!("{which}: salvage: {e}"));
        assert!(!s.recovery_report().is_empty(), "{which}: salvage reports the loss");
        s.close().unwrap();
    }
}

/// A shard whose `entries` were applied with fence tokens of the same
/// numbers in bucket "b", and persisted.
fn shard_with_entries(dir: &Path, entries: impl IntoIterator<Item = u64>) {
    use keel::shard::{Fence, Op};
    let s = Shard::open(dir, options()).unwrap();
    for i in entries {
        let fence = Some(Fence { bucket: b"b".to_vec(), token: i });
        s.apply(i, &[Op::Put { key: format!("e{i:04}").into(), value: vec![b'e'; 4000] }], fence).unwrap();
    }
    s.flush(true).unwrap();
    s.flush(true).unwrap();
    s.close().unwrap();
}

/// Another shard's `MANIFEST` copied over this one's: none of the files it
/// lists is its own. A salvage open that kept it kept the other shard's
/// applied index and fence tokens (a host would skip the entries it still
/// has to apply, and refuse its tokens as stale); the manifest is taken
/// as lost instead, this shard's files are moved aside and the shard holds
/// what its WAL still has.
#[test]
fn salvage_takes_another_shards_manifest_as_lost() {
    let (dir, other) = (TempDir::new("corrupt-foreign-manifest"), TempDir::new("corrupt-foreign-other"));
    shard_with_entries(dir.path(), 1..=20);
    // One entry, far ahead: a manifest that records fewer versions than
    // this shard's WAL holds, and a higher applied index and token.
    shard_with_entries(other.path(), [500]);
    std::fs::copy(seg_dir(other.path()).join("MANIFEST"), seg_dir(dir.path()).join("MANIFEST")).unwrap();
    corruption(dir.path(), options());
    let s = Shard::open(dir.path(), Options { salvage: true, ..options() }).unwrap();
    let r = s.recovery_report().clone();
    assert!(s.applied_index() <= 20, "the other shard's applied index was kept: {} ({r})", s.applied_index());
    assert!(s.fence_highest(b"b").is_none_or(|t| t <= 20), "the other shard's tokens were kept: {:?}", s.fence_highest(b"b"));
    assert!(r.lost.iter().any(|l| l.contains("another shard's manifest")), "{r}");
    assert!(r.moved_aside.iter().any(|m| m == "MANIFEST") && r.moved_aside.iter().any(|m| m.ends_with(".log")), "{r}");
    let first = s.stats().wal_first_seq;
    assert!(first > 1, "the WAL no longer holds the first entries: {:?}", s.stats());
    assert_eq!(r.lost_versions, Some((1, first - 1)), "{r}");
    s.put(b"after", b"salvage").unwrap();
    s.close().unwrap();
    let s = Shard::open(dir.path(), options()).unwrap();
    assert!(s.get(b"after").unwrap().is_some());
    assert!(s.applied_index() <= 20);
    s.close().unwrap();
}

/// The appendable segment's log lost while the WAL no longer holds its
/// writes: those versions are reported lost, though a table's side-car,
/// rewritten at a later delete, records a version past them (it proves
/// that table's deletions, not the log's puts).
#[test]
fn salvage_reports_the_versions_a_lost_log_held() {
    let dir = TempDir::new("corrupt-lost-log");
    shard_with_tables(dir.path()); // tables, then a log that seals no more
    let opts = Options { seal_bytes: 1 << 30, ..options() };
    let s = Shard::open(dir.path(), opts.clone()).unwrap();
    let before = s.stats().last_version;
    for i in 0..60 {
        s.put(format!("late{i:02}").as_bytes(), &[b'l'; 4000]).unwrap(); // the WAL rotates past them
    }
    s.delete(b"old0000").unwrap(); // a table's key: its side-car is rewritten
    s.flush(true).unwrap();
    s.close().unwrap();
    let s = Shard::open(dir.path(), opts.clone()).unwrap();
    let first = s.stats().wal_first_seq;
    assert!(first > before + 2, "the WAL no longer holds the log's puts (it starts at {first}, they begin at {})", before + 1);
    s.close().unwrap();
    std::fs::remove_file(&files(dir.path(), "log")[0]).unwrap();
    let s = Shard::open(dir.path(), Options { salvage: true, ..opts }).unwrap();
    let r = s.recovery_report().clone();
    let (a, b) = r.lost_versions.unwrap_or_else(|| panic!("no versions reported lost: {r}"));
    assert!(a <= before + 1 && b == first - 1, "{a}..={b}, the log held {}..; the WAL starts at {first}: {r}", before + 1);
    assert!(s.get(b"late00").unwrap().is_none());
    s.close().unwrap();
}

/// A batch that deletes a key and then appends to it never reads the
/// key's old copy: the check before logging knew it absent without a
/// read, so a read at apply time could fail where the check did not (a
/// damaged table block), after the batch's earlier operations were
/// applied: a batch half visible and the shard poisoned.
#[test]
fn a_batch_that_deletes_then_appends_reads_no_old_copy() {
    let dir = TempDir::new("corrupt-delete-append");
    let s = Shard::open(dir.path(), options()).unwrap();
    for _ in 0..3 {
        s.append(b"k", &[b'i'; 3000]).unwrap();
    }
    s.flush(true).unwrap();
    s.flush(true).unwrap();
    s.close().unwrap();
    // The table holds "k" alone: a byte of its list flipped fails the
    // block's checksum when the block is first read.
    let tables = files(dir.path(), "sst");
    assert_eq!(tables.len(), 1, "{tables:?}");
    let mut bytes = std::fs::read(&tables[0]).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&tables[0], bytes).unwrap();

    let s = Shard::open(dir.path(), options()).unwrap();
    let batch = [
        Op::Put { key: b"x".to_vec(), value: b"new".to_vec() },
        Op::Delete { key: b"k".to_vec() },
        Op::Append { key: b"k".to_vec(), item: b"fresh".to_vec() },
    ];
    let w = s.write(&batch);
    let x = s.get(b"x").unwrap().is_some();
    assert!(w.is_ok(), "the batch failed after its put became visible ({x}): {w:?}");
    assert_eq!(s.get(b"k").unwrap().map(|e| e.value), Some(Value::Posting(vec![b"fresh".to_vec()])));
    s.close().unwrap();
}

/// The real file system, whose WAL files' next frame write parks (once
/// armed) at `parked` until `go`: a writer stopped between the check of
/// its batch and the batch's apply, holding no segment lock.
struct ParkWal {
    real: keel::fs::StdFs,
    wal: PathBuf,
    armed: Arc<AtomicBool>,
    parked: Arc<Barrier>,
    go: Arc<Barrier>,
}

struct ParkedFile(Arc<ParkWal>, Arc<dyn File>);

impl File for ParkedFile {
    fn len(&self) -> io::Result<u64> {
        self.1.len()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.1.read_at(buf, off)
    }
    fn write_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        self.1.write_at(parts, off)
    }
    fn append_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        if self.0.armed.swap(false, Ordering::SeqCst) {
            self.0.parked.wait();
            self.0.go.wait();
        }
        self.1.append_at(parts, off)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.1.allocate(len)
    }
    fn reserve(&self, len: u64) -> io::Result<()> {
        self.1.reserve(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.1.sync_data()
    }
}

struct ParkWalFs(Arc<ParkWal>);

impl ParkWalFs {
    fn wrap(&self, path: &Path, f: Arc<dyn File>) -> Arc<dyn File> {
        match path.starts_with(&self.0.wal) {
            true => Arc::new(ParkedFile(self.0.clone(), f)),
            false => f,
        }
    }
}

impl FileSystem for ParkWalFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.real.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.0.real.list(dir)
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn File>> {
        Ok(self.wrap(path, self.0.real.open(path, writable)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        Ok(self.wrap(path, self.0.real.create(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.real.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.real.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.real.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.0.real.exists(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.real.remove_dir_all(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.0.real.lock(path)
    }
    fn map_readonly(&self, path: &Path) -> io::Result<Option<ReadMap>> {
        self.0.real.map_readonly(path)
    }
}

/// Parks the first seal at its start until `go`; damages the table the
/// seal wrote just before it is swapped in, then lets the parked writer
/// on (`writer`) once the swap is done (at the table's side-car).
struct SealBetween {
    dir: PathBuf,
    at_seal: AtomicBool,
    parked: Barrier,
    go: Barrier,
    swapped: AtomicBool,
    released: AtomicBool,
    writer: Arc<Barrier>,
}

impl keel::shard::StepHook for SealBetween {
    fn at(&self, step: keel::shard::Step) {
        match step {
            keel::shard::Step::Seal if !self.at_seal.swap(true, Ordering::SeqCst) => {
                self.parked.wait();
                self.go.wait();
            }
            keel::shard::Step::TableSwap(_) if !self.swapped.load(Ordering::SeqCst) => {
                // The new table holds "k" alone: a byte of its list flipped
                // fails the block's checksum when the block is first read.
                let tables = files(&self.dir, "sst");
                assert_eq!(tables.len(), 1, "{tables:?}");
                let f = std::fs::OpenOptions::new().read(true).write(true).open(&tables[0]).unwrap();
                let mut b = [0u8];
                f.read_exact_at(&mut b, 100).unwrap();
                f.write_all_at(&[b[0] ^ 0xff], 100).unwrap();
                self.swapped.store(true, Ordering::SeqCst);
            }
            keel::shard::Step::SideCar(_) if self.swapped.load(Ordering::SeqCst) && !self.released.swap(true, Ordering::SeqCst) => {
                self.writer.wait();
            }
            _ => {}
        }
    }
}

/// A seal between the check of a batch (which found the appended-to key
/// in the appendable segment, reading no table) and its apply moves the
/// key into a new table whose blocks no read has checked. A damaged block
/// there must not fail the apply after the batch's put became visible.
#[test]
fn a_table_swapped_in_between_check_and_apply_leaves_no_batch_half_visible() {
    let dir = TempDir::new("corrupt-swap-between");
    let go = Arc::new(Barrier::new(2));
    let wal = Arc::new(ParkWal {
        real: keel::fs::StdFs::direct(),
        wal: dir.path().join("wal"),
        armed: Arc::new(AtomicBool::new(false)),
        parked: Arc::new(Barrier::new(2)),
        go: go.clone(),
    });
    let hook = Arc::new(SealBetween {
        dir: dir.path().to_path_buf(),
        at_seal: AtomicBool::new(false),
        parked: Barrier::new(2),
        go: Barrier::new(2),
        swapped: AtomicBool::new(false),
        released: AtomicBool::new(false),
        writer: go,
    });
    let opts = Options { steps: keel::shard::Steps::new(hook.clone()), ..options() };
    let s = Shard::open_with_fs(dir.path(), opts, Arc::new(ParkWalFs(wal.clone()))).unwrap();
    for _ in 0..3 {
        s.append(b"k", &[b'i'; 3000]).unwrap();
    }
    hook.parked.wait(); // the third append filled the segment: its seal waits at its start
    wal.armed.store(true, Ordering::SeqCst);
    let batch = [Op::Put { key: b"x".to_vec(), value: b"new".to_vec() }, Op::Append { key: b"k".to_vec(), item: b"more".to_vec() }];
    let w = std::thread::scope(|scope| {
        let writer = scope.spawn(|| s.write(&batch));
        wal.parked.wait(); // checked, logging
        hook.go.wait(); // the seal writes the table, damaged, and swaps it in
        writer.join().unwrap()
    });
    let x = s.get(b"x").unwrap().is_some();
    assert_eq!(w.is_ok(), x, "the batch answered {w:?} with its put visible: {x}");
    let _ = s.close();
}

// ---- One flipped byte ------------------------------------------------------
//
// One byte of a shard's own files flipped (every file kind, a seeded sample
// of offsets, each case printed so that it replays with
// `KEEL_BIT_ROT_SEED`), then a normal open and a salvage open. A normal
// open fails with CORRUPTION or opens with exactly the data (a read of the
// damaged part may fail with CORRUPTION, never answer wrongly); a salvage
// open opens. Then the damage a read meets later: at replay, in a merge.

/// Tables with side-cars holding deletions, an appendable log with values,
/// a posting list and tombstones, a state file, replicated state in the
/// manifest, and a WAL that no longer holds the tables' writes.
fn rot_fixture(dir: &Path) {
    let s = Shard::open(dir, options()).unwrap();
    for i in 0..300u64 {
        s.put(format!("key{i:04}").as_bytes(), &[b'v'; 500]).unwrap();
        if i % 50 == 49 {
            s.flush(true).unwrap();
            s.flush(true).unwrap();
        }
    }
    for i in (0..300).step_by(15) {
        s.delete(format!("key{i:04}").as_bytes()).unwrap();
    }
    for i in 1..=10u64 {
        let fence = Some(Fence { bucket: b"b".to_vec(), token: i });
        s.apply(i, &[Op::Append { key: b"list".to_vec(), item: format!("item{i}").into_bytes() }], fence).unwrap();
    }
    s.put(b"zz-here", b"in the log").unwrap();
    s.delete(b"zz-here").unwrap();
    s.put(b"zz-kept", b"in the log").unwrap();
    s.flush(true).unwrap();
    s.flush(true).unwrap();
    s.close().unwrap();
}

#[derive(Debug, PartialEq)]
struct State {
    keys: Vec<(Vec<u8>, Entry)>,
    applied: u64,
    fence: Option<u64>,
}

/// What the open shard holds; Err when a read reports the damage.
fn state(s: &Shard) -> keel::Result<State> {
    let keys = s.scan(b"", None)?.collect::<keel::Result<Vec<_>>>()?;
    for (k, e) in &keys {
        match s.get(k)? {
            Some(got) if &got == e => {}
            other => panic!("get({}) = {other:?}, scan said {e:?}", String::from_utf8_lossy(k)),
        }
    }
    Ok(State { keys, applied: s.applied_index(), fence: s.fence_highest(b"b") })
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(seg_dir(dir)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

#[test]
fn one_flipped_byte_in_any_segment_file_is_caught_or_harmless() {
    sweep("segments", true, false);
    sweep("segments", true, true);
}

/// The same over the shard's WAL files (normal open only: a salvage open
/// does not promise to open a refused WAL).
#[test]
fn one_flipped_byte_in_any_wal_file_is_caught_or_harmless() {
    sweep("wal", false, false);
    sweep("wal", false, true);
}

/// `fixture`, then writes only the WAL holds (the process dies before
/// their flush): puts over table keys, appends with fences, deletes.
fn rot_fixture_with_wal_tail(dir: &Path) {
    rot_fixture(dir);
    let hook = std::sync::Arc::new(DieAtFirstPass::default());
    let s = Shard::open(dir, Options { steps: keel::shard::Steps::new(hook.clone()), ..options() }).unwrap();
    for i in (0..300).step_by(7) {
        s.put(format!("key{i:04}").as_bytes(), format!("late{i}").as_bytes()).unwrap();
    }
    for i in 11..=20u64 {
        let fence = Some(Fence { bucket: b"b".to_vec(), token: i });
        s.apply(i, &[Op::Append { key: b"list".to_vec(), item: format!("item{i}").into_bytes() }], fence).unwrap();
    }
    for i in (3..300).step_by(11) {
        s.delete(format!("key{i:04}").as_bytes()).unwrap();
    }
    hook.die.store(true, std::sync::atomic::Ordering::Release);
    let _ = s.close();
}

fn sweep(sub: &str, salvage: bool, tail: bool) {
    let template = TempDir::new("bit-rot-template");
    match tail {
        true => rot_fixture_with_wal_tail(template.path()),
        false => rot_fixture(template.path()),
    }
    let want = {
        // On a copy: an open's first pass persists what it replayed.
        let copy = TempDir::new("bit-rot-want");
        common::copy_tree(template.path(), copy.path());
        let s = Shard::open(copy.path(), options()).unwrap();
        let st = state(&s).unwrap();
        s.close().unwrap();
        st
    };
    let n = if tail { 20 } else { 10 };
    assert!(want.keys.len() > 200 && want.applied == n && want.fence == Some(n), "{:?}", (want.keys.len(), want.applied, want.fence));
    eprintln!("sweep {sub}, WAL tail {tail}");
    let seed: u64 = std::env::var("KEEL_BIT_ROT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let per_file: usize = std::env::var("KEEL_BIT_ROT_PER_FILE").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    let mut all: Vec<PathBuf> =
        std::fs::read_dir(template.path().join(sub)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    all.sort();
    for file in all {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let len = std::fs::metadata(&file).unwrap().len();
        if len == 0 {
            continue;
        }
        let mut offsets: Vec<u64> = (0..per_file).map(|_| rng.below(len)).collect();
        offsets.extend((0..len.min(20)).chain(len.saturating_sub(20)..len));
        offsets.sort();
        offsets.dedup();
        for off in offsets {
            let mask = 1 + rng.below(255) as u8;
            let case = format!("seed {seed}: {name} byte {off} ^= {mask:#04x}");
            let dir = TempDir::new("bit-rot-case");
            common::copy_tree(template.path(), dir.path());
            let target = dir.path().join(sub).join(&name);
            let mut bytes = std::fs::read(&target).unwrap();
            bytes[off as usize] ^= mask;
            std::fs::write(&target, &bytes).unwrap();
            match Shard::open(dir.path(), options()) {
                Err(e) if e.status == KEEL_STATUS_CORRUPTION => {}
                Err(e) => failures.push(format!("{case}: normal open: {e} (status {})", e.status)),
                Ok(s) => {
                    match state(&s) {
                        Ok(got) if got == want => {}
                        Ok(got) => failures.push(format!(
                            "{case}: normal open succeeded with other data: {} keys (want {}), applied {} fence {:?}",
                            got.keys.len(),
                            want.keys.len(),
                            got.applied,
                            got.fence
                        )),
                        Err(e) if e.status == KEEL_STATUS_CORRUPTION => {}
                        Err(e) => failures.push(format!("{case}: read after a normal open: {e}")),
                    }
                    let _ = s.close();
                }
            }
            if !salvage {
                continue;
            }
            match Shard::open(dir.path(), Options { salvage: true, ..options() }) {
                Ok(s) => {
                    let _ = s.close();
                }
                Err(e) => failures.push(format!("{case}: salvage open failed: {e} (status {})", e.status)),
            }
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} of the damaged cases misbehaved (listed above)", failures.len());
}

/// Flips the first value byte after `key` in the table that holds it.
fn damage_block_of(dir: &Path, key: &[u8]) -> PathBuf {
    let mut pattern = key.to_vec();
    pattern.push(b'v');
    for t in seg_files(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "sst")) {
        let mut bytes = std::fs::read(&t).unwrap();
        if let Some(at) = bytes.windows(pattern.len()).position(|w| w == pattern.as_slice()) {
            bytes[at + key.len()] ^= 0x01;
            std::fs::write(&t, &bytes).unwrap();
            return t;
        }
    }
    panic!("no table holds {}", String::from_utf8_lossy(key));
}

/// One flipped byte in a table block holding a key the WAL still has a
/// later write of. A normal open does not read the block, but replay's
/// version gate does: CORRUPTION. A salvage open checks every block of
/// every table, so it finds the table damaged before replay, moves it
/// aside, reports it and opens the rest.
#[test]
fn salvage_opens_a_shard_whose_damaged_table_block_meets_the_replay() {
    let dir = TempDir::new("bit-rot-block-replay");
    rot_fixture(dir.path());
    let hook = std::sync::Arc::new(DieAtFirstPass::default());
    let dying = Options { steps: keel::shard::Steps::new(hook.clone()), ..options() };
    let s = Shard::open(dir.path(), dying).unwrap();
    s.put(b"key0001", b"newer").unwrap(); // in the WAL only
    hook.die.store(true, std::sync::atomic::Ordering::Release);
    let _ = s.close(); // the final pass never runs: a crash
    let table = damage_block_of(dir.path(), b"key0001");
    eprintln!("damaged a block of {}", table.display());
    match Shard::open(dir.path(), options()) {
        Err(e) => assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}"),
        Ok(s) => {
            let _ = s.close();
        }
    }
    let s = Shard::open(dir.path(), Options { salvage: true, ..options() })
        .unwrap_or_else(|e| panic!("salvage open of a shard with one damaged table block: {e} (status {})", e.status));
    let report = s.recovery_report().to_string();
    assert!(report.contains(&table.file_name().unwrap().to_string_lossy().into_owned()), "{report}");
    assert_eq!(s.get(b"key0001").unwrap().map(|e| e.value), Some(keel::shard::Value::Bytes(b"newer".to_vec())), "{report}");
    s.close().unwrap();
}

fn temporaries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(seg_dir(dir)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.ends_with(".tmp")).collect();
    v.sort();
    v
}

/// A merge that meets a damaged table block fails (CORRUPTION, in the
/// shard's health) and removes its half-written `seg-<new id>.sst.tmp`:
/// every retry takes a new segment id, so leftovers would pile up, one per
/// flush job, until the next open.
#[test]
fn a_failing_merge_leaves_no_temporary_table_behind() {
    let dir = TempDir::new("bit-rot-merge-tmp");
    rot_fixture(dir.path());
    damage_block_of(dir.path(), b"key0001");
    // More tables than max_sealed: every job after a pass merges them all.
    let s = Shard::open(dir.path(), Options { max_sealed: 1, ..options() }).unwrap();
    for round in 0..5 {
        s.put(format!("round{round}").as_bytes(), b"x").unwrap();
        s.flush(true).unwrap();
    }
    s.flush(true).unwrap(); // waits for the last job's merge
    let health = s.background_error();
    s.close().unwrap_or_else(|e| eprintln!("close: {e}")); // no job runs past it
    let left = temporaries(dir.path());
    eprintln!("health: {health:?}");
    assert_eq!(health.map(|e| e.status), Some(KEEL_STATUS_CORRUPTION), "the merge met the damaged block");
    assert!(left.is_empty(), "failed merges left {} temporary tables: {left:?}", left.len());
}

/// A scan reads only the blocks that hold its range: a damaged block that
/// starts right after the range's end leaves the scan whole, and a scan
/// that reaches into the block fails with CORRUPTION. (The merge of the
/// segments read one entry past the end, so the next block's checksum
/// failed scans of the intact range before it.)
#[test]
fn a_scan_ending_before_a_damaged_block_reads_its_range_whole() {
    let dir = TempDir::new("bit-rot-scan-end");
    let s = Shard::open(dir.path(), options()).unwrap();
    let keys: Vec<Vec<u8>> = (0..60).map(|i| format!("scan{i:04}").into_bytes()).collect();
    for k in &keys {
        s.put(k, &[b'v'; 500]).unwrap();
    }
    s.flush(true).unwrap();
    s.flush(true).unwrap();
    s.close().unwrap();
    assert_eq!(files(dir.path(), "sst").len(), 1, "{:?}", files(dir.path(), "sst"));
    damage_block_of(dir.path(), b"scan0030");

    let s = Shard::open(dir.path(), options()).unwrap();
    // The damaged block's first key: the first whose lookup reads it.
    let first_bad = keys.iter().position(|k| s.get(k).is_err()).expect("a lookup reads the damaged block");
    assert!(first_bad > 0, "the damaged block is the table's first");
    let end = keys[first_bad].clone();
    let got: Vec<Vec<u8>> = s
        .scan(b"", Some(&end))
        .and_then(|it| it.map(|r| r.map(|(k, _)| k)).collect())
        .unwrap_or_else(|e| panic!("scan of [\"\", {}) failed: {e} (status {})", String::from_utf8_lossy(&end), e.status));
    assert_eq!(got, keys[..first_bad]);
    let mut past = end.clone();
    past.push(0);
    for (start, end) in [(&b""[..], Some(&past[..])), (&end[..], None)] {
        match s.scan(start, end).and_then(|it| it.collect::<keel::Result<Vec<_>>>()) {
            Err(e) => assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}"),
            Ok(v) => panic!("a scan holding the damaged key answered {} keys", v.len()),
        }
    }
    s.close().unwrap();
}
