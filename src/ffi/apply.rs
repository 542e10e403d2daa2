//! C API of fenced writes (`keel_shard_write_ex`, `_packed_ex`) and of
//! applying a host's committed entries (`keel_shard_apply`, `_packed`,
//! `keel_shard_applied_index`). See docs/LEASE.md, "Applying committed
//! entries" and "Fenced writes".

use crate::error::Error;
use crate::ffi::boundary::{in_bytes, out_ptr};
use crate::ffi::error::keel_error_t;
use crate::ffi::shard::{keel_batch_t, keel_shard_t, unpack, write_version};
use crate::ffi::versioned::{check_stats, init_options, read_options, write_stats};
use crate::shard::{Applied, Fence, Op};
use crate::status::*;

/// sizeof(keel_write_options_t) of version 1.
pub const KEEL_WRITE_OPTIONS_SIZE_V1: u32 = 32;

/// Options of keel_shard_write_ex() and keel_shard_apply(). Versioned by
/// `struct_size` (docs/FFI.md): fill it with
/// keel_write_options_init_sized() first. NULL options mean no fence.
#[repr(C)]
pub struct keel_write_options_t {
    pub struct_size: u32,
    /// 1: the write carries the fence below; 0 (default): it does not.
    /// Anything else is INVALID_ARGUMENT.
    pub fenced: u32,
    /// The fence's bucket, `fence_bucket_len` bytes (any content; at most
    /// KEEL_SHARD_MAX_KEY_SIZE; NULL when the length is 0). Read during the
    /// call only.
    pub fence_bucket: *const u8,
    pub fence_bucket_len: usize,
    /// The writer's fencing token (keel_fence_try_acquire() hands them
    /// out). Refused (FENCED) when below the highest token this shard
    /// accepted for the bucket, which otherwise becomes this one.
    pub fence_token: u64,
}
versioned!(keel_write_options_t, [KEEL_WRITE_OPTIONS_SIZE_V1]);

fn default_options() -> keel_write_options_t {
    keel_write_options_t {
        struct_size: KEEL_WRITE_OPTIONS_SIZE_V1,
        fenced: 0,
        fence_bucket: std::ptr::null(),
        fence_bucket_len: 0,
        fence_token: 0,
    }
}

/// Fills the `size` bytes at `opts` (pass sizeof *opts) with the defaults
/// (no fence). Errors: NULL_ARGUMENT, INVALID_ARGUMENT (size below
/// KEEL_WRITE_OPTIONS_SIZE_V1 or between two published sizes).
#[no_mangle]
pub extern "C" fn keel_write_options_init_sized(opts: *mut keel_write_options_t, size: usize) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        init_options(opts, size, default_options())
    })
}

/// The fence `opts` carry, if any.
fn fence_of(opts: *const keel_write_options_t) -> crate::Result<Option<Fence>> {
    let o = read_options(opts, default_options(), "keel_write_options_init_sized")?;
    match o.fenced {
        0 => Ok(None),
        1 => {
            let bucket = in_bytes(o.fence_bucket, o.fence_bucket_len, "fence_bucket")?;
            Ok(Some(Fence { bucket: bucket.to_vec(), token: o.fence_token }))
        }
        other => Err(Error::invalid(format!("keel_write_options_t.fenced is {other}; it must be 0 or 1"))),
    }
}

/// sizeof(keel_apply_result_t) of version 1.
pub const KEEL_APPLY_RESULT_SIZE_V1: u32 = 40;

