//! The model the shard tests compare a shard with: every key's value or
//! posting list after a sequence of operations.

use keel::shard::{Op, Value};
use std::collections::BTreeMap;

pub type Model = BTreeMap<Vec<u8>, Value>;

/// Applies `ops` in order, as a shard does. The tests' generators never
/// append to a key that holds a value.
pub fn apply(model: &mut Model, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put { key, value } => {
                model.insert(key.clone(), Value::Bytes(value.clone()));
            }
            Op::Delete { key } => {
                model.remove(key);
            }
            Op::Append { key, item } => match model.entry(key.clone()).or_insert(Value::Posting(Vec::new())) {
                Value::Posting(items) => items.push(item.clone()),
                Value::Bytes(_) => unreachable!("generator never appends to a value"),
            },
        }
    }
}
