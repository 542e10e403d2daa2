//! Kill -9 loop with real processes (the WAL's second crash test, after
//! the fault-injecting file system): a child process appends to a WAL and reports every
//! acknowledged sequence number over a pipe; the parent kills it with
//! SIGKILL at a random moment, reopens the log and checks what a process
//! crash must leave (W3, W4, W5, W7):
//!
//! - every acknowledged record is recovered, in every durability mode (the
//!   page cache survives a process crash; only power loss may lose the
//!   unsynced window), unless `ack` had declared it truncatable;
//! - the recovered records are the dense prefix `[first, last]`, with the
//!   payload the child wrote for each sequence number, nothing beyond what
//!   was ever appended, and no partial batch;
//! - `durable_seq() == last_seq()` after reopening;
//! - ABSOLUTE recovery (on a copy of the directory) either opens with the
//!   same records or fails with CORRUPTION (a torn last frame), nothing else.
//!
//! The child is this test binary re-executed with `KEEL_KILL9_CHILD` set
//! (no extra binary). Payloads are a pure function of the sequence number
//! and a per-cycle salt, so the parent checks them without storing them.
//! One directory lives for a few cycles (each child continues the log the
//! previous crash left; sometimes without a verifying reopen in between, so
//! a child's own recovery runs on a freshly crashed log and can be killed
//! too), then a fresh one starts.
//!
//! `KEEL_KILL9_CYCLES=N` sets the number of cycles (default 300);
//! `KEEL_KILL9_SEED=S` replays the chain of cycles of seed S (repeatedly,
//! up to the cycle count: timing is not part of the seed, so repetition is
//! what reproduces). `make soak` runs 10,000 cycles in release mode.

mod common;

use common::child::{self, report};
use common::rng::Rng;
use common::TempDir;
use keel::status::*;
use keel::wal::{Durability, Options, ReadUpto, RecoveryMode, Wal};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TEST_NAME: &str = "kill9_loop";
/// Set in the child: `<dir>|<mode>|<salt>|<seed>`.
const CHILD_ENV: &str = "KEEL_KILL9_CHILD";
/// The child's end of the report pipe.
const SEGMENT: u64 = 64 << 10;
const DEFAULT_CYCLES: u64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Periodic,
    None,
}

