//! C API of the engine (`keel_engine_*`): a data directory hosting shards.

use crate::engine::Engine;
use crate::error::Error;
use crate::ffi::boundary::{in_path, into_handle, out_ptr, take_handle, Opaque};
use crate::ffi::error::keel_error_t;
use crate::ffi::versioned::{init_options, read_options, write_stats};
use crate::ffi::shard::keel_shard_t;
use crate::ffi::wal::{KEEL_DURABILITY_NONE, KEEL_DURABILITY_PERIODIC, KEEL_DURABILITY_SYNC};
use crate::shard;
use crate::status::*;
use crate::wal::Durability;
use std::os::raw::c_char;
use std::sync::Arc;
use std::time::Duration;

/// An engine: one data directory hosting shards by u32 id. Internally
/// synchronised: every call except keel_engine_close() may run on any
/// thread concurrently. Only one engine (in any process) may have a
/// directory open.
pub struct keel_engine_t {
    _private: [u8; 0],
}

impl Opaque for keel_engine_t {
    /// Shared with the transfer service of the engine's nodes, which
    /// receives shards into it.
    type Inner = Arc<Engine>;
    const MAGIC: u64 = 0x6b65_656c_454e_474e; // "keelENGN"
    const NAME: &'static str = "keel_engine_t";
}

/// sizeof(keel_engine_options_t) of version 1.
pub const KEEL_ENGINE_OPTIONS_SIZE_V1: u32 = 40;
/// sizeof(keel_engine_options_t) of version 2 (adds salvage).
pub const KEEL_ENGINE_OPTIONS_SIZE_V2: u32 = 48;
/// sizeof(keel_engine_options_t) of version 3 (adds flush_threads).
pub const KEEL_ENGINE_OPTIONS_SIZE_V3: u32 = 56;
/// sizeof(keel_engine_options_t) of version 4 (adds max_unflushed_wal_bytes
/// and write_stall_timeout_ms).
pub const KEEL_ENGINE_OPTIONS_SIZE_V4: u32 = 72;
/// sizeof(keel_engine_options_t) of version 5 (adds max_open_files).
pub const KEEL_ENGINE_OPTIONS_SIZE_V5: u32 = 80;
/// sizeof(keel_engine_options_t) of version 6 (adds disable_commit_log).
pub const KEEL_ENGINE_OPTIONS_SIZE_V6: u32 = 88;

