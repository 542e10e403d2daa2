//! C API of shard transfer (`keel_transfer_*`, `keel_shard_digest`;
//! docs/TRANSFER.md, "A transfer's life" and "The C API").

use crate::error::Error;
use crate::ffi::boundary::{close_in_place, closing_ref, into_handle, out_ptr, CallbackScope, Opaque};
use crate::ffi::error::{error_out, keel_error_t};
use crate::ffi::node::keel_node_t;
use crate::ffi::shard::keel_shard_t;
use crate::ffi::versioned::{init_options, read_options, write_stats};
use crate::status::*;
use crate::transfer::{shard_digest, Finish, Method, Progress, ProgressFn, Retry, Stage, Transfer, TransferOptions};
use std::os::raw::c_void;
use std::sync::Arc;
use std::time::Duration;

/// A shard transfer running on its own keel thread ("keel-transfer").
/// Internally synchronised: every call except keel_transfer_free() may
/// run on any thread concurrently.
pub struct keel_transfer_t {
    _private: [u8; 0],
}

impl Opaque for keel_transfer_t {
    type Inner = TransferHandle;
    const MAGIC: u64 = 0x6b65_656c_5846_4552; // "keelXFER"
    const NAME: &'static str = "keel_transfer_t";
}

/// A transfer and the scope of its progress callback.
pub struct TransferHandle {
    transfer: Transfer,
    /// Marks the transfer's thread while it runs the progress callback:
    /// keel_transfer_wait() and _free() wait for that thread.
    progress: CallbackScope,
}

impl std::ops::Deref for TransferHandle {
    type Target = Transfer;
    fn deref(&self) -> &Transfer {
        &self.transfer
    }
}

impl TransferHandle {
    /// BUSY when called from this transfer's own progress callback, which
    /// `what` would wait for.
    fn refuse_own_callback(&self, what: &str) -> crate::Result<()> {
        if self.progress.is_current() {
            return Err(Error::new(KEEL_STATUS_BUSY, format!("{what} cannot be called from its transfer's progress callback, which it would wait for")));
        }
        Ok(())
    }
}

/// keel_transfer_options_t.method: a consistent snapshot, then the WAL
/// records after it.
pub const KEEL_TRANSFER_SNAPSHOT: u32 = 0;
/// keel_transfer_options_t.method: only the WAL records the receiver
/// lacks; falls back to a snapshot when they are gone or the histories
/// differ.
pub const KEEL_TRANSFER_WAL_DELTA: u32 = 1;

/// keel_transfer_options_t.auto_finish: none, the host calls
/// keel_transfer_finish() (not a mode of keel_transfer_finish()).
pub const KEEL_TRANSFER_FINISH_NONE: u32 = 0;
/// Finish mode: the receiver gets a copy as of the finish; the source's
/// shard stays writable and is no longer sent.
pub const KEEL_TRANSFER_FINISH_COPY: u32 = 1;
/// Finish mode: the final drain runs under the source shard's write hold,
/// the receiver owns the shard, and the source's shard refuses every
/// later write with KEEL_STATUS_MOVED.
pub const KEEL_TRANSFER_FINISH_HAND_OVER: u32 = 2;
/// Finish mode: after the final drain every write to the source's shard
/// is also applied on the receiver before it returns (the receiver keeps
/// the shard incoming), until keel_transfer_finish(HAND_OVER) or
/// keel_transfer_cancel(). A forward that fails fails the transfer and
/// stops forwarding; the source's write itself still succeeds.
pub const KEEL_TRANSFER_FINISH_FORWARD: u32 = 3;