/// What keel_shard_apply() did with an entry. The caller sets
/// `struct_size` to sizeof(keel_apply_result_t) before the call; keel
/// writes only the fields both sides know and sets struct_size to their
/// size (docs/FFI.md, "Versioned structs").
#[repr(C)]
pub struct keel_apply_result_t {
    pub struct_size: u32,
    /// KEEL_STATUS_OK when the entry's operations took effect (or it had
    /// none); otherwise why they were refused, the same on every replica:
    /// FENCED (a stale fence), WRONG_KIND (an append to a value) or
    /// INVALID_ARGUMENT (a key, value, posting list or bucket past the
    /// limits). The index moved either way: answer the entry's client with
    /// it, never apply the entry again.
    pub status: keel_status_t,
    /// 1 when the index was at or below the applied index: nothing was
    /// done (the other fields describe nothing new); 0 otherwise.
    pub duplicate: u32,
    /// Operations of the entry that took effect (0 when refused).
    pub op_count: u32,
    /// Versions of the first and last of them (0 when none).
    pub first_version: u64,
    pub last_version: u64,
    /// The shard's applied index after the call.
    pub applied_index: u64,
}
versioned!(keel_apply_result_t, [KEEL_APPLY_RESULT_SIZE_V1]);

fn result_of(a: &Applied) -> keel_apply_result_t {
    let (first, last) = a.ops.unwrap_or((0, 0));
    keel_apply_result_t {
        struct_size: KEEL_APPLY_RESULT_SIZE_V1,
        status: a.refused.as_ref().map_or(KEEL_STATUS_OK, |e| e.status),
        duplicate: a.duplicate as u32,
        op_count: a.ops.map_or(0, |(f, l)| (l - f + 1) as u32),
        first_version: first,
        last_version: last,
        applied_index: a.applied_index,
    }
}

/// The operations of a batch handle; NULL is none.
fn batch_ops(batch: *const keel_batch_t) -> crate::Result<Vec<Op>> {
    if batch.is_null() {
        return Ok(Vec::new());
    }
    unpack(&try_handle!(batch).packed)
}

/// keel_shard_write() with options: with a fence (`opts->fenced`), the
/// batch is refused with FENCED, nothing written, when the token is below
/// the highest one this shard accepted for the bucket; otherwise the token
/// becomes the highest, logged in the batch's WAL frame (it survives a
/// reopen; a restart never lowers it). The check runs in the shard's write
/// order. NULL `opts`: keel_shard_write(). The highest tokens are per
/// shard, apart from the engine's keel_fence_check(). Nothing to free.
/// Errors: as keel_shard_write(), FENCED, INVALID_ARGUMENT (bad options).
#[no_mangle]
pub extern "C" fn keel_shard_write_ex(
    shard: *const keel_shard_t,
    batch: *const keel_batch_t,
    opts: *const keel_write_options_t,
    first_version: *mut u64,
    last_version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        let b = try_handle!(batch);
        write_ex(s, &unpack(&b.packed)?, opts, first_version, last_version)
    })
}

/// keel_shard_write_ex() with the batch packed as for
/// keel_shard_write_packed(). Errors: as keel_shard_write_ex(),
/// INVALID_ARGUMENT for a malformed buffer.
#[no_mangle]
pub extern "C" fn keel_shard_write_packed_ex(
    shard: *const keel_shard_t,
    ops: *const u8,
    ops_len: usize,
    opts: *const keel_write_options_t,
    first_version: *mut u64,
    last_version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        write_ex(s, &unpack(in_bytes(ops, ops_len, "ops")?)?, opts, first_version, last_version)
    })
}

/// The write calls' common body: `ops` with the fence of `opts` (NULL:
/// none), the versions to `first` and `last` (each may be NULL).
pub(crate) fn write_ex(s: &crate::shard::Shard, ops: &[Op], opts: *const keel_write_options_t, first: *mut u64, last: *mut u64) -> crate::Result<()> {
    let (f, l) = match fence_of(opts)? {
        Some(fence) => s.write_fenced(ops, fence)?,
        None => s.write(ops)?,
    };
    write_version(first, f);
    write_version(last, l);
    Ok(())
}

