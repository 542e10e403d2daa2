//! C API of the write-ahead log (`keel_wal_*`).

use crate::error::Error;
use crate::ffi::boundary::{in_bytes, in_packed, in_path, into_handle, out_ptr, take_handle, Opaque};
use crate::ffi::buf::{buf_out, copy_out, keel_buf_t};
use crate::ffi::error::keel_error_t;
use crate::ffi::versioned::{init_options, read_options};
use crate::status::*;
use crate::wal::{Durability, Options, ReadUpto, Reader, RecoveryMode, Wal};
use std::os::raw::c_char;
use std::time::Duration;

/// A write-ahead log open on one directory. Internally synchronised: every
/// call except keel_wal_close() may run on any thread concurrently.
pub struct keel_wal_t {
    _private: [u8; 0],
}

/// A cursor over the records of a WAL, opened with keel_wal_reader_open().
/// Not thread-safe: use it from one thread at a time. It pins the segments
/// it has yet to read so that truncation cannot delete them.
pub struct keel_wal_reader_t {
    _private: [u8; 0],
}

impl Opaque for keel_wal_t {
    type Inner = Wal;
    const MAGIC: u64 = 0x6b65_656c_5741_4c5f; // "keelWAL_"
    const NAME: &'static str = "keel_wal_t";
}

impl Opaque for keel_wal_reader_t {
    type Inner = Reader;
    const MAGIC: u64 = 0x6b65_656c_5244_5252; // "keelRDRR"
    const NAME: &'static str = "keel_wal_reader_t";
}

/// Durability mode (keel_wal_options_t.durability): an append returns only
/// once its record is on stable storage (a direct write with O_DSYNC, or
/// fdatasync where the file system takes none; group-committed).
pub const KEEL_DURABILITY_SYNC: u32 = 0;
/// Durability mode: a background worker syncs at most sync_interval_ms
/// after a write (an idle log is not synced, having nothing to sync); a
/// process crash loses nothing, a power loss may lose that window.
pub const KEEL_DURABILITY_PERIODIC: u32 = 1;
/// Durability mode: keel never syncs on its own (keel_wal_sync() still
/// does); a process crash loses nothing, the OS decides when data reaches disk.
pub const KEEL_DURABILITY_NONE: u32 = 2;

/// Recovery mode (keel_wal_options_t.recovery_mode), the default: a torn
/// tail (damage that no later frame proves was durable: the unsynced end
/// a crash leaves) is cut off; damage to durable records fails the open
/// with KEEL_STATUS_CORRUPTION. Outcome table: docs/WAL.md.
pub const KEEL_RECOVERY_TOLERATE_TAIL: u32 = 0;
/// Recovery mode: any damage, a torn tail included, fails the open.
pub const KEEL_RECOVERY_ABSOLUTE: u32 = 1;
/// Recovery mode: stop at the first damage and keep the prefix before it,
/// unless a valid frame after the damage proves the damaged record was
/// durable (then CORRUPTION).
pub const KEEL_RECOVERY_POINT_IN_TIME: u32 = 2;
/// Recovery mode, explicitly lossy: keep the valid prefix before the first
/// damage and move every damaged or later segment file into
/// `<dir>/salvaged-<timestamp>/` (copied or moved, never deleted). Always opens unless I/O fails.
pub const KEEL_RECOVERY_SALVAGE: u32 = 3;

/// keel_wal_reader_open() `upto`: read only records already durable.
pub const KEEL_WAL_READ_DURABLE: u32 = 0;
/// keel_wal_reader_open() `upto`: read every appended record, synced or not.
pub const KEEL_WAL_READ_APPENDED: u32 = 1;

/// keel_wal_set_keep_from() value that holds nothing back.
pub const KEEL_WAL_KEEP_NONE: u64 = u64::MAX;

/// sizeof(keel_wal_options_t) of version 1 (up to max_record_size).
pub const KEEL_WAL_OPTIONS_SIZE_V1: u32 = 32;
/// sizeof(keel_wal_options_t) of version 2 (adds allow_foreign_files).
pub const KEEL_WAL_OPTIONS_SIZE_V2: u32 = 40;

