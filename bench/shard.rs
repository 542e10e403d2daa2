//! Shard benchmark: keel shards measured like RocksDB's db_bench measures
//! RocksDB (`make bench` runs both through bench/run.sh, on the same
//! directory; bench/README.md "Shards vs RocksDB" lists the pairs).
//!
//! Usage: cargo bench --locked --bench shard -- --dir DIR --out FILE.json [--secs S]
//!        [--sync-ops N] [--sync16-ops N] [--sync64-ops N] [--load-keys N] [--posting-keys N]
//!        [--posting-ops N] [--memory-keys N] [--recovery-mib N] [--restart-pinned-mib N]
//!        [--many-shards N] [--case NAME]...
//!
//! Keys and values follow db_bench's defaults: 16-byte keys made like
//! db_bench's `GenerateKeyFromInt` (the key number big-endian in 8 bytes,
//! then eight '0' bytes), 100-byte values, key numbers drawn uniformly from
//! [0, num) with repeats (db_bench `fillrandom` / `readrandom`). Every case
//! works in a fresh sub-directory of DIR that is deleted after. The memory
//! case and the recovery writer run in child processes (this same binary,
//! `--child ...`): the memory case needs a clean process, the recovery
//! writer is killed with SIGKILL so that nothing is flushed or closed.
//!
//! `restart_bound`: the restart of a shard that holds as much unflushed
//! WAL as `max_unflushed_wal_bytes` allows (the default, 64 MiB), after a
//! WAL pinned for `--restart-pinned-mib` MiB of earlier, flushed writes:
//! what the bound promises a restart costs, whatever the WAL retains.
//!
//! `many_shards`: one engine with 1, 100, 1,000 and `--many-shards`
//! (10,000) shards, each count in a child allowed 1024 descriptors: the
//! time to create, open and reopen them (one key each), and the threads,
//! descriptors, resident memory and disk each shard adds.

use keel::engine::Engine;
use keel::shard::{Options, Shard, Stats, Step, StepHook, Steps};
use keel::wal::{self, Durability, ReadUpto, Wal};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 100;
const POSTING_ITEM_BYTES: usize = 8;
const SEED: u64 = 0x6b65_656c_6265_6e63;
const ALL_CASES: &[&str] = &["durable_put", "load_read", "posting", "memory", "recovery", "restart_bound", "many_shards"];

#[derive(Clone)]
struct Args {
    dir: PathBuf,
    out: Option<PathBuf>,
    secs: f64,
    sync_ops: u64,
    sync16_ops: u64,
    sync64_ops: u64,
    load_keys: u64,
    posting_keys: u64,
    posting_ops: u64,
    memory_keys: u64,
    recovery_mib: u64,
    restart_pinned_mib: u64,
    many_shards: u64,
    cases: Vec<String>,
    child: Option<String>,
    value_bytes: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        dir: PathBuf::new(),
        out: None,
        secs: 5.0,
        sync_ops: 20_000,
        sync16_ops: 5_000,
        sync64_ops: 2_500,
        load_keys: 3_000_000,
        posting_keys: 100_000,
        posting_ops: 2_000_000,
        memory_keys: 1_000_000,
        recovery_mib: 1024,
        restart_pinned_mib: 256,
        many_shards: 10_000,
        cases: Vec::new(),
        child: None,
        value_bytes: VALUE_BYTES,
    };
    let mut dir = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |what: &str| -> u64 {
            it.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{what} needs a whole number"))
        };
        match arg.as_str() {
            "--dir" => dir = Some(PathBuf::from(it.next().expect("--dir needs a path"))),
            "--out" => a.out = Some(PathBuf::from(it.next().expect("--out needs a path"))),
            "--secs" => a.secs = it.next().and_then(|s| s.parse().ok()).expect("--secs needs a number"),
            "--sync-ops" => a.sync_ops = num("--sync-ops"),
            "--sync16-ops" => a.sync16_ops = num("--sync16-ops"),
            "--sync64-ops" => a.sync64_ops = num("--sync64-ops"),
            "--load-keys" => a.load_keys = num("--load-keys"),
            "--posting-keys" => a.posting_keys = num("--posting-keys"),
            "--posting-ops" => a.posting_ops = num("--posting-ops"),
            "--memory-keys" => a.memory_keys = num("--memory-keys"),
            "--recovery-mib" => a.recovery_mib = num("--recovery-mib"),
            "--restart-pinned-mib" => a.restart_pinned_mib = num("--restart-pinned-mib"),
            "--many-shards" => a.many_shards = num("--many-shards"),
            "--value-bytes" => a.value_bytes = num("--value-bytes") as usize,
            "--case" => a.cases.push(it.next().expect("--case needs a name")),
            "--child" => a.child = Some(it.next().expect("--child needs a kind")),
            "--bench" => {} // added by `cargo bench`
            other => panic!("unknown argument {other:?} (see the top of bench/shard.rs)"),
        }
    }
    a.dir = dir.expect("--dir DIR is required");
    if a.cases.is_empty() {
        a.cases = ALL_CASES.iter().map(|s| s.to_string()).collect();
    }
    for c in &a.cases {
        assert!(ALL_CASES.contains(&c.as_str()), "unknown case {c:?}; known: {ALL_CASES:?}");
    }
    a
}

// ---- keys, values, random numbers ------------------------------------------

/// splitmix64: cheap, seeded, good enough to spread keys uniformly.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// db_bench's key for number `v` with --key_size=16: 8 bytes big-endian,
/// then '0' bytes.
fn key(v: u64) -> [u8; KEY_BYTES] {
    let mut k = [b'0'; KEY_BYTES];
    k[..8].copy_from_slice(&v.to_be_bytes());
    k
}

/// Values are slices of one random buffer at a moving offset (as db_bench's
/// RandomGenerator does), so no value is built per operation.
struct Values {
    buf: Vec<u8>,
}

