//! The batched socket writer (src/net) against real loopback TCP sockets and
//! real threads, once per backend: every test below runs for `sendmsg`
//! and for `io_uring` (which falls back to sendmsg, and says so, where
//! io_uring is unavailable).
//!
//! Randomised tests print their seed; `KEEL_WRITER_SEED=<n>` replays one.

mod common;

use common::rng::Rng;
use keel::ffi as c;
use keel::net::{BackendChoice, CloseWait, Net, NetOptions, Writer, WriterOptions};
use keel::status::*;
use parking_lot::Mutex;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Events = Arc<Mutex<Vec<(u64, u32, String)>>>;

fn open_net(backend: BackendChoice) -> (Net, Events) {
    let events: Events = Arc::default();
    let ev = events.clone();
    let net = Net::open(NetOptions {
        backend: Some(backend),
        on_event: Some(Arc::new(move |id, status, msg: &str| ev.lock().push((id, status, msg.to_string())))),
    })
    .unwrap();
    if let Some((_, why)) = net.fallback() {
        eprintln!("io_uring unavailable, running on sendmsg: {why}");
    }
    (net, events)
}

/// A connected loopback pair: (the fd keel adopts, the peer that reads).
fn tcp_pair() -> (RawFd, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (s.into_raw_fd(), c)
}

fn set_buf(fd: RawFd, opt: i32, bytes: i32) {
    // SAFETY: SO_SNDBUF/SO_RCVBUF take an int: `bytes` is a live i32 and 4 is
    // its size.
    let r = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, opt, &bytes as *const i32 as *const libc::c_void, 4)
    };
    assert_eq!(r, 0);
}

/// Reads until EOF (or error) on another thread; returns what arrived.
fn reader(mut s: TcpStream) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
}

