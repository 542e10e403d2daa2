//! Shard operations and their encoding as WAL records.
//!
//! Record: `[u8 op][u32 key length][key][value or item]`. A write batch is
//! one all-or-nothing WAL batch frame with one record per operation, so
//! every operation has its own sequence number (its version). A write that
//! applies a host's entry or carries a fence adds one state record
//! (`[u8 4]...`, replicated.rs) after its operations, in the same frame.

use super::replicated::StateChange;
use crate::error::{Error, Result};

/// Longest key a shard accepts (KEEL_SHARD_MAX_KEY_SIZE in keel.h).
pub const MAX_KEY_SIZE: usize = 4096;
/// Largest value or posting item a shard accepts, 16 MiB included
/// (KEEL_SHARD_MAX_VALUE_SIZE in keel.h).
pub const MAX_VALUE_SIZE: usize = 16 << 20;
/// Largest posting list a shard makes, in bytes of its encoding
/// (`encode_list`: each item and its u32 length), 1 GiB included
/// (KEEL_SHARD_MAX_LIST_SIZE in keel.h). The formats hold a list's length
/// in u32 fields (data-log records, table entries and blocks, transfer
/// entries): with the largest key and their headers, a list of this size
/// needs about a quarter of what they hold (docs/STORAGE.md, "Data model").
pub const MAX_LIST_SIZE: usize = 1 << 30;
/// Bytes a record adds to its key and value: `[u8 op][u32 key length]`.
const RECORD_HEADER: usize = 5;
/// Bytes a WAL batch frame adds per record (its length).
pub(super) const BATCH_RECORD_HEADER: usize = 4;
/// The record of the largest operation (largest key and value): the record
/// limit of a shard's WAL, unless its segments are too small to hold it.
pub const MAX_RECORD_SIZE: u64 = (RECORD_HEADER + MAX_KEY_SIZE + MAX_VALUE_SIZE) as u64;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_APPEND: u8 = 3;
/// A change of the replicated state (replicated.rs), not a key's.
pub(super) const OP_STATE: u8 = 4;

/// A shard WAL record: an operation on a key, or a change of the
/// replicated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Op(OpRef<'a>),
    State(StateChange),
}

impl<'a> Record<'a> {
    pub fn decode(record: &'a [u8]) -> Result<Record<'a>> {
        match record.first() {
            Some(&OP_STATE) => StateChange::decode(record).map(Record::State),
            _ => OpRef::decode(record).map(Record::Op),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
    /// Adds `item` to the end of the key's posting list.
    Append { key: Vec<u8>, item: Vec<u8> },
}

/// An operation borrowing its bytes (a decoded WAL record during replay,
/// or an `Op` of a write): what the segments apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpRef<'a> {
    Put { key: &'a [u8], value: &'a [u8] },
    Delete { key: &'a [u8] },
    Append { key: &'a [u8], item: &'a [u8] },
}

impl<'a> OpRef<'a> {
    pub fn key(&self) -> &'a [u8] {
        match *self {
            OpRef::Put { key, .. } | OpRef::Delete { key } | OpRef::Append { key, .. } => key,
        }
    }

    /// Decodes a WAL record without copying it.
    pub fn decode(record: &'a [u8]) -> Result<OpRef<'a>> {
        let corrupt = |what: &str| Error::corruption(format!("shard WAL record: {what}"));
        if record.len() < 5 {
            return Err(corrupt("shorter than its header"));
        }
        let klen = u32::from_le_bytes(record[1..5].try_into().unwrap()) as usize;
        if klen > MAX_KEY_SIZE || record.len() < 5 + klen {
            return Err(corrupt("key length out of range"));
        }
        let (key, body) = (&record[5..5 + klen], &record[5 + klen..]);
        match record[0] {
            OP_PUT => Ok(OpRef::Put { key, value: body }),
            OP_DELETE if body.is_empty() => Ok(OpRef::Delete { key }),
            OP_APPEND => Ok(OpRef::Append { key, item: body }),
            other => Err(corrupt(&format!("unknown operation {other}"))),
        }
    }
}

impl<'a> OpRef<'a> {
    /// The value of a put, the item of an append.
    pub fn body(&self) -> &'a [u8] {
        match *self {
            OpRef::Put { value, .. } => value,
            OpRef::Delete { .. } => &[],
            OpRef::Append { item, .. } => item,
        }
    }

    /// Checks the key and value sizes against the shard limits; errors
    /// name the caller's sizes.
    pub fn check(&self) -> Result<()> {
        check_key(self.key())?;
        let (what, len) = match self {
            OpRef::Append { .. } => ("posting item", self.body().len()),
            _ => ("value", self.body().len()),
        };
        if len > MAX_VALUE_SIZE {
            return Err(Error::invalid(format!("{what} of {len} bytes exceeds the limit of {MAX_VALUE_SIZE} bytes (16 MiB)")));
        }
        Ok(())
    }

    /// Bytes of its WAL record.
    pub fn record_len(&self) -> u64 {
        (RECORD_HEADER + self.key().len() + self.body().len()) as u64
    }

    /// Appends its WAL record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let code = match self {
            OpRef::Put { .. } => OP_PUT,
            OpRef::Delete { .. } => OP_DELETE,
            OpRef::Append { .. } => OP_APPEND,
        };
        let (key, body) = (self.key(), self.body());
        out.reserve(RECORD_HEADER + key.len() + body.len());
        out.push(code);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(body);
    }
}