impl Values {
    fn new() -> Values {
        let mut rng = Rng::new(SEED ^ 0x5555);
        let mut buf = vec![0u8; 1 << 20];
        for chunk in buf.chunks_mut(8) {
            let x = rng.next().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
        Values { buf }
    }
    fn at(&self, pos: &mut usize, len: usize) -> &[u8] {
        if *pos + len > self.buf.len() {
            *pos = 0;
        }
        let v = &self.buf[*pos..*pos + len];
        *pos += len;
        v
    }
}

// ---- results ---------------------------------------------------------------

/// A JSON object written field by field (no serde in this crate).
#[derive(Default)]
struct Obj(Vec<String>);

impl Obj {
    fn num(mut self, k: &str, v: f64) -> Obj {
        self.0.push(if v.is_finite() { format!("\"{k}\":{v:.4}") } else { format!("\"{k}\":null") });
        self
    }
    fn int(mut self, k: &str, v: u64) -> Obj {
        self.0.push(format!("\"{k}\":{v}"));
        self
    }
    fn str(mut self, k: &str, v: &str) -> Obj {
        self.0.push(format!("\"{k}\":\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")));
        self
    }
    fn raw(mut self, k: &str, v: String) -> Obj {
        self.0.push(format!("\"{k}\":{v}"));
        self
    }
    fn done(self) -> String {
        format!("{{{}}}", self.0.join(","))
    }
}

/// Nearest-rank percentile of sorted ns latencies, in µs.
fn pct(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0)
}

/// One timed run of `threads` threads.
struct Run {
    ops: u64,
    found: u64,
    elapsed_s: f64,
    /// Per-operation latency in ns, every operation of every thread, sorted.
    lat_ns: Vec<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed_s
    }

    fn lat_json(&self) -> String {
        let l = &self.lat_ns;
        let mean = if l.is_empty() { f64::NAN } else { l.iter().sum::<u64>() as f64 / l.len() as f64 / 1000.0 };
        let o = |p| pct(l, p).unwrap_or(f64::NAN);
        Obj::default()
            .num("mean", mean)
            .num("p50", o(50.0))
            .num("p99", o(99.0))
            .num("p999", o(99.9))
            .num("max", l.last().map_or(f64::NAN, |&x| x as f64 / 1000.0))
            .done()
    }
}

/// Runs `body(thread index, latencies)` on `threads` threads started
/// together; `body` returns (operations, found). Elapsed time is from the
/// common start to the last thread's end (db_bench's aggregate rate).
fn run_threads<F>(threads: usize, body: F) -> Run
where
    F: Fn(usize, &mut Vec<u64>) -> (u64, u64) + Sync,
{
    let barrier = Barrier::new(threads);
    let results: Vec<(u64, u64, Instant, Instant, Vec<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, body) = (&barrier, &body);
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(1 << 16);
                    barrier.wait();
                    let start = Instant::now();
                    let (ops, found) = body(t, &mut lat);
                    (ops, found, start, Instant::now(), lat)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("benchmark thread")).collect()
    });
    let start = results.iter().map(|r| r.2).min().unwrap();
    let end = results.iter().map(|r| r.3).max().unwrap();
    let mut lat_ns: Vec<u64> = Vec::new();
    for r in &results {
        lat_ns.extend_from_slice(&r.4);
    }
    lat_ns.sort_unstable();
    Run {
        ops: results.iter().map(|r| r.0).sum(),
        found: results.iter().map(|r| r.1).sum(),
        elapsed_s: end.duration_since(start).as_secs_f64(),
        lat_ns,
    }
}

fn stats_json(s: &Stats) -> String {
    Obj::default()
        .int("appendable_keys", s.appendable_keys)
        .int("appendable_bytes", s.appendable_bytes)
        .int("sealed_segments", s.sealed_segments)
        .int("sealed_bytes", s.sealed_bytes)
        .int("last_version", s.last_version)
        .int("persisted_version", s.persisted_version)
        .done()
}

struct Case {
    name: String,
    what: String,
    durability: &'static str,
    threads: usize,
    run: Run,
    extra: Obj,
}

impl Case {
    fn json(self) -> String {
        let mut o = Obj::default()
            .str("name", &self.name)
            .str("what", &self.what)
            .str("durability", self.durability)
            .int("threads", self.threads as u64)
            .int("ops", self.run.ops)
            .int("found", self.run.found)
            .num("elapsed_s", self.run.elapsed_s)
            .num("ops_per_s", self.run.rate())
            .raw("lat_us", self.run.lat_json());
        o.0.extend(self.extra.0);
        o.done()
    }

    fn print(&self) {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
        println!(
            "shard {:<18} {:>2} thread(s): {:>10} ops {:>12.0} ops/s  p50 {:>8} us  p99 {:>8} us{}",
            self.name,
            self.threads,
            self.run.ops,
            self.run.rate(),
            f(pct(&self.run.lat_ns, 50.0)),
            f(pct(&self.run.lat_ns, 99.0)),
            if self.name.starts_with("read") { format!("  found {}", self.run.found) } else { String::new() },
        );
    }
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating the case directory");
    d
}

fn open(dir: &Path, opts: Options) -> Shard {
    Shard::open(dir, opts).expect("opening the shard")
}

/// Runs flush passes until the segment set stops changing: sealing and
/// merging happen on the flush thread right after a pass, so a second
/// `flush(true)` waits for the maintenance the first one was followed by.
/// (db_bench's counterpart is `waitforcompaction`.)
fn settle(shard: &Shard) -> f64 {
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..100 {
        shard.flush(true).expect("flush");
        let s = shard.stats();
        let now = (s.sealed_segments, s.sealed_bytes, s.appendable_bytes, s.appendable_keys);
        if last == Some(now) {
            break;
        }
        last = Some(now);
    }
    if let Some(e) = shard.background_error() {
        eprintln!("shard bench: background error after settling: {}", e.message);
    }
    t0.elapsed().as_secs_f64()
}

// ---- cases -----------------------------------------------------------------

/// `threads` threads each put `ops` keys drawn from [0, ops) (db_bench
/// `fillrandom --num=ops --threads=N`: each thread writes num keys of that
/// range), thread t into `shards[t % shards.len()]`.
fn put_run(shards: &[Shard], threads: usize, ops: u64, values: &Values) -> Run {
    run_threads(threads, |t, lat| {
        let shard = &shards[t % shards.len()];
        let mut rng = Rng::new(SEED.wrapping_add(t as u64 * 7919));
        let mut pos = t * 4099;
        for _ in 0..ops {
            let k = key(rng.below(ops));
            let v = values.at(&mut pos, VALUE_BYTES);
            let t0 = Instant::now();
            shard.put(&k, v).expect("put");
            lat.push(t0.elapsed().as_nanos() as u64);
        }
        (ops, 0)
    })
}

