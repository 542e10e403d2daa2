//! The reactor: one thread per `Net` that owns the waiting side of every
//! adopted socket — writability after a short send (R6), io_uring
//! completions, lingering closes (R10), cap deadlines (R7) — and is the
//! only thread that runs the event callback. Host threads hand work over
//! through `Shared::cmd` (a queue plus an eventfd write when the queue
//! was empty).

use crate::error::{Error, Result};
use crate::net::conn::{send_error, Conn, ConnState, Phase, Writer};
use crate::net::publisher::Publisher;
use crate::net::queue::PassEnd;
use crate::net::sendmsg::{check_socket, discard_arrived, discard_input, epoll_del, epoll_set, SocketId, SyncSink};
use crate::net::uring::{self, Fallback, UringSink, OP_POLLIN, OP_POLLOUT, OP_SEND, UD_CANCEL, UD_WAKE};
use crate::net::{Backend, BackendChoice, EventFn, NetOptions, WriterOptions};
use crate::status::*;
use io_uring::{types, IoUring};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Work handed from host threads to the reactor.
pub(crate) enum Cmd {
    /// Run a drain pass (io_uring backend, or after the caller's passes).
    Drain(Arc<Conn>),
    /// The connection died on a host thread: shut it down and report.
    Report(Arc<Conn>),
    /// The host closed the connection (R10).
    Close(Arc<Conn>),
    Stop,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<u64, Arc<Conn>>,
    /// fd -> (connection id, its socket).
    fds: HashMap<RawFd, (u64, SocketId)>,
    /// The sockets of `fds` -> their fd: a dup of an adopted fd is another
    /// number for the same socket, and a second connection on it would
    /// interleave its bytes with the first's.
    sockets: HashMap<SocketId, RawFd>,
}

/// Every fd some net of this process owns, with its socket: keel closes
/// an adopted fd, so a second net adopting it would close it twice (the
/// second time maybe someone else's file that got the number); and a
/// second net given a dup of it would interleave its bytes with the
/// first's on the one socket. An fd leaves just before keel closes it, so
/// the number and the socket can be adopted again afterwards. Taken
/// inside a net's registry lock, never the other way round.
static ADOPTED: parking_lot::Mutex<Option<Adopted>> = parking_lot::const_mutex(None);

#[derive(Default)]
struct Adopted {
    fds: HashMap<RawFd, SocketId>,
    sockets: HashMap<SocketId, RawFd>,
}

/// What host threads and the reactor share.
pub(crate) struct Shared {
    pub backend: Backend,
    /// Why io_uring was asked for and not used.
    pub fallback: Option<(Fallback, String)>,
    wake_fd: RawFd,
    /// The epoll instance (sendmsg backend), -1 with io_uring.
    pub epfd: RawFd,
    inbox: Mutex<Vec<Cmd>>,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    broken: AtomicBool,
    /// Connections currently above their soft cap (the reactor checks
    /// their deadlines only while this is non-zero).
    pub over_soft: AtomicUsize,
    min_soft_ms: AtomicU64,
    on_event: Option<EventFn>,
    /// Test-only (`Net::set_close_wait_hook`).
    close_wait: OnceLock<CloseWaitHook>,
}

/// Test-only: where a close on a host thread is about to wait for the
/// reactor thread (`Net::set_close_wait_hook`).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseWait {
    /// A writer's close (or a subscriber's, by unsubscribe or publisher
    /// close) waits for the event callback of connection `id`, which runs.
    Callback(u64),
    /// A net's close is about to join the reactor thread.
    Reactor,
}

/// Test-only: receives every `CloseWait` of a net on the closing thread.
#[doc(hidden)]
pub type CloseWaitHook = Arc<dyn Fn(CloseWait) + Send + Sync>;

const WAKE_ID: u64 = u64::MAX;

