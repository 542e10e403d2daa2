//! The panic boundary and handle checking shared by every C entry point.

use crate::error::{Error, Result};
use crate::ffi::error::{error_out, keel_error_t};
use crate::status::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Written over a handle's magic when it is closed, so a use after close is
/// reported (best effort: the memory may have been reused).
const DEAD_MAGIC: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// The common prefix of every heap object handed to C.
#[repr(C)]
pub struct HandleHeader {
    magic: AtomicU64,
    poisoned: AtomicBool,
}

/// A heap object handed to C as an opaque pointer. `repr(C)` so that any
/// handle pointer can be read as its `HandleHeader` to poison it.
#[repr(C)]
pub struct Handle<T> {
    header: HandleHeader,
    value: T,
}

/// Ties an opaque C type (`keel_wal_t`, ...) to the Rust value behind it.
pub trait Opaque {
    type Inner;
    /// Tag checked on every entry; distinct per type.
    const MAGIC: u64;
    /// The C type name, for error messages.
    const NAME: &'static str;
}

/// Boxes `value` and returns it as the opaque C pointer.
pub fn into_handle<C: Opaque>(value: C::Inner) -> *mut C {
    let h = Box::new(Handle {
        header: HandleHeader { magic: AtomicU64::new(C::MAGIC), poisoned: AtomicBool::new(false) },
        value,
    });
    Box::into_raw(h) as *mut C
}

/// # Safety
/// `p` is NULL or points at a live `Handle` of some type (all share the
/// header), which stays alive for `'a`.
unsafe fn header_of<'a, C: Opaque>(p: *const C) -> Result<&'a Handle<C::Inner>> {
    let h = live_header(p)?;
    if h.header.poisoned.load(Ordering::Acquire) {
        return Err(Error::new(
            KEEL_STATUS_POISONED,
            format!("{} is poisoned by an earlier panic; close it", C::NAME),
        ));
    }
    Ok(h)
}

/// `header_of` without the poison check.
///
/// # Safety
/// As `header_of`.
unsafe fn live_header<'a, C: Opaque>(p: *const C) -> Result<&'a Handle<C::Inner>> {
    if p.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, format!("{} handle is NULL", C::NAME)));
    }
    let h = &*(p as *const Handle<C::Inner>);
    if h.header.magic.load(Ordering::Acquire) != C::MAGIC {
        return Err(Error::invalid(format!(
            "pointer is not a live {} (wrong type or already closed)",
            C::NAME
        )));
    }
    Ok(h)
}

/// Checks a handle (NULL, magic, poison) and borrows the value behind it.
///
/// # Safety
/// As `header_of`; the value is not borrowed mutably elsewhere during `'a`.
pub unsafe fn handle_ref<'a, C: Opaque>(p: *const C) -> Result<&'a C::Inner> {
    header_of(p).map(|h| &h.value)
}

/// Like `handle_ref`, for handles that are used by one thread at a time.
///
/// # Safety
/// As `header_of`; nothing else borrows the value during `'a`.
pub unsafe fn handle_mut<'a, C: Opaque>(p: *mut C) -> Result<&'a mut C::Inner> {
    header_of(p as *const C)?;
    Ok(&mut (*(p as *mut Handle<C::Inner>)).value)
}

/// Borrows a handle for a `_close` that must finish its work before the
/// handle is freed (callbacks may still use the handle meanwhile): checks
/// NULL and the magic, not the poison mark (closing is how a host
/// recovers). Free it with `take_handle` afterwards.
///
/// # Safety
/// As `header_of`.
pub unsafe fn closing_ref<'a, C: Opaque>(p: *const C) -> Result<&'a C::Inner> {
    live_header(p).map(|h| &h.value)
}

