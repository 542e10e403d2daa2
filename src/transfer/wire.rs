//! The transfer's frames (types in the node's transfer range
//! 0x0100..=0x01FF) and their payloads; docs/TRANSFER.md, "Frames".
//!
//! Every frame from the source is a *step* of one transfer and carries
//! `[u64 transfer id][u64 step][u64 acked]`: steps are numbered from 1
//! and `acked` is the last step whose ACK the source had received when it
//! sent this one. The receiver answers each step with one ACK.

use crate::error::{Error, Result};
use crate::shard::files::{put_bytes, Cursor};
use crate::shard::{check_key, decode_list, split_item, Entry, EntryRef, Kind, Value, MAX_VALUE_SIZE};
use crate::status::*;

/// Source → receiver: asks to send a shard. Body: `[u32 shard id][u8 method]`.
pub const START: u16 = 0x0100;
/// Source → receiver: how the shard comes. Body: `[u8 mode][u64 base]`,
/// and for a snapshot `[u8 has crc][u32 crc]`: the crc32 of the source's
/// WAL record of the base version, when it still holds it.
pub const BEGIN: u16 = 0x0101;
/// Source → receiver: snapshot entries. Body: `[u32 count]` then per entry
/// `[u32 key length][key][u64 version][u8 kind][u32 length][value]`.
pub const ENTRIES: u16 = 0x0102;
/// Source → receiver: WAL records. Body: `[u32 count]` then per record
/// `[u64 version][u32 length][record]`.
pub const OPS: u16 = 0x0103;
/// Source → receiver: the snapshot is complete. Body: the shard's
/// replicated state as of the snapshot (`[u64 applied index][u32 buckets]`
/// then per bucket `[u32 length][bucket][u64 highest token]`), or empty
/// from a source that does not send it.
pub const SNAPSHOT_END: u16 = 0x0104;
/// Source → receiver: the transfer is complete. Body: `[u64 last version]`.
pub const FINISH: u16 = 0x0105;
/// Source → receiver: a piece of a batch too large for one frame (one
/// entry or record alone). Body: the next bytes of the batch's body; the
/// batch's last piece travels as ENTRIES or OPS, and the receiver applies
/// the pieces and it as one body.
pub const PART: u16 = 0x0106;
/// Source → receiver: caught up, now forwarding: the receiver checks it
/// is at the version, keeps the shard incoming and takes the OPS that
/// follow (each write to the source) until FINISH or CANCEL. Body:
/// `[u64 last version]`.
pub const FORWARD: u16 = 0x0107;
/// Source → receiver: the source gave up (the host cancelled, or the
/// transfer failed); not a step (its header carries step 0; it may follow
/// a step whose ACK the source no longer waits for) and not answered. The
/// receiver ends the reception; the shard stays incoming. Body: empty.
pub const CANCEL: u16 = 0x0108;
/// Receiver → source: the answer to one step. Payload: `[u64 transfer
/// id][u64 step][u32 status][u64 version][u8 has crc][u32 crc][message]`.
pub const ACK: u16 = 0x0180;

/// Bytes of the step header.
pub const STEP_HEADER: usize = 24;

/// How a shard travels (BEGIN's mode).
pub const MODE_SNAPSHOT: u8 = 1;
pub const MODE_DELTA: u8 = 2;

const KIND_VALUE: u8 = 1;
const KIND_POSTING: u8 = 2;

fn protocol(e: Error) -> Error {
    Error::new(KEEL_STATUS_PROTOCOL, format!("malformed transfer frame: {}", e.message))
}

/// A step's header and body.
pub struct Step<'a> {
    pub id: u64,
    pub step: u64,
    pub acked: u64,
    pub body: Cursor<'a>,
}

pub fn step(id: u64, step: u64, acked: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(STEP_HEADER);
    for v in [id, step, acked] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

pub fn parse_step(payload: &[u8]) -> Result<Step<'_>> {
    let mut c = Cursor { bytes: payload };
    let (id, step, acked) = (|| Ok((c.u64()?, c.u64()?, c.u64()?)))().map_err(protocol)?;
    Ok(Step { id, step, acked, body: c })
}

/// The bytes of an ACK's message a source keeps.
pub const ACK_MESSAGE_MAX: usize = 4096;

/// Bytes of an ACK before its message.
const ACK_HEAD: usize = 33;

/// The bytes of its message an ACK carries at most: a message may quote
/// what the source sent (a key), and a longer one would not fit the
/// smallest frame a node allows (4 KiB, `ACK_MESSAGE_MAX`): such an ACK
/// was never sent, and its source could only time out.
const ACK_MESSAGE_SENT: usize = ACK_MESSAGE_MAX - ACK_HEAD;

