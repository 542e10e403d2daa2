//! The engine's own file operations (LOCK, shard directories, directory
//! fsyncs, drops) go through the same `FileSystem` as the WAL and the
//! segments, so the fault-injecting file system reaches them too.

mod common;

use common::faultfs::{FaultFs, Faults};
use common::hookfs::{Call, HookFs};
use keel::engine::Engine;
use keel::fs::FileSystem;
use keel::shard::Options;
use keel::status::*;
use keel::wal::Durability;
use std::io;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

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

/// A shard closed cleanly reopens, passes its first flush and closes
/// again without a sync (docs/STORAGE.md, "The price of a shard"); one
/// whose process was killed after a write still syncs at its reopen, so a
/// power loss after that keeps what the reopen recovered.
#[test]
fn a_clean_reopen_syncs_nothing_and_one_after_a_kill_still_syncs() {
    for seed in 0..20 {
        let fs = FaultFs::new(seed);
        let dir = Path::new("/keel/engine");
        let open = || Engine::open_with_fs(dir, Options { durability: Durability::None, ..options() }, Arc::new(fs.clone())).unwrap();
        let value = |s: &keel::shard::Shard, key: &[u8]| s.get(key).unwrap().map(|e| e.value);
        let bytes = |v: &[u8]| Some(keel::shard::Value::Bytes(v.to_vec()));
        let engine = open();
        let s = engine.open_shard(1, true).unwrap();
        s.put(b"a", b"1").unwrap();
        s.close().unwrap();
        let before = fs.syncs();
        let s = engine.open_shard(1, false).unwrap();
        assert_eq!(value(&s, b"a"), bytes(b"1"));
        s.flush(true).unwrap();
        s.close().unwrap();
        assert_eq!(fs.syncs(), before, "seed {seed}: a clean reopen, a flush pass and an unwritten close sync nothing");

        // Killed after a write its WAL never synced: the next open finds
        // the log past its extent record and syncs it before counting the
        // write durable.
        let s = engine.open_shard(1, false).unwrap();
        s.put(b"b", b"2").unwrap();
        fs.halt();
        drop(s);
        drop(engine);
        fs.resume();
        let engine = open();
        let s = engine.open_shard(1, false).unwrap();
        assert_eq!(value(&s, b"b"), bytes(b"2"), "seed {seed}: the killed process's write");
        fs.halt();
        drop(s);
        drop(engine);
        fs.crash();
        let engine = open();
        let s = engine.open_shard(1, false).unwrap_or_else(|e| panic!("seed {seed}: open after power loss: {e}"));
        assert_eq!(value(&s, b"a"), bytes(b"1"), "seed {seed}");
        assert_eq!(value(&s, b"b"), bytes(b"2"), "seed {seed}: recovered, then lost to a power loss");
        s.close().unwrap();
        engine.close().unwrap();
    }
}

/// The engine's data directory on the real file system.
fn engine_at(dir: &Path) -> Engine {
    Engine::open(dir, options()).unwrap()
}

#[test]
fn a_vanished_shard_directory_is_corruption_not_a_fresh_shard() {
    let t = common::TempDir::new("engine-vanished");
    let engine = engine_at(t.path());
    let s = engine.open_shard(3, true).unwrap();
    s.put(b"k", b"v").unwrap();
    s.close().unwrap();
    engine.close().unwrap();
    drop(engine);
    std::fs::remove_dir_all(t.path().join("shards").join("3")).unwrap();
    let engine = engine_at(t.path());
    assert_eq!(engine.list_shards().unwrap(), vec![3]);
    for create in [false, true] {
        let e = engine.open_shard(3, create).err().expect("the shard's data is gone");
        assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}");
    }
    // Dropping it is still possible (and makes the id free again).
    engine.drop_shard(3).unwrap();
    assert!(engine.open_shard(3, true).unwrap().get(b"k").unwrap().is_none());
}

