//! What a key holds: a value or a posting list, stamped with the version
//! (WAL sequence number) of the operation that last changed it.

use super::arena::Slice;
use crate::error::{Error, Result};

/// The two kinds of data a key can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Value,
    Posting,
}

/// A key's data. `B` holds a value's bytes, and its `List` a posting
/// list's items: owned (`Vec<u8>`, `Vec<Vec<u8>>`: what reads hand out)
/// or, in an in-memory map, a slice of the map's arena and a boxed
/// `HeldList`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<B: Holding = Vec<u8>> {
    Bytes(B),
    /// A posting list: items in the order they were appended.
    Posting(B::List),
}

/// Where a `Value` keeps its data: a value's bytes in `Self`, a list's
/// items in `List`. An associated type rather than a second parameter, so
/// that `Value::Bytes(bytes)` needs no annotation.
pub trait Holding: AsRef<[u8]> {
    /// Bounded as an `Entry`'s derives need it.
    type List: Items + Clone + std::fmt::Debug + Eq;
}

impl Holding for Vec<u8> {
    type List = Vec<Vec<u8>>;
}

impl Holding for Slice {
    // Boxed: a map entry stays as small as a value's (32 bytes); the
    // list's own 32 would make every entry of the map 40, values too.
    type List = Box<HeldList>;
}

/// A posting list's items and the bytes of its encoding (`encode_list`).
pub trait Items {
    fn items(&self) -> &[Vec<u8>];
    fn encoded_len(&self) -> usize;
}

impl Items for Vec<Vec<u8>> {
    fn items(&self) -> &[Vec<u8>] {
        self
    }

    fn encoded_len(&self) -> usize {
        list_weight(self)
    }
}

/// A posting list of an in-memory map, its encoded length kept as it
/// grows: every append checks that length against `MAX_LIST_SIZE`, and a
/// list of the appendable segment can hold millions of items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldList {
    items: Vec<Vec<u8>>,
    encoded_len: usize,
}

impl HeldList {
    pub fn push(&mut self, item: &[u8]) {
        self.encoded_len += item.len() + 4;
        self.items.push(item.to_vec());
    }
}

impl From<Vec<Vec<u8>>> for Box<HeldList> {
    fn from(items: Vec<Vec<u8>>) -> Box<HeldList> {
        Box::new(HeldList { encoded_len: list_weight(&items), items })
    }
}

impl Items for Box<HeldList> {
    fn items(&self) -> &[Vec<u8>] {
        &self.items
    }

    fn encoded_len(&self) -> usize {
        self.encoded_len
    }
}

impl<B: Holding> Value<B> {
    pub fn kind(&self) -> Kind {
        match self {
            Value::Bytes(_) => Kind::Value,
            Value::Posting(_) => Kind::Posting,
        }
    }

    /// Bytes this value costs in memory and on disk, roughly; drives sealing.
    pub fn weight(&self) -> usize {
        match self {
            Value::Bytes(b) => b.as_ref().len(),
            Value::Posting(items) => items.encoded_len(),
        }
    }
}

/// Bytes of a posting list encoded (`encode_list`): its items and their
/// length fields.
fn list_weight(items: &[Vec<u8>]) -> usize {
    items.iter().map(|i| i.len() + 4).sum()
}

/// A key's data and the version that wrote it (the version gate of F6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<B: Holding = Vec<u8>> {
    pub version: u64,
    pub value: Value<B>,
}

/// An entry of an in-memory map (the appendable segment, a frozen one):
/// its value's bytes live in the map's arena.
pub type HeldEntry = Entry<Slice>;

// The appendable segment's map holds one per key: its size is what a
// buffered put pays in cache misses (`Holding for Slice` boxes lists).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<HeldEntry>() <= 24);

impl<B: Holding> Entry<B> {
    /// A copy that owns its bytes.
    pub fn to_owned_entry(&self) -> Entry {
        EntryRef::from(self).to_entry().expect("an entry in memory holds no encoded list to decode")
    }
}