/// Options of keel_wal_open(). Versioned by `struct_size` (docs/FFI.md,
/// "Versioned structs"): fill it with keel_wal_options_init_sized(&o,
/// sizeof o) first, then change the fields you need.
#[repr(C)]
pub struct keel_wal_options_t {
    /// sizeof(keel_wal_options_t) as the caller compiled it (set by the
    /// init functions); keel reads only the fields it covers.
    pub struct_size: u32,
    /// KEEL_DURABILITY_*; default KEEL_DURABILITY_SYNC.
    pub durability: u32,
    /// Sync interval of KEEL_DURABILITY_PERIODIC in milliseconds, 1 to
    /// 60000; default 100. Ignored by the other modes.
    pub sync_interval_ms: u32,
    /// KEEL_RECOVERY_*; default KEEL_RECOVERY_TOLERATE_TAIL.
    pub recovery_mode: u32,
    /// Largest size of a segment file in bytes; 64 KiB to 4 GiB, default
    /// 64 MiB. A log's first segment is 64 KiB and each rotation doubles
    /// the next one up to this size (a record too large for the next one
    /// gets a segment that fits it); each is preallocated when created.
    pub segment_size: u64,
    /// Largest record or batch (payload bytes) one append may carry; at most
    /// segment_size minus 104 bytes. 0 (the default) means
    /// min(16 MiB, segment_size - 104).
    pub max_record_size: u64,
    /// Version 2. 0 (the default): keel_wal_open() refuses a non-empty
    /// directory that holds no keel WAL file (no segment, LOCK or
    /// salvaged-* entry) with INVALID_ARGUMENT, so a mistyped path never
    /// gets a LOCK and a segment written into it. 1: open it anyway.
    pub allow_foreign_files: u32,
}
versioned!(keel_wal_options_t, [KEEL_WAL_OPTIONS_SIZE_V1, KEEL_WAL_OPTIONS_SIZE_V2]);
const _: () = assert!(std::mem::offset_of!(keel_wal_options_t, allow_foreign_files) == KEEL_WAL_OPTIONS_SIZE_V1 as usize);

fn default_options() -> keel_wal_options_t {
    let d = Options::default();
    keel_wal_options_t {
        struct_size: KEEL_WAL_OPTIONS_SIZE_V2,
        durability: KEEL_DURABILITY_SYNC,
        sync_interval_ms: 100,
        recovery_mode: KEEL_RECOVERY_TOLERATE_TAIL,
        segment_size: d.segment_size,
        max_record_size: d.max_record_size,
        allow_foreign_files: d.allow_foreign_files as u32,
    }
}

/// Fills the version-1 fields of `*opts` (KEEL_WAL_OPTIONS_SIZE_V1 bytes,
/// never more: a program built against the first header has no room for
/// later fields) with the defaults and sets struct_size to
/// KEEL_WAL_OPTIONS_SIZE_V1, so later fields are not read. New code calls
/// keel_wal_options_init_sized().
/// Errors: NULL_ARGUMENT when opts is NULL.
#[no_mangle]
pub extern "C" fn keel_wal_options_init(opts: *mut keel_wal_options_t) -> keel_status_t {
    keel_wal_options_init_sized(opts, KEEL_WAL_OPTIONS_SIZE_V1 as usize)
}

/// Fills the `size` bytes at `opts` (pass sizeof *opts) with the defaults:
/// the fields this library knows, zero past them (the default of any field
/// a newer header adds), and struct_size = size.
/// Errors: NULL_ARGUMENT when opts is NULL, INVALID_ARGUMENT when size is
/// below KEEL_WAL_OPTIONS_SIZE_V1 or between two published sizes.
#[no_mangle]
pub extern "C" fn keel_wal_options_init_sized(opts: *mut keel_wal_options_t, size: usize) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        init_options(opts, size, default_options())
    })
}

