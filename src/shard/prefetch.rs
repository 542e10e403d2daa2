//! Cache hints for loops that know which bytes they will read a few
//! steps ahead (replay in key order: records scattered over a run's
//! bytes, Bloom filter bits scattered over a table). A hint changes no
//! result, only when the bytes arrive.

/// A hint that `bytes` (its first two cache lines) will be read soon.
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for at in [0, 64].into_iter().filter(|&at| at < bytes.len()) {
            // SAFETY: a prefetch is only a hint: it reads nothing into the
            // program and never faults, and the address is inside `bytes`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(at).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