thread_local! {
    /// Set on every net's reactor thread (`Shared::on_any_reactor_thread`).
    static ON_A_REACTOR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Shared {
    /// Hands `c` to the reactor; wakes it when the queue was empty.
    pub(crate) fn cmd(&self, c: Cmd) {
        let mut inbox = self.inbox.lock();
        let was_empty = inbox.is_empty();
        inbox.push(c);
        drop(inbox);
        if was_empty {
            self.wake();
        }
    }

    /// Wakes the reactor thread (an eventfd write).
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: `wake_fd` is this Shared's eventfd, closed only in its Drop,
        // so open while `self` is borrowed; the 8 bytes written are `one`, a
        // live u64 (an eventfd takes exactly 8). A full counter (EAGAIN)
        // still leaves the reactor woken, so the result is not needed.
        unsafe { libc::write(self.wake_fd, &one as *const u64 as *const libc::c_void, 8) };
    }

    /// This thread is the reactor of some net, maybe another one: it must
    /// not wait for a reactor (two nets whose callbacks close each other's
    /// writers would each wait for the other for good).
    pub(crate) fn on_any_reactor_thread() -> bool {
        ON_A_REACTOR.get()
    }

    /// Passes `at` to the test hook, if one is installed.
    pub(crate) fn close_waits(&self, at: CloseWait) {
        if let Some(hook) = self.close_wait.get() {
            hook(at);
        }
    }

    pub(crate) fn check_running(&self) -> Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(Error::new(KEEL_STATUS_POISONED, "the reactor thread panicked; close the net handle"));
        }
        if self.stopping.load(Ordering::Acquire) {
            return Err(Error::new(KEEL_STATUS_CLOSED, "the net handle is closed"));
        }
        Ok(())
    }

    /// Takes ownership of connected stream socket `fd` (R11: TCP_NODELAY).
    /// On error the fd is left as it was and stays the caller's.
    pub(crate) fn adopt(&self, fd: RawFd, opts: &WriterOptions) -> Result<Arc<Conn>> {
        self.check_running()?;
        opts.validate()?;
        let socket = check_socket(fd)?;
        let mut reg = self.registry.lock();
        self.check_running()?;
        if reg.fds.contains_key(&fd) {
            return Err(Error::invalid(format!("fd {fd} is already adopted by this net handle")));
        }
        if let Some(other) = reg.sockets.get(&socket) {
            return Err(Error::invalid(format!(
                "fd {fd} is the socket of fd {other} (a dup of it), already adopted by this net handle"
            )));
        }
        {
            let mut adopted = ADOPTED.lock();
            let adopted = adopted.get_or_insert_with(Adopted::default);
            if adopted.fds.contains_key(&fd) {
                return Err(Error::invalid(format!(
                    "fd {fd} is already adopted by another keel net handle (which will close it)"
                )));
            }
            if let Some(other) = adopted.sockets.get(&socket) {
                return Err(Error::invalid(format!(
                    "fd {fd} is the socket of fd {other} (a dup of it), already adopted by another keel net handle"
                )));
            }
            adopted.fds.insert(fd, socket);
            adopted.sockets.insert(socket, fd);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.backend == Backend::Sendmsg {
            if let Err(e) = epoll_set(self.epfd, libc::EPOLL_CTL_ADD, fd, 0, id) {
                forget_adopted(fd);
                // ENOSPC here is the user's epoll watch limit, not a full disk.
                return Err(match e.raw_os_error() {
                    Some(libc::ENOSPC) => Error::new(
                        KEEL_STATUS_RESOURCE,
                        format!("epoll_ctl(ADD) for fd {fd}: {e} (the limit fs.epoll.max_user_watches)"),
                    ),
                    _ => Error::io(format!("epoll_ctl(ADD) for fd {fd}"), e),
                });
            }
        }
        let conn = Arc::new(Conn::new(id, fd, opts.clone()));
        reg.fds.insert(fd, (id, socket));
        reg.sockets.insert(socket, fd);
        reg.by_id.insert(id, conn.clone());
        if opts.soft_cap_bytes > 0 {
            self.min_soft_ms.fetch_min(opts.soft_cap.as_millis() as u64, Ordering::Relaxed);
        }
        Ok(conn)
    }

    fn lookup(&self, id: u64) -> Option<Arc<Conn>> {
        self.registry.lock().by_id.get(&id).cloned()
    }

    fn conns(&self) -> Vec<Arc<Conn>> {
        self.registry.lock().by_id.values().cloned().collect()
    }

    fn unregister(&self, conn: &Conn) {
        let mut reg = self.registry.lock();
        reg.by_id.remove(&conn.id);
        if let Some(&(_, socket)) = reg.fds.get(&conn.fd).filter(|(id, _)| *id == conn.id) {
            reg.fds.remove(&conn.fd);
            reg.sockets.remove(&socket);
            forget_adopted(conn.fd);
        }
    }

    fn is_empty(&self) -> bool {
        self.registry.lock().by_id.is_empty()
    }
}

