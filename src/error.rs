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
    /// Wraps an OS error with what keel was doing, with the status
    /// `status_of` gives it.
    pub fn io(context: impl std::fmt::Display, e: io::Error) -> Self {
        Self::new(status_of(&e), format!("{context}: {e}"))
    }
}

/// The status of an OS error: ENOSPC and EDQUOT are NO_SPACE and EMFILE,
/// ENFILE, ENOMEM and EAGAIN are RESOURCE, so hosts can tell "disk full"
/// and "out of descriptors, memory or threads" (both pass) from a failing
/// device. (EAGAIN is what a thread that cannot be started reports; keel's
/// files and sockets that can answer it otherwise handle it before it gets
/// here.) The descriptor cache's failure to reopen a file has the status
/// of the open's error (`fs::reopen_failure`).
pub(crate) fn status_of(e: &io::Error) -> keel_status_t {
    match e.raw_os_error().or_else(|| crate::fs::reopen_failure(e).and_then(io::Error::raw_os_error)) {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => KEEL_STATUS_NO_SPACE,
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM) | Some(libc::EAGAIN) => KEEL_STATUS_RESOURCE,
        _ => KEEL_STATUS_IO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a host can retry (RESOURCE, NO_SPACE) is told apart from a
    /// failing device (IO). EAGAIN is what std reports when a thread cannot
    /// be started (pthread_create), as each keel open starts some.
    #[test]
    fn os_errors_map_to_the_status_a_host_acts_on() {
        let status = |errno| Error::io("x", io::Error::from_raw_os_error(errno)).status;
        assert_eq!(status(libc::ENOSPC), KEEL_STATUS_NO_SPACE);
        assert_eq!(status(libc::EDQUOT), KEEL_STATUS_NO_SPACE);
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::EAGAIN] {
            assert_eq!(status(errno), KEEL_STATUS_RESOURCE, "errno {errno}");
        }
        assert_eq!(status(libc::EIO), KEEL_STATUS_IO);
    }
}
