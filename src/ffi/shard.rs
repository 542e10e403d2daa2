//! C API of shards (`keel_shard_*`), write batches (`keel_batch_*`), scan
//! iterators (`keel_iter_*`) and the posting-list decoder.

use crate::error::Error;
use crate::ffi::boundary::{in_bytes, in_packed, into_handle, out_ptr, take_handle, Opaque};
use crate::ffi::apply::write_ex;
use crate::ffi::buf::{buf_out, check_unfilled, keel_buf_t};
use crate::ffi::versioned::write_stats;
use crate::ffi::error::keel_error_t;
use crate::ffi::read::{self, keel_read_options_t};
use crate::shard::{check_key, check_scan_bounds, check_scan_prefix, split_item, Entry, Op, Scan, Shard, Value};
use crate::status::*;

/// One shard of an engine: keys → values and posting lists. Internally
/// synchronised: every call except keel_shard_close() may run on any
/// thread concurrently.
pub struct keel_shard_t {
    _private: [u8; 0],
}

/// A write batch under construction: operations applied atomically by
/// keel_shard_write(). Not thread-safe; reusable after keel_batch_clear().
pub struct keel_batch_t {
    _private: [u8; 0],
}

/// A scan over a range of keys, from one consistent state of the shard
/// taken when the scan was opened (it holds a copy of the range: memory is
/// proportional to what it covers). Not thread-safe.
pub struct keel_iter_t {
    _private: [u8; 0],
}

impl Opaque for keel_shard_t {
    type Inner = Shard;
    const MAGIC: u64 = 0x6b65_656c_5348_5244; // "keelSHRD"
    const NAME: &'static str = "keel_shard_t";
}

/// The packed operations of a batch plus their number.
pub struct Batch {
    pub(crate) packed: Vec<u8>,
    count: usize,
}

impl Opaque for keel_batch_t {
    type Inner = Batch;
    const MAGIC: u64 = 0x6b65_656c_4254_4348; // "keelBTCH"
    const NAME: &'static str = "keel_batch_t";
}

pub struct Iter {
    scan: Scan,
    current: Option<(Vec<u8>, Entry, Vec<u8>)>,
}

impl Opaque for keel_iter_t {
    type Inner = Iter;
    const MAGIC: u64 = 0x6b65_656c_4954_4552; // "keelITER"
    const NAME: &'static str = "keel_iter_t";
}

/// Longest key a shard accepts, in bytes; longer keys are INVALID_ARGUMENT.
pub const KEEL_SHARD_MAX_KEY_SIZE: usize = 4096;
const _: () = assert!(KEEL_SHARD_MAX_KEY_SIZE == crate::shard::MAX_KEY_SIZE);
/// Largest value or posting item a shard accepts, in bytes (16 MiB,
/// included, with a key of up to KEEL_SHARD_MAX_KEY_SIZE); larger ones are
/// INVALID_ARGUMENT. WAL segments smaller than about 16 MiB lower it: an
/// operation must fit one WAL record of wal_segment_size - 104 bytes (key,
/// value and 5 bytes; 4 more per operation in a batch).
pub const KEEL_SHARD_MAX_VALUE_SIZE: usize = 16 << 20;
const _: () = assert!(KEEL_SHARD_MAX_VALUE_SIZE == crate::shard::MAX_VALUE_SIZE);
/// Largest posting list a shard makes, in bytes of its encoding (each
/// item and its 4-byte length, as keel_shard_get() hands it out; 1 GiB,
/// included): an append that would take a list past it is
/// INVALID_ARGUMENT, and the list stays as it was.
pub const KEEL_SHARD_MAX_LIST_SIZE: usize = 1 << 30;
const _: () = assert!(KEEL_SHARD_MAX_LIST_SIZE == crate::shard::MAX_LIST_SIZE);

/// Kind reported for a key that does not exist (keel_shard_multi_get()).
pub const KEEL_KIND_NONE: u32 = 0;
/// The key holds a value.
pub const KEEL_KIND_VALUE: u32 = 1;
/// The key holds a posting list, returned encoded as `[u32 little-endian
/// length][item bytes]` per item, in append order; walk it with
/// keel_posting_next().
pub const KEEL_KIND_POSTING: u32 = 2;

/// Packed operation code (keel_shard_write_packed()): put key = value.
pub const KEEL_OP_PUT: u8 = 1;
/// Packed operation code: delete key (body must be empty).
pub const KEEL_OP_DELETE: u8 = 2;
/// Packed operation code: append the body as one item to key's posting list.
pub const KEEL_OP_APPEND: u8 = 3;

