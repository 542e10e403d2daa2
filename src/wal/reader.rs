//! Streaming records from a sequence number (W6).

use super::format::{each_record, FrameHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::segment::{self, ReadSegment, SegmentMeta, View};
use super::{ReadUpto, Shared};
use crate::error::{Error, Result};
use crate::status::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const READ_CHUNK: usize = 256 << 10;

struct OpenSegment {
    meta: SegmentMeta,
    /// Shared with every other reader of this segment.
    handle: Arc<ReadSegment>,
    len: u64,
    /// Offset of the next frame to decode.
    offset: u64,
    /// The first sequence of the segment after this one, if there was one
    /// when this one was opened: records below it are in this segment.
    next_first: Option<u64>,
}

/// The mapped segment a record was read from in place. The bytes of a
/// record handed out never change and stay mapped while the segment's
/// handle lives, even after truncation removes the file: the log only
/// ever writes past its last record, and removes segments, never rewrites
/// or shortens them. So a value can stay there instead of being copied
/// (`shard::arena::Kept`).
pub struct InPlace<'a>(&'a Arc<ReadSegment>);

/// A record's sequence number, its bytes and, when they were read in
/// place, who keeps them (`Reader::peek_in_place`).
pub type RecordInPlace<'a> = (u64, &'a [u8], Option<InPlace<'a>>);

impl InPlace<'_> {
    /// The owner that keeps the record's memory mapped.
    pub fn owner(&self) -> Arc<dyn std::any::Any + Send + Sync> {
        self.0.clone()
    }

    /// The whole mapped segment the record lies in.
    pub fn segment(&self) -> &[u8] {
        self.0.mapped().expect("a frame read in place is in a mapped segment")
    }
}

/// The frame holding the next record, decoded and verified.
struct Frame {
    first_seq: u64,
    /// The frame's records when they were read with pread.
    payload: Vec<u8>,
    /// Where the frame's records are when they are read in place: the
    /// mapped segment and the offset of the frame's payload in it.
    mapped: Option<(Arc<ReadSegment>, usize)>,
    /// (start, len) of each record inside the payload.
    spans: Vec<(usize, usize)>,
}

/// Reads records in order from a starting sequence number, following the
/// log as it grows. While it lives it pins the segment it reads and every
/// later one, so truncation cannot delete them. It opens nothing of its
/// own: the segment it reads is shared with the log's other readers, and
/// until its first read it holds no memory beyond itself.
pub struct Reader {
    shared: Arc<Shared>,
    upto: ReadUpto,
    pin: u64,
    next: u64,
    segment: Option<OpenSegment>,
    frame: Option<Frame>,
    /// The buffers of the last frame read, reused by the next one: a
    /// replay reads millions of one-record frames.
    spare: Frame,
    /// Read-ahead window over the current segment when it is read with
    /// pread (no map): `window` holds the bytes at `window_at..`, read when
    /// records up to `window_upto` were written (beyond that it may hold the
    /// zeros of the not yet written part). Allocated at the first such read.
    window: Vec<u8>,
    window_at: u64,
    window_upto: u64,
}

impl Reader {
    pub(crate) fn open(shared: Arc<Shared>, from: u64, upto: ReadUpto) -> Result<Reader> {
        let pin = {
            let mut st = shared.state.lock();
            shared.check_usable(&st)?;
            let first = st.segments.first().map_or(st.next_seq, |s| s.first_seq);
            let from = if from == 0 { first } else { from };
            if from < first {
                return Err(Error::new(
                    KEEL_STATUS_TRUNCATED,
                    format!("sequence {from} is below the first retained record {first}"),
                ));
            }
            if from > st.next_seq {
                return Err(Error::invalid(format!("sequence {from} is beyond the last record {}", st.next_seq - 1)));
            }
            let seg_first = st.segments.iter().rev().find(|s| s.first_seq <= from).map_or(from, |s| s.first_seq);
            let id = st.next_pin;
            st.next_pin += 1;
            st.pins.insert(id, seg_first);
            (id, from)
        };
        Ok(Reader {
            shared,
            upto,
            pin: pin.0,
            next: pin.1,
            segment: None,
            frame: None,
            spare: Frame { first_seq: 0, payload: Vec::new(), mapped: None, spans: Vec::new() },
            window: Vec::new(),
            window_at: 0,
            window_upto: 0,
        })
    }

    /// The next record without consuming it: `None` when the reader has
    /// caught up with the log (try again later).
    pub fn peek(&mut self) -> Result<Option<(u64, &[u8])>> {
        Ok(self.peek_in_place()?.map(|(seq, record, _)| (seq, record)))
    }