fn seed() -> u64 {
    let s = std::env::var("KEEL_WRITER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("seed {s} (replay with KEEL_WRITER_SEED={s})");
    s
}

fn payload(rng: &mut Rng, len: usize) -> Vec<u8> {
    let base = rng.next();
    (0..len).map(|i| (base as usize).wrapping_add(i * 7) as u8).collect()
}

fn rand_payload(rng: &mut Rng) -> Vec<u8> {
    let n = size(rng);
    payload(rng, n)
}

/// A size from 1 B to 64 KiB, mostly small.
fn size(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..=5 => 1 + rng.below(64) as usize,
        6..=7 => 1 + rng.below(4096) as usize,
        _ => 4096 + rng.below(60 << 10) as usize,
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Random sends, batches, `more` runs, shared payloads and markers from
/// several rounds; the reader must see exactly the appended bytes.
fn random_sequences_arrive_byte_exact(backend: BackendChoice) {
    let mut rng = Rng::new(seed());
    let (net, events) = open_net(backend);
    for round in 0..4 {
        let (fd, peer) = tcp_pair();
        if round % 2 == 1 {
            set_buf(fd, libc::SO_SNDBUF, 16 << 10); // force short sends as well
        }
        let rd = reader(peer);
        let w = net.adopt(fd, &WriterOptions::default()).unwrap();
        let mut want = Vec::new();
        let mut shared = Vec::new();
        for _ in 0..200 {
            match rng.below(6) {
                0 | 1 => {
                    let p = rand_payload(&mut rng);
                    w.send(&p, false).unwrap();
                    want.extend_from_slice(&p);
                }
                2 => {
                    let parts: Vec<Vec<u8>> = (0..1 + rng.below(16)).map(|_| rand_payload(&mut rng)).collect();
                    let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
                    w.send_batch(&refs, rng.chance(200)).unwrap();
                    parts.iter().for_each(|p| want.extend_from_slice(p));
                }
                3 => {
                    let p = rand_payload(&mut rng);
                    w.send(&p, true).unwrap();
                    want.extend_from_slice(&p);
                    if rng.chance(300) {
                        w.flush().unwrap();
                    }
                }
                4 => {
                    let n = 4096 + rng.below(60 << 10) as usize;
                    let p: Arc<[u8]> = payload(&mut rng, n).into();
                    w.send_shared(p.clone(), false).unwrap();
                    want.extend_from_slice(&p);
                    shared.push(p);
                }
                _ => w.mark(rng.chance(500)).unwrap(),
            }
        }
        w.flush().unwrap();
        wait_for("the queue to drain", Duration::from_secs(10), || w.stats().queued_bytes == 0);
        let s = w.stats();
        assert_eq!(s.items_sent, s.items, "every item was handed to a send");
        drop(w); // R10: flush, shutdown, close
        let got = rd.join().unwrap();
        assert_eq!(got.len(), want.len(), "round {round}: byte count");
        assert!(got == want, "round {round}: bytes differ");
        wait_for("shared payloads released", Duration::from_secs(5), || shared.iter().all(|p| Arc::strong_count(p) == 1));
    }
    assert!(events.lock().is_empty(), "no error reports: {:?}", events.lock());
    net.close().unwrap();
}

/// R6: a tiny send buffer and a reader that stalls, then reads slowly.
/// The host thread never blocks: the reader stalls until every send has
/// returned, so a send that waited for the peer would never return (the
/// reader gives up after a minute and says so). Every byte arrives in order.
fn short_sends_and_eagain_keep_order(backend: BackendChoice) {
    let mut rng = Rng::new(seed());
    let (net, events) = open_net(backend);
    let (fd, peer) = tcp_pair();
    // A tiny send buffer; the receive buffer stays normal (a tiny one
    // stalls loopback TCP on its 200 ms persist timer).
    set_buf(fd, libc::SO_SNDBUF, 4096);
    let w = net.adopt(fd, &WriterOptions::default()).unwrap();
    let (sent_all, stalled) = std::sync::mpsc::channel::<()>();
    let rd = std::thread::spawn(move || {
        let mut peer = peer;
        // Stall: the socket fills up, and stays full until the host's last
        // send returned.
        stalled.recv_timeout(Duration::from_secs(60)).expect("the host's sends returned while the peer read nothing");
        let mut all = Vec::new();
        let mut buf = [0u8; 1500];
        let mut n_reads = 0u32;
        loop {
            match peer.read(&mut buf) {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
            n_reads += 1;
            if n_reads % 200 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let mut want = Vec::new();
    while want.len() < 3 << 20 {
        let p = rand_payload(&mut rng);
        w.send(&p, false).unwrap();
        want.extend_from_slice(&p);
    }
    wait_for("the reactor to meet the full socket", Duration::from_secs(60), || w.stats().writable_waits > 0);
    let s = w.stats();
    assert!(s.short_sends + s.eagain > 0, "the socket filled up: {s:?}");
    sent_all.send(()).unwrap();
    drop(w);
    let got = rd.join().unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "bytes differ");
    assert!(events.lock().is_empty());
    net.close().unwrap();
}

/// R9: the reader goes away mid-stream: one report, later sends CLOSED,
/// referenced payloads released.
fn peer_killed_mid_stream_reports_once(backend: BackendChoice) {
    let (net, events) = open_net(backend);
    let (fd, mut peer) = tcp_pair();
    let w = net.adopt(fd, &WriterOptions::default()).unwrap();
    let big: Arc<[u8]> = vec![7u8; 64 << 10].into();
    let mut buf = [0u8; 1000];
    w.send(b"hello", false).unwrap();
    peer.read_exact(&mut buf[..5]).unwrap();
    // Leave unread data behind so close(2) sends a RST.
    w.send(&[1u8; 1000], false).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    drop(peer);
    let t = Instant::now();
    let mut failed = None;
    while t.elapsed() < Duration::from_secs(5) {
        if let Err(e) = w.send_shared(big.clone(), false) {
            failed = Some(e);
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let e = failed.expect("sends keep failing after the peer is gone");
    assert!(e.status == KEEL_STATUS_IO || e.status == KEEL_STATUS_CLOSED, "{e}");
    wait_for("the error report", Duration::from_secs(5), || !events.lock().is_empty());
    assert_eq!(w.send(b"x", false).unwrap_err().status, KEEL_STATUS_CLOSED);
    std::thread::sleep(Duration::from_millis(50));
    {
        let ev = events.lock();
        assert_eq!(ev.len(), 1, "exactly one report: {ev:?}");
        assert_eq!((ev[0].0, ev[0].1), (w.id(), KEEL_STATUS_IO));
    }
    wait_for("the queued payloads to be released", Duration::from_secs(5), || Arc::strong_count(&big) == 1);
    assert_eq!(w.stats().queued_bytes, 0);
    drop(w);
    net.close().unwrap();
    assert_eq!(events.lock().len(), 1);
}

/// R4: pipelines of 500 messages: every pass flushes at the quota, no
/// send carries more than `quota` items, nothing waits more than a pass.
fn flood_respects_the_quota(backend: BackendChoice) {
    let (net, _events) = open_net(backend);
    let (fd, peer) = tcp_pair();
    let rd = reader(peer);
    let opts = WriterOptions { quota: 100, ..Default::default() };
    let w = net.adopt(fd, &opts).unwrap();
    let mut want = Vec::new();
    let msgs: Vec<Vec<u8>> = (0..500u32).map(|i| format!("+reply {i:05}\r\n").into_bytes()).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
    for _ in 0..200 {
        w.send_batch(&refs, false).unwrap();
        msgs.iter().for_each(|m| want.extend_from_slice(m));
    }
    wait_for("the queue to drain", Duration::from_secs(10), || w.stats().queued_bytes == 0);
    let s = w.stats();
    eprintln!("{s:?}");
    assert!(s.flush_quota >= 200, "each pipeline of 500 flushes at the quota: {s:?}");
    assert!(s.max_items_per_send <= 100, "{s:?}");
    assert_eq!(s.items_sent, 100_000);
    let density = s.items_sent as f64 / s.sends as f64;
    assert!(density > 50.0, "batched: {density} items per send");
    assert!(s.max_flush_wait_ns < 2_000_000_000, "{s:?}");
    if net.backend() == keel::net::Backend::IoUring {
        assert!(s.uring_sends > 0, "passes went through the ring: {s:?}");
    }
    drop(w);
    assert!(rd.join().unwrap() == want);
    net.close().unwrap();
}

/// R7 + fan-out: one subscriber never reads; it is cut off by the hard
/// cap with one report, and the fast ones receive every message.
fn slow_subscriber_is_cut_off(backend: BackendChoice) {
    let (net, events) = open_net(backend);
    let opts = WriterOptions { hard_cap_bytes: 256 << 10, soft_cap_bytes: 0, ..Default::default() };
    let publ = net.publisher(&opts).unwrap();
    let mut fast = Vec::new();
    for _ in 0..3 {
        let (fd, peer) = tcp_pair();
        publ.subscribe(fd).unwrap();
        fast.push(reader(peer));
    }
    let (slow_fd, slow_peer) = tcp_pair();
    set_buf(slow_peer.as_raw_fd(), libc::SO_RCVBUF, 4096);
    set_buf(slow_fd, libc::SO_SNDBUF, 4096);
    let slow = publ.subscribe(slow_fd).unwrap();
    let mut want = Vec::new();
    let big = vec![b'B'; 8 << 10];
    let fast_ids: Vec<u64> = (1..=3).collect();
    for i in 0..20_000u32 {
        let m = if i % 100 == 0 { big.clone() } else { format!("msg {i} {}\n", i * 31).into_bytes() };
        publ.publish(&m, i % 10 == 9).unwrap();
        want.extend_from_slice(&m);
        if i % 500 == 499 {
            // The fast readers keep up on average (the publisher may not
            // outrun them by a cap's worth); the slow one never does.
            wait_for("fast subscribers", Duration::from_secs(5), || {
                fast_ids.iter().all(|&id| publ.subscriber_stats(id).unwrap().queued_bytes < 64 << 10)
            });
        }
    }
    publ.flush().unwrap();
    wait_for("the slow subscriber's report", Duration::from_secs(5), || !events.lock().is_empty());
    let st = publ.stats();
    assert_eq!(st.cut_off, 1, "{st:?}");
    assert_eq!(st.subscribers, 3, "{st:?}");
    {
        let ev = events.lock();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!((ev[0].0, ev[0].1), (slow, KEEL_STATUS_BUSY));
        assert!(ev[0].2.contains("hard cap"), "{}", ev[0].2);
    }
    // Unsubscribing the cut-off one keeps its sends in the totals.
    publ.unsubscribe(slow).unwrap();
    let after = publ.stats();
    assert!(after.sends >= st.sends && after.items_sent >= st.items_sent, "{st:?} then {after:?}");
    assert_eq!((after.cut_off, after.subscribers), (0, 3), "{after:?}");
    drop(publ); // unsubscribes everyone: flush, shutdown, close
    for r in fast {
        let got = r.join().unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }
    drop(slow_peer);
    net.close().unwrap();
    assert_eq!(events.lock().len(), 1);
}

/// R7: above the soft cap for longer than allowed, with no further
/// appends: the reactor's deadline check cuts the connection off.
fn soft_cap_expires_without_appends(backend: BackendChoice) {
    let (net, events) = open_net(backend);
    let (fd, peer) = tcp_pair();
    set_buf(peer.as_raw_fd(), libc::SO_RCVBUF, 4096);
    set_buf(fd, libc::SO_SNDBUF, 4096);
    let opts = WriterOptions { soft_cap_bytes: 64 << 10, soft_cap: Duration::from_millis(100), ..Default::default() };
    let w = net.adopt(fd, &opts).unwrap();
    for _ in 0..64 {
        w.send(&[0u8; 4096], false).unwrap();
    }
    assert!(w.stats().queued_bytes > 64 << 10);
    wait_for("the soft-cap report", Duration::from_secs(5), || !events.lock().is_empty());
    let ev = events.lock().clone();
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].0, ev[0].1), (w.id(), KEEL_STATUS_BUSY));
    assert!(ev[0].2.contains("soft cap"), "{}", ev[0].2);
    assert_eq!(w.send(b"x", false).unwrap_err().status, KEEL_STATUS_CLOSED);
    drop(w);
    drop(peer);
    net.close().unwrap();
}

/// R1: one message on an idle connection is one send, made before send
/// returns; R2: control items never make a pass batch.
fn lone_message_and_control_items(backend: BackendChoice) {
    let (net, _events) = open_net(backend);
    let (fd, mut peer) = tcp_pair();
    let w = net.adopt(fd, &WriterOptions::default()).unwrap();
    w.send(b"PONG", false).unwrap();
    let s = w.stats();
    assert_eq!((s.sends, s.immediate_sends, s.flush_idle, s.items_sent), (1, 1, 1, 1), "{s:?}");
    assert_eq!(s.queued_bytes, 0, "sent before send returned");
    let mut buf = [0u8; 4];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"PONG");

    // One reply plus control items: the pass does not batch.
    w.send(b"one", true).unwrap();
    w.mark(true).unwrap();
    w.mark(true).unwrap();
    w.flush().unwrap();
    wait_for("drained", Duration::from_secs(5), || w.stats().queued_bytes == 0);
    let s = w.stats();
    assert_eq!((s.batched_passes, s.sends, s.control_items), (0, 2, 2), "{s:?}");
    // Two replies: it does.
    w.send(b"two", true).unwrap();
    w.send(b"three", true).unwrap();
    w.flush().unwrap();
    wait_for("drained", Duration::from_secs(5), || w.stats().queued_bytes == 0);
    let s = w.stats();
    assert_eq!((s.batched_passes, s.sends), (1, 3), "{s:?}");
    let mut buf = [0u8; 11];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"onetwothree");
    drop(w);
    net.close().unwrap();
}

/// Bad fds are refused with the fd left to the caller.
fn adopt_refuses_bad_fds(backend: BackendChoice) {
    let (net, _events) = open_net(backend);
    let o = WriterOptions::default();
    assert_eq!(net.adopt(-1, &o).err().unwrap().status, KEEL_STATUS_INVALID_ARGUMENT);
    assert_eq!(net.adopt(1_000_000, &o).err().unwrap().status, KEEL_STATUS_INVALID_ARGUMENT);
    let mut p = [0i32; 2];
    // SAFETY: `p` is a writable array of the two ints pipe(2) fills.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    assert!(net.adopt(p[1], &o).err().unwrap().message.contains("not a socket"));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(net.adopt(udp.as_raw_fd(), &o).err().unwrap().message.contains("stream"));
    // SAFETY: socket(2) takes no pointers; the new fd is closed below.
    let unconnected = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(net.adopt(unconnected, &o).err().unwrap().message.contains("connected"));
    let bad = WriterOptions { quota: 0, ..Default::default() };
    let (fd, _peer) = tcp_pair();
    assert_eq!(net.adopt(fd, &bad).err().unwrap().status, KEEL_STATUS_INVALID_ARGUMENT);
    let w = net.adopt(fd, &o).unwrap();
    assert!(net.adopt(fd, &o).err().unwrap().message.contains("already adopted"));
    // SAFETY: the test made these three fds and keel refused each of them,
    // so they are still the test's own and closed once, here.
    unsafe {
        libc::close(p[0]);
        libc::close(p[1]);
        libc::close(unconnected);
    }
    net.close().unwrap();
    // The net is gone: the writer answers CLOSED, and closing it is harmless.
    assert_eq!(w.send(b"x", false).unwrap_err().status, KEEL_STATUS_CLOSED);
    drop(w);
}

/// R10: closing the net flushes what a blocked connection still holds.
fn net_close_flushes_queued_bytes(backend: BackendChoice) {
    let (net, _events) = open_net(backend);
    let (fd, peer) = tcp_pair();
    let w = net.adopt(fd, &WriterOptions::default()).unwrap();
    let data: Vec<u8> = (0..16_000_000u32).map(|i| (i % 251) as u8).collect();
    for c in data.chunks(1000) {
        w.send(c, false).unwrap();
    }
    assert!(w.stats().queued_bytes > 0, "the socket is full");
    let rd = reader(peer);
    net.close().unwrap();
    let got = rd.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    drop(w);
}

/// keel closes the fds it adopts, so one fd adopted by two nets would be
/// closed twice: the second net refuses it (and leaves it alone), as a
/// publisher of the second net does.
fn fd_adopted_by_two_nets_is_refused(backend: BackendChoice) {
    let (a, _) = open_net(backend);
    let (b, _) = open_net(backend);
    let (fd, peer) = tcp_pair();
    let w = a.adopt(fd, &WriterOptions::default()).unwrap();
    let e = b.adopt(fd, &WriterOptions::default()).err().unwrap();
    assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT);
    assert!(e.message.contains("another keel net"), "{}", e.message);
    let publ = b.publisher(&WriterOptions::default()).unwrap();
    assert_eq!(publ.subscribe(fd).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    // The refusals did not touch the fd: the first net still owns it.
    let rd = reader(peer);
    w.send(b"still mine", false).unwrap();
    drop(w);
    a.close().unwrap();
    assert_eq!(rd.join().unwrap(), b"still mine");
    // A net keeps no claim on fds it no longer owns.
    let (fd2, _peer2) = tcp_pair();
    let w2 = b.adopt(fd2, &WriterOptions::default()).unwrap();
    drop(w2);
    drop(publ);
    b.close().unwrap();
}

/// A new descriptor of `fd`'s file (what the Go binding hands keel).
fn dup(fd: RawFd) -> RawFd {
    // SAFETY: no pointers; fcntl reports a bad fd as -1.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    assert!(copy >= 0, "dup: {}", std::io::Error::last_os_error());
    copy
}

/// Whether `a` and `b` are open descriptors of one file.
fn same_file(a: RawFd, b: RawFd) -> bool {
    let id = |fd| {
        // SAFETY: stat is a plain C struct of integers: all zeroes is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a writable stat on the stack; fstat fills only it.
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    };
    id(a).is_some() && id(a) == id(b)
}

/// A dup of an adopted fd is another number for the same socket: adopted
/// too, two writers would interleave their messages on it. The net
/// refuses it, as a writer or a subscriber, either way round, and leaves
/// it alone; once keel closed its own fd the dup can be adopted.
fn a_dup_of_an_adopted_socket_is_refused(backend: BackendChoice) {
    let (net, _) = open_net(backend);
    let o = WriterOptions::default();
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let fd = ours.into_raw_fd();
    let copy = dup(fd);
    let w = net.adopt(fd, &o).unwrap();
    let e = net.adopt(copy, &o).err().unwrap();
    assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT);
    assert!(e.message.contains(&format!("fd {copy} is the socket of fd {fd}")), "{}", e.message);
    let publ = net.publisher(&o).unwrap();
    assert_eq!(publ.subscribe(copy).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    let (sub, _sub_peer) = tcp_pair();
    let sub_copy = dup(sub);
    publ.subscribe(sub).unwrap();
    assert_eq!(net.adopt(sub_copy, &o).err().unwrap().status, KEEL_STATUS_INVALID_ARGUMENT);
    assert_eq!(publ.subscribe(sub_copy).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    // Another net of the process refuses them too: its bytes would
    // interleave on the one socket as well.
    let (net2, _) = open_net(backend);
    for (copy, of) in [(copy, fd), (sub_copy, sub)] {
        let e = net2.adopt(copy, &o).err().unwrap();
        assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT);
        let want = format!("fd {copy} is the socket of fd {of} (a dup of it), already adopted by another keel net handle");
        assert!(e.message.contains(&want), "{}", e.message);
        assert_eq!(net2.publisher(&o).unwrap().subscribe(copy).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    }
    net2.close().unwrap();
    // One writer on the socket: its message arrives alone.
    w.send(b"one writer", false).unwrap();
    drop(w);
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"one writer");
    // The peer's EOF ends the close (R10): keel closes its fd, and the
    // socket, still open through the dup, is no longer the net's.
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    wait_for("keel to close its fd", Duration::from_secs(10), || !same_file(fd, copy));
    let w2 = net.adopt(copy, &o).unwrap();
    drop(w2);
    drop(publ);
    net.close().unwrap();
    // SAFETY: keel refused sub_copy, so it is still the test's own.
    unsafe { libc::close(sub_copy) };
}

/// keel_net_close waits for queued bytes only, never for an idle peer's
/// EOF: neither an open writer nor one the host closed earlier keeps it
/// waiting while the peer stays connected. The close timeout is 600 s (the
/// largest allowed);
/// a watchdog hangs the peers up if close has not returned after 30 s
/// (what unblocked it before the fix), and the test fails if it had to.
fn net_close_does_not_wait_for_idle_peers(backend: BackendChoice) {
    let (net, _) = open_net(backend);
    let o = WriterOptions { close_timeout: Duration::from_secs(600), ..Default::default() };
    let (fd1, peer1) = tcp_pair();
    let (fd2, peer2) = tcp_pair();
    let open = net.adopt(fd1, &o).unwrap();
    let closed = net.adopt(fd2, &o).unwrap();
    open.send(b"one", false).unwrap();
    closed.send(b"two", false).unwrap();
    closed.close(); // flushed, half-closed, then lingering for the peer's EOF
    let hang_up: Vec<TcpStream> = vec![peer1.try_clone().unwrap(), peer2.try_clone().unwrap()];
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(30)).is_ok() {
            return false;
        }
        for p in &hang_up {
            let _ = p.shutdown(std::net::Shutdown::Both);
        }
        true
    });
    net.close().unwrap();
    let _ = done_tx.send(());
    assert!(!watchdog.join().unwrap(), "keel_net_close waited for the idle peers to hang up");
    // Everything queued arrived, then EOF.
    assert_eq!(reader(peer1).join().unwrap(), b"one");
    assert_eq!(reader(peer2).join().unwrap(), b"two");
    drop(open);
}

