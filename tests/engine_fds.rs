//! Thousands of shards open at once in one engine of a process allowed
//! 1024 descriptors (docs/STORAGE.md, "Resource model"): the engine's
//! descriptor cache keeps its shards' files within its bound, closing
//! idle ones and opening them again when they are used.
//!
//! A second test runs the same life with 40 shards in 16 descriptors, in
//! this process.
//!
//! The work runs in a child process (this test binary run again for this
//! test) that lowers its own RLIMIT_NOFILE, so the limit binds nothing
//! else; it reports each phase through the pipe of `common::child`.

mod common;

use common::child::{self, report};
use common::TempDir;
use keel::engine::Engine;
use keel::shard::{Op, Options, Value};
use keel::wal::Durability;
use std::path::Path;
use std::time::{Duration, Instant};

/// Shards of the test: 10,000 in a release build (`make soak`), 600 in a
/// debug build, which `make test` runs: each shard's creation and close
/// are some 25 small syncs (a clean reopen none: docs/STORAGE.md, "The
/// descriptor cache"), so 10,000 take minutes on a busy 2-core machine, while 600
/// already hold more files than the cache's bound of 512 and make it
/// evict. `KEEL_ENGINE_FDS_SHARDS` overrides it (profiling).
fn shards() -> u32 {
    let default = if cfg!(debug_assertions) { 600 } else { 10_000 };
    std::env::var("KEEL_ENGINE_FDS_SHARDS").map_or(default, |v| v.parse().expect("KEEL_ENGINE_FDS_SHARDS"))
}
const NOFILE: u64 = 1024;
const CHILD_ENV: &str = "KEEL_ENGINE_FDS_CHILD";
/// Descriptors below the engine's folder beyond the cache's bound: its
/// LOCK, and for each of its four workers (two flush, two WAL) a file it
/// has pinned (a spare being prepared) and a folder it is syncing.
const SLACK: u64 = 1 + 4 * 2;

fn options() -> Options {
    // max_open_files left at 0: the engine takes half the descriptor limit.
    Options { durability: Durability::None, flush_interval: None, flush_threads: 2, ..Options::default() }
}

/// Threads that create, close and open the shards, as an application
/// with many shards would: a shard's creation is a series of small
/// syncs (docs/STORAGE.md, "Resource model"), and the device serves
/// several callers' at once.
const THREADS: u32 = 4;

/// `f(id)` for every id below `n`, on `THREADS` threads; the results in
/// id order.
fn each<T: Send>(n: u32, f: impl Fn(u32) -> T + Sync) -> Vec<T> {
    let f = &f;
    let mut parts: Vec<Vec<T>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS).map(|t| s.spawn(move || (t..n).step_by(THREADS as usize).map(f).collect())).collect();
        threads.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut iters: Vec<_> = parts.iter_mut().map(|p| p.drain(..)).collect();
    (0..n).map(|id| iters[(id % THREADS) as usize].next().unwrap()).collect()
}

/// The engine's life in the test: creates `n` shards, writes a key to
/// each, closes them, opens them all again and reads every key back,
/// calling `phase` after each step.
fn lifecycle(engine: &Engine, n: u32, mut phase: impl FnMut(&Engine, &str, Instant)) {
    let t = Instant::now();
    let shards = each(n, |id| check(engine.open_shard(id, true), || format!("create shard {id}")));
    phase(engine, "create", t);

    let t = Instant::now();
    for (id, s) in (0..n).zip(&shards) {
        check(s.write(&[Op::Put { key: key(id), value: value(id) }]), || format!("write shard {id}"));
    }
    phase(engine, "write", t);

    let t = Instant::now();
    each(n, |id| check(shards[id as usize].close(), || format!("close shard {id}")));
    drop(shards);
    phase(engine, "close", t);

    let t = Instant::now();
    let shards = each(n, |id| check(engine.open_shard(id, false), || format!("reopen shard {id}")));
    if engine.stats().unwrap().open_shards != n as u64 {
        fail(format!("{} shards open", engine.stats().unwrap().open_shards));
    }
    phase(engine, "reopen", t);

    let t = Instant::now();
    for (id, s) in (0..n).zip(&shards) {
        let got = check(s.get(&key(id)), || format!("read shard {id}")).map(|e| e.value);
        if got != Some(Value::Bytes(value(id))) {
            fail(format!("shard {id}: read {got:?} back"));
        }
    }
    phase(engine, "read", t);
}

