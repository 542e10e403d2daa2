//! Appends that are durable when the write returns: a SYNC log's frames.
//!
//! A SYNC log syncs after every group of appends. Through the page cache
//! that is a `pwritev`, then an `fdatasync` that finds the dirty pages,
//! writes them back and flushes the device's cache. Written with
//! `O_DIRECT | O_DSYNC` instead, the same bytes go from the process to the
//! device in the write itself, followed by the flush, and the fdatasync
//! has nothing left to do: fewer steps, and about a fifth more syncs a
//! second from the same disk (measured in docs/WAL.md, "Writes").
//!
//! Direct writes move whole blocks (`BLOCK` bytes, at offsets and memory
//! addresses that are multiples of it). A log's appends end mid-block, so
//! each one rewrites the block it starts in: the bytes before the append
//! come from the last block written (kept here) or, after a reopen, from
//! the file; the bytes after it, up to the block's end, are written as
//! zeros. That is only right at the end of a log, where the file holds
//! zeros (segments are zero-filled, and recovery zeroes a torn tail):
//! hence a method of its own, `File::append_at`, for those writes only.

use super::File;
use parking_lot::Mutex;
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

/// The unit of a direct write: offsets, lengths and buffer addresses are
/// multiples of it. 4 KiB serves devices of 512 B and of 4 KiB logical
/// blocks alike; a file system that wants more refuses the first write
/// (EINVAL) and the file's appends go through the page cache from then on.
pub const BLOCK: usize = 4096;