/// A `_close`/`_free` that waits for a callback running on another
/// thread, which may call in on the handle until it returns: `shut`
/// closes the value in place through a shared reference (the handle live
/// for that callback meanwhile), and only then is the handle freed. `shut`
/// answers false when a close of this handle already waits (this call is
/// then that callback's): BUSY, nothing freed. NULL is a no-op.
///
/// # Safety
/// `p` is NULL or points at a live `Handle` of type `C` whose host makes
/// no other call on it (only callbacks `shut` waits for may call in).
pub unsafe fn close_in_place<C: Opaque>(p: *mut C, shut: impl FnOnce(&C::Inner) -> bool) -> Result<()> {
    if p.is_null() {
        return Ok(());
    }
    // closing_ref checks the magic (a poisoned handle is closed all the
    // same); the reference is not used past `shut`.
    if !shut(closing_ref(p as *const C)?) {
        return Err(closing_elsewhere::<C>());
    }
    // No callback `shut` waited for runs any more (or this call is one);
    // take_handle checks the magic again before it takes the handle back.
    take_handle(p).map(drop)
}

/// The BUSY of a close made by a callback that a close of the same handle
/// waits for.
fn closing_elsewhere<C: Opaque>() -> Error {
    Error::new(
        KEEL_STATUS_BUSY,
        format!("the {} is being closed by another thread, which waits for this callback", C::NAME),
    )
}

/// `close_in_place` for a handle whose callbacks run on a thread the close
/// may not wait for (a net's reactor, when the close runs on another
/// net's): `shut` answers None as `close_in_place`'s answers false, else
/// what takes the handle's release and runs it once no callback that may
/// call in on the handle runs any more, at once or later on that
/// callback's thread.
///
/// # Safety
/// As `close_in_place`.
pub unsafe fn close_then_free<C: Opaque + 'static, R: FnOnce(Box<dyn FnOnce() + Send>)>(
    p: *mut C,
    shut: impl FnOnce(&C::Inner) -> Option<R>,
) -> Result<()>
where
    C::Inner: Send,
{
    if p.is_null() {
        return Ok(());
    }
    // As in close_in_place: the reference is not used past `shut`.
    let Some(release) = shut(closing_ref(p as *const C)?) else {
        return Err(closing_elsewhere::<C>());
    };
    let addr = p as usize;
    release(Box::new(move || {
        // SAFETY: `shut` answered Some to this close alone (a second one
        // answers None), so the handle is live and no one else frees it;
        // this runs once no callback may call in on it. The value is Send,
        // so dropping it on the thread this runs on is sound. The magic
        // was checked by closing_ref, so take_handle cannot fail.
        let _ = unsafe { take_handle(addr as *mut C) };
    }));
    Ok(())
}