impl Mode {
    fn parse(s: &str) -> Mode {
        match s {
            "sync" => Mode::Sync,
            "periodic" => Mode::Periodic,
            "none" => Mode::None,
            _ => panic!("unknown mode {s}"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Periodic => "periodic",
            Mode::None => "none",
        }
    }
    fn durability(self) -> Durability {
        match self {
            Mode::Sync => Durability::Sync,
            Mode::Periodic => Durability::Periodic(Duration::from_millis(10)),
            Mode::None => Durability::None,
        }
    }
}

fn options(durability: Durability, recovery: RecoveryMode) -> Options {
    Options { durability, recovery, segment_size: SEGMENT, ..Options::default() }
}

/// The payload of record `seq` written in a cycle with `salt`: 0..=8 KiB
/// (a quarter of them at most 64 bytes), bytes from a seeded generator.
fn payload(seq: u64, salt: u64) -> Vec<u8> {
    let mut r = Rng::new(seq.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ salt);
    let len = match r.below(4) {
        0 => r.below(65),
        _ => r.below(8193),
    } as usize;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

// ---- the child ------------------------------------------------------------

fn child_fail(msg: String) -> ! {
    eprintln!("kill9 child: {msg}");
    report(&format!("E {}\n", msg.replace('\n', " ")));
    std::process::exit(3);
}

/// Reports, in this order: `R first last durable` once the log is open;
/// then per append `I first last` (intent, before the call) and
/// `A first last durable?` (after it returned); `K v` before `ack(v)`.
/// Runs until killed.
fn child_main(spec: &str) -> ! {
    let parts: Vec<&str> = spec.split('|').collect();
    let dir = PathBuf::from(parts[0]);
    let mode = Mode::parse(parts[1]);
    let salt: u64 = parts[2].parse().unwrap();
    let mut rng = Rng::new(parts[3].parse().unwrap());
    let wal = match Wal::open(&dir, options(mode.durability(), RecoveryMode::TolerateTail)) {
        Ok(w) => w,
        Err(e) => child_fail(format!("open failed: {e:?}")),
    };
    let (first, last, durable) = (wal.first_seq(), wal.last_seq(), wal.durable_seq());
    report(&format!("R {first} {last} {durable}\n"));
    let mut next = last + 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = if rng.chance(150) { 2 + rng.below(6) } else { 1 };
        let recs: Vec<Vec<u8>> = (next..next + n).map(|s| payload(s, salt)).collect();
        let end = next + n - 1;
        report(&format!("I {next} {end}\n"));
        let got = if n == 1 && rng.chance(800) {
            wal.append(&recs[0])
        } else {
            wal.append_batch(&recs.iter().map(|r| &r[..]).collect::<Vec<_>>())
        };
        match got {
            Ok(s) if s == next => {}
            Ok(s) => child_fail(format!("append of {n} record(s) returned sequence {s}, expected {next}")),
            Err(e) => child_fail(format!("append at {next}: {e:?}")),
        }
        if wal.last_seq() != end {
            child_fail(format!("last_seq {} after appending {next}..={end}", wal.last_seq()));
        }
        let durable = wal.durable_seq() >= end;
        if mode == Mode::Sync && !durable {
            child_fail(format!("SYNC append of {end} returned with durable_seq {}", wal.durable_seq()));
        }
        report(&format!("A {next} {end} {}\n", durable as u8));
        next = end + 1;
        if mode != Mode::Sync && rng.chance(10) {
            match wal.sync() {
                Ok(d) if d >= end => {}
                Ok(d) => child_fail(format!("sync() returned {d} after appending {end}")),
                Err(e) => child_fail(format!("sync: {e:?}")),
            }
        }
        if rng.chance(15) {
            let first = wal.first_seq();
            let v = if rng.chance(500) { end } else { first + rng.below(end + 1 - first) };
            report(&format!("K {v}\n"));
            if let Err(e) = wal.ack(v) {
                child_fail(format!("ack({v}): {e:?}"));
            }
        }
        if Instant::now() > deadline {
            child_fail("not killed within 60 s".into());
        }
    }
}

// ---- the parent -----------------------------------------------------------

enum Msg {
    Ready { first: u64, last: u64, durable: u64 },
    Intent(u64, u64),
    Acked(u64, u64, bool),
    Ack(u64),
    Error(String),
}

fn parse(line: &str) -> Option<Msg> {
    let mut w = line.split(' ');
    let tag = w.next()?;
    if tag == "E" {
        return Some(Msg::Error(line[2.min(line.len())..].to_string()));
    }
    let nums: Vec<u64> = w.map(|x| x.parse().ok()).collect::<Option<_>>()?;
    Some(match (tag, &nums[..]) {
        ("R", &[f, l, d]) => Msg::Ready { first: f, last: l, durable: d },
        ("I", &[a, b]) => Msg::Intent(a, b),
        ("A", &[a, b, d]) => Msg::Acked(a, b, d == 1),
        ("K", &[v]) => Msg::Ack(v),
        _ => return None,
    })
}

/// What the parent knows about one directory's log.
struct Chain {
    rng: Rng,
    tmp: TempDir,
    dir: PathBuf,
    /// (first sequence, salt) of each cycle's appends, in order; the salt of
    /// record s is that of the last entry starting at or before s.
    epochs: Vec<(u64, u64)>,
    /// Every record up to here must be recovered (acknowledged, or recovered
    /// and made durable by an earlier open).
    floor: u64,
    /// Highest sequence number any append was ever attempted for (or recovered).
    attempted: u64,
    /// Highest `ack` the children asked for: records up to it may be gone.
    ack_intent: u64,
    /// Multi-record appends attempted since the last recovery.
    batches: Vec<(u64, u64)>,
    /// Last recovered sequence number: the next cycle's records start after it.
    last: u64,
    /// A crash not yet followed by a recovery that was checked.
    unverified: bool,
}

#[derive(Default)]
struct Totals {
    cycles: u64,
    acked: u64,
    recovered: u64,
    absolute_ok: u64,
    absolute_corruption: u64,
    early_kills: u64,
}

impl Chain {
    fn new(seed: u64) -> Chain {
        let tmp = TempDir::new("kill9");
        let dir = tmp.path().join("wal");
        Chain {
            rng: Rng::new(seed),
            tmp,
            dir,
            epochs: Vec::new(),
            floor: 0,
            attempted: 0,
            ack_intent: 0,
            batches: Vec::new(),
            last: 0,
            unverified: false,
        }
    }