impl Op {
    pub fn as_ref(&self) -> OpRef<'_> {
        match self {
            Op::Put { key, value } => OpRef::Put { key, value },
            Op::Delete { key } => OpRef::Delete { key },
            Op::Append { key, item } => OpRef::Append { key, item },
        }
    }

    pub fn key(&self) -> &[u8] {
        self.as_ref().key()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.as_ref().encode_into(&mut out);
        out
    }

    pub fn decode(record: &[u8]) -> Result<Op> {
        Ok(match OpRef::decode(record)? {
            OpRef::Put { key, value } => Op::Put { key: key.to_vec(), value: value.to_vec() },
            OpRef::Delete { key } => Op::Delete { key: key.to_vec() },
            OpRef::Append { key, item } => Op::Append { key: key.to_vec(), item: item.to_vec() },
        })
    }
}

/// Checks every operation of a write (`Op::check`) and that together they
/// fit one WAL record of at most `record_limit` bytes (one record for a
/// single operation, a batch frame for several), naming the caller's sizes.
pub fn check_write(ops: &[OpRef], record_limit: u64) -> Result<()> {
    for op in ops {
        op.check()?;
    }
    check_frame(ops, 0, record_limit)
}

/// Checks that `ops` with a state record of `state_len` bytes (0: none)
/// fit one WAL record of at most `record_limit` bytes.
pub fn check_frame(ops: &[OpRef], state_len: u64, record_limit: u64) -> Result<()> {
    let need = match (ops, state_len) {
        ([one], 0) => one.record_len(),
        (many, _) => {
            let state = if state_len > 0 { BATCH_RECORD_HEADER as u64 + state_len } else { 0 };
            many.iter().map(|op| BATCH_RECORD_HEADER as u64 + op.record_len()).sum::<u64>() + state
        }
    };
    if need <= record_limit {
        return Ok(());
    }
    let what = match ops {
        [] => "a state record".to_string(),
        [one] => format!("a key of {} bytes with a value of {} bytes", one.key().len(), one.body().len()),
        many => format!(
            "a batch of {} operations with {} bytes of keys and values",
            many.len(),
            many.iter().map(|op| op.key().len() + op.body().len()).sum::<usize>()
        ),
    };
    Err(Error::invalid(format!(
        "{what} needs a WAL record of {need} bytes; this shard's WAL takes at most {record_limit} \
         (set by wal_segment_size)"
    )))
}

/// An append to a key that holds a value.
pub(super) fn wrong_kind(key: &[u8]) -> Error {
    Error::new(
        crate::status::KEEL_STATUS_WRONG_KIND,
        format!("key {:?} holds a value; append needs a posting list or an absent key", String::from_utf8_lossy(key)),
    )
}

/// The encoded length of a posting list of `list` encoded bytes once
/// `item` is appended to it; INVALID_ARGUMENT past `limit` bytes
/// (`MAX_LIST_SIZE` but in tests).
pub(super) fn check_append(key: &[u8], list: usize, item: usize, limit: usize) -> Result<usize> {
    let after = list + 4 + item;
    if after > limit {
        return Err(Error::invalid(format!(
            "appending a posting item of {item} bytes to key {:?}, whose posting list has {list} bytes, would take \
             the list to {after} bytes, past the limit of {limit} bytes",
            String::from_utf8_lossy(key)
        )));
    }
    Ok(after)
}

pub fn check_key(key: &[u8]) -> Result<()> {
    check_key_named("key", key)
}

/// `check_key` for bytes that stand for a key, the error naming them (a
/// scan's bound or prefix: no key is longer, so no range needs a longer
/// one).
pub(super) fn check_key_named(what: &str, key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_SIZE {
        return Err(Error::invalid(format!("{what} of {} bytes exceeds the limit of {MAX_KEY_SIZE}", key.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_bad_records_are_corruption() {
        let ops = [
            Op::Put { key: b"k".to_vec(), value: b"v".to_vec() },
            Op::Delete { key: Vec::new() },
            Op::Append { key: b"p".to_vec(), item: vec![0; 100] },
        ];
        for op in &ops {
            assert_eq!(&Op::decode(&op.encode()).unwrap(), op);
        }
        assert!(Op::decode(&[9, 0, 0, 0, 0]).is_err());
        assert!(Op::decode(&[1, 200, 0, 0, 0]).is_err());
        assert!(Op::decode(&[2, 0, 0, 0, 0, 1]).is_err());
        assert!(Op::Delete { key: vec![0; MAX_KEY_SIZE + 1] }.as_ref().check().is_err());
    }

    #[test]
    fn the_largest_operation_fits_the_record_limit_and_errors_name_the_callers_sizes() {
        let big = Op::Put { key: vec![1; MAX_KEY_SIZE], value: vec![2; MAX_VALUE_SIZE] };
        assert_eq!(big.encode().len() as u64, MAX_RECORD_SIZE);
        check_write(&[big.as_ref()], MAX_RECORD_SIZE).unwrap();
        let over = Op::Put { key: b"k".to_vec(), value: vec![0; MAX_VALUE_SIZE + 1] };
        let e = check_write(&[over.as_ref()], MAX_RECORD_SIZE).unwrap_err();
        assert!(e.message.contains(&format!("value of {} bytes", MAX_VALUE_SIZE + 1)), "{}", e.message);
        let item = Op::Append { key: b"k".to_vec(), item: vec![0; 1000] };
        let e = check_write(&[item.as_ref()], 900).unwrap_err();
        assert!(e.message.contains("key of 1 bytes with a value of 1000 bytes"), "{}", e.message);
        assert!(e.message.contains("at most 900"), "{}", e.message);
        let e = check_write(&[item.as_ref(), item.as_ref()], 2000).unwrap_err();
        assert!(e.message.contains("batch of 2 operations with 2002 bytes"), "{}", e.message);
    }
}
