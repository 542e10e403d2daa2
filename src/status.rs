//! Status codes shared by the engine and the C ABI.
//!
//! They are plain `u32` constants (not a Rust enum) because they cross the
//! C boundary in both directions and a foreign value must never become an
//! invalid Rust enum. Values are part of the ABI: never renumber them.

/// Result code of every fallible keel call. 0 is success.
#[allow(non_camel_case_types)]
pub type keel_status_t = u32;

/// Success.
pub const KEEL_STATUS_OK: keel_status_t = 0;
/// A required pointer argument was NULL.
pub const KEEL_STATUS_NULL_ARGUMENT: keel_status_t = 1;
/// An argument is out of range, malformed, or a handle is of the wrong type or already closed.
pub const KEEL_STATUS_INVALID_ARGUMENT: keel_status_t = 2;
/// The operating system reported an I/O error (the message names the call and the errno).
pub const KEEL_STATUS_IO: keel_status_t = 3;
/// Stored data failed validation (checksum, framing, missing or duplicated segment).
pub const KEEL_STATUS_CORRUPTION: keel_status_t = 4;
/// The requested item does not exist (for readers: no further record yet).
pub const KEEL_STATUS_NOT_FOUND: keel_status_t = 5;
/// The resource is in use (for example a directory locked by another open handle).
pub const KEEL_STATUS_BUSY: keel_status_t = 6;
/// The operation did not finish within its deadline.
pub const KEEL_STATUS_TIMEOUT: keel_status_t = 7;
/// The handle has been closed or is shutting down.
pub const KEEL_STATUS_CLOSED: keel_status_t = 8;
/// An earlier unrecoverable failure (failed write or fsync, caught panic) disabled the handle; reopen it.
pub const KEEL_STATUS_POISONED: keel_status_t = 9;
/// keel panicked inside this call; the panic was caught and the handle
/// poisoned. (A read passes on what the host's read-index callback
/// returned: PANIC from there poisons nothing.)
pub const KEEL_STATUS_PANIC: keel_status_t = 10;
/// The caller buffer is too small; the length out-parameter holds the size needed.
pub const KEEL_STATUS_BUFFER_TOO_SMALL: keel_status_t = 11;
/// The requested sequence number is below the first retained record (it was truncated).
pub const KEEL_STATUS_TRUNCATED: keel_status_t = 12;
/// This node is not the leader; the error object may carry a leader hint.
pub const KEEL_STATUS_NOT_LEADER: keel_status_t = 13;
/// The operation or option is not supported on this build or platform.
pub const KEEL_STATUS_UNSUPPORTED: keel_status_t = 14;
/// The file system is full (ENOSPC/EDQUOT); nothing was written and the
/// data stays recoverable. The log is still usable: retry once space is back.
pub const KEEL_STATUS_NO_SPACE: keel_status_t = 15;
/// The key holds the other kind of data: an append to a key that holds a
/// value (a put replaces a posting list; an append never replaces a value).
pub const KEEL_STATUS_WRONG_KIND: keel_status_t = 16;
/// The process or system ran out of a resource (EMFILE, ENFILE: too many
/// open files; ENOMEM: memory or mappings; EAGAIN: threads, as when a
/// worker thread cannot be started) before anything was written. The log
/// is still usable: retry once the resource is freed.
pub const KEEL_STATUS_RESOURCE: keel_status_t = 17;
/// A write or fence check carried a fencing token below the highest one
/// already accepted for its bucket: a newer lease holder has written since.
pub const KEEL_STATUS_FENCED: keel_status_t = 18;
/// A node refused a peer in the handshake: bad MAC, replayed handshake, no
/// common protocol version, wrong node id, or a non-loopback peer without
/// a configured secret (the message says which; docs/TRANSFER.md).
pub const KEEL_STATUS_REFUSED: keel_status_t = 19;
/// A node peer broke the wire protocol: a malformed, oversized or unknown frame.
pub const KEEL_STATUS_PROTOCOL: keel_status_t = 20;
/// The shard was handed over to another node by a transfer: it refuses
/// writes from then on (reads still work until the host drops it;
/// docs/TRANSFER.md).
pub const KEEL_STATUS_MOVED: keel_status_t = 21;

/// Whether `status` is one of the KEEL_STATUS_* values (a status from
/// outside keel, a peer's or a host callback's, may be anything).
pub(crate) fn is_known(status: keel_status_t) -> bool {
    status_name(status) != "UNKNOWN\0"
}

/// Name of a status value as a static, NUL-terminated string.
pub(crate) fn status_name(status: keel_status_t) -> &'static str {
    match status {
        KEEL_STATUS_OK => "OK\0",
        KEEL_STATUS_NULL_ARGUMENT => "NULL_ARGUMENT\0",
        KEEL_STATUS_INVALID_ARGUMENT => "INVALID_ARGUMENT\0",
        KEEL_STATUS_IO => "IO\0",
        KEEL_STATUS_CORRUPTION => "CORRUPTION\0",
        KEEL_STATUS_NOT_FOUND => "NOT_FOUND\0",
        KEEL_STATUS_BUSY => "BUSY\0",
        KEEL_STATUS_TIMEOUT => "TIMEOUT\0",
        KEEL_STATUS_CLOSED => "CLOSED\0",
        KEEL_STATUS_POISONED => "POISONED\0",
        KEEL_STATUS_PANIC => "PANIC\0",
        KEEL_STATUS_BUFFER_TOO_SMALL => "BUFFER_TOO_SMALL\0",
        KEEL_STATUS_TRUNCATED => "TRUNCATED\0",
        KEEL_STATUS_NOT_LEADER => "NOT_LEADER\0",
        KEEL_STATUS_UNSUPPORTED => "UNSUPPORTED\0",
        KEEL_STATUS_NO_SPACE => "NO_SPACE\0",
        KEEL_STATUS_WRONG_KIND => "WRONG_KIND\0",
        KEEL_STATUS_RESOURCE => "RESOURCE\0",
        KEEL_STATUS_FENCED => "FENCED\0",
        KEEL_STATUS_REFUSED => "REFUSED\0",
        KEEL_STATUS_PROTOCOL => "PROTOCOL\0",
        KEEL_STATUS_MOVED => "MOVED\0",
        _ => "UNKNOWN\0",
    }
}