/// Stages (keel_transfer_status(), keel_transfer_progress_t.stage), in
/// the order a transfer goes through them. FORWARDING and the last three
/// are settled: keel_transfer_wait() returns. CATCHING_UP and
/// WAITING_FINISH may alternate: WAITING_FINISH means caught up (the
/// last catch-up round found at most one batch of new writes), and a
/// steady writer faster than the link keeps the transfer in CATCHING_UP;
/// keel_transfer_finish() is accepted in either. A hand-over asked for
/// while FORWARDING goes back to DRAINING for its final drain.
pub const KEEL_TRANSFER_CONNECTING: u32 = 0;
pub const KEEL_TRANSFER_BACKFILL: u32 = 1;
pub const KEEL_TRANSFER_CATCHING_UP: u32 = 2;
pub const KEEL_TRANSFER_WAITING_FINISH: u32 = 3;
pub const KEEL_TRANSFER_DRAINING: u32 = 4;
pub const KEEL_TRANSFER_FORWARDING: u32 = 5;
pub const KEEL_TRANSFER_DONE: u32 = 6;
pub const KEEL_TRANSFER_FAILED: u32 = 7;
pub const KEEL_TRANSFER_CANCELLED: u32 = 8;

/// keel_transfer_options_t.max_retries: a step the transport lost is
/// not sent again; the transfer fails at once.
pub const KEEL_TRANSFER_NO_RETRIES: u32 = u32::MAX;

/// keel_transfer_options_t.sequential: read, send and wait for the ACK
/// one batch at a time instead of reading the next batch during a send.
pub const KEEL_TRANSFER_SEQUENTIAL: u32 = 1;

/// keel_transfer_wait(): no time limit.
pub const KEEL_TRANSFER_WAIT_FOREVER: u64 = u64::MAX;

/// A transfer's progress: its stage and counters. Versioned by
/// `struct_size` like the stats structs (docs/FFI.md): set it to
/// sizeof(keel_transfer_progress_t) before keel_transfer_progress(). The
/// progress callback gets one filled by keel, whose struct_size says how
/// many bytes are valid: read a field only when struct_size covers it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct keel_transfer_progress_t {
    pub struct_size: u32,
    /// KEEL_TRANSFER_CONNECTING .. KEEL_TRANSFER_CANCELLED.
    pub stage: u32,
    /// 1 when the shard goes (or went) as a snapshot.
    pub snapshot: u32,
    /// 1 once the shard was handed over.
    pub handed_over: u32,
    /// WAL records sent and acknowledged.
    pub ops_sent: u64,
    /// ops_sent plus the records still to send: it grows while writes
    /// continue. Snapshot entries have no total known ahead.
    pub ops_total: u64,
    /// Snapshot entries sent and acknowledged.
    pub entries_sent: u64,
    /// Bytes of every step sent (frame payloads).
    pub bytes_sent: u64,
    /// Batches (ENTRIES and OPS steps) sent and acknowledged.
    pub batches: u64,
    /// The receiver's version when the transfer started, as a WAL delta
    /// asks for it (also one that falls back to a snapshot); 0 when it had
    /// no shard to build on, and always 0 for KEEL_TRANSFER_SNAPSHOT,
    /// which replaces the receiver's shard without opening it.
    pub receiver_had: u64,
    /// The last version the receiver has acknowledged.
    pub last_version: u64,
    /// Time spent reading batches, and sending them until acknowledged.
    pub read_time_us: u64,
    pub send_time_us: u64,
    /// How long the source's writes were held for the final drain.
    pub final_hold_us: u64,
    /// Most batches held in memory at once on the source (at most 2).
    pub max_batches_in_memory: u64,
}

/// Progress callback: called on the transfer's own thread
/// ("keel-transfer") after every acknowledged batch and at every change of
/// stage, the last time when the transfer is over. `progress` is borrowed
/// for the call. It must be quick (the transfer waits for it).
/// keel_transfer_status(), _progress(), _finish() and _cancel() are fine
/// on its own transfer; keel_transfer_wait() and keel_transfer_free()
/// answer BUSY there (they wait for the thread it runs on).
pub type keel_transfer_progress_fn = Option<unsafe extern "C" fn(user: *mut c_void, progress: *const keel_transfer_progress_t)>;

