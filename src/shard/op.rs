//! Shard operations and their encoding as WAL records.
//!
//! Record: `[u8 op][u32 key length][key][value or item]`. A write batch is
//! one all-or-nothing WAL batch frame with one record per operation, so
//! every operation has its own sequence number (its version).

use crate::error::{Error, Result};

/// Longest key a shard accepts (KEEL_SHARD_MAX_KEY_SIZE in keel.h).
pub const MAX_KEY_SIZE: usize = 4096;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_APPEND: u8 = 3;

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

impl Op {
    pub fn as_ref(&self) -> OpRef<'_> {
        match self {
            Op::Put { key, value } => OpRef::Put { key, value },
            Op::Delete { key } => OpRef::Delete { key },
            Op::Append { key, item } => OpRef::Append { key, item },
        }
    }

    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Append { key, .. } => key,
        }
    }

    pub fn check(&self) -> Result<()> {
        check_key(self.key())
    }

    pub fn encode(&self) -> Vec<u8> {
        let (code, body): (u8, &[u8]) = match self {
            Op::Put { value, .. } => (OP_PUT, value),
            Op::Delete { .. } => (OP_DELETE, &[]),
            Op::Append { item, .. } => (OP_APPEND, item),
        };
        let key = self.key();
        let mut out = Vec::with_capacity(5 + key.len() + body.len());
        out.push(code);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(body);
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

pub fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_SIZE {
        return Err(Error::invalid(format!("key of {} bytes exceeds the limit of {MAX_KEY_SIZE}", key.len())));
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
        assert!(Op::check(&Op::Delete { key: vec![0; MAX_KEY_SIZE + 1] }).is_err());
    }
}