fn options_from_c(p: *const keel_wal_options_t) -> crate::Result<Options> {
    let o = read_options(p, default_options(), "keel_wal_options_init_sized")?;
    let durability = match o.durability {
        KEEL_DURABILITY_SYNC => Durability::Sync,
        KEEL_DURABILITY_PERIODIC => {
            if !(1..=60_000).contains(&o.sync_interval_ms) {
                return Err(Error::invalid(format!("sync_interval_ms {} is outside 1..=60000", o.sync_interval_ms)));
            }
            Durability::Periodic(Duration::from_millis(o.sync_interval_ms as u64))
        }
        KEEL_DURABILITY_NONE => Durability::None,
        other => return Err(Error::invalid(format!("durability {other} is not a KEEL_DURABILITY_* value"))),
    };
    let recovery = match o.recovery_mode {
        KEEL_RECOVERY_TOLERATE_TAIL => RecoveryMode::TolerateTail,
        KEEL_RECOVERY_ABSOLUTE => RecoveryMode::Absolute,
        KEEL_RECOVERY_POINT_IN_TIME => RecoveryMode::PointInTime,
        KEEL_RECOVERY_SALVAGE => RecoveryMode::Salvage,
        other => return Err(Error::invalid(format!("recovery_mode {other} is not a KEEL_RECOVERY_* value"))),
    };
    let allow_foreign_files = match o.allow_foreign_files {
        0 => false,
        1 => true,
        other => return Err(Error::invalid(format!("allow_foreign_files {other} is not 0 or 1"))),
    };
    let opts = Options {
        durability,
        recovery,
        segment_size: o.segment_size,
        max_record_size: o.max_record_size,
        allow_foreign_files,
        ..Options::default()
    };
    opts.validate()?;
    Ok(opts)
}

/// Opens (creating if needed) the WAL in directory `dir` and recovers it
/// according to the recovery mode. `opts` may be NULL for the defaults.
/// On success `*out` receives a handle the caller must release with
/// keel_wal_close(). The directory is locked: a second open of the same
/// directory (in any process) fails with BUSY.
/// Errors: NULL_ARGUMENT (dir or out NULL), INVALID_ARGUMENT (bad option or
/// struct_size; `dir` is a non-empty directory holding no keel WAL file and
/// allow_foreign_files is 0), IO, NO_SPACE, RESOURCE (out of descriptors
/// or memory), CORRUPTION (damage the recovery mode does not accept), BUSY.
#[no_mangle]
pub extern "C" fn keel_wal_open(
    dir: *const c_char,
    opts: *const keel_wal_options_t,
    out: *mut *mut keel_wal_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        let dir = in_path(dir, "dir")?;
        let out = out_ptr(out, "out")?;
        let options = options_from_c(opts)?;
        let wal = Wal::open(dir, options)?;
        *out = into_handle::<keel_wal_t>(wal);
        Ok(())
    })
}

/// Appends one record of `len` bytes (`data` may be NULL when len is 0) and
/// writes its sequence number to `*out_seq` (may be NULL). Returns when the
/// record is durable in SYNC mode, and once it is in the OS page cache in
/// the other modes. Thread-safe; concurrent appends are group-committed.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (record larger than
/// max_record_size), NO_SPACE (nothing written, log still usable), RESOURCE
/// (out of descriptors or memory while making the next segment: nothing
/// written, no sequence number used, log still usable; retry once freed),
/// IO or POISONED (a write or sync failed: the WAL refuses further appends;
/// reopen), CLOSED.
#[no_mangle]
pub extern "C" fn keel_wal_append(
    wal: *const keel_wal_t,
    data: *const u8,
    len: usize,
    out_seq: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, wal, {
        let w = try_handle!(wal);
        let data = in_bytes(data, len, "data")?;
        let seq = w.append(data)?;
        if !out_seq.is_null() {
debug_assert!(out_seq.is_aligned(), "out_seq is misaligned");
            // SAFETY: not NULL (checked above); the C contract makes a non-NULL
            // out-parameter a writable, aligned uint64_t for the call.
            unsafe { *out_seq = seq };
        }
        Ok(())
    })
}

/// Appends `count` records as one atomic batch: after any crash either all
/// of them are recovered or none. The records are packed back to back in
/// `data`; `lens[i]` is the length of record i (so `data` holds the sum of
/// lens bytes; this layout needs no pointer array, which suits cgo). They get
/// consecutive sequence numbers; the first is written to `*out_first_seq`
/// (may be NULL). Durability as keel_wal_append(). count 0 is
/// INVALID_ARGUMENT.
/// Errors: as keel_wal_append(); the batch's total payload counts against
/// max_record_size.
#[no_mangle]
pub extern "C" fn keel_wal_append_batch(
    wal: *const keel_wal_t,
    data: *const u8,
    lens: *const usize,
    count: usize,
    out_first_seq: *mut u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, wal, {
        let w = try_handle!(wal);
        if count == 0 {
            return Err(Error::invalid("a batch needs at least one record"));
        }
        if count > u32::MAX as usize {
            return Err(Error::invalid(format!("batch of {count} records is too large")));
        }
        let records = in_packed(data, lens, count, "data")?;
        let first = w.append_batch(&records)?;
        if !out_first_seq.is_null() {
debug_assert!(out_first_seq.is_aligned(), "out_first_seq is misaligned");
            // SAFETY: not NULL (checked above); the C contract makes a non-NULL
            // out-parameter a writable, aligned uint64_t for the call.
            unsafe { *out_first_seq = first };
        }
        Ok(())
    })
}