/// Options of keel_engine_open(), applied to every shard it opens.
/// Versioned by `struct_size` (docs/FFI.md, "Versioned structs"): fill it
/// with keel_engine_options_init_sized(&o, sizeof o) first.
#[repr(C)]
pub struct keel_engine_options_t {
    /// sizeof(keel_engine_options_t) as the caller compiled it (set by the
    /// init functions); keel reads only the fields it covers.
    pub struct_size: u32,
    /// KEEL_DURABILITY_* of every shard's WAL: when a write returns.
    /// Default KEEL_DURABILITY_SYNC.
    pub durability: u32,
    /// Sync interval of KEEL_DURABILITY_PERIODIC, 1 to 60000 ms; default 100.
    pub sync_interval_ms: u32,
    /// More immutable segments than this are merged in the background,
    /// smallest first; at least 1, default 8.
    pub max_sealed_segments: u32,
    /// Largest size of a WAL segment file; 64 KiB to 4 GiB, default 64 MiB
    /// (segments start at 64 KiB and double per rotation up to it). An
    /// operation must fit one WAL record of at most segment size - 104
    /// bytes, so segments below about 16 MiB lower the value limit below
    /// KEEL_SHARD_MAX_VALUE_SIZE.
    pub wal_segment_size: u64,
    /// Period of the background flush in milliseconds; 0 flushes only on
    /// keel_shard_flush(), when sealing and on close. Default 5000 (each
    /// pass costs a few fsyncs on the device the WAL syncs to).
    pub flush_interval_ms: u64,
    /// The appendable segment is sealed into an immutable one past this
    /// many bytes of keys and values; at least 4096, default 32 MiB.
    pub seal_bytes: u64,
    /// Salvage open, never the default (false): a shard whose segment
    /// files are missing or damaged, or whose WAL no longer reaches its
    /// segments, opens with what is left instead of failing with
    /// CORRUPTION; keel_shard_salvage_report() says what is lost. The
    /// first flush then makes that the shard's state. Also rebuilds a lost
    /// shard list from the shard directories' names, lists again a shard
    /// directory holding files that the list lacks, and opens a damaged
    /// commit log (sync durability), which a normal open refuses with
    /// CORRUPTION: the copies before the damage are restored, and the
    /// salvage report of every shard listed then says which copies were
    /// lost. The same for a commit log whose folder is missing or empty
    /// though the engine had one (`commit-log.made` says so): it is made
    /// anew, and every listed shard's report says its copies were all
    /// lost. 0 or 1 (version 2).
    pub salvage: u32,
    /// Worker threads of the engine's flush pool, which runs the
    /// background flushes, seals and merges of all its shards: the
    /// engine's flush threads do not grow with its shards. 1 to 256, or 0
    /// (the default) for twice the cores, at least 2 and at most 8
    /// (version 3; 64 bits wide because a 32-bit field would sit in the
    /// padding that ends version 2 and leave its size unchanged).
    pub flush_threads: u64,
    /// Most bytes of logged operations a shard holds that its segment
    /// files do not: what reopening the shard replays, so it bounds the
    /// restart. Past half of it the shard's flush is started; a write that
    /// would cross it waits for the flush (write_stall_timeout_ms). 1 MiB
    /// to 1 TiB, or 0 (the default) for 64 MiB (version 4).
    pub max_unflushed_wal_bytes: u64,
    /// How long a write waits for the flush at max_unflushed_wal_bytes
    /// before it fails with TIMEOUT; 1 to 3600000 ms, or 0 (the default)
    /// for 5000 (version 4).
    pub write_stall_timeout_ms: u64,
    /// Files the engine keeps open at most for all its shards together
    /// (version 5): past it, the least recently used idle file is closed
    /// and opened again when next used (docs/STORAGE.md, "Resource
    /// model"). 0 (the default) for half the process's soft RLIMIT_NOFILE
    /// at open; otherwise at least 16.
    pub max_open_files: u64,
    /// In KEEL_DURABILITY_SYNC the engine makes its shards' writes durable
    /// through one commit log, `<dir>/commit-log/`: a write group's copy
    /// shares one fdatasync with the groups of every shard writing at the
    /// same time, and each shard's own WAL is synced only by flushes,
    /// checkpoints and close (docs/STORAGE.md, "The commit log"). 1 turns
    /// it off: each shard syncs its own WAL per group. 0 (the default) or
    /// 1 (version 6).
    pub disable_commit_log: u64,
}

const _: () = assert!(std::mem::offset_of!(keel_engine_options_t, salvage) == KEEL_ENGINE_OPTIONS_SIZE_V1 as usize);
const _: () = assert!(std::mem::offset_of!(keel_engine_options_t, flush_threads) == KEEL_ENGINE_OPTIONS_SIZE_V2 as usize);
const _: () = assert!(std::mem::offset_of!(keel_engine_options_t, max_unflushed_wal_bytes) == KEEL_ENGINE_OPTIONS_SIZE_V3 as usize);
const _: () = assert!(std::mem::offset_of!(keel_engine_options_t, max_open_files) == KEEL_ENGINE_OPTIONS_SIZE_V4 as usize);
const _: () = assert!(std::mem::offset_of!(keel_engine_options_t, disable_commit_log) == KEEL_ENGINE_OPTIONS_SIZE_V5 as usize);
versioned!(
    keel_engine_options_t,
    [
        KEEL_ENGINE_OPTIONS_SIZE_V1,
        KEEL_ENGINE_OPTIONS_SIZE_V2,
        KEEL_ENGINE_OPTIONS_SIZE_V3,
        KEEL_ENGINE_OPTIONS_SIZE_V4,
        KEEL_ENGINE_OPTIONS_SIZE_V5,
        KEEL_ENGINE_OPTIONS_SIZE_V6
    ]
);

