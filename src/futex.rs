//! Threads sleeping on one futex word, so that whoever wakes them can wake
//! one of them, or all of them with a single system call.
//!
//! Why: the write gate's leader hands a whole group of writers their
//! outcomes at once. Woken one `unpark` at a time, a group of 58 writers
//! kept the leader busy for ≈ 160 µs on 2 vCPUs, longer than the fdatasync
//! the group had shared, and the last of them came back too late for the
//! next group (src/shard/gate.rs has the measurements).
//!
//! How: every sleeper waits on the same word with `FUTEX_WAIT_BITSET`. Bit
//! 0 of its bitset is everyone's; one of bits 1..=31 is its thread's slot.
//! `wake_all` wakes every sleeper, `wake_slot` the sleepers of one slot:
//! the thread meant, and the rare other one that shares its slot, which
//! finds nothing changed for it and sleeps again.
//!
//! The protocol that loses no wake-up: a sleeper takes a `ticket`, then
//! checks what it waits for, and sleeps on that ticket only if it is not
//! there yet. A waker first makes it true, then wakes, and every wake
//! moves the word first: a sleeper whose ticket predates the move does not
//! sleep (the kernel compares the word with the ticket), and one whose
//! ticket follows it sees what the waker made true.
//!
//! Before sleeping, a waiter may yield the CPU for a while instead
//! (`yield_until`): on an otherwise idle machine it then sees its outcome
//! without a wake-up; when other programs keep the CPUs busy it sleeps at
//! once.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A group of more than this many (the one that goes first, such as the
/// next leader, included) is a crowd: `Sleepers::wake_group` wakes the
/// rest of it with one `wake_all`, once the first is woken by its slot.
/// Smaller groups are woken one by one, in order: all at once, 16 writers
/// came back in a burst that a gathering leader took for the end of its
/// group, and groups shrank to half (src/shard/gate.rs).
pub const CROWD: usize = 32;

/// Bit 0: every sleeper's.
const EVERYONE: u32 = 1;
/// Slots: bits 1..=31.
const SLOTS: u32 = 31;

/// Before it sleeps, a waiter yields the CPU up to this many times,
/// checking between yields whether its wait is over.
///
/// Why: a group commit's followers wait about one fdatasync, during which
/// both vCPUs here are mostly idle; each one that sleeps costs its leader a
/// futex wake and itself a wake-up on an idle vCPU, the largest part of a
/// cycle between two syncs (docs/WAL.md, "Where a 16-writer cycle goes").
/// A yielding waiter sees its outcome as soon as it runs again. Yields
/// rather than a busy loop, so the leader and the writers coming back get
/// the CPU first; a count rather than a time, so the spin lasts longer the
/// more threads share the CPUs (measured here: 25, 50 and 100 yields all
/// beat sleeping at once, 50 the most; a 100 µs bound lost to sleeping).
const SPIN_YIELDS: u32 = 50;

/// A yield that kept the waiter off its CPU this long means a thread that
/// runs whole time slices had it (another program's, not a keel waiter's,
/// which gives the CPU back within microseconds): a spinning waiter then
/// loses a slice per yield where a sleeping one, woken, would preempt it.
/// Beside two busy loops, 16 spinning writers made 1.1 K appends/s where
/// sleeping ones made 19 K.
const SLOW_YIELD: Duration = Duration::from_micros(500);

/// Whether spinning has paid off lately, over every waiter of the process:
/// a moving sum, up by `CREDIT_STEP` for each spin that ended with the wait
/// over, down as much for each that did not (a slow yield, or every yield
/// spent). Waiters spin only while it is not negative, as RocksDB's write
/// threads decide whether to yield before they block.
static CREDIT: AtomicI64 = AtomicI64::new(0);
const CREDIT_STEP: i64 = 1 << 17;

/// With the credit negative, one wait in this many (per thread) spins
/// anyway, so that the credit recovers once spinning pays again.
const SAMPLE_EVERY: u32 = 256;

/// The credit after one more spin: it forgets 1/1024 of its past each time.
fn next_credit(credit: i64, paid_off: bool) -> i64 {
    credit - credit / 1024 + if paid_off { CREDIT_STEP } else { -CREDIT_STEP }
}

/// Yields the CPU while `done` is false, up to `SPIN_YIELDS` times, when
/// spinning has paid off lately (`CREDIT`); returns `done()`. The caller
/// sleeps by its usual protocol if it is still false.
pub fn yield_until(done: impl Fn() -> bool) -> bool {
    thread_local! {
        static WAITS: Cell<u32> = const { Cell::new(0) };
    }
    if done() {
        return true;
    }
    let sampled = WAITS.with(|w| {
        let n = w.get().wrapping_add(1);
        w.set(n);
        n % SAMPLE_EVERY == 0
    });
    if !sampled && CREDIT.load(Ordering::Relaxed) < 0 {
        return false;
    }
    // Paid off: the wait ended during the spin and no yield was slow (a
    // slow one cost a time slice, even if the wait was over by its end).
    let paid_off = spin(|yields, _| yields < SPIN_YIELDS, &done) == Spin::Done;
    // A lost update between two waiters only drops one step of a moving sum.
    let c = CREDIT.load(Ordering::Relaxed);
    CREDIT.store(next_credit(c, paid_off), Ordering::Relaxed);
    paid_off || done()
}

