//! A TCP relay the test controls, put between two nodes: the dialing node
//! connects to the relay, which dials the target and copies bytes both
//! ways, one thread per direction. Faults apply to the dialer→target
//! direction, counted in bytes forwarded since the relay started:
//!
//! - `cut_after(n)`: once n more bytes went through, the connection that
//!   carries the next byte is reset (RST to both ends, nothing after the
//!   n-th byte is forwarded);
//! - `refuse(true)`: every new connection is reset as soon as it is
//!   accepted (a peer that stays unreachable);
//! - `stall_after(n)`: once n more bytes went through, forwarding stops
//!   until `release()` (a transfer held in the middle).
//!
//! Tests draw the byte counts from their seed; which bytes a count lands
//! on depends only on what the nodes send.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Faults {
    /// Positions (in bytes forwarded dialer→target) of the coming cuts.
    cuts: VecDeque<u64>,
    refuse: bool,
    stall_at: Option<u64>,
    /// A forwarding thread waits at the stall.
    stalled: bool,
    forwarded: u64,
    resets: u64,
    connections: u64,
}

/// One relayed connection.
struct Pair {
    dialer: TcpStream,
    target: TcpStream,
    /// Reset by a cut: neither direction forwards its end of stream.
    reset: AtomicBool,
    /// A direction finished: a stalled thread gives up.
    done: AtomicBool,
}

struct Shared {
    target: Mutex<SocketAddr>,
    faults: Mutex<Faults>,
    cv: Condvar,
    closing: AtomicBool,
    /// Live connections, to shut down with the relay. Weak: the sockets
    /// close (with the RST of a reset) as soon as both threads let go.
    pairs: Mutex<Vec<Weak<Pair>>>,
}

pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// Makes the socket's close send a RST instead of a FIN.
fn linger_zero(s: &TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the fd is open (s owns it) and `l` is a valid linger struct
    // of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

impl Pair {
    /// Resets both ends: the sockets close with a RST once both threads
    /// dropped them; reading is shut down now to wake the other thread.
    fn reset(&self) {
        self.reset.store(true, Ordering::Release);
        for s in [&self.dialer, &self.target] {
            linger_zero(s);
            let _ = s.shutdown(Shutdown::Read);
        }
    }
}

impl Relay {
    /// A relay on a fresh loopback port, to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            faults: Mutex::new(Faults::default()),
            cv: Condvar::new(),
            closing: AtomicBool::new(false),
            pairs: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || s.accept_loop(listener));
        Relay { addr, shared, acceptor: Some(acceptor) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// New connections go to `target` from now on.
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap() = target;
    }

    /// Resets the connection once `n` more bytes went through (after the
    /// cuts already planned).
    pub fn cut_after(&self, n: u64) {
        let mut f = self.shared.faults.lock().unwrap();
        let from = f.cuts.back().copied().unwrap_or(f.forwarded);
        f.cuts.push_back(from + n);
    }

    pub fn refuse(&self, on: bool) {
        self.shared.faults.lock().unwrap().refuse = on;
    }

    /// Stops forwarding once `n` more bytes went through.
    pub fn stall_after(&self, n: u64) {
        let mut f = self.shared.faults.lock().unwrap();
        f.stall_at = Some(f.forwarded + n);
    }

    pub fn release(&self) {
        let mut f = self.shared.faults.lock().unwrap();
        f.stall_at = None;
        self.shared.cv.notify_all();
    }

    /// Waits until forwarding stopped at the stall; false at the deadline.
    pub fn wait_stalled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut f = self.shared.faults.lock().unwrap();
        while !f.stalled {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            f = self.shared.cv.wait_timeout(f, left).unwrap().0;
        }
        true
    }

    /// Connections reset by a cut or a refusal so far.
    pub fn resets(&self) -> u64 {
        self.shared.faults.lock().unwrap().resets
    }

    /// Cuts planned and not reached yet.
    pub fn cuts_left(&self) -> usize {
        self.shared.faults.lock().unwrap().cuts.len()
    }

    pub fn connections(&self) -> u64 {
        self.shared.faults.lock().unwrap().connections
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr); // wakes the accept
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        self.shared.cv.notify_all();
        for p in self.shared.pairs.lock().unwrap().drain(..).filter_map(|p| p.upgrade()) {
            let _ = p.dialer.shutdown(Shutdown::Both);
            let _ = p.target.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    fn accept_loop(self: Arc<Shared>, listener: TcpListener) {
        for conn in listener.incoming() {
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            let Ok(dialer) = conn else { continue };
            let refuse = {
                let mut f = self.faults.lock().unwrap();
                f.connections += 1;
                if f.refuse {
                    f.resets += 1;
                }
                f.refuse
            };
            let target = *self.target.lock().unwrap();
            let target = match (refuse, TcpStream::connect(target)) {
                (false, Ok(t)) => t,
                _ => {
                    linger_zero(&dialer);
                    continue; // dropped: a RST
                }
            };
            let _ = dialer.set_nodelay(true);
            let _ = target.set_nodelay(true);
            let pair = Arc::new(Pair { dialer, target, reset: AtomicBool::new(false), done: AtomicBool::new(false) });
            let mut pairs = self.pairs.lock().unwrap();
            pairs.retain(|p| p.strong_count() > 0);
            pairs.push(Arc::downgrade(&pair));
            drop(pairs);
            let (s, p) = (self.clone(), pair.clone());
            std::thread::spawn(move || s.forward(&p));
            std::thread::spawn(move || back(&pair));
        }
    }

    /// Dialer → target, with the faults.
    fn forward(&self, p: &Pair) {
        let mut buf = vec![0u8; 64 << 10];
        'read: loop {
            let n = match (&p.dialer).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut at = 0;
            while at < n {
                // How much of the rest may go now, and whether a cut follows.
                let (take, cut) = {
                    let mut f = self.faults.lock().unwrap();
                    loop {
                        if p.done.load(Ordering::Acquire) || self.closing.load(Ordering::Acquire) {
                            f.stalled = false;
                            break 'read;
                        }
                        match f.stall_at {
                            Some(s) if s <= f.forwarded => {
                                f.stalled = true;
                                self.cv.notify_all();
                                f = self.cv.wait_timeout(f, Duration::from_millis(50)).unwrap().0;
                            }
                            _ => break,
                        }
                    }
                    f.stalled = false;
                    let mut take = (n - at) as u64;
                    if let Some(s) = f.stall_at {
                        take = take.min(s - f.forwarded);
                    }
                    let cut = f.cuts.front().is_some_and(|&c| c <= f.forwarded + take);
                    if let Some(&c) = f.cuts.front() {
                        take = take.min(c.saturating_sub(f.forwarded));
                    }
                    f.forwarded += take;
                    if cut {
                        f.cuts.pop_front();
                        f.resets += 1;
                    }
                    (take as usize, cut)
                };
                if (&p.target).write_all(&buf[at..at + take]).is_err() {
                    break 'read;
                }
                at += take;
                if cut {
                    p.reset();
                    break 'read;
                }
            }
        }
        end(p, &p.target);
        self.cv.notify_all();
    }
}

/// Target → dialer, as is.
fn back(p: &Pair) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match (&p.target).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if (&p.dialer).write_all(&buf[..n]).is_err() {
            break;
        }
    }
    end(p, &p.dialer);
}

/// One direction is over: passes its end of stream on (unless the pair
/// was reset) and lets the other direction know.
fn end(p: &Pair, to: &TcpStream) {
    if !p.reset.load(Ordering::Acquire) {
        let _ = to.shutdown(Shutdown::Write);
    }
    p.done.store(true, Ordering::Release);
}