fn kind_of(v: &Value) -> u32 {
    match v {
        Value::Bytes(_) => KEEL_KIND_VALUE,
        Value::Posting(_) => KEEL_KIND_POSTING,
    }
}

/// The bytes handed to C for a value: the value itself, or the encoded list.
fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::Bytes(b) => b.clone(),
        Value::Posting(items) => {
            let mut out = Vec::new();
            crate::shard::encode_list(items, &mut out);
            out
        }
    }
}

/// Writes an optional `uint64_t *` out-parameter of an entry point.
pub(crate) fn write_version(out: *mut u64, v: u64) {
    if !out.is_null() {
        debug_assert!(out.is_aligned(), "version out-parameter is misaligned");
        // SAFETY: not NULL (checked above); the C contract makes a non-NULL
        // out-parameter a writable, aligned uint64_t for the call's duration.
        unsafe { *out = v };
    }
}

fn pack(out: &mut Vec<u8>, op: u8, key: &[u8], body: &[u8]) -> crate::Result<()> {
    crate::shard::check_key(key)?;
    let body_len = u32::try_from(body.len()).map_err(|_| Error::invalid("value or item larger than 4 GiB"))?;
    out.push(op);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(body);
    Ok(())
}

/// Decodes the packed batch format (see keel_shard_write_packed()).
pub(crate) fn unpack(mut bytes: &[u8]) -> crate::Result<Vec<Op>> {
    let mut ops = Vec::new();
    while !bytes.is_empty() {
        let bad = || Error::invalid(format!("packed operation {} is cut short", ops.len()));
        if bytes.len() < 9 {
            return Err(bad());
        }
        let code = bytes[0];
        let klen = u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
        let blen = u32::from_le_bytes(bytes[5..9].try_into().unwrap()) as usize;
        let rest = &bytes[9..];
        if rest.len() < klen || rest.len() - klen < blen {
            return Err(bad());
        }
        let (key, body) = (rest[..klen].to_vec(), rest[klen..klen + blen].to_vec());
        ops.push(match code {
            KEEL_OP_PUT => Op::Put { key, value: body },
            KEEL_OP_DELETE if body.is_empty() => Op::Delete { key },
            KEEL_OP_DELETE => return Err(Error::invalid("a packed delete carries a body")),
            KEEL_OP_APPEND => Op::Append { key, item: body },
            other => return Err(Error::invalid(format!("packed operation code {other} is not a KEEL_OP_* value"))),
        });
        bytes = &rest[klen + blen..];
    }
    Ok(ops)
}

/// Puts `value` under `key` (replacing a value or a posting list) and
/// writes the operation's version to `*version` (may be NULL). Returns
/// once the write is as durable as the engine's durability mode says.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (key longer than
/// KEEL_SHARD_MAX_KEY_SIZE, value larger than KEEL_SHARD_MAX_VALUE_SIZE or its WAL record), NO_SPACE,
/// IO, POISONED, CLOSED, TIMEOUT (the shard held
/// keel_engine_options_t.max_unflushed_wal_bytes of unflushed WAL for
/// write_stall_timeout_ms while its flush was behind; nothing was written),
/// MOVED (a transfer handed the shard over to another node: write there;
/// docs/TRANSFER.md), RESOURCE (out of descriptors or memory before
/// anything was written; the shard is still usable: retry once freed).
#[no_mangle]
pub extern "C" fn keel_shard_put(
    shard: *const keel_shard_t,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        let v = s.put(in_bytes(key, key_len, "key")?, in_bytes(value, value_len, "value")?)?;
        write_version(version, v);
        Ok(())
    })
}

/// Deletes `key` (a no-op that still gets a version when it is absent).
/// Errors: as keel_shard_put().
#[no_mangle]
pub extern "C" fn keel_shard_delete(
    shard: *const keel_shard_t,
    key: *const u8,
    key_len: usize,
    version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let v = try_handle!(shard).delete(in_bytes(key, key_len, "key")?)?;
        write_version(version, v);
        Ok(())
    })
}

/// Appends `item` to the posting list of `key`, creating the list when
/// the key is absent. Errors: as keel_shard_put(), plus WRONG_KIND when
/// the key holds a value and INVALID_ARGUMENT when the item would take the
/// list past KEEL_SHARD_MAX_LIST_SIZE (nothing is written).
#[no_mangle]
pub extern "C" fn keel_shard_append(
    shard: *const keel_shard_t,
    key: *const u8,
    key_len: usize,
    item: *const u8,
    item_len: usize,
    version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        let v = s.append(in_bytes(key, key_len, "key")?, in_bytes(item, item_len, "item")?)?;
        write_version(version, v);
        Ok(())
    })
}

