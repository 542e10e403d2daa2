//! What an open refuses before it writes anything (a WAL into a foreign
//! directory, an engine onto a WAL directory) and the shard's size limits
//! at their edges (issue #10 §6).

mod common;

use common::TempDir;
use keel::engine::Engine;
use keel::shard::{self, MAX_KEY_SIZE, MAX_VALUE_SIZE};
use keel::status::*;
use keel::wal::{self, Durability, Wal};
use std::path::Path;

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn wal_opts() -> wal::Options {
    wal::Options { durability: Durability::None, segment_size: 64 << 10, ..wal::Options::default() }
}

#[test]
fn a_wal_is_not_written_into_a_non_empty_foreign_directory_unless_asked() {
    let d = TempDir::new("foreign");
    std::fs::write(d.path().join("notes.txt"), b"mine").unwrap();
    std::fs::create_dir(d.path().join("photos")).unwrap();
    let e = Wal::open(d.path(), wal_opts()).err().expect("a foreign directory is refused");
    assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT, "{e}");
    assert!(e.message.contains("holds no keel WAL segment") && e.message.contains("notes.txt"), "{e}");
    assert_eq!(entries(d.path()), ["notes.txt", "photos"], "nothing was written");

    // Asked explicitly: it opens, and the WAL's own files make it a WAL
    // directory from then on.
    let w = Wal::open(d.path(), wal::Options { allow_foreign_files: true, ..wal_opts() }).unwrap();
    assert_eq!(w.append(b"r1").unwrap(), 1);
    w.close().unwrap();
    let w = Wal::open(d.path(), wal_opts()).unwrap();
    assert_eq!(w.last_seq(), 1);
    w.close().unwrap();

    // Empty, missing and lone-LOCK directories are fine.
    let empty = TempDir::new("foreign-empty");
    Wal::open(empty.path(), wal_opts()).unwrap().close().unwrap();
    Wal::open(&empty.path().join("new/sub"), wal_opts()).unwrap().close().unwrap();
    let lock_only = TempDir::new("foreign-lock");
    std::fs::write(lock_only.path().join("LOCK"), b"").unwrap();
    Wal::open(lock_only.path(), wal_opts()).unwrap().close().unwrap();
}

#[test]
fn an_engine_refuses_a_wal_directory_naming_it_and_touching_nothing() {
    let d = TempDir::new("engine-on-wal");
    let w = Wal::open(d.path(), wal_opts()).unwrap();
    w.append(b"r").unwrap();
    w.close().unwrap();
    let before = entries(d.path());
    let e = Engine::open(d.path(), shard::Options::default()).err().expect("a WAL directory is not an engine directory");
    assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT, "{e}");
    assert!(e.message.contains("is a keel WAL directory, not an engine data directory"), "{e}");
    assert_eq!(entries(d.path()), before, "no shards/ created");

    // And the other way round: an engine directory is not a WAL.
    let d = TempDir::new("wal-on-engine");
    Engine::open(d.path(), shard::Options::default()).unwrap().close().unwrap();
    let e = Wal::open(d.path(), wal_opts()).err().expect("shards/ is foreign to a WAL");
    assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT, "{e}");
}

#[test]
fn a_16_mib_value_with_a_4_kib_key_is_accepted_at_default_options_and_errors_name_the_callers_sizes() {
    let d = TempDir::new("max-value");
    let opts = shard::Options { durability: Durability::None, flush_interval: None, ..shard::Options::default() };
    let engine = Engine::open(d.path(), opts.clone()).unwrap();
    let s = engine.open_shard(1, true).unwrap();
    let key = vec![b'k'; MAX_KEY_SIZE];
    let value = vec![7u8; MAX_VALUE_SIZE];
    let v = s.put(&key, &value).unwrap();
    assert_eq!(s.get(&key).unwrap().expect("stored").version, v);
    s.append(b"list", &value).expect("a 16 MiB posting item too");

    let e = s.put(b"k", &vec![0; MAX_VALUE_SIZE + 1]).expect_err("one byte over");
    assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT, "{e}");
    assert!(e.message.contains(&format!("value of {} bytes", MAX_VALUE_SIZE + 1)), "{e}");
    assert!(e.message.contains(&format!("limit of {MAX_VALUE_SIZE} bytes")), "{e}");
    s.close().unwrap();
    engine.close().unwrap();
    drop(engine); // releases the LOCK

    // Reopened, the WAL replays the largest record.
    let engine = Engine::open(d.path(), opts).unwrap();
    let s = engine.open_shard(1, false).unwrap();
    assert_eq!(s.get(&key).unwrap().expect("replayed").version, v);
    s.close().unwrap();
    engine.close().unwrap();

    // Small WAL segments lower the limit; the error still names the
    // caller's key and value sizes, not the framed record.
    let d = TempDir::new("small-segments");
    let small = shard::Options { wal_segment_size: 64 << 10, flush_interval: None, ..shard::Options::default() };
    let engine = Engine::open(d.path(), small).unwrap();
    let s = engine.open_shard(1, true).unwrap();
    let e = s.put(b"abc", &vec![0; 70_000]).expect_err("does not fit a 64 KiB segment");
    assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT, "{e}");
    assert!(e.message.contains("key of 3 bytes with a value of 70000 bytes"), "{e}");
    assert!(e.message.contains(&format!("at most {}", (64 << 10) - 104)), "{e}");
    s.close().unwrap();
    engine.close().unwrap();
}

/// The WAL of an engine's open shard takes no LOCK of its own (the
/// engine's covers it), and `Wal::open` of that directory once succeeded:
/// a second writer ran recovery on a live log and appended under numbers
/// the shard handed out again, and the shard's reopen lost its record.
/// It is BUSY, as any second open of a WAL directory is, and so is a
/// standalone open of the shard.
#[test]
fn the_wal_of_an_engines_open_shard_is_busy() {
    let d = TempDir::new("engine-shard-wal-busy");
    let engine = Engine::open(d.path(), shard::Options { durability: Durability::None, ..shard::Options::default() }).unwrap();
    let s = engine.open_shard(5, true).unwrap();
    s.put(b"a", b"engine").unwrap();
    let shard_dir = d.path().join("shards").join("5");
    let e = Wal::open(&shard_dir.join("wal"), wal_opts()).err().expect("the WAL of an open engine shard");
    assert_eq!(e.status, KEEL_STATUS_BUSY, "{e}");
    let e = shard::Shard::open(&shard_dir, shard::Options::default()).err().expect("an open engine shard, opened alone");
    assert_eq!(e.status, KEEL_STATUS_BUSY, "{e}");
    // However the folder is spelled (here through a symlink; a relative
    // path from inside the shard's folder is resolved the same way).
    let link = d.path().join("shard-5-link");
    std::os::unix::fs::symlink(&shard_dir, &link).unwrap();
    let e = Wal::open(&link.join("wal"), wal_opts()).err().expect("the same WAL through a symlink");
    assert_eq!(e.status, KEEL_STATUS_BUSY, "{e}");
    s.close().unwrap();
    engine.close().unwrap();
}