/// Makes every record appended before this call durable (one group-commit
/// fdatasync shared with concurrent callers), in any durability mode.
/// Errors: IO or POISONED (the sync failed; the WAL is poisoned), CLOSED.
#[no_mangle]
pub extern "C" fn keel_wal_sync(wal: *const keel_wal_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, wal, {
        try_handle!(wal).sync()?;
        Ok(())
    })
}

/// Writes the durable watermark D to `*out`: every record with a sequence
/// number <= D is on stable storage. 0 when nothing is durable yet.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_wal_durable_seq(wal: *const keel_wal_t, out: *mut u64) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), wal, {
        let w = try_handle!(wal);
        *out_ptr(out, "out")? = w.durable_seq();
        Ok(())
    })
}

/// Writes the last sequence number the log has used to `*out`: the last
/// appended record's, or, when a recovery declared numbers lost after it,
/// the end of that gap (no record has it; the next append takes the one
/// after). 0 when the log has never held a record. Sequence numbers start
/// at 1.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_wal_last_seq(wal: *const keel_wal_t, out: *mut u64) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), wal, {
        let w = try_handle!(wal);
        *out_ptr(out, "out")? = w.last_seq();
        Ok(())
    })
}

/// Writes the sequence number of the first retained record to `*out`; when
/// no record is retained it is last_seq + 1.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_wal_first_seq(wal: *const keel_wal_t, out: *mut u64) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), wal, {
        let w = try_handle!(wal);
        *out_ptr(out, "out")? = w.first_seq();
        Ok(())
    })
}

/// Declares every record <= `seq` persisted elsewhere (monotonic: a lower
/// value than before is ignored). Whole segments whose records are all <=
/// min(seq, keep_from - 1) and that no reader still needs are deleted, then
/// the directory is synced; the active segment is never deleted.
/// Errors: INVALID_ARGUMENT (seq > last_seq), NO_SPACE or RESOURCE (the
/// extent record could not be rewritten: the ack still counts, the
/// segments stay, a later ack retries), IO, POISONED, CLOSED.
#[no_mangle]
pub extern "C" fn keel_wal_ack(wal: *const keel_wal_t, seq: u64, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, wal, {
        try_handle!(wal).ack(seq)?;
        Ok(())
    })
}

/// Holds every record >= `seq` back from truncation (a shard transfer or a
/// lagging replica still needs them), whatever keel_wal_ack() says.
/// KEEL_WAL_KEEP_NONE releases the hold. It may move down again, but not
/// below the first retained record.
/// Errors: TRUNCATED (seq below first_seq), NO_SPACE or RESOURCE (as
/// keel_wal_ack(): the hold is set, the truncation it allows waits for a
/// later call), IO, POISONED, CLOSED.
#[no_mangle]
pub extern "C" fn keel_wal_set_keep_from(wal: *const keel_wal_t, seq: u64, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, wal, {
        try_handle!(wal).set_keep_from(seq)?;
        Ok(())
    })
}

/// Opens a reader positioned at `from_seq` (0 means the first retained
/// record). `upto` is KEEL_WAL_READ_DURABLE (stop at the durable watermark)
/// or KEEL_WAL_READ_APPENDED (stop at the last appended record). The reader
/// follows the log: records appended after it reached the end are returned
/// by later calls to _next. Release it with keel_wal_reader_close(); it may
/// outlive the WAL handle (calls then return CLOSED).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (upto out of range, from_seq >
/// last_seq + 1), TRUNCATED (from_seq below first_seq), IO, RESOURCE (out
/// of descriptors or memory opening a segment; retry), POISONED (the WAL
/// is poisoned), CLOSED.
#[no_mangle]
pub extern "C" fn keel_wal_reader_open(
    wal: *const keel_wal_t,
    from_seq: u64,
    upto: u32,
    out: *mut *mut keel_wal_reader_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, wal, {
        let w = try_handle!(wal);
        let out = out_ptr(out, "out")?;
        let upto = match upto {
            KEEL_WAL_READ_DURABLE => ReadUpto::Durable,
            KEEL_WAL_READ_APPENDED => ReadUpto::Appended,
            other => return Err(Error::invalid(format!("upto {other} is not a KEEL_WAL_READ_* value"))),
        };
        *out = into_handle::<keel_wal_reader_t>(w.reader(from_seq, upto)?);
        Ok(())
    })
}

