//! The C ABI. Every `extern "C"` function lives here and is exported to
//! `include/keel.h` by cbindgen; see docs/FFI.md for the conventions.
//!
//! Two macros carry the safety rules (see `boundary.rs`):
//! `ffi_boundary!` runs a body under `catch_unwind` and turns its
//! `Result` into a status plus an optional error object, and
//! `try_handle!` checks and casts an opaque handle.

#![allow(non_camel_case_types)] // C type names (keel_wal_t, ...) are the ABI
// Entry points take raw pointers from C and check them (try_handle!,
// in_bytes, out_ptr) instead of being `unsafe fn`: the caller is C.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

#[macro_use]
mod boundary;
#[macro_use]
mod versioned;
mod apply;
mod buf;
mod consensus;
mod engine;
mod error;
mod fence;
mod node;
mod read;
mod shard;
mod version;
mod wal;
mod writer;

pub use apply::*;
pub use boundary::Opaque;
pub use buf::*;
pub use consensus::*;
pub use engine::*;
pub use error::*;
pub use fence::*;
pub use node::*;
pub use read::*;
pub use shard::*;
pub use version::*;
pub use wal::*;
pub use writer::*;