/// R12: an empty message leaves no age behind. Its append time stayed in
/// the outbox: `oldest_unflushed_ns` grew on a connection with nothing
/// queued, and the next message's flush wait was counted from it.
fn an_empty_message_leaves_no_age(backend: BackendChoice) {
    let (net, events) = open_net(backend);
    let (fd, mut peer) = tcp_pair();
    let w = net.adopt(fd, &WriterOptions::default()).unwrap();
    w.send(b"", false).unwrap();
    std::thread::sleep(Duration::from_millis(20)); // an age the bug would show
    let s = w.stats();
    assert_eq!((s.queued_bytes, s.items_sent, s.oldest_unflushed_ns), (0, 1, 0), "{s:?}");
    let t = Instant::now();
    w.send(b"x", false).unwrap();
    let mut b = [0u8; 1];
    peer.read_exact(&mut b).unwrap();
    let waited = t.elapsed().as_nanos() as u64;
    let s = w.stats();
    assert!(s.max_flush_wait_ns <= waited, "\"x\" waited at most {waited} ns, yet max_flush_wait_ns = {}", s.max_flush_wait_ns);
    drop(w);
    net.close().unwrap();
    assert!(events.lock().is_empty());
}

/// R7: the caps count each queued message's bookkeeping, so empty
/// messages behind a stopped reader hit the hard cap too (they were
/// accepted without limit: 3,000,000 of them grew the process by 114 MiB
/// under a 1 MiB cap).
fn empty_messages_hit_the_hard_cap(backend: BackendChoice) {
    let (net, events) = open_net(backend);
    let (fd, peer) = tcp_pair();
    set_buf(peer.as_raw_fd(), libc::SO_RCVBUF, 4096);
    set_buf(fd, libc::SO_SNDBUF, 4096);
    let opts = WriterOptions { hard_cap_bytes: 1 << 20, soft_cap_bytes: 0, ..Default::default() };
    let w = net.adopt(fd, &opts).unwrap();
    for _ in 0..64 {
        w.send(&[7u8; 4096], false).unwrap(); // fills the socket: the rest queues
    }
    let refused = (0..opts.hard_cap_bytes).find_map(|_| w.send(b"", false).err());
    let e = refused.expect("empty messages queued past the hard cap");
    assert_eq!(e.status, KEEL_STATUS_BUSY, "{e}");
    wait_for("the cut-off report", Duration::from_secs(5), || !events.lock().is_empty());
    drop(w);
    drop(peer);
    net.close().unwrap();
}

