//! Step hooks for shard tests (src/shard/steps.rs).
//!
//! `Lockstep` parks the flush thread at every step; the test thread lets
//! it go one step at a time (`advance`). Exactly one of the two runs at
//! any moment, so the order of every file operation, and with it every
//! fault the fault file system rolls, is a function of the seed that
//! chose the schedule: a failing seed replays exactly.
//!
//! `Jitter` is the exploring mode: the flush runs free and sleeps a seeded
//! random time at each step, so interleavings a quiet machine never shows
//! come up; it keeps the trace of steps to print with a failure.
//!
//! `KillAt` counts steps and ends the process with SIGKILL at step k.

use super::rng::Rng;
use keel::shard::{Step, StepHook};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many recent events a trace keeps.
const TRACE: usize = 64;

/// The last events of a run (steps of the flush, writes of the test), to
/// print beside a failure.
#[derive(Default)]
pub struct Trace(Mutex<VecDeque<String>>);

impl Trace {
    pub fn push(&self, event: String) {
        let mut t = self.0.lock();
        if t.len() == TRACE {
            t.pop_front();
        }
        t.push_back(event);
    }

    pub fn render(&self) -> String {
        self.0.lock().iter().cloned().collect::<Vec<_>>().join(" ")
    }
}

#[derive(Default)]
struct State {
    /// The step the flush thread is parked at, if it is parked.
    parked: Option<Step>,
    /// Steps granted and not yet taken (0 or 1).
    grants: u64,
    /// Released: the flush runs free from now on (shutdown).
    free: bool,
}

#[derive(Default)]
pub struct Lockstep {
    state: Mutex<State>,
    moved: Condvar,
    /// Counts every step the flush takes (crash tests kill at step k).
    ticks: Option<Arc<KillAt>>,
    pub trace: Trace,
}

impl StepHook for Lockstep {
    fn at(&self, step: Step) {
        let mut s = self.state.lock();
        if s.free {
            return;
        }
        s.parked = Some(step);
        self.moved.notify_all();
        while s.grants == 0 && !s.free {
            self.moved.wait(&mut s);
        }
        s.grants = s.grants.saturating_sub(1);
        s.parked = None;
        if step != Step::Idle {
            self.trace.push(format!("{step:?}"));
        }
        if let Some(t) = &self.ticks {
            t.tick();
        }
    }

    fn owns_schedule(&self) -> bool {
        true
    }
}

impl Lockstep {
    /// A scheduler whose flush steps also count on `ticks`.
    pub fn counting(ticks: Arc<KillAt>) -> Lockstep {
        Lockstep { ticks: Some(ticks), ..Lockstep::default() }
    }

    /// Lets the flush thread take `n` steps (0: none) and waits until it
    /// is parked again; returns the step it is parked at. One hand-over
    /// each way however many steps: the test thread stays idle meanwhile,
    /// so the schedule is as deterministic as with one step at a time.
    pub fn advance(&self, n: u64) -> Step {
        let mut s = self.state.lock();
        assert!(!s.free, "advance after release");
        while s.parked.is_none() {
            self.moved.wait(&mut s);
        }
        if n == 0 {
            return s.parked.expect("parked");
        }
        s.grants += n;
        self.moved.notify_all();
        // Parked again, having taken every grant: at its step n + 1.
        while s.grants > 0 || s.parked.is_none() {
            self.moved.wait(&mut s);
        }
        s.parked.expect("parked")
    }

    /// Stops scheduling: the flush runs free (to shut down).
    pub fn release(&self) {
        self.state.lock().free = true;
        self.moved.notify_all();
    }
}

/// The exploring mode's hook: a seeded random pause at each step.
pub struct Jitter {
    rng: Mutex<Rng>,
    max_micros: u64,
    pub trace: Trace,
}

impl Jitter {
    pub fn new(seed: u64, max_micros: u64) -> Jitter {
        Jitter { rng: Mutex::new(Rng::new(seed ^ 0x0071_77e1)), max_micros, trace: Trace::default() }
    }

    /// A pause for the writer side, from the same seed.
    pub fn pause(&self) {
        let d = self.rng.lock().below(self.max_micros + 1);
        std::thread::sleep(Duration::from_micros(d));
    }
}

impl StepHook for Jitter {
    fn at(&self, step: Step) {
        if step != Step::Idle {
            self.trace.push(format!("{step:?}"));
            self.pause();
        }
    }
}

/// Counts steps (the test's own included, through `tick`) and kills the
/// process with SIGKILL when the count reaches `kill_at`.
pub struct KillAt {
    count: AtomicU64,
    kill_at: Option<u64>,
}

impl KillAt {
    pub fn new(kill_at: Option<u64>) -> KillAt {
        KillAt { count: AtomicU64::new(0), kill_at }
    }

    /// Counts one step; returns its number (from 1).
    pub fn tick(&self) -> u64 {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if Some(n) == self.kill_at {
            // SAFETY: raise only sends a signal to this process.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        n
    }
}

impl Lockstep {
    /// Advances until the flush is parked at a step `stop` accepts
    /// (at most `max` steps); returns that step.
    pub fn advance_until(&self, max: u64, stop: impl Fn(Step) -> bool) -> Step {
        for _ in 0..max {
            let at = self.advance(1);
            if stop(at) {
                return at;
            }
        }
        panic!("the flush did not reach the awaited step within {max} steps; last steps: {}", self.trace.render());
    }
}