/// Applies the operations of `batch` atomically: readers and recovery see
/// all of them or none. They get consecutive versions, the first and last
/// written to `*first_version` / `*last_version` (each may be NULL). The
/// batch is left as it was (clear it to reuse it).
/// Errors: as keel_shard_append() (WRONG_KIND, or INVALID_ARGUMENT for a
/// list past KEEL_SHARD_MAX_LIST_SIZE, fails the whole batch; earlier
/// operations of the batch count), INVALID_ARGUMENT (empty batch).
#[no_mangle]
pub extern "C" fn keel_shard_write(
    shard: *const keel_shard_t,
    batch: *const keel_batch_t,
    first_version: *mut u64,
    last_version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        let b = try_handle!(batch);
        write_ex(s, &unpack(&b.packed)?, std::ptr::null(), first_version, last_version)
    })
}

/// Like keel_shard_write() with the batch packed by the caller in one
/// buffer (one call from Go or another FFI): per operation
/// `[u8 KEEL_OP_*][u32 LE key length][u32 LE body length][key][body]`,
/// back to back; the body is the value (put), the item (append) or empty
/// (delete). Errors: as keel_shard_write(), INVALID_ARGUMENT for a
/// malformed buffer (nothing is written).
#[no_mangle]
pub extern "C" fn keel_shard_write_packed(
    shard: *const keel_shard_t,
    ops: *const u8,
    ops_len: usize,
    first_version: *mut u64,
    last_version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        write_ex(s, &unpack(in_bytes(ops, ops_len, "ops")?)?, std::ptr::null(), first_version, last_version)
    })
}

/// Reads `key`: its bytes (a value, or an encoded posting list) into a new
/// `*value` the caller frees with keel_buf_free(), its KEEL_KIND_* to
/// `*kind` and its version to `*version` (both may be NULL). `*value` must
/// hold no buffer: pass it zeroed ({NULL, 0}) or released with
/// keel_buf_free() (which zeroes it), so that reusing it cannot leak. Sees
/// only whole writes and batches. Reads at the shard's default level
/// (keel_lease_options_t.default_level; stale unless configured), with the
/// errors of keel_shard_get_ex() when that is lease or linearizable.
/// Errors: NOT_FOUND (absent; *value untouched), NULL_ARGUMENT,
/// INVALID_ARGUMENT (key too long; value->ptr is not NULL), CORRUPTION (a
/// damaged segment block), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_get(
    shard: *const keel_shard_t,
    key: *const u8,
    key_len: usize,
    value: *mut keel_buf_t,
    kind: *mut u32,
    version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    keel_shard_get_ex(shard, std::ptr::null(), key, key_len, value, kind, version, err)
}

/// keel_shard_get() at the consistency of `opts` (NULL: the shard's
/// default level, as keel_shard_get()): the lease check, or a read-index
/// and the wait for the applied index to reach it, before the read; or
/// the session named in `opts`. The arguments are checked first: a key
/// too long is INVALID_ARGUMENT without a lease check or read-index, on a
/// follower too. Errors: as keel_shard_get(), plus INVALID_ARGUMENT (a bad
/// level or struct_size; lease or linearizable without consensus
/// configured), NOT_LEADER (keel_error_leader_hint() names the leader when
/// known), TIMEOUT, the read-index callback's status.
#[no_mangle]
pub extern "C" fn keel_shard_get_ex(
    shard: *const keel_shard_t,
    opts: *const keel_read_options_t,
    key: *const u8,
    key_len: usize,
    value: *mut keel_buf_t,
    kind: *mut u32,
    version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        let out = buf_out(value, "value")?;
        let key = in_bytes(key, key_len, "key")?;
        // Before the level's check, as every argument: a read no node can
        // serve is not sent to the leader (NOT_LEADER) nor charged a
        // read-index.
        check_key(key)?;
        read::begin(s, opts)?;
        let e = s.get(key)?.ok_or_else(|| Error::new(KEEL_STATUS_NOT_FOUND, "key not found"))?;
        *out = keel_buf_t::from_vec(value_bytes(&e.value));
        if !kind.is_null() {
            // SAFETY: not NULL (checked above); the C contract makes a non-NULL
            // out-parameter a writable, aligned uint32_t for the call.
            unsafe { *kind = kind_of(&e.value) };
        }
        write_version(version, e.version);
        Ok(())
    })
}