fn default_options() -> keel_engine_options_t {
    let d = shard::Options::default();
    keel_engine_options_t {
        struct_size: KEEL_ENGINE_OPTIONS_SIZE_V6,
        durability: KEEL_DURABILITY_SYNC,
        sync_interval_ms: 100,
        max_sealed_segments: d.max_sealed as u32,
        wal_segment_size: d.wal_segment_size,
        flush_interval_ms: d.flush_interval.map_or(0, |i| i.as_millis() as u64),
        seal_bytes: d.seal_bytes as u64,
        salvage: d.salvage as u32,
        // The machine decides (shard::Options's default): zero, as every
        // field added after version 1 defaults to.
        flush_threads: 0,
        max_unflushed_wal_bytes: 0,
        write_stall_timeout_ms: 0,
        max_open_files: d.max_open_files as u64,
        disable_commit_log: !d.commit_log as u64,
    }
}

/// Fills the version-1 fields of `*opts` (KEEL_ENGINE_OPTIONS_SIZE_V1
/// bytes, never more) with the defaults and sets struct_size to
/// KEEL_ENGINE_OPTIONS_SIZE_V1. New code calls
/// keel_engine_options_init_sized().
/// Errors: NULL_ARGUMENT.
#[no_mangle]
pub extern "C" fn keel_engine_options_init(opts: *mut keel_engine_options_t) -> keel_status_t {
    keel_engine_options_init_sized(opts, KEEL_ENGINE_OPTIONS_SIZE_V1 as usize)
}

/// Fills the `size` bytes at `opts` (pass sizeof *opts) with the defaults:
/// the fields this library knows, zero past them, and struct_size = size.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (size below
/// KEEL_ENGINE_OPTIONS_SIZE_V1 or between two published sizes).
#[no_mangle]
pub extern "C" fn keel_engine_options_init_sized(opts: *mut keel_engine_options_t, size: usize) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        init_options(opts, size, default_options())
    })
}

fn options_from_c(p: *const keel_engine_options_t) -> crate::Result<shard::Options> {
    let o = read_options(p, default_options(), "keel_engine_options_init_sized")?;
    let durability = match o.durability {
        KEEL_DURABILITY_SYNC => Durability::Sync,
        KEEL_DURABILITY_PERIODIC if (1..=60_000).contains(&o.sync_interval_ms) => {
            Durability::Periodic(Duration::from_millis(o.sync_interval_ms as u64))
        }
        KEEL_DURABILITY_PERIODIC => {
            return Err(Error::invalid(format!("sync_interval_ms {} is outside 1..=60000", o.sync_interval_ms)))
        }
        KEEL_DURABILITY_NONE => Durability::None,
        other => return Err(Error::invalid(format!("durability {other} is not a KEEL_DURABILITY_* value"))),
    };
    let opts = shard::Options {
        durability,
        wal_segment_size: o.wal_segment_size,
        flush_interval: (o.flush_interval_ms > 0).then(|| Duration::from_millis(o.flush_interval_ms)),
        seal_bytes: usize::try_from(o.seal_bytes).map_err(|_| Error::invalid("seal_bytes is too large"))?,
        max_sealed: o.max_sealed_segments as usize,
        salvage: match o.salvage {
            0 => false,
            1 => true,
            other => return Err(Error::invalid(format!("salvage {other} is not 0 or 1"))),
        },
        flush_threads: match o.flush_threads {
            0 => shard::Options::default().flush_threads,
            n => n as usize,
        },
        max_unflushed_wal_bytes: match o.max_unflushed_wal_bytes {
            0 => shard::DEFAULT_MAX_UNFLUSHED_WAL_BYTES,
            n => n,
        },
        write_stall_timeout: match o.write_stall_timeout_ms {
            0 => shard::DEFAULT_WRITE_STALL_TIMEOUT,
            ms if ms > shard::MAX_WRITE_STALL_TIMEOUT.as_millis() as u64 => {
                return Err(Error::invalid(format!("write_stall_timeout_ms {ms} is outside 1..=3600000")))
            }
            ms => Duration::from_millis(ms),
        },
        max_open_files: usize::try_from(o.max_open_files).map_err(|_| Error::invalid("max_open_files is too large"))?,
        commit_log: match o.disable_commit_log {
            0 => true,
            1 => false,
            other => return Err(Error::invalid(format!("disable_commit_log {other} is not 0 or 1"))),
        },
        ..shard::Options::default()
    };
    opts.validate()?;
    Ok(opts)
}

