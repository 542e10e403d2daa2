//! C API of the batched socket writers (`keel_net_*`, `keel_writer_*`,
//! `keel_publisher_*`). The rules behind it: docs/WRITER.md.

use crate::error::Error;
use crate::ffi::boundary::{close_then_free, closing_ref, in_bytes, in_packed, into_handle, out_ptr, take_handle, Opaque};
use crate::ffi::buf::copy_out_c_string;
use crate::ffi::error::keel_error_t;
use crate::ffi::versioned::{init_options, read_options, write_stats};
use crate::net::{Backend, BackendChoice, CloseWaitHook, Fallback, Net, NetOptions, Publisher, PublisherStats, Writer, WriterOptions, WriterStats};
use crate::status::*;
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A reactor: one keel thread ("keel-net") that owns the waiting side of
/// every socket adopted into it, and one send backend. Internally
/// synchronised: every call except keel_net_close() may run on any thread.
pub struct keel_net_t {
    _private: [u8; 0],
}

/// A connected stream socket adopted for batched writing
/// (keel_writer_adopt()). Internally synchronised: any thread may call
/// any function on it, except that keel_writer_close() is the last call.
pub struct keel_writer_t {
    _private: [u8; 0],
}

/// Fan-out of messages to subscriber sockets (keel_publisher_new()).
/// Internally synchronised like keel_writer_t.
pub struct keel_publisher_t {
    _private: [u8; 0],
}

/// The value behind keel_net_t: the reactor plus the host's callback, whose
/// user data is released exactly once when the net is closed.
pub struct NetHandle {
    net: Net,
    callback: Option<Arc<CCallback>>,
}

impl Opaque for keel_net_t {
    type Inner = NetHandle;
    const MAGIC: u64 = 0x6b65_656c_4e45_545f; // "keelNET_"
    const NAME: &'static str = "keel_net_t";
}

impl Opaque for keel_writer_t {
    type Inner = Writer;
    const MAGIC: u64 = 0x6b65_656c_5752_5452; // "keelWRTR"
    const NAME: &'static str = "keel_writer_t";
}

impl Opaque for keel_publisher_t {
    type Inner = Publisher;
    const MAGIC: u64 = 0x6b65_656c_5055_424c; // "keelPUBL"
    const NAME: &'static str = "keel_publisher_t";
}

/// keel_net_options_t.backend: the default backend — currently
/// KEEL_NET_BACKEND_SENDMSG (io_uring stays opt-in until benchmarks show
/// it sends no more often and is at least as fast).
pub const KEEL_NET_BACKEND_DEFAULT: u32 = 0;
/// Backend: nonblocking sendmsg(2) with iovecs and MSG_NOSIGNAL, epoll
/// for writability.
pub const KEEL_NET_BACKEND_SENDMSG: u32 = 1;
/// Backend: io_uring (IORING_OP_SENDMSG, one ring owned by the reactor
/// thread) when a run-time probe succeeds; otherwise keel falls back to
/// KEEL_NET_BACKEND_SENDMSG (io_uring disabled by sysctl, refused by a
/// seccomp profile with ENOSYS/EPERM, or a kernel older than 5.11).
/// keel_net_backend() tells which one runs.
pub const KEEL_NET_BACKEND_IO_URING: u32 = 2;

/// keel_writer_send() flag: queue the message without sending (no
/// syscall). It leaves with the next call without this flag on the same
/// writer, or keel_writer_flush(). Use it for all but the last reply of a
/// pipeline so that the whole pipeline goes out in one send.
pub const KEEL_WRITER_MORE: u32 = 1;

/// keel_publisher_publish() flag: drain right after publishing, as
/// keel_publisher_flush() does.
pub const KEEL_PUBLISH_FLUSH: u32 = 1;

/// Event callback: keel closed connection `conn_id` on its own. `status`
/// is KEEL_STATUS_IO (a send or socket error: EPIPE, ECONNRESET,
/// ENOTCONN, ETIMEDOUT, ...) or KEEL_STATUS_BUSY (the cap policy: the peer
/// did not read, see keel_writer_options_t.soft_cap_bytes/hard_cap_bytes).
/// `message` is borrowed and valid only during the call.
///
/// It runs on the keel-net reactor thread only, at most once per
/// connection, never after keel_net_close() returned and never for a
/// connection after keel_writer_close()/keel_publisher_unsubscribe() of it
/// returned. It must not block for long (it holds up every socket of the
/// net). It may call keel_writer_close() / keel_publisher_unsubscribe()
/// (also for the connection it reports, or one of another net) and any
/// send or publish function, but not keel_net_close() of any net (which
/// then returns KEEL_STATUS_BUSY). A keel_writer_close() or keel_publisher_close() on
/// a host thread waits for the callback of its connection (one on a
/// reactor thread does not wait, see those functions),
/// keel_net_close() for any callback, and the handle being closed stays
/// valid for that callback until it returns.
pub type keel_net_event_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, conn_id: u64, status: keel_status_t, message: *const c_char)>;

