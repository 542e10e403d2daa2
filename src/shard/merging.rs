//! Reading several segments as one: each segment yields its entries in
//! key order, read in place (`EntryRef`), and `Merged` interleaves them.
//! A merge of tables and a snapshot's stream share it.

use super::entry::{EntryRef, HeldEntry};
use super::key::Key;
use crate::error::Result;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

/// One segment's live entries from some key on, in key order.
pub type Source<'a> = Box<dyn Iterator<Item = Result<(&'a [u8], EntryRef<'a>)>> + 'a>;

/// The entries of an in-memory map (an appendable segment or a frozen
/// one) from `start` on.
pub fn held_from<'a>(map: &'a BTreeMap<Key, HeldEntry>, start: &[u8]) -> Source<'a> {
    Box::new(map.range::<[u8], _>((Bound::Included(start), Bound::Unbounded)).map(|(k, e)| Ok((k.as_slice(), EntryRef::from(e)))))
}

/// K-way merge of sorted sources; a key present in several keeps its
/// newest version (a copy-on-write move not yet deleted from its old
/// segment, or what a crash left, see Segments::replay). The first error
/// of any source ends it.
pub struct Merged<'a> {
    sources: Vec<Peekable<Source<'a>>>,
}

impl<'a> Merged<'a> {
    pub fn new(sources: impl IntoIterator<Item = Source<'a>>) -> Merged<'a> {
        Merged { sources: sources.into_iter().map(Iterator::peekable).collect() }
    }
}

impl<'a> Iterator for Merged<'a> {
    type Item = Result<(&'a [u8], EntryRef<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<&'a [u8]> = None;
        for s in &mut self.sources {
            match s.peek() {
                Some(Err(_)) => return s.next(),
                Some(Ok((k, _))) if best.map_or(true, |b| *k < b) => best = Some(*k),
                _ => {}
            }
        }
        let key = best?;
        let mut winner: Option<EntryRef<'a>> = None;
        for s in &mut self.sources {
            if let Some(Ok((k, e))) = s.peek() {
                if *k == key {
                    if winner.map_or(true, |w| w.version() < e.version()) {
                        winner = Some(*e);
                    }
                    s.next();
                }
            }
        }
        debug_assert!(winner.is_some(), "the smallest key came from a source");
        winner.map(|e| Ok((key, e)))
    }
}