fn durable_puts(a: &Args, values: &Values, out: &mut Vec<String>) {
    for (threads, ops) in [(1usize, a.sync_ops), (16, a.sync16_ops), (64, a.sync64_ops)] {
        let name = format!("durable_put_{threads}t");
        let dir = fresh_dir(&a.dir, &name);
        let shard = open(&dir, Options { durability: Durability::Sync, ..Options::default() });
        let run = put_run(std::slice::from_ref(&shard), threads, ops, values);
        let stats = shard.stats();
        shard.close().expect("close");
        let _ = std::fs::remove_dir_all(&dir);
        let c = Case {
            name,
            what: format!("put, Durability::Sync, {threads} thread(s), {ops} puts per thread, keys uniform in [0, {ops})"),
            durability: "sync",
            threads,
            run,
            extra: Obj::default().raw("stats", stats_json(&stats)),
        };
        c.print();
        out.push(c.json());
    }
    spread_durable_puts(a, values, out);
}

/// Shards a durable put's writers are spread over in `durable_put_64shards_64t`.
const SPREAD_SHARDS: usize = 64;

/// Durable puts spread over SPREAD_SHARDS shards, one thread per shard, as
/// many puts per thread as `durable_put_64t` (keel only; the report
/// compares each with `durable_put_64t`):
/// - `durable_put_64shards_64t`: the shards of one engine, which share its
///   flush and WAL workers and make their writes durable through its
///   commit log;
/// - `durable_put_engine_64t`, a reference: the same threads on one shard of
///   an engine, so its writes go through the commit log as the spread
///   case's do (what the commit log costs, apart from the spreading);
/// - `durable_put_64alone_64t`, a reference: as many shards opened alone,
///   each with its own flush thread, WAL workers and fdatasyncs.
fn spread_durable_puts(a: &Args, values: &Values, out: &mut Vec<String>) {
    enum Layout {
        Spread,
        EngineOne,
        Alone,
    }
    let (n, ops) = (SPREAD_SHARDS, a.sync64_ops);
    let opts = || Options { durability: Durability::Sync, ..Options::default() };
    for layout in [Layout::Spread, Layout::EngineOne, Layout::Alone] {
        // Name, description, and how many shards of an engine (None: opened alone).
        let (name, what, engine_shards) = match layout {
            Layout::Spread => (format!("durable_put_{n}shards_{n}t"), format!("{n} shards of one engine, each thread on its own shard"), Some(n)),
            Layout::EngineOne => (format!("durable_put_engine_{n}t"), "one shard of an engine, every thread on it".to_string(), Some(1)),
            Layout::Alone => (
                format!("durable_put_{n}alone_{n}t"),
                format!("{n} shards opened alone (a flush thread, WAL workers and fdatasyncs each), each thread on its own shard"),
                None,
            ),
        };
        let dir = fresh_dir(&a.dir, &name);
        let (engine, shards) = match engine_shards {
            Some(count) => {
                let engine = Engine::open(&dir, opts()).expect("opening the engine");
                let shards: Vec<Shard> = (0..count as u32).map(|id| engine.open_shard(id, true).expect("opening a shard")).collect();
                (Some(engine), shards)
            }
            None => (None, (0..n).map(|i| open(&fresh_dir(&dir, &i.to_string()), opts())).collect()),
        };
        let run = put_run(&shards, n, ops, values);
        let shard_count = shards.len();
        match engine {
            Some(e) => e.close().expect("closing the engine (and its shards)"),
            None => shards.into_iter().for_each(|s| s.close().expect("close")),
        }
        let _ = std::fs::remove_dir_all(&dir);
        let c = Case {
            name,
            what: format!("put, Durability::Sync, {what}, {n} threads, {ops} puts per thread, keys uniform in [0, {ops})"),
            durability: "sync",
            threads: n,
            run,
            extra: Obj::default().int("shard_count", shard_count as u64),
        };
        c.print();
        out.push(c.json());
    }
}

/// Buffered load of `load_keys` puts (the buffered-put rate), settle, then
/// random reads on that data set with 1 and 2 threads for `secs` each.
fn load_read(a: &Args, values: &Values, out: &mut Vec<String>) {
    let n = a.load_keys;
    let dir = fresh_dir(&a.dir, "load_read");
    let opts = Options { durability: Durability::None, ..Options::default() };
    let seal_bytes = opts.seal_bytes;
    let shard = open(&dir, opts);
    let run = put_run(std::slice::from_ref(&shard), 1, n, values);
    let at_end = shard.stats();
    let settle_s = settle(&shard);
    let settled = shard.stats();
    let c = Case {
        name: "buffered_put_1t".into(),
        what: format!("put, Durability::None, 1 thread, {n} puts, keys uniform in [0, {n}) (also loads the read data set)"),
        durability: "none",
        threads: 1,
        run,
        extra: Obj::default().raw("stats", stats_json(&at_end)),
    };
    c.print();
    out.push(c.json());
    println!(
        "shard load settled in {settle_s:.2} s: {} sealed segment(s), {:.1} MiB sealed, appendable {:.1} MiB in {} keys (seal_bytes {:.0} MiB)",
        settled.sealed_segments,
        settled.sealed_bytes as f64 / 1048576.0,
        settled.appendable_bytes as f64 / 1048576.0,
        settled.appendable_keys,
        seal_bytes as f64 / 1048576.0
    );
    let secs = Duration::from_secs_f64(a.secs);
    for threads in [1usize, 2] {
        let run = run_threads(threads, |t, lat| {
            let mut rng = Rng::new(SEED ^ 0xabcd ^ (t as u64 * 104_729));
            let deadline = Instant::now() + secs;
            let (mut ops, mut found) = (0u64, 0u64);
            loop {
                let k = key(rng.below(n));
                let t0 = Instant::now();
                let r = shard.get(&k).expect("get");
                let t1 = Instant::now();
                lat.push(t1.duration_since(t0).as_nanos() as u64);
                ops += 1;
                found += r.is_some() as u64;
                if t1 >= deadline {
                    break;
                }
            }
            (ops, found)
        });
        let c = Case {
            name: format!("read_random_{threads}t"),
            what: format!("get, {threads} thread(s), {:.0} s, keys uniform in [0, {n})", a.secs),
            durability: "none",
            threads,
            run,
            extra: Obj::default()
                .raw("stats", stats_json(&settled))
                .num("settle_s", settle_s)
                .int("seal_bytes", seal_bytes as u64),
        };
        c.print();
        out.push(c.json());
    }
    shard.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Posting appends: `posting_ops` appends of 8-byte items to keys drawn
/// from [0, posting_keys), Durability::None, 1 thread.
fn posting(a: &Args, out: &mut Vec<String>) {
    let dir = fresh_dir(&a.dir, "posting");
    let shard = open(&dir, Options { durability: Durability::None, ..Options::default() });
    let (keys, ops) = (a.posting_keys, a.posting_ops);
    let run = run_threads(1, |_, lat| {
        let mut rng = Rng::new(SEED ^ 0x1234);
        for i in 0..ops {
            let k = key(rng.below(keys));
            let item = i.to_le_bytes();
            let t0 = Instant::now();
            shard.append(&k, &item[..POSTING_ITEM_BYTES]).expect("append");
            lat.push(t0.elapsed().as_nanos() as u64);
        }
        (ops, 0)
    });
    let stats = shard.stats();
    // Sanity: the lists hold every item.
    let mut items = 0u64;
    for k in 0..keys {
        if let Some(e) = shard.get(&key(k)).expect("get") {
            if let keel::shard::Value::Posting(list) = e.value {
                items += list.len() as u64;
            }
        }
    }
    assert_eq!(items, ops, "posting lists lost items");
    shard.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    let c = Case {
        name: "posting_append_1t".into(),
        what: format!("append, Durability::None, 1 thread, {ops} appends of {POSTING_ITEM_BYTES}-byte items, keys uniform in [0, {keys})"),
        durability: "none",
        threads: 1,
        run,
        extra: Obj::default()
            .raw("stats", stats_json(&stats))
            .int("keys", keys)
            .int("item_bytes", POSTING_ITEM_BYTES as u64),
    };
    c.print();
    out.push(c.json());
}

// ---- memory (child process) -------------------------------------------------

/// Resident KiB of this process: in all, anonymous and file-backed (from
/// /proc/self/status), and the file-backed part that is mappings of WAL
/// segments and of tables (from /proc/self/smaps).
#[derive(Clone, Copy, Default)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
    wal: u64,
    sst: u64,
}