    fn salt_of(&self, seq: u64) -> u64 {
        self.epochs.iter().rev().find(|(start, _)| *start <= seq).expect("a record before any epoch").1
    }

    /// Checks a recovered log's shape (from the child's report or the
    /// parent's reopen) and makes it the new baseline.
    fn check_shape(&mut self, first: u64, last: u64, durable: u64, who: &str) -> Result<u64, String> {
        if durable != last {
            return Err(format!("{who}: durable_seq {durable} != last_seq {last} after recovery"));
        }
        if last < self.floor {
            return Err(format!(
                "{who}: LOST records: last_seq {last} but records up to {} were acknowledged or recovered before",
                self.floor
            ));
        }
        if last > self.attempted {
            return Err(format!("{who}: last_seq {last} but no append beyond {} was ever attempted", self.attempted));
        }
        if first < 1 || first > last + 1 {
            return Err(format!("{who}: first_seq {first} with last_seq {last}"));
        }
        if first - 1 > self.ack_intent {
            return Err(format!("{who}: first_seq {first} but ack never went beyond {}", self.ack_intent));
        }
        if let Some((a, b)) = self.batches.iter().find(|(a, b)| *a <= last && last < *b) {
            return Err(format!("{who}: last_seq {last} splits the batch {a}..={b}"));
        }
        let recovered = last - self.last;
        self.last = last;
        self.floor = last;
        self.attempted = last;
        self.batches.clear();
        self.unverified = false;
        Ok(recovered)
    }

    /// Reads every retained record and compares it with its expected payload.
    fn check_records(&self, wal: &Wal, who: &str) -> Result<(), String> {
        let (first, last) = (wal.first_seq(), wal.last_seq());
        let mut r = wal.reader(first, ReadUpto::Appended).map_err(|e| format!("{who}: reader({first}): {e:?}"))?;
        for s in first..=last {
            match r.next_record() {
                Ok(Some((seq, data))) => {
                    if seq != s {
                        return Err(format!("{who}: reader returned sequence {seq} where {s} was expected"));
                    }
                    let want = payload(s, self.salt_of(s));
                    if data != want {
                        return Err(format!(
                            "{who}: WRONG DATA at sequence {s}: {} bytes, expected {} bytes{}",
                            data.len(),
                            want.len(),
                            if data.len() == want.len() { " (contents differ)" } else { "" }
                        ));
                    }
                }
                Ok(None) => return Err(format!("{who}: HOLE: reader ended before {s} (last_seq {last})")),
                Err(e) => return Err(format!("{who}: reading {s}: {e:?}")),
            }
        }
        match r.next_record() {
            Ok(None) => {}
            Ok(Some((seq, _))) => return Err(format!("{who}: reader returned {seq} beyond last_seq {last}")),
            Err(e) => return Err(format!("{who}: reading past {last}: {e:?}")),
        }
        if first > 1 {
            match wal.reader(first - 1, ReadUpto::Appended) {
                Err(e) if e.status == KEEL_STATUS_TRUNCATED => {}
                Err(e) => return Err(format!("{who}: reader({}) below first_seq: {e:?}", first - 1)),
                Ok(_) => return Err(format!("{who}: reader({}) below first_seq {first} opened", first - 1)),
            }
        }
        Ok(())
    }