thread_local! {
    /// The `CallbackScope`s whose host callback runs on this thread now,
    /// innermost last: a callback may call into another handle that runs
    /// its own callback on this same thread.
    static RUNNING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The host callbacks of one handle (a node's events, a transfer's
/// progress), so that a call that would wait for the thread one of them
/// runs on (a close, a wait) can tell that it is made from that very
/// callback, and answer BUSY instead of waiting for itself.
#[derive(Clone, Default)]
pub struct CallbackScope(std::sync::Arc<u8>);

impl CallbackScope {
    fn id(&self) -> usize {
        std::sync::Arc::as_ptr(&self.0) as usize
    }

    /// Runs `call` (the host's callback, which cannot unwind: it is an
    /// `extern "C"` function) marked as one of this scope on this thread.
    pub fn run(&self, call: impl FnOnce()) {
        RUNNING.with(|r| r.borrow_mut().push(self.id()));
        call();
        RUNNING.with(|r| r.borrow_mut().pop());
    }

    /// Whether the calling thread is inside `run` of this scope.
    pub fn is_current(&self) -> bool {
        RUNNING.with(|r| r.borrow().contains(&self.id()))
    }
}

/// Takes ownership back from C for `_close`/`_free`: NULL gives `None`, a
/// poisoned handle is still released (closing is how a host recovers).
///
/// # Safety
/// `p` is NULL or points at a live `Handle` of some type that nothing else
/// uses any more (a closed one is refused by its magic, best effort).
pub unsafe fn take_handle<C: Opaque>(p: *mut C) -> Result<Option<C::Inner>> {
    if p.is_null() {
        return Ok(None);
    }
    let h = p as *mut Handle<C::Inner>;
    if (*h).header.magic.compare_exchange(C::MAGIC, DEAD_MAGIC, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return Err(Error::invalid(format!(
            "pointer is not a live {} (wrong type or already closed)",
            C::NAME
        )));
    }
    Ok(Some(Box::from_raw(h).value))
}

/// Marks the handle at `p` poisoned after a panic, if it still looks live.
///
/// # Safety
/// `p` is NULL or points at a live `Handle` of some type.
unsafe fn poison(p: *const u8) {
    if p.is_null() {
        return;
    }
    let header = &*(p as *const HandleHeader);
    if header.magic.load(Ordering::Acquire) != DEAD_MAGIC {
        header.poisoned.store(true, Ordering::Release);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs `body` so that no panic unwinds into C: an `Err` becomes its status
/// (and an error object in `*err` when asked for), a panic becomes
/// `KEEL_STATUS_PANIC` and poisons `handle` (any handle pointer or NULL).
pub fn run(err: *mut *mut keel_error_t, handle: *const u8, body: impl FnOnce() -> Result<()>) -> keel_status_t {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        // SAFETY: `handle` is NULL (every `_close` and `_free` passes NULL, as
        // its handle may be freed by the time of a panic) or a handle argument
        // of this entry point, which the C contract keeps alive until its
        // `_close`, and `_close` never races with another call. Every
        // `Handle<T>` is `repr(C)` with the `HandleHeader` first, so the
        // pointer addresses a header whatever T is, and its fields are
        // atomics other threads may touch at the same time.
        unsafe { poison(handle) };
        Err(Error::new(KEEL_STATUS_PANIC, format!("panic inside keel: {}", panic_message(&*payload))))
    });
    match outcome {
        Ok(()) => KEEL_STATUS_OK,
        Err(e) => {
            let status = e.status;
            // SAFETY: `err` is the entry point's `keel_error_t **err`, which the
            // C contract makes NULL (no details wanted) or a valid slot holding
            // NULL or an error object keel made; `error_out` checks NULL, and
            // frees the previous object through the checked `take_handle`.
            unsafe { error_out(err, e) };
            status
        }
    }
}

/// The panic boundary: `ffi_boundary!(err, handle_ptr, { ...; Ok(()) })`.
/// `handle_ptr` is the handle to poison on a panic (or `std::ptr::null::<u8>()`).
macro_rules! ffi_boundary {
    ($err:expr, $handle:expr, $body:block) => {
        $crate::ffi::boundary::run($err, $handle as *const _ as *const u8, move || $body)
    };
}

/// Checks and casts a handle: `try_handle!(ptr)` borrows the value,
/// `try_handle!(mut ptr)` borrows it mutably; failures return early.
macro_rules! try_handle {
    (mut $p:expr) => {
        // SAFETY: `$p` is a handle argument of a C entry point: by the C
        // contract NULL or a pointer keel returned and not yet closed
        // (`_close` is the last call and never races). `handle_mut` rejects
        // NULL, another type's handle and a closed one (best effort) before
        // borrowing; the borrow ends with the entry call, and a non-`const`
        // handle is used by one thread at a time, so it is the only `&mut`.
        unsafe { $crate::ffi::boundary::handle_mut($p)? }
    };
    ($p:expr) => {
        // SAFETY: `$p` is a handle argument of a C entry point: by the C
        // contract NULL or a pointer keel returned and not yet closed
        // (`_close` is the last call and never races). `handle_ref` rejects
        // NULL, another type's handle and a closed one (best effort) before
        // borrowing; the shared borrow ends with the entry call and the
        // value behind a `const` handle is internally synchronised.
        unsafe { $crate::ffi::boundary::handle_ref($p)? }
    };
}

/// Checks an out-parameter pointer and returns it as `&mut T`.
pub fn out_ptr<'a, T>(p: *mut T, name: &str) -> Result<&'a mut T> {
    if p.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, format!("{name} is NULL")));
    }
    debug_assert!(p.is_aligned(), "{name} is misaligned");
    // SAFETY: not NULL (checked above); the C contract makes a non-NULL
    // out-parameter point at a writable, aligned T that nothing else uses
    // during the call, and the borrow does not outlive the entry call.
    Ok(unsafe { &mut *p })
}