/// R7: a marker takes a queue entry as an empty message does and is
/// counted by the caps the same way (40 bytes), so markers queued behind
/// a stopped reader hit the hard cap too. They were appended without any
/// cap check: here 1,000 of them (40,000 bytes counted) went in under a
/// 4 KiB hard cap, and a host marking a stalled connection grew without
/// bound.
fn markers_hit_the_hard_cap(backend: BackendChoice) {
    let (net, events) = open_net(backend);
    let (ours, _peer) = UnixStream::pair().unwrap();
    let opts = WriterOptions { hard_cap_bytes: 4096, soft_cap_bytes: 0, ..Default::default() };
    let w = net.adopt(ours.into_raw_fd(), &opts).unwrap();
    // With `more` nothing is drained: every marker stays queued.
    let refused = (0..1000).find_map(|i| w.mark(true).err().map(|e| (i, e)));
    let (i, e) = refused.expect("1,000 markers queued under a 4 KiB hard cap");
    assert_eq!(e.status, KEEL_STATUS_BUSY, "{e}");
    assert_eq!(i, 4096 / 40, "refused at the first marker past the cap (40 bytes each)");
    wait_for("the cut-off report", Duration::from_secs(5), || !events.lock().is_empty());
    assert_eq!(events.lock()[0].1, KEEL_STATUS_BUSY);
    assert_eq!(w.mark(false).unwrap_err().status, KEEL_STATUS_CLOSED);
    drop(w);
    net.close().unwrap();
}

/// R9, alike on both backends: a peer that resets a connection with
/// nothing queued for it is noticed by the next send, which returns IO
/// and is reported once. The sendmsg backend used to notice it from its
/// idle epoll registration (and the io_uring backend never did).
fn an_idle_peer_reset_is_noticed_by_the_next_send(backend: BackendChoice) {
    let (net, events) = open_net(backend);
    let (fd, mut peer) = tcp_pair();
    let w = net.adopt(fd, &WriterOptions::default()).unwrap();
    w.send(b"hello", false).unwrap();
    let mut b = [0u8; 5];
    peer.read_exact(&mut b).unwrap();
    let lg = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: SO_LINGER takes a struct linger; `lg` is live and its size passed.
    let r = unsafe {
        libc::setsockopt(peer.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &lg as *const libc::linger as *const libc::c_void, std::mem::size_of::<libc::linger>() as u32)
    };
    assert_eq!(r, 0);
    drop(peer); // a RST
    let t = Instant::now();
    let failed = loop {
        match w.send(b"x", false) {
            Err(e) => break e,
            Ok(()) => assert!(t.elapsed() < Duration::from_secs(5), "sends kept succeeding after the reset"),
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(failed.status, KEEL_STATUS_IO, "the send that met the reset: {failed}");
    wait_for("the report", Duration::from_secs(5), || !events.lock().is_empty());
    assert_eq!(w.send(b"x", false).unwrap_err().status, KEEL_STATUS_CLOSED);
    {
        let ev = events.lock();
        assert_eq!(ev.len(), 1, "exactly one report: {ev:?}");
        assert_eq!((ev[0].0, ev[0].1), (w.id(), KEEL_STATUS_IO));
    }
    drop(w);
    net.close().unwrap();
}

/// The publisher's send totals never go backwards: an unsubscribed
/// subscriber counts in the departed totals from the moment it leaves the
/// list. It left the list first and was added to the totals after, and a
/// `stats` in between missed it (totals dropped in every 5 s run here). A
/// watcher reads the totals while subscribers come and go; the rounds are
/// counted, not timed.
fn publisher_totals_never_go_backwards(backend: BackendChoice) {
    let (net, _events) = open_net(backend);
    let publ = Arc::new(net.publisher(&WriterOptions::default()).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (publ, stop) = (publ.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut last, mut drops) = ((0u64, 0u64, 0u64), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = publ.stats();
                let now = (s.sends, s.bytes_sent, s.items_sent);
                if now.0 < last.0 || now.1 < last.1 || now.2 < last.2 {
                    drops.push((last, now));
                }
                last = now;
            }
            drops
        })
    };
    let mut peers = Vec::new();
    for _ in 0..2000 {
        let (fd, peer) = tcp_pair();
        let id = publ.subscribe(fd).unwrap();
        publ.publish(b"hello", true).unwrap();
        publ.unsubscribe(id).unwrap();
        peers.push(peer);
        if peers.len() > 64 {
            peers.clear();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let drops = watcher.join().unwrap();
    assert!(drops.is_empty(), "the totals went backwards {} times, e.g. {:?}", drops.len(), drops.first());
    drop(peers);
    drop(publ);
    net.close().unwrap();
}

/// A net whose event callback holds the reactor thread: `entered`
/// receives once the reactor is in the callback, which returns once
/// `release` is dropped (also when the test panics first, as it is
/// declared after the net and dropped before it).
fn net_with_a_gate(backend: BackendChoice) -> (Net, std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    let net = Net::open(NetOptions {
        backend: Some(backend),
        on_event: Some(Arc::new(move |_, _, _: &str| {
            let _ = entered_tx.lock().send(());
            let _ = release_rx.lock().recv();
        })),
    })
    .unwrap();
    if let Some((_, why)) = net.fallback() {
        eprintln!("io_uring unavailable, running on sendmsg: {why}");
    }
    (net, entered, release)
}

/// Holds the reactor thread in the event callback: a connection cut off
/// by its hard cap is reported there.
fn hold_the_reactor(net: &Net, entered: &std::sync::mpsc::Receiver<()>) -> (Writer, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    let o = WriterOptions { hard_cap_bytes: 1024, soft_cap_bytes: 0, ..Default::default() };
    let w = net.adopt(ours.into_raw_fd(), &o).unwrap();
    assert_eq!(w.send(&[0u8; 2048], false).unwrap_err().status, KEEL_STATUS_BUSY);
    entered.recv().unwrap();
    (w, peer)
}

/// R12: `short_sends` counts sends the kernel took only part of, on both
/// backends. A message refused with EAGAIN stays in the outbox; with
/// iov_max 1 the next send offers it alone while a second message waits
/// behind it. The kernel takes a 100-byte message on a Unix socket whole
/// or not at all, so no send here is short; the io_uring backend counted
/// the first completion as short because bytes were still left.
fn a_full_send_with_more_left_is_not_short(backend: BackendChoice) {
    let (net, entered, release) = net_with_a_gate(backend);
    let (_cut, _cut_peer) = hold_the_reactor(&net, &entered);
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let fd = ours.into_raw_fd();
    set_buf(fd, libc::SO_SNDBUF, 4096);
    let mut prefill = 0usize;
    loop {
        // SAFETY: the buffer is a live local array of the length passed.
        let r = unsafe { libc::send(fd, [0u8; 512].as_ptr() as *const libc::c_void, 512, libc::MSG_DONTWAIT) };
        if r < 0 {
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN));
            break;
        }
        prefill += r as usize;
    }
    let o = WriterOptions { copy_threshold: 1, iov_max: 1, ..Default::default() };
    let w = net.adopt(fd, &o).unwrap();
    w.send(&[1u8; 100], false).unwrap(); // the socket is full: EAGAIN
    w.send(&[2u8; 100], false).unwrap(); // queued behind it
    let s = w.stats();
    assert_eq!((s.eagain, s.bytes_sent, s.short_sends), (1, 0, 0), "{s:?}");
    drop(release); // the reactor offers the first message alone
    let mut got = vec![0u8; prefill + 200];
    peer.read_exact(&mut got).unwrap();
    assert!(got[prefill..prefill + 100].iter().all(|&b| b == 1) && got[prefill + 100..].iter().all(|&b| b == 2));
    wait_for("the completions", Duration::from_secs(10), || w.stats().queued_bytes == 0);
    let s = w.stats();
    assert_eq!((s.bytes_sent, s.items_sent), (200, 2), "{s:?}");
    assert_eq!(s.short_sends, 0, "no send was taken in part: {s:?}");
    drop(w);
    net.close().unwrap();
}