/// An entry read where it lies, its bytes not copied: bytes in their
/// stored form (a value's bytes, a posting list encoded with
/// `encode_list`), or the items of a posting list held in memory. What a
/// snapshot hands out while it streams.
#[derive(Debug, Clone, Copy)]
pub enum EntryRef<'a> {
    Stored { version: u64, kind: Kind, bytes: &'a [u8] },
    Items { version: u64, items: &'a [Vec<u8>] },
}

impl<'a, B: Holding> From<&'a Entry<B>> for EntryRef<'a> {
    fn from(e: &'a Entry<B>) -> EntryRef<'a> {
        match &e.value {
            Value::Bytes(b) => EntryRef::Stored { version: e.version, kind: Kind::Value, bytes: b.as_ref() },
            Value::Posting(items) => EntryRef::Items { version: e.version, items: items.items() },
        }
    }
}

impl EntryRef<'_> {
    pub fn version(&self) -> u64 {
        match self {
            EntryRef::Stored { version, .. } | EntryRef::Items { version, .. } => *version,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            EntryRef::Stored { kind, .. } => *kind,
            EntryRef::Items { .. } => Kind::Posting,
        }
    }

    /// `Value::weight` of its value (an encoded posting list is exactly
    /// its items plus their length fields).
    pub fn weight(&self) -> usize {
        match self {
            EntryRef::Stored { bytes, .. } => bytes.len(),
            EntryRef::Items { items, .. } => list_weight(items),
        }
    }

    /// Appends the value's bytes: a value as it is, a posting list encoded.
    pub fn encode_value(&self, out: &mut Vec<u8>) {
        match self {
            EntryRef::Stored { bytes, .. } => out.extend_from_slice(bytes),
            EntryRef::Items { items, .. } => encode_list(items, out),
        }
    }

    /// A copy that owns its bytes (a stored posting list is decoded).
    pub fn to_entry(&self) -> Result<Entry> {
        match self {
            EntryRef::Stored { version, kind: Kind::Value, bytes } => Ok(Entry { version: *version, value: Value::Bytes(bytes.to_vec()) }),
            EntryRef::Stored { version, kind: Kind::Posting, bytes } => {
                Ok(Entry { version: *version, value: Value::Posting(decode_list(bytes)?) })
            }
            EntryRef::Items { version, items } => Ok(Entry { version: *version, value: Value::Posting(items.to_vec()) }),
        }
    }
}

/// Posting lists travel as `[u32 little-endian length][item bytes]`
/// repeated; the same encoding is handed to C callers (docs/STORAGE.md).
pub fn encode_list(items: &[Vec<u8>], out: &mut Vec<u8>) {
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
}

pub fn decode_list(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut items = Vec::new();
    while !bytes.is_empty() {
        let (item, rest) = split_item(bytes)?;
        items.push(item.to_vec());
        bytes = rest;
    }
    Ok(items)
}

/// Splits the first item off an encoded posting list.
pub fn split_item(bytes: &[u8]) -> Result<(&[u8], &[u8])> {
    let corrupt = || Error::corruption("posting list encoding is cut short");
    let len = u32::from_le_bytes(bytes.get(..4).ok_or_else(corrupt)?.try_into().unwrap()) as usize;
    let rest = &bytes[4..];
    if rest.len() < len {
        return Err(corrupt());
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_round_trips_and_rejects_cut_input() {
        let items = vec![b"a".to_vec(), Vec::new(), vec![7u8; 300]];
        let mut buf = Vec::new();
        encode_list(&items, &mut buf);
        assert_eq!(decode_list(&buf).unwrap(), items);
        for cut in 1..buf.len() {
            let ok = decode_list(&buf[..cut]);
            // Cuts on an item boundary decode to a prefix; others fail.
            if let Ok(prefix) = ok {
                assert!(items.starts_with(&prefix));
            }
        }
        assert!(decode_list(&buf[..3]).is_err());
    }
}