/// Copies the next record into the caller buffer (`buf`, `cap`) and writes
/// its sequence number to `*out_seq` and its length to `*out_len`.
/// Returns NOT_FOUND when no further record is available yet (call again
/// later to follow the log). When the record does not fit, returns
/// BUFFER_TOO_SMALL with the needed size in `*out_len` and does not advance:
/// the next call returns the same record. `buf` may be NULL when cap is 0.
/// Errors: NULL_ARGUMENT, BUFFER_TOO_SMALL, NOT_FOUND, TRUNCATED, CORRUPTION,
/// IO, RESOURCE (out of descriptors or memory opening the next segment: the
/// reader does not advance; retry), CLOSED (the WAL was closed).
#[no_mangle]
pub extern "C" fn keel_wal_reader_next(
    reader: *mut keel_wal_reader_t,
    out_seq: *mut u64,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, reader, {
        let r = try_handle!(mut reader);
        let out_seq = out_ptr(out_seq, "out_seq")?;
        let out_len = out_ptr(out_len, "out_len")?;
        let (seq, data) = r.peek()?.ok_or_else(no_more)?;
        copy_out(data, buf, cap, out_len)?;
        *out_seq = seq;
        r.advance();
        Ok(())
    })
}

/// Like keel_wal_reader_next() but returns the record in a new keel_buf_t
/// that the caller frees with keel_buf_free(). `*out` must hold no buffer:
/// pass it zeroed ({NULL, 0}) or released with keel_buf_free() (which
/// zeroes it), so that reusing it cannot leak.
/// Errors: as keel_wal_reader_next() minus BUFFER_TOO_SMALL, plus
/// INVALID_ARGUMENT (out->ptr is not NULL; the reader does not advance).
#[no_mangle]
pub extern "C" fn keel_wal_reader_next_buf(
    reader: *mut keel_wal_reader_t,
    out_seq: *mut u64,
    out: *mut keel_buf_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, reader, {
        let r = try_handle!(mut reader);
        let out_seq = out_ptr(out_seq, "out_seq")?;
        let out = buf_out(out, "out")?;
        let (seq, data) = r.peek()?.ok_or_else(no_more)?;
        *out = keel_buf_t::from_vec(data.to_vec());
        *out_seq = seq;
        r.advance();
        Ok(())
    })
}

fn no_more() -> Error {
    Error::new(KEEL_STATUS_NOT_FOUND, "no further record yet")
}

/// Closes a reader and releases its segment pins. NULL is a no-op.
#[no_mangle]
pub extern "C" fn keel_wal_reader_close(reader: *mut keel_wal_reader_t) {
    let _ = ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        // SAFETY: by the C contract `reader` is NULL or a reader keel made,
        // given up here and used by no other call; take_handle checks the
        // magic before taking it back.
        drop(unsafe { take_handle(reader)? });
        Ok(())
    });
}

/// Syncs everything appended, stops the WAL's background thread and frees
/// the handle. The handle is freed even when the final sync fails (the
/// error is returned). NULL is a no-op returning OK. Must not race with
/// other calls on the same handle. Readers stay valid but return CLOSED.
/// Errors: IO (final sync failed), NO_SPACE or RESOURCE (every record was
/// synced, but the clean-close mark or the extent record could not be
/// written: the next open recovers the log as after a crash, losing
/// nothing), POISONED (the WAL was poisoned earlier: unsynced records may
/// be lost), INVALID_ARGUMENT (not a live handle).
#[no_mangle]
pub extern "C" fn keel_wal_close(wal: *mut keel_wal_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        // SAFETY: by the C contract `wal` is NULL or a WAL keel made, and this
        // close is its last call, racing with none; take_handle checks the
        // magic before taking it back.
        match unsafe { take_handle(wal)? } {
            Some(w) => w.close(),
            None => Ok(()),
        }
    })
}