/// R7: the soft cap cuts off a connection whose queue stayed above it
/// for soft_cap without a break. One that went above it and emptied again
/// starts afresh at its next append. The period used to restart only at an
/// append that left the queue at or below the cap, or at the reactor's
/// periodic check if it happened to see the queue empty: two messages
/// larger than the cap, sent more than soft_cap apart to a peer that read
/// each one, cut the connection off when no check ran in between (BUSY,
/// "queued for 50 ms"). Here the reactor is held in an event callback, so
/// none runs; the wait only lets the cap's time pass with nothing queued.
fn soft_cap_restarts_once_the_queue_emptied(backend: BackendChoice) {
    let (net, entered, release) = net_with_a_gate(backend);
    let (_cut, _cut_peer) = hold_the_reactor(&net, &entered);
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let soft = Duration::from_millis(50);
    let o = WriterOptions { soft_cap_bytes: 1024, soft_cap: soft, hard_cap_bytes: 0, ..Default::default() };
    let w = net.adopt(ours.into_raw_fd(), &o).unwrap();
    let mut got = [0u8; 2048];
    w.send(&[1u8; 2048], false).unwrap(); // above the cap until sent, at once (R1)
    assert_eq!(w.stats().queued_bytes, 0);
    peer.read_exact(&mut got).unwrap();
    let emptied = Instant::now();
    while emptied.elapsed() <= soft {
        std::thread::sleep(soft);
    }
    let second = w.send(&[2u8; 2048], false);
    // Released before any check: unwinding past the held callback would
    // wait for it for good (dropping `_cut` waits for its callback).
    drop(release);
    second.expect("the queue was empty until this append");
    peer.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 2));
    assert!(w.death().is_none());
    drop(w);
    net.close().unwrap();
}

/// R12: a message appended in parts (head and body) is one item: it was
/// counted once per part in `items`, `items_sent` and
/// `max_items_per_send`, and a lone one was not lone (R1).
fn a_message_in_parts_is_one_item(backend: BackendChoice) {
    let (net, events) = open_net(backend);
    let (fd, mut peer) = tcp_pair();
    let w = net.adopt(fd, &WriterOptions::default()).unwrap();
    let body: Arc<[u8]> = vec![7u8; 1000].into();
    w.send_parts(b"head 0:", body.clone(), false).unwrap();
    let s = w.stats();
    assert_eq!((s.items, s.items_sent, s.sends, s.immediate_sends, s.max_items_per_send), (1, 1, 1, 1, 1), "{s:?}");
    for i in 1..4 {
        w.send_parts(format!("head {i}:").as_bytes(), body.clone(), true).unwrap();
    }
    w.send(b"end", false).unwrap();
    wait_for("the queue to drain", Duration::from_secs(10), || w.stats().queued_bytes == 0);
    let s = w.stats();
    assert_eq!((s.items, s.items_sent, s.max_items_per_send), (5, 5, 4), "{s:?}");
    let mut want = Vec::new();
    for i in 0..4 {
        want.extend_from_slice(format!("head {i}:").as_bytes());
        want.extend_from_slice(&body);
    }
    want.extend_from_slice(b"end");
    let mut got = vec![0u8; want.len()];
    peer.read_exact(&mut got).unwrap();
    assert!(got == want, "bytes differ");
    drop(w);
    net.close().unwrap();
    assert!(events.lock().is_empty());
}

/// R10: keel_net_close reads what the peer had sent before it closes a
/// socket (unread input would turn close(2) into a reset), but no longer
/// than the connection's close timeout: with 0 it reads nothing and the
/// peer sees the reset; with a long one it reads everything and the peer
/// sees EOF after the last reply.
fn net_close_discards_input_within_the_close_timeout(backend: BackendChoice) {
    let (net, events) = open_net(backend);
    let mut peers = Vec::new();
    let mut writers = Vec::new();
    for timeout in [Duration::ZERO, Duration::from_secs(600)] {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let w = net.adopt(ours.into_raw_fd(), &WriterOptions { close_timeout: timeout, ..Default::default() }).unwrap();
        peer.write_all(&[9u8; 16 << 10]).unwrap(); // in keel's receive queue now
        w.send(b"bye", false).unwrap();
        peers.push(peer);
        writers.push(w);
    }
    net.close().unwrap();
    let mut got = Vec::new();
    let e = peers[0].read_to_end(&mut got).expect_err("close timeout 0: nothing was read, so the close resets");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    assert_eq!(got, b"bye");
    got.clear();
    peers[1].read_to_end(&mut got).expect("close timeout 600 s: the input was read, so the close is orderly");
    assert_eq!(got, b"bye");
    drop(writers);
    assert!(events.lock().is_empty());
}