/// Options of keel_transfer_start(). Versioned by `struct_size`: fill it
/// with keel_transfer_options_init_sized(&o, sizeof o) first.
#[repr(C)]
pub struct keel_transfer_options_t {
    pub struct_size: u32,
    /// KEEL_TRANSFER_SNAPSHOT (default) or KEEL_TRANSFER_WAL_DELTA.
    pub method: u32,
    /// KEEL_TRANSFER_FINISH_*: finish with this mode as soon as the
    /// receiver has caught up; KEEL_TRANSFER_FINISH_NONE (default): keep
    /// streaming new writes until keel_transfer_finish().
    pub auto_finish: u32,
    /// Records or entries per batch, at least 1; default 1024.
    pub max_batch_records: u32,
    /// Bytes per batch, at least 4096 (and never above the node's frame
    /// limit); default 1 MiB.
    pub max_batch_bytes: u64,
    /// How long the source waits for the receiver's answer to one step
    /// before the transfer fails with TIMEOUT, 1 to 86400000 (a day);
    /// default 30000.
    pub ack_timeout_ms: u32,
    pub _reserved: u32,
    /// Progress callback (keel_transfer_progress_fn), NULL for none.
    pub on_progress: keel_transfer_progress_fn,
    /// Passed to on_progress; keel never dereferences it. It must stay
    /// valid until keel_transfer_free() returned.
    pub user_data: *mut c_void,
    /// Retries of one step whose frame or ACK the transport lost (no
    /// connection, a dropped one, no ACK within ack_timeout_ms) before the
    /// transfer fails: 1 to 1000, KEEL_TRANSFER_NO_RETRIES for none, 0
    /// (default) for 6 (version 2).
    pub max_retries: u32,
    /// The wait before a step's first retry in milliseconds, doubled at
    /// each retry up to max_backoff_ms; 0 (default): 100 (version 2).
    pub first_backoff_ms: u32,
    /// The longest wait between two retries in milliseconds, at least
    /// first_backoff_ms and at most 86400000 (a day); 0 (default): 5000
    /// (version 2).
    pub max_backoff_ms: u32,
    pub _reserved2: u32,
    /// 0 (default): the source reads the next batch while the current one
    /// is sent; KEEL_TRANSFER_SEQUENTIAL: it reads a batch only after the
    /// one before was acknowledged, the baseline a benchmark compares the
    /// pipeline with (version 3).
    pub sequential: u32,
    pub _reserved3: u32,
}

/// sizeof(keel_transfer_options_t) of version 1.
pub const KEEL_TRANSFER_OPTIONS_SIZE_V1: u32 = 48;
/// sizeof(keel_transfer_options_t) of version 2 (adds the retry policy).
pub const KEEL_TRANSFER_OPTIONS_SIZE_V2: u32 = 64;
/// sizeof(keel_transfer_options_t) of version 3 (adds `sequential`).
pub const KEEL_TRANSFER_OPTIONS_SIZE_V3: u32 = 72;
/// sizeof(keel_transfer_progress_t) of version 1.
pub const KEEL_TRANSFER_PROGRESS_SIZE_V1: u32 = 104;

const _: () = assert!(std::mem::offset_of!(keel_transfer_options_t, max_retries) == KEEL_TRANSFER_OPTIONS_SIZE_V1 as usize);
const _: () = assert!(std::mem::offset_of!(keel_transfer_options_t, sequential) == KEEL_TRANSFER_OPTIONS_SIZE_V2 as usize);
versioned!(keel_transfer_options_t, [KEEL_TRANSFER_OPTIONS_SIZE_V1, KEEL_TRANSFER_OPTIONS_SIZE_V2, KEEL_TRANSFER_OPTIONS_SIZE_V3]);
versioned!(keel_transfer_progress_t, [KEEL_TRANSFER_PROGRESS_SIZE_V1]);