/// Yields the CPU until `done()`, for at most `max`: also ends at the
/// first slow yield (`SLOW_YIELD`), when the CPUs are busy with work that
/// needs them more than this wait does. Returns `done()`.
pub fn yield_for(max: Duration, done: impl Fn() -> bool) -> bool {
    done()
        || match spin(|_, spent| spent < max, &done) {
            Spin::Done => true,
            Spin::Slow => done(),
            Spin::Spent => false,
        }
}

/// How a `spin` ended.
#[derive(Debug, PartialEq, Eq)]
enum Spin {
    /// `done()` after a yield that was not slow.
    Done,
    /// A yield was slow (`SLOW_YIELD`); `done()` was not asked after it.
    Slow,
    /// The caller's limit was reached with `done()` still false.
    Spent,
}

/// The loop `yield_until` and `yield_for` share: yields the CPU, then
/// stops at a slow yield, or when `done()`, or when `more(yields so far,
/// time since the start)` refuses another. At least one yield.
fn spin(more: impl Fn(u32, Duration) -> bool, done: impl Fn() -> bool) -> Spin {
    let start = Instant::now();
    let mut last = start;
    let mut yields = 0;
    loop {
        std::thread::yield_now();
        yields += 1;
        let now = Instant::now();
        if now - last >= SLOW_YIELD {
            return Spin::Slow;
        }
        if done() {
            return Spin::Done;
        }
        if !more(yields, now - start) {
            return Spin::Spent;
        }
        last = now;
    }
}

/// A futex word and the threads sleeping on it.
#[derive(Default)]
pub struct Sleepers {
    word: AtomicU32,
}

/// A thread's slot: which bit besides bit 0 it sleeps with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(u32);

impl Slot {
    /// The calling thread's slot: threads take slots round-robin in the
    /// order they first ask, so two threads share one only 31 (or a
    /// multiple of 31) first asks apart.
    pub fn current() -> Slot {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        thread_local! {
            static MINE: Cell<Option<u32>> = const { Cell::new(None) };
        }
        MINE.with(|m| {
            let n = m.get().unwrap_or_else(|| {
                let n = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
                m.set(Some(n));
                n
            });
            Slot(n)
        })
    }

    fn bit(self) -> u32 {
        debug_assert!(self.0 < SLOTS, "a slot is one of bits 1..=31");
        2 << self.0
    }
}

impl Sleepers {
    /// The ticket to sleep on: take it before checking what to wait for.
    pub fn ticket(&self) -> u32 {
        self.word.load(Ordering::Acquire)
    }