/// Releases a callback's user data, once: by keel_net_close() for a net's
/// event callback; for a shard's read-index see
/// keel_lease_options_t.read_index_free.
pub type keel_user_data_free_fn = Option<unsafe extern "C" fn(user: *mut c_void)>;

/// sizeof(keel_net_options_t) of version 1.
pub const KEEL_NET_OPTIONS_SIZE_V1: u32 = 32;
/// sizeof(keel_writer_options_t) of version 1.
pub const KEEL_WRITER_OPTIONS_SIZE_V1: u32 = 56;
/// sizeof(keel_writer_stats_t) of version 1.
pub const KEEL_WRITER_STATS_SIZE_V1: u32 = 184;
/// sizeof(keel_publisher_stats_t) of version 1.
pub const KEEL_PUBLISHER_STATS_SIZE_V1: u32 = 64;

/// Options of keel_net_open(). Versioned by `struct_size` (docs/FFI.md,
/// "Versioned structs"): fill it with keel_net_options_init_sized(&o,
/// sizeof o) first, then change the fields you need.
#[repr(C)]
pub struct keel_net_options_t {
    /// sizeof(keel_net_options_t) as the caller compiled it.
    pub struct_size: u32,
    /// KEEL_NET_BACKEND_*; default KEEL_NET_BACKEND_DEFAULT.
    pub backend: u32,
    /// Event callback (see keel_net_event_fn); NULL for none.
    pub on_event: keel_net_event_fn,
    /// Passed to on_event as `user`; keel never dereferences it.
    pub user_data: *mut c_void,
    /// Called with user_data once keel_net_close() has stopped the reactor
    /// (after the last callback); NULL for none.
    pub user_data_free: keel_user_data_free_fn,
}

/// Per-connection limits of keel_writer_adopt() and of a publisher's
/// subscribers. Versioned by `struct_size` (docs/FFI.md, "Versioned
/// structs"): fill it with keel_writer_options_init_sized(&o, sizeof o)
/// first, then change the fields you need.
#[repr(C)]
pub struct keel_writer_options_t {
    /// sizeof(keel_writer_options_t) as the caller compiled it.
    pub struct_size: u32,
    /// Items (messages) one drain pass handles before it flushes and
    /// yields; 1 to 1000000, default 100.
    pub quota: u32,
    /// A batch is flushed once it holds this many bytes; 1 to 64 MiB,
    /// default 65536.
    pub max_batch_bytes: u64,
    /// Messages of at least this many bytes are held by reference (one
    /// copy shared by every subscriber); smaller ones are copied into the
    /// connection's buffer. Default 4096.
    pub copy_threshold: u64,
    /// Soft cap: when more than this many bytes are queued (appended, not
    /// yet accepted by the kernel; each message still queued counts 40
    /// bytes more for its bookkeeping, so empty messages count too) for
    /// longer than soft_cap_ms, keel closes the connection and reports
    /// KEEL_STATUS_BUSY. 0 disables it. Default 8 MiB.
    pub soft_cap_bytes: u64,
    /// Hard cap: an append that would queue more than this many bytes
    /// (counted as for soft_cap_bytes) closes the connection at once
    /// (KEEL_STATUS_BUSY). 0 disables it.
    /// Must not be below soft_cap_bytes. Default 32 MiB.
    pub hard_cap_bytes: u64,
    /// iovecs per send; 1 to 1024 (IOV_MAX), default 1024.
    pub iov_max: u32,
    /// See soft_cap_bytes; at most 86400000, default 60000.
    pub soft_cap_ms: u32,
    /// Closing a writer flushes what is queued, shuts the socket down for
    /// writing and reads the peer's input until EOF; after this many
    /// milliseconds the socket is closed whatever is left. At most
    /// 600000, default 2000.
    pub close_timeout_ms: u32,
}

/// Counters of one writer or subscriber (keel_writer_stats(),
/// keel_publisher_subscriber_stats()). Set struct_size to
/// sizeof(keel_writer_stats_t) before the call; keel writes only the
/// fields both sides know and sets struct_size to their size (docs/FFI.md,
/// "Versioned structs"). Batch density is items_sent / sends.
#[repr(C)]
pub struct keel_writer_stats_t {
    /// sizeof(keel_writer_stats_t) as the caller compiled it.
    pub struct_size: u32,
    /// Send calls: sendmsg(2) syscalls plus io_uring SENDMSG operations.
    pub sends: u64,
    /// Of sends, those submitted to io_uring.
    pub uring_sends: u64,
    /// Sends of a lone message on an idle connection, made on the
    /// caller's thread before keel_writer_send() returned.
    pub immediate_sends: u64,
    /// Bytes the kernel accepted.
    pub bytes_sent: u64,
    /// Messages appended.
    pub items: u64,
    /// Messages handed to a send (a zero-length message counts once it
    /// reaches the front, with no send of its own); reaches `items` once
    /// everything appended went out.
    pub items_sent: u64,
    /// Control items appended (close requests).
    pub control_items: u64,
    /// Drain passes, and those that batched (two or more messages queued
    /// when the pass started).
    pub passes: u64,
    pub batched_passes: u64,
    /// Flushes by reason: the last queued message was done; the batch
    /// reached max_batch_bytes; it reached iov_max; the pass reached its
    /// quota; a fence; a close.
    pub flush_idle: u64,
    pub flush_size: u64,
    pub flush_iovec: u64,
    pub flush_quota: u64,
    pub flush_wait: u64,
    pub flush_close: u64,
    /// Sends the kernel took only part of, and sends refused with EAGAIN.
    pub short_sends: u64,
    pub eagain: u64,
    /// Times the connection waited for the socket to become writable.
    pub writable_waits: u64,
    /// Most messages one send carried.
    pub max_items_per_send: u64,
    /// Bytes appended and not yet accepted by the kernel, now.
    pub queued_bytes: u64,
    /// Age of the oldest byte the kernel has not taken yet, now (ns; 0 if
    /// none), counted from the append of the first item of its batch.
    pub oldest_unflushed_ns: u64,
    /// Longest time a byte waited between its append and its first send (ns).
    pub max_flush_wait_ns: u64,
}