/// Builds a byte slice from a C (pointer, length) pair; length 0 may be NULL.
pub fn in_bytes<'a>(p: *const u8, len: usize, name: &str) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, format!("{name} is NULL with length {len}")));
    }
    if len > isize::MAX as usize {
        return Err(Error::invalid(format!("{name} length {len} is too large")));
    }
    // SAFETY: not NULL (checked above) and len fits in isize; the C contract
    // for a (pointer, length) input is `len` readable bytes the caller does
    // not change during the call, which the borrow does not outlive.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// An input array of `count` u64 values (`p` may be NULL when count is 0).
pub fn in_u64s<'a>(p: *const u64, count: usize, name: &str) -> Result<&'a [u64]> {
    if count == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, format!("{name} is NULL with count {count}")));
    }
    if count > isize::MAX as usize / std::mem::size_of::<u64>() {
        return Err(Error::invalid(format!("count {count} of {name} is too large")));
    }
    debug_assert!(p.is_aligned(), "{name} is misaligned");
    // SAFETY: not NULL and count * 8 fits in isize (both checked above); the
    // C contract for an (array, count) input is `count` readable, aligned
    // values left unchanged during the call, which the borrow does not outlive.
    Ok(unsafe { std::slice::from_raw_parts(p, count) })
}

/// Splits the packed form several calls take instead of a pointer array
/// (which suits cgo): `count` byte strings back to back in `data`, string i
/// being `lens[i]` bytes. `lens` may be NULL when count is 0.
pub fn in_packed<'a>(data: *const u8, lens: *const usize, count: usize, name: &str) -> Result<Vec<&'a [u8]>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if lens.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, format!("the lengths of {name} are NULL")));
    }
    if count > isize::MAX as usize / std::mem::size_of::<usize>() {
        return Err(Error::invalid(format!("count {count} of {name} is too large")));
    }
    debug_assert!(lens.is_aligned(), "the lengths of {name} are misaligned");
    // SAFETY: not NULL and count * size_of::<usize>() fits in isize (both
    // checked above); the C contract makes `lens` an array of `count` lengths
    // left unchanged during the call, which the borrow does not outlive.
    let lens = unsafe { std::slice::from_raw_parts(lens, count) };
    let total = lens
        .iter()
        .try_fold(0usize, |acc, &l| acc.checked_add(l))
        .ok_or_else(|| Error::invalid(format!("the lengths of {name} overflow")))?;
    let bytes = in_bytes(data, total, name)?;
    let mut parts = Vec::with_capacity(count);
    let mut at = 0;
    for &l in lens {
        parts.push(&bytes[at..at + l]);
        at += l;
    }
    Ok(parts)
}