#[test]
fn only_canonical_directory_names_are_shard_ids() {
    let t = common::TempDir::new("engine-names");
    let engine = engine_at(t.path());
    engine.open_shard(1, true).unwrap().close().unwrap();
    for stray in ["01", "+1", "0001"] {
        std::fs::create_dir(t.path().join("shards").join(stray)).unwrap();
    }
    assert_eq!(engine.list_shards().unwrap(), vec![1]);
    engine.close().unwrap();
    drop(engine);
    assert_eq!(engine_at(t.path()).list_shards().unwrap(), vec![1]);
}

#[test]
fn a_lost_shard_list_is_corruption_and_salvage_rebuilds_it() {
    let t = common::TempDir::new("engine-list");
    let engine = engine_at(t.path());
    engine.open_shard(7, true).unwrap().close().unwrap();
    engine.close().unwrap();
    drop(engine);
    std::fs::remove_file(t.path().join("SHARDS")).unwrap();
    let e = Engine::open(t.path(), options()).err().expect("shard directories without a list");
    assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}");
    let salvaged = Engine::open(t.path(), Options { salvage: true, ..options() }).unwrap();
    assert_eq!(salvaged.list_shards().unwrap(), vec![7]);
}

/// A shard list whose length says 4 TiB (sparse) is CORRUPTION naming
/// it, found before it is read: reading it whole aborted the process.
#[test]
fn a_huge_shard_list_is_corruption_not_an_abort() {
    let t = common::TempDir::new("engine-list-huge");
    let engine = engine_at(t.path());
    engine.open_shard(7, true).unwrap().close().unwrap();
    engine.close().unwrap();
    drop(engine);
    std::fs::OpenOptions::new().write(true).open(t.path().join("SHARDS")).unwrap().set_len(1 << 42).unwrap();
    let e = Engine::open(t.path(), options()).err().expect("a list of 4 TiB");
    assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}");
    assert!(e.message.contains("SHARDS"), "{e}");
}

/// Power loss after a run of creates and drops, some of them failing on
/// injected write and sync errors (the fault file system keeps a random
/// part of what was not synced, its last write maybe cut short): the
/// engine opens again, every create and drop that returned is as it
/// said, and every listed shard opens.
#[test]
fn power_loss_keeps_every_acknowledged_create_and_drop() {
    let faults = Faults { eio_write: 40, eio_sync: 40, eio_sync_dir: 40, ..Faults::default() };
    for seed in 0..150 {
        let fs = FaultFs::new(seed);
        let mut rng = common::rng::Rng::new(seed);
        let dir = Path::new("/keel/engine");
        let open = || Engine::open_with_fs(dir, options(), Arc::new(fs.clone()));
        let engine = open().unwrap();
        // id -> listed, for the ids whose last change returned; a failed
        // one leaves its id either way.
        let mut known = std::collections::BTreeMap::new();
        fs.set_faults(faults);
        for _ in 0..30 {
            let id = rng.below(8) as u32;
            let outcome = if known.get(&id) == Some(&true) && rng.chance(500) {
                engine.drop_shard(id).map(|()| false)
            } else {
                engine.open_shard(id, true).and_then(|s| s.close()).map(|()| true)
            };
            match outcome {
                Ok(listed) => known.insert(id, listed),
                Err(_) => known.remove(&id),
            };
        }
        fs.halt();
        drop(engine);
        fs.crash();
        fs.set_faults(Faults::default());
        let engine = open().unwrap_or_else(|e| panic!("seed {seed}: open after power loss: {e}; {:?}", fs.injected()));
        let listed = engine.list_shards().unwrap();
        for (&id, &want) in &known {
            assert_eq!(listed.contains(&id), want, "seed {seed}: shard {id} listed: {listed:?}; {:?}", fs.injected());
        }
        for &id in &listed {
            let s = engine.open_shard(id, false).unwrap_or_else(|e| panic!("seed {seed}: shard {id}: {e}; {:?}", fs.injected()));
            s.close().unwrap();
        }
        let folders = fs.list(&dir.join("shards")).unwrap();
        assert!(folders.iter().all(|n| listed.iter().any(|id| id.to_string() == *n)), "seed {seed}: leftovers {folders:?} beside {listed:?}");
    }
}