/// Counters of a publisher (keel_publisher_stats()). Set struct_size to
/// sizeof(keel_publisher_stats_t) before the call; keel writes only the
/// fields both sides know and sets struct_size to their size. The send counters are
/// summed over every subscriber the publisher ever had (an unsubscribed
/// one counts as it was when it left), so they never go backwards.
#[repr(C)]
pub struct keel_publisher_stats_t {
    /// sizeof(keel_publisher_stats_t) as the caller compiled it.
    pub struct_size: u32,
    /// Messages published.
    pub published: u64,
    /// Drain points (keel_publisher_flush() and KEEL_PUBLISH_FLUSH).
    pub flushes: u64,
    /// Subscribers still open.
    pub subscribers: u64,
    /// Subscribers keel closed (caps, errors) not yet unsubscribed.
    pub cut_off: u64,
    pub sends: u64,
    pub bytes_sent: u64,
    pub items_sent: u64,
}

versioned!(keel_net_options_t, [KEEL_NET_OPTIONS_SIZE_V1]);
versioned!(keel_writer_options_t, [KEEL_WRITER_OPTIONS_SIZE_V1]);
versioned!(keel_writer_stats_t, [KEEL_WRITER_STATS_SIZE_V1]);
versioned!(keel_publisher_stats_t, [KEEL_PUBLISHER_STATS_SIZE_V1]);

/// The host's callback and user data, shared with the reactor.
struct CCallback {
    f: unsafe extern "C" fn(*mut c_void, u64, keel_status_t, *const c_char),
    user: usize,
    free: keel_user_data_free_fn,
    freed: AtomicBool,
}

impl CCallback {
    fn release(&self) {
        if !self.freed.swap(true, Ordering::AcqRel) {
            if let Some(free) = self.free {
                // SAFETY: the host registered `free` for `user` (its
                // user_data) to be called once when keel is done with it; the
                // swap above makes this the only call, and release() runs only
                // after the net closed, so no callback uses `user` any more.
                unsafe { free(self.user as *mut c_void) };
            }
        }
    }
}

fn default_net_options() -> keel_net_options_t {
    keel_net_options_t {
        struct_size: KEEL_NET_OPTIONS_SIZE_V1,
        backend: KEEL_NET_BACKEND_DEFAULT,
        on_event: None,
        user_data: std::ptr::null_mut(),
        user_data_free: None,
    }
}

fn default_writer_options() -> keel_writer_options_t {
    let d = WriterOptions::default();
    keel_writer_options_t {
        struct_size: KEEL_WRITER_OPTIONS_SIZE_V1,
        quota: d.quota as u32,
        max_batch_bytes: d.max_batch_bytes as u64,
        copy_threshold: d.copy_threshold as u64,
        soft_cap_bytes: d.soft_cap_bytes,
        hard_cap_bytes: d.hard_cap_bytes,
        iov_max: d.iov_max as u32,
        soft_cap_ms: d.soft_cap.as_millis() as u32,
        close_timeout_ms: d.close_timeout.as_millis() as u32,
    }
}

/// Fills the version-1 fields of `*opts` (KEEL_NET_OPTIONS_SIZE_V1 bytes,
/// never more) with the defaults (backend DEFAULT, no callback) and sets
/// struct_size to KEEL_NET_OPTIONS_SIZE_V1. New code calls
/// keel_net_options_init_sized(). Errors: NULL_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_net_options_init(opts: *mut keel_net_options_t) -> keel_status_t {
    keel_net_options_init_sized(opts, KEEL_NET_OPTIONS_SIZE_V1 as usize)
}

/// Fills the `size` bytes at `opts` (pass sizeof *opts) with the defaults:
/// the fields this library knows, zero past them, and struct_size = size.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (size below
/// KEEL_NET_OPTIONS_SIZE_V1 or between two published sizes).
#[no_mangle]
pub extern "C" fn keel_net_options_init_sized(opts: *mut keel_net_options_t, size: usize) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        init_options(opts, size, default_net_options())
    })
}