/// Opens (creating if needed) the data directory `dir`. `opts` may be NULL
/// for the defaults. On success `*out` receives a handle the caller
/// releases with keel_engine_close().
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (bad option or struct_size;
/// `dir` is a keel WAL directory), BUSY (another engine has the directory
/// open), CORRUPTION (the shard list is lost or its last record damaged
/// while shard directories hold files, or the commit log is damaged, or
/// its folder missing or empty though the engine had one: see
/// keel_engine_options_t.salvage), IO, NO_SPACE, RESOURCE (out of
/// descriptors, memory or threads: nothing is left open; retry once freed).
#[no_mangle]
pub extern "C" fn keel_engine_open(
    dir: *const c_char,
    opts: *const keel_engine_options_t,
    out: *mut *mut keel_engine_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        let dir = in_path(dir, "dir")?;
        let out = out_ptr(out, "out")?;
        let options = options_from_c(opts)?;
        *out = into_handle::<keel_engine_t>(Arc::new(Engine::open(dir, options)?));
        Ok(())
    })
}

/// Opens shard `id` (recovering it: segments loaded, WAL replayed) and
/// writes a handle to `*out`, released with keel_shard_close(). A shard is
/// open at most once at a time.
/// Other shards open, drop and list while one recovers.
/// Errors: NULL_ARGUMENT, NOT_FOUND (missing and create_if_missing is
/// false), BUSY (already open, being opened or dropped by another thread,
/// still closing on another thread, being received by a transfer, or left
/// unfinished by one: a later transfer finishes it, or drop it), CLOSED
/// (engine closed), CORRUPTION (a segment file missing, cut or
/// substituted; the WAL starts past what the segments hold; the shard's
/// directory vanished while the engine lists it, or holds files while
/// the engine does not list it: a salvage open lists it again; see
/// docs/STORAGE.md),
/// IO (also: the shard's WAL failed to close since the engine opened, and
/// its acknowledged writes come back only when the engine reopens),
/// NO_SPACE, RESOURCE (out of descriptors or memory opening the shard's
/// files, or a close of this shard left unfinished by RESOURCE was retried
/// first and failed again: the shard is not open; retry once freed).
#[no_mangle]
pub extern "C" fn keel_engine_shard_open(
    engine: *const keel_engine_t,
    id: u32,
    create_if_missing: bool,
    out: *mut *mut keel_shard_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, engine, {
        let e = try_handle!(engine);
        let out = out_ptr(out, "out")?;
        *out = into_handle::<keel_shard_t>(e.open_shard(id, create_if_missing)?);
        Ok(())
    })
}

/// Deletes shard `id` and all its data (atomically: a crash leaves the
/// whole shard or none of it). Other shards open, drop and list while it
/// runs.
/// Errors: NULL_ARGUMENT, NOT_FOUND, BUSY (the shard is open, being opened
/// or dropped by another thread, still closing on another thread, or being
/// received by a transfer; one a transfer left unfinished is dropped),
/// CLOSED (also when the engine closed while the drop ran: the shard is
/// left whole), IO, NO_SPACE (the disk is full: nothing is dropped),
/// RESOURCE (out of descriptors: nothing is dropped; a close of this
/// shard left unfinished by RESOURCE is retried first).
#[no_mangle]
pub extern "C" fn keel_engine_shard_drop(engine: *const keel_engine_t, id: u32, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, engine, {
        try_handle!(engine).drop_shard(id)?;
        Ok(())
    })
}