/// Reads `count` keys from one consistent state. Keys are packed back to
/// back in `keys`, key i being `key_lens[i]` bytes. For each key i,
/// `values[i]` receives a new buffer (free them all with keel_bufs_free();
/// an absent key gets {NULL, 0}), `kinds[i]` its KEEL_KIND_* (KEEL_KIND_NONE
/// when absent) and `versions[i]` its version or 0 (`versions` may be
/// NULL). Every `values[i]` must hold no buffer (zeroed or released with
/// keel_bufs_free()). On error nothing needs freeing. At the shard's
/// default level, as keel_shard_get().
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (a key too long; a values[i].ptr
/// is not NULL), CORRUPTION, CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_multi_get(
    shard: *const keel_shard_t,
    keys: *const u8,
    key_lens: *const usize,
    count: usize,
    values: *mut keel_buf_t,
    kinds: *mut u32,
    versions: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    keel_shard_multi_get_ex(shard, std::ptr::null(), keys, key_lens, count, values, kinds, versions, err)
}

/// keel_shard_multi_get() at the consistency of `opts`: one lease check or
/// one read-index for all `count` keys, made once every key is checked (as
/// keel_shard_get_ex() checks its key). Errors: as keel_shard_multi_get()
/// and keel_shard_get_ex().
#[no_mangle]
pub extern "C" fn keel_shard_multi_get_ex(
    shard: *const keel_shard_t,
    opts: *const keel_read_options_t,
    keys: *const u8,
    key_lens: *const usize,
    count: usize,
    values: *mut keel_buf_t,
    kinds: *mut u32,
    versions: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        // No keys is a read of nothing, checked like any other: the
        // options, the shard's state, and a permit at their level.
        if count > 0 && (values.is_null() || kinds.is_null()) {
            return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, "values or kinds is NULL"));
        }
        let split = in_packed(keys, key_lens, count, "keys")?;
        // A keel_buf_t is larger than a length: `count` lengths fitting in
        // memory does not make `count` buffers fit.
        if count > isize::MAX as usize / std::mem::size_of::<keel_buf_t>() {
            return Err(Error::invalid(format!("count {count} of values is too large")));
        }
        if count > 0 {
            // SAFETY: the caller passes room for `count` buffers at `values`
            // (non-NULL, checked above), and `count` of them fit in isize
            // (checked above).
            for (i, b) in unsafe { std::slice::from_raw_parts(values, count) }.iter().enumerate() {
                check_unfilled(b, &format!("values[{i}]"))?;
            }
        }
        // Before the level's check, as in keel_shard_get_ex().
        split.iter().try_for_each(|k| check_key(k))?;
        read::begin(s, opts)?;
        let found = s.multi_get(&split)?;
        for (i, e) in found.into_iter().enumerate() {
            let (buf, k, v) = match e {
                Some(e) => (keel_buf_t::from_vec(value_bytes(&e.value)), kind_of(&e.value), e.version),
                None => (keel_buf_t::from_vec(Vec::new()), KEEL_KIND_NONE, 0),
            };
            debug_assert!(i < count, "multi_get answered more keys than asked");
            // SAFETY: `values` and `kinds` are not NULL (checked above) nor is
            // `versions` when written; the C contract gives each room for
            // `count` elements and `found` has one entry per key, so i < count.
            // Plain stores: the old `values[i]` holds no buffer (checked
            // above), so overwriting it leaks nothing.
            unsafe {
                *values.add(i) = buf;
                *kinds.add(i) = k;
                if !versions.is_null() {
                    *versions.add(i) = v;
                }
            }
        }
        Ok(())
    })
}

/// Opens a scan over keys in [start, end), in key order. `end` NULL means
/// no upper bound (end_len is then ignored); a non-NULL `end` of length 0
/// is the empty key, so the range is empty. An empty start is the first
/// key. A reversed range (end < start) is empty. Release with keel_iter_close(). The scan reads a consistent copy of
/// the range taken now; after the shard is closed its calls return CLOSED.
/// At the shard's default level, as keel_shard_get().
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (start or end longer than
/// KEEL_SHARD_MAX_KEY_SIZE, as keel_shard_get() refuses such a key: no key
/// is longer, so no range needs such a bound), CORRUPTION (a damaged
/// segment block holding keys of the range; blocks past its end are not
/// read), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_scan(
    shard: *const keel_shard_t,
    start: *const u8,
    start_len: usize,
    end: *const u8,
    end_len: usize,
    out: *mut *mut keel_iter_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    keel_shard_scan_ex(shard, std::ptr::null(), start, start_len, end, end_len, out, err)
}

