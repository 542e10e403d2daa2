//! WAL benchmark (`make bench` runs it through bench/run.sh; see bench/README.md).
//!
//! Usage: cargo bench --locked --bench wal -- --dir DIR --out FILE.json [--secs N] [--case NAME]...
//!
//! Every case opens a fresh log in its own sub-directory of DIR with the
//! default `Options` (64 MiB segments) except for the durability mode, runs
//! for N seconds, closes the log (not timed) and deletes the directory.
//! It prints one line per case and writes every result as JSON to FILE;
//! bench/report.py compares them with the fio baseline.

use keel::wal::{Durability, Options, Wal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

struct Args {
    dir: PathBuf,
    out: PathBuf,
    secs: f64,
    cases: Vec<String>,
}

const ALL_CASES: &[&str] = &["sync_4k_1w", "sync_256_1w", "sync_256_4w", "sync_256_16w", "sync_256_64w", "none_128_1w"];

fn parse_args() -> Args {
    let mut dir = None;
    let mut out = None;
    let mut secs = 5.0;
    let mut cases = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().map(PathBuf::from),
            "--out" => out = it.next().map(PathBuf::from),
            "--secs" => secs = it.next().and_then(|s| s.parse().ok()).expect("--secs needs a number"),
            "--case" => cases.push(it.next().expect("--case needs a name")),
            "--bench" => {} // added by `cargo bench`
            other => panic!("unknown argument {other:?} (see the top of bench/wal.rs)"),
        }
    }
    if cases.is_empty() {
        cases = ALL_CASES.iter().map(|s| s.to_string()).collect();
    }
    for c in &cases {
        assert!(ALL_CASES.contains(&c.as_str()), "unknown case {c:?}; known: {ALL_CASES:?}");
    }
    Args {
        dir: dir.expect("--dir DIR is required"),
        out: out.expect("--out FILE is required"),
        secs,
        cases,
    }
}

/// Result of one case, written as one JSON object.
struct CaseResult {
    name: String,
    durability: &'static str,
    writers: usize,
    record_bytes: usize,
    appends: u64,
    elapsed_s: f64,
    /// Per-append latencies in ns (Sync cases), sorted.
    lat_ns: Vec<u64>,
    /// None mode: time spent in 256-append batches that took > 1 ms (segment rotation stalls).
    stall_s: Option<f64>,
    stall_batches: Option<u64>,
    /// Segment files left in the directory at the end (1 + rotations).
    segments: usize,
}

impl CaseResult {
    fn rate(&self) -> f64 {
        self.appends as f64 / self.elapsed_s
    }

    fn pct(&self, p: f64) -> Option<f64> {
        if self.lat_ns.is_empty() {
            return None;
        }
        // Nearest rank.
        let rank = ((p / 100.0) * self.lat_ns.len() as f64).ceil().max(1.0) as usize;
        Some(self.lat_ns[rank.min(self.lat_ns.len()) - 1] as f64 / 1000.0)
    }

    fn json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |x| format!("{x:.3}"));
        let mean = if self.lat_ns.is_empty() {
            None
        } else {
            Some(self.lat_ns.iter().sum::<u64>() as f64 / self.lat_ns.len() as f64 / 1000.0)
        };
        format!(
            concat!(
                "{{\"name\":\"{}\",\"durability\":\"{}\",\"writers\":{},\"record_bytes\":{},",
                "\"appends\":{},\"elapsed_s\":{:.4},\"appends_per_s\":{:.1},",
                "\"lat_us\":{{\"mean\":{},\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}},",
                "\"stall_s\":{},\"stall_batches\":{},\"segments\":{},\"frame_bytes\":{}}}"
            ),
            self.name,
            self.durability,
            self.writers,
            self.record_bytes,
            self.appends,
            self.elapsed_s,
            self.rate(),
            opt(mean),
            opt(self.pct(50.0)),
            opt(self.pct(99.0)),
            opt(self.pct(99.9)),
            opt(self.lat_ns.last().map(|&x| x as f64 / 1000.0)),
            opt(self.stall_s),
            self.stall_batches.map_or("null".to_string(), |x| x.to_string()),
            self.segments,
            keel::wal::format::frame_size(self.record_bytes),
        )
    }
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating the case directory");
    d
}

fn count_segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".wal")).count())
        .unwrap_or(0)
}