/// Writes the ids of every shard (open or not), ascending, to `ids` (room
/// for `capacity`) and their number to `*count`. When they do not fit,
/// returns BUFFER_TOO_SMALL with the number needed in `*count` and writes
/// nothing. `ids` may be NULL when capacity is 0 (to ask for the count).
/// Errors: NULL_ARGUMENT, BUFFER_TOO_SMALL, CLOSED, IO.
#[no_mangle]
pub extern "C" fn keel_engine_shard_list(
    engine: *const keel_engine_t,
    ids: *mut u32,
    capacity: usize,
    count: *mut usize,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, engine, {
        let e = try_handle!(engine);
        let count = out_ptr(count, "count")?;
        if ids.is_null() && capacity > 0 {
            return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, "ids is NULL with a capacity above 0"));
        }
        let list = e.list_shards()?;
        if list.len() > capacity {
            *count = list.len();
            return Err(Error::new(
                KEEL_STATUS_BUFFER_TOO_SMALL,
                format!("{} shard ids do not fit {capacity}", list.len()),
            ));
        }
        if !list.is_empty() {
            debug_assert!(ids.is_aligned(), "ids is misaligned");
            // SAFETY: `ids` is not NULL (capacity >= list.len() > 0, checked
            // above) and by the C contract
            // has room for `capacity` >= list.len() ids (checked above); it is
            // the caller's memory, so it cannot overlap the Vec `list`.
            unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), ids, list.len()) };
        }
        *count = list.len();
        Ok(())
    })
}

/// sizeof(keel_engine_stats_t) of version 1.
pub const KEEL_ENGINE_STATS_SIZE_V1: u32 = 48;
/// sizeof(keel_engine_stats_t) of version 2 (adds write_stalls and
/// write_stall_nanos).
pub const KEEL_ENGINE_STATS_SIZE_V2: u32 = 64;
/// sizeof(keel_engine_stats_t) of version 3 (adds the descriptor cache's counters).
pub const KEEL_ENGINE_STATS_SIZE_V3: u32 = 96;
/// sizeof(keel_engine_stats_t) of version 4 (adds the commit log's counters).
pub const KEEL_ENGINE_STATS_SIZE_V4: u32 = 128;

/// What keel_engine_stats() reports: the resources the engine holds now.
/// The caller sets `struct_size` to sizeof(keel_engine_stats_t) before
/// the call; keel writes only the fields both sides know (bytes past an
/// older caller's struct are untouched) and sets struct_size to their
/// size (docs/FFI.md, "Versioned structs").
#[repr(C)]
pub struct keel_engine_stats_t {
    pub struct_size: u32,
    /// Shards open now.
    pub open_shards: u32,
    /// Threads the engine runs: its flush workers (flush_threads) and its
    /// WAL workers (segment preparation, periodic syncs). The same
    /// whatever the number of shards.
    pub threads: u64,
    /// File descriptors of this process open on files below the engine's
    /// directory (each open shard holds a few: docs/STORAGE.md,
    /// "Resource model").
    pub open_files: u64,
    /// Shards waiting for a flush worker.
    pub flush_queue_depth: u64,
    /// WAL jobs queued for the WAL workers (segment preparations, periodic
    /// syncs due now or later).
    pub wal_queue_depth: u64,
    /// Total nanoseconds writers waited on the engine's shared workers: a
    /// WAL segment rotation that found no prepared segment ready and made
    /// one on the writer's thread.
    pub stall_nanos: u64,
    /// Writes of all the engine's shards that waited for a flush because
    /// their shard held max_unflushed_wal_bytes of unflushed WAL (those
    /// that then failed with TIMEOUT included), since the engine opened
    /// (version 2).
    pub write_stalls: u64,
    /// Total nanoseconds those writes waited (version 2).
    pub write_stall_nanos: u64,
    /// The bound of the engine's descriptor cache: max_open_files, or
    /// what 0 resolved to (version 3).
    pub max_open_files: u64,
    /// Shard file operations that found their file open in the cache
    /// (version 3).
    pub file_cache_hits: u64,
    /// Shard file operations that opened their file again: it had been
    /// closed to stay within max_open_files (version 3).
    pub file_cache_misses: u64,
    /// Idle shard files the cache closed to stay within max_open_files
    /// (version 3).
    pub file_cache_evictions: u64,
    /// The commit log's counters since the engine opened, all zero without
    /// one (see keel_engine_options_t.disable_commit_log; version 4):
    /// copies of shards' WAL frames it made durable (one per write group;
    /// a lead after a crowd of writers logs a few frames),
    pub commit_log_commits: u64,
    /// checkpoints it took (each syncs the WALs of the shards written
    /// since the last and lets the copies up to it go),
    pub commit_log_checkpoints: u64,
    /// shard WAL syncs those checkpoints made,
    pub commit_log_checkpoint_syncs: u64,
    /// and WAL frames the engine's open gave back to shards that had lost
    /// them to a power loss.
    pub commit_log_restored_frames: u64,
}
const _: () = assert!(std::mem::offset_of!(keel_engine_stats_t, write_stalls) == KEEL_ENGINE_STATS_SIZE_V1 as usize);
const _: () = assert!(std::mem::offset_of!(keel_engine_stats_t, max_open_files) == KEEL_ENGINE_STATS_SIZE_V2 as usize);
const _: () = assert!(std::mem::offset_of!(keel_engine_stats_t, commit_log_commits) == KEEL_ENGINE_STATS_SIZE_V3 as usize);
versioned!(
    keel_engine_stats_t,
    [KEEL_ENGINE_STATS_SIZE_V1, KEEL_ENGINE_STATS_SIZE_V2, KEEL_ENGINE_STATS_SIZE_V3, KEEL_ENGINE_STATS_SIZE_V4]
);

