//! Owned error objects (`keel_error_t`) and status names.

use crate::error::Error;
use crate::ffi::boundary::{handle_ref, into_handle, take_handle, Opaque};
use crate::status::*;
use std::ffi::CString;
use std::os::raw::c_char;

/// An error returned through a trailing `keel_error_t **err` argument:
/// a status code and a message. Owned by the caller; free it with
/// keel_error_free().
pub struct keel_error_t {
    _private: [u8; 0],
}

pub struct ErrorObject {
    status: keel_status_t,
    message: CString,
    leader_hint: Option<u64>,
}

impl Opaque for keel_error_t {
    type Inner = ErrorObject;
    const MAGIC: u64 = 0x6b65_656c_4552_524f; // "keelERRO"
    const NAME: &'static str = "keel_error_t";
}

/// Stores `e` into `*err` when the caller asked for details. An error
/// already in `*err` is replaced and freed, so a reused pointer never leaks.
///
/// # Safety
/// `err` is NULL or points at a writable slot holding NULL or an error
/// object keel made that nothing else uses.
pub(crate) unsafe fn error_out(err: *mut *mut keel_error_t, e: Error) {
    if err.is_null() {
        return;
    }
    let message = CString::new(e.message.replace('\0', "\\0")).unwrap_or_default();
    let previous = std::mem::replace(&mut *err, into_handle::<keel_error_t>(ErrorObject { status: e.status, message, leader_hint: e.leader_hint }));
    let _ = take_handle(previous);
}

/// Returns the name of a status code ("OK", "IO", "CORRUPTION", ...) as a
/// static string; unknown values give "UNKNOWN". Never NULL; do not free.
#[no_mangle]
pub extern "C" fn keel_status_str(status: keel_status_t) -> *const c_char {
    status_name(status).as_ptr() as *const c_char
}

/// Returns the status code carried by `err`; KEEL_STATUS_NULL_ARGUMENT when
/// `err` is NULL, KEEL_STATUS_INVALID_ARGUMENT when it is not a live error
/// object. Safe from any thread.
#[no_mangle]
pub extern "C" fn keel_error_code(err: *const keel_error_t) -> keel_status_t {
    // SAFETY: by the C contract `err` is NULL or an error object keel made and
    // the caller has not freed; handle_ref checks NULL and the magic first, and
    // the borrow ends before returning.
    match unsafe { handle_ref(err) } {
        Ok(e) => e.status,
        Err(e) => e.status,
    }
}

/// Returns the message of `err` as a NUL-terminated string borrowed from
/// the error object: valid until keel_error_free(err). Returns a static
/// placeholder when `err` is NULL or invalid. Never NULL.
#[no_mangle]
pub extern "C" fn keel_error_message(err: *const keel_error_t) -> *const c_char {
    // SAFETY: by the C contract `err` is NULL or an error object keel made and
    // the caller has not freed; handle_ref checks NULL and the magic first.
    // The returned pointer outlives the borrow, as documented: the CString is
    // owned by the error object and stays put until keel_error_free(err).
    match unsafe { handle_ref(err) } {
        Ok(e) => e.message.as_ptr(),
        Err(_) => c"(no error object)".as_ptr(),
    }
}

/// Returns the consensus id of the leader a NOT_LEADER error names, or 0
/// when the leader is unknown, the error is of another status, or `err` is
/// NULL or not a live error object. Never the id of the node that refused
/// (docs/LEASE.md, "Levels"). Safe from any thread.
#[no_mangle]
pub extern "C" fn keel_error_leader_hint(err: *const keel_error_t) -> u64 {
    // SAFETY: by the C contract `err` is NULL or an error object keel made and
    // the caller has not freed; handle_ref checks NULL and the magic first, and
    // the borrow ends before returning.
    match unsafe { handle_ref(err) } {
        Ok(e) => e.leader_hint.unwrap_or(0),
        Err(_) => 0,
    }
}

/// Frees an error object. NULL is a no-op.
#[no_mangle]
pub extern "C" fn keel_error_free(err: *mut keel_error_t) {
    // SAFETY: by the C contract `err` is NULL or an error object keel made
    // that the caller gives up here; take_handle checks NULL and the magic
    // (so a double free is refused, best effort) before freeing.
    let _ = unsafe { take_handle(err) };
}
