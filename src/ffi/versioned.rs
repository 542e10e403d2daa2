//! Structs versioned by a leading `struct_size` (options and stats).
//!
//! A caller may have been compiled against an older header (its struct is a
//! shorter prefix of keel's) or a newer one (its struct has fields keel does
//! not know, at the end). keel therefore never forms a `&T` to a caller's
//! struct: it reads `struct_size` alone, then copies
//! `min(struct_size, size_of::<T>())` bytes between the caller's memory and
//! a Rust value. The rules (docs/FFI.md, "Versioned structs"):
//!
//! - `struct_size` below the first published version, or between two
//!   published versions, is INVALID_ARGUMENT (no header ever had that size);
//!   any size above keel's own is a newer header.
//! - Options: fields past the caller's size keep their defaults; bytes past
//!   keel's size (fields of a newer header) must be zero, otherwise the call
//!   is INVALID_ARGUMENT, so an option this library does not know is never
//!   silently dropped. Zero is the default of every field added later.
//! - Stats: keel writes only `min(struct_size, size_of::<T>())` bytes, and
//!   sets `struct_size` to that number so a newer caller sees where keel's
//!   fields end; the caller's bytes past it are untouched.

use crate::error::{Error, Result};
use crate::status::KEEL_STATUS_NULL_ARGUMENT;
use std::mem::size_of;

/// A `repr(C)` struct of the C API versioned by its `struct_size`.
///
/// # Safety
/// The implementor is `#[repr(C)]`, its first field is `struct_size: u32`,
/// every byte pattern is a valid value of each of its fields (integers, raw
/// pointers, `Option` of a function pointer), and `SIZES` lists the size of
/// every published version, ascending, ending with `size_of::<Self>()`.
pub unsafe trait Versioned: Sized {
    /// The C type name, for error messages.
    const NAME: &'static str;
    /// sizeof of each published version (the `KEEL_*_SIZE_V<n>` constants).
    const SIZES: &'static [u32];
}

/// Implements `Versioned` and checks at compile time that the last
/// published size is the struct's size.
macro_rules! versioned {
    ($t:ty, [$($size:expr),+ $(,)?]) => {
        // SAFETY: the struct is repr(C), starts with `struct_size: u32`, holds
        // only integers, raw pointers and optional function pointers, and
        // the assertion below ties its size to the last published version.
        unsafe impl $crate::ffi::versioned::Versioned for $t {
            const NAME: &'static str = stringify!($t);
            const SIZES: &'static [u32] = &[$($size),+];
        }
        const _: () = {
            let sizes: &[u32] = &[$($size),+];
            assert!(sizes[sizes.len() - 1] as usize == std::mem::size_of::<$t>());
        };
    };
}

/// How many bytes keel reads or writes for a caller that declared
/// `declared` bytes: `min(declared, size_of::<T>())`, once `declared` is
/// known to be the size of a published version or larger than keel's.
fn common_len<T: Versioned>(declared: u64, hint: &str) -> Result<usize> {
    let mine = size_of::<T>() as u64;
    let first = T::SIZES[0] as u64;
    if declared < first {
        return Err(Error::invalid(format!(
            "{}.struct_size is {declared}, smaller than the first version ({first} bytes); {hint}",
            T::NAME
        )));
    }
    if declared < mine && !T::SIZES.iter().any(|&s| s as u64 == declared) {
        return Err(Error::invalid(format!(
            "{}.struct_size is {declared}, not the size of a published version ({:?}); {hint}",
            T::NAME,
            T::SIZES
        )));
    }
    if declared > u32::MAX as u64 {
        return Err(Error::invalid(format!("{} size {declared} does not fit struct_size", T::NAME)));
    }
    Ok(declared.min(mine) as usize)
}

/// Reads the caller's `struct_size` without assuming anything past it.
fn declared_size<T: Versioned>(p: *const T) -> u32 {
    // SAFETY: the caller passed a non-NULL pointer to a struct of some
    // version; every version starts with the 4-byte struct_size.
    unsafe { std::ptr::read_unaligned(p as *const u32) }
}

/// Reads an options struct: NULL gives `defaults`; otherwise the caller's
/// fields over `defaults`, as described in the module comment. `init` names
/// the function that fills the struct, for the error message.
pub fn read_options<T: Versioned>(p: *const T, defaults: T, init: &str) -> Result<T> {
    let (value, newer) = read_known_options(p, defaults, init)?;
    newer.map(|()| value)
}

/// `read_options` in two verdicts: the outer error when `struct_size`
/// cannot be read as any published version; otherwise the fields keel
/// knows, and the inner error when the caller set a field of a newer
/// header. For a call that takes ownership of something the known fields
/// name whatever it returns (it must still see them to give it back).
pub fn read_known_options<T: Versioned>(p: *const T, defaults: T, init: &str) -> Result<(T, Result<()>)> {
    if p.is_null() {
        return Ok((defaults, Ok(())));
    }
    let declared = declared_size(p) as usize;
    let n = common_len::<T>(declared as u64, &format!("fill it with {init}()"))?;
    let mut value = defaults;
    // SAFETY: the caller's struct has `declared >= n` bytes and `value` has
    // size_of::<T>() >= n; every byte pattern is valid for T's fields
    // (trait contract) and n ends at a version boundary.
    unsafe { std::ptr::copy_nonoverlapping(p as *const u8, &mut value as *mut T as *mut u8, n) };
    if declared > n {
        // SAFETY: the caller declared `declared` bytes at `p`.
        let newer = unsafe { std::slice::from_raw_parts((p as *const u8).add(n), declared - n) };
        if let Some(at) = newer.iter().position(|&b| b != 0) {
            let e = Error::invalid(format!(
                "{} has a non-zero byte at offset {} past the {n} bytes this keel knows (struct_size {declared}): \
                 an option of a newer keel that this library cannot honour",
                T::NAME,
                n + at
            ));
            return Ok((value, Err(e)));
        }
    }
    Ok((value, Ok(())))
}