/// An engine directory written by an older keel, whose shard list held
/// every id in one checksummed frame, still opens; its list is written
/// again in the log format and takes appends.
#[test]
fn a_shard_list_in_the_first_format_still_opens() {
    let t = common::TempDir::new("engine-list-v1");
    let engine = engine_at(t.path());
    for id in [2, 5] {
        engine.open_shard(id, true).unwrap().close().unwrap();
    }
    engine.close().unwrap();
    drop(engine);
    // Format 1: [magic "KEELSHD1"][len u32][crc32 u32][count u32][id u32]*.
    let body: Vec<u8> = [2u32, 2, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut v1 = 0x3144_4853_4c45_454bu64.to_le_bytes().to_vec();
    v1.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v1.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    v1.extend_from_slice(&body);
    std::fs::write(t.path().join("SHARDS"), &v1).unwrap();
    let engine = engine_at(t.path());
    assert_eq!(engine.list_shards().unwrap(), vec![2, 5]);
    assert_eq!(&std::fs::read(t.path().join("SHARDS")).unwrap()[..8], b"KEELSHD2");
    engine.open_shard(9, true).unwrap().close().unwrap();
    engine.drop_shard(2).unwrap();
    engine.close().unwrap();
    drop(engine);
    assert_eq!(engine_at(t.path()).list_shards().unwrap(), vec![5, 9]);
}

/// A create cut before its id was listed leaves an empty shard folder,
/// which engine open removes; an unlisted folder with anything in it is
/// not a create's leftover and stays (creating that id is CORRUPTION).
#[test]
fn an_empty_unlisted_shard_folder_is_a_cut_create() {
    let t = common::TempDir::new("engine-cut-create");
    let engine = engine_at(t.path());
    engine.open_shard(1, true).unwrap().close().unwrap();
    engine.close().unwrap();
    drop(engine);
    let shards = t.path().join("shards");
    std::fs::create_dir(shards.join("4")).unwrap();
    std::fs::create_dir_all(shards.join("6").join("wal")).unwrap();
    let engine = engine_at(t.path());
    assert!(!shards.join("4").exists(), "the cut create's folder is removed");
    assert!(shards.join("6").exists(), "a folder with data stays");
    assert_eq!(engine.list_shards().unwrap(), vec![1]);
    engine.open_shard(4, true).unwrap().close().unwrap();
    let e = engine.open_shard(6, true).err().expect("an unlisted shard folder with data");
    assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}");
}

/// An engine at `dir` with shards 1 and 2, a key each, closed; returns
/// the path of its shard list.
fn shards_1_and_2(dir: &Path) -> std::path::PathBuf {
    let engine = engine_at(dir);
    for id in [1, 2] {
        let s = engine.open_shard(id, true).unwrap();
        s.put(b"k", format!("shard {id}").as_bytes()).unwrap();
        s.close().unwrap();
    }
    engine.close().unwrap();
    dir.join("SHARDS")
}

/// A salvage open of `dir` (from `shards_1_and_2`, its list missing shard
/// 2) lists shard 2 again with its key, and writes the list so that a
/// normal open lists it too.
fn salvage_lists_shard_2_again(dir: &Path) {
    let engine = Engine::open(dir, Options { salvage: true, ..options() }).unwrap();
    assert_eq!(engine.list_shards().unwrap(), vec![1, 2]);
    let s = engine.open_shard(2, false).unwrap();
    assert_eq!(s.get(b"k").unwrap().map(|e| e.value), Some(keel::shard::Value::Bytes(b"shard 2".to_vec())));
    s.close().unwrap();
    engine.close().unwrap();
    drop(engine);
    assert_eq!(engine_at(dir).list_shards().unwrap(), vec![1, 2], "the salvage wrote the list again");
}

