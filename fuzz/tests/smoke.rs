//! The stable fuzz runner behind `make fuzz-smoke`: no nightly, no
//! cargo-fuzz, no coverage feedback. For each target it replays the
//! committed corpus and regressions, then runs seeded random mutations of
//! the corpus for FUZZ_SMOKE_SECONDS (default 4) with FUZZ_SEED (default 1).
//!
//! A failing input is written to `fuzz/artifacts/smoke/<target>/` and
//! fails the test, unless its panic message matches a line of
//! `regressions/known-open.txt` (`<target> <substring> [&& <substring>...]`,
//! all of which must occur in the panic message),
//! which lists bugs found and reported but not fixed yet; a listed bug
//! that no regression input reproduces any more fails the replay, so the
//! list is emptied as the fixes land.
//!
//! KEEL_FUZZ_WRITE_CORPUS=1 rewrites `corpus/` from `keel_fuzz::seeds`.

use keel_fuzz::mutate::{mutate, Rng};
use keel_fuzz::{seeds, TARGETS};
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

const MAX_LEN: usize = 4096;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

thread_local! {
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics inside `run` are captured (message and location) instead of printed.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                if let Some(slot) = c.as_mut() {
                    let msg = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                    *slot = format!("{msg}{at}");
                    true
                } else {
                    false
                }
            });
            if !captured {
                default(info);
            }
        }));
    });
}

/// Runs one input; Err(panic message) if the oracle failed.
fn run(f: fn(&[u8]), data: &[u8]) -> Result<Duration, String> {
    install_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    let start = Instant::now();
    let r = panic::catch_unwind(AssertUnwindSafe(|| f(data)));
    let took = start.elapsed();
    let msg = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    match r {
        Ok(()) if took > Duration::from_secs(env_u64("FUZZ_HANG_SECONDS", 10)) => {
            Err(format!("slow input: {took:?} (FUZZ_HANG_SECONDS)"))
        }
        Ok(()) => Ok(took),
        Err(_) => Err(msg),
    }
}

/// (target, substrings that must all occur in the panic message).
fn known_open() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(root().join("regressions/known-open.txt")).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(t, m)| (t.to_string(), m.split("&&").map(|p| p.trim().to_string()).collect())))
        .collect()
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .map(|p| {
                    let b = std::fs::read(&p).unwrap();
                    (p, b)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn save(target: &str, data: &[u8]) -> PathBuf {
    let dir = root().join("artifacts/smoke").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("crash-{:08x}", crc32fast::hash(data)));
    std::fs::write(&path, data).unwrap();
    path
}

fn target_fn(name: &str) -> fn(&[u8]) {
    TARGETS.iter().find(|(n, _)| *n == name).unwrap().1
}

/// Replays corpus and regressions, then mutates for FUZZ_SMOKE_SECONDS.
fn smoke(target: &str) {
    let f = target_fn(target);
    let open: Vec<Vec<String>> = known_open().into_iter().filter(|(t, _)| t == target).map(|(_, m)| m).collect();
    let mut failures = Vec::new();
    let mut known_hits = vec![0usize; open.len()];
    let mut note = |msg: &str, data: &[u8], from: String, known_hits: &mut Vec<usize>| -> bool {
        let mut known = false;
        for (i, m) in open.iter().enumerate() {
            if m.iter().all(|part| msg.contains(part.as_str())) {
                known_hits[i] += 1;
                known = true;
            }
        }
        if !known {
            let saved = save(target, data);
            failures.push(format!("{from}: {msg}\n    input saved as {}", saved.display()));
        }
        !known
    };

    let corpus = files(&root().join("corpus").join(target));
    let regressions = files(&root().join("regressions").join(target));
    assert!(!corpus.is_empty(), "no corpus for {target}: run KEEL_FUZZ_WRITE_CORPUS=1 cargo test in fuzz/");
    let start = Instant::now();
    for (path, data) in corpus.iter().chain(&regressions) {
        if let Err(msg) = run(f, data) {
            note(&msg, data, path.display().to_string(), &mut known_hits);
        }
    }
    let replay_known = known_hits.clone();
    let replayed = start.elapsed();

    let seconds = env_u64("FUZZ_SMOKE_SECONDS", 4);
    let seed = env_u64("FUZZ_SEED", 1);
    let mut rng = Rng::new(seed ^ u64::from(crc32fast::hash(target.as_bytes())));
    let pool: Vec<Vec<u8>> = corpus.iter().chain(&regressions).map(|(_, d)| d.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut execs = 0u64;
    let mut failed = 0;
    while Instant::now() < deadline && failed < 5 {
        let mut data = pool[rng.below(pool.len())].clone();
        mutate(&mut data, &mut rng, &pool, MAX_LEN);
        execs += 1;
        if let Err(msg) = run(f, &data) {
            if note(&msg, &data, format!("mutation {execs} (FUZZ_SEED={seed})"), &mut known_hits) {
                failed += 1;
            }
        }
    }
    let mutated = start.elapsed() - replayed;
    println!(
        "fuzz-smoke {target}: replayed {} corpus + {} regression inputs in {:.2?}; {execs} mutated inputs in {:.2?} ({:.0}/s, seed {seed}); known-open hits {:?}",
        corpus.len(),
        regressions.len(),
        replayed,
        mutated,
        execs as f64 / mutated.as_secs_f64().max(1e-9),
        known_hits,
    );
    assert!(failures.is_empty(), "{target}: {} failing input(s):\n  {}", failures.len(), failures.join("\n  "));
    for (i, m) in open.iter().enumerate() {
        assert!(
            replay_known[i] > 0,
            "{target}: no regression input reproduces the known-open bug {m:?} any more: \
             remove its line from fuzz/regressions/known-open.txt (and keep the input)"
        );
    }
}

#[test]
fn smoke_frame() {
    smoke("frame");
}

#[test]
fn smoke_segment_header() {
    smoke("segment_header");
}

#[test]
fn smoke_recovery() {
    smoke("recovery");
}

#[test]
fn smoke_node_frame() {
    smoke("node_frame");
}

/// Every deterministic seed is in the committed corpus, byte for byte.
#[test]
fn corpus_holds_the_seeds() {
    let write = std::env::var_os("KEEL_FUZZ_WRITE_CORPUS").is_some();
    let mut stale = Vec::new();
    for s in seeds::seeds() {
        let path = root().join("corpus").join(s.target).join(format!("seed-{}", s.name));
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &s.data).unwrap();
        } else if s.deterministic && std::fs::read(&path).ok().as_deref() != Some(&s.data[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "the seed corpus is stale (the format or src/seeds.rs changed): regenerate it with \
         `cd fuzz && KEEL_FUZZ_WRITE_CORPUS=1 cargo test --locked corpus_holds_the_seeds`: {stale:?}"
    );
}
