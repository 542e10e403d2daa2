//! The io_uring backend: one ring owned by the reactor thread (host
//! threads never touch it), IORING_OP_SENDMSG with at most one operation
//! in flight per socket (R8), short sends resubmitted with the suffix,
//! buffers kept alive until their completion is reaped (R10), and
//! user_data = slot + generation so completions for a recycled slot are
//! ignored. `probe` decides at run time whether the backend can be used.

use crate::net::queue::{SendResult, Sink};
use io_uring::{opcode, types, IoUring, Probe};
use std::os::fd::RawFd;

/// Kinds of operation, in the low byte of user_data.
pub(crate) const OP_SEND: u64 = 1;
pub(crate) const OP_POLLOUT: u64 = 2;
pub(crate) const OP_POLLIN: u64 = 3;
/// user_data of the eventfd poll and of cancellations (ignored).
pub(crate) const UD_WAKE: u64 = u64::MAX;
pub(crate) const UD_CANCEL: u64 = u64::MAX - 1;

pub(crate) fn user_data(slot: u32, gen: u32, kind: u64) -> u64 {
    ((slot as u64) << 32) | (((gen & 0x00ff_ffff) as u64) << 8) | kind
}

pub(crate) fn split_user_data(ud: u64) -> (u32, u32, u64) {
    ((ud >> 32) as u32, ((ud >> 8) & 0x00ff_ffff) as u32, ud & 0xff)
}

/// What a connection needs while an operation is in flight: the msghdr
/// and iovec array the kernel reads, and the operation's user_data.
pub(crate) struct ConnIo {
    /// (slot, generation) in the reactor's slot table, once assigned.
    pub slot: Option<(u32, u32)>,
    msg: Box<libc::msghdr>,
    iov: Vec<libc::iovec>,
    /// user_data of the operation in flight, for cancellation.
    pub op: Option<u64>,
    pub cancel_sent: bool,
}

// SAFETY: only the raw pointers in `msg` and `iov` keep ConnIo from being
// Send; they point at `iov` itself and into this connection's own outbox,
// carry no thread-bound state, and are written only under the connection's
// lock, so handing ConnIo to the reactor thread is sound.
unsafe impl Send for ConnIo {}

impl Default for ConnIo {
    fn default() -> Self {
        // SAFETY: msghdr is a plain C struct for which all zeroes (NULL
        // pointers, zero lengths) is a valid value.
        let msg = Box::new(unsafe { std::mem::zeroed() });
        ConnIo { slot: None, msg, iov: Vec::new(), op: None, cancel_sent: false }
    }
}

/// Pushes an SQE, submitting first when the submission queue is full.
pub(crate) fn push(ring: &mut IoUring, sqe: &io_uring::squeue::Entry) {
    loop {
        // SAFETY: the kernel must be able to use what an entry points at until
        // its completion. Entries pushed here are PollAdd and AsyncCancel
        // (an fd, a user_data: no memory) and UringSink's SendMsg, which
        // points at its connection's ConnIo msghdr and iovecs and at outbox
        // bytes: none of them is changed or freed while the send is in flight
        // (no pass runs then, R8; on_cqe frees the outbox only after the
        // completion, R10; a panicking reactor leaks them).
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return;
        }
        let _ = ring.submit();
    }
}

/// Submits a flush as one SENDMSG operation.
pub(crate) struct UringSink<'a> {
    pub ring: &'a mut IoUring,
    pub io: &'a mut ConnIo,
    pub fd: RawFd,
}

impl Sink for UringSink<'_> {
    fn send(&mut self, iov: &[libc::iovec]) -> SendResult {
        let (slot, gen) = self.io.slot.expect("slot assigned before a ring send");
        self.io.iov.clear();
        self.io.iov.extend_from_slice(iov);
        // SAFETY: msghdr is a plain C struct: all zeroes is a valid value.
        *self.io.msg = unsafe { std::mem::zeroed() };
        self.io.msg.msg_iov = self.io.iov.as_mut_ptr();
        self.io.msg.msg_iovlen = self.io.iov.len() as _;
        let ud = user_data(slot, gen, OP_SEND);
        let sqe = opcode::SendMsg::new(types::Fd(self.fd), &*self.io.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ud);
        push(self.ring, &sqe);
        self.io.op = Some(ud);
        self.io.cancel_sent = false;
        SendResult::Submitted
    }
}

/// Arms a one-shot poll for `events` on `fd` (writability after EAGAIN,
/// or input during a lingering close).
pub(crate) fn poll(ring: &mut IoUring, io: &mut ConnIo, fd: RawFd, events: u32, kind: u64) {
    let (slot, gen) = io.slot.expect("slot assigned before a ring poll");
    let ud = user_data(slot, gen, kind);
    push(ring, &opcode::PollAdd::new(types::Fd(fd), events).build().user_data(ud));
    io.op = Some(ud);
    io.cancel_sent = false;
}

/// Asks the kernel to cancel the operation in flight (close, deadline).
pub(crate) fn cancel(ring: &mut IoUring, io: &mut ConnIo) {
    if let Some(ud) = io.op {
        if !io.cancel_sent {
            push(ring, &opcode::AsyncCancel::new(ud).build().user_data(UD_CANCEL));
            io.cancel_sent = true;
        }
    }
}

/// Which step of the probe failed when io_uring was asked for and the
/// sendmsg backend runs instead (`Net::fallback`; in C the
/// KEEL_NET_FALLBACK_* codes, in this order from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// `/proc/sys/kernel/io_uring_disabled` is 2.
    Disabled,
    /// `io_uring_setup` failed: ENOSYS or EPERM from a seccomp profile or
    /// io_uring_disabled = 1, ENOMEM from a locked-memory limit, ...
    Setup,
    /// The kernel lacks EXT_ARG or NODROP (older than 5.11).
    Kernel,
    /// Registering the opcode probe failed.
    Probe,
    /// An opcode keel needs (SENDMSG, POLL_ADD, ASYNC_CANCEL) is missing.
    Opcode,
}

/// The runtime probe: io_uring must not be disabled by sysctl, ring setup
/// must succeed (seccomp profiles give ENOSYS or EPERM), and the kernel
/// must support SENDMSG, POLL_ADD, ASYNC_CANCEL and waiting with a
/// timeout (EXT_ARG). Returns the ring for the reactor, or why not.
pub(crate) fn probe() -> Result<IoUring, (Fallback, String)> {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if s.trim() == "2" {
            return Err((Fallback::Disabled, "io_uring is disabled (/proc/sys/kernel/io_uring_disabled = 2)".into()));
        }
    }
    let ring = IoUring::new(256).map_err(|e| (Fallback::Setup, format!("io_uring_setup failed: {e}")))?;
    if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
        return Err((Fallback::Kernel, "io_uring lacks EXT_ARG or NODROP (kernel older than 5.11)".into()));
    }
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| (Fallback::Probe, format!("io_uring probe failed: {e}")))?;
    for (code, name) in [
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !p.is_supported(code) {
            return Err((Fallback::Opcode, format!("io_uring does not support IORING_OP_{name}")));
        }
    }
    Ok(ring)
}
