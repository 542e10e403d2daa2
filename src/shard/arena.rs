//! Value bytes of an in-memory map, copied into shared chunks.
//!
//! Why: the appendable segment takes every put, and a value allocated on
//! its own costs a malloc on the write path and a free on the flush
//! worker that drops the sealed map. With glibc those frees lock the
//! writer's malloc arena from the other thread, and the writer waits for
//! that lock and sorts the freed chunks back into its bins: a sixth of a
//! buffered put went there. An arena copies each value behind the last
//! one in a chunk (one allocation for hundreds of small values) and the
//! map's entries share the chunk: a chunk is freed when its last value is.
//!
//! A value is never changed in place: an overwrite takes new bytes, and
//! the old ones stay in their chunk until every value in it is gone. The
//! appendable segment's weight counts every value written, overwrites
//! included, so it seals (and its chunks go) before dead bytes pile up
//! past the seal threshold.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

/// The first chunk of an arena: a shard that holds a few small values
/// keeps little memory.
const FIRST_CHUNK: usize = 1024;
/// Chunks double up to this size.
const MAX_CHUNK: usize = 64 * 1024;
/// A value at least this large gets a chunk of its own: its copy costs
/// far more than the allocation saved, and page-sized values packed into
/// shared chunks made a restart slower (0.80 s against 0.70 s to replay
/// 576 MiB of 4 KiB puts) where 100 B values made it faster.
pub const LARGE: usize = 1024;

/// Writes values into chunks; owned by the map whose values they are.
#[derive(Default)]
pub struct Arena {
    /// The chunk being filled and how many of its bytes are taken.
    current: Option<(Arc<Chunk>, usize)>,
    /// Size of the next shared chunk (0: the first).
    next: usize,
}

/// One value's bytes in a chunk. Cloning shares them.
#[derive(Clone)]
pub struct Slice {
    chunk: Arc<Chunk>,
    start: u32,
    len: u32,
}

/// Memory that values are copied into, front to back, or memory that
/// something else owns and keeps (`Kept`).
struct Chunk {
    ptr: NonNull<u8>,
    cap: usize,
    /// Who keeps the memory: None for the memory of a Vec this chunk took
    /// over (freed with it).
    owner: Option<Arc<dyn Any + Send + Sync>>,
}

// SAFETY: a chunk's bytes are written only by the one `Arena` that fills
// it, through `&mut Arena`, and only past every `Slice` handed out; a
// `Slice` reads bytes written before it was created, never written again
// (kept memory's bytes are never written: `Kept::new`'s contract).
// Threads that receive a `Slice` get it through the map's lock (or a clone
// made under it), which orders those writes before their reads.
unsafe impl Send for Chunk {}
// SAFETY: as for Send: shared access only ever reads finished bytes.
unsafe impl Sync for Chunk {}

impl Chunk {
    /// Takes over `bytes`' memory (its length is the caller's to track).
    fn from_vec(bytes: Vec<u8>) -> Arc<Chunk> {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        let cap = bytes.capacity();
        Arc::new(Chunk { ptr: NonNull::new(bytes.as_mut_ptr()).expect("a Vec's pointer is never null"), cap, owner: None })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if self.owner.is_some() {
            return; // the owner's memory, released with the owner
        }
        // SAFETY: `ptr` and `cap` are those of the Vec taken over in
        // `from_vec`, whose memory nothing else frees; a length of 0 drops
        // no elements (u8 has no drop anyway).
        unsafe { drop(Vec::from_raw_parts(self.ptr.as_ptr(), 0, self.cap)) }
    }
}

impl Arena {
    /// Copies `bytes` into the arena.
    pub fn hold(&mut self, bytes: &[u8]) -> Slice {
        let len = bytes.len();
        if len >= LARGE {
            return Slice::from(bytes.to_vec());
        }
        let room = self.current.as_ref().map_or(0, |(c, fill)| c.cap - fill);
        if self.current.is_none() || room < len {
            self.next = (self.next * 2).clamp(FIRST_CHUNK, MAX_CHUNK);
            self.current = Some((Chunk::from_vec(Vec::with_capacity(self.next)), 0));
        }
        let (chunk, fill) = self.current.as_mut().expect("a chunk with room was just made");
        let slice = Self::copy_into(chunk, *fill, bytes);
        *fill += len;
        slice
    }

    /// Copies `bytes` to `chunk` at `at`, past every slice of it.
    fn copy_into(chunk: &Arc<Chunk>, at: usize, bytes: &[u8]) -> Slice {
        assert!(at + bytes.len() <= chunk.cap, "the chunk has room for the value");
        // SAFETY: [at, at + len) lies inside the chunk's allocation
        // (asserted) and past every slice handed out from it (the arena's
        // fill only grows), so nothing reads or writes it meanwhile; the
        // source is a live borrow, not in this chunk's free tail.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), chunk.ptr.as_ptr().add(at), bytes.len()) };
        Slice { chunk: chunk.clone(), start: at as u32, len: bytes.len() as u32 }
    }
}

/// Memory that something else owns and keeps, from which values are
/// taken without a copy (a WAL segment mapped for replay).
pub struct Kept {
    chunk: Arc<Chunk>,
}