    /// The parent's reopen after a kill: ABSOLUTE on a copy, then the
    /// default TOLERATE_TAIL on the log itself.
    fn verify(&mut self, totals: &mut Totals) -> Result<u64, String> {
        let copy = self.tmp.path().join("absolute");
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir_all(&copy).map_err(|e| format!("creating {}: {e}", copy.display()))?;
        if self.dir.exists() {
            for entry in std::fs::read_dir(&self.dir).map_err(|e| format!("listing {}: {e}", self.dir.display()))? {
                let entry = entry.unwrap();
                let name = entry.file_name();
                if name == "LOCK" || !entry.file_type().unwrap().is_file() {
                    continue;
                }
                std::fs::copy(entry.path(), copy.join(&name)).map_err(|e| format!("copying {name:?}: {e}"))?;
            }
        }
        let absolute_last = match Wal::open(&copy, options(Durability::None, RecoveryMode::Absolute)) {
            Ok(wal) => {
                totals.absolute_ok += 1;
                self.check_records(&wal, "absolute reopen")?;
                Some(wal.last_seq())
            }
            Err(e) if e.status == KEEL_STATUS_CORRUPTION => {
                totals.absolute_corruption += 1;
                None
            }
            Err(e) => return Err(format!("absolute reopen failed with other than CORRUPTION: {e:?}")),
        };
        let _ = std::fs::remove_dir_all(&copy);

        let wal = Wal::open(&self.dir, options(Durability::Sync, RecoveryMode::TolerateTail))
            .map_err(|e| format!("reopen (tolerate_tail) failed: {e:?}"))?;
        let (first, last, durable) = (wal.first_seq(), wal.last_seq(), wal.durable_seq());
        self.check_records(&wal, "reopen")?;
        if let Some(a) = absolute_last.filter(|a| *a != last) {
            return Err(format!("absolute reopen found last_seq {a}, tolerate_tail {last}"));
        }
        let recovered = self.check_shape(first, last, durable, "reopen")?;
        wal.close().map_err(|e| format!("close after reopen: {e:?}"))?;
        let aside: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("salvaged-"))
            .collect();
        if !aside.is_empty() {
            return Err(format!("recovery set segments aside after a process crash: {:?}", aside[0].path()));
        }
        Ok(recovered)
    }

