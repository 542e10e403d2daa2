//! The content digest of a shard (docs/TRANSFER.md, "Shard digest"): two
//! shards with equal digests hold the same keys, each with the same kind,
//! bytes and version. Computed from one snapshot, a chunk at a time.

use crate::error::Result;
use crate::shard::{Shard, Value};
use sha2::{Digest, Sha256};

/// Keys and bytes read per chunk of the snapshot.
const CHUNK_KEYS: usize = 1024;
const CHUNK_BYTES: usize = 4 << 20;

/// SHA-256 over the shard's live keys in ascending byte order; see the
/// docs for the exact bytes hashed.
pub fn shard_digest(shard: &Shard) -> Result<[u8; 32]> {
    let snap = shard.snapshot()?;
    let mut h = Sha256::new();
    h.update(b"keel-shard-digest/1");
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = snap.chunk(after.as_deref(), CHUNK_KEYS, CHUNK_BYTES)?;
        let Some((last, _)) = chunk.last() else { break };
        let last = last.clone();
        for (key, e) in &chunk {
            h.update((key.len() as u32).to_le_bytes());
            h.update(key);
            match &e.value {
                Value::Bytes(b) => {
                    h.update([1u8]);
                    h.update(e.version.to_le_bytes());
                    h.update((b.len() as u32).to_le_bytes());
                    h.update(b);
                }
                Value::Posting(items) => {
                    h.update([2u8]);
                    h.update(e.version.to_le_bytes());
                    h.update((items.len() as u32).to_le_bytes());
                    for item in items {
                        h.update((item.len() as u32).to_le_bytes());
                        h.update(item);
                    }
                }
            }
        }
        after = Some(last);
    }
    Ok(h.finalize().into())
}