fn rss() -> Rss {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut r = Rss { total: field("VmRSS:"), anon: field("RssAnon:"), file: field("RssFile:"), ..Rss::default() };
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut bucket = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping header: range perms offset dev inode [path].
            let path = line.split_whitespace().nth(5).unwrap_or("");
            bucket = if path.ends_with(".wal") || path.ends_with(".wal.tmp") {
                1
            } else if path.ends_with(".sst") {
                2
            } else {
                0
            };
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0);
            match bucket {
                1 => r.wal += kib,
                2 => r.sst += kib,
                _ => {}
            }
        }
    }
    r
}

fn rss_json(r: Rss) -> String {
    Obj::default()
        .int("total_kib", r.total)
        .int("anon_kib", r.anon)
        .int("file_kib", r.file)
        .int("wal_map_kib", r.wal)
        .int("sst_map_kib", r.sst)
        .done()
}

/// Child: loads `memory_keys` distinct keys (a random permutation), settles,
/// and reports resident memory before the shard is opened, after the load,
/// after reading every key once (touching every table page) and after
/// malloc_trim(0) (what the allocator held but no longer used).
fn child_memory(a: &Args) {
    let n = a.memory_keys;
    let values = Values::new();
    let mut order: Vec<u64> = (0..n).collect();
    let mut rng = Rng::new(SEED ^ 0x77);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let dir = fresh_dir(&a.dir, "memory");
    let base = rss();
    let shard = open(&dir, Options { durability: Durability::None, ..Options::default() });
    let mut pos = 0;
    for &k in &order {
        shard.put(&key(k), values.at(&mut pos, VALUE_BYTES)).expect("put");
    }
    settle(&shard);
    let loaded = rss();
    let stats = shard.stats();
    for &k in &order {
        assert!(shard.get(&key(k)).expect("get").is_some(), "key {k} lost");
    }
    let read = rss();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers, locks glibc's arenas itself and
    // only hands free heap memory back to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    let trimmed = rss();
    let json = Obj::default()
        .int("keys", n)
        .int("key_bytes", KEY_BYTES as u64)
        .int("value_bytes", VALUE_BYTES as u64)
        .raw("before_open", rss_json(base))
        .raw("after_load", rss_json(loaded))
        .raw("after_reading_every_key", rss_json(read))
        .raw("after_malloc_trim", rss_json(trimmed))
        .raw("stats", stats_json(&stats))
        .done();
    shard.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    println!("{json}");
}

fn run_child(a: &Args, kind: &str, extra: &[String]) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.arg("--child").arg(kind).arg("--dir").arg(&a.dir).args(extra);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    cmd
}

fn memory(a: &Args) -> String {
    let out = run_child(a, "memory", &["--memory-keys".into(), a.memory_keys.to_string()])
        .output()
        .expect("running the memory child");
    assert!(out.status.success(), "memory child failed: {:?}", out.status);
    let json = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("shard memory ({} keys): {json}", a.memory_keys);
    json
}

// ---- recovery ----------------------------------------------------------------

fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn recovery_opts() -> Options {
    Options {
        durability: Durability::None,
        flush_interval: None,
        // Larger than anything written: no seal, everything stays in the WAL
        // and the appendable segment, and writes never wait for a flush.
        seal_bytes: 16 << 30,
        max_unflushed_wal_bytes: 1 << 40,
        ..Options::default()
    }
}

