//! The engine's own file operations (LOCK, shard directories, directory
//! fsyncs, drops) go through the same `FileSystem` as the WAL and the
//! segments, so the fault-injecting file system reaches them too.

mod common;

use common::faultfs::{FaultFs, Faults};
use keel::engine::Engine;
use keel::shard::Options;
use keel::status::*;
use std::path::Path;
use std::sync::Arc;

fn options() -> Options {
    Options { flush_interval: None, wal_segment_size: 64 << 10, ..Options::default() }
}

#[test]
fn engine_lock_and_directory_syncs_go_through_the_file_system() {
    let fs = FaultFs::new(7);
    let dir = Path::new("/keel/engine");
    fs.set_faults(Faults { eio_sync_dir: 1000, ..Faults::default() });
    let e = Engine::open_with_fs(dir, options(), Arc::new(fs.clone())).err().expect("a failing directory fsync fails the open");
    assert_eq!(e.status, KEEL_STATUS_IO, "{e}");
    assert!(fs.injected().iter().any(|i| i.contains("directory fsync")), "{:?}", fs.injected());

    fs.set_faults(Faults::default());
    let engine = Engine::open_with_fs(dir, options(), Arc::new(fs.clone())).unwrap();
    let busy = Engine::open_with_fs(dir, options(), Arc::new(fs.clone())).err().expect("the LOCK is held");
    assert_eq!(busy.status, KEEL_STATUS_BUSY, "{busy}");

    let shard = engine.open_shard(3, true).unwrap();
    shard.put(b"k", b"v").unwrap();
    shard.close().unwrap();
    engine.open_shard(4, true).unwrap().close().unwrap();
    assert_eq!(engine.list_shards().unwrap(), vec![3, 4]);

    fs.set_faults(Faults { eio_sync_dir: 1000, ..Faults::default() });
    let e = engine.open_shard(5, true).err().expect("creating a shard syncs its parent directory");
    assert_eq!(e.status, KEEL_STATUS_IO, "{e}");
    fs.set_faults(Faults::default());

    engine.drop_shard(4).unwrap();
    assert!(!engine.list_shards().unwrap().contains(&4));
    let reopened = engine.open_shard(3, false).unwrap();
    assert_eq!(reopened.get(b"k").unwrap().unwrap().value, keel::shard::Value::Bytes(b"v".to_vec()));
    reopened.close().unwrap();
    engine.close().unwrap();
}