    /// One cycle: start a child, kill it, check. `verify`: reopen and check
    /// in the parent (otherwise the next child's recovery is checked).
    fn cycle(&mut self, totals: &mut Totals, verify: bool, log: &Path) -> Result<String, String> {
        let mode = [Mode::Sync, Mode::Periodic, Mode::None][self.rng.below(3) as usize];
        let salt = self.rng.next();
        let child_seed = self.rng.next();
        // One cycle in ten is killed at any moment from exec on (maybe in
        // the middle of recovery); the others once the log is open.
        let early = self.rng.chance(100);
        let delay = Duration::from_micros(if early { self.rng.below(15_000) } else { 5_000 + self.rng.below(45_000) });
        let what = format!("mode {}, kill {} {:?}", mode.name(), if early { "after spawn" } else { "after open" }, delay);

        let out = std::fs::File::create(log).unwrap();
        let spawned = Instant::now();
        let child::Child { process: mut child, lines: rx } =
            child::spawn(TEST_NAME, &[(CHILD_ENV, format!("{}|{}|{salt}|{child_seed}", self.dir.display(), mode.name()))], Some(out))?;

        let mut pending = Vec::new();
        if early {
            totals.early_kills += 1;
            std::thread::sleep(delay.saturating_sub(spawned.elapsed()));
        } else {
            // Wait until the log is open, then let it append a while.
            loop {
                match rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(line) => {
                        let Some(m) = parse(&line) else { continue };
                        let ready = matches!(m, Msg::Ready { .. });
                        pending.push(m);
                        if ready {
                            break;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break, // died: the status says why
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // SAFETY: no pointers; the child is not reaped yet, so
                        // its pid cannot name another process.
                        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                        let _ = child.wait();
                        return Err(format!("{what}: the child did not open the log within 30 s"));
                    }
                }
            }
            std::thread::sleep(delay);
        }
        // SAFETY: no pointers; the child is not reaped yet (wait is below),
        // so its pid cannot name another process.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().map_err(|e| format!("waiting for the child: {e}"))?;
        // The channel ends at the pipe's EOF: every line the child wrote.
        pending.extend(rx.iter().filter_map(|line| parse(&line)));
        if status.signal() != Some(libc::SIGKILL) {
            let msg = pending.iter().find_map(|m| match m {
                Msg::Error(s) => Some(s.clone()),
                _ => None,
            });
            return Err(format!(
                "{what}: the child ended by itself ({status}){}",
                msg.map(|m| format!(": {m}")).unwrap_or_default()
            ));
        }

        // What the child reported, in order.
        let mut acked = 0u64;
        let mut opened = false;
        for m in pending {
            match m {
                Msg::Ready { first, last, durable } => {
                    let recovered = self.check_shape(first, last, durable, "child's recovery")?;
                    totals.recovered += recovered;
                    self.epochs.push((last + 1, salt));
                    opened = true;
                }
                Msg::Intent(a, b) => {
                    if !opened || a != self.attempted + 1 {
                        return Err(format!("{what}: child appended {a}..={b} out of order"));
                    }
                    self.attempted = b;
                    if b > a {
                        self.batches.push((a, b));
                    }
                }
                Msg::Acked(a, b, durable) => {
                    if mode == Mode::Sync && !durable {
                        return Err(format!("{what}: SYNC append {a}..={b} acknowledged before durable"));
                    }
                    acked += b + 1 - a;
                    self.floor = self.floor.max(b);
                }
                Msg::Ack(v) => self.ack_intent = self.ack_intent.max(v),
                Msg::Error(e) => return Err(format!("{what}: child reported: {e}")),
            }
        }
        totals.acked += acked;
        self.unverified = true;
        if verify {
            totals.recovered += self.verify(totals).map_err(|e| format!("{what}: {e}"))?;
            return Ok(format!("{what}: {acked} acknowledged, {} recovered in all", self.last));
        }
        Ok(format!("{what}: {acked} acknowledged, not checked until the next open"))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn kill9_loop() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_main(&spec);
    }
    let cycles = env_u64("KEEL_KILL9_CYCLES").unwrap_or(DEFAULT_CYCLES);
    let replay = env_u64("KEEL_KILL9_SEED");
    let mut seeds = Rng::new(replay.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }));
    let started = Instant::now();
    let mut totals = Totals::default();
    while totals.cycles < cycles {
        let seed = replay.unwrap_or_else(|| seeds.next() % 1_000_000_000);
        let mut chain = Chain::new(seed);
        let length = 3 + chain.rng.below(6);
        let log = chain.tmp.path().join("child.log");
        for i in 0..length {
            if totals.cycles >= cycles && !chain.unverified {
                break;
            }
            // A quarter of the cycles leave the crashed log to the next
            // child's recovery; the last one of a chain is always checked.
            let verify = i + 1 == length || chain.rng.chance(750);
            totals.cycles += 1;
            match chain.cycle(&mut totals, verify, &log) {
                Ok(line) if replay.is_some() => println!("kill9: seed {seed} cycle {i}: {line}"),
                Ok(_) => {}
                Err(e) => {
                    let child_log = std::fs::read_to_string(&log).unwrap_or_default();
                    let kept = chain.tmp.path().to_path_buf();
                    std::mem::forget(chain); // keep the directory for a post-mortem
                    panic!(
                        "kill9: seed {seed}, cycle {i} failed: {e}\n\
                         directory kept: {}\n\
                         child output (tail):\n{}\n\
                         replay: KEEL_KILL9_SEED={seed} cargo test --test wal_kill9 -- --nocapture",
                        kept.display(),
                        child_log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
    }
    let line = format!(
        // Reaching this line means every check passed: no acknowledged record was lost.
        "kill9: {} cycles, {} records acknowledged, {} recovered, 0 lost ({} early kills; absolute reopen: {} clean, {} torn tail; {:.1} s)",
        totals.cycles,
        totals.acked,
        totals.recovered,
        totals.early_kills,
        totals.absolute_ok,
        totals.absolute_corruption,
        started.elapsed().as_secs_f64()
    );
    println!("{line}");
    let _ = std::io::stdout().flush();
    assert!(totals.cycles < 20 || totals.acked > 0, "no append was acknowledged in {} cycles", totals.cycles);
}