fn open(dir: &Path, durability: Durability) -> Wal {
    let opts = Options { durability, ..Options::default() };
    Wal::open(dir, opts).expect("opening the WAL")
}

/// `writers` threads append `record_bytes` records with Durability::Sync for
/// `secs`, timing every append.
fn run_sync(base: &Path, name: &str, writers: usize, record_bytes: usize, secs: f64) -> CaseResult {
    let dir = fresh_dir(base, name);
    let wal = Arc::new(open(&dir, Durability::Sync));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(writers + 1));
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let (wal, stop, start) = (wal.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || {
                let record = vec![(t as u8).wrapping_add(1); record_bytes];
                let mut lat = Vec::with_capacity(1 << 16);
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    wal.append(&record).expect("append");
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                (lat, Instant::now())
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat_ns = Vec::new();
    let mut end = t0;
    for th in threads {
        let (l, e) = th.join().expect("writer thread");
        lat_ns.extend(l);
        end = end.max(e);
    }
    let elapsed_s = end.duration_since(t0).as_secs_f64();
    lat_ns.sort_unstable();
    let segments = count_segments(&dir);
    Arc::try_unwrap(wal).ok().expect("all writers joined").close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    CaseResult {
        name: name.into(),
        durability: "sync",
        writers,
        record_bytes,
        appends: lat_ns.len() as u64,
        elapsed_s,
        lat_ns,
        stall_s: None,
        stall_batches: None,
        segments,
    }
}

/// One thread appends `record_bytes` records with Durability::None for
/// `secs`. Appends are timed in batches of 256 so that the clock does not
/// dominate a sub-microsecond append; slow batches show rotation stalls.
fn run_none(base: &Path, name: &str, record_bytes: usize, secs: f64) -> CaseResult {
    const BATCH: u64 = 256;
    let dir = fresh_dir(base, name);
    let wal = open(&dir, Durability::None);
    let record = vec![7u8; record_bytes];
    let deadline = Duration::from_secs_f64(secs);
    let mut appends = 0u64;
    let mut stall = Duration::ZERO;
    let mut stall_batches = 0u64;
    let t0 = Instant::now();
    let mut last = t0;
    loop {
        for _ in 0..BATCH {
            wal.append(std::hint::black_box(&record)).expect("append");
        }
        appends += BATCH;
        let now = Instant::now();
        let took = now - last;
        if took > Duration::from_millis(1) {
            stall += took;
            stall_batches += 1;
        }
        last = now;
        if now - t0 >= deadline {
            break;
        }
    }
    let elapsed_s = last.duration_since(t0).as_secs_f64();
    let segments = count_segments(&dir);
    wal.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    CaseResult {
        name: name.into(),
        durability: "none",
        writers: 1,
        record_bytes,
        appends,
        elapsed_s,
        lat_ns: Vec::new(),
        stall_s: Some(stall.as_secs_f64()),
        stall_batches: Some(stall_batches),
        segments,
    }
}

fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.dir).expect("creating --dir");
    let mut results = Vec::new();
    for case in &args.cases {
        let r = match case.as_str() {
            "sync_4k_1w" => run_sync(&args.dir, case, 1, 4096, args.secs),
            "sync_256_1w" => run_sync(&args.dir, case, 1, 256, args.secs),
            "sync_256_4w" => run_sync(&args.dir, case, 4, 256, args.secs),
            "sync_256_16w" => run_sync(&args.dir, case, 16, 256, args.secs),
            "sync_256_64w" => run_sync(&args.dir, case, 64, 256, args.secs),
            "none_128_1w" => run_none(&args.dir, case, 128, args.secs),
            _ => unreachable!(),
        };
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
        println!(
            "{:<14} {:>3} writer(s) {:>5} B: {:>12.0} appends/s  p50 {:>8} us  p99 {:>8} us  segments {}{}",
            r.name,
            r.writers,
            r.record_bytes,
            r.rate(),
            f(r.pct(50.0)),
            f(r.pct(99.0)),
            r.segments,
            r.stall_s.map_or(String::new(), |s| format!("  stalls {:.3} s in {} batches", s, r.stall_batches.unwrap_or(0))),
        );
        results.push(r);
    }
    let body: Vec<String> = results.iter().map(|r| r.json()).collect();
    let json = format!("{{\"secs_per_case\":{},\"cases\":[\n{}\n]}}\n", args.secs, body.join(",\n"));
    std::fs::write(&args.out, json).expect("writing --out");
}