/// Fills the version-1 fields of `*opts` (KEEL_WRITER_OPTIONS_SIZE_V1
/// bytes, never more) with the defaults listed on each field and sets
/// struct_size to KEEL_WRITER_OPTIONS_SIZE_V1. New code calls
/// keel_writer_options_init_sized(). Errors: NULL_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_writer_options_init(opts: *mut keel_writer_options_t) -> keel_status_t {
    keel_writer_options_init_sized(opts, KEEL_WRITER_OPTIONS_SIZE_V1 as usize)
}

/// Fills the `size` bytes at `opts` (pass sizeof *opts) with the defaults:
/// the fields this library knows, zero past them, and struct_size = size.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (size below
/// KEEL_WRITER_OPTIONS_SIZE_V1 or between two published sizes).
#[no_mangle]
pub extern "C" fn keel_writer_options_init_sized(opts: *mut keel_writer_options_t, size: usize) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        init_options(opts, size, default_writer_options())
    })
}

fn writer_options_from_c(opts: *const keel_writer_options_t) -> crate::Result<WriterOptions> {
    if opts.is_null() {
        return Ok(WriterOptions::default());
    }
    let o = read_options(opts, default_writer_options(), "keel_writer_options_init_sized")?;
    let max_batch_bytes = usize::try_from(o.max_batch_bytes).map_err(|_| Error::invalid("max_batch_bytes is too large"))?;
    let copy_threshold = usize::try_from(o.copy_threshold).unwrap_or(usize::MAX);
    let w = WriterOptions {
        max_batch_bytes,
        quota: o.quota as usize,
        copy_threshold,
        iov_max: o.iov_max as usize,
        soft_cap_bytes: o.soft_cap_bytes,
        soft_cap: Duration::from_millis(o.soft_cap_ms as u64),
        hard_cap_bytes: o.hard_cap_bytes,
        close_timeout: Duration::from_millis(o.close_timeout_ms as u64),
    };
    w.validate()?;
    Ok(w)
}

/// Starts a reactor thread with the backend `opts` asks for (NULL: the
/// defaults). On success `*out` receives a handle to release with
/// keel_net_close(), which calls `user_data_free` once. On failure keel
/// never calls `user_data_free`: `user_data` is still the caller's.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (struct_size, backend out of
/// range), RESOURCE (out of descriptors, memory or threads creating the
/// eventfd, the epoll instance or the thread: nothing is left open; retry
/// once freed), IO (they could not be created for another reason).
#[no_mangle]
pub extern "C" fn keel_net_open(
    opts: *const keel_net_options_t,
    out: *mut *mut keel_net_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        let out = out_ptr(out, "out")?;
        let mut options = NetOptions::default();
        let mut callback = None;
        if !opts.is_null() {
            let o = read_options(opts, default_net_options(), "keel_net_options_init_sized")?;
            options.backend = Some(match o.backend {
                KEEL_NET_BACKEND_DEFAULT => BackendChoice::Default,
                KEEL_NET_BACKEND_SENDMSG => BackendChoice::Sendmsg,
                KEEL_NET_BACKEND_IO_URING => BackendChoice::IoUring,
                other => return Err(Error::invalid(format!("backend {other} is not a KEEL_NET_BACKEND_* value"))),
            });
            if let Some(f) = o.on_event {
                let cb = Arc::new(CCallback { f, user: o.user_data as usize, free: o.user_data_free, freed: AtomicBool::new(false) });
                let c = cb.clone();
                options.on_event = Some(Arc::new(move |id, status, msg: &str| {
                    let m = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
                    // SAFETY: `f` is the host's non-NULL keel_net_event_fn
                    // (an Option of fn pointer), called with the user_data
                    // registered beside it, which stays the host's until
                    // user_data_free at close, after the last callback; `m`
                    // is a NUL-terminated string alive for the whole call.
                    unsafe { (c.f)(c.user as *mut c_void, id, status, m.as_ptr()) };
                }));
                callback = Some(cb);
            } else if let Some(free) = o.user_data_free {
                // No callback: the user data is still released at close.
                callback = Some(Arc::new(CCallback {
                    f: noop_event,
                    user: o.user_data as usize,
                    free: Some(free),
                    freed: AtomicBool::new(false),
                }));
            }
        }
        // On failure nothing is released: user_data stays the caller's.
        let net = Net::open(options)?;
        *out = into_handle::<keel_net_t>(NetHandle { net, callback });
        Ok(())
    })
}

/// Test-only and not in keel.h (no C symbol): installs
/// `Net::set_close_wait_hook` on a net opened with keel_net_open(), so that
/// a Rust test can drive the C API through a close that waits for a running
/// event callback. Errors: as keel_net_backend().
#[doc(hidden)]
pub fn set_net_close_wait_hook(net: *const keel_net_t, hook: CloseWaitHook) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), net, {
        try_handle!(net).net.set_close_wait_hook(hook);
        Ok(())
    })
}