/// keel_shard_scan() at the consistency of `opts` (checked once, when the
/// scan opens, after its bounds, as keel_shard_get_ex() checks its key).
/// Errors: as keel_shard_scan() and keel_shard_get_ex().
#[no_mangle]
pub extern "C" fn keel_shard_scan_ex(
    shard: *const keel_shard_t,
    opts: *const keel_read_options_t,
    start: *const u8,
    start_len: usize,
    end: *const u8,
    end_len: usize,
    out: *mut *mut keel_iter_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        let out = out_ptr(out, "out")?;
        let start = in_bytes(start, start_len, "start")?;
        let end = if end.is_null() { None } else { Some(in_bytes(end, end_len, "end")?) };
        // Before the level's check, as in keel_shard_get_ex().
        check_scan_bounds(start, end)?;
        read::begin(s, opts)?;
        *out = into_handle::<keel_iter_t>(Iter { scan: s.scan(start, end)?, current: None });
        Ok(())
    })
}

/// Opens a scan over every key that starts with `prefix` (all keys when
/// prefix_len is 0). As keel_shard_scan(); a prefix longer than
/// KEEL_SHARD_MAX_KEY_SIZE is INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_shard_scan_prefix(
    shard: *const keel_shard_t,
    prefix: *const u8,
    prefix_len: usize,
    out: *mut *mut keel_iter_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    keel_shard_scan_prefix_ex(shard, std::ptr::null(), prefix, prefix_len, out, err)
}

/// keel_shard_scan_prefix() at the consistency of `opts`, checked after
/// the prefix, as keel_shard_scan_ex() checks its bounds. Errors: as
/// keel_shard_scan_ex().
#[no_mangle]
pub extern "C" fn keel_shard_scan_prefix_ex(
    shard: *const keel_shard_t,
    opts: *const keel_read_options_t,
    prefix: *const u8,
    prefix_len: usize,
    out: *mut *mut keel_iter_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        let out = out_ptr(out, "out")?;
        let prefix = in_bytes(prefix, prefix_len, "prefix")?;
        // Before the level's check, as in keel_shard_get_ex().
        check_scan_prefix(prefix)?;
        read::begin(s, opts)?;
        let scan = s.scan_prefix(prefix)?;
        *out = into_handle::<keel_iter_t>(Iter { scan, current: None });
        Ok(())
    })
}

/// Moves to the next key and points `*key`/`*key_len` and
/// `*value`/`*value_len` at its bytes (a value or an encoded posting
/// list), owned by the iterator and valid until the next call or
/// keel_iter_close(). `*kind` and `*version` may be NULL.
/// Errors: NOT_FOUND at the end (pointers untouched), NULL_ARGUMENT,
/// CLOSED (the shard was closed).
#[no_mangle]
pub extern "C" fn keel_iter_next(
    iter: *mut keel_iter_t,
    key: *mut *const u8,
    key_len: *mut usize,
    value: *mut *const u8,
    value_len: *mut usize,
    kind: *mut u32,
    version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, iter, {
        let it = try_handle!(mut iter);
        let (key, key_len) = (out_ptr(key, "key")?, out_ptr(key_len, "key_len")?);
        let (value, value_len) = (out_ptr(value, "value")?, out_ptr(value_len, "value_len")?);
        // CLOSED at every call once the shard is closed (the scan itself
        // yields it once, then ends).
        it.scan.check_open()?;
        let (k, e) = it.scan.next().ok_or_else(|| Error::new(KEEL_STATUS_NOT_FOUND, "end of scan"))??;
        let bytes = value_bytes(&e.value);
        let (k, e, bytes) = it.current.insert((k, e, bytes));
        (*key, *key_len) = (k.as_ptr(), k.len());
        (*value, *value_len) = (bytes.as_ptr(), bytes.len());
        if !kind.is_null() {
            // SAFETY: not NULL (checked above); the C contract makes a non-NULL
            // out-parameter a writable, aligned uint32_t for the call.
            unsafe { *kind = kind_of(&e.value) };
        }
        write_version(version, e.version);
        Ok(())
    })
}

/// Frees a scan. NULL is a no-op.
#[no_mangle]
pub extern "C" fn keel_iter_close(iter: *mut keel_iter_t) {
    let _ = ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        // SAFETY: by the C contract `iter` is NULL or a scan keel made, given
        // up here and used by no other call; take_handle checks the magic.
        drop(unsafe { take_handle(iter)? });
        Ok(())
    });
}