/// Child: puts `value_bytes` values until the WAL holds `recovery_mib` MiB
/// of full segments, prints "ready <puts>" and waits to be killed.
/// (Bytes, not a count of segments: the WAL's segments start small and
/// grow with the write rate.)
fn child_recovery_writer(a: &Args) {
    let shard = open(&a.dir, recovery_opts());
    let frame = (32 + 5 + KEY_BYTES + a.value_bytes).div_ceil(8) * 8;
    let range = ((a.recovery_mib << 20) / frame as u64).max(1);
    let values = Values::new();
    let (mut rng, mut pos, mut puts) = (Rng::new(SEED ^ 0x99), 0usize, 0u64);
    let wal_dir = a.dir.join("wal");
    let mut segments = 0;
    loop {
        for _ in 0..1024 {
            shard.put(&key(rng.below(range)), values.at(&mut pos, a.value_bytes)).expect("put");
        }
        puts += 1024;
        // Stop right after a rotation (the active segment holds a few
        // records) once the segments before it, the full ones, hold enough.
        let mut files = wal_files(&wal_dir);
        if files.len() > segments {
            segments = files.len();
            files.pop();
            let full: u64 = files.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
            if full >= a.recovery_mib << 20 {
                break;
            }
        }
    }
    println!("ready {puts}");
    std::mem::forget(shard);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Child: opens the WAL alone and reads every record (no shard), reporting
/// both times: the WAL's share of a shard's recovery.
fn child_wal_scan(a: &Args) {
    let t0 = Instant::now();
    let w = Wal::open(&a.dir.join("wal"), wal::Options { durability: Durability::None, ..wal::Options::default() })
        .expect("opening the WAL");
    let opened = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut r = w.reader(0, ReadUpto::Appended).expect("reader");
    let (mut records, mut bytes) = (0u64, 0u64);
    while let Some((_, rec)) = r.peek().expect("read") {
        records += 1;
        bytes += rec.len() as u64;
        r.advance();
    }
    let read = t1.elapsed().as_secs_f64();
    println!("{}", Obj::default().num("open_s", opened).num("read_s", read).int("records", records).int("record_bytes", bytes).done());
    // No close: leave the directory as a crash would (close appends a mark).
    std::process::exit(0);
}

/// Child: times `Shard::open` on a directory a killed writer left (the
/// recovery being measured; run it alone under a profiler to see where
/// recovery goes), then closes the shard (not timed).
fn child_shard_open(a: &Args) {
    let t0 = Instant::now();
    let shard = open(&a.dir, recovery_opts());
    let open_s = t0.elapsed().as_secs_f64();
    let stats = shard.stats();
    let log_bytes: u64 = std::fs::read_dir(a.dir.join("segments"))
        .map(|it| it.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".log")).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    let rss = rss();
    shard.close().expect("close");
    println!(
        "{}",
        Obj::default()
            .num("open_s", open_s)
            .int("last_version", stats.last_version)
            .int("appendable_keys", stats.appendable_keys)
            .int("appendable_log_bytes", log_bytes)
            .int("replayed_records", stats.replayed_records)
            .int("replayed_bytes", stats.replayed_bytes)
            .int("wal_first_version", stats.wal_first_seq)
            .int("vm_rss_kib", rss.total)
            .done()
    );
}

/// A number field of a flat JSON object printed by a child.
fn json_num(json: &str, field: &str) -> Option<f64> {
    let at = json.find(&format!("\"{field}\":"))? + field.len() + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// fdatasync every file of `dir` so that page-cache state is the same
/// (warm, clean) for the read baseline and for recovery.
fn sync_files(dir: &Path) {
    if let Ok(it) = std::fs::read_dir(dir) {
        for e in it.flatten() {
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                if let Ok(f) = std::fs::File::open(e.path()) {
                    let _ = f.sync_data();
                }
            }
        }
    }
}