/// One bit flipped in the last record of SHARDS, that of shard 2, whose
/// create returned and whose folder holds its files. A torn append (a
/// create cut by a power loss) looks the same in the list, but it cannot
/// leave files: a shard's files are made only once its record is durable.
/// So a normal open is CORRUPTION, not an engine without shard 2 (which
/// would then answer NOT_FOUND for it and rewrite the list without it),
/// and a salvage open lists shard 2 again.
#[test]
fn a_damaged_last_record_of_an_acknowledged_create_is_corruption() {
    let t = common::TempDir::new("engine-list-last-damaged");
    let list = shards_1_and_2(t.path());
    let mut bytes = std::fs::read(&list).unwrap();
    assert_eq!((&bytes[..8], (bytes.len() - 8) % 12), (&b"KEELSHD2"[..], 0), "{} bytes", bytes.len());
    let n = bytes.len();
    bytes[n - 12] ^= 0x01; // shard 2's id becomes 3; the record's checksum no longer matches
    std::fs::write(&list, &bytes).unwrap();
    let e = Engine::open(t.path(), options()).err().expect("a damaged record of an acknowledged create");
    assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}");
    assert!(e.message.contains("SHARDS") && e.message.contains("shard 2"), "{e}");
    salvage_lists_shard_2_again(t.path());
}

/// As above, and the first look into shard 2's folder fails (EIO). Open
/// took the failure for an empty folder: it opened, and wrote the list
/// again whole without the damaged record, so the next open found no
/// damage to report and opened without shard 2. Now that open is IO and
/// the list stays as it was.
#[test]
fn an_error_looking_into_an_unlisted_folder_beside_a_damaged_list_is_no_empty_folder() {
    let t = common::TempDir::new("engine-list-last-damaged-eio");
    let list = shards_1_and_2(t.path());
    let mut bytes = std::fs::read(&list).unwrap();
    let n = bytes.len();
    bytes[n - 12] ^= 0x01;
    std::fs::write(&list, &bytes).unwrap();
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failed.clone();
    let shard_2 = t.path().join("shards").join("2");
    let fs = HookFs::new(move |call, path| match call == Call::List && path == shard_2 && !f.swap(true, std::sync::atomic::Ordering::AcqRel) {
        true => Err(io::Error::from_raw_os_error(libc::EIO)),
        false => Ok(()),
    });
    let e = Engine::open_with_fs(t.path(), options(), fs).err().expect("shard 2's folder could not be listed");
    assert_eq!(e.status, KEEL_STATUS_IO, "{e}");
    assert_eq!(std::fs::read(&list).unwrap(), bytes, "the list is as it was");
    let e = Engine::open(t.path(), options()).err().expect("a damaged record of an acknowledged create");
    assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}");
}

/// SHARDS cut at a record boundary (shard 2's acknowledged create lost
/// whole, no torn tail to tell): the engine opens, but shard 2, whose
/// folder holds its files, answers CORRUPTION whether or not the open may
/// create it, never NOT_FOUND or a new empty shard over its data; a
/// salvage open lists it again.
#[test]
fn a_shard_list_cut_at_a_record_boundary_leaves_the_unlisted_shard_to_salvage() {
    let t = common::TempDir::new("engine-list-cut-whole");
    let list = shards_1_and_2(t.path());
    let bytes = std::fs::read(&list).unwrap();
    std::fs::write(&list, &bytes[..bytes.len() - 12]).unwrap();
    let engine = engine_at(t.path());
    assert_eq!(engine.list_shards().unwrap(), vec![1]);
    for create in [false, true] {
        let e = engine.open_shard(2, create).err().expect("an unlisted shard with files");
        assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "create_if_missing {create}: {e}");
        assert!(e.message.contains("salvage"), "{e}");
    }
    engine.close().unwrap();
    drop(engine);
    salvage_lists_shard_2_again(t.path());
}