/// Walks an encoded posting list (`list`, `list_len`, as returned for
/// KEEL_KIND_POSTING): from byte `*offset` (start at 0), points `*item` /
/// `*item_len` into `list` at the next item and advances `*offset`.
/// Errors: NOT_FOUND at the end, CORRUPTION (not a valid encoding),
/// NULL_ARGUMENT, INVALID_ARGUMENT (*offset beyond list_len).
#[no_mangle]
pub extern "C" fn keel_posting_next(
    list: *const u8,
    list_len: usize,
    offset: *mut usize,
    item: *mut *const u8,
    item_len: *mut usize,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        let bytes = in_bytes(list, list_len, "list")?;
        let offset = out_ptr(offset, "offset")?;
        let (item, item_len) = (out_ptr(item, "item")?, out_ptr(item_len, "item_len")?);
        let rest = bytes.get(*offset..).ok_or_else(|| Error::invalid(format!("offset {} is beyond {list_len}", *offset)))?;
        if rest.is_empty() {
            return Err(Error::new(KEEL_STATUS_NOT_FOUND, "end of posting list"));
        }
        let (it, after) = split_item(rest)?;
        (*item, *item_len) = (it.as_ptr(), it.len());
        *offset = list_len - after.len();
        Ok(())
    })
}

/// Runs a flush pass in the shard's flush pool (a pass already running
/// is not interrupted: the request runs in the next one). With `wait`,
/// returns when the pass is done and writes the persisted version to
/// `*persisted_version` (may be NULL); without, returns at once with the
/// version persisted so far.
/// Errors: IO, NO_SPACE (the pass failed: nothing was acknowledged, the
/// WAL still holds everything), CLOSED, POISONED.
#[no_mangle]
pub extern "C" fn keel_shard_flush(
    shard: *const keel_shard_t,
    wait: bool,
    persisted_version: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let v = try_handle!(shard).flush(wait)?;
        write_version(persisted_version, v);
        Ok(())
    })
}

/// Writes the persisted version: every operation with a version <= it is
/// in durable segment files and its WAL records may be gone. A host whose
/// own consensus log is the durability boundary may compact that log up
/// to here. Right after open it already covers everything recovery found
/// in the segments. Errors: NULL_ARGUMENT, CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_persisted_version(shard: *const keel_shard_t, out: *mut u64) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), shard, {
        let s = try_handle!(shard);
        let out = out_ptr(out, "out")?;
        *out = open_shard(s)?.persisted_version();
        Ok(())
    })
}

/// Writes the version of the last applied operation.
/// Errors: NULL_ARGUMENT, CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_last_version(shard: *const keel_shard_t, out: *mut u64) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), shard, {
        let s = try_handle!(shard);
        let out = out_ptr(out, "out")?;
        *out = open_shard(s)?.last_version();
        Ok(())
    })
}

fn open_shard(s: &Shard) -> crate::Result<&Shard> {
    match s.is_closed() {
        true => Err(Error::new(KEEL_STATUS_CLOSED, "shard is closed")),
        false => Ok(s),
    }
}

/// sizeof(keel_shard_stats_t) of version 1.
pub const KEEL_SHARD_STATS_SIZE_V1: u32 = 56;
/// sizeof(keel_shard_stats_t) of version 2 (adds the unflushed WAL, write
/// stalls and what the open replayed).
pub const KEEL_SHARD_STATS_SIZE_V2: u32 = 96;

/// What keel_shard_stats() reports. The caller sets `struct_size` to
/// sizeof(keel_shard_stats_t) before the call; keel writes only the fields
/// both sides know (bytes past an older caller's struct are untouched) and
/// sets struct_size to their size (docs/FFI.md, "Versioned structs").
#[repr(C)]
pub struct keel_shard_stats_t {
    pub struct_size: u32,
    /// Number of immutable segments (tables).
    pub sealed_segments: u32,
    /// Keys held by the appendable segment.
    pub appendable_keys: u64,
    /// Bytes of keys and values in the appendable segment (it is sealed
    /// past the engine's seal_bytes).
    pub appendable_bytes: u64,
    /// Bytes of the immutable segments' table files.
    pub sealed_bytes: u64,
    /// Version of the last applied operation.
    pub last_version: u64,
    /// As keel_shard_persisted_version().
    pub persisted_version: u64,
    /// First version the shard's WAL still holds (the WAL is truncated
    /// below the persisted version, in whole segment files).
    pub wal_first_version: u64,
    /// Bytes of logged operations no segment file holds yet: what a reopen
    /// replays. At most keel_engine_options_t.max_unflushed_wal_bytes,
    /// give or take one write batch (version 2).
    pub unflushed_wal_bytes: u64,
    /// Writes that waited for the flush at that bound (those that then
    /// failed with TIMEOUT included), since the shard opened (version 2).
    pub write_stalls: u64,
    /// Total nanoseconds those writes waited (version 2).
    pub write_stall_nanos: u64,
    /// Operations the shard's open replayed from its WAL: only those past
    /// what its segment files hold, however much WAL is retained (version 2).
    pub replayed_records: u64,
    /// Their bytes, each with its 4-byte record header (version 2).
    pub replayed_bytes: u64,
}
versioned!(keel_shard_stats_t, [KEEL_SHARD_STATS_SIZE_V1, KEEL_SHARD_STATS_SIZE_V2]);