/// The receiver's answer to a step.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: u64,
    pub step: u64,
    pub status: keel_status_t,
    /// START: the receiver's last version; otherwise its durable version.
    pub version: u64,
    /// START only: the crc32 of the receiver's WAL record `version`, when
    /// its WAL still holds it.
    pub crc: Option<u32>,
    pub message: String,
}

impl Ack {
    pub fn encode(&self) -> Vec<u8> {
        let mut cut = self.message.len().min(ACK_MESSAGE_SENT);
        while !self.message.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut b = Vec::with_capacity(ACK_HEAD + cut);
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(&self.step.to_le_bytes());
        b.extend_from_slice(&self.status.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.push(self.crc.is_some() as u8);
        b.extend_from_slice(&self.crc.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&self.message.as_bytes()[..cut]);
        b
    }

    pub fn decode(payload: &[u8]) -> Result<Ack> {
        let mut c = Cursor { bytes: payload };
        let (id, step, status, version, has_crc, crc) =
            (|| Ok((c.u64()?, c.u64()?, c.u32()?, c.u64()?, c.u8()?, c.u32()?)))().map_err(protocol)?;
        let crc = match has_crc {
            0 => None,
            1 => Some(crc),
            other => return Err(Error::new(KEEL_STATUS_PROTOCOL, format!("ACK has-crc flag {other} is not 0 or 1"))),
        };
        // The message explains a failure to a person: its first
        // ACK_MESSAGE_MAX bytes are kept, whatever length the peer sent.
        let message = String::from_utf8_lossy(&c.bytes[..c.bytes.len().min(ACK_MESSAGE_MAX)]).into_owned();
        Ok(Ack { id, step, status, version, crc, message })
    }
}

pub fn put_entry<'a>(out: &mut Vec<u8>, key: &[u8], e: impl Into<EntryRef<'a>>) {
    let e = e.into();
    put_bytes(out, key);
    out.extend_from_slice(&e.version().to_le_bytes());
    out.push(match e.kind() {
        Kind::Value => KIND_VALUE,
        Kind::Posting => KIND_POSTING,
    });
    // A value and an encoded posting list alike: length, then bytes.
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    e.encode_value(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Bytes `put_entry` writes for an entry besides its key and its value's
/// weight (`Value::weight`, which counts a posting item's length field).
pub const ENTRY_OVERHEAD: usize = 4 + 8 + 1 + 4;

/// Checks an ENTRIES body whole without copying it (lengths, kinds,
/// posting list encodings), and what a local write would refuse or the
/// snapshot cannot hold: a key, a value, a posting list or item past its limit,
/// a version past the snapshot's `base` (which no WAL record of the shard
/// covers, so its seal would wait for a durable version that never
/// comes). A posting list is held to the receiving shard's `max_list`
/// (`Options::max_list_size`), as its transferred operations are: one
/// installed past it would fail every later append to it. What `entries`
/// will then decode and install cannot fail. Returns the number of entries.
pub fn check_entries(body: &[u8], base: u64, max_list: usize) -> Result<usize> {
    parse_entries(body, |key, version, kind, bytes| {
        check_key(key)?;
        if version > base {
            return Err(Error::invalid(format!("an entry of version {version}, past the snapshot's version {base}")));
        }
        match kind {
            Kind::Value if bytes.len() > MAX_VALUE_SIZE => {
                Err(Error::invalid(format!("a value of {} bytes exceeds the limit of {MAX_VALUE_SIZE}", bytes.len())))
            }
            Kind::Value => Ok(()),
            Kind::Posting if bytes.len() > max_list => Err(Error::invalid(format!(
                "the posting list of key {:?} has {} bytes, past this shard's limit of {max_list} bytes",
                String::from_utf8_lossy(key),
                bytes.len()
            ))),
            Kind::Posting => check_list(bytes),
        }
    })
}

/// Decodes an ENTRIES body into owned entries.
pub fn entries(body: &[u8]) -> Result<Vec<(Vec<u8>, Entry)>> {
    let mut out = Vec::new();
    parse_entries(body, |key, version, kind, bytes| {
        let value = match kind {
            Kind::Value => Value::Bytes(bytes.to_vec()),
            Kind::Posting => Value::Posting(decode_list(bytes)?),
        };
        out.push((key.to_vec(), Entry { version, value }));
        Ok(())
    })?;
    Ok(out)
}

/// Walks an ENTRIES body (`[u32 count]`, then `put_entry`'s records),
/// handing each entry's parts to `f`. Returns the count.
fn parse_entries<'a>(body: &'a [u8], mut f: impl FnMut(&'a [u8], u64, Kind, &'a [u8]) -> Result<()>) -> Result<usize> {
    let mut c = Cursor { bytes: body };
    let mut parse = || -> Result<usize> {
        let n = c.count(ENTRY_OVERHEAD)?;
        for _ in 0..n {
            let key = c.bytes()?;
            let version = c.u64()?;
            let kind = match c.u8()? {
                KIND_VALUE => Kind::Value,
                KIND_POSTING => Kind::Posting,
                other => return Err(Error::corruption(format!("unknown entry kind {other}"))),
            };
            f(key, version, kind, c.bytes()?)?;
        }
        Ok(n)
    };
    let n = parse().map_err(protocol)?;
    c.bytes.is_empty().then_some(n).ok_or_else(|| Error::new(KEEL_STATUS_PROTOCOL, "bytes after the last entry"))
}

/// Checks an encoded posting list without copying its items, each held
/// to the limit an append has (a list holds only items some write made).
fn check_list(mut bytes: &[u8]) -> Result<()> {
    while !bytes.is_empty() {
        let (item, rest) = split_item(bytes)?;
        if item.len() > MAX_VALUE_SIZE {
            return Err(Error::invalid(format!("a posting item of {} bytes exceeds the limit of {MAX_VALUE_SIZE}", item.len())));
        }
        bytes = rest;
    }
    Ok(())
}

pub fn put_op(out: &mut Vec<u8>, version: u64, record: &[u8]) {
    out.extend_from_slice(&version.to_le_bytes());
    put_bytes(out, record);
}

/// Bytes `put_op` writes for a record.
pub fn op_len(record: &[u8]) -> usize {
    12 + record.len()
}

/// Decodes an OPS body. Its records carry versions that follow one
/// another (a source reads them from its WAL in order): anything else is
/// refused here, before the shard's version arithmetic sees it (a
/// repeated u64::MAX would overflow it).
pub fn ops<'a>(body: &mut Cursor<'a>) -> Result<Vec<(u64, &'a [u8])>> {
    let parse = |c: &mut Cursor<'a>| -> Result<Vec<(u64, &'a [u8])>> {
        let n = c.count(op_len(b""))?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((c.u64()?, c.bytes()?));
        }
        Ok(out)
    };
    let out = parse(body).map_err(protocol)?;
    if !body.bytes.is_empty() {
        return Err(Error::new(KEEL_STATUS_PROTOCOL, "bytes after the last record"));
    }
    if let Some(w) = out.windows(2).find(|w| w[0].0.checked_add(1) != Some(w[1].0)) {
        return Err(Error::new(
            KEEL_STATUS_PROTOCOL,
            format!("malformed transfer frame: record of version {} follows version {} in one batch", w[1].0, w[0].0),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::MAX_LIST_SIZE;

    #[test]
    fn every_frame_type_is_its_own_and_in_the_transfer_range() {
        let all = [START, BEGIN, ENTRIES, OPS, SNAPSHOT_END, FINISH, PART, FORWARD, CANCEL, ACK];
        let mut seen = std::collections::HashSet::new();
        for ty in all {
            assert!((0x0100..=0x01FF).contains(&ty), "{ty:#06x} is outside the transfer range");
            assert!(seen.insert(ty), "frame type {ty:#06x} is used twice");
        }
    }

    /// An item is held to the limit an append here has, as a value is:
    /// a posting list with a larger item was installed, an item no write
    /// on this shard could have made.
    #[test]
    fn a_posting_item_past_the_value_limit_is_refused() {
        let body = |item_len: usize| {
            let list: Entry = Entry { version: 1, value: Value::Posting(vec![b"x".to_vec(), vec![0; item_len]]) };
            let mut b = 1u32.to_le_bytes().to_vec();
            put_entry(&mut b, b"k", &list);
            b
        };
        assert_eq!(check_entries(&body(MAX_VALUE_SIZE), u64::MAX, MAX_LIST_SIZE).unwrap(), 1);
        let e = check_entries(&body(MAX_VALUE_SIZE + 1), u64::MAX, MAX_LIST_SIZE).unwrap_err();
        assert_eq!(e.status, KEEL_STATUS_PROTOCOL, "{e}");
        assert!(e.message.contains("posting item"), "{e}");
    }

    #[test]
    fn an_ack_fits_the_smallest_frame_whatever_its_message() {
        let long = format!("{}é{}", "x".repeat(ACK_MESSAGE_SENT - 1), "y".repeat(10_000));
        let ack = Ack { id: 1, step: 2, status: KEEL_STATUS_PROTOCOL, version: 3, crc: Some(4), message: long };
        let b = ack.encode();
        assert!(b.len() <= ACK_MESSAGE_MAX, "{} bytes", b.len());
        // Cut before the character that would straddle the limit.
        assert_eq!(Ack::decode(&b).unwrap().message, "x".repeat(ACK_MESSAGE_SENT - 1));
        let short = Ack { message: "refused".into(), ..ack };
        assert_eq!(Ack::decode(&short.encode()).unwrap().message, "refused");
    }

    #[test]
    fn the_records_of_a_batch_carry_versions_that_follow_one_another() {
        let body = |versions: &[u64]| {
            let mut b = (versions.len() as u32).to_le_bytes().to_vec();
            for v in versions {
                put_op(&mut b, *v, b"rec");
            }
            b
        };
        let decode = |b: &[u8]| ops(&mut Cursor { bytes: b }).map(|o| o.iter().map(|(v, _)| *v).collect::<Vec<_>>());
        assert_eq!(decode(&body(&[])).unwrap(), Vec::<u64>::new());
        assert_eq!(decode(&body(&[7, 8, 9])).unwrap(), [7, 8, 9]);
        assert_eq!(decode(&body(&[u64::MAX - 1, u64::MAX])).unwrap(), [u64::MAX - 1, u64::MAX]);
        for bad in [&[7, 7][..], &[7, 9], &[8, 7], &[u64::MAX, u64::MAX], &[u64::MAX, 0]] {
            let e = decode(&body(bad)).unwrap_err();
            assert_eq!(e.status, KEEL_STATUS_PROTOCOL, "{bad:?}: {e}");
        }
    }

    /// A count is held to what the bytes after it can hold before
    /// anything is decoded or reserved: an OPS frame of four bytes that
    /// claimed 2^32 - 1 records made the receiver reserve room for 65536
    /// of them (1.5 MiB) before it found the first one missing.
    #[test]
    fn a_count_past_what_its_bytes_can_hold_is_refused_first() {
        let huge = u32::MAX.to_le_bytes();
        let e = ops(&mut Cursor { bytes: &huge }).unwrap_err();
        assert_eq!(e.status, KEEL_STATUS_PROTOCOL, "{e}");
        assert!(e.message.contains("4294967295 records"), "the count is checked first: {e}");
        let e = check_entries(&huge, u64::MAX, MAX_LIST_SIZE).unwrap_err();
        assert_eq!(e.status, KEEL_STATUS_PROTOCOL, "{e}");
        assert!(e.message.contains("4294967295 records"), "{e}");
        let state = [&7u64.to_le_bytes()[..], &huge].concat();
        let e = crate::shard::Replicated::decode_sent(&mut Cursor { bytes: &state }).unwrap_err();
        assert!(e.message.contains("4294967295 records"), "{e}");
        // One record of the smallest size each still fits exactly.
        let mut one = 1u32.to_le_bytes().to_vec();
        put_op(&mut one, 9, b"");
        assert_eq!(ops(&mut Cursor { bytes: &one }).unwrap(), vec![(9, &b""[..])]);
        let mut two = 2u32.to_le_bytes().to_vec();
        put_op(&mut two, 9, b"");
        assert!(ops(&mut Cursor { bytes: &two }).unwrap_err().message.contains("2 records"));
        let mut entry = 1u32.to_le_bytes().to_vec();
        put_entry(&mut entry, b"", &Entry { version: 1, value: Value::Bytes(Vec::new()) });
        assert_eq!(entry.len(), 4 + ENTRY_OVERHEAD);
        assert_eq!(check_entries(&entry, 1, MAX_LIST_SIZE).unwrap(), 1);
    }

    #[test]
    fn an_entries_body_is_checked_whole_before_it_is_decoded() {
        let list = Entry { version: 4, value: Value::Posting(vec![b"x".to_vec(), Vec::new()]) };
        let value = Entry { version: 9, value: Value::Bytes(b"bee".to_vec()) };
        let mut body = 2u32.to_le_bytes().to_vec();
        put_entry(&mut body, b"a", &list);
        put_entry(&mut body, b"b", &value);
        assert_eq!(check_entries(&body, u64::MAX, MAX_LIST_SIZE).unwrap(), 2);
        assert_eq!(entries(&body).unwrap(), vec![(b"a".to_vec(), list), (b"b".to_vec(), value)]);
        // A cut anywhere, a byte too many, a bad kind or a bad posting
        // list: refused by the check, before any ACK.
        for cut in 0..body.len() {
            assert!(check_entries(&body[..cut], u64::MAX, MAX_LIST_SIZE).is_err(), "cut at {cut}");
        }
        assert!(check_entries(&[&body[..], &[0]].concat(), u64::MAX, MAX_LIST_SIZE).is_err());
        let kind_at = 4 + 4 + 1 + 8;
        let mut bad_kind = body.clone();
        bad_kind[kind_at] = 7;
        assert!(check_entries(&bad_kind, u64::MAX, MAX_LIST_SIZE).is_err());
        let mut bad_list = body.clone();
        bad_list[kind_at + 1 + 4] = 200; // the first item's length runs past the list
        assert_eq!(check_entries(&bad_list, u64::MAX, MAX_LIST_SIZE).unwrap_err().status, KEEL_STATUS_PROTOCOL);
    }
}
