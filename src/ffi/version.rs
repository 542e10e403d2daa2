//! Library version at run time; the header carries the same numbers as
//! KEEL_VERSION_* macros (generated from Cargo.toml by build.rs).

use std::os::raw::c_char;

/// ABI version: bumped on every incompatible change of this header. The C++
/// and Go wrappers compare it with keel_abi_version() when they start.
pub const KEEL_ABI_VERSION: u32 = 1;

/// Returns the library version as a static string such as "0.1.0".
#[no_mangle]
pub extern "C" fn keel_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// Returns the ABI version of the loaded library (compare with KEEL_ABI_VERSION).
#[no_mangle]
pub extern "C" fn keel_abi_version() -> u32 {
    KEEL_ABI_VERSION
}