/// Fills `*out` with the engine's resource counters.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (struct_size too small, or not
/// a live handle), CLOSED.
#[no_mangle]
pub extern "C" fn keel_engine_stats(engine: *const keel_engine_t, out: *mut keel_engine_stats_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), engine, {
        let st = try_handle!(engine).stats()?;
        let value = keel_engine_stats_t {
            struct_size: KEEL_ENGINE_STATS_SIZE_V4,
            open_shards: st.open_shards.min(u32::MAX as u64) as u32,
            threads: st.threads,
            open_files: st.open_files,
            flush_queue_depth: st.flush_queue,
            wal_queue_depth: st.wal_queue,
            stall_nanos: st.stalled.as_nanos().min(u64::MAX as u128) as u64,
            write_stalls: st.write_stalls,
            write_stall_nanos: st.write_stall_time.as_nanos().min(u64::MAX as u128) as u64,
            max_open_files: st.max_open_files,
            file_cache_hits: st.file_cache_hits,
            file_cache_misses: st.file_cache_misses,
            file_cache_evictions: st.file_cache_evictions,
            commit_log_commits: st.commits,
            commit_log_checkpoints: st.checkpoints,
            commit_log_checkpoint_syncs: st.checkpoint_syncs,
            commit_log_restored_frames: st.restored_frames,
        };
        write_stats(out, value)
    })
}

/// Closes every shard still open (each runs a final flush), releases the
/// directory and frees the handle, which is freed even when a shard fails
/// to close (the first error is returned). Shard handles still held stay
/// valid to free: their calls return CLOSED. NULL is a no-op. Must not
/// race with other calls on the same engine handle.
/// Errors: IO, NO_SPACE (a failing or full disk: the next open recovers
/// what was acknowledged from the logs), POISONED (a shard could not
/// flush), RESOURCE (a shard's close ran out of descriptors: its WAL is
/// closed all the same, and the commit log keeps what it needs for the
/// next open), INVALID_ARGUMENT (not a live handle).
#[no_mangle]
pub extern "C" fn keel_engine_close(engine: *mut keel_engine_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        // SAFETY: by the C contract `engine` is NULL or an engine keel made,
        // and this close is its last call, racing with none; take_handle
        // checks the magic before taking it back.
        match unsafe { take_handle(engine)? } {
            Some(e) => e.close(),
            None => Ok(()),
        }
    })
}