/// What calls made from an event callback returned, by name.
type Calls = Vec<(&'static str, keel_status_t)>;

/// What the C event callback of the close races below shares with its
/// test (its user_data, one reference of an Arc that keel releases with
/// user_data_free at net close): the callback says when it has started, waits
/// until the close it races waits for it (the net's close-wait hook), then
/// makes `calls` on the handles being closed and records what they
/// returned, all before it returns.
struct Race {
    writer: AtomicPtr<c::keel_writer_t>,
    publisher: AtomicPtr<c::keel_publisher_t>,
    /// The subscriber of `publisher` the callback reports.
    sub: AtomicU64,
    net: AtomicPtr<c::keel_net_t>,
    calls: fn(&Race) -> Calls,
    entered: std::sync::mpsc::Sender<()>,
    go: Mutex<std::sync::mpsc::Receiver<CloseWait>>,
    /// Where the close waited, then what the calls returned.
    seen: Mutex<(Vec<CloseWait>, Calls)>,
    frees: AtomicUsize,
}

unsafe extern "C" fn race_event(user: *mut libc::c_void, _: u64, _: keel_status_t, _: *const libc::c_char) {
    // SAFETY: user_data is a reference of the test's Arc<Race>, released
    // only by race_free, which keel calls after the last callback.
    let race = unsafe { &*(user as *const Race) };
    let _ = race.entered.send(());
    let Ok(at) = race.go.lock().recv() else { return };
    let got = (race.calls)(race);
    let mut seen = race.seen.lock();
    seen.0.push(at);
    seen.1.extend(got);
}

unsafe extern "C" fn race_free(user: *mut libc::c_void) {
    // SAFETY: user_data came from Arc::into_raw in race_net, and keel
    // calls this once, after the last callback: the reference is given
    // back here and never used again.
    let race = unsafe { Arc::from_raw(user as *const Race) };
    race.frees.fetch_add(1, SeqCst);
}

type EventFn = unsafe extern "C" fn(*mut libc::c_void, u64, keel_status_t, *const libc::c_char);

/// A net opened through the C API on `backend` whose event callback is
/// `on_event` with `user`, which keel gives back to `free` at net close.
fn c_net(backend: BackendChoice, on_event: EventFn, free: unsafe extern "C" fn(*mut libc::c_void), user: *mut libc::c_void) -> *mut c::keel_net_t {
    // SAFETY: keel_net_options_t is plain data (integers, pointers and
    // Options of fn pointers), for which all-zero bytes are valid; the
    // init call below fills it.
    let mut o: c::keel_net_options_t = unsafe { std::mem::zeroed() };
    assert_eq!(c::keel_net_options_init_sized(&mut o, std::mem::size_of_val(&o)), KEEL_STATUS_OK);
    o.backend = match backend {
        BackendChoice::Sendmsg => c::KEEL_NET_BACKEND_SENDMSG,
        BackendChoice::IoUring => c::KEEL_NET_BACKEND_IO_URING,
        BackendChoice::Default => c::KEEL_NET_BACKEND_DEFAULT,
    };
    o.on_event = Some(on_event);
    o.user_data = user;
    o.user_data_free = Some(free);
    let mut net = std::ptr::null_mut();
    assert_eq!(c::keel_net_open(&o, &mut net, std::ptr::null_mut()), KEEL_STATUS_OK);
    net
}

/// A net opened through the C API whose event callback runs the race's
/// calls once a close waits for it; `entered` receives when a callback
/// has started.
fn race_net(backend: BackendChoice, calls: fn(&Race) -> Calls) -> (Arc<Race>, *mut c::keel_net_t, std::sync::mpsc::Receiver<()>) {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (go_tx, go) = std::sync::mpsc::channel();
    let race = Arc::new(Race {
        writer: AtomicPtr::default(),
        publisher: AtomicPtr::default(),
        sub: AtomicU64::new(0),
        net: AtomicPtr::default(),
        calls,
        entered: entered_tx,
        go: Mutex::new(go),
        seen: Mutex::default(),
        frees: AtomicUsize::new(0),
    });
    let net = c_net(backend, race_event, race_free, Arc::into_raw(race.clone()) as *mut libc::c_void);
    race.net.store(net, SeqCst);
    let hook = move |at| {
        let _ = go_tx.send(at);
    };
    assert_eq!(c::set_net_close_wait_hook(net, Arc::new(hook)), KEEL_STATUS_OK);
    (race, net, entered)
}

/// Writer options that cut a connection off at its first 2 KiB message.
fn capped() -> c::keel_writer_options_t {
    // SAFETY: plain integers, valid all-zero; filled by the init call.
    let mut o: c::keel_writer_options_t = unsafe { std::mem::zeroed() };
    assert_eq!(c::keel_writer_options_init_sized(&mut o, std::mem::size_of_val(&o)), KEEL_STATUS_OK);
    o.hard_cap_bytes = 1024;
    o.soft_cap_bytes = 0;
    o
}

fn writer_stats() -> c::keel_writer_stats_t {
    // SAFETY: plain integers, valid all-zero.
    let mut s: c::keel_writer_stats_t = unsafe { std::mem::zeroed() };
    s.struct_size = std::mem::size_of_val(&s) as u32;
    s
}

/// The peer of a close race's connection, which was closed with nothing
/// ever sent: it reads EOF at once.
fn reads_nothing_but_eof(peer: &mut UnixStream) {
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the peer read {} bytes", rest.len());
}

/// keel_writer_close while the writer's own event callback runs on the
/// reactor: the close waits for it, and meanwhile the callback may call in
/// on the writer, as keel.h lets it. The handle must stay valid until the
/// close returns: sends answer CLOSED, stats answer, and a second close is
/// refused (BUSY) without freeing anything. It was freed before the wait,
/// so these calls read freed memory.
fn writer_close_waits_for_a_callback_that_calls_in(backend: BackendChoice) {
    let (race, net, entered) = race_net(backend, |r| {
        let w = r.writer.load(SeqCst);
        let mut s = writer_stats();
        vec![
            ("send", c::keel_writer_send(w, b"late".as_ptr(), 4, 0, std::ptr::null_mut())),
            ("stats", c::keel_writer_stats(w, &mut s)),
            ("close", c::keel_writer_close(w, std::ptr::null_mut())),
        ]
    });
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut w = std::ptr::null_mut();
    assert_eq!(c::keel_writer_adopt(net, ours.into_raw_fd(), &capped(), &mut w, std::ptr::null_mut()), KEEL_STATUS_OK);
    let mut id = 0;
    assert_eq!(c::keel_writer_id(w, &mut id), KEEL_STATUS_OK);
    race.writer.store(w, SeqCst);
    // Over the hard cap: cut off, and its callback starts on the reactor.
    assert_eq!(c::keel_writer_send(w, [0u8; 2048].as_ptr(), 2048, 0, std::ptr::null_mut()), KEEL_STATUS_BUSY);
    entered.recv().unwrap();
    assert_eq!(c::keel_writer_close(w, std::ptr::null_mut()), KEEL_STATUS_OK);
    // The close waited for the callback, which has made its calls.
    let seen = race.seen.lock().clone();
    assert_eq!(seen.0, [CloseWait::Callback(id)]);
    assert_eq!(seen.1, [("send", KEEL_STATUS_CLOSED), ("stats", KEEL_STATUS_OK), ("close", KEEL_STATUS_BUSY)]);
    assert_eq!(c::keel_net_close(net, std::ptr::null_mut()), KEEL_STATUS_OK);
    assert_eq!((race.frees.load(SeqCst), Arc::strong_count(&race)), (1, 1), "user_data released once");
    // The fd was closed: the peer reads EOF (nothing was ever sent).
    reads_nothing_but_eof(&mut peer);
}

/// keel_publisher_close while the event callback of one of its
/// subscribers runs: the close waits for it, and the callback may call in
/// on the publisher meanwhile (to unsubscribe the connection it reports,
/// say). The handle must stay valid until the close returns: publish,
/// subscribe (leaving the fd the caller's) and unsubscribe answer CLOSED, stats answer, and a second close is refused
/// (BUSY) without freeing anything. It was freed before the wait, so these
/// calls read freed memory.
fn publisher_close_waits_for_a_callback_that_calls_in(backend: BackendChoice) {
    let (race, net, entered) = race_net(backend, |r| {
        let p = r.publisher.load(SeqCst);
        // SAFETY: plain integers, valid all-zero.
        let mut s: c::keel_publisher_stats_t = unsafe { std::mem::zeroed() };
        s.struct_size = std::mem::size_of_val(&s) as u32;
        let (ours, _peer) = UnixStream::pair().unwrap();
        let mut id = 0;
        vec![
            ("publish", c::keel_publisher_publish(p, b"late".as_ptr(), 4, 0, std::ptr::null_mut())),
            ("subscribe", c::keel_publisher_subscribe(p, ours.as_raw_fd(), &mut id, std::ptr::null_mut())),
            // A refused subscribe leaves the fd the caller's: still open.
            // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags.
            ("fd still open", if unsafe { libc::fcntl(ours.as_raw_fd(), libc::F_GETFD) } == -1 { KEEL_STATUS_IO } else { KEEL_STATUS_OK }),
            ("unsubscribe", c::keel_publisher_unsubscribe(p, r.sub.load(SeqCst), std::ptr::null_mut())),
            ("stats", c::keel_publisher_stats(p, &mut s)),
            ("close", c::keel_publisher_close(p, std::ptr::null_mut())),
        ]
    });
    let mut p = std::ptr::null_mut();
    assert_eq!(c::keel_publisher_new(net, &capped(), &mut p, std::ptr::null_mut()), KEEL_STATUS_OK);
    race.publisher.store(p, SeqCst);
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut id = 0;
    assert_eq!(c::keel_publisher_subscribe(p, ours.into_raw_fd(), &mut id, std::ptr::null_mut()), KEEL_STATUS_OK);
    race.sub.store(id, SeqCst);
    // Over the hard cap: cut off, and reported at the drain point.
    let big = [0u8; 2048];
    assert_eq!(c::keel_publisher_publish(p, big.as_ptr(), big.len(), c::KEEL_PUBLISH_FLUSH, std::ptr::null_mut()), KEEL_STATUS_OK);
    entered.recv().unwrap();
    assert_eq!(c::keel_publisher_close(p, std::ptr::null_mut()), KEEL_STATUS_OK);
    let seen = race.seen.lock().clone();
    assert_eq!(seen.0, [CloseWait::Callback(id)]);
    assert_eq!(
        seen.1,
        [
            ("publish", KEEL_STATUS_CLOSED),
            ("subscribe", KEEL_STATUS_CLOSED),
            ("fd still open", KEEL_STATUS_OK),
            ("unsubscribe", KEEL_STATUS_CLOSED),
            ("stats", KEEL_STATUS_OK),
            ("close", KEEL_STATUS_BUSY)
        ]
    );
    assert_eq!(c::keel_net_close(net, std::ptr::null_mut()), KEEL_STATUS_OK);
    assert_eq!((race.frees.load(SeqCst), Arc::strong_count(&race)), (1, 1), "user_data released once");
    reads_nothing_but_eof(&mut peer);
}

/// keel_net_close while an event callback runs: the close joins the
/// reactor thread, which is in the callback, and the callback may call in
/// on its net meanwhile (keel.h: a keel_net_close from it answers BUSY).
/// The handle must stay valid until the close returns: the callback's
/// close answers BUSY, keel_net_backend answers, an adopt answers CLOSED
/// (the fd stays the caller's) and so does a send on the net's writer. It
/// was freed before the join, so these calls read freed memory.
fn net_close_waits_for_a_callback_that_calls_in(backend: BackendChoice) {
    let (race, net, entered) = race_net(backend, |r| {
        let n = r.net.load(SeqCst);
        let mut running = 0u32;
        let (ours, _peer) = UnixStream::pair().unwrap();
        let mut w = std::ptr::null_mut();
        vec![
            ("close", c::keel_net_close(n, std::ptr::null_mut())),
            ("backend", c::keel_net_backend(n, &mut running)),
            ("adopt", c::keel_writer_adopt(n, ours.as_raw_fd(), std::ptr::null(), &mut w, std::ptr::null_mut())),
            ("send", c::keel_writer_send(r.writer.load(SeqCst), b"late".as_ptr(), 4, 0, std::ptr::null_mut())),
        ]
    });
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut w = std::ptr::null_mut();
    assert_eq!(c::keel_writer_adopt(net, ours.into_raw_fd(), &capped(), &mut w, std::ptr::null_mut()), KEEL_STATUS_OK);
    race.writer.store(w, SeqCst);
    // Over the hard cap: cut off, and its callback starts on the reactor.
    assert_eq!(c::keel_writer_send(w, [0u8; 2048].as_ptr(), 2048, 0, std::ptr::null_mut()), KEEL_STATUS_BUSY);
    entered.recv().unwrap();
    assert_eq!(c::keel_net_close(net, std::ptr::null_mut()), KEEL_STATUS_OK);
    // The close joined the reactor, so the callback has made its calls.
    let seen = race.seen.lock().clone();
    assert_eq!(seen.0, [CloseWait::Reactor]);
    assert_eq!(
        seen.1,
        [("close", KEEL_STATUS_BUSY), ("backend", KEEL_STATUS_OK), ("adopt", KEEL_STATUS_CLOSED), ("send", KEEL_STATUS_CLOSED)]
    );
    assert_eq!((race.frees.load(SeqCst), Arc::strong_count(&race)), (1, 1), "user_data released once");
    // The writer outlives its net, and closes as usual.
    assert_eq!(c::keel_writer_close(w, std::ptr::null_mut()), KEEL_STATUS_OK);
    reads_nothing_but_eof(&mut peer);
}

/// One of two nets whose event callbacks close each other's handles.
struct Cross {
    /// Closes a handle of the other net (set before any callback runs).
    close: std::sync::OnceLock<Box<dyn Fn() -> keel_status_t + Send + Sync>>,
    /// Calls in on the handle of this net whose callback runs, once the
    /// other net closed it.
    calls: std::sync::OnceLock<Box<dyn Fn() -> Calls + Send + Sync>>,
    /// Shared by both callbacks: each closes only once both run, and
    /// calls in on its own handle only once both closes returned.
    both: Arc<std::sync::Barrier>,
    done: Mutex<std::sync::mpsc::Sender<Calls>>,
    frees: AtomicUsize,
}

unsafe extern "C" fn cross_event(user: *mut libc::c_void, _: u64, _: keel_status_t, _: *const libc::c_char) {
    // SAFETY: user_data is a reference of the test's Arc<Cross>, released
    // only by cross_free, which keel calls after the last callback.
    let x = unsafe { &*(user as *const Cross) };
    x.both.wait();
    let close = (x.close.get().expect("set before the first callback"))();
    x.both.wait();
    let mut calls = vec![("close other", close)];
    calls.extend((x.calls.get().expect("set before the first callback"))());
    let _ = x.done.lock().send(calls);
}

unsafe extern "C" fn cross_free(user: *mut libc::c_void) {
    // SAFETY: user_data came from Arc::into_raw in cross_net, and keel
    // calls this once, after the last callback.
    let x = unsafe { Arc::from_raw(user as *const Cross) };
    x.frees.fetch_add(1, SeqCst);
}

/// A net opened through the C API whose event callback runs its `Cross`.
/// A close on a reactor thread that would wait for another net's reactor
/// deadlocks these tests: the net's close-wait hook fails such a close
/// instead (the panic is caught at the C boundary), so they never hang.
fn cross_net(backend: BackendChoice, both: &Arc<std::sync::Barrier>, done: &std::sync::mpsc::Sender<Calls>) -> (Arc<Cross>, *mut c::keel_net_t) {
    let x = Arc::new(Cross {
        close: std::sync::OnceLock::new(),
        calls: std::sync::OnceLock::new(),
        both: both.clone(),
        done: Mutex::new(done.clone()),
        frees: AtomicUsize::new(0),
    });
    let net = c_net(backend, cross_event, cross_free, Arc::into_raw(x.clone()) as *mut libc::c_void);
    let hook = |at| {
        if std::thread::current().name() == Some("keel-net") {
            panic!("a close on a keel-net reactor thread waits for another net's reactor ({at:?}): deadlock");
        }
    };
    assert_eq!(c::set_net_close_wait_hook(net, Arc::new(hook)), KEEL_STATUS_OK);
    (x, net)
}

/// Net A's writer and, on net B, a writer or (`publisher`) a publisher's
/// subscriber, each on loopback TCP and cut off at once, so that both
/// event callbacks run together; each closes the other net's handle (A's
/// the writer or the publisher of B). Neither close may wait for the
/// other net's reactor, which is in a callback waiting for this one (they
/// waited, and both reactors hung for good). Each handle stays valid for
/// its own callback until that returns (sends and publishes answer
/// CLOSED, stats answer), then its reactor frees it and closes the
/// sockets.
fn closes_across_two_nets(backend: BackendChoice, publisher: bool) {
    let both = Arc::new(std::sync::Barrier::new(2));
    let (done_tx, done) = std::sync::mpsc::channel();
    let (xa, na) = cross_net(backend, &both, &done_tx);
    let (xb, nb) = cross_net(backend, &both, &done_tx);
    let (fd, peer_a) = tcp_pair();
    let mut wa = std::ptr::null_mut();
    assert_eq!(c::keel_writer_adopt(na, fd, &capped(), &mut wa, std::ptr::null_mut()), KEEL_STATUS_OK);
    let (fd, peer_b) = tcp_pair();
    // Handles as integers, so the closures are Send.
    let (wa, b) = (wa as usize, if publisher {
        let mut p = std::ptr::null_mut();
        assert_eq!(c::keel_publisher_new(nb, &capped(), &mut p, std::ptr::null_mut()), KEEL_STATUS_OK);
        let mut id = 0;
        assert_eq!(c::keel_publisher_subscribe(p, fd, &mut id, std::ptr::null_mut()), KEEL_STATUS_OK);
        p as usize
    } else {
        let mut w = std::ptr::null_mut();
        assert_eq!(c::keel_writer_adopt(nb, fd, &capped(), &mut w, std::ptr::null_mut()), KEEL_STATUS_OK);
        w as usize
    });
    let writer_calls = |w: usize| {
        let w = w as *mut c::keel_writer_t;
        let mut s = writer_stats();
        vec![
            ("send", c::keel_writer_send(w, b"late".as_ptr(), 4, 0, std::ptr::null_mut())),
            ("stats", c::keel_writer_stats(w, &mut s)),
        ]
    };
    let _ = xa.close.set(Box::new(move || match publisher {
        true => c::keel_publisher_close(b as *mut c::keel_publisher_t, std::ptr::null_mut()),
        false => c::keel_writer_close(b as *mut c::keel_writer_t, std::ptr::null_mut()),
    }));
    let _ = xa.calls.set(Box::new(move || writer_calls(wa)));
    let _ = xb.close.set(Box::new(move || c::keel_writer_close(wa as *mut c::keel_writer_t, std::ptr::null_mut())));
    let _ = xb.calls.set(Box::new(move || match publisher {
        true => {
            let p = b as *mut c::keel_publisher_t;
            // SAFETY: plain integers, valid all-zero.
            let mut s: c::keel_publisher_stats_t = unsafe { std::mem::zeroed() };
            s.struct_size = std::mem::size_of_val(&s) as u32;
            vec![
                ("publish", c::keel_publisher_publish(p, b"late".as_ptr(), 4, 0, std::ptr::null_mut())),
                ("stats", c::keel_publisher_stats(p, &mut s)),
            ]
        }
        false => writer_calls(b),
    }));
    // Over the hard cap: both cut off, each callback starts on its reactor.
    let big = [0u8; 2048];
    assert_eq!(c::keel_writer_send(wa as *mut _, big.as_ptr(), big.len(), 0, std::ptr::null_mut()), KEEL_STATUS_BUSY);
    if publisher {
        let p = b as *mut c::keel_publisher_t;
        assert_eq!(c::keel_publisher_publish(p, big.as_ptr(), big.len(), c::KEEL_PUBLISH_FLUSH, std::ptr::null_mut()), KEEL_STATUS_OK);
    } else {
        assert_eq!(c::keel_writer_send(b as *mut _, big.as_ptr(), big.len(), 0, std::ptr::null_mut()), KEEL_STATUS_BUSY);
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        // Only a watchdog: the hook fails a close that would wait.
        seen.push(done.recv_timeout(Duration::from_secs(120)).expect("the event callbacks never returned: deadlock"));
    }
    seen.sort();
    let writer_seen = vec![("close other", KEEL_STATUS_OK), ("send", KEEL_STATUS_CLOSED), ("stats", KEEL_STATUS_OK)];
    let b_seen = match publisher {
        true => vec![("close other", KEEL_STATUS_OK), ("publish", KEEL_STATUS_CLOSED), ("stats", KEEL_STATUS_OK)],
        false => writer_seen.clone(),
    };
    let mut want = vec![writer_seen, b_seen];
    want.sort();
    assert_eq!(seen, want);
    for (net, x) in [(na, &xa), (nb, &xb)] {
        assert_eq!(c::keel_net_close(net, std::ptr::null_mut()), KEEL_STATUS_OK);
        assert_eq!((x.frees.load(SeqCst), Arc::strong_count(x)), (1, 1), "user_data released once");
    }
    // Each fd was closed with nothing ever sent: its peer reads EOF.
    for mut p in [peer_a, peer_b] {
        let mut rest = Vec::new();
        p.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the peer read {} bytes", rest.len());
    }
}

fn closes_across_two_nets_do_not_deadlock(backend: BackendChoice) {
    closes_across_two_nets(backend, false);
}

fn a_publisher_closed_from_another_nets_callback_outlives_its_subscribers_callback(backend: BackendChoice) {
    closes_across_two_nets(backend, true);
}

/// Each of two nets' event callbacks closes the other net: a net's close
/// waits for its reactor thread to end, which here is in a callback
/// waiting for this one, so both must answer BUSY at once, closing
/// nothing (they waited for good). The nets then close as usual from the
/// test's thread.
fn net_close_from_another_nets_callback_is_refused(backend: BackendChoice) {
    let both = Arc::new(std::sync::Barrier::new(2));
    let (done_tx, done) = std::sync::mpsc::channel();
    let (xa, na) = cross_net(backend, &both, &done_tx);
    let (xb, nb) = cross_net(backend, &both, &done_tx);
    let mut writers = Vec::new();
    let mut peers = Vec::new();
    for net in [na, nb] {
        let (fd, peer) = tcp_pair();
        let mut w = std::ptr::null_mut();
        assert_eq!(c::keel_writer_adopt(net, fd, &capped(), &mut w, std::ptr::null_mut()), KEEL_STATUS_OK);
        writers.push(w);
        peers.push(peer);
    }
    // Handles as integers, so the closures are Send.
    let (a, b) = (na as usize, nb as usize);
    let _ = xa.close.set(Box::new(move || c::keel_net_close(b as *mut c::keel_net_t, std::ptr::null_mut())));
    let _ = xb.close.set(Box::new(move || c::keel_net_close(a as *mut c::keel_net_t, std::ptr::null_mut())));
    for x in [&xa, &xb] {
        let _ = x.calls.set(Box::new(Vec::new));
    }
    // Over the hard cap: both cut off, each callback starts on its reactor.
    for &w in &writers {
        assert_eq!(c::keel_writer_send(w, [0u8; 2048].as_ptr(), 2048, 0, std::ptr::null_mut()), KEEL_STATUS_BUSY);
    }
    for _ in 0..2 {
        // Only a watchdog: the hook fails a close that would wait.
        let seen = done.recv_timeout(Duration::from_secs(120)).expect("the event callbacks never returned: deadlock");
        assert_eq!(seen, [("close other", KEEL_STATUS_BUSY)]);
    }
    for w in writers {
        assert_eq!(c::keel_writer_close(w, std::ptr::null_mut()), KEEL_STATUS_OK);
    }
    for (net, x) in [(na, &xa), (nb, &xb)] {
        assert_eq!(c::keel_net_close(net, std::ptr::null_mut()), KEEL_STATUS_OK);
        assert_eq!((x.frees.load(SeqCst), Arc::strong_count(x)), (1, 1), "user_data released once");
    }
    for mut p in peers {
        let mut rest = Vec::new();
        p.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the peer read {} bytes", rest.len());
    }
}

macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod sendmsg {
            $( #[test] fn $name() { super::$name(keel::net::BackendChoice::Sendmsg) } )*
        }
        mod io_uring {
            $( #[test] fn $name() { super::$name(keel::net::BackendChoice::IoUring) } )*
        }
    };
}

per_backend!(
    random_sequences_arrive_byte_exact,
    short_sends_and_eagain_keep_order,
    peer_killed_mid_stream_reports_once,
    flood_respects_the_quota,
    slow_subscriber_is_cut_off,
    soft_cap_expires_without_appends,
    lone_message_and_control_items,
    adopt_refuses_bad_fds,
    net_close_flushes_queued_bytes,
    fd_adopted_by_two_nets_is_refused,
    a_dup_of_an_adopted_socket_is_refused,
    net_close_does_not_wait_for_idle_peers,
    an_empty_message_leaves_no_age,
    empty_messages_hit_the_hard_cap,
    markers_hit_the_hard_cap,
    an_idle_peer_reset_is_noticed_by_the_next_send,
    publisher_totals_never_go_backwards,
    a_full_send_with_more_left_is_not_short,
    soft_cap_restarts_once_the_queue_emptied,
    a_message_in_parts_is_one_item,
    net_close_discards_input_within_the_close_timeout,
    writer_close_waits_for_a_callback_that_calls_in,
    publisher_close_waits_for_a_callback_that_calls_in,
    net_close_waits_for_a_callback_that_calls_in,
    closes_across_two_nets_do_not_deadlock,
    a_publisher_closed_from_another_nets_callback_outlives_its_subscribers_callback,
    net_close_from_another_nets_callback_is_refused,
);

#[test]
fn default_backend_is_sendmsg() {
    let (net, _) = open_net(BackendChoice::Default);
    assert_eq!(net.backend(), keel::net::Backend::Sendmsg);
    let _unused: Option<Writer> = None;
    net.close().unwrap();
}

/// R7 for fan-out: a message above the hard cap cuts every subscriber off
/// (BUSY, "hard cap"), as keel_writer_send refuses one (BUSY), without
/// being copied first. publish copied a message of copy_threshold bytes
/// or more before any cap was looked at, so a huge one (a mapped file, a
/// wrong length) aborted the process when that allocation failed: here
/// 1 TiB, mapped and never touched. The publish runs in a child process,
/// as that abort would end the test binary.
#[test]
fn a_message_above_the_hard_cap_is_never_copied() {
    const CHILD_ENV: &str = "KEEL_WRITER_HUGE_PUBLISH";
    if std::env::var_os(CHILD_ENV).is_some() {
        return publish_above_the_hard_cap();
    }
    let common::child::Child { process: mut child, lines } =
        common::child::spawn("a_message_above_the_hard_cap_is_never_copied", &[(CHILD_ENV, "1".into())], None).unwrap();
    let reports: Vec<String> = lines.iter().collect();
    let status = child.wait().unwrap();
    assert!(status.success() && reports == ["cut off"], "the child ended with {status}, reporting {reports:?}");
}

fn publish_above_the_hard_cap() {
    const HUGE: usize = 1 << 40;
    let (net, events) = open_net(BackendChoice::Default);
    let publ = net.publisher(&WriterOptions::default()).unwrap();
    let (ours, peer) = UnixStream::pair().unwrap();
    let id = publ.subscribe(ours.into_raw_fd()).unwrap();
    // SAFETY: an anonymous read-only mapping at an address the kernel
    // picks: no pointer in, and nothing else uses the range.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), HUGE, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0)
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    // SAFETY: `p` maps HUGE readable bytes (zero pages) until the munmap
    // below, after the last use of the slice.
    let huge = unsafe { std::slice::from_raw_parts(p as *const u8, HUGE) };
    publ.publish(huge, true).unwrap();
    wait_for("the report", Duration::from_secs(10), || !events.lock().is_empty());
    let ev = events.lock().clone();
    assert_eq!((ev.len(), ev[0].0, ev[0].1), (1, id, KEEL_STATUS_BUSY), "{ev:?}");
    assert!(ev[0].2.contains("hard cap"), "{}", ev[0].2);
    assert_eq!(publ.stats().cut_off, 1);
    // SAFETY: the mapping made above, no longer borrowed (`huge` is dead).
    assert_eq!(unsafe { libc::munmap(p, HUGE) }, 0);
    drop(publ);
    drop(peer);
    net.close().unwrap();
    common::child::report("cut off\n");
}