fn key(id: u32) -> Vec<u8> {
    format!("key-{id}").into_bytes()
}

fn value(id: u32) -> Vec<u8> {
    id.to_le_bytes().to_vec()
}

/// Fails: in the child, with `what` reported to the parent.
fn fail(what: String) -> ! {
    if std::env::var(CHILD_ENV).is_err() {
        panic!("{what}");
    }
    report(&format!("E {what}\n"));
    std::process::exit(3)
}

fn check<T, E: std::fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> T {
    r.unwrap_or_else(|e| fail(format!("{}: {e}", what())))
}

/// Reports how long a phase took and checks the engine's descriptors.
fn phase(engine: &Engine, name: &str, started: Instant) {
    let st = check(engine.stats(), || "stats".into());
    if st.open_files > st.max_open_files + SLACK {
        fail(format!("{name}: {} files open, the cache's bound is {}: {st:?}", st.open_files, st.max_open_files));
    }
    report(&format!(
        "P {name} {} ms, {} files open (bound {}), cache hits {} misses {} evictions {}\n",
        started.elapsed().as_millis(),
        st.open_files,
        st.max_open_files,
        st.file_cache_hits,
        st.file_cache_misses,
        st.file_cache_evictions
    ));
}

fn child_main(dir: &Path) -> ! {
    let lim = libc::rlimit { rlim_cur: NOFILE, rlim_max: NOFILE };
    // SAFETY: setrlimit reads one rlimit from the live local `lim`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        fail(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    let all = Instant::now();
    let n = shards();
    let engine = check(Engine::open(dir, options()), || "engine open".into());
    if engine.stats().unwrap().max_open_files != NOFILE / 2 {
        fail(format!("default bound {} under a limit of {NOFILE}", engine.stats().unwrap().max_open_files));
    }

    lifecycle(&engine, n, phase);
    if engine.stats().unwrap().file_cache_evictions == 0 {
        fail(format!("{n} shards in 512 descriptors, yet nothing was evicted"));
    }

    let t = Instant::now();
    check(engine.close(), || "engine close".into());
    report(&format!("P engine-close {} ms\n", t.elapsed().as_millis()));
    report(&format!("D {} ms\n", all.elapsed().as_millis()));
    std::process::exit(0)
}

/// The same life, in this process, with a bound far below what the
/// shards hold: every file is closed and opened again many times.
#[test]
fn a_few_descriptors_serve_many_shards() {
    const SHARDS: u32 = 40;
    const BOUND: usize = 16;
    let t = TempDir::new("engine-fds-small");
    let engine = Engine::open(&t.path().join("engine"), Options { max_open_files: BOUND, ..options() }).unwrap();
    lifecycle(&engine, SHARDS, |engine, name, _| {
        let st = engine.stats().unwrap();
        assert_eq!(st.max_open_files, BOUND as u64);
        assert!(st.open_files <= BOUND as u64 + SLACK, "{name}: {} files open, bound {BOUND}: {st:?}", st.open_files);
    });
    let st = engine.stats().unwrap();
    assert!(st.file_cache_evictions > 0 && st.file_cache_misses > 0 && st.file_cache_hits > 0, "{st:?}");
    engine.close().unwrap();
}

/// `shards()` shards (10,000 in a release build) under a limit of 1024
/// descriptors.
#[test]
fn ten_thousand_shards_in_a_thousand_descriptors() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child_main(Path::new(&dir));
    }
    let t = TempDir::new("engine-fds");
    let dir = t.path().join("engine");
    let started = Instant::now();
    let child::Child { process: mut child, lines } =
        child::spawn("ten_thousand_shards_in_a_thousand_descriptors", &[(CHILD_ENV, dir.display().to_string())], None).unwrap();
    let mut done = false;
    loop {
        let line = match lines.recv_timeout(Duration::from_secs(600)) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("child silent for 600 s: {e}"),
        };
        println!("child: {line}");
        assert!(!line.starts_with('E'), "child failed: {line}");
        done |= line.starts_with('D');
    }
    let status = child.wait().unwrap();
    assert!(status.success() && done, "child ended with {status} (done: {done})");
    println!("{} shards under RLIMIT_NOFILE {NOFILE}: {:?} in all", shards(), started.elapsed());
}
