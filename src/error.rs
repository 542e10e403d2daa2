//! The one error type of the crate: a status code plus a message.

use crate::status::*;
use std::io;

/// An error with the status code the C ABI reports and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", crate::status::status_name(*.status).trim_end_matches('\0'))]
pub struct Error {
    pub status: keel_status_t,
    pub message: String,
    /// For NOT_LEADER: the leader's consensus id when this node knows it
    /// (read from C with keel_error_leader_hint()).
    pub leader_hint: Option<u64>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(status: keel_status_t, message: impl Into<String>) -> Self {
        Error { status, message: message.into(), leader_hint: None }
    }
    /// NOT_LEADER, naming the leader when known.
    pub fn not_leader(leader_hint: Option<u64>, message: impl Into<String>) -> Self {
        Error { leader_hint, ..Self::new(KEEL_STATUS_NOT_LEADER, message) }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(KEEL_STATUS_INVALID_ARGUMENT, message)
    }
    pub fn corruption(message: impl Into<String>) -> Self {
        Self::new(KEEL_STATUS_CORRUPTION, message)
    }
    /// Wraps an OS error with what keel was doing; ENOSPC and EDQUOT become
    /// NO_SPACE and EMFILE, ENFILE and ENOMEM become RESOURCE, so hosts can
    /// tell "disk full" and "out of descriptors or memory" (both pass) from
    /// a failing device.
    pub fn io(context: impl std::fmt::Display, e: io::Error) -> Self {
        let status = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => KEEL_STATUS_NO_SPACE,
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM) => KEEL_STATUS_RESOURCE,
            _ => KEEL_STATUS_IO,
        };
        Self::new(status, format!("{context}: {e}"))
    }
}