fn default_options() -> keel_transfer_options_t {
    let d = TransferOptions::default();
    keel_transfer_options_t {
        struct_size: KEEL_TRANSFER_OPTIONS_SIZE_V3,
        method: KEEL_TRANSFER_SNAPSHOT,
        auto_finish: KEEL_TRANSFER_FINISH_NONE,
        max_batch_records: d.max_batch_records as u32,
        max_batch_bytes: d.max_batch_bytes as u64,
        ack_timeout_ms: d.ack_timeout.as_millis() as u32,
        _reserved: 0,
        on_progress: None,
        user_data: std::ptr::null_mut(),
        // Zero: the defaults of `Retry`, as for every field added later.
        max_retries: 0,
        first_backoff_ms: 0,
        max_backoff_ms: 0,
        _reserved2: 0,
        sequential: 0,
        _reserved3: 0,
    }
}

/// The retry policy of version 2's fields, 0 standing for each default.
fn retry_from_c(o: &keel_transfer_options_t) -> Retry {
    let d = Retry::default();
    let ms = |v: u32, default: Duration| if v == 0 { default } else { Duration::from_millis(v.into()) };
    Retry {
        max_retries: match o.max_retries {
            0 => d.max_retries,
            KEEL_TRANSFER_NO_RETRIES => 0,
            n => n,
        },
        first_backoff: ms(o.first_backoff_ms, d.first_backoff),
        max_backoff: ms(o.max_backoff_ms, d.max_backoff),
    }
}

/// Fills the `size` bytes at `opts` (pass sizeof *opts) with the defaults
/// and sets struct_size = size.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (size below
/// KEEL_TRANSFER_OPTIONS_SIZE_V1 or between two published sizes).
#[no_mangle]
pub extern "C" fn keel_transfer_options_init_sized(opts: *mut keel_transfer_options_t, size: usize) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), { init_options(opts, size, default_options()) })
}

fn finish_mode(mode: u32) -> crate::Result<Finish> {
    match mode {
        KEEL_TRANSFER_FINISH_COPY => Ok(Finish::Copy),
        KEEL_TRANSFER_FINISH_HAND_OVER => Ok(Finish::HandOver),
        KEEL_TRANSFER_FINISH_FORWARD => Ok(Finish::Forward),
        other => Err(Error::invalid(format!("finish mode {other} is not KEEL_TRANSFER_FINISH_COPY, _HAND_OVER or _FORWARD"))),
    }
}

fn stage_code(s: Stage) -> u32 {
    match s {
        Stage::Connecting => KEEL_TRANSFER_CONNECTING,
        Stage::Backfill => KEEL_TRANSFER_BACKFILL,
        Stage::CatchingUp => KEEL_TRANSFER_CATCHING_UP,
        Stage::WaitingFinish => KEEL_TRANSFER_WAITING_FINISH,
        Stage::Draining => KEEL_TRANSFER_DRAINING,
        Stage::Forwarding => KEEL_TRANSFER_FORWARDING,
        Stage::Done => KEEL_TRANSFER_DONE,
        Stage::Failed => KEEL_TRANSFER_FAILED,
        Stage::Cancelled => KEEL_TRANSFER_CANCELLED,
    }
}

fn progress_to_c(p: &Progress) -> keel_transfer_progress_t {
    let r = &p.report;
    let us = |d: Duration| d.as_micros().min(u64::MAX as u128) as u64;
    keel_transfer_progress_t {
        struct_size: KEEL_TRANSFER_PROGRESS_SIZE_V1,
        stage: stage_code(p.stage),
        snapshot: r.snapshot as u32,
        handed_over: r.handed_over as u32,
        ops_sent: r.ops,
        ops_total: p.ops_total,
        entries_sent: r.entries,
        bytes_sent: r.bytes,
        batches: r.batches,
        receiver_had: r.receiver_had,
        last_version: r.last_version,
        read_time_us: us(r.read_time),
        send_time_us: us(r.send_time),
        final_hold_us: us(r.final_hold),
        max_batches_in_memory: r.max_batches_in_memory as u64,
    }
}

