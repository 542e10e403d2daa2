//! Reads at a consistency level from C: `keel_read_options_t` and read
//! sessions (`keel_shard_read_begin` / `_end`). The `_ex` reads themselves
//! are in shard.rs, beside the reads they extend.

use crate::error::Error;
use crate::ffi::boundary::{handle_ref, into_handle, out_ptr, take_handle, Opaque};
use crate::ffi::consensus::{level_from_c, KEEL_READ_DEFAULT};
use crate::ffi::error::keel_error_t;
use crate::ffi::shard::keel_shard_t;
use crate::ffi::versioned::{init_options, read_options};
use crate::lease::ReadPermit;
use crate::shard::Shard;
use crate::status::*;
use std::time::Duration;

/// A read session: reads that name it in keel_read_options_t.session see
/// at least the state at the session's start, as its level required it,
/// without another lease check or read-index (a request of several reads
/// costs at most one read-index). Not tied to a thread; several threads
/// may read under one session at once. Free it with keel_shard_read_end()
/// before closing its shard.
pub struct keel_read_session_t {
    _private: [u8; 0],
}

pub struct Session {
    shard: Shard,
    permit: ReadPermit,
}

impl Opaque for keel_read_session_t {
    type Inner = Session;
    const MAGIC: u64 = 0x6b65_656c_5253_534e; // "keelRSSN"
    const NAME: &'static str = "keel_read_session_t";
}

/// sizeof(keel_read_options_t) of version 1.
pub const KEEL_READ_OPTIONS_SIZE_V1: u32 = 24;

/// Options of the `_ex` reads and of keel_shard_read_begin(). Versioned by
/// `struct_size` (docs/FFI.md): fill it with keel_read_options_init_sized()
/// first. NULL options mean the shard's defaults.
#[repr(C)]
pub struct keel_read_options_t {
    pub struct_size: u32,
    /// KEEL_READ_* (default KEEL_READ_DEFAULT: the shard's default level).
    /// Lease and linearizable need keel_shard_consensus_configure().
    pub level: u32,
    /// Bound on the wait for a read-index and for the applied index, in
    /// milliseconds; past it the read fails with TIMEOUT. A read that makes
    /// the host's read-index call waits for it to return (keel cannot
    /// interrupt it; see keel_read_index_fn). 0 (default): the shard's
    /// keel_lease_options_t.read_timeout_ms.
    pub timeout_ms: u64,
    /// A session of the same shard (keel_shard_read_begin()), or NULL. With
    /// a session the read makes no check of its own: level and timeout are
    /// not used (a level that is no KEEL_READ_* value is still refused
    /// with INVALID_ARGUMENT, as without a session).
    pub session: *const keel_read_session_t,
}
versioned!(keel_read_options_t, [KEEL_READ_OPTIONS_SIZE_V1]);

fn default_options() -> keel_read_options_t {
    keel_read_options_t { struct_size: KEEL_READ_OPTIONS_SIZE_V1, level: KEEL_READ_DEFAULT, timeout_ms: 0, session: std::ptr::null() }
}

/// Fills the `size` bytes at `opts` (pass sizeof *opts) with the defaults.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (size below
/// KEEL_READ_OPTIONS_SIZE_V1 or between two published sizes).
#[no_mangle]
pub extern "C" fn keel_read_options_init_sized(opts: *mut keel_read_options_t, size: usize) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        init_options(opts, size, default_options())
    })
}

/// Asks `shard` for permission to read as `opts` say (NULL: the shard's
/// defaults). Every read that follows sees at least the state at the
/// permit's index.
pub(crate) fn begin(shard: &Shard, opts: *const keel_read_options_t) -> crate::Result<ReadPermit> {
    let o = read_options(opts, default_options(), "keel_read_options_init_sized")?;
    let level = level_from_c(o.level)?;
    if !o.session.is_null() {
        // SAFETY: by the C contract a non-NULL session is one keel made and
        // the caller has not ended; handle_ref checks the magic, and the
        // borrow ends with this call.
        let session = unsafe { handle_ref(o.session)? };
        if !session.shard.same_shard(shard) {
            return Err(Error::invalid("the read session belongs to another shard"));
        }
        if shard.is_closed() {
            return Err(Error::new(KEEL_STATUS_CLOSED, "shard is closed"));
        }
        return Ok(session.permit);
    }
    let timeout = (o.timeout_ms > 0).then(|| Duration::from_millis(o.timeout_ms));
    shard.begin_read(level, timeout)
}

/// Begins a read session on `shard` at the level and timeout of `opts`
/// (NULL: the shard's defaults; `opts->session` must be NULL): the lease
/// check or one read-index (shared with concurrent misses) happens now;
/// the session's reads then read local state. Reads under it are
/// linearizable as of this call (they see every write that completed
/// before it), not as of each read. `*out` receives the session, freed
/// with keel_shard_read_end(). `*index` (may be NULL) receives the index
/// the session waited for (0 for a stale session of an unconfigured shard).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (a bad level; lease or
/// linearizable without consensus configured; a session in opts),
/// NOT_LEADER (keel_error_leader_hint() names the leader when known),
/// TIMEOUT, the read-index callback's status, CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_read_begin(
    shard: *const keel_shard_t,
    opts: *const keel_read_options_t,
    out: *mut *mut keel_read_session_t,
    index: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        let out = out_ptr(out, "out")?;
        if !opts.is_null() && !read_options(opts, default_options(), "keel_read_options_init_sized")?.session.is_null() {
            return Err(Error::invalid("opts->session is set: a session cannot begin inside another"));
        }
        let permit = begin(s, opts)?;
        if !index.is_null() {
            *out_ptr(index, "index")? = permit.index;
        }
        *out = into_handle::<keel_read_session_t>(Session { shard: s.clone(), permit });
        Ok(())
    })
}

/// Ends (frees) a read session. NULL is a no-op. No read may be using it.
#[no_mangle]
pub extern "C" fn keel_shard_read_end(session: *mut keel_read_session_t) {
    let _ = ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        // SAFETY: by the C contract `session` is NULL or a session keel made,
        // given up here and used by no other call; take_handle checks the magic.
        drop(unsafe { take_handle(session)? });
        Ok(())
    });
}