/// Takes `fd` out of the process-wide set (before keel closes it, or when
/// an adoption fails and the fd stays the caller's).
fn forget_adopted(fd: RawFd) {
    if let Some(adopted) = ADOPTED.lock().as_mut() {
        if let Some(socket) = adopted.fds.remove(&fd) {
            adopted.sockets.remove(&socket);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: Net::open created both fds for this Shared alone; nothing
        // else closes them, and the last reference is going away, so neither
        // is used again.
        unsafe { libc::close(self.wake_fd) };
        if self.epfd >= 0 {
            // SAFETY: as for wake_fd: owned by this Shared, closed only here.
            unsafe { libc::close(self.epfd) };
        }
    }
}

/// A reactor thread with its backend: the home of adopted sockets.
pub struct Net {
    shared: Arc<Shared>,
    /// Taken by the first `stop`.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Net {
    /// Starts the reactor thread. `IoUring` falls back to sendmsg when the
    /// runtime probe fails (see `fallback`).
    pub fn open(opts: NetOptions) -> Result<Net> {
        // SAFETY: eventfd takes no pointers; the new fd is owned below.
        let wake_fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake_fd < 0 {
            return Err(Error::io("eventfd", io::Error::last_os_error()));
        }
        let mut fallback = None;
        let ring = match opts.backend.unwrap_or(BackendChoice::Default) {
            BackendChoice::Default | BackendChoice::Sendmsg => None,
            BackendChoice::IoUring => match uring::probe() {
                Ok(r) => Some(r),
                Err(why) => {
                    fallback = Some(why);
                    None
                }
            },
        };
        let mut epfd = -1;
        if ring.is_none() {
            // SAFETY: epoll_create1 takes no pointers; the new fd is owned below.
            epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if epfd < 0 {
                let e = io::Error::last_os_error();
                // SAFETY: wake_fd was created above and is shared with no one.
                unsafe { libc::close(wake_fd) };
                return Err(Error::io("epoll_create1", e));
            }
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: WAKE_ID };
            // SAFETY: `ev` is a valid epoll_event on the stack, read by the call.
            if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, wake_fd, &mut ev) } < 0 {
                let e = io::Error::last_os_error();
                // SAFETY: both fds were created above and are shared with no
                // one; each is closed once, here, and not used afterwards.
                unsafe { libc::close(wake_fd) };
                // SAFETY: as above.
                unsafe { libc::close(epfd) };
                return Err(Error::io("epoll_ctl(eventfd)", e));
            }
        }
        let shared = Arc::new(Shared {
            backend: if ring.is_some() { Backend::IoUring } else { Backend::Sendmsg },
            fallback,
            wake_fd,
            epfd,
            inbox: Mutex::new(Vec::new()),
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            over_soft: AtomicUsize::new(0),
            min_soft_ms: AtomicU64::new(u64::MAX),
            on_event: opts.on_event,
            close_wait: OnceLock::new(),
        });
        let io = match ring {
            Some(ring) => Io::Uring(Box::new(UringState { ring, slots: Vec::new(), free: Vec::new(), wake_armed: false })),
            None => Io::Epoll,
        };
        let mut reactor = Reactor {
            sh: shared.clone(),
            io,
            ready: VecDeque::new(),
            closing: Vec::new(),
            stopping: false,
            next_soft_sweep: Instant::now(),
        };
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("keel-net".into())
            .spawn(move || {
                ON_A_REACTOR.set(true);
                if catch_unwind(AssertUnwindSafe(|| reactor.run())).is_err() {
                    sh.broken.store(true, Ordering::Release);
                    sh.stopping.store(true, Ordering::Release);
                    // Buffers an in-flight io_uring op may still read are
                    // leaked rather than freed under the kernel.
                    std::mem::forget(reactor);
                }
            })
            .map_err(|e| Error::io("spawn the keel-net reactor thread", e))?;
        Ok(Net { shared, thread: Mutex::new(Some(thread)) })
    }

    pub fn backend(&self) -> Backend {
        self.shared.backend
    }

    /// Why io_uring was asked for and the sendmsg backend runs instead:
    /// the probe step that failed and a message naming the error.
    pub fn fallback(&self) -> Option<(Fallback, &str)> {
        self.shared.fallback.as_ref().map(|(f, why)| (*f, why.as_str()))
    }

    /// Adopts connected stream socket `fd` as a writer. keel owns the fd
    /// from then on (it closes it); on error it stays the caller's. A
    /// socket this net has already, through `fd` or another fd (a dup),
    /// is refused.
    pub fn adopt(&self, fd: RawFd, opts: &WriterOptions) -> Result<Writer> {
        let conn = self.shared.adopt(fd, opts)?;
        Ok(Writer { conn, net: self.shared.clone(), closing: AtomicBool::new(false) })
    }

    /// A publisher whose subscribers use `opts`.
    pub fn publisher(&self, opts: &WriterOptions) -> Result<Publisher> {
        self.shared.check_running()?;
        opts.validate()?;
        Ok(Publisher::new(self.shared.clone(), opts.clone()))
    }

    /// This thread is a reactor, this net's or another's: a close here
    /// must not wait for a reactor thread to end (two callbacks closing
    /// each other's nets would each wait for the other for good).
    pub(crate) fn on_a_reactor_thread(&self) -> bool {
        Shared::on_any_reactor_thread()
    }

    /// Test-only: `hook` is called on the closing thread each time a close
    /// is about to wait for this net's reactor thread (a running event
    /// callback, or the thread's end), so that a test can make that
    /// callback call in exactly then. A writer's close calls it with the
    /// connection's lock held: the hook must not call into that writer,
    /// but may wake a thread that does. Only the first hook set is kept.
    #[doc(hidden)]
    pub fn set_close_wait_hook(&self, hook: CloseWaitHook) {
        let _ = self.shared.close_wait.set(hook);
    }

    /// Closes every connection (flushing each within its close timeout)
    /// and stops the reactor thread; no callback runs after this returns.
    pub fn close(self) -> Result<()> {
        self.stop()
    }

    /// `close` through a shared reference, for keel_net_close, which frees
    /// the handle only once this returned: an event callback running
    /// until the reactor thread ends may call in on the handle meanwhile
    /// (adopts then answer CLOSED). Later calls do nothing.
    pub(crate) fn stop(&self) -> Result<()> {
        let Some(thread) = self.thread.lock().take() else { return Ok(()) };
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.cmd(Cmd::Stop);
        if self.on_a_reactor_thread() {
            return Err(Error::new(KEEL_STATUS_BUSY, "a net cannot be closed from an event callback (of any net)"));
        }
        self.shared.close_waits(CloseWait::Reactor);
        let _ = thread.join();
        if self.shared.broken.load(Ordering::Acquire) {
            return Err(Error::new(KEEL_STATUS_POISONED, "the reactor thread panicked"));
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

struct Slot {
    gen: u32,
    conn: Option<Arc<Conn>>,
}

struct UringState {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    wake_armed: bool,
}

impl UringState {
    fn ensure_slot(&mut self, conn: &Arc<Conn>, st: &mut ConnState) {
        if st.io.slot.is_some() {
            return;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[i as usize];
        s.gen = (s.gen + 1) & 0x00ff_ffff;
        s.conn = Some(conn.clone());
        st.io.slot = Some((i, s.gen));
    }

    fn free_slot(&mut self, i: u32) {
        self.slots[i as usize].conn = None;
        self.free.push(i);
    }
}

enum Io {
    Epoll,
    Uring(Box<UringState>),
}

/// What to do after the connection's lock is released.
enum Next {
    Nothing,
    Report,
    Finalize,
}

struct Reactor {
    sh: Arc<Shared>,
    io: Io,
    /// Connections that ended a pass on the quota: one more pass each per
    /// loop turn, round robin (R4: yield).
    ready: VecDeque<Arc<Conn>>,
    /// Connections the host closed, until their fd is closed.
    closing: Vec<Arc<Conn>>,
    stopping: bool,
    next_soft_sweep: Instant,
}

impl Reactor {
    fn run(&mut self) {
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let timeout = self.timeout();
            match self.io {
                Io::Epoll => self.wait_epoll(timeout),
                Io::Uring(_) => self.wait_uring(timeout),
            }
            self.take_commands();
            self.run_ready();
            self.sweep();
            if self.stopping {
                if self.sh.is_empty() {
                    break;
                }
                let d = *stop_deadline.get_or_insert_with(|| {
                    let longest = self.sh.conns().iter().map(|c| c.opts.close_timeout).max().unwrap_or_default();
                    Instant::now() + longest + Duration::from_secs(1)
                });
                if Instant::now() >= d {
                    // Something never completed: close what can be closed
                    // and leak what the kernel may still reference.
                    for c in self.sh.conns() {
                        self.finalize(&c);
                    }
                    if !self.sh.is_empty() {
                        if let Io::Uring(u) = &mut self.io {
                            for s in u.slots.drain(..) {
                                std::mem::forget(s.conn);
                            }
                        }
                    }
                    break;
                }
            }
        }
        if let Io::Uring(u) = &mut self.io {
            // Drain the ring so no completion is left behind.
            let _ = u.ring.submit();
            u.ring.completion().for_each(drop);
        }
    }

    fn timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut t: Option<Duration> = None;
        let mut take = |d: Duration| t = Some(t.map_or(d, |x| x.min(d)));
        for c in &self.closing {
            let st = c.st.lock();
            if let (Some(d), false) = (st.deadline, st.finalize_pending) {
                take(d.saturating_duration_since(now));
            }
        }
        if self.sh.over_soft.load(Ordering::Acquire) > 0 {
            take(self.next_soft_sweep.saturating_duration_since(now));
        }
        if self.stopping {
            take(Duration::from_millis(50));
        }
        t
    }

    fn soft_interval(&self) -> Duration {
        let ms = self.sh.min_soft_ms.load(Ordering::Relaxed);
        Duration::from_millis((ms / 4).clamp(5, 1000))
    }

    fn wait_epoll(&mut self, timeout: Option<Duration>) {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let ms = timeout.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32 + i32::from(d.subsec_nanos() % 1_000_000 != 0));
        // SAFETY: `evs` is a local array of evs.len() epoll_events, the most
        // the kernel writes; epfd is open as long as `self.sh` is.
        let n = unsafe { libc::epoll_wait(self.sh.epfd, evs.as_mut_ptr(), evs.len() as i32, ms) };
        if n <= 0 {
            return; // timeout or EINTR
        }
        for ev in &evs[..n as usize] {
            let id = ev.u64;
            if id == WAKE_ID {
                self.read_wake();
            } else {
                self.on_epoll_event(id);
            }
        }
    }

    fn read_wake(&self) {
        let mut v: u64 = 0;
        // SAFETY: `v` is a writable u64 and an eventfd read is exactly 8
        // bytes; wake_fd is open as long as `self.sh` is. EAGAIN (nothing to
        // read) leaves `v` alone and is fine.
        unsafe { libc::read(self.sh.wake_fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
    }

    fn wait_uring(&mut self, timeout: Option<Duration>) {
        let Io::Uring(u) = &mut self.io else { return };
        if !u.wake_armed {
            let sqe = io_uring::opcode::PollAdd::new(types::Fd(self.sh.wake_fd), libc::POLLIN as u32).build().user_data(UD_WAKE);
            uring::push(&mut u.ring, &sqe);
            u.wake_armed = true;
        }
        let _ = match timeout {
            Some(d) if d.is_zero() => u.ring.submit(),
            Some(d) => {
                let ts = types::Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
                u.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
            }
            None => u.ring.submit_and_wait(1),
        };
        let cqes: Vec<(u64, i32)> = u.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (ud, res) in cqes {
            self.on_cqe(ud, res);
        }
    }

    fn take_commands(&mut self) {
        let cmds = std::mem::take(&mut *self.sh.inbox.lock());
        for c in cmds {
            match c {
                Cmd::Drain(conn) => self.drive(&conn),
                Cmd::Report(conn) => self.report(&conn),
                Cmd::Close(conn) => self.on_close(&conn),
                Cmd::Stop => self.on_stop(),
            }
        }
    }

    fn run_ready(&mut self) {
        for _ in 0..self.ready.len() {
            if let Some(c) = self.ready.pop_front() {
                self.drive(&c);
            }
        }
    }

    /// Runs one pass on `conn` if nothing else is driving it.
    fn drive(&mut self, conn: &Arc<Conn>) {
        let mut st = conn.st.lock();
        st.scheduled = false;
        if !matches!(st.phase, Phase::Open | Phase::Closing) || st.waiting_writable || st.in_flight || st.lingering {
            return;
        }
        if st.wire.is_idle() {
            return;
        }
        let next = self.pass(conn, &mut st);
        drop(st);
        self.follow(conn, next);
    }

    /// One pass with this backend's sink, then the bookkeeping of its end.
    fn pass(&mut self, conn: &Arc<Conn>, st: &mut ConnState) -> Next {
        let end = match &mut self.io {
            Io::Epoll => st.wire.pass(&conn.cfg, &mut SyncSink { fd: conn.fd }),
            Io::Uring(u) => {
                u.ensure_slot(conn, st);
                let ConnState { wire, io, .. } = st;
                wire.pass(&conn.cfg, &mut UringSink { ring: &mut u.ring, io, fd: conn.fd })
            }
        };
        self.after_pass(conn, st, end)
    }

    fn after_pass(&mut self, conn: &Arc<Conn>, st: &mut ConnState, end: PassEnd) -> Next {
        match end {
            PassEnd::Drained => Next::Nothing,
            PassEnd::Quota => {
                st.scheduled = true;
                self.ready.push_back(conn.clone());
                Next::Nothing
            }
            PassEnd::InFlight => {
                st.in_flight = true;
                Next::Nothing
            }
            PassEnd::Blocked => {
                st.wire.stats.writable_waits += 1;
                self.arm(conn, st, libc::EPOLLOUT as u32, OP_POLLOUT)
            }
            PassEnd::Failed(errno) => {
                conn.kill(st, send_error(conn.id, errno), &self.sh);
                if st.host_closed {
                    Next::Finalize
                } else {
                    Next::Report
                }
            }
            PassEnd::CloseReached => {
                // R10: everything is flushed; half-close and drain input.
                debug_assert!(!st.fd_closed, "a pass ran on connection {} after its fd was closed", conn.id);
                // SAFETY: no pointers. conn.fd is still this connection's:
                // only finalize() closes it, setting phase Closed, and a pass
                // runs only in phase Open or Closing, under the same lock.
                unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
                if self.stopping {
                    // keel_net_close waits for queued bytes only, never
                    // for an idle peer's EOF: what arrived is read, then
                    // the fd is closed (no longer than the close timeout).
                    discard_arrived(conn.fd, st.deadline);
                    return Next::Finalize;
                }
                st.lingering = true;
                self.arm(conn, st, (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, OP_POLLIN)
            }
        }
    }

    /// Waits for writability (or input, while lingering).
    fn arm(&mut self, conn: &Arc<Conn>, st: &mut ConnState, events: u32, kind: u64) -> Next {
        match &mut self.io {
            Io::Epoll => {
                if let Err(e) = epoll_set(self.sh.epfd, libc::EPOLL_CTL_MOD, conn.fd, events, conn.id) {
                    conn.kill(st, Error::io(format!("epoll_ctl for connection {}", conn.id), e), &self.sh);
                    return if st.host_closed { Next::Finalize } else { Next::Report };
                }
                if kind == OP_POLLOUT {
                    st.waiting_writable = true;
                }
            }
            Io::Uring(u) => {
                u.ensure_slot(conn, st);
                let poll_events = if kind == OP_POLLOUT { libc::POLLOUT } else { libc::POLLIN | libc::POLLRDHUP };
                uring::poll(&mut u.ring, &mut st.io, conn.fd, poll_events as u32, kind);
                st.in_flight = true;
            }
        }
        Next::Nothing
    }

    fn follow(&mut self, conn: &Arc<Conn>, next: Next) {
        match next {
            Next::Nothing => {}
            Next::Report => self.report(conn),
            Next::Finalize => self.finalize(conn),
        }
    }

    fn on_epoll_event(&mut self, id: u64) {
        let Some(conn) = self.sh.lookup(id) else { return };
        let mut st = conn.st.lock();
        if st.lingering {
            let next = if discard_input(conn.fd) {
                Next::Finalize
            } else {
                self.arm(&conn, &mut st, (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, OP_POLLIN)
            };
            drop(st);
            return self.follow(&conn, next);
        }
        // Not waiting to write: an error or hangup of a socket that waits
        // for nothing (epoll reports those even with no events armed; the
        // one-shot registration then stays disarmed). Left to the next
        // send, as R9 says and as the io_uring backend, which watches no
        // idle socket, does.
        if !st.waiting_writable {
            return;
        }
        st.waiting_writable = false;
        if !matches!(st.phase, Phase::Open | Phase::Closing) {
            return;
        }
        // R6: writable again — the suffix and everything queued behind it
        // go in one call.
        let next = self.pass(&conn, &mut st);
        drop(st);
        self.follow(&conn, next)
    }

    fn on_cqe(&mut self, ud: u64, res: i32) {
        let Io::Uring(u) = &mut self.io else { return };
        if ud == UD_WAKE {
            u.wake_armed = false;
            self.read_wake();
            return;
        }
        if ud == UD_CANCEL {
            return;
        }
        let (slot, gen, kind) = uring::split_user_data(ud);
        let conn = match u.slots.get(slot as usize) {
            Some(s) if s.gen == gen => match &s.conn {
                Some(c) => c.clone(),
                None => return,
            },
            _ => return, // stale completion of a recycled slot
        };
        let mut st = conn.st.lock();
        if st.io.op != Some(ud) {
            return;
        }
        st.in_flight = false;
        st.io.op = None;
        if st.finalize_pending || matches!(st.phase, Phase::Dead | Phase::Closed) {
            // R10: the kernel is done with the buffers; only now free them.
            st.wire.out.clear();
            let fin = st.finalize_pending;
            drop(st);
            if fin {
                self.finalize(&conn);
            }
            return;
        }
        let next = match kind {
            OP_SEND if res >= 0 => {
                st.wire.completed(res as usize);
                if st.wire.is_idle() {
                    Next::Nothing
                } else {
                    self.pass(&conn, &mut st)
                }
            }
            OP_SEND if res == -libc::EAGAIN || res == -libc::EINTR => {
                st.wire.stats.eagain += 1;
                st.wire.stats.writable_waits += 1;
                self.arm(&conn, &mut st, 0, OP_POLLOUT)
            }
            OP_SEND => {
                conn.kill(&mut st, send_error(conn.id, -res), &self.sh);
                if st.host_closed {
                    Next::Finalize
                } else {
                    Next::Report
                }
            }
            OP_POLLOUT => self.pass(&conn, &mut st),
            OP_POLLIN => {
                if discard_input(conn.fd) {
                    Next::Finalize
                } else {
                    self.arm(&conn, &mut st, 0, OP_POLLIN)
                }
            }
            _ => Next::Nothing,
        };
        drop(st);
        self.follow(&conn, next);
    }

    /// R9/R7: shut a dead connection down and report it, exactly once.
    fn report(&mut self, conn: &Arc<Conn>) {
        let mut st = conn.st.lock();
        if st.phase != Phase::Dead || st.reported {
            return;
        }
        st.reported = true;
        st.waiting_writable = false;
        if !st.fd_closed {
            // SAFETY: no pointers; the fd is still this connection's (not
            // closed yet, checked under the connection's lock).
            unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
            if let Io::Epoll = self.io {
                epoll_del(self.sh.epfd, conn.fd);
            }
        }
        if st.in_flight {
            if let Io::Uring(u) = &mut self.io {
                uring::cancel(&mut u.ring, &mut st.io);
            }
        }
        if st.host_closed {
            return;
        }
        let Some(e) = st.death.clone() else { return };
        let Some(cb) = self.sh.on_event.clone() else { return };
        st.in_callback = true;
        drop(st);
        let _ = catch_unwind(AssertUnwindSafe(|| cb(conn.id, e.status, &e.message)));
        let mut st = conn.st.lock();
        st.in_callback = false;
        conn.cv.notify_all();
        let release = st.release.take();
        drop(st);
        if let Some(release) = release {
            release();
        }
    }

    fn on_close(&mut self, conn: &Arc<Conn>) {
        let phase = conn.st.lock().phase;
        match phase {
            Phase::Closing => {
                if !self.closing.iter().any(|c| Arc::ptr_eq(c, conn)) {
                    self.closing.push(conn.clone());
                }
                self.drive(conn);
            }
            Phase::Open | Phase::Dead => self.finalize(conn),
            Phase::Closed => {}
        }
    }

    fn on_stop(&mut self) {
        self.stopping = true;
        let now = Instant::now();
        for conn in self.sh.conns() {
            let mut st = conn.st.lock();
            st.host_closed = true; // no reports while the net closes
            if st.phase == Phase::Open {
                st.phase = Phase::Closing;
                st.deadline = Some(now + conn.opts.close_timeout);
                st.wire.queue.push_control(crate::net::queue::Control::Close);
                st.wire.stats.control_items += 1;
            }
            // Closed earlier by the host and flushed, now waiting for the
            // peer's EOF: the net closing does not wait for it.
            let flushed = st.lingering;
            let deadline = st.deadline;
            drop(st);
            if flushed {
                discard_arrived(conn.fd, deadline);
                self.finalize(&conn);
                continue;
            }
            self.on_close(&conn);
        }
    }

    /// Closes the fd and releases everything, once no io_uring operation
    /// of the connection is in flight (else cancels it and comes back).
    fn finalize(&mut self, conn: &Arc<Conn>) {
        let mut st = conn.st.lock();
        if st.phase == Phase::Closed {
            return;
        }
        if st.in_flight {
            st.finalize_pending = true;
            if let Io::Uring(u) = &mut self.io {
                uring::cancel(&mut u.ring, &mut st.io);
            }
            return;
        }
        // Unregister before close(2) so the fd number can be adopted again.
        self.sh.unregister(conn);
        if !st.fd_closed {
            if let Io::Epoll = self.io {
                epoll_del(self.sh.epfd, conn.fd);
            }
            // SAFETY: keel owns an adopted fd and closes it exactly once:
            // here, under the connection's lock, marked by fd_closed; no
            // operation on it is in flight (checked above), and it left the
            // registry first, so nothing looks it up afterwards.
            unsafe { libc::close(conn.fd) };
            st.fd_closed = true;
        }
        st.phase = Phase::Closed;
        st.wire.clear();
        st.lingering = false;
        st.waiting_writable = false;
        st.finalize_pending = false;
        if st.over_soft_since.take().is_some() {
            self.sh.over_soft.fetch_sub(1, Ordering::AcqRel);
        }
        let slot = st.io.slot.take();
        drop(st);
        if let (Io::Uring(u), Some((i, _))) = (&mut self.io, slot) {
            u.free_slot(i);
        }
        self.closing.retain(|c| !Arc::ptr_eq(c, conn));
    }

    /// Close deadlines (R10) and soft-cap deadlines (R7).
    fn sweep(&mut self) {
        let now = Instant::now();
        let due: Vec<Arc<Conn>> = self
            .closing
            .iter()
            .filter(|c| {
                let st = c.st.lock();
                !st.finalize_pending && st.deadline.is_some_and(|d| now >= d)
            })
            .cloned()
            .collect();
        for c in due {
            self.finalize(&c);
        }
        if self.sh.over_soft.load(Ordering::Acquire) > 0 && now >= self.next_soft_sweep {
            self.next_soft_sweep = now + self.soft_interval();
            for c in self.sh.conns() {
                let mut st = c.st.lock();
                if st.phase != Phase::Open {
                    continue;
                }
                if let Some(e) = c.update_soft(&mut st, 0, now, &self.sh) {
                    c.kill(&mut st, e, &self.sh);
                    drop(st);
                    self.report(&c);
                }
            }
        }
    }
}