/// The host's callback and its user data, called on the transfer's thread.
struct CProgress {
    f: unsafe extern "C" fn(*mut c_void, *const keel_transfer_progress_t),
    user: usize,
}

fn options_from_c(p: *const keel_transfer_options_t, scope: &CallbackScope) -> crate::Result<TransferOptions> {
    let o = read_options(p, default_options(), "keel_transfer_options_init_sized")?;
    let method = match o.method {
        KEEL_TRANSFER_SNAPSHOT => Method::Snapshot,
        KEEL_TRANSFER_WAL_DELTA => Method::WalDelta,
        other => return Err(Error::invalid(format!("method {other} is not KEEL_TRANSFER_SNAPSHOT or KEEL_TRANSFER_WAL_DELTA"))),
    };
    let auto_finish = match o.auto_finish {
        KEEL_TRANSFER_FINISH_NONE => None,
        mode => Some(finish_mode(mode)?),
    };
    if o._reserved != 0 || o._reserved2 != 0 || o._reserved3 != 0 {
        return Err(Error::invalid("keel_transfer_options_t._reserved, _reserved2 and _reserved3 must be 0"));
    }
    let pipeline = match o.sequential {
        0 => true,
        KEEL_TRANSFER_SEQUENTIAL => false,
        other => return Err(Error::invalid(format!("sequential {other} is not 0 or KEEL_TRANSFER_SEQUENTIAL"))),
    };
    let progress = o.on_progress.map(|f| {
        let cb = CProgress { f, user: o.user_data as usize };
        let scope = scope.clone();
        ProgressFn(Arc::new(move |p: &Progress| {
            let c = progress_to_c(p);
            // SAFETY: the host gave this function and promised its user
            // data stays valid until keel_transfer_free() returned, which
            // joins the thread this runs on; `c` outlives the call.
            scope.run(|| unsafe { (cb.f)(cb.user as *mut c_void, &c) });
        }))
    });
    let opts = TransferOptions {
        method,
        max_batch_bytes: usize::try_from(o.max_batch_bytes).unwrap_or(usize::MAX),
        max_batch_records: o.max_batch_records as usize,
        ack_timeout: Duration::from_millis(o.ack_timeout_ms as u64),
        auto_finish,
        progress,
        retry: retry_from_c(&o),
        pipeline,
        ..TransferOptions::default()
    };
    opts.validate()?;
    Ok(opts)
}

/// Announces on this node that `from_peer` may send shard `shard_id`
/// here; a transfer of anything not announced is refused (REFUSED on the
/// source). The announcement is used up when a transfer of it finishes
/// (copy or hand-over).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live node, from_peer 0).
#[no_mangle]
pub extern "C" fn keel_transfer_expect(node: *const keel_node_t, shard_id: u32, from_peer: u64) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), node, {
        let n = try_handle!(node);
        if from_peer == 0 {
            return Err(Error::invalid("from_peer is 0 (node ids are non-zero)"));
        }
        n.transfers.expect(shard_id, from_peer);
        Ok(())
    })
}

/// Starts sending `shard` (the host's open shard `shard_id` of this
/// node's engine) from `node` to peer `peer` (connected with
/// keel_node_connect()) and returns at once:
/// the transfer runs on its own thread. `opts` may be NULL (the defaults:
/// a snapshot, finished by keel_transfer_finish()). On success `*out`
/// receives a handle the caller releases with keel_transfer_free(). The
/// shard stays writable throughout, except during the final drain (and
/// after a hand-over). The node and the shard must stay open until
/// keel_transfer_free() returned.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (an option or enum out of
/// range, not a live node or shard, `shard` not this engine's open shard
/// `shard_id`, `peer` 0 or this node's own id), CLOSED (the shard is
/// closed), MOVED (the shard was handed over already), BUSY (the node
/// sends max_concurrent_transfers already), RESOURCE (the thread cannot
/// start).
/// Failures of the transfer itself come from keel_transfer_status().
#[no_mangle]
pub extern "C" fn keel_transfer_start(
    node: *const keel_node_t,
    shard: *const keel_shard_t,
    shard_id: u32,
    peer: u64,
    opts: *const keel_transfer_options_t,
    out: *mut *mut keel_transfer_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, node, {
        let n = try_handle!(node);
        let s = try_handle!(shard);
        let out = out_ptr(out, "out")?;
        let progress = CallbackScope::default();
        let opts = options_from_c(opts, &progress)?;
        let transfer = n.transfers.start(s, shard_id, peer, &opts)?;
        *out = into_handle::<keel_transfer_t>(TransferHandle { transfer, progress });
        Ok(())
    })
}

