//! keel: an embeddable shard engine with a C ABI.
//!
//! Components live in one folder each; `ffi/` is the C boundary that
//! `include/keel.h` is generated from.

pub(crate) mod codec;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod fs;
pub(crate) mod futex;
pub mod lease;
pub mod net;
pub mod node;
pub mod shard;
pub mod status;
#[cfg(test)]
pub(crate) mod test_dir;
pub mod transfer;
pub mod wal;

pub use error::{Error, Result};