/// Fills `*out` with the shard's counters (one consistent reading).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (struct_size too small), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_stats(shard: *const keel_shard_t, out: *mut keel_shard_stats_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), shard, {
        let s = open_shard(try_handle!(shard))?;
        let st = s.stats();
        let value = keel_shard_stats_t {
            struct_size: KEEL_SHARD_STATS_SIZE_V2,
            sealed_segments: st.sealed_segments as u32,
            appendable_keys: st.appendable_keys,
            appendable_bytes: st.appendable_bytes,
            sealed_bytes: st.sealed_bytes,
            last_version: st.last_version,
            persisted_version: st.persisted_version,
            wal_first_version: st.wal_first_seq,
            unflushed_wal_bytes: st.unflushed_wal_bytes,
            write_stalls: st.write_stalls,
            write_stall_nanos: st.write_stall_time.as_nanos().min(u64::MAX as u128) as u64,
            replayed_records: st.replayed_records,
            replayed_bytes: st.replayed_bytes,
        };
        write_stats(out, value)
    })
}

/// Reports the shard's background work: OK when the last flush pass and
/// the sealing and merging after it succeeded; otherwise the status of the
/// last failure (details in `*err`): IO or NO_SPACE (retried at the next
/// pass; the WAL keeps every write meanwhile), PANIC (the shard is
/// poisoned). A failed pass is cleared by the next pass that succeeds,
/// before a keel_shard_flush(wait = true) that ran it returns; a failed
/// seal or merge stays until the sealing and merging after a pass succeed.
/// Also CLOSED, NULL_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_shard_health(shard: *const keel_shard_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, {
        open_shard(try_handle!(shard))?.background_error().map_or(Ok(()), Err)
    })
}

/// Writes what the shard's open found to `*out` as UTF-8 text (not
/// NUL-terminated), one finding per line, or an empty buffer ({NULL, 0})
/// when it found nothing: files its manifest does not list, moved aside into
/// `segments/unlisted-<unix seconds>/` (`-2`, `-3`... added when an earlier
/// open in the same second made that folder) (any open); after a salvage open
/// (keel_engine_options_t.salvage) also each missing or damaged segment
/// file with what it held, the versions lost, and, when that engine open
/// found its commit log damaged (or finished the salvage of one that an
/// earlier open began and failed, salvage or not), which of the commit
/// log's copies were lost (writes to this shard among them are missing
/// where the shard's own WAL lost them too). `*out` must be empty
/// ({NULL, 0}) on entry; the caller frees it with keel_buf_free(). Any
/// thread, any time while the shard is open.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (`*out` not empty), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_salvage_report(shard: *const keel_shard_t, out: *mut keel_buf_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = open_shard(try_handle!(shard))?;
        let out = out_ptr(out, "out")?;
        if !out.ptr.is_null() {
            return Err(Error::invalid("out holds a buffer: free it with keel_buf_free() first"));
        }
        *out = keel_buf_t::from_vec(s.recovery_report().to_string().into_bytes());
        Ok(())
    })
}

/// Keeps the shard's WAL records with version >= `version` even after
/// they are persisted (for a reader that still needs them, e.g. a shard
/// transfer); KEEL_WAL_KEEP_NONE releases the hold.
/// Errors: NULL_ARGUMENT, TRUNCATED (already gone), IO (deleting the
/// segments the hold no longer keeps failed; the hold is set), POISONED,
/// CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_set_keep_from(shard: *const keel_shard_t, version: u64, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, {
        try_handle!(shard).set_keep_from(version)?;
        Ok(())
    })
}