/// Asks the transfer to finish with `mode` (KEEL_TRANSFER_FINISH_COPY,
/// _HAND_OVER or _FORWARD) once it has caught up; returns at once
/// (keel_transfer_wait() waits for it).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (mode out of range, not a live
/// transfer, the transfer is over, or it forwards and `mode` is not a
/// hand-over), BUSY (a finish was asked for already, auto_finish too).
#[no_mangle]
pub extern "C" fn keel_transfer_finish(t: *const keel_transfer_t, mode: u32, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, t, {
        let t = try_handle!(t);
        t.finish(finish_mode(mode)?)
    })
}

/// The host confirms a hand-over (for example once its placement change
/// is committed): the source's shard, which refuses writes with
/// KEEL_STATUS_MOVED since the hand-over, is closed (every keel_shard_t
/// on it then answers KEEL_STATUS_CLOSED; each handle is still
/// released with keel_shard_close(), which then only frees it) and dropped from the node's engine with its files.
/// Call it only once the receiving side owns the shard: afterwards its
/// data exists only there. Returns once the files are gone.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live transfer, or not
/// done with a hand-over), NOT_FOUND (confirmed already: the shard is
/// gone, and a shard of that id made or received since is left alone),
/// IO, NO_SPACE or RESOURCE (closing or removing the files failed), BUSY
/// (another call of the host is opening or dropping that id in the
/// engine), CLOSED (the engine was closed, which the host must not do
/// while its node runs).
#[no_mangle]
pub extern "C" fn keel_transfer_confirm_hand_over(t: *const keel_transfer_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, t, {
        let t = try_handle!(t);
        t.confirm_hand_over()
    })
}

/// Cancels the transfer: it stops at its next batch boundary or ACK wait
/// (at once while it waits for the host or forwards) and settles on
/// KEEL_TRANSFER_CANCELLED; returns at once. A FINISH already sent is
/// not recalled: the transfer waits for its answer and settles as it says
/// (FAILED when none comes, or when the receiver answers with an error
/// other than PROTOCOL, such as NOT_FOUND from a receiver that finished
/// it and then forgot it: the receiver may own the shard, and the
/// source's shard refuses writes until the host decides). The source's
/// WAL pin is
/// released. The receiver keeps what it applied, still incoming (its host
/// cannot open the shard: BUSY); a later transfer of the shard resumes
/// from there by WAL delta when the source still holds the records, or
/// replaces it by a snapshot. A no-op once the transfer is over.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live transfer).
#[no_mangle]
pub extern "C" fn keel_transfer_cancel(t: *const keel_transfer_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), t, {
        try_handle!(t).cancel();
        Ok(())
    })
}

/// Writes the transfer's stage (KEEL_TRANSFER_*) to `*stage`. When it is
/// KEEL_TRANSFER_FAILED and `err` is not NULL, `*err` receives an error
/// object with the failure's status and message (replacing one already
/// there; free it with keel_error_free()); the call itself returns OK.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live transfer).
#[no_mangle]
pub extern "C" fn keel_transfer_status(t: *const keel_transfer_t, stage: *mut u32, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, t, {
        let t = try_handle!(t);
        let stage = out_ptr(stage, "stage")?;
        let (s, e) = t.status();
        *stage = stage_code(s);
        if let Some(e) = e {
            // SAFETY: `err` is this entry point's `keel_error_t **err`,
            // which the C contract makes NULL or a valid slot holding NULL
            // or an error object keel made; error_out checks NULL and
            // frees the previous object.
            unsafe { error_out(err, e) };
        }
        Ok(())
    })
}