unsafe extern "C" fn noop_event(_: *mut c_void, _: u64, _: keel_status_t, _: *const c_char) {}

/// Writes the backend that runs (KEEL_NET_BACKEND_SENDMSG or
/// KEEL_NET_BACKEND_IO_URING) to `*out`.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_net_backend(net: *const keel_net_t, out: *mut u32) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), net, {
        let n = try_handle!(net);
        *out_ptr(out, "out")? = match n.net.backend() {
            Backend::Sendmsg => KEEL_NET_BACKEND_SENDMSG,
            Backend::IoUring => KEEL_NET_BACKEND_IO_URING,
        };
        Ok(())
    })
}

/// Closes every writer and subscriber of the net (what they queued is
/// flushed, each within its close_timeout_ms), stops the reactor thread,
/// then calls user_data_free. It waits for queued bytes only, never for an
/// idle peer's EOF: once a connection is flushed it is half-closed, what
/// already arrived is read (up to 64 MiB, and never past the
/// connection's close_timeout_ms: a peer that keeps sending does not hold
/// the net's other connections) and the fd closed (also for writers
/// closed earlier that were still waiting for their peer). An fd adopted here
/// cannot be adopted by another net until keel closed it (INVALID_ARGUMENT).
/// No callback runs after it returns; one running meanwhile may still
/// call in on the net, whose handle stays valid until then: there
/// keel_writer_adopt() and keel_publisher_new() answer CLOSED,
/// keel_net_backend() and _fallback() answer as usual, and
/// keel_net_close() answers BUSY. Writer and publisher handles stay valid
/// and answer KEEL_STATUS_CLOSED; close them as usual. NULL is a no-op
/// returning OK. Must not race with other calls on the net handle from
/// the host's own threads.
/// Errors: BUSY (called from an event callback, of this net or another:
/// the close would wait for a reactor thread to end, which may be waiting
/// for this one; nothing was closed), POISONED (the reactor thread had panicked; the handle is freed anyway),
/// INVALID_ARGUMENT (not a live handle).
#[no_mangle]
pub extern "C" fn keel_net_close(net: *mut keel_net_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        if net.is_null() {
            return Ok(());
        }
        // Stopped in place, the handle live: an event callback running
        // until the reactor thread ends may call in on it. SAFETY: by the
        // C contract `net` is a net keel made and this is the host's last
        // call on it, racing with no other call of the host's; only this
        // call frees the handle, once the reactor thread has ended.
        // closing_ref checks the magic (not the poison mark: a net whose
        // reactor panicked is freed all the same), and the NetHandle is
        // shared-borrowed, which its methods allow.
        let n = unsafe { closing_ref(net as *const keel_net_t)? };
        if n.net.on_a_reactor_thread() {
            return Err(Error::new(KEEL_STATUS_BUSY, "keel_net_close() cannot be called from an event callback (of any net)"));
        }
        let result = n.net.stop();
        // SAFETY: as above; the reactor thread, the only one that runs
        // callbacks, has ended, and take_handle checks the magic before it
        // takes the handle back.
        let Some(h) = (unsafe { take_handle(net)? }) else { return Ok(()) };
        if let Some(cb) = h.callback {
            cb.release();
        }
        result
    })
}

/// Adopts `fd`, a connected stream socket (TCP or Unix), as a writer.
/// On success keel owns the fd: it sets TCP_NODELAY on TCP sockets, sends
/// with MSG_NOSIGNAL|MSG_DONTWAIT (the fd's O_NONBLOCK flag is not
/// changed) and closes the fd when the writer is closed; the host must not
/// write to it or close it, and may keep reading from it until it calls
/// keel_writer_close(). On failure the fd is untouched and still the
/// caller's. `opts` may be NULL for the defaults. `*out` receives the
/// writer, released with keel_writer_close().
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (negative or closed fd, not a
/// socket, not a stream socket, not connected, already adopted by a net of
/// this process (this one or another) as a writer or a subscriber, through
/// this fd or another fd of the same socket such as a dup (until keel has
/// closed that fd), bad
/// option), RESOURCE (out of memory, or the epoll watch limit
/// `fs.epoll.max_user_watches` reached; the fd is still the caller's),
/// IO, CLOSED (the net is closed).
#[no_mangle]
pub extern "C" fn keel_writer_adopt(
    net: *const keel_net_t,
    fd: c_int,
    opts: *const keel_writer_options_t,
    out: *mut *mut keel_writer_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, net, {
        let n = try_handle!(net);
        let out = out_ptr(out, "out")?;
        let o = writer_options_from_c(opts)?;
        *out = into_handle::<keel_writer_t>(n.net.adopt(fd, &o)?);
        Ok(())
    })
}

/// Writes the writer's connection id (the `conn_id` of the event
/// callback) to `*out`. Ids are unique within a net and never reused.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_writer_id(writer: *const keel_writer_t, out: *mut u64) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), writer, {
        *out_ptr(out, "out")? = try_handle!(writer).id();
        Ok(())
    })
}