/// A zeroed heap buffer whose address and length are multiples of `BLOCK`.
struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain owned memory; it is only reached through
// `&self`/`&mut self`, so the usual borrow rules keep its users apart.
unsafe impl Send for AlignedBuf {}
// SAFETY: as for Send: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, BLOCK).expect("a block multiple below isize::MAX")
    }

    fn zeroed(len: usize) -> AlignedBuf {
        debug_assert!(len > 0 && len % BLOCK == 0, "whole blocks");
        // SAFETY: the layout has a non-zero size (asserted above).
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        let Some(ptr) = NonNull::new(ptr) else { std::alloc::handle_alloc_error(Self::layout(len)) };
        AlignedBuf { ptr, len }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a live allocation of `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
    }
}

/// What the appends keep between calls (allocated by the first: a file
/// that is never appended to, such as a spare segment not yet in use,
/// holds no buffer).
#[derive(Default)]
struct Tail {
    /// The offset of the last block written, and its bytes.
    last: Option<(u64, AlignedBuf)>,
    /// Where an append is assembled: grown as appends need, and given
    /// back after an append larger than `SCRATCH_KEPT`.
    scratch: Option<AlignedBuf>,
}

/// The largest assembly buffer a file keeps between appends.
const SCRATCH_KEPT: usize = 1 << 20;

/// A file's second descriptor, `O_DIRECT | O_DSYNC`, for its appends.
pub struct DirectAppends {
    fd: fs::File,
    /// Held for a whole append: appends of one file never interleave.
    tail: Mutex<Tail>,
    /// Cleared when the file system refused a direct write (EINVAL).
    usable: AtomicBool,
}

/// How an append went.
pub enum Appended {
    /// Written directly and durable.
    Durable,
    /// Not written: the file system takes no direct writes; write it
    /// through the page cache.
    Refused,
}

impl DirectAppends {
    /// The descriptor for `path`'s appends, or None where the file system
    /// takes no `O_DIRECT` (tmpfs before Linux 6.6, some FUSE mounts).
    pub fn open(path: &Path) -> io::Result<Option<DirectAppends>> {
        match fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_DSYNC).open(path) {
            Ok(fd) => Ok(Some(DirectAppends {
                fd,
                tail: Mutex::new(Tail::default()),
                usable: AtomicBool::new(true),
            })),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `parts` at `off`, the end of the file's data, and returns
    /// once they are on stable storage. The rest of the last block is
    /// written as zeros. `file` (the same file, through the page cache)
    /// gives the bytes before `off` in its block when they are not the
    /// last block written.
    pub fn append(&self, file: &dyn File, parts: &[&[u8]], off: u64) -> io::Result<Appended> {
        if !self.usable.load(Ordering::Acquire) {
            return Ok(Appended::Refused);
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return Ok(Appended::Durable);
        }
        let start = off - off % BLOCK as u64;
        let before = (off - start) as usize;
        let len = (before + total).div_ceil(BLOCK) * BLOCK;
        let mut guard = self.tail.lock();
        let tail = &mut *guard;
        // Whatever happens next, the kept block is only trusted again
        // once a write of it succeeds.
        let last = tail.last.take();
        let scratch = match tail.scratch.take() {
            Some(s) if s.len >= len => s,
            _ => AlignedBuf::zeroed(len.next_power_of_two()),
        };
        let buf = &mut tail.scratch.insert(scratch).bytes_mut()[..len];
        if before > 0 {
            match &last {
                Some((b, bytes)) if *b == start => buf[..before].copy_from_slice(&bytes.bytes()[..before]),
                _ => {
                    let got = file.read_up_to(&mut buf[..before], start)?;
                    buf[got..before].fill(0);
                }
            }
        }
        let mut at = before;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        buf[at..].fill(0);
        let written = pwrite_block_aligned(&self.fd, buf, start);
        if written.is_ok() {
            let mut kept = last.map_or_else(|| AlignedBuf::zeroed(BLOCK), |(_, bytes)| bytes);
            kept.bytes_mut().copy_from_slice(&buf[len - BLOCK..]);
            tail.last = Some((start + (len - BLOCK) as u64, kept));
        }
        if len > SCRATCH_KEPT {
            tail.scratch = None;
        }
        match written {
            Ok(()) => Ok(Appended::Durable),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.usable.store(false, Ordering::Release);
                Ok(Appended::Refused)
            }
            Err(e) => Err(e),
        }
    }

    /// A write through the page cache touched [off, off + len): the kept
    /// block no longer says what the file holds there.
    pub fn overwritten(&self, off: u64, len: u64) {
        let mut tail = self.tail.lock();
        if tail.last.as_ref().is_some_and(|(b, _)| *b < off + len && off < b + BLOCK as u64) {
            tail.last = None;
        }
    }
}

/// One direct write of `buf` at `off`. A short write is an error: what
/// it left could not be completed with aligned writes.
fn pwrite_block_aligned(fd: &fs::File, buf: &[u8], off: u64) -> io::Result<()> {
    debug_assert!(buf.as_ptr() as usize % BLOCK == 0 && buf.len() % BLOCK == 0 && off % BLOCK as u64 == 0, "a direct write moves whole blocks");
    loop {
        // SAFETY: `buf` is a live slice of `buf.len()` bytes; the call only
        // reads it.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr() as *const libc::c_void, buf.len(), off as libc::off_t) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n as usize != buf.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, format!("a direct write of {} bytes wrote {n}", buf.len())));
        }
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::BLOCK;
    use crate::fs::{File, FileSystem, StdFs};
    use crate::test_dir::TestDir;
    use std::sync::Arc;

    /// The file's bytes read through a descriptor of its own.
    fn on_disk(fs: &StdFs, path: &std::path::Path) -> Vec<u8> {
        let f = fs.open(path, false).unwrap();
        let mut bytes = vec![0u8; f.len().unwrap() as usize];
        assert_eq!(f.read_up_to(&mut bytes, 0).unwrap(), bytes.len());
        bytes
    }

    /// Appends of every size, across and up to block ends, interleaved with
    /// a page-cache write into the last block and a reopen (which loses
    /// the kept block): the file always reads as the model says, and the
    /// zeros past the end stay zeros.
    #[test]
    fn appends_read_back_whole() {
        let dir = TestDir::new("synced-appends");
        let fs = StdFs::synced();
        let path = dir.join("log");
        const LEN: usize = 64 * BLOCK;
        let mut model = vec![0u8; LEN];
        let mut file: Arc<dyn File> = fs.create(&path).unwrap();
        file.allocate(LEN as u64).unwrap();
        file.sync_data().unwrap();
        // A header through the page cache, as a segment's is.
        file.write_at(&[b"header!!"], 0).unwrap();
        model[..8].copy_from_slice(b"header!!");
        file.sync_data().unwrap();
        let mut end = 8usize;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut step = 0u8;
        while end < LEN - 3 * BLOCK {
            step = step.wrapping_add(1);
            // Sizes from 1 byte to over two blocks, and some that end a block.
            let len = match next() % 4 {
                0 => BLOCK - end % BLOCK,
                1 => 1 + (next() % 64) as usize,
                _ => 1 + (next() % (2 * BLOCK as u64 + 100)) as usize,
            };
            let bytes: Vec<u8> = (0..len).map(|i| step ^ i as u8 | 1).collect();
            let (a, b) = bytes.split_at(len / 2);
            file.append_at(&[a, b], end as u64).unwrap();
            model[end..end + len].copy_from_slice(&bytes);
            end += len;
            match step % 7 {
                // A write through the page cache inside the block last
                // appended to (recovery zeroing a torn tail does this).
                3 if end % BLOCK > 4 => {
                    file.write_at(&[&[0xAB, 0xCD]], end as u64 - 2).unwrap();
                    model[end - 2..end].copy_from_slice(&[0xAB, 0xCD]);
                }
                5 => {
                    file.sync_data().unwrap();
                    file = fs.open(&path, true).unwrap();
                }
                _ => {}
            }
            assert_eq!(on_disk(&fs, &path), model, "after {step} appends, ending at {end}");
        }
        file.sync_data().unwrap();
        if super::DirectAppends::open(&path).unwrap().is_some() {
            assert_eq!(file.descriptors(), 2, "a writable file keeps a descriptor for its appends");
        }
        assert_eq!(fs.open(&path, false).unwrap().descriptors(), 1, "a read-only one does not");
        assert_eq!(StdFs::direct().open(&path, true).unwrap().descriptors(), 1);
    }

    /// An append larger than the buffer a file keeps (a large record),
    /// then small ones: each lands whole, the kept block still serves.
    #[test]
    fn a_large_append_between_small_ones() {
        let dir = TestDir::new("synced-large");
        let fs = StdFs::synced();
        let path = dir.join("log");
        let file = fs.create(&path).unwrap();
        let len = 2 * super::SCRATCH_KEPT + 3 * BLOCK;
        file.allocate(len as u64).unwrap();
        file.sync_data().unwrap();
        let mut model = vec![0u8; len];
        let mut end = 0;
        for (i, size) in [100, 2 * super::SCRATCH_KEPT + 7, 50, BLOCK].into_iter().enumerate() {
            let bytes: Vec<u8> = (0..size).map(|j| (i * 31 + j % 251) as u8 | 1).collect();
            file.append_at(&[&bytes], end as u64).unwrap();
            model[end..end + size].copy_from_slice(&bytes);
            end += size;
            assert_eq!(on_disk(&fs, &path), model, "after append {i} of {size} bytes");
        }
    }
}