impl Kept {
    /// `bytes`, kept alive by `owner`.
    ///
    /// # Safety
    /// `bytes` must lie in memory that `owner` keeps mapped, at the same
    /// address and unchanged, for as long as `owner` lives.
    pub unsafe fn new(owner: Arc<dyn Any + Send + Sync>, bytes: &[u8]) -> Kept {
        let ptr = NonNull::new(bytes.as_ptr() as *mut u8).expect("a slice's pointer is never null");
        Kept { chunk: Arc::new(Chunk { ptr, cap: bytes.len(), owner: Some(owner) }) }
    }

    /// Whether `part` lies inside the kept memory at an offset a `Slice`
    /// can hold (below 4 GiB).
    pub fn holds(&self, part: &[u8]) -> bool {
        let (base, at) = (self.chunk.ptr.as_ptr() as usize, part.as_ptr() as usize);
        at >= base && at + part.len() <= base + self.chunk.cap && at + part.len() - base <= u32::MAX as usize
    }

    /// `part` of the kept memory as a value, sharing it.
    pub fn slice(&self, part: &[u8]) -> Slice {
        assert!(self.holds(part), "a kept slice lies inside the kept memory");
        let start = part.as_ptr() as usize - self.chunk.ptr.as_ptr() as usize;
        Slice { chunk: self.chunk.clone(), start: start as u32, len: part.len() as u32 }
    }
}

impl From<Vec<u8>> for Slice {
    /// A value that is already in memory becomes a chunk of its own,
    /// without a copy.
    fn from(bytes: Vec<u8>) -> Slice {
        let len = bytes.len();
        // Values are bounded far below this (op::MAX_VALUE_SIZE).
        assert!(len <= u32::MAX as usize, "a value of {len} bytes does not fit an arena slice");
        Slice { chunk: Chunk::from_vec(bytes), start: 0, len: len as u32 }
    }
}

impl std::ops::Deref for Slice {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        debug_assert!(self.start as usize + self.len as usize <= self.chunk.cap);
        // SAFETY: the range lies inside the chunk and its bytes are never
        // written once this slice exists: copied in by `copy_into` before
        // it was made, the whole of a Vec taken over (`From<Vec<u8>>`), or
        // kept memory checked by `Kept::holds` (unchanged while its owner
        // lives: `Kept::new`'s contract). The chunk, and the owner it
        // holds, live as long as the Arc this slice holds.
        unsafe { std::slice::from_raw_parts(self.chunk.ptr.as_ptr().add(self.start as usize), self.len as usize) }
    }
}

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for Slice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl PartialEq for Slice {
    fn eq(&self, other: &Slice) -> bool {
        **self == **other
    }
}

impl Eq for Slice {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values keep their bytes however chunks fill, grow and are shared;
    /// a chunk outlives the arena while a slice of it lives.
    #[test]
    fn slices_keep_their_bytes_across_chunks() {
        let mut arena = Arena::default();
        let values: Vec<Vec<u8>> = (0..3000u32).map(|i| vec![i as u8; (i as usize * 7) % 300 + (i as usize % 11 == 0) as usize * LARGE]).collect();
        let slices: Vec<Slice> = values.iter().map(|v| arena.hold(v)).collect();
        let empty = arena.hold(&[]);
        drop(arena);
        assert!(Slice::from(Vec::new()).is_empty());
        assert_eq!(&Slice::from(b"taken over".to_vec())[..], b"taken over");
        for (v, s) in values.iter().zip(&slices) {
            assert_eq!(&s[..], &v[..]);
        }
        assert!(empty.is_empty());
        let shared = slices[5].clone();
        drop(slices);
        assert_eq!(&shared[..], &values[5][..]);
    }

    /// Slices of kept memory share it and keep its owner alive; dropping
    /// them frees nothing of the owner's.
    #[test]
    fn kept_slices_keep_their_owner() {
        let owner: Arc<Vec<u8>> = Arc::new((0..200u8).collect());
        // SAFETY: the bytes are the Vec's, which the Arc keeps and nobody
        // changes (no other handle can mutate through a shared Arc).
        let kept = unsafe { Kept::new(owner.clone(), &owner[..]) };
        assert!(kept.holds(&owner[10..150]) && kept.holds(&owner[200..]));
        assert!(!kept.holds(&[1, 2, 3]), "memory elsewhere");
        let (a, b) = (kept.slice(&owner[10..150]), kept.slice(&owner[0..1]));
        assert!(Arc::ptr_eq(&kept.chunk, &a.chunk) && Arc::ptr_eq(&a.chunk, &b.chunk));
        drop(kept);
        assert_eq!(Arc::strong_count(&owner), 2, "one chunk, shared");
        assert_eq!((&a[..], &b[..]), (&owner[10..150], &owner[0..1]));
        drop((a, b));
        assert_eq!(Arc::strong_count(&owner), 1, "the chunk let go of its owner");
    }

    /// Chunks grow from small to the largest size, and a large value gets
    /// its own: a handful of small values costs a small chunk.
    #[test]
    fn chunks_start_small_and_double() {
        let mut arena = Arena::default();
        let cap = |a: &Arena| a.current.as_ref().map(|(c, _)| c.cap).unwrap();
        arena.hold(&[1; 10]);
        assert_eq!(cap(&arena), FIRST_CHUNK);
        let big = arena.hold(&vec![2; LARGE]);
        assert!(big.chunk.cap >= LARGE && cap(&arena) == FIRST_CHUNK, "a large value has a chunk of its own");
        for _ in 0..10_000 {
            arena.hold(&[3; 100]);
        }
        assert_eq!(cap(&arena), MAX_CHUNK);
    }
}