fn check_flags(flags: u32, known: u32, name: &str) -> crate::Result<()> {
    if flags & !known != 0 {
        return Err(Error::invalid(format!("flags {flags:#x} has bits that are not {name}")));
    }
    Ok(())
}

/// Appends one message of `len` bytes (copied; `data` may be NULL when len
/// is 0). When nothing else is pending it is sent on the calling thread
/// before the call returns (one send); otherwise it is queued behind the
/// pending messages and leaves with them in as few sends as possible.
/// Never blocks: when the socket is full the rest waits for writability on
/// the reactor thread. `flags`: 0 or KEEL_WRITER_MORE.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (unknown flag), CLOSED (the
/// writer was closed by keel earlier — the message names why — or the net
/// is closed), IO (the send failed now; the connection is closed and the
/// event callback reports it once), BUSY (the hard cap, or the soft cap
/// exceeded for longer than soft_cap_ms: the connection is closed by
/// policy and reported).
#[no_mangle]
pub extern "C" fn keel_writer_send(
    writer: *const keel_writer_t,
    data: *const u8,
    len: usize,
    flags: u32,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, writer, {
        let w = try_handle!(writer);
        check_flags(flags, KEEL_WRITER_MORE, "KEEL_WRITER_MORE")?;
        let data = in_bytes(data, len, "data")?;
        w.send(data, flags & KEEL_WRITER_MORE != 0)
    })
}

/// Appends `count` messages at once, packed back to back in `data` with
/// `lens[i]` the length of message i (no pointer array, which suits cgo).
/// They are accepted all or none (caps) and drained together: a pipeline
/// of N replies leaves in one send per `quota` messages. `flags`: 0 or
/// KEEL_WRITER_MORE. count 0 is INVALID_ARGUMENT.
/// Errors: as keel_writer_send().
#[no_mangle]
pub extern "C" fn keel_writer_send_batch(
    writer: *const keel_writer_t,
    data: *const u8,
    lens: *const usize,
    count: usize,
    flags: u32,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, writer, {
        let w = try_handle!(writer);
        check_flags(flags, KEEL_WRITER_MORE, "KEEL_WRITER_MORE")?;
        if count == 0 {
            return Err(Error::invalid("a batch needs at least one message"));
        }
        let parts = in_packed(data, lens, count, "data")?;
        w.send_batch(&parts, flags & KEEL_WRITER_MORE != 0)
    })
}

/// Drains what KEEL_WRITER_MORE left queued (as a send without the flag
/// would). Errors: as keel_writer_send().
#[no_mangle]
pub extern "C" fn keel_writer_flush(writer: *const keel_writer_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, writer, { try_handle!(writer).flush() })
}

fn stats_out(s: &WriterStats, out: *mut keel_writer_stats_t) -> crate::Result<()> {
    let value = keel_writer_stats_t {
        struct_size: KEEL_WRITER_STATS_SIZE_V1,
        sends: s.sends,
        uring_sends: s.uring_sends,
        immediate_sends: s.immediate_sends,
        bytes_sent: s.bytes_sent,
        items: s.items,
        items_sent: s.items_sent,
        control_items: s.control_items,
        passes: s.passes,
        batched_passes: s.batched_passes,
        flush_idle: s.flush_idle,
        flush_size: s.flush_size,
        flush_iovec: s.flush_iovec,
        flush_quota: s.flush_quota,
        flush_wait: s.flush_wait,
        flush_close: s.flush_close,
        short_sends: s.short_sends,
        eagain: s.eagain,
        writable_waits: s.writable_waits,
        max_items_per_send: s.max_items_per_send,
        queued_bytes: s.queued_bytes,
        oldest_unflushed_ns: s.oldest_unflushed_ns,
        max_flush_wait_ns: s.max_flush_wait_ns,
    };
    write_stats(out, value)
}

/// Copies the writer's counters into `*out` (set out->struct_size first).
/// Works on writers keel has closed (the counters stay readable).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (struct_size too small, not a
/// live handle).
#[no_mangle]
pub extern "C" fn keel_writer_stats(writer: *const keel_writer_t, out: *mut keel_writer_stats_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), writer, {
        let w = try_handle!(writer);
        stats_out(&w.stats(), out)
    })
}

