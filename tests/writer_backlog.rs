//! The batched writer under a steady backlog (a peer that reads just fast
//! enough, always a little behind) and at net close, once per backend, over
//! real Unix and TCP loopback sockets. Its own test binary: a counting
//! global allocator measures keel's heap.

use keel::net::{BackendChoice, Net, NetOptions, WriterOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts the bytes currently allocated by the whole test binary.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
// SAFETY: forwards every call to the system allocator and only keeps a total.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() { LIVE.fetch_add(l.size(), Ordering::Relaxed); }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() { LIVE.fetch_sub(l.size(), Ordering::Relaxed); LIVE.fetch_add(new, Ordering::Relaxed); }
        q
    }
}
#[global_allocator]
static A: Counting = Counting;
/// LIVE counts the whole binary: one measuring test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn set_buf(fd: i32, opt: i32, bytes: i32) {
    // SAFETY: SO_SNDBUF/SO_RCVBUF take an int: `bytes` is a live i32 of size 4.
    let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, &bytes as *const i32 as *const libc::c_void, 4) };
    assert_eq!(r, 0);
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(120), "still waiting for {what} after two minutes");
        std::thread::sleep(Duration::from_millis(1));
    }
}

const MSG: usize = 1024; // below copy_threshold: copied
const BACKLOG: usize = 4 << 20; // under the 8 MiB soft and 32 MiB hard caps
const STEP: usize = 64 << 10;
const LAG: usize = BACKLOG / STEP; // read k returns the bytes of append step k - LAG

/// A connection that is always a little behind: the host first queues a
/// 4 MiB backlog, then in lockstep appends STEP bytes and the peer reads
/// exactly STEP bytes, so keel always holds about 4 MiB. One flush per pass
/// for everything queued (the defaults show the same, less steadily):
/// every flush offers megabytes to a socket that takes at most 32 KiB, so
/// every flush is short and the outbox is never empty. Calls `step(k)`
/// after read k; returns the writer, the peer and each step's start time.
fn steady_backlog(net: &Net, steps: usize, mut step: impl FnMut(usize, Instant, &[Instant])) -> (keel::net::Writer, UnixStream, Vec<Instant>) {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let fd = ours.into_raw_fd();
    set_buf(fd, libc::SO_SNDBUF, 16 << 10);
    let opts = WriterOptions { max_batch_bytes: 64 << 20, quota: 1_000_000, ..Default::default() };
    let w = net.adopt(fd, &opts).unwrap();
    let msg = vec![0x5au8; MSG];
    for _ in 0..BACKLOG / MSG {
        w.send(&msg, false).unwrap();
    }
    let (mut at, mut buf) = (Vec::new(), vec![0u8; STEP]);
    for k in 0..steps {
        at.push(Instant::now());
        for _ in 0..STEP / MSG {
            w.send(&msg, false).unwrap();
        }
        peer.read_exact(&mut buf).unwrap();
        step(k, Instant::now(), &at);
    }
    (w, peer, at)
}

/// Memory: queued_bytes stays at the 4 MiB backlog, and so does keel's
/// heap: a pass does not extend the copy buffer at the front of the outbox
/// once part of it is sent (its sent prefix is freed only with the whole
/// buffer, which a steady backlog would put off forever).
fn steady_backlog_memory_is_bounded(backend: BackendChoice) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = Net::open(NetOptions { backend: Some(backend), on_event: None }).unwrap();
    let base = LIVE.load(Ordering::Relaxed);
    let mut worst = 0;
    let (w, peer, _) = steady_backlog(&net, 4096, |_, _, _| worst = worst.max(LIVE.load(Ordering::Relaxed).saturating_sub(base)));
    let s = w.stats();
    assert!(s.queued_bytes <= (BACKLOG + (1 << 20)) as u64, "the backlog stayed constant: {s:?}");
    assert!(worst < 32 << 20, "keel's heap grew by {} MiB for a constant 4 MiB backlog after 256 MiB sent ({s:?})", worst >> 20);
    drop((w, peer));
    net.close().unwrap();
}