    /// `peek`, and when the record is read in place from a mapped segment
    /// (not copied), who keeps that memory (`InPlace`).
    pub fn peek_in_place(&mut self) -> Result<Option<RecordInPlace<'_>>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::new(KEEL_STATUS_CLOSED, "the WAL of this reader is closed"));
        }
        if self.frame.is_none() && !self.load_frame()? {
            return Ok(None);
        }
        let f = self.frame.as_ref().unwrap();
        let (start, len) = f.spans[(self.next - f.first_seq) as usize];
        let (payload, in_place) = match &f.mapped {
            Some((seg, at)) => (&seg.mapped().expect("a frame read in place is in a mapped segment")[*at..], Some(InPlace(seg))),
            None => (&f.payload[..], None),
        };
        Ok(Some((self.next, &payload[start..start + len], in_place)))
    }

    /// Consumes the record returned by the last successful `peek`.
    pub fn advance(&mut self) {
        if let Some(f) = &self.frame {
            self.next += 1;
            if self.next >= f.first_seq + f.spans.len() as u64 {
                self.spare = self.frame.take().expect("checked above");
            }
        }
    }

    /// Convenience for Rust callers: the next record as an owned copy.
    pub fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let r = self.peek()?.map(|(s, d)| (s, d.to_vec()));
        self.advance();
        Ok(r)
    }

    fn limit(&self) -> u64 {
        match self.upto {
            ReadUpto::Durable => self.shared.durable.load(Ordering::Acquire),
            ReadUpto::Appended => self.shared.filed.load(Ordering::Acquire),
        }
    }

    /// Finds and verifies the frame that holds `self.next`; false when that
    /// record does not exist yet.
    fn load_frame(&mut self) -> Result<bool> {
        self.next = self.shared.skip_gap(self.next);
        if self.next > self.limit() {
            return Ok(false);
        }
        if self.next > self.window_upto {
            self.window.clear(); // read before this record was written
        }
        loop {
            self.move_to_segment_of_next()?;
            let seg = self.segment.as_ref().unwrap();
            let (at, room, salt, name) = (seg.offset, seg.len.saturating_sub(seg.offset), seg.handle.salt, seg.meta.path.clone());
            let checked_end = seg.meta.checked_end;
            let next = self.next;
            let corrupt = |why: &str| {
                Error::corruption(format!("record {next} unreadable in {} at offset {at}: {why}", name.display()))
            };
            if room < FRAME_HEADER_LEN as u64 {
                return Err(corrupt("segment ends before it"));
            }
            let mut head = [0u8; FRAME_HEADER_LEN];
            head.copy_from_slice(self.bytes(at, FRAME_HEADER_LEN)?);
            let h = FrameHeader::parse(&head).ok_or_else(|| corrupt("segment ends before it"))?;
            if !h.plausible(&head, room) && !h.plausible(&head, self.refresh_len()?.saturating_sub(at)) {
                return Err(corrupt("malformed frame header"));
            }
            let end = h.seq.saturating_add(h.count as u64);
            if end <= self.next {
                // An earlier frame while positioning (a replay starts in
                // the middle of a segment): stepped over by its header.
                // Nothing of it is handed out, and the frame that is gets
                // its checksum and its sequence checked below, so a
                // damaged header here cannot pass for a record.
                self.segment.as_mut().unwrap().offset += h.size();
                continue;
            }
            let (payload_at, len) = (at + FRAME_HEADER_LEN as u64, h.len as usize);
            let mut payload = std::mem::take(&mut self.spare.payload);
            payload.clear();
            let mut spans = std::mem::take(&mut self.spare.spans);
            spans.clear();
            self.spare.mapped = None;
            // A mapped segment's frame is checked and handed out in place,
            // without a copy.
            let seg = self.segment.as_ref().unwrap();
            let mapped = seg.handle.mapped().is_some().then(|| (seg.handle.clone(), payload_at as usize));
            let (ok, whole) = {
                let bytes = match mapped {
                    Some(_) => self.bytes(payload_at, len)?,
                    None => {
                        payload.extend_from_slice(self.bytes(payload_at, len)?);
                        &payload[..]
                    }
                };
                let base = bytes.as_ptr() as usize;
                // The open's scan verified every frame below `checked_end`,
                // walking the same chain of frames from the segment's
                // header, and those bytes are never written again: a
                // second checksum of them (most of a reader's time) would
                // find what the first found.
                let checked = at + h.size() <= checked_end;
                let ok = checked || h.checksum_ok(&head, bytes, salt);
                (ok, ok && each_record(h.kind, h.count, bytes, |r| spans.push((r.as_ptr() as usize - base, r.len()))))
            };
            if !ok {
                return Err(corrupt("checksum mismatch"));
            }
            self.segment.as_mut().unwrap().offset += h.size();
            if h.seq > self.next {
                return Err(corrupt(&format!("found sequence {} instead", h.seq)));
            }
            if !whole {
                return Err(corrupt("bad batch table"));
            }
            self.frame = Some(Frame { first_seq: h.seq, payload, mapped, spans });
            return Ok(true);
        }
    }

    /// Re-reads the current segment's size (one statx), for a frame that
    /// seems to run past it; segments are allocated whole when created, so
    /// this is a safety net, not the common path.
    fn refresh_len(&mut self) -> Result<u64> {
        let seg = self.segment.as_mut().unwrap();
        seg.len = seg.handle.view.len().map_err(|e| Error::io(format!("reading {}", seg.meta.path.display()), e))?;
        Ok(seg.len)
    }

    /// Opens the segment that holds `self.next` when the current one does
    /// not, moving the pin forward.
    fn move_to_segment_of_next(&mut self) -> Result<()> {
        // Still inside a segment that has a successor: the list is not
        // consulted (nor locked) per frame. The pin keeps this segment and
        // every later one, and segments are only added after the last.
        if self.segment.as_ref().is_some_and(|s| s.next_first.is_some_and(|n| self.next < n)) {
            return Ok(());
        }
        let target = {
            let mut st = self.shared.state.lock();
            let Some(at) = st.segments.iter().rposition(|s| s.first_seq <= self.next) else {
                return Err(Error::new(KEEL_STATUS_TRUNCATED, format!("record {} is no longer retained", self.next)));
            };
            let next_first = st.segments.get(at + 1).map(|s| s.first_seq);
            let target = &st.segments[at];
            match &mut self.segment {
                Some(s) if s.meta.first_seq == target.first_seq => {
                    s.next_first = next_first;
                    None
                }
                _ => {
                    let target = target.clone();
                    st.pins.insert(self.pin, target.first_seq);
                    Some((target, next_first))
                }
            }
        };
        let Some((meta, next_first)) = target else {
            return Ok(()); // same segment (its size is fixed when it is created)
        };
        let handle =
            self.shared.segment_handles.get(&meta.path, || segment::open_for_reading(&*self.shared.fs, &meta.path))?;
        let len = handle.view.len().map_err(|e| Error::io(format!("opening {}", meta.path.display()), e))?;
        self.window.clear();
        self.segment = Some(OpenSegment { meta, handle, len, offset: SEGMENT_HEADER_LEN, next_first });
        Ok(())
    }

    /// `len` bytes of the current segment at `at`: straight from its map,
    /// else through the read-ahead window.
    fn bytes(&mut self, at: u64, len: usize) -> Result<&[u8]> {
        let seg = self.segment.as_ref().unwrap();
        let file = match &seg.handle.view {
            View::Map(map) => {
                // Every frame up to `written` is in the page cache, which
                // the map shows as it is now.
                let end = (at as usize).checked_add(len);
                return end.and_then(|end| map.bytes().get(at as usize..end)).ok_or_else(|| {
                    Error::corruption(format!("{} ends inside a frame", seg.meta.path.display()))
                });
            }
            View::File(file) => file,
        };
        let covered = at >= self.window_at && at + len as u64 <= self.window_at + self.window.len() as u64;
        if !covered {
            let want = len.max(READ_CHUNK).min((seg.len - at) as usize).max(len);
            // Every frame up to `filed` is in the file before the pread;
            // frames held behind it (written, not yet filed) are zeros here.
            self.window_upto = self.shared.filed.load(Ordering::Acquire);
            self.window.resize(want, 0);
            let got = file.read_up_to(&mut self.window, at).map_err(|e| Error::io(format!("reading {}", seg.meta.path.display()), e))?;
            if got < len {
                return Err(Error::corruption(format!("{} ends inside a frame", seg.meta.path.display())));
            }
            self.window.truncate(got);
            self.window_at = at;
        }
        let start = (at - self.window_at) as usize;
        Ok(&self.window[start..start + len])
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.state.lock().pins.remove(&self.pin);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Durability, Options, Wal};
    use super::*;

    /// A reader skips the checksum only of frames its own open verified:
    /// a segment the open took by its header (its records persisted by the
    /// owner) is verified frame by frame as it is read.
    #[test]
    fn a_reader_verifies_the_frames_of_a_segment_taken_by_its_header() {
        let dir = crate::test_dir::TestDir::new("reader-checked");
        let opts = Options { durability: Durability::None, ..Options::default() };
        let wal = Wal::open(&dir, opts.clone()).unwrap();
        let record = vec![7u8; 1000];
        while wal.segments() < 3 {
            wal.append(&record).unwrap();
        }
        wal.close().unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        names.retain(|n| segment::parse_name(n).is_some());
        names.sort();
        let second_first = segment::parse_name(&names[1]).unwrap();
        // One payload byte of the first segment's first frame.
        let first = dir.join(&names[0]);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[SEGMENT_HEADER_LEN as usize + FRAME_HEADER_LEN + 10] ^= 0x40;
        std::fs::write(&first, &bytes).unwrap();

        // The owner persisted the first segment's records: the open takes
        // it by its header and does not see the damage.
        let wal = Wal::open_owned(&dir, opts.clone(), None, None, second_first - 1).unwrap();
        let mut past = wal.reader(second_first, ReadUpto::Appended).unwrap();
        assert_eq!(past.next_record().unwrap().map(|(s, _)| s), Some(second_first), "the scanned segments read");
        let mut from_start = wal.reader(1, ReadUpto::Appended).unwrap();
        let err = from_start.next_record().expect_err("the damaged frame was handed out");
        assert_eq!(err.status, KEEL_STATUS_CORRUPTION, "{}", err.message);
        drop((past, from_start));
        wal.close().unwrap();

        // Opened by a full scan, the same damage is found at open.
        let err = Wal::open(&dir, opts).map(|_| ()).expect_err("the damage was not found");
        assert_eq!(err.status, KEEL_STATUS_CORRUPTION, "{}", err.message);
    }
}