/// Closes the writer and frees the handle: what is queued is still sent,
/// then the socket is shut down for writing, the peer's input is read
/// until EOF and the fd is closed — on the reactor thread, within
/// close_timeout_ms; the call itself does not wait for that. No event
/// callback for this writer starts after it returns; until one already
/// running has returned the handle stays valid for it: there
/// keel_writer_send(), _send_batch() and _flush() answer CLOSED,
/// keel_writer_id() and _stats() answer as usual, and
/// keel_writer_close() of this writer answers BUSY and frees nothing.
/// Called on a host thread, it waits for that callback. Called from an
/// event callback (of this net, also for the connection it reports, or
/// of another net) it never waits: it marks the writer closed and the
/// writer's own reactor frees the handle once its running callback
/// returns, so two nets whose callbacks close each other's writers do
/// not deadlock. NULL is a no-op returning OK. Must be the last call on
/// the writer from the host's own threads.
/// Errors: INVALID_ARGUMENT (not a live handle), BUSY (called from the
/// writer's event callback while another thread closes it: nothing is
/// done, that close frees the handle).
#[no_mangle]
pub extern "C" fn keel_writer_close(writer: *mut keel_writer_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        // SAFETY: by the C contract `writer` is NULL or a writer keel made
        // and this is the host's last call on it; the writer's event
        // callback, which `shut` waits for or (on a reactor thread) the
        // release waits for, may call in until then (every Writer method
        // takes a shared reference).
        unsafe {
            close_then_free(writer, |w| w.shut().map(|after| move |free| after.run(free)))
        }
    })
}

/// Creates a publisher on `net`; its subscribers use `sub_opts` (NULL: the
/// defaults). `*out` receives the handle, released with
/// keel_publisher_close().
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (bad option), CLOSED.
#[no_mangle]
pub extern "C" fn keel_publisher_new(
    net: *const keel_net_t,
    sub_opts: *const keel_writer_options_t,
    out: *mut *mut keel_publisher_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, net, {
        let n = try_handle!(net);
        let out = out_ptr(out, "out")?;
        let o = writer_options_from_c(sub_opts)?;
        *out = into_handle::<keel_publisher_t>(n.net.publisher(&o)?);
        Ok(())
    })
}

/// Adopts connected stream socket `fd` as a subscriber (ownership as in
/// keel_writer_adopt()) and writes its id to `*out_id` (the `conn_id` of
/// the event callback). A subscriber receives every message published
/// after this call.
/// Errors: as keel_writer_adopt().
#[no_mangle]
pub extern "C" fn keel_publisher_subscribe(
    publisher: *const keel_publisher_t,
    fd: c_int,
    out_id: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, publisher, {
        let p = try_handle!(publisher);
        let out_id = out_ptr(out_id, "out_id")?;
        *out_id = p.subscribe(fd)?;
        Ok(())
    })
}

/// Removes subscriber `id` and closes its socket as keel_writer_close()
/// does (queued messages are still sent). Also the way to release a
/// subscriber keel cut off. No event callback for it starts after this
/// returns.
/// Errors: NOT_FOUND (no such subscriber), NULL_ARGUMENT, INVALID_ARGUMENT, CLOSED.
#[no_mangle]
pub extern "C" fn keel_publisher_unsubscribe(
    publisher: *const keel_publisher_t,
    id: u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, publisher, { try_handle!(publisher).unsubscribe(id) })
}

/// Publishes one message of `len` bytes to every open subscriber: it is
/// copied once (held by reference when at least copy_threshold bytes long,
/// else copied into each subscriber's buffer), queued and the subscriber
/// marked dirty. Makes no syscall: the messages leave at the next drain
/// point, keel_publisher_flush() or KEEL_PUBLISH_FLUSH, where each dirty
/// subscriber gets one send. A subscriber over its caps is cut off and
/// reported through the event callback (after the next drain point); it
/// never slows the others. A message above the hard cap on its own is
/// never copied: it cuts every open subscriber off (KEEL_STATUS_BUSY), as
/// keel_writer_send() refuses one. `flags`: 0 or KEEL_PUBLISH_FLUSH.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (unknown flag), CLOSED.
#[no_mangle]
pub extern "C" fn keel_publisher_publish(
    publisher: *const keel_publisher_t,
    data: *const u8,
    len: usize,
    flags: u32,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, publisher, {
        let p = try_handle!(publisher);
        check_flags(flags, KEEL_PUBLISH_FLUSH, "KEEL_PUBLISH_FLUSH")?;
        let data = in_bytes(data, len, "data")?;
        p.publish(data, flags & KEEL_PUBLISH_FLUSH != 0)
    })
}

/// The drain point: every subscriber with messages pending gets one drain
/// (one send per `quota` messages) — on the calling thread with the
/// sendmsg backend, unless its socket is full (then on the reactor when
/// it becomes writable); with io_uring on the reactor thread, except a
/// lone message, which is sent here. Send errors concern one subscriber
/// and are reported through the event callback, not here.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT, CLOSED.
#[no_mangle]
pub extern "C" fn keel_publisher_flush(publisher: *const keel_publisher_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, publisher, { try_handle!(publisher).flush() })
}

/// Copies the publisher's counters into `*out` (set out->struct_size first).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_publisher_stats(publisher: *const keel_publisher_t, out: *mut keel_publisher_stats_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), publisher, {
        let p = try_handle!(publisher);
        let PublisherStats { published, flushes, subscribers, cut_off, sends, bytes_sent, items_sent } = p.stats();
        let value = keel_publisher_stats_t {
            struct_size: KEEL_PUBLISHER_STATS_SIZE_V1,
            published,
            flushes,
            subscribers,
            cut_off,
            sends,
            bytes_sent,
            items_sent,
        };
        write_stats(out, value)
    })
}