/// Closes the shard: a final flush pass, the shard out of the flush pool, the WAL
/// closed; frees the handle (even when the flush fails; the error is
/// returned and the WAL still holds everything). Open scans then return
/// CLOSED. A handle whose engine was closed first frees with OK. NULL is
/// a no-op. Must not race with other calls on the same handle.
/// Errors: IO, NO_SPACE, POISONED, INVALID_ARGUMENT (not a live handle),
/// RESOURCE (out of descriptors or memory: the close is left unfinished
/// and the engine retries it before its next open or drop of the shard,
/// and at its close).
#[no_mangle]
pub extern "C" fn keel_shard_close(shard: *mut keel_shard_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        // SAFETY: by the C contract `shard` is NULL or a shard handle keel
        // made, and this close is its last call, racing with none; take_handle
        // checks the magic before taking it back.
        match unsafe { take_handle(shard)? } {
            Some(s) => s.close(),
            None => Ok(()),
        }
    })
}

/// Creates an empty batch in `*out`; free it with keel_batch_free().
/// Errors: NULL_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_batch_new(out: *mut *mut keel_batch_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        let out = out_ptr(out, "out")?;
        *out = into_handle::<keel_batch_t>(Batch { packed: Vec::new(), count: 0 });
        Ok(())
    })
}

fn batch_add(batch: *mut keel_batch_t, op: u8, key: &[u8], body: &[u8]) -> crate::Result<()> {
    // SAFETY: `batch` is the handle argument of the calling keel_batch_*
    // entry point: NULL or a batch keel made and not freed, used by one
    // thread at a time (C contract); handle_mut checks NULL and the magic, and
    // the borrow ends within the entry call.
    let b = unsafe { crate::ffi::boundary::handle_mut::<keel_batch_t>(batch)? };
    pack(&mut b.packed, op, key, body)?;
    b.count += 1;
    Ok(())
}

/// Adds a put to the batch (the bytes are copied).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (key too long).
#[no_mangle]
pub extern "C" fn keel_batch_put(
    batch: *mut keel_batch_t,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, batch, {
        batch_add(batch, KEEL_OP_PUT, in_bytes(key, key_len, "key")?, in_bytes(value, value_len, "value")?)
    })
}

/// Adds a delete to the batch. Errors: as keel_batch_put().
#[no_mangle]
pub extern "C" fn keel_batch_delete(
    batch: *mut keel_batch_t,
    key: *const u8,
    key_len: usize,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, batch, { batch_add(batch, KEEL_OP_DELETE, in_bytes(key, key_len, "key")?, &[]) })
}

/// Adds an append to the batch. Errors: as keel_batch_put().
#[no_mangle]
pub extern "C" fn keel_batch_append(
    batch: *mut keel_batch_t,
    key: *const u8,
    key_len: usize,
    item: *const u8,
    item_len: usize,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, batch, {
        batch_add(batch, KEEL_OP_APPEND, in_bytes(key, key_len, "key")?, in_bytes(item, item_len, "item")?)
    })
}

/// Writes the number of operations in the batch. Errors: NULL_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_batch_count(batch: *const keel_batch_t, out: *mut usize) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), batch, {
        let b = try_handle!(batch);
        *out_ptr(out, "out")? = b.count;
        Ok(())
    })
}

/// Removes every operation (keeps the memory for reuse).
/// Errors: NULL_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_batch_clear(batch: *mut keel_batch_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), batch, {
        let b = try_handle!(mut batch);
        b.packed.clear();
        b.count = 0;
        Ok(())
    })
}

/// Frees a batch. NULL is a no-op.
#[no_mangle]
pub extern "C" fn keel_batch_free(batch: *mut keel_batch_t) {
    let _ = ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        // SAFETY: by the C contract `batch` is NULL or a batch keel made, given
        // up here and used by no other call; take_handle checks the magic.
        drop(unsafe { take_handle(batch)? });
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_batches_round_trip_and_reject_damage() {
        let mut p = Vec::new();
        pack(&mut p, KEEL_OP_PUT, b"k", b"v").unwrap();
        pack(&mut p, KEEL_OP_DELETE, b"d", b"").unwrap();
        pack(&mut p, KEEL_OP_APPEND, b"p", b"item").unwrap();
        let ops = unpack(&p).unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[2], Op::Append { key: b"p".to_vec(), item: b"item".to_vec() });
        for cut in 1..p.len() {
            if unpack(&p[..cut]).is_ok() {
                assert!(cut == 11 || cut == 21, "cut at {cut} decoded");
            }
        }
        let mut bad = p.clone();
        bad[0] = 9;
        assert_eq!(unpack(&bad).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
        assert!(pack(&mut p, KEEL_OP_PUT, &[0; 5000], b"").is_err());
    }
}
