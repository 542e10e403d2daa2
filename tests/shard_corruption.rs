//! Damage to a shard directory's files (missing, truncated, renamed,
//! duplicated, swapped, substituted): a normal open fails with CORRUPTION
//! naming the file, never opens with data silently missing; a salvage
//! open (`Options::salvage`) opens what is left and reports what is gone.
//! docs/STORAGE.md has the table of outcomes.

mod common;

use common::TempDir;
use keel::shard::{Options, Shard, Value};
use keel::status::*;
use keel::wal::Durability;
use std::path::{Path, PathBuf};

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