/// Copies the counters of subscriber `id` into `*out` (set
/// out->struct_size first).
/// Errors: NOT_FOUND, NULL_ARGUMENT, INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_publisher_subscriber_stats(
    publisher: *const keel_publisher_t,
    id: u64,
    out: *mut keel_writer_stats_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, publisher, {
        let p = try_handle!(publisher);
        stats_out(&p.subscriber_stats(id)?, out)
    })
}

/// Unsubscribes every subscriber (queued messages are still sent, see
/// keel_publisher_unsubscribe()) and frees the handle. No event callback
/// for its subscribers starts after it returns; until one already
/// running has returned the handle stays valid for it: there
/// keel_publisher_publish(), _flush(), _subscribe() and _unsubscribe()
/// answer CLOSED, keel_publisher_stats() answers as usual, and
/// keel_publisher_close() of this publisher answers BUSY and frees
/// nothing. Called on a host thread, it waits for that callback. Called
/// from an event callback (of this net or another) it never waits: the
/// publisher's own reactor frees the handle once its running callback
/// returns. NULL is a no-op returning OK. Must be the last call on the
/// publisher from the host's own threads.
/// Errors: INVALID_ARGUMENT (not a live handle), BUSY (called from a
/// subscriber's event callback while another thread closes the publisher:
/// nothing is done, that close frees the handle).
#[no_mangle]
pub extern "C" fn keel_publisher_close(publisher: *mut keel_publisher_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        // SAFETY: by the C contract `publisher` is NULL or a publisher keel
        // made and this is the host's last call on it; its subscribers'
        // event callbacks, which `shut` waits for or (on a reactor thread)
        // the release waits for, may call in until then (every Publisher
        // method takes a shared reference).
        unsafe { close_then_free(publisher, |p| p.shut().map(|after| move |free| after.run(free))) }
    })
}

/// keel_net_fallback() code: no fallback (io_uring runs, or was not asked for).
pub const KEEL_NET_FALLBACK_NONE: u32 = 0;
/// keel_net_fallback() code: io_uring is disabled by sysctl
/// (/proc/sys/kernel/io_uring_disabled = 2).
pub const KEEL_NET_FALLBACK_DISABLED: u32 = 1;
/// keel_net_fallback() code: io_uring_setup failed — ENOSYS or EPERM from a
/// seccomp profile (containers) or io_uring_disabled = 1, ENOMEM from the
/// locked-memory limit; the message names the error.
pub const KEEL_NET_FALLBACK_SETUP: u32 = 2;
/// keel_net_fallback() code: the kernel lacks IORING_FEAT_EXT_ARG or
/// IORING_FEAT_NODROP (older than 5.11).
pub const KEEL_NET_FALLBACK_KERNEL: u32 = 3;
/// keel_net_fallback() code: registering the io_uring opcode probe failed.
pub const KEEL_NET_FALLBACK_PROBE: u32 = 4;
/// keel_net_fallback() code: the kernel lacks an opcode keel needs
/// (SENDMSG, POLL_ADD or ASYNC_CANCEL; the message names it).
pub const KEEL_NET_FALLBACK_OPCODE: u32 = 5;

/// Why the net runs the sendmsg backend although KEEL_NET_BACKEND_IO_URING
/// was asked for, decided once at keel_net_open(). Writes a
/// KEEL_NET_FALLBACK_* code to `*out_code` (KEEL_NET_FALLBACK_NONE when
/// io_uring runs or was not asked for) and the message ("" for NONE) with
/// its terminating NUL into `buf` (`cap` bytes, owned by the caller; keel
/// allocates nothing); `*out_len` receives the message size including the
/// NUL. Any thread may call it while the net is open.
/// Errors: NULL_ARGUMENT (net, out_code or out_len NULL), INVALID_ARGUMENT (not
/// a live net), BUFFER_TOO_SMALL (nothing written but `*out_len`, the size
/// needed: call again with a buffer that large).
#[no_mangle]
pub extern "C" fn keel_net_fallback(
    net: *const keel_net_t,
    out_code: *mut u32,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, net, {
        let n = try_handle!(net);
        let out_code = out_ptr(out_code, "out_code")?;
        let out_len = out_ptr(out_len, "out_len")?;
        let (code, why) = match n.net.fallback() {
            None => (KEEL_NET_FALLBACK_NONE, ""),
            Some((f, why)) => (
                match f {
                    Fallback::Disabled => KEEL_NET_FALLBACK_DISABLED,
                    Fallback::Setup => KEEL_NET_FALLBACK_SETUP,
                    Fallback::Kernel => KEEL_NET_FALLBACK_KERNEL,
                    Fallback::Probe => KEEL_NET_FALLBACK_PROBE,
                    Fallback::Opcode => KEEL_NET_FALLBACK_OPCODE,
                },
                why,
            ),
        };
        copy_out_c_string(why, buf, cap, out_len)?;
        *out_code = code;
        Ok(())
    })
}