#[test]
fn a_shard_recovering_does_not_hold_up_the_others() {
    let t = common::TempDir::new("engine-concurrent");
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    // The first look at shard 1's segment folder waits until the test
    // lets it go: shard 1's recovery is in progress as long as needed.
    let (entered_tx, release_rx) = (Mutex::new(Some(entered_tx)), Mutex::new(Some(release_rx)));
    let gate = HookFs::new(move |call, path| {
        if call == Call::Exists && path.ends_with("shards/1/segments") {
            if let Some(entered) = entered_tx.lock().unwrap().take() {
                entered.send(()).unwrap();
                release_rx.lock().unwrap().take().unwrap().recv().unwrap();
            }
        }
        Ok(())
    });
    let engine = Arc::new(Engine::open_with_fs(t.path(), options(), gate).unwrap());
    let opener = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.open_shard(1, true).map(|s| s.close()))
    };
    entered.recv().unwrap(); // shard 1 is in the middle of its recovery
    // A guard against a hang, not a timing assertion: before the fix the
    // engine's mutex was held through shard 1's recovery.
    let (done_tx, done) = mpsc::channel();
    let others = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let two = engine.open_shard(2, true).unwrap();
            two.put(b"k", b"v").unwrap();
            two.close().unwrap();
            let listed = engine.list_shards().unwrap();
            let again = engine.open_shard(1, true).err().unwrap().status;
            let dropped = engine.drop_shard(1).err().unwrap().status;
            done_tx.send((listed, again, dropped)).unwrap();
        })
    };
    let (listed, again, dropped) = done.recv_timeout(Duration::from_secs(120)).expect("other shards waited for shard 1's recovery");
    assert_eq!(listed, vec![1, 2]);
    assert_eq!(again, KEEL_STATUS_BUSY, "a second open of a shard being opened");
    assert_eq!(dropped, KEEL_STATUS_BUSY, "a drop of a shard being opened");
    release.send(()).unwrap();
    opener.join().unwrap().unwrap().unwrap();
    others.join().unwrap();
    engine.close().unwrap();
}

const LOCK_HOLDER_ENV: &str = "KEEL_ENGINE_LOCK_HOLDER";

