//! Library-owned byte buffers handed to C.

use crate::status::*;

/// A byte buffer allocated by keel and owned by the caller, who releases
/// it with keel_buf_free(). An empty buffer has ptr == NULL and len == 0.
#[repr(C)]
pub struct keel_buf_t {
    /// First byte, or NULL when len is 0.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
}

impl keel_buf_t {
    pub(crate) fn from_vec(bytes: Vec<u8>) -> keel_buf_t {
        if bytes.is_empty() {
            return keel_buf_t { ptr: std::ptr::null_mut(), len: 0 };
        }
        let boxed: Box<[u8]> = bytes.into_boxed_slice();
        let len = boxed.len();
        keel_buf_t { ptr: Box::into_raw(boxed) as *mut u8, len }
    }
}

/// Checks that a keel_buf_t keel is about to fill holds no buffer: one
/// with a non-NULL `ptr` is INVALID_ARGUMENT, since overwriting it would
/// leak what it holds (the caller zeroes it or keel_buf_free()s it first).
pub(crate) fn check_unfilled(b: &keel_buf_t, name: &str) -> crate::Result<()> {
    if !b.ptr.is_null() {
        return Err(crate::Error::invalid(format!(
            "{name} still holds a buffer (ptr is not NULL): release it with keel_buf_free() or pass it zeroed"
        )));
    }
    Ok(())
}

/// A keel_buf_t out-parameter: NULL_ARGUMENT when NULL, then check_unfilled.
pub(crate) fn buf_out<'a>(p: *mut keel_buf_t, name: &str) -> crate::Result<&'a mut keel_buf_t> {
    let b = crate::ffi::boundary::out_ptr(p, name)?;
    check_unfilled(b, name)?;
    Ok(b)
}

/// Releases the memory of `buf` (if any) and resets it to {NULL, 0}, so a
/// second call is harmless. `buf` itself may be NULL (no-op). Only pass
/// buffers that keel filled.
#[no_mangle]
pub extern "C" fn keel_buf_free(buf: *mut keel_buf_t) -> keel_status_t {
    if buf.is_null() {
        return KEEL_STATUS_OK;
    }
    // SAFETY: not NULL (checked above); the C contract makes `buf` point at a
    // keel_buf_t the caller owns and does not use elsewhere during the call.
    let b = unsafe { &mut *buf };
    if !b.ptr.is_null() && b.len > 0 {
        // SAFETY: only buffers keel filled may be passed (documented above),
        // so (ptr, len) is exactly the Box<[u8]> that keel_buf_t::from_vec
        // leaked; it is reset below, so a second call does not free it again.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(b.ptr, b.len)) });
    }
    b.ptr = std::ptr::null_mut();
    b.len = 0;
    KEEL_STATUS_OK
}

/// Releases `count` buffers of an array (as filled by
/// keel_shard_multi_get()) with keel_buf_free() each. `bufs` may be NULL
/// when count is 0. Errors: NULL_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_bufs_free(bufs: *mut keel_buf_t, count: usize) -> keel_status_t {
    if count == 0 {
        return KEEL_STATUS_OK;
    }
    if bufs.is_null() {
        return KEEL_STATUS_NULL_ARGUMENT;
    }
    for i in 0..count {
        // SAFETY: `bufs` is not NULL (checked above) and, by the C contract,
        // an array of `count` keel_buf_t, so element i < count is in bounds.
        keel_buf_free(unsafe { bufs.add(i) });
    }
    KEEL_STATUS_OK
}

/// Copies `data` into a caller buffer: BUFFER_TOO_SMALL (with the needed
/// size in `*out_len`) when it does not fit.
pub(crate) fn copy_out(data: &[u8], buf: *mut u8, cap: usize, out_len: &mut usize) -> crate::Result<()> {
    // A buffer is NULL only with capacity 0, whatever there is to copy.
    if buf.is_null() && cap > 0 {
        return Err(crate::Error::new(KEEL_STATUS_NULL_ARGUMENT, "buf is NULL with a capacity above 0"));
    }
    if data.len() > cap {
        *out_len = data.len();
        return Err(crate::Error::new(
            KEEL_STATUS_BUFFER_TOO_SMALL,
            format!("buffer of {cap} bytes is too small; {} needed", data.len()),
        ));
    }
    if !data.is_empty() {
        // SAFETY: `buf` is not NULL (cap >= data.len() > 0, checked above)
        // and, by the C contract of a caller buffer, has `cap` >= data.len()
        // writable bytes; a caller buffer cannot overlap keel's own `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len()) };
    }
    *out_len = data.len();
    Ok(())
}

/// Copies `text` into the caller's buffer as a NUL-terminated C string
/// (an inner NUL is written as the two characters `\0`, so C sees the
/// whole text); `*out_len` receives its length including the NUL, and
/// the size needed on BUFFER_TOO_SMALL.
pub(crate) fn copy_out_c_string(text: &str, buf: *mut std::ffi::c_char, cap: usize, out_len: &mut usize) -> crate::Result<()> {
    let mut bytes = text.replace('\0', "\\0").into_bytes();
    bytes.push(0);
    copy_out(&bytes, buf as *mut u8, cap, out_len)
}