/// Reads `files` with plain 1 MiB read(2) calls; returns seconds.
fn read_files(files: &[PathBuf]) -> f64 {
    let mut buf = vec![0u8; 1 << 20];
    let t0 = Instant::now();
    let mut sum = 0u64;
    for p in files {
        let mut f = std::fs::File::open(p).expect("opening a WAL file");
        loop {
            let n = f.read(&mut buf).expect("reading a WAL file");
            if n == 0 {
                break;
            }
            sum = sum.wrapping_add(buf[n - 1] as u64);
        }
    }
    std::hint::black_box(sum);
    t0.elapsed().as_secs_f64()
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(it) = std::fs::read_dir(dir) {
        for e in it.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => out.extend(files_under(&e.path())),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// Drops the (clean) page-cache pages of every file under `dir`:
/// POSIX_FADV_DONTNEED per file, which needs no privilege and leaves the
/// rest of the machine's cache alone.
fn evict(dir: &Path) {
    for p in files_under(dir) {
        if let Ok(f) = std::fs::File::open(&p) {
            let _ = f.sync_data();
            // SAFETY: no pointers; the fd belongs to `f`, open for the call.
            unsafe {
                use std::os::unix::io::AsRawFd;
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating a copy");
    for e in std::fs::read_dir(from).expect("listing").flatten() {
        let target = to.join(e.file_name());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copying a file");
        }
    }
}

/// Times `Shard::open` is measured per page-cache state (the best counts).
const OPEN_RUNS: usize = 2;

/// One measure of a recovery: the read baseline, the WAL alone and
/// `Shard::open`, each in the page-cache state `cold` asks for. `dir` is
/// left as the writer left it.
fn recovery_measure(a: &Args, dir: &Path, files: &[PathBuf], bytes: u64, puts: u64, cold: bool) -> String {
    let child = Args { dir: dir.to_path_buf(), ..a.clone() };
    // Before each child: the page cache as the measure wants it (the WAL
    // scan may have left a spare segment behind).
    let prepare = || {
        if cold {
            evict(dir);
        } else {
            sync_files(&dir.join("wal"));
            read_files(&files_under(dir));
        }
    };
    // 1. Sequential read of the full WAL segments: the baseline.
    let read_s = if cold {
        (0..2)
            .map(|_| {
                evict(dir);
                read_files(files)
            })
            .fold(f64::MAX, f64::min)
    } else {
        read_files(files); // warm-up
        (0..3).map(|_| read_files(files)).fold(f64::MAX, f64::min)
    };
    // 2. The WAL alone: open (recovery scan) and read every record.
    prepare();
    let out = run_child(&child, "wal-scan", &[]).output().expect("running the WAL scan");
    let scan = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let scan = if out.status.success() && scan.starts_with('{') { scan } else { "null".to_string() };
    // 3. The shard, in a fresh process (`open_best`).
    let (open_s, opened) = open_best(a, dir, cold, puts);
    let mib = bytes as f64 / 1048576.0;
    let (read_mib_s, recovery_mib_s) = (mib / read_s, mib / open_s);
    println!(
        "  {} page cache: read {read_mib_s:.0} MiB/s, Shard::open {open_s:.2} s = {recovery_mib_s:.0} MiB/s ({:.1}% of read); WAL alone {scan}",
        if cold { "cold" } else { "warm" },
        100.0 * recovery_mib_s / read_mib_s
    );
    Obj::default()
        .num("read_s", read_s)
        .num("read_mib_s", read_mib_s)
        .num("open_s", open_s)
        .num("recovery_mib_s", recovery_mib_s)
        .num("ratio", recovery_mib_s / read_mib_s)
        .raw("wal_only", scan)
        .raw("shard_open", opened)
        .done()
}

/// `Shard::open` of a copy of `dir` in a fresh process, with the page
/// cache cold (every file evicted) or warm (every file read), best of
/// OPEN_RUNS: the first open after the writer died was sometimes 3x
/// slower than later ones on the same bytes (the kernel still busy with
/// the dead writer's memory). `Shard::open` persists and truncates the
/// WAL, so each run opens its own copy. Returns the time and the child's
/// report.
fn open_best(a: &Args, dir: &Path, cold: bool, puts: u64) -> (f64, String) {
    let mut best: Option<(f64, String)> = None;
    for _ in 0..OPEN_RUNS {
        let work = dir.with_extension("open");
        let _ = std::fs::remove_dir_all(&work);
        copy_tree(dir, &work);
        sync_files(&work.join("wal"));
        if cold {
            evict(&work);
        } else {
            read_files(&files_under(&work));
        }
        let out = run_child(&Args { dir: work.clone(), ..a.clone() }, "shard-open", &[]).output().expect("running the shard open");
        let _ = std::fs::remove_dir_all(&work);
        let opened = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(out.status.success() && opened.starts_with('{'), "shard-open child failed: {:?}", out.status);
        let open_s = json_num(&opened, "open_s").expect("open_s");
        let last_version = json_num(&opened, "last_version").expect("last_version") as u64;
        assert!(last_version >= puts, "recovered {last_version} of {puts} puts");
        if best.as_ref().map_or(true, |(b, _)| open_s < *b) {
            best = Some((open_s, opened));
        }
    }
    best.expect("OPEN_RUNS > 0")
}

fn recovery(a: &Args, value_bytes: usize) -> String {
    let name = format!("recovery_{}", if value_bytes >= 1024 { format!("{}k", value_bytes / 1024) } else { format!("{value_bytes}b") });
    let dir = fresh_dir(&a.dir, &name);
    let mut child = Args { dir: dir.clone(), ..a.clone() };
    child.value_bytes = value_bytes;
    // The writer, killed with SIGKILL once the WAL is big enough.
    let t0 = Instant::now();
    let mut w = run_child(
        &child,
        "recovery-writer",
        &["--recovery-mib".into(), a.recovery_mib.to_string(), "--value-bytes".into(), value_bytes.to_string()],
    )
    .spawn()
    .expect("starting the recovery writer");
    let mut line = String::new();
    BufReader::new(w.stdout.take().unwrap()).read_line(&mut line).expect("reading the writer");
    w.kill().expect("killing the writer (SIGKILL)");
    let _ = w.wait();
    let write_s = t0.elapsed().as_secs_f64();
    let puts: u64 = line.trim().strip_prefix("ready ").and_then(|s| s.parse().ok()).expect("writer did not report");
    sync_files(&dir.join("wal"));
    let mut files = wal_files(&dir.join("wal"));
    files.pop(); // the active segment: a few records, the rest zeros
    let bytes: u64 = files.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    println!("shard {name}: {puts} puts, {:.0} MiB of full WAL segments, written in {write_s:.1} s", bytes as f64 / 1048576.0);
    let warm = recovery_measure(a, &dir, &files, bytes, puts, false);
    let cold = recovery_measure(a, &dir, &files, bytes, puts, true);
    let _ = std::fs::remove_dir_all(&dir);
    Obj::default()
        .str("name", &name)
        .int("value_bytes", value_bytes as u64)
        .int("puts", puts)
        .int("wal_bytes", bytes)
        .int("wal_files", files.len() as u64)
        .num("write_s", write_s)
        .raw("warm", warm)
        .raw("cold", cold)
        .done()
}

// ---- restart at the bound of unflushed WAL ------------------------------------

/// Parks every flush pass at its start once `hold` is set (and forever:
/// the writer is killed while it holds).
#[derive(Default)]
struct HoldFlush {
    hold: AtomicBool,
}

impl StepHook for HoldFlush {
    fn at(&self, step: Step) {
        while step == Step::PassStart && self.hold.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Child: pins the WAL from its first record (as a transfer or a lagging
/// follower would), writes `restart_pinned_mib` MiB of `value_bytes`
/// values with the flush running as usual, then holds the flush and
/// writes until the next put would have to wait for it (the unflushed WAL
/// at `max_unflushed_wal_bytes`, the default); prints "ready <puts>
/// <unflushed bytes>" and waits to be killed.
fn child_restart_writer(a: &Args) {
    let hook = Arc::new(HoldFlush::default());
    let opts = Options { durability: Durability::None, steps: Steps::new(hook.clone()), ..Options::default() };
    let bound = opts.max_unflushed_wal_bytes;
    let shard = open(&a.dir, opts);
    shard.set_keep_from(1).expect("pinning the WAL");
    let values = Values::new();
    let (mut rng, mut pos, mut puts) = (Rng::new(SEED ^ 0x5e), 0usize, 0u64);
    let range = 1u64 << 40;
    let frame = (KEY_BYTES + a.value_bytes + 16) as u64; // a put's record, with some room
    let mut written = 0u64;
    while written < a.restart_pinned_mib << 20 {
        shard.put(&key(rng.below(range)), values.at(&mut pos, a.value_bytes)).expect("put");
        written += frame;
        puts += 1;
    }
    shard.flush(true).expect("flush");
    hook.hold.store(true, Ordering::Release);
    while shard.stats().unflushed_wal_bytes + frame <= bound {
        shard.put(&key(rng.below(range)), values.at(&mut pos, a.value_bytes)).expect("put");
        puts += 1;
    }
    println!("ready {puts} {}", shard.stats().unflushed_wal_bytes);
    std::mem::forget(shard);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn restart_bound(a: &Args, value_bytes: usize) -> String {
    let name = format!("restart_bound_{}", if value_bytes >= 1024 { format!("{}k", value_bytes / 1024) } else { format!("{value_bytes}b") });
    let dir = fresh_dir(&a.dir, &name);
    let child = Args { dir: dir.clone(), value_bytes, ..a.clone() };
    let t0 = Instant::now();
    let extra = ["--restart-pinned-mib".into(), a.restart_pinned_mib.to_string(), "--value-bytes".into(), value_bytes.to_string()];
    let mut w = run_child(&child, "restart-writer", &extra).spawn().expect("starting the restart writer");
    let mut line = String::new();
    BufReader::new(w.stdout.take().unwrap()).read_line(&mut line).expect("reading the writer");
    w.kill().expect("killing the writer (SIGKILL)");
    let _ = w.wait();
    let write_s = t0.elapsed().as_secs_f64();
    let mut words = line.split_whitespace().skip(1).map(|s| s.parse::<u64>().expect("writer did not report"));
    let (puts, unflushed) = (words.next().expect("puts"), words.next().expect("unflushed bytes"));
    let wal_bytes: u64 = wal_files(&dir.join("wal")).iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    let bound = Options::default().max_unflushed_wal_bytes;
    println!(
        "shard {name}: {puts} puts, {:.0} MiB of WAL retained, {:.1} MiB unflushed (bound {} MiB), written in {write_s:.1} s",
        wal_bytes as f64 / 1048576.0,
        unflushed as f64 / 1048576.0,
        bound >> 20
    );
    let measure = |cold: bool| {
        let (open_s, opened) = open_best(a, &dir, cold, puts);
        let replayed = json_num(&opened, "replayed_bytes").expect("replayed_bytes") as u64;
        assert!(replayed <= bound, "{name}: replayed {replayed} bytes past the bound {bound}");
        println!(
            "  {} page cache: Shard::open {open_s:.3} s, replayed {:.1} MiB",
            if cold { "cold" } else { "warm" },
            replayed as f64 / 1048576.0
        );
        Obj::default().num("open_s", open_s).raw("shard_open", opened).done()
    };
    let (warm, cold) = (measure(false), measure(true));
    let _ = std::fs::remove_dir_all(&dir);
    Obj::default()
        .str("name", &name)
        .int("value_bytes", value_bytes as u64)
        .int("puts", puts)
        .int("bound_bytes", bound)
        .int("unflushed_bytes", unflushed)
        .int("wal_bytes", wal_bytes)
        .int("pinned_mib", a.restart_pinned_mib)
        .num("write_s", write_s)
        .str("cold_cache", "posix_fadvise(POSIX_FADV_DONTNEED) on every file of the shard (no root needed)")
        .raw("warm", warm)
        .raw("cold", cold)
        .done()
}

// ---- many shards in one engine -----------------------------------------------

/// The descriptor limit of a many-shards child, as in tests/engine_fds.rs:
/// the engine's descriptor cache takes half of it.
const MANY_NOFILE: u64 = 1024;
/// Threads that create, open and close the shards, as an application with
/// many shards would (their syncs overlap on the device).
const MANY_THREADS: usize = 4;

/// Threads of this process, and its open descriptors (from /proc/self).
fn threads_and_fds() -> (u64, u64) {
    let count = |d: &str| std::fs::read_dir(d).map_or(0, |it| it.count() as u64);
    (count("/proc/self/task"), count("/proc/self/fd"))
}

/// Disk allocated under `dir` (st_blocks × 512 of every file and folder):
/// what the shards hold, preallocation included.
fn blocks_under(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::symlink_metadata(dir).map_or(0, |m| m.blocks() * 512);
    let inner: u64 = std::fs::read_dir(dir).map_or(0, |it| {
        it.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => blocks_under(&e.path()),
                _ => e.metadata().map_or(0, |m| m.blocks() * 512),
            })
            .sum()
    });
    own + inner
}

/// `f(id)` for every shard id below `n` on `MANY_THREADS` threads; the
/// phase's seconds and per-call latencies (`run_threads`).
fn each_shard(n: u32, f: impl Fn(u32) + Sync) -> Run {
    run_threads(MANY_THREADS, |t, lat| {
        let mut done = 0;
        for id in (t as u32..n).step_by(MANY_THREADS) {
            let t0 = Instant::now();
            f(id);
            lat.push(t0.elapsed().as_nanos() as u64);
            done += 1;
        }
        (done, 0)
    })
}

/// The process and the engine at rest with `n` shards open: threads,
/// descriptors and resident memory added since `base` (before the engine
/// opened), and the disk the shards hold; per shard where it grows.
fn many_idle(engine: &keel::engine::Engine, dir: &Path, n: u32, base: (Rss, u64, u64)) -> Obj {
    let st = engine.stats().expect("engine stats");
    let (threads, fds) = threads_and_fds();
    let r = rss();
    let disk = blocks_under(&dir.join("shards"));
    let per = |v: u64| v as f64 / n as f64;
    Obj::default()
        .int("engine_threads", st.threads)
        .int("threads_added", threads.saturating_sub(base.1))
        .int("fds_added", fds.saturating_sub(base.2))
        .int("open_files", st.open_files)
        .int("max_open_files", st.max_open_files)
        .int("rss_added_kib", r.total.saturating_sub(base.0.total))
        .num("rss_kib_per_shard", per(r.total.saturating_sub(base.0.total)))
        .num("rss_anon_kib_per_shard", per(r.anon.saturating_sub(base.0.anon)))
        .num("disk_kib_per_shard", per(disk) / 1024.0)
}

/// Child: one engine with `--many-shards` shards in a process allowed
/// `MANY_NOFILE` descriptors: creates them, closes and opens them empty,
/// writes a key to each (durability NONE), closes them, reopens them all
/// (each a recovered shard) and reads every key back; prints one JSON
/// object with each phase's time and the process at rest after the
/// creation and after the reopen.
fn child_many_shards(a: &Args) {
    use keel::engine::Engine;
    use std::sync::OnceLock;
    let lim = libc::rlimit { rlim_cur: MANY_NOFILE, rlim_max: MANY_NOFILE };
    // SAFETY: setrlimit reads one rlimit from the live local `lim`.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0, "setrlimit: {}", std::io::Error::last_os_error());
    let n = a.many_shards as u32;
    let dir = fresh_dir(&a.dir, "many");
    let (threads, fds) = threads_and_fds();
    let base = (rss(), threads, fds);
    let engine = Engine::open(&dir.join("engine"), Options { durability: Durability::None, ..Options::default() }).expect("opening the engine");
    let dir = dir.join("engine");
    let key = |id: u32| format!("key-{id}").into_bytes();
    let slots = || (0..n).map(|_| OnceLock::new()).collect::<Vec<OnceLock<Shard>>>();
    let open_all = |create: bool, shards: &Vec<OnceLock<Shard>>| {
        each_shard(n, |id| assert!(shards[id as usize].set(engine.open_shard(id, create).expect("opening a shard")).is_ok()))
    };
    let close_all = |shards: Vec<OnceLock<Shard>>| each_shard(n, |id| shards[id as usize].get().unwrap().close().expect("closing a shard"));
    // Each phase's times, reported (on stderr) as it ends.
    let mut phases = Obj::default();
    let mut phase = |key: &str, r: Run| {
        eprintln!("many_shards {n}: {key} {:.2} s", r.elapsed_s);
        let ms = r.elapsed_s * 1e3 / n as f64;
        phases = std::mem::take(&mut phases).raw(key, Obj::default().num("s", r.elapsed_s).num("ms_per_shard", ms).raw("lat_us", r.lat_json()).done());
        ms
    };

    let shards = slots();
    let create_ms = phase("create", open_all(true, &shards));
    let empty = many_idle(&engine, &dir, n, base).done();
    phase("close_empty", close_all(shards));
    let shards = slots();
    phase("open_empty", open_all(false, &shards));
    phase("write", each_shard(n, |id| {
        shards[id as usize].get().unwrap().put(&key(id), &id.to_le_bytes()).expect("put");
    }));
    phase("close", close_all(shards));
    let shards = slots();
    let reopen_ms = phase("reopen", open_all(false, &shards));
    let recovered = shards.iter().filter(|s| s.get().unwrap().last_version() == 1).count();
    assert_eq!(recovered, n as usize, "every reopened shard holds its one write");
    phase("read", each_shard(n, |id| {
        let got = shards[id as usize].get().unwrap().get(&key(id)).expect("get").map(|e| e.value);
        assert_eq!(got, Some(keel::shard::Value::Bytes(id.to_le_bytes().to_vec())), "shard {id} read back");
    }));
    let idle = many_idle(&engine, &dir, n, base);
    let t0 = Instant::now();
    drop(shards);
    engine.close().expect("closing the engine");
    let engine_close_s = t0.elapsed().as_secs_f64();
    eprintln!("many_shards {n}: engine_close {engine_close_s:.2} s");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    let mut json = idle
        .int("shards", n as u64)
        .int("nofile", MANY_NOFILE)
        .int("threads", MANY_THREADS as u64)
        .num("create_ms_per_shard", create_ms)
        .num("reopen_ms_per_shard", reopen_ms)
        .num("engine_close_s", engine_close_s)
        .raw("empty", empty);
    json.0.extend(phases.0);
    let json = json.done();
    println!("{json}");
}

/// Shard counts of the many-shards case: 1, 100, 1,000 and `--many-shards`.
fn many_shards(a: &Args) -> Vec<String> {
    let mut counts: Vec<u64> = [1, 100, 1000, a.many_shards].into_iter().filter(|&c| c <= a.many_shards).collect();
    counts.dedup();
    counts
        .into_iter()
        .map(|c| {
            let out = run_child(a, "many-shards", &["--many-shards".into(), c.to_string()]).output().expect("running the many-shards child");
            assert!(out.status.success(), "many-shards child ({c} shards) failed: {:?}", out.status);
            let json = String::from_utf8_lossy(&out.stdout).trim().to_string();
            println!("shard many_shards ({c}): {json}");
            json
        })
        .collect()
}

fn main() {
    let a = parse_args();
    std::fs::create_dir_all(&a.dir).expect("creating --dir");
    match a.child.as_deref() {
        Some("memory") => return child_memory(&a),
        Some("recovery-writer") => return child_recovery_writer(&a),
        Some("wal-scan") => return child_wal_scan(&a),
        Some("shard-open") => return child_shard_open(&a),
        Some("restart-writer") => return child_restart_writer(&a),
        Some("many-shards") => return child_many_shards(&a),
        Some(other) => panic!("unknown child {other:?}"),
        None => {}
    }
    let values = Values::new();
    let mut cases = Vec::new();
    let mut memory_json = "null".to_string();
    let mut recoveries = Vec::new();
    let mut restarts = Vec::new();
    let mut many = Vec::new();
    for c in &a.cases {
        match c.as_str() {
            "durable_put" => durable_puts(&a, &values, &mut cases),
            "load_read" => load_read(&a, &values, &mut cases),
            "posting" => posting(&a, &mut cases),
            "memory" => memory_json = memory(&a),
            "recovery" => {
                recoveries.push(recovery(&a, VALUE_BYTES));
                recoveries.push(recovery(&a, 4096));
            }
            "restart_bound" => {
                restarts.push(restart_bound(&a, VALUE_BYTES));
                restarts.push(restart_bound(&a, 4096));
            }
            "many_shards" => many = many_shards(&a),
            _ => unreachable!(),
        }
    }
    let params = Obj::default()
        .int("key_bytes", KEY_BYTES as u64)
        .int("value_bytes", VALUE_BYTES as u64)
        .int("sync_ops", a.sync_ops)
        .int("sync16_ops", a.sync16_ops)
        .int("sync64_ops", a.sync64_ops)
        .int("load_keys", a.load_keys)
        .int("posting_keys", a.posting_keys)
        .int("posting_ops", a.posting_ops)
        .int("posting_item_bytes", POSTING_ITEM_BYTES as u64)
        .int("memory_keys", a.memory_keys)
        .int("recovery_mib", a.recovery_mib)
        .int("restart_pinned_mib", a.restart_pinned_mib)
        .int("many_shards", a.many_shards)
        .num("secs", a.secs)
        .done();
    let json = format!(
        "{{\"params\":{params},\"cases\":[\n{}\n],\n\"memory\":{memory_json},\n\"recovery\":[\n{}\n],\n\"restart_bound\":[\n{}\n],\n\"many_shards\":[\n{}\n]}}\n",
        cases.join(",\n"),
        recoveries.join(",\n"),
        restarts.join(",\n"),
        many.join(",\n")
    );
    if let Some(out) = &a.out {
        std::fs::write(out, json).expect("writing --out");
    }
}
