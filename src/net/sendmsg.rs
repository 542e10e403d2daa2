//! The default backend: sendmsg(2) with iovecs, `MSG_NOSIGNAL` (R9) and
//! `MSG_DONTWAIT` (the socket's own O_NONBLOCK flag is left alone, so a host
//! that reads from the same fd keeps its blocking mode), and epoll for
//! writability. Also the small socket helpers both backends use.

use crate::net::queue::{SendResult, Sink};
use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// Sends synchronously on the calling thread.
pub(crate) struct SyncSink {
    pub fd: RawFd,
}

impl Sink for SyncSink {
    fn send(&mut self, iov: &[libc::iovec]) -> SendResult {
        sendmsg_nb(self.fd, iov)
    }
}

/// One nonblocking sendmsg(2): EINTR is retried (R9), EAGAIN reported as
/// WouldBlock (R6), never SIGPIPE.
pub(crate) fn sendmsg_nb(fd: RawFd, iov: &[libc::iovec]) -> SendResult {
    // SAFETY: msghdr is a plain C struct for which all zeroes is a valid
    // value (no name, no control data, no flags).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: `msg` names only `iov`, whose iovecs the caller built from
        // live slices of its outbox; all are borrowed for this call and the
        // kernel only reads them during it. A bad fd is an error, not UB.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if r >= 0 {
            return SendResult::Sent(r as usize);
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return SendResult::WouldBlock,
            e => return SendResult::Failed(e),
        }
    }
}

pub(crate) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub(crate) fn errno_text(e: i32) -> String {
    io::Error::from_raw_os_error(e).to_string()
}

/// Reads and discards what the peer still sends after our
/// shutdown(SHUT_WR) (R10). Returns true when the peer is done (EOF or an
/// error) and false when the socket has nothing more right now.
pub(crate) fn discard_input(fd: RawFd) -> bool {
    discard_reads(fd, 64, None).unwrap_or(false)
}

/// keel_net_close: reads and discards everything that has arrived, since
/// the fd is closed right after and unread input would turn close(2) into
/// a RST that drops what is still in the send queue. This runs on the
/// reactor thread, which every other connection of the net waits for, so
/// a peer that never stops sending must not hold it: the reads stop at
/// 64 MiB or at the connection's close deadline (R10: after it the socket
/// is closed whatever is left), whichever comes first.
pub(crate) fn discard_arrived(fd: RawFd, deadline: Option<Instant>) {
    let _ = discard_reads(fd, (64 << 20) / 4096, deadline);
}

/// Some(true): EOF or an error; Some(false): nothing more right now;
/// None: `reads` reads done, or `deadline` passed (before any read, too),
/// and there may be more.
fn discard_reads(fd: RawFd, reads: usize, deadline: Option<Instant>) -> Option<bool> {
    let mut buf = [0u8; 4096];
    for _ in 0..reads {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        // SAFETY: `buf` is a local array of exactly buf.len() writable bytes;
        // recv writes at most that many.
        let r = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT) };
        if r > 0 {
            continue;
        }
        if r == 0 {
            return Some(true);
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Some(false),
            _ => return Some(true),
        }
    }
    None
}

/// epoll registration of connection `id` (data = id). `events` 0 keeps the
/// fd registered but disarmed (EPOLLONESHOT): only error/hangup report.
pub(crate) fn epoll_set(epfd: RawFd, op: i32, fd: RawFd, events: u32, id: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events: events | libc::EPOLLONESHOT as u32, u64: id };
    // SAFETY: `ev` is a valid epoll_event on the stack, read by the call only.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn epoll_del(epfd: RawFd, fd: RawFd) {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: `ev` is a valid epoll_event on the stack (ignored by DEL, but
    // kernels before 2.6.9 required it non-NULL); failure is harmless here.
    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, &mut ev) };
}

/// A socket itself, whatever fd refers to it: its device and inode
/// numbers, unique among open files (a dup of an fd has the same ones).
pub(crate) type SocketId = (u64, u64);

/// Checks that `fd` is a connected stream socket and sets TCP_NODELAY on
/// TCP sockets (R11); returns the socket's identity. Nothing else about
/// the fd changes.
pub(crate) fn check_socket(fd: RawFd) -> crate::Result<SocketId> {
    use crate::error::Error;
    if fd < 0 {
        return Err(Error::invalid(format!("fd {fd} is negative")));
    }
    // SAFETY: stat is a plain C struct of integers: all zeroes is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a writable stat on the stack; fstat fills only it, and
    // an fd that is not open is reported as EBADF.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(Error::invalid(format!("fd {fd} is not an open file descriptor: {}", io::Error::last_os_error())));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(Error::invalid(format!("fd {fd} is not a socket")));
    }
    let ty = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
        .map_err(|e| Error::io(format!("getsockopt(SO_TYPE) on fd {fd}"), e))?;
    if ty != libc::SOCK_STREAM {
        return Err(Error::invalid(format!("fd {fd} is not a stream socket (SO_TYPE {ty})")));
    }
    let domain = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
        .map_err(|e| Error::io(format!("getsockopt(SO_DOMAIN) on fd {fd}"), e))?;
    // SAFETY: sockaddr_storage is a plain C struct: all zeroes is valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is a writable sockaddr_storage (large enough for any
    // address family) whose size is in `len`, so getpeername stays inside it.
    if unsafe { libc::getpeername(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) } < 0 {
        let e = io::Error::last_os_error();
        return Err(Error::invalid(format!("fd {fd} is not a connected socket: {e}")));
    }
    if domain == libc::AF_INET || domain == libc::AF_INET6 {
        let one: libc::c_int = 1;
        // SAFETY: TCP_NODELAY takes an int: `one` is a live c_int and the
        // length passed is its size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(Error::io(format!("setsockopt(TCP_NODELAY) on fd {fd}"), io::Error::last_os_error()));
        }
    }
    Ok((st.st_dev, st.st_ino))
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` is a writable c_int and `len` holds its size, so the kernel
    // writes at most that much (and updates `len`).
    if unsafe { libc::getsockopt(fd, level, name, &mut v as *mut _ as *mut libc::c_void, &mut len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}