/// The directory lock (docs/WAL.md, "A forking host and the LOCK"): a
/// child forked while the engine was open, and not exec'd yet, keeps no
/// lock once the engine closed, so it opens again at once; an engine open
/// in another process makes an open BUSY until that process dies.
#[test]
fn the_lock_is_busy_across_processes_and_not_kept_by_a_fork() {
    if let Ok(dir) = std::env::var(LOCK_HOLDER_ENV) {
        // The holder, in a child process: open, say so, wait to be killed.
        let _engine = Engine::open(Path::new(&dir), options()).unwrap();
        common::child::report("open\n");
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let t = common::TempDir::new("engine-lock");
    let dir = t.path().join("e");
    let engine = Engine::open(&dir, options()).unwrap();
    // SAFETY: fork in a threaded process: the child calls only pause and
    // _exit (async-signal-safe) until the parent kills it.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::pause();
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork: {}", io::Error::last_os_error());
    engine.close().unwrap();
    drop(engine); // the directory is released with the engine
    let again = Engine::open(&dir, options());
    // SAFETY: signals and reaps our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    again.expect("the fork holds a copy of the LOCK's descriptor, but no lock").close().unwrap();

    let common::child::Child { process: mut holder, lines } =
        common::child::spawn("the_lock_is_busy_across_processes_and_not_kept_by_a_fork", &[(LOCK_HOLDER_ENV, dir.display().to_string())], None)
            .unwrap();
    assert_eq!(lines.recv_timeout(Duration::from_secs(120)).unwrap(), "open");
    let busy = Engine::open(&dir, options()).err().expect("another process holds the LOCK");
    assert_eq!(busy.status, KEEL_STATUS_BUSY, "{busy}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    Engine::open(&dir, options()).unwrap().close().unwrap();
}

/// docs/STORAGE.md, "Create": a snapshot's reception lists its new shard
/// only once the shard's folder holds the INCOMING marker. It once
/// listed the empty folder first and wrote the marker after: a failure
/// (or a crash) in between left a listed shard with no marker, which the
/// host's `open_shard` handed out as its own empty shard, the reception
/// unfinished (and the shard it replaced already dropped).
#[test]
fn a_snapshot_reception_cut_before_its_marker_never_opens_as_a_normal_shard() {
    // Every write below shard 7's folder fails: the reception's first one
    // there stops it.
    let (running, after) = cut_reception(3, "shards/7", false);
    assert_eq!(running, Some(Ok(true)), "after the failed reception");
    assert_eq!(after, Ok(true), "after a power loss");
    // Killed at the fdatasync of the listing, then power loss, which keeps
    // the listing or not: the shard is incoming (its staged folder renamed
    // into place by engine open) or absent, never a normal shard.
    let mut busy = 0;
    for seed in 0..6 {
        let (_, after) = cut_reception(seed, "SHARDS", true);
        match after {
            Ok(b) => busy += b as u32,
            Err(e) => panic!("seed {seed}: after a power loss: {e}"),
        }
    }
    assert!(busy > 0, "no power loss kept the listing");
}

/// Sends a snapshot of shard 7 to an engine on a `TripFs` below
/// `/keel/dst/<under>`, armed once it is open to halt the process at the
/// next fdatasync there (`killed`) or to fail every write there; the
/// transfer fails. Then how `open_shard(7)` answers: the running engine
/// (None once halted), and after a power loss. Ok(true) is BUSY, Ok(false)
/// NOT_FOUND, Err anything else.
fn cut_reception(seed: u64, under: &str, killed: bool) -> (Option<Result<bool, String>>, Result<bool, String>) {
    use std::sync::atomic::Ordering::SeqCst;
    use common::side::{node_options, Side};
    use keel::node::Node;
    use keel::transfer::{Method, Retry, TransferOptions, Transfers};
    const SHARD: u32 = 7;
    let src = Side::temp("engine-incoming-src", node_options(1), options());
    let dst_dir = Path::new("/keel/dst");
    let fs = common::tripfs::TripFs::new(FaultFs::new(seed), dst_dir.join(under));
    let dst_engine = Arc::new(Engine::open_with_fs(dst_dir, options(), Arc::new(fs.clone())).unwrap());
    let dst_node = Arc::new(Node::open(node_options(2)).unwrap());
    let dst = Transfers::attach(dst_node.clone(), dst_engine.clone()).unwrap();
    src.node.connect(2, &dst_node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    shard.put(b"k", b"v").unwrap();
    dst.expect(SHARD, 1);
    match killed {
        true => fs.kill_at_sync.store(true, SeqCst),
        false => fs.fail_writes.store(true, SeqCst),
    }
    let once = TransferOptions { method: Method::Snapshot, retry: Retry { max_retries: 0, ..Retry::default() }, ..Default::default() };
    let sent = src.transfers.send_shard(&shard, SHARD, 2, &once);
    assert!(sent.is_err(), "seed {seed}: the reception failed: {sent:?}");
    fs.fail_writes.store(false, SeqCst);
    let answer = |e: &Engine| match e.open_shard(SHARD, false) {
        Ok(_) => Err("opened as a normal shard".to_string()),
        Err(e) if e.status == KEEL_STATUS_BUSY => Ok(true),
        Err(e) if e.status == KEEL_STATUS_NOT_FOUND => Ok(false),
        Err(e) => Err(format!("{e}")),
    };
    let running = (!killed).then(|| answer(&dst_engine));
    let _ = dst_node.close();
    dst.close();
    let _ = dst_engine.close();
    drop(dst_engine);
    fs.fs.crash();
    let reopened = Engine::open_with_fs(dst_dir, options(), Arc::new(fs.fs.clone())).unwrap();
    let after = answer(&reopened);
    reopened.close().unwrap();
    (running, after)
}

/// Creates and drops in one engine session keep the shard list within
/// the bound its open compacts it to (twice the records of the shards
/// listed, plus 64): it grew by two records a create and drop for as
/// long as the engine stayed open, until an open refused it as damage
/// past 1 GiB.
#[test]
fn creates_and_drops_do_not_grow_the_shard_list_while_the_engine_runs() {
    let t = common::TempDir::new("engine-list-churn");
    let engine = Engine::open(t.path(), Options { durability: Durability::None, ..options() }).unwrap();
    engine.open_shard(1, true).unwrap().close().unwrap();
    let bound = 8 + 12 * (2 * 2 + 64 + 1);
    for cycle in 0..100 {
        engine.open_shard(7, true).unwrap().close().unwrap();
        engine.drop_shard(7).unwrap();
        let len = std::fs::metadata(t.path().join("SHARDS")).unwrap().len();
        assert!(len <= bound, "cycle {cycle}: SHARDS holds {len} bytes for 1 shard");
    }
    assert_eq!(engine.list_shards().unwrap(), vec![1]);
    engine.close().unwrap();
    drop(engine);
    assert_eq!(engine_at(t.path()).list_shards().unwrap(), vec![1]);
}