/// R12 max_flush_wait_ns ("longest time any byte waited between its append
/// and the send that first carried it") and oldest_unflushed_ns (age of the
/// oldest byte keel holds). A byte cannot be sent after the read that
/// returned it, nor appended before the test's send for it: causality alone
/// bounds every byte's wait (no clock threshold). Both stats stay within
/// it though the outbox never empties (they once counted from the moment
/// it last was empty).
fn flush_wait_is_the_wait_of_a_byte(backend: BackendChoice) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = Net::open(NetOptions { backend: Some(backend), on_event: None }).unwrap();
    let t0 = Instant::now(); // before the backlog's appends
    let mut bound = Duration::ZERO; // the longest any read byte can have waited
    let (w, peer, at) = steady_backlog(&net, 2048, |k, read_at, at| {
        bound = bound.max(read_at - if k < LAG { t0 } else { at[k - LAG] });
    });
    // io_uring counts a send when its completion is reaped: wait until keel
    // counts every byte the peer read, so all it still holds came later.
    wait_until("keel to count the bytes read", || w.stats().bytes_sent >= (at.len() * STEP) as u64);
    let s = w.stats();
    // Bytes not read yet were appended in the last LAG steps, and the
    // stat counts from the oldest item of their batch. One pass took that
    // batch whole, after the append of its newest item (step n - LAG or
    // later) and before the peer read the bytes of its oldest (step j,
    // read by read j + LAG): so j >= n - 2 * LAG, one more step for the
    // bytes of a step split between reads. How many steps a batch spans
    // depends on when the reactor ran (a busy machine: tens of steps);
    // counting from when the outbox was last empty would pass this bound
    // by the whole run.
    let n = at.len();
    let unread = Instant::now() - at[n - LAG - 1];
    let held = Instant::now() - at[n - 2 * LAG - 1];
    let bound = bound.max(unread);
    let (wait, oldest) = (Duration::from_nanos(s.max_flush_wait_ns), Duration::from_nanos(s.oldest_unflushed_ns));
    assert!(wait <= bound, "max_flush_wait_ns is {wait:?}, but no byte can have waited longer than {bound:?} (the run took {:?}): {s:?}", t0.elapsed());
    assert!(oldest <= held, "oldest_unflushed_ns is {oldest:?}, but the batches of the bytes keel holds began within the last {held:?}: {s:?}");
    drop((w, peer));
    net.close().unwrap();
}

/// keel_net_close: "each connection is flushed, half-closed, what already
/// arrived is read and the fd closed" (reading it keeps close(2) from
/// sending a RST that drops our data). All of it, not the first 256 KiB:
/// a peer with more unread requests got a RST and lost reply bytes keel
/// had flushed to the kernel (queued_bytes 0, close OK).
fn net_close_reads_all_that_arrived(backend: BackendChoice) {
    let net = Net::open(NetOptions { backend: Some(backend), on_event: None }).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    // Inherited by the accepted socket: room for all the peer's input, and
    // a send buffer that takes the whole reply at once.
    set_buf(l.as_raw_fd(), libc::SO_RCVBUF, 2 << 20);
    set_buf(l.as_raw_fd(), libc::SO_SNDBUF, 2 << 20);
    let mut peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let fd = l.accept().unwrap().0.into_raw_fd();
    // Pipelined requests the server never reads, and the reply: as much as
    // the buffers the system granted hold (1 MiB each where, as on the CI
    // machine, net.core.rmem_max and wmem_max allow 4 MiB; the input must
    // exceed 256 KiB to tell the old bound).
    let input = (get_buf(fd, libc::SO_RCVBUF) / 4).min(1 << 20);
    let reply_len = (get_buf(fd, libc::SO_SNDBUF) / 4).min(1 << 20);
    peer.write_all(&vec![b'q'; input]).unwrap();
    wait_until("the input to arrive", || unread(fd) >= input);
    let w = net.adopt(fd, &WriterOptions::default()).unwrap();
    let reply: Vec<u8> = (0..reply_len).map(|i| (i % 251) as u8).collect();
    w.send(&reply, false).unwrap();
    wait_until("the kernel to take the reply", || w.stats().queued_bytes == 0);
    net.close().unwrap();
    let mut got = Vec::new();
    let r = peer.read_to_end(&mut got);
    assert!(got == reply, "the peer received {} of the {} reply bytes keel had flushed ({:?})", got.len(), reply.len(), r.err());
    drop(w);
}

/// The size the kernel gives socket buffer `opt` of `fd`.
fn get_buf(fd: i32, opt: i32) -> usize {
    let (mut v, mut len): (libc::c_int, libc::socklen_t) = (0, 4);
    // SAFETY: SO_RCVBUF/SO_SNDBUF write one int: `v` is a live c_int and
    // `len` says its size.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, &mut v as *mut libc::c_int as *mut libc::c_void, &mut len) };
    assert_eq!(r, 0);
    v as usize
}

/// Bytes waiting in `fd`'s receive queue.
fn unread(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given, a live c_int.
    assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }, 0);
    n as usize
}

macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod sendmsg { $( #[test] fn $name() { super::$name(keel::net::BackendChoice::Sendmsg) } )* }
        mod io_uring { $( #[test] fn $name() { super::$name(keel::net::BackendChoice::IoUring) } )* }
    };
}
per_backend!(steady_backlog_memory_is_bounded, flush_wait_is_the_wait_of_a_byte, net_close_reads_all_that_arrived);
