//! C API of the engine's fenced lease table (`keel_fence_*`): TTL leases
//! on named buckets with fencing tokens that only grow, across restarts
//! too. See docs/LEASE.md ("Fenced leases").

use crate::ffi::boundary::{in_bytes, out_ptr};
use crate::ffi::engine::keel_engine_t;
use crate::ffi::error::keel_error_t;
use crate::status::*;
use std::time::Duration;

/// Grants the lease on `bucket` (`bucket_len` bytes, any content; NULL
/// when the length is 0) for `ttl_ms` milliseconds on this node's
/// monotonic clock and writes its fencing token to `*token`: larger than
/// every token this engine's directory ever granted. Nothing to free.
/// Any thread. Leases live in memory only: after the engine is reopened
/// every lease has expired.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live engine, ttl_ms is
/// 0 or too large, or the tokens are exhausted: the high-water mark is
/// within 1024 of UINT64_MAX), BUSY (another holder's lease has not expired), IO or
/// NO_SPACE (the token high-water mark could not be made durable; no
/// lease granted, or the clock failed), RESOURCE (out of descriptors or
/// memory reading or writing the high-water mark; no lease granted),
/// CORRUPTION (the high-water mark file is damaged).
#[no_mangle]
pub extern "C" fn keel_fence_try_acquire(
    engine: *const keel_engine_t,
    bucket: *const u8,
    bucket_len: usize,
    ttl_ms: u64,
    token: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, engine, {
        let e = try_handle!(engine);
        let bucket = in_bytes(bucket, bucket_len, "bucket")?;
        let token = out_ptr(token, "token")?;
        *token = e.fences().try_acquire(bucket, Duration::from_millis(ttl_ms))?;
        Ok(())
    })
}

/// Writes to `*valid` whether `token` holds the lease on `bucket` now
/// (granted, not released, not expired); false as well when the clock
/// fails. Any thread.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live engine).
#[no_mangle]
pub extern "C" fn keel_fence_validate(
    engine: *const keel_engine_t,
    bucket: *const u8,
    bucket_len: usize,
    token: u64,
    valid: *mut bool,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, engine, {
        let e = try_handle!(engine);
        let bucket = in_bytes(bucket, bucket_len, "bucket")?;
        let valid = out_ptr(valid, "valid")?;
        *valid = e.fences().validate(bucket, token);
        Ok(())
    })
}

/// Releases the lease on `bucket` if `token` holds it and it has not
/// expired, and writes to `*released` whether it did: an expired or
/// superseded holder's release never clears a newer holder. Any thread.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live engine).
#[no_mangle]
pub extern "C" fn keel_fence_release(
    engine: *const keel_engine_t,
    bucket: *const u8,
    bucket_len: usize,
    token: u64,
    released: *mut bool,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, engine, {
        let e = try_handle!(engine);
        let bucket = in_bytes(bucket, bucket_len, "bucket")?;
        let released = out_ptr(released, "released")?;
        *released = e.fences().release(bucket, token);
        Ok(())
    })
}

/// The storage-side fence: FENCED when `token` is below the highest token
/// this engine accepted for `bucket`; otherwise records `token` as the
/// highest and returns OK (an equal token passes). No clock is involved,
/// so the same checks give the same answers anywhere. The highest tokens
/// are kept in memory, per engine: once the engine is reopened any token
/// passes again. A check that survives restarts is a fenced shard write
/// (keel_write_options_t.fenced), whose highest tokens are in the shard's
/// WAL and manifest. Any thread.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live engine), FENCED.
#[no_mangle]
pub extern "C" fn keel_fence_check(
    engine: *const keel_engine_t,
    bucket: *const u8,
    bucket_len: usize,
    token: u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, engine, {
        let e = try_handle!(engine);
        let bucket = in_bytes(bucket, bucket_len, "bucket")?;
        e.fences().check_fence(bucket, token)
    })
}