/// Fills the caller's options struct of `size` bytes with `defaults`:
/// the fields keel knows, zero past them (the default of every field a
/// newer header adds), and `struct_size = size`.
pub fn init_options<T: Versioned>(p: *mut T, size: usize, defaults: T) -> Result<()> {
    if p.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, "opts is NULL"));
    }
    let n = common_len::<T>(size as u64, "pass sizeof the struct")?;
    // SAFETY: the caller owns `size` writable bytes at `p`, n <= size and n
    // <= size_of::<T>(); `size as u32` fits (checked by common_len).
    unsafe {
        std::ptr::write_bytes(p as *mut u8, 0, size);
        std::ptr::copy_nonoverlapping(&defaults as *const T as *const u8, p as *mut u8, n);
        std::ptr::write_unaligned(p as *mut u32, size as u32);
    }
    Ok(())
}

/// Checks, writing nothing, that `write_stats` would accept `p`: for a
/// result that must not be lost after the work it reports was done.
pub fn check_stats<T: Versioned>(p: *mut T) -> Result<()> {
    if p.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, "out is NULL"));
    }
    common_len::<T>(declared_size(p as *const T) as u64, &format!("set it to sizeof({})", T::NAME)).map(|_| ())
}

/// Writes a stats struct to a caller that set `struct_size`: only the
/// bytes both know, with `struct_size` set to their number.
pub fn write_stats<T: Versioned>(p: *mut T, value: T) -> Result<()> {
    if p.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, "out is NULL"));
    }
    let declared = declared_size(p as *const T);
    let n = common_len::<T>(declared as u64, &format!("set it to sizeof({})", T::NAME))?;
    // SAFETY: the caller declared at least n writable bytes at `p`, `value`
    // has size_of::<T>() >= n bytes; n fits u32 (n <= declared).
    unsafe {
        std::ptr::copy_nonoverlapping(&value as *const T as *const u8, p as *mut u8, n);
        std::ptr::write_unaligned(p as *mut u32, n as u32);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::*;

    /// Version 1 is `a`; version 2 added `b`.
    #[repr(C)]
    #[derive(Debug, PartialEq)]
    struct probe_t {
        struct_size: u32,
        a: u32,
        b: u64,
    }
    versioned!(probe_t, [8, 16]);

    fn defaults() -> probe_t {
        probe_t { struct_size: 16, a: 1, b: 2 }
    }

    #[test]
    fn options_take_defaults_past_an_older_struct_and_refuse_unknown_non_zero_bytes() {
        // Older caller: 8 bytes, nothing readable past them.
        let old: [u32; 2] = [8, 7];
        let got = read_options(old.as_ptr() as *const probe_t, defaults(), "init").unwrap();
        assert_eq!((got.a, got.b), (7, 2));
        // Newer caller: 24 bytes, the unknown tail zero.
        let mut newer = [0u64; 3];
        assert!(init_options(newer.as_mut_ptr() as *mut probe_t, 24, defaults()).is_ok());
        assert_eq!(newer[0] & 0xffff_ffff, 24);
        assert_eq!(newer[1], 2);
        let got = read_options(newer.as_ptr() as *const probe_t, defaults(), "init").unwrap();
        assert_eq!((got.a, got.b), (1, 2));
        newer[2] = 1 << 40;
        let e = read_options(newer.as_ptr() as *const probe_t, defaults(), "init").unwrap_err();
        assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT);
        assert!(e.message.contains("offset 21"), "{}", e.message);
        // Below the first version, and between two versions.
        for bad in [0u32, 4, 12] {
            let s: [u32; 4] = [bad, 0, 0, 0];
            let e = read_options(s.as_ptr() as *const probe_t, defaults(), "init").unwrap_err();
            assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT, "{bad}");
        }
        assert_eq!(read_options(std::ptr::null(), defaults(), "init").unwrap(), defaults());
    }

    #[test]
    fn stats_write_only_what_the_caller_declared() {
        let mut old: [u32; 4] = [8, 0xAAAA_AAAA, 0xAAAA_AAAA, 0xAAAA_AAAA];
        write_stats(old.as_mut_ptr() as *mut probe_t, defaults()).unwrap();
        assert_eq!(old, [8, 1, 0xAAAA_AAAA, 0xAAAA_AAAA]);
        let mut newer: [u64; 3] = [24, u64::MAX, u64::MAX];
        write_stats(newer.as_mut_ptr() as *mut probe_t, defaults()).unwrap();
        assert_eq!(newer[0] as u32, 16, "struct_size says how much keel wrote");
        assert_eq!((newer[1], newer[2]), (2, u64::MAX));
        let mut bad: [u32; 4] = [5, 0, 0, 0];
        assert!(write_stats(bad.as_mut_ptr() as *mut probe_t, defaults()).is_err());
        assert_eq!(bad, [5, 0, 0, 0]);
    }
}