/// Waits up to `timeout_ms` milliseconds (KEEL_TRANSFER_WAIT_FOREVER: no
/// limit) until the transfer is settled: done, failed, cancelled, or
/// forwarding with no hand-over or cancel asked for yet, and its progress callback
/// for that stage has returned. OK then
/// (keel_transfer_status() says how it went).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live transfer), TIMEOUT
/// (not settled in time), BUSY (called from the transfer's own progress
/// callback, which the transfer waits for: it could not settle meanwhile).
#[no_mangle]
pub extern "C" fn keel_transfer_wait(t: *const keel_transfer_t, timeout_ms: u64) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), t, {
        let t = try_handle!(t);
        t.refuse_own_callback("keel_transfer_wait()")?;
        let timeout = (timeout_ms != KEEL_TRANSFER_WAIT_FOREVER).then(|| Duration::from_millis(timeout_ms));
        if t.wait(timeout) {
            Ok(())
        } else {
            Err(Error::new(KEEL_STATUS_TIMEOUT, format!("the transfer is not settled after {timeout_ms} ms")))
        }
    })
}

/// Copies the transfer's progress into `*out` (struct_size set by the
/// caller).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (struct_size too small, not a
/// live transfer).
#[no_mangle]
pub extern "C" fn keel_transfer_progress(t: *const keel_transfer_t, out: *mut keel_transfer_progress_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), t, {
        let t = try_handle!(t);
        write_stats(out, progress_to_c(&t.progress()))
    })
}

/// Frees the transfer: cancels it if it is not over (a forwarding
/// transfer stops forwarding) and waits for its thread, so no progress
/// callback runs after it returns. The callback may run during the free
/// (a cancelled transfer reports CANCELLED) and may still call
/// keel_transfer_status(), _progress(), _finish() and _cancel() on the
/// handle then: it is freed only once that thread has ended. NULL is a
/// no-op. Must be the last call on the handle from the host's threads and
/// must not race with their other calls.
/// Errors: INVALID_ARGUMENT (not a live transfer), BUSY (called from the
/// transfer's own progress callback, whose thread the free would wait
/// for: nothing is done).
#[no_mangle]
pub extern "C" fn keel_transfer_free(t: *mut keel_transfer_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        if t.is_null() {
            return Ok(());
        }
        // SAFETY: by the C contract `t` is a transfer keel made and this is
        // the host's last call on it, racing with none of theirs (or a call
        // from its progress callback, refused here); closing_ref checks the
        // magic, not the poison mark, and the borrow ends with the statement.
        unsafe { closing_ref(t as *const keel_transfer_t)? }.refuse_own_callback("keel_transfer_free()")?;
        // SAFETY: as above; the transfer's thread may call in from its last
        // progress callback until `stop` has joined it.
        unsafe {
            close_in_place(t, |t| {
                t.stop();
                true
            })
        }
    })
}

/// Writes the content digest of `shard` to `out` (32 bytes): SHA-256 over
/// its live keys in ascending byte order with their kind, bytes and
/// version, taken from one snapshot (docs/TRANSFER.md, "Shard digest").
/// Two shards with equal digests hold the same data at the same versions.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live shard), CLOSED,
/// IO, CORRUPTION (a segment file cannot be read).
#[no_mangle]
pub extern "C" fn keel_shard_digest(shard: *const keel_shard_t, out: *mut u8, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let s = try_handle!(shard);
        if out.is_null() {
            return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, "out is NULL"));
        }
        let d = shard_digest(s)?;
        // SAFETY: not NULL (checked above); the C contract makes `out` 32
        // writable bytes that nothing else uses during the call.
        unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), out, d.len()) };
        Ok(())
    })
}
