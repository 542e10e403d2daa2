//! Little-endian fields of keel's small binary records (segment and
//! state files, the engine's shard list, the commit log's copies): a
//! cursor that reads them front to back and fails with CORRUPTION, never a
//! panic, when a record is cut short.

use crate::error::{Error, Result};

pub struct Cursor<'a> {
    pub bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::corruption("record cut short"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// A `[u32 count]` of records that take at least `min_len` bytes each,
    /// refused when the bytes left cannot hold that many: a decoder may
    /// then reserve room for the count, which the input bounds.
    pub fn count(&mut self, min_len: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_len) > self.bytes.len() {
            return Err(Error::corruption(format!(
                "{n} records of at least {min_len} bytes each do not fit in the {} bytes left",
                self.bytes.len()
            )));
        }
        Ok(n)
    }
    /// A `[u32 length][bytes]` field.
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Writes a `[u32 length][bytes]` field (`Cursor::bytes` reads it).
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}
