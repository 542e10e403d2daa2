//! The shared read-index: concurrent misses make one host call.
//!
//! A read-index proves the commit index at some moment inside the call.
//! A read may only use an index proved AFTER the read began, or it could
//! miss a write committed between that moment and its start. So a read
//! that finds a call already running does not take that call's answer: it
//! waits for the next one, which starts once the running one returns, and
//! every read that arrived meanwhile shares it. A generation counter names
//! the calls: a read arriving when `started` calls have begun needs the
//! answer of call `started + 1` or later. Under load that is at most one
//! call in flight plus one queued, whatever the number of readers.

use crate::error::{Error, Result};
use crate::status::KEEL_STATUS_TIMEOUT;
use parking_lot::{Condvar, Mutex};
use std::time::Instant;

/// The host's read-index round trip: returns the index to wait for, or an
/// error (NOT_LEADER, TIMEOUT, ...). Runs on the reading thread that
/// starts a flight; must not call back into the same gate's read path.
pub type ReadIndexFn = dyn Fn() -> Result<u64> + Send + Sync;

#[derive(Default)]
struct Flights {
    /// Calls started so far (the generation of the latest call).
    started: u64,
    running: bool,
    /// Generation of the latest finished call, and its answer.
    finished: u64,
    answer: Option<Result<u64>>,
}

#[derive(Default)]
pub struct SingleFlight {
    flights: Mutex<Flights>,
    done: Condvar,
}

/// Taken when a read begins: names the first call whose answer it may use.
#[derive(Clone, Copy, Debug)]
pub struct Ticket(u64);

impl SingleFlight {
    /// A ticket for a read beginning now: only calls that start later count.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.flights.lock().started + 1)
    }

    /// Calls started so far (tests wait on it to know a read began its call).
    #[cfg(test)]
    pub fn started(&self) -> u64 {
        self.flights.lock().started
    }

    /// The answer of a call that started after `ticket` was taken, made by
    /// this thread when no call is running. TIMEOUT when `deadline` passes
    /// while waiting for another thread's call.
    pub fn get(&self, ticket: Ticket, call: &dyn Fn() -> Result<u64>, deadline: Instant) -> Result<u64> {
        let need = ticket.0;
        let mut f = self.flights.lock();
        loop {
            if f.finished >= need {
                return f.answer.clone().expect("a finished flight has an answer");
            }
            if !f.running {
                f.started += 1;
                f.running = true;
                let generation = f.started;
                drop(f);
                // Ends the flight even if `call` panics, so waiters are not stranded.
                let mut finish = Finish { flight: self, generation, answer: None };
                let index = call();
                finish.answer = Some(index.clone());
                drop(finish);
                return index;
            }
            if self.done.wait_until(&mut f, deadline).timed_out() && f.finished < need {
                return Err(Error::new(KEEL_STATUS_TIMEOUT, "timed out waiting for a shared read-index"));
            }
        }
    }
}

struct Finish<'a> {
    flight: &'a SingleFlight,
    generation: u64,
    answer: Option<Result<u64>>,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let mut f = self.flight.flights.lock();
        f.running = false;
        f.finished = self.generation;
        f.answer = Some(self.answer.take().unwrap_or_else(|| Err(Error::new(
            crate::status::KEEL_STATUS_PANIC,
            "the read-index callback panicked",
        ))));
        drop(f);
        self.flight.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn a_lone_caller_makes_the_call() {
        let sf = SingleFlight::default();
        let a = sf.get(sf.ticket(), &|| Ok(42), far());
        assert_eq!(a.unwrap(), 42);
        let b = sf.get(sf.ticket(), &|| Err(Error::new(crate::status::KEEL_STATUS_NOT_LEADER, "x")), far());
        assert_eq!(b.unwrap_err().status, crate::status::KEEL_STATUS_NOT_LEADER);
    }

    /// While call 1 is held open, N readers arrive. None of them may take
    /// call 1's answer (it started before them); all share call 2. The
    /// test controls the calls with channels, never with sleeps.
    #[test]
    fn readers_arriving_during_a_call_share_the_next_one_not_the_running_one() {
        let sf = Arc::new(SingleFlight::default());
        let calls = Arc::new(AtomicU64::new(0));
        let (enter_tx, enter_rx) = crossbeam_channel::unbounded::<u64>();
        let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
        let call = {
            let calls = calls.clone();
            Arc::new(move || -> Result<u64> {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                enter_tx.send(n).unwrap();
                release_rx.recv().unwrap();
                Ok(n * 100)
            })
        };
        let first = {
            let (sf, call) = (sf.clone(), call.clone());
            std::thread::spawn(move || sf.get(sf.ticket(), &*call, far()).unwrap())
        };
        assert_eq!(enter_rx.recv().unwrap(), 1, "call 1 is running");
        // N reads begin while call 1 runs: their tickets exclude call 1.
        const N: usize = 8;
        let tickets: Vec<Ticket> = (0..N).map(|_| sf.ticket()).collect();
        let waiters: Vec<_> = tickets
            .into_iter()
            .map(|t| {
                let (sf, call) = (sf.clone(), call.clone());
                std::thread::spawn(move || sf.get(t, &*call, far()).unwrap())
            })
            .collect();
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap(), 100);
        assert_eq!(enter_rx.recv().unwrap(), 2, "one shared call for all waiters");
        release_tx.send(()).unwrap();
        for w in waiters {
            assert_eq!(w.join().unwrap(), 200, "nobody took the answer of the call that started before it");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_waiter_gives_up_at_its_deadline_and_a_panicking_call_frees_the_flight() {
        let sf = Arc::new(SingleFlight::default());
        let (enter_tx, enter_rx) = crossbeam_channel::unbounded::<()>();
        let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
        let holder = {
            let sf = sf.clone();
            std::thread::spawn(move || {
                let call = move || -> Result<u64> {
                    enter_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    panic!("host callback blew up")
                };
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sf.get(sf.ticket(), &call, far()))).is_err()
            })
        };
        enter_rx.recv().unwrap();
        // A deadline already passed: the waiter returns TIMEOUT at once.
        let late = sf.get(sf.ticket(), &|| Ok(1), Instant::now());
        assert_eq!(late.unwrap_err().status, KEEL_STATUS_TIMEOUT);
        release_tx.send(()).unwrap();
        assert!(holder.join().unwrap(), "the panic reached its caller");
        // The flight is free again: the next caller makes a fresh call
        // (the panicked one's answer is PANIC).
        assert_eq!(sf.get(sf.ticket(), &|| Ok(9), far()).unwrap(), 9);
    }
}