    /// Sleeps unless a wake-up came after `ticket` was taken. May return
    /// early (a signal, a wake-up for a slot-mate): the caller checks again.
    pub fn sleep(&self, ticket: u32) {
        let bits = EVERYONE | Slot::current().bit();
        // SAFETY: `word` is an aligned, live u32 for the whole call (self is
        // borrowed across it). FUTEX_WAIT_BITSET only reads it and sleeps
        // while it equals `ticket`; the null timeout means no deadline and
        // the second address is unused by this operation. Its errors
        // (EAGAIN: the word moved; EINTR) need no handling: the caller
        // re-checks its condition either way.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.word.as_ptr(),
                libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG,
                ticket,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                bits,
            );
        }
    }

    /// Wakes the sleepers of `slot` (after making true what they wait for).
    pub fn wake_slot(&self, slot: Slot) {
        self.wake(slot.bit());
    }

    /// Wakes every sleeper (after making true what they wait for).
    pub fn wake_all(&self) {
        self.wake(EVERYONE);
    }

    /// Wakes the rest of a group whose waits just ended (after making that
    /// true; its first is woken already): one by one in order or, in a
    /// crowd (`CROWD`), everyone at once (a sleeper outside the group
    /// checks its condition and sleeps again).
    pub fn wake_group(&self, rest: impl ExactSizeIterator<Item = Slot>) {
        if rest.len() >= CROWD {
            self.wake_all();
        } else {
            rest.for_each(|s| self.wake_slot(s));
        }
    }

    fn wake(&self, bits: u32) {
        // Moved first, so that a sleeper about to sleep on an older ticket
        // returns at once instead of missing this wake-up.
        self.word.fetch_add(1, Ordering::Release);
        // SAFETY: as in `sleep`: a live, aligned word; FUTEX_WAKE_BITSET
        // does not touch memory, wakes at most i32::MAX sleepers whose
        // bitset shares a bit with `bits`, and its result (how many) is
        // not needed.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.word.as_ptr(),
                libc::FUTEX_WAKE_BITSET | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                bits,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Barrier};
    use std::thread;

    /// Sleeps until `flag` is set, by the protocol above.
    fn sleep_until(s: &Sleepers, flag: &AtomicBool) {
        loop {
            let t = s.ticket();
            if flag.load(Ordering::Acquire) {
                return;
            }
            s.sleep(t);
        }
    }

    #[test]
    fn the_spin_credit_turns_with_the_outcomes_and_stays_bounded() {
        let mut c = 0;
        for _ in 0..8 {
            c = next_credit(c, false);
        }
        assert!(c < 0, "spins that did not pay off stop spinning");
        for _ in 0..16 {
            c = next_credit(c, true);
        }
        assert!(c > 0, "spins that pay off start it again");
        for _ in 0..1_000_000 {
            c = next_credit(c, true);
        }
        // The moving sum settles at 1024 steps, far from overflowing.
        assert!(c <= 1024 * CREDIT_STEP, "{c}");
        for _ in 0..1_000_000 {
            c = next_credit(c, false);
        }
        assert!(c >= -1024 * CREDIT_STEP, "{c}");
    }

    #[test]
    fn yield_until_returns_what_the_wait_came_to() {
        assert!(yield_until(|| true));
        // Never over: it gives up after SPIN_YIELDS yields (or fewer) and
        // leaves the sleep to the caller.
        assert!(!yield_until(|| false));
    }

    #[test]
    fn yield_for_returns_what_the_wait_came_to() {
        assert!(yield_for(Duration::ZERO, || true));
        // Never over: it gives up at its bound (or at a slow yield).
        assert!(!yield_for(Duration::from_micros(50), || false));
        // Over after a few checks: seen by a later one within the bound
        // (unless a yield was slow, which ends the wait as not over).
        let checks = Cell::new(0);
        let over = yield_for(Duration::from_secs(10), || {
            checks.set(checks.get() + 1);
            checks.get() > 3
        });
        assert!(over || checks.get() <= 3, "{over} after {} checks", checks.get());
    }

    #[test]
    fn a_spin_stops_at_its_limit_and_counts_every_yield() {
        let yields = Cell::new(0);
        let end = spin(
            |n, _| {
                yields.set(n);
                n < 5
            },
            || false,
        );
        // A slow yield may end it first on a busy machine.
        assert!(end == Spin::Spent && yields.get() == 5 || end == Spin::Slow, "{end:?} after {}", yields.get());
    }

    #[test]
    fn a_wake_after_the_ticket_is_not_missed() {
        let s = Sleepers::default();
        let t = s.ticket();
        s.wake_all();
        // Would sleep forever if the word had not moved.
        s.sleep(t);
    }

    #[test]
    fn wake_slot_wakes_the_thread_of_that_slot() {
        let s = Arc::new(Sleepers::default());
        let flag = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = {
            let (s, flag) = (s.clone(), flag.clone());
            thread::spawn(move || {
                tx.send(Slot::current()).unwrap();
                sleep_until(&s, &flag);
            })
        };
        let slot = rx.recv().unwrap();
        flag.store(true, Ordering::Release);
        s.wake_slot(slot);
        sleeper.join().unwrap();
    }

    #[test]
    fn wake_all_wakes_every_sleeper() {
        let s = Arc::new(Sleepers::default());
        let flag = Arc::new(AtomicBool::new(false));
        let started = Arc::new(Barrier::new(5));
        let sleepers: Vec<_> = (0..4)
            .map(|_| {
                let (s, flag, started) = (s.clone(), flag.clone(), started.clone());
                thread::spawn(move || {
                    started.wait();
                    sleep_until(&s, &flag);
                })
            })
            .collect();
        started.wait();
        flag.store(true, Ordering::Release);
        s.wake_all();
        for h in sleepers {
            h.join().unwrap();
        }
    }

    /// A small group (slot by slot) and a crowd (everyone at once) both
    /// wake every member; a member left asleep would hang the join.
    #[test]
    fn wake_group_wakes_every_member_of_a_small_group_and_of_a_crowd() {
        for members in [3, CROWD] {
            let s = Arc::new(Sleepers::default());
            let flag = Arc::new(AtomicBool::new(false));
            let (tx, rx) = std::sync::mpsc::channel();
            let sleepers: Vec<_> = (0..members)
                .map(|_| {
                    let (s, flag, tx) = (s.clone(), flag.clone(), tx.clone());
                    thread::spawn(move || {
                        tx.send(Slot::current()).unwrap();
                        sleep_until(&s, &flag);
                    })
                })
                .collect();
            let slots: Vec<Slot> = rx.iter().take(members).collect();
            flag.store(true, Ordering::Release);
            s.wake_group(slots.into_iter());
            for h in sleepers {
                h.join().unwrap();
            }
        }
    }

    #[test]
    fn a_thread_keeps_its_slot_and_never_takes_everyones_bit() {
        let (a, b) = thread::spawn(|| (Slot::current(), Slot::current())).join().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.bit() & EVERYONE, 0);
        assert_eq!(a.bit().count_ones(), 1);
    }
}
