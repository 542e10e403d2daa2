//! Data-log records waiting for the flusher (`appendable.rs` has the
//! record format).
//!
//! Records are laid out one behind the other as the log will hold them,
//! with one exception: a large value is not copied in. The record holds
//! the value's `Slice` instead (the bytes the appendable segment's map
//! holds anyway) and the flusher writes it from there, in the same
//! `pwritev`. Why: a put of a 4 KiB value otherwise copied it twice into
//! fresh memory (the map's chunk and the staged record), and a restart
//! that replays a gigabyte of such puts spent most of its time in the
//! kernel handing out and zeroing those pages.

use super::arena::{Slice, LARGE};
use super::files;

/// Records staged for the data log.
#[derive(Default)]
pub struct Records {
    /// The records' bytes, without the held values.
    inline: Vec<u8>,
    /// (offset in `inline` where the value's bytes belong, the value), in
    /// offset order: the value is the end of the record before that offset.
    held: Vec<(usize, Slice)>,
    /// The sum of the held values' lengths.
    held_len: usize,
}

impl Records {
    /// Stages a record with its crc left zero (`seal` fills it in). A value
    /// of `LARGE` bytes or more is held, not copied.
    pub fn push(&mut self, version: u64, kind: u8, key: &[u8], payload: Payload) {
        let bytes: &[u8] = match &payload {
            Payload::Bytes(b) => b,
            Payload::Held(s) => s,
        };
        let len = (8 + 1 + 4 + key.len() + bytes.len()) as u32;
        let held = matches!(payload, Payload::Held(_)) && bytes.len() >= LARGE;
        // Room for what is copied: a held value takes none.
        self.inline.reserve(8 + len as usize - if held { bytes.len() } else { 0 });
        self.inline.extend_from_slice(&len.to_le_bytes());
        self.inline.extend_from_slice(&[0; 4]); // the crc, by the flusher
        self.inline.extend_from_slice(&version.to_le_bytes());
        self.inline.push(kind);
        files::put_bytes(&mut self.inline, key);
        match payload {
            Payload::Held(s) if held => {
                self.held_len += s.len();
                self.held.push((self.inline.len(), s.clone()));
            }
            _ => self.inline.extend_from_slice(bytes),
        }
    }

    /// Bytes the records take in the log.
    pub fn len(&self) -> usize {
        self.inline.len() + self.held_len
    }

    pub fn is_empty(&self) -> bool {
        self.inline.is_empty() && self.held.is_empty()
    }

    /// Room for `bytes` more bytes of records (replay knows how much a run
    /// will stage, its held values left out).
    pub fn reserve(&mut self, bytes: usize) {
        self.inline.reserve(bytes);
    }

    /// Capacity of the inline bytes: which of two buffers to keep.
    pub fn capacity(&self) -> usize {
        self.inline.capacity()
    }

    /// Empties the records, keeping the inline room.
    pub fn clear(&mut self) {
        self.inline.clear();
        self.held.clear();
        self.held_len = 0;
    }

    /// Moves every record of `other` behind these.
    pub fn append(&mut self, other: &mut Records) {
        let base = self.inline.len();
        self.held.extend(other.held.drain(..).map(|(at, s)| (base + at, s)));
        self.held_len += std::mem::take(&mut other.held_len);
        self.inline.append(&mut other.inline);
    }

    /// The records' bytes as the log holds them, in order.
    pub fn parts(&self) -> Vec<&[u8]> {
        let mut parts = Vec::with_capacity(2 * self.held.len() + 1);
        let mut from = 0;
        for (at, s) in &self.held {
            parts.push(&self.inline[from..*at]);
            parts.push(&s[..]);
            from = *at;
        }
        parts.push(&self.inline[from..]);
        parts
    }

    /// Fills in the crc32 of every record. Idempotent: records put back
    /// after a failed write are sealed again, to the same bytes.
    pub fn seal(&mut self) {
        let (mut at, mut next) = (0, 0);
        while at < self.inline.len() {
            let len = u32::from_le_bytes(self.inline[at..at + 4].try_into().expect("4 bytes")) as usize;
            // A held value ends its record: the record's inline part stops
            // where the value belongs.
            let held = self.held.get(next).filter(|(off, s)| (at + 8 + len).checked_sub(s.len()) == Some(*off));
            let end = held.map_or(at + 8 + len, |(off, _)| *off);
            let mut crc = crc32fast::Hasher::new();
            crc.update(&self.inline[at + 8..end]);
            if let Some((_, s)) = held {
                crc.update(s);
                next += 1;
            }
            self.inline[at + 4..at + 8].copy_from_slice(&crc.finalize().to_le_bytes());
            at = end;
        }
        debug_assert_eq!(at, self.inline.len(), "staged bytes are whole records");
        debug_assert_eq!(next, self.held.len(), "every held value ends a record");
    }
}

/// The payload of a record being staged.
pub enum Payload<'a> {
    /// Copied into the record.
    Bytes(&'a [u8]),
    /// A value the map holds: held by the record when it is large.
    Held(&'a Slice),
}

impl Payload<'_> {
    pub fn len(&self) -> usize {
        match self {
            Payload::Bytes(b) => b.len(),
            Payload::Held(s) => s.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held values are written where they belong and sealed into their
    /// record's crc: the bytes match records staged with every value copied.
    #[test]
    fn held_values_write_as_copied_ones() {
        let values: Vec<Vec<u8>> = (0..40usize).map(|i| vec![i as u8; [0, 3, LARGE - 1, LARGE, 3 * LARGE][i % 5]]).collect();
        let (mut held, mut copied) = (Records::default(), Records::default());
        let mut second = Records::default();
        for (i, v) in values.iter().enumerate() {
            let key = format!("key{i}");
            let slice = Slice::from(v.clone());
            let to = if i < 25 { &mut held } else { &mut second };
            to.push(i as u64, 1, key.as_bytes(), Payload::Held(&slice));
            copied.push(i as u64, 1, key.as_bytes(), Payload::Bytes(v));
        }
        held.append(&mut second);
        assert!(second.is_empty());
        for _ in 0..2 {
            held.seal();
        }
        copied.seal();
        assert!(!held.held.is_empty() && copied.held.is_empty());
        assert_eq!(held.len(), copied.len());
        assert_eq!(held.parts().concat(), copied.parts().concat());
        held.clear();
        assert_eq!((held.is_empty(), held.len()), (true, 0));
    }
}