/// Applies the host's committed entry `index` (its consensus log index,
/// from 1): the operations of `batch` (NULL or empty: the entry only moves
/// the index, as raft's empty and configuration entries do) with the fence
/// of `opts` (NULL: none), atomically and in the shard's write order. The
/// index is logged in the entry's WAL frame: from then on, across crashes
/// and reopens, keel_shard_applied_index() returns it, and the shard's
/// lease reads see it as applied (no keel_shard_consensus_set_applied()
/// needed). Apply entries one call at a time, in index order (gaps are
/// allowed). Returns once the entry is as durable as the engine's
/// durability mode says, with `*result` (struct_size set by the caller)
/// saying what happened:
/// - an index at or below the applied index: OK, result->duplicate = 1,
///   nothing done (a restarted host may hand entries over again);
/// - operations refused the same way on every replica (FENCED,
///   WRONG_KIND, INVALID_ARGUMENT for a key, value, posting list or
///   bucket past the limits): OK with result->status the refusal; the
///   index moved and no operation took effect;
/// - otherwise OK with result->status OK.
///
/// A non-OK return means the index did not move durably. The batch is left
/// as it was. Nothing to free. After IO (a failed sync) the shard is
/// poisoned: keel_shard_applied_index() may count the entry already, every
/// later entry (a retry included) fails with POISONED, and a reopen tells
/// the durable index.
/// Errors: NULL_ARGUMENT (shard or result; a NULL fence_bucket with a
/// length above 0), INVALID_ARGUMENT (index 0, bad options, an entry larger
/// than this shard's WAL record limit, a bad result struct_size), NO_SPACE,
/// IO, POISONED, MOVED, CLOSED, TIMEOUT (an entry waits for the flush at
/// keel_engine_options_t.max_unflushed_wal_bytes as a write does, see
/// keel_shard_put()), RESOURCE (out of descriptors or memory before
/// anything was written). The index did not move on any of them.
#[no_mangle]
pub extern "C" fn keel_shard_apply(
    shard: *const keel_shard_t,
    index: u64,
    batch: *const keel_batch_t,
    opts: *const keel_write_options_t,
    result: *mut keel_apply_result_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        apply(s, index, &batch_ops(batch)?, opts, result)
    })
}

/// keel_shard_apply() with the entry's operations packed as for
/// keel_shard_write_packed() (`ops_len` 0: none). Errors: as
/// keel_shard_apply(), INVALID_ARGUMENT for a malformed buffer,
/// NULL_ARGUMENT for a NULL `ops` with `ops_len` above 0 (the index does
/// not move).
#[no_mangle]
pub extern "C" fn keel_shard_apply_packed(
    shard: *const keel_shard_t,
    index: u64,
    ops: *const u8,
    ops_len: usize,
    opts: *const keel_write_options_t,
    result: *mut keel_apply_result_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        apply(s, index, &unpack(in_bytes(ops, ops_len, "ops")?)?, opts, result)
    })
}

fn apply(s: &crate::shard::Shard, index: u64, ops: &[Op], opts: *const keel_write_options_t, result: *mut keel_apply_result_t) -> crate::Result<()> {
    // Checked before the entry is applied: a bad result struct must not
    // leave an applied entry unreported. NULL first, so that the message
    // names this parameter (check_stats calls every struct `out`).
    if result.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, "result is NULL"));
    }
    check_stats(result)?;
    let fence = fence_of(opts)?;
    let applied = s.apply(index, ops, fence)?;
    write_stats(result, result_of(&applied))
}

/// Writes to `*index` the index of the last entry applied with
/// keel_shard_apply() (0: none), as it stands after any crash and reopen:
/// where the host's consensus engine resumes applying (etcd raft:
/// Config.Applied). Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live
/// shard), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_applied_index(shard: *const keel_shard_t, index: *mut u64, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        let index = out_ptr(index, "index")?;
        if s.is_closed() {
            return Err(Error::new(KEEL_STATUS_CLOSED, "shard is closed"));
        }
        *index = s.applied_index();
        Ok(())
    })
}