/// Reads a NUL-terminated UTF-8 path argument.
pub fn in_path<'a>(p: *const libc::c_char, name: &str) -> Result<&'a std::path::Path> {
    if p.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, format!("{name} is NULL")));
    }
    // SAFETY: not NULL (checked above); the C contract makes a path argument
    // a NUL-terminated string left unchanged during the call, which the
    // borrow does not outlive.
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    let s = s.to_str().map_err(|_| Error::invalid(format!("{name} is not valid UTF-8")))?;
    if s.is_empty() {
        return Err(Error::invalid(format!("{name} is empty")));
    }
    Ok(std::path::Path::new(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::{keel_error_code, keel_error_free, keel_error_message};

    struct probe_t;
    impl Opaque for probe_t {
        type Inner = u32;
        const MAGIC: u64 = 0x7072_6f62_6570_726f;
        const NAME: &'static str = "probe_t";
    }
    struct other_t;
    impl Opaque for other_t {
        type Inner = u32;
        const MAGIC: u64 = 0x6f74_6865_726f_7468;
        const NAME: &'static str = "other_t";
    }

    fn call(h: *mut probe_t, err: *mut *mut keel_error_t, panic: bool) -> keel_status_t {
        ffi_boundary!(err, h, {
            let v = try_handle!(h);
            if panic {
                panic!("boom {v}");
            }
            Ok(())
        })
    }

    #[test]
    fn a_panic_becomes_a_status_and_poisons_the_handle() {
        let h = into_handle::<probe_t>(7);
        let mut err: *mut keel_error_t = std::ptr::null_mut();
        assert_eq!(call(h, std::ptr::null_mut(), false), KEEL_STATUS_OK);
        assert_eq!(call(h, &mut err, true), KEEL_STATUS_PANIC);
        assert_eq!(keel_error_code(err), KEEL_STATUS_PANIC);
        // SAFETY: keel_error_message never returns NULL; it points at the
        // NUL-terminated message owned by `err`, freed only further down.
        let msg = unsafe { std::ffi::CStr::from_ptr(keel_error_message(err)) }.to_str().unwrap();
        assert!(msg.contains("boom 7"), "{msg}");
        // A second error replaces (and frees) the first one in the same slot.
        assert_eq!(call(h, &mut err, false), KEEL_STATUS_POISONED);
        assert_eq!(keel_error_code(err), KEEL_STATUS_POISONED);
        keel_error_free(err);
        // Closing still works on a poisoned handle; afterwards it is dead.
        // SAFETY: `h` came from into_handle::<probe_t> and was not taken yet.
        assert_eq!(unsafe { take_handle(h) }.unwrap(), Some(7));
    }

    #[test]
    fn a_callback_scope_is_current_inside_its_runs_on_their_thread_only() {
        let (a, b) = (CallbackScope::default(), CallbackScope::default());
        assert!(!a.is_current());
        a.run(|| {
            assert!(a.is_current() && !b.is_current());
            // A callback that calls into another handle whose callback runs
            // on this thread: the outer one is still running.
            b.run(|| assert!(a.is_current() && b.is_current()));
            assert!(a.is_current() && !b.is_current());
            let same = a.clone();
            std::thread::spawn(move || assert!(!same.is_current(), "another thread is not in the callback")).join().unwrap();
        });
        assert!(!a.is_current() && !b.is_current());
    }

    #[test]
    fn handles_are_checked_for_null_and_type() {
        assert_eq!(call(std::ptr::null_mut(), std::ptr::null_mut(), false), KEEL_STATUS_NULL_ARGUMENT);
        let other = into_handle::<other_t>(1);
        assert_eq!(call(other as *mut probe_t, std::ptr::null_mut(), false), KEEL_STATUS_INVALID_ARGUMENT);
        // SAFETY: `other` is a live handle (of another type, which is the
        // point: the magic check refuses it before anything is freed).
        assert!(unsafe { take_handle(other as *mut probe_t) }.is_err(), "wrong type is not freed");
        // SAFETY: `other` came from into_handle::<other_t> and is still live.
        assert_eq!(unsafe { take_handle(other) }.unwrap(), Some(1));
        // SAFETY: NULL is allowed and gives None.
        assert_eq!(unsafe { take_handle::<probe_t>(std::ptr::null_mut()) }.unwrap(), None);
    }
}
