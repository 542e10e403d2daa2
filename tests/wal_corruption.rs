//! The WAL corruption matrix (recovery outcomes in docs/WAL.md, W5): real
//! segment files written through the public API are damaged
//! field by field, truncated at every byte of their last frames, given stale
//! tails, missing or duplicated segments and stray temporary files, and then
//! reopened in every recovery mode. Each case asserts the outcome documented
//! in docs/WAL.md ("Recovery", outcome table):
//!
//! - the open fails with CORRUPTION and the directory is byte-for-byte as it
//!   was (stray `*.wal.tmp` files aside: open moves them aside first and
//!   a refused open removes them, see
//!   `stray_temp_files_are_removed_even_when_the_open_fails`), or
//! - the open succeeds, the log holds exactly a dense prefix of what was
//!   written with byte-identical payloads, D covers it, it accepts a new
//!   append that survives a clean close and an ABSOLUTE reopen, and every
//!   file given up is under `salvaged-<ns>/` with the bytes it had before.
//!
//! Every open runs on its own thread with a timeout (no hang) and inside
//! `catch_unwind` (no panic). Failures are collected and reported together,
//! each named `<base>/<case>/<mode>`.
//!
//! Two logs are used as bases, from the same appends (3 segments of 64 KiB,
//! one BATCH frame, an explicit sync in the middle of segment 2):
//! - `crash`: the files copied while the log is still open in NONE mode (a
//!   process crash: no MARK; frames after the sync carry its D as hint, the
//!   ones before carry 0, so damage before the sync point is provably lost
//!   durable data and damage after it is an unsynced tail);
//! - `clean`: the same files after `close`, which ends with a MARK frame
//!   whose hint vouches for every record, so any damage is provable.
//!
//! Besides flipped bits, zeroed bytes and garbage, the structural fields
//! (frame type, flags, count, sequence, hint; header magic, version, salt,
//! first sequence, reserved bytes) are also damaged with the checksum
//! recomputed ("...Resealed"), so the checks behind the checksum are tested.
//!
//! The scratch directories live on /dev/shm when it exists (thousands of
//! opens; fdatasync is not what is tested here), else in the temp dir.
//!
//! Frame padding is not covered by the checksum. The WAL ignores it: the
//! scan and the reader step over it by the frame's length. Damaged padding
//! therefore loses nothing and is not reported, in any mode; the matrix
//! asserts exactly that (expected outcome: intact log).

use keel::status::KEEL_STATUS_CORRUPTION;
use keel::wal::extent::Extent;
use keel::wal::format::decode_segment_header;
use keel::wal::{Durability, Options, ReadUpto, RecoveryMode, Wal};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SEGMENT_SIZE: u64 = 64 << 10;
const HEADER_LEN: usize = 64;
const FRAME_HEADER: usize = 32;
const KIND_BATCH: u8 = 2;
const KIND_MARK: u8 = 3;
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
const MODES: [RecoveryMode; 4] =
    [RecoveryMode::Absolute, RecoveryMode::TolerateTail, RecoveryMode::PointInTime, RecoveryMode::Salvage];

fn options(recovery: RecoveryMode) -> Options {
    Options { durability: Durability::None, recovery, segment_size: SEGMENT_SIZE, max_record_size: 0, prepare_ahead: false, ..Options::default() }
}

fn seg_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// SplitMix64, for deterministic garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A scratch directory, on tmpfs when there is one (thousands of opens),
/// removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() && std::fs::metadata(shm).map(|m| !m.permissions().readonly()).unwrap_or(false) {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let p = root.join(format!("keel-walcorrupt-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The top-level files of a log directory: name -> bytes.
type Files = BTreeMap<String, Vec<u8>>;

/// Everything under a directory, recursively: relative path -> bytes (None for a folder).
type Tree = BTreeMap<String, Option<Vec<u8>>>;

fn tree(dir: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Tree::new();
    walk(dir, dir, &mut out);
    out
}

fn read_files(dir: &Path) -> Files {
    tree(dir).into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
}

fn write_files(dir: &Path, files: &Files) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// One frame of a base log, as parsed (and checksum-verified) from its files.
#[derive(Debug, Clone)]
struct Frame {
    /// Index of its segment in `Base::segs`.
    seg: usize,
    off: usize,
    len: usize,
    kind: u8,
    count: u32,
    seq: u64,
    hint: u64,
}

impl Frame {
    fn size(&self) -> usize {
        align8(FRAME_HEADER + self.len)
    }
    fn end(&self) -> usize {
        self.off + self.size()
    }
}

#[derive(Debug, Clone)]
struct Seg {
    name: String,
    first: u64,
    /// Sequence number after its last record.
    next: u64,
}

/// A log written through the API and its parsed layout.
struct Base {
    tag: &'static str,
    files: Files,
    segs: Vec<Seg>,
    /// Every frame in log order.
    frames: Vec<Frame>,
    /// records[s - 1] is the payload of record s.
    records: Vec<Vec<u8>>,
    /// The explicit sync: D = sync_point from then on.
    sync_point: u64,
}

impl Base {
    fn last_seq(&self) -> u64 {
        self.records.len() as u64
    }
    fn last_seg(&self) -> usize {
        self.segs.len() - 1
    }
    fn seg_frames(&self, seg: usize) -> Vec<usize> {
        (0..self.frames.len()).filter(|&i| self.frames[i].seg == seg).collect()
    }
    fn frame_with_seq(&self, seq: u64) -> usize {
        self.frames.iter().position(|f| f.seq == seq && f.kind != KIND_MARK).unwrap()
    }
    fn seg_bytes(&self, seg: usize) -> &[u8] {
        &self.files[&self.segs[seg].name]
    }
}

/// Payload of record `i`: distinct per record, length 8k + 3 (so every
/// frame has 5 bytes of padding).
fn payload(i: u64) -> Vec<u8> {
    let len = 8 * (5 + (i * 7) % 40) as usize + 3;
    let mut p = format!("record {i}:").into_bytes();
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while p.len() < len {
        x = x.rotate_left(7) ^ 0x5bd1_e995;
        p.push(x as u8);
    }
    p.truncate(len);
    p
}

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".wal")).count()
}

fn parse(tag: &'static str, files: Files, records: Vec<Vec<u8>>, sync_point: u64) -> Base {
    let mut segs = Vec::new();
    let mut frames = Vec::new();
    for (name, b) in files.iter().filter(|(n, _)| n.ends_with(".wal")) {
        assert_eq!(&b[0..8], b"KEELWAL\0", "{tag}: {name}");
        assert_eq!(crc32fast::hash(&b[0..60]), u32_at(b, 60), "{tag}: {name} header checksum");
        let salt = u32_at(b, 12);
        let first = u64_at(b, 16);
        assert_eq!(seg_name(first), *name);
        let seg = segs.len();
        let mut next = first;
        let mut off = HEADER_LEN;
        while off + FRAME_HEADER <= b.len() && b[off..off + FRAME_HEADER].iter().any(|&x| x != 0) {
            let f = Frame {
                seg,
                off,
                len: u32_at(b, off + 4) as usize,
                kind: b[off + 8],
                count: u32_at(b, off + 12),
                seq: u64_at(b, off + 16),
                hint: u64_at(b, off + 24),
            };
            let mut crc = crc32fast::Hasher::new_with_initial(salt);
            crc.update(&b[off + 4..off + FRAME_HEADER]);
            crc.update(&b[off + FRAME_HEADER..off + FRAME_HEADER + f.len]);
            assert_eq!(crc.finalize(), u32_at(b, off), "{tag}: frame at {name}:{off}");
            assert_eq!(f.seq, next, "{tag}: frame at {name}:{off}");
            assert!(f.hint < f.seq);
            next += f.count as u64;
            off = f.end();
            frames.push(f);
        }
        assert!(b[off..].iter().all(|&x| x == 0), "{tag}: {name} has bytes after its last frame");
        segs.push(Seg { name: name.clone(), first, next });
    }
    assert_eq!(segs.len(), 3, "{tag}: the bases are built to have three segments");
    assert_eq!(segs.last().unwrap().next - 1, records.len() as u64);
    Base { tag, files, segs, frames, records, sync_point }
}

/// Writes the log both bases come from; returns (crash, clean).
fn build() -> (Base, Base) {
    let dir = Scratch::new("base");
    let wal = Wal::open(&dir.0, options(RecoveryMode::Absolute)).unwrap();
    let mut records: Vec<Vec<u8>> = Vec::new();
    fn append(wal: &Wal, records: &mut Vec<Vec<u8>>, p: Vec<u8>) {
        assert_eq!(wal.append(&p).unwrap(), records.len() as u64 + 1);
        records.push(p);
    }
    for i in 1..=100 {
        append(&wal, &mut records, payload(i));
    }
    // One BATCH frame in the middle of segment 1: 12 + 31 bytes of payload.
    let batch: Vec<Vec<u8>> = vec![b"batch-a".to_vec(), b"batch-b, the long one".to_vec(), b"batch-c".to_vec()];
    let refs: Vec<&[u8]> = batch.iter().map(|r| &r[..]).collect();
    assert_eq!(wal.append_batch(&refs).unwrap(), 101);
    records.extend(batch);
    let mut i = 104;
    while segment_count(&dir.0) < 2 {
        append(&wal, &mut records, payload(i));
        i += 1;
    }
    for _ in 0..100 {
        append(&wal, &mut records, payload(i));
        i += 1;
    }
    let sync_point = wal.sync().unwrap();
    assert_eq!(sync_point, records.len() as u64);
    for _ in 0..30 {
        append(&wal, &mut records, payload(i));
        i += 1;
    }
    while segment_count(&dir.0) < 3 {
        append(&wal, &mut records, payload(i));
        i += 1;
    }
    for _ in 0..25 {
        append(&wal, &mut records, payload(i));
        i += 1;
    }
    // Two short last frames keep the byte-by-byte truncation loop short.
    append(&wal, &mut records, b"short: 11 b".to_vec());
    append(&wal, &mut records, b"the last: 19 bytes.".to_vec());
    // A process crash: what the files hold while the log is still open.
    let crash = read_files(&dir.0);
    wal.close().unwrap();
    let clean = read_files(&dir.0);
    let crash = parse("crash", crash, records.clone(), sync_point);
    let clean = parse("clean", clean, records, sync_point);
    assert_ne!(crash.frames.last().unwrap().kind, KIND_MARK);
    assert_eq!(clean.frames.last().unwrap().kind, KIND_MARK);
    assert_eq!(clean.frames.last().unwrap().hint, clean.last_seq(), "MARK vouches for everything");
    assert!(crash.frames.iter().all(|f| f.hint == if f.seq > sync_point { sync_point } else { 0 }));
    assert_eq!(crash.segs.iter().map(|s| s.first).collect::<Vec<_>>(), clean.segs.iter().map(|s| s.first).collect::<Vec<_>>());
    let s = &clean.segs;
    assert!(s[1].first < sync_point && sync_point + 10 < s[1].next, "sync point in the middle of segment 2");
    (crash, clean)
}

fn bases() -> &'static (Base, Base) {
    static B: OnceLock<(Base, Base)> = OnceLock::new();
    B.get_or_init(build)
}

/// What the documented recovery does with a damaged directory.
#[derive(Debug, Clone)]
enum Expect {
    /// No damage: every mode opens with records [from, to], sets nothing aside.
    Clean { from: u64, to: u64 },
    /// Damage: `seq` is the first record that cannot be read.
    Damage {
        seq: u64,
        /// A valid frame after the damage has a durable hint >= seq.
        proven: bool,
        /// A segment header is damaged (never a torn tail).
        header: bool,
        /// Files the lossy modes must keep under salvaged-<ns>/.
        aside: Vec<String>,
    },
}

/// A documented successful open: records [from, to] are kept, `aside` is
/// set aside, and the next append gets `next` (above every sequence number
/// the extent record says was handed out: never reissued).
#[derive(Debug, Clone)]
struct Outcome {
    from: u64,
    to: u64,
    aside: Vec<String>,
    next: u64,
}

/// The extent record (wal.meta) the base log was written with.
fn base_extent(base: &Base) -> Extent {
    Extent::decode(&base.files["wal.meta"]).expect("the base log has an extent record")
}

/// Whether the damaged files disagree with the extent record when recovery
/// would keep the records before `kept_end`: a listed segment missing, with
/// a damaged header or another identity, or durable records not kept.
fn extent_disagrees(base: &Base, files: &Files, kept_end: u64) -> bool {
    let e = base_extent(base);
    kept_end <= e.durable
        || e.segments.iter().any(|&(first, salt)| match files.get(&seg_name(first)) {
            None => true,
            Some(b) => decode_segment_header(b).map_or(true, |h| h.salt != salt || h.first_seq != first),
        })
}

/// docs/WAL.md, "A segment cut short": when the segment holding the
/// damage at `seq` (the last one for `seq` past every record) is a file
/// shorter than its header says it was allocated, and no next segment's
/// link proves that its records end at `seq`, its lost bytes may have
/// held records: its name and the lowest sequence number above all they
/// could have held (one per 4 bytes after the end of its whole frames).
fn lost_tail(base: &Base, files: &Files, seq: u64) -> Option<(String, u64)> {
    let si = base.frames.iter().find(|f| f.seq == seq && f.kind != KIND_MARK).map_or(base.last_seg(), |f| f.seg);
    let name = &base.segs[si].name;
    let bytes = files.get(name)?;
    let h = decode_segment_header(bytes).ok()?;
    if h.allocated <= bytes.len() as u64 {
        return None;
    }
    let proven_by_next = base.segs.get(si + 1).and_then(|n| files.get(&n.name)).and_then(|b| decode_segment_header(b).ok()).is_some_and(|n| {
        n.prev.is_some_and(|l| (l.first_seq, l.salt, l.end) == (base.segs[si].first, h.salt, seq))
    });
    if proven_by_next {
        return None;
    }
    let whole = base.frames.iter().filter(|f| f.seg == si && f.end() <= bytes.len()).map(|f| f.end()).max().unwrap_or(64);
    Some((name.clone(), seq + (h.allocated - whole as u64) / 4))
}

/// docs/WAL.md, "Sequence numbers are never reissued": every valid frame
/// recovery reads was handed out, so the next number is above its records
/// even when the frame is set aside. A frame is read when its segment's
/// header is as written under the segment's own name, its own bytes are as
/// written, and the scan reaches it: every frame before it in the segment
/// is intact, or the first that is not still has a header (damage, after
/// which the scan probes for valid frames) rather than zeros (the end).
fn seen_end(base: &Base, files: &Files) -> u64 {
    let intact = |f: &Frame, b: &[u8]| b.get(f.off..f.end()) == base.seg_bytes(f.seg).get(f.off..f.end());
    base.frames
        .iter()
        .filter(|f| {
            let seg = &base.segs[f.seg];
            let Some(b) = files.get(&seg.name) else { return false };
            let salt = |b: &[u8]| decode_segment_header(b).ok().filter(|h| h.first_seq == seg.first).map(|h| h.salt);
            if salt(b).is_none() || salt(b) != salt(base.seg_bytes(f.seg)) || !intact(f, b) {
                return false;
            }
            match base.frames.iter().find(|g| g.seg == f.seg && g.off < f.off && !intact(g, b)) {
                None => true,
                Some(g) => b.get(g.off..g.off + FRAME_HEADER).is_some_and(|h| h.iter().any(|&x| x != 0)),
            }
        })
        .map(|f| f.seq + f.count as u64)
        .max()
        .unwrap_or(0)
}

/// The outcome table of docs/WAL.md: None means "open fails: CORRUPTION".
fn documented(base: &Base, files: &Files, e: &Expect, mode: RecoveryMode) -> Option<Outcome> {
    let (opens, from, to, aside, lost) = match e {
        Expect::Clean { from, to } => (true, *from, *to, Vec::new(), None),
        Expect::Damage { seq, proven, header, aside } => {
            // A cut tail is never a crash's unsynced tail, and the cut
            // segment is copied aside with what is left of it.
            let lost = lost_tail(base, files, *seq);
            let opens = match mode {
                RecoveryMode::Absolute => false,
                RecoveryMode::TolerateTail => !header && !proven && lost.is_none(),
                RecoveryMode::PointInTime => !proven,
                RecoveryMode::Salvage => true,
            };
            let from = base.segs.iter().find(|s| files.contains_key(&s.name)).map_or(1, |s| s.first);
            let mut aside = aside.clone();
            if let Some((name, _)) = lost.as_ref().filter(|(name, _)| !aside.contains(name)) {
                aside.push(name.clone());
                aside.sort();
            }
            (opens, from, seq - 1, aside, lost.map(|(_, floor)| floor))
        }
    };
    let opens = opens && (mode == RecoveryMode::Salvage || !extent_disagrees(base, files, to + 1));
    let ext = base_extent(base);
    let next = (to + 1).max(ext.next_seq).max(ext.durable + 1).max(lost.unwrap_or(0)).max(seen_end(base, files));
    opens.then_some(Outcome { from, to, aside, next })
}

impl Base {
    fn intact(&self) -> Expect {
        Expect::Clean { from: 1, to: self.last_seq() }
    }

    /// Frame `fi` no longer validates; everything else is as written.
    fn frame_damage(&self, fi: usize) -> Expect {
        let f = &self.frames[fi];
        let later = &self.frames[fi + 1..];
        let evidence = !later.is_empty();
        // Cut: the damaged segment is copied if anything valid follows it in
        // the file or later segments exist; later segments are moved.
        let aside = if f.seg < self.last_seg() || evidence {
            self.segs[f.seg..].iter().map(|s| s.name.clone()).collect()
        } else {
            Vec::new()
        };
        Expect::Damage { seq: f.seq, proven: later.iter().any(|l| l.hint >= f.seq), header: false, aside }
    }

    /// Segment `si` has a bad header (or one naming another sequence).
    fn header_damage(&self, si: usize) -> Expect {
        let seq = self.segs[si].first;
        Expect::Damage {
            seq,
            proven: self.frames.iter().any(|f| f.seg > si && f.hint >= seq),
            header: true,
            aside: self.segs[si..].iter().map(|s| s.name.clone()).collect(),
        }
    }

    /// Segment `si` (> 0) has a valid header naming another predecessor:
    /// the chain breaks before it, as if a segment were missing there.
    fn link_broken(&self, si: usize) -> Expect {
        let seq = self.segs[si].first;
        Expect::Damage {
            seq,
            proven: self.frames.iter().any(|f| f.seg >= si && f.hint >= seq),
            header: false,
            aside: self.segs[si..].iter().map(|s| s.name.clone()).collect(),
        }
    }

    /// Segment `si` has a valid header with a new salt: none of its frames validate.
    fn salt_replaced(&self, si: usize) -> Expect {
        let seq = self.segs[si].first;
        Expect::Damage {
            seq,
            proven: self.frames.iter().any(|f| f.seg > si && f.hint >= seq),
            header: false,
            aside: if si < self.last_seg() { self.segs[si..].iter().map(|s| s.name.clone()).collect() } else { Vec::new() },
        }
    }

    /// The last segment is cut to `len` bytes: what survives is the frames
    /// that end within it; the bytes of a partial frame are damage unless
    /// they are all zero (then it is the clean end of the log).
    /// The last segment's file cut to `len` bytes: shorter than its
    /// header says it was allocated, so damage where its whole frames end
    /// (`documented` adds what the cut tail implies).
    fn cut_last_segment(&self, len: usize) -> Expect {
        let seq = match self.seg_frames(self.last_seg()).into_iter().find(|&i| self.frames[i].end() > len) {
            None => self.last_seq() + 1,
            Some(i) => self.frames[i].seq,
        };
        Expect::Damage { seq, proven: false, header: false, aside: Vec::new() }
    }
}

/// Opens `dir` on its own thread: a hang fails after OPEN_TIMEOUT, a panic
/// is reported as such.
fn open_timed(dir: &Path, mode: RecoveryMode) -> Result<keel::Result<Wal>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.to_path_buf();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Wal::open(&d, options(mode))));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(OPEN_TIMEOUT) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(p)) => Err(format!(
            "open PANICKED: {}",
            p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
        )),
        Err(_) => Err(format!("open did not finish within {OPEN_TIMEOUT:?} (hang)")),
    }
}

fn read_log(wal: &Wal) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut r = wal.reader(0, ReadUpto::Appended).map_err(|e| format!("reader: {e}"))?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().map_err(|e| format!("reading: {e}"))? {
        out.push(rec);
        if out.len() > 100_000 {
            return Err("reader does not end".into());
        }
    }
    Ok(out)
}

fn describe_diff(got: &[(u64, Vec<u8>)], want: &[(u64, Vec<u8>)]) -> String {
    let pos = got.iter().zip(want).position(|(g, w)| g != w).unwrap_or(got.len().min(want.len()));
    let show = |v: &[(u64, Vec<u8>)]| v.get(pos).map(|(s, p)| format!("seq {s} ({} bytes)", p.len())).unwrap_or("end".into());
    format!("recovered {} records, expected {}; first difference at index {pos}: got {}, want {}", got.len(), want.len(), show(got), show(want))
}

/// Runs one damaged directory through every recovery mode; returns the
/// failures (empty when every mode behaved as documented).
fn run_case(base: &Base, case: &str, files: &Files, expect: &Expect, work: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    for mode in MODES {
        let name = format!("{}/{case}/{mode:?}", base.tag);
        if let Err(why) = check_mode(base, files, expect, mode, work) {
            failures.push(format!("{name}: {why}\n    expected {:?} (case {expect:?})", documented(base, files, expect, mode)));
        }
    }
    failures
}

fn check_mode(base: &Base, files: &Files, expect: &Expect, mode: RecoveryMode, dir: &Path) -> Result<(), String> {
    write_files(dir, files);
    let before = tree(dir);
    let started = Instant::now();
    let opened = open_timed(dir, mode)?;
    match (documented(base, files, expect, mode), opened) {
        (None, Ok(wal)) => {
            let last = wal.last_seq();
            drop(wal);
            Err(format!("opened (last sequence {last}) where CORRUPTION was documented"))
        }
        (None, Err(e)) => {
            if e.status != KEEL_STATUS_CORRUPTION {
                return Err(format!("failed with {e} where CORRUPTION was documented"));
            }
            // A refused open changes nothing, except that stray temporary
            // files are removed (they never hold acknowledged records).
            let mut want = before;
            want.retain(|k, _| !k.ends_with(".wal.tmp"));
            let after = tree(dir);
            if after != want {
                let changed: Vec<_> = want
                    .keys()
                    .chain(after.keys())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|k| want.get(*k) != after.get(*k))
                    .collect();
                return Err(format!("refused open ({e}) changed the directory: {changed:?}"));
            }
            Ok(())
        }
        (Some(Outcome { from, to, .. }), Err(e)) => Err(format!("open failed ({e}) where records {from}..={to} were documented")),
        (Some(Outcome { from, to, aside, next: next_seq }), Ok(wal)) => {
            let took = started.elapsed();
            let want: Vec<(u64, Vec<u8>)> = (from..=to).map(|s| (s, base.records[s as usize - 1].clone())).collect();
            let got = read_log(&wal)?;
            if got != want {
                return Err(describe_diff(&got, &want));
            }
            // Sequence numbers up to next_seq - 1 count as used even when
            // their records are gone (a new segment declares the gap).
            // With no record kept, the first retained segment may be the
            // emptied damaged one or the new one after the gap.
            let first = if to >= from { from } else { wal.first_seq().clamp(from.min(next_seq), next_seq) };
            let last = next_seq - 1;
            if (wal.first_seq(), wal.last_seq(), wal.durable_seq()) != (first, last, last) {
                return Err(format!(
                    "first/last/durable = {}/{}/{}, expected {first}/{last}/{last}",
                    wal.first_seq(),
                    wal.last_seq(),
                    wal.durable_seq()
                ));
            }
            let next = format!("appended after recovery in {mode:?}").into_bytes();
            match wal.append(&next) {
                Ok(s) if s == next_seq => {}
                other => return Err(format!("append after recovery gave {other:?}, expected sequence {next_seq}")),
            }
            wal.close().map_err(|e| format!("close after recovery: {e}"))?;
            // Set aside: exactly the given-up files, with the bytes they had.
            let folders: Vec<String> =
                tree(dir).into_keys().filter(|k| k.starts_with("salvaged-") && !k.contains('/')).collect();
            if aside.is_empty() {
                if !folders.is_empty() {
                    return Err(format!("nothing was to be set aside, found {folders:?}"));
                }
            } else {
                if folders.len() != 1 {
                    return Err(format!("expected one salvaged-* folder holding {aside:?}, found {folders:?}"));
                }
                let held: BTreeMap<String, Vec<u8>> = read_files(&dir.join(&folders[0]));
                if held.keys().cloned().collect::<Vec<_>>() != aside {
                    return Err(format!("{} holds {:?}, expected {aside:?}", folders[0], held.keys().collect::<Vec<_>>()));
                }
                for (name, bytes) in &held {
                    if before.get(name) != Some(&Some(bytes.clone())) {
                        return Err(format!("{}/{name} differs from the file it was set aside from", folders[0]));
                    }
                }
            }
            // The repaired log is clean: even ABSOLUTE opens it, with the new record.
            let wal = open_timed(dir, RecoveryMode::Absolute)?.map_err(|e| format!("ABSOLUTE reopen after recovery: {e}"))?;
            let mut want = want;
            want.push((next_seq, next));
            let got = read_log(&wal)?;
            if got != want {
                return Err(format!("after the ABSOLUTE reopen: {}", describe_diff(&got, &want)));
            }
            drop(wal);
            if took > OPEN_TIMEOUT / 2 {
                return Err(format!("open took {took:?}"));
            }
            Ok(())
        }
    }
}

fn report(what: &str, cases: usize, failures: Vec<String>) {
    eprintln!("{what}: {cases} cases x {} modes", MODES.len());
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(40).collect();
        panic!(
            "{what}: {} of {} mode runs broke the documented outcome:\n{}{}",
            failures.len(),
            cases * MODES.len(),
            shown.iter().map(|s| format!("  {s}\n")).collect::<String>(),
            if failures.len() > shown.len() { format!("  ... and {} more\n", failures.len() - shown.len()) } else { String::new() }
        );
    }
}

// ---------------------------------------------------------------------------
// Damage to single fields

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hit {
    /// Flip the lowest bit of the field's first byte (middle byte for payloads).
    Flip,
    /// Set every byte of the field to zero.
    Zero,
    /// Overwrite the field with deterministic random bytes.
    Garbage,
    /// Flip, then recompute the checksum: damage only the structural
    /// checks can catch (sequence off by one, count, type, flags, hint).
    FlipResealed,
    /// Garbage, then recompute the checksum.
    GarbageResealed,
}

const HITS: [Hit; 3] = [Hit::Flip, Hit::Zero, Hit::Garbage];
const RESEALED: [Hit; 2] = [Hit::FlipResealed, Hit::GarbageResealed];

/// Applies `hit` to `bytes[range]` (the caller reseals); returns whether anything changed.
fn apply(hit: Hit, bytes: &mut [u8], range: std::ops::Range<usize>, seed: &str) -> bool {
    let old = bytes[range.clone()].to_vec();
    let field = &mut bytes[range];
    match hit {
        Hit::Flip | Hit::FlipResealed => {
            let at = if field.len() > 8 { field.len() / 2 } else { 0 };
            field[at] ^= 1;
        }
        Hit::Zero => field.fill(0),
        Hit::Garbage | Hit::GarbageResealed => {
            let mut rng = Rng(seed_of(seed));
            for b in field.iter_mut() {
                *b = rng.next() as u8;
            }
            if *field == old[..] {
                field[0] ^= 0xff;
            }
        }
    }
    *field != old[..]
}

fn resealed(hit: Hit) -> bool {
    matches!(hit, Hit::FlipResealed | Hit::GarbageResealed)
}

/// Recomputes a segment header's checksum.
fn reseal_header(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes the checksum of the frame at `off` (salt from the segment header).
fn reseal_frame(b: &mut [u8], off: usize) {
    let len = u32_at(b, off + 4) as usize;
    let mut crc = crc32fast::Hasher::new_with_initial(u32_at(b, 12));
    crc.update(&b[off + 4..off + FRAME_HEADER]);
    crc.update(&b[off + FRAME_HEADER..off + FRAME_HEADER + len]);
    let crc = crc.finalize();
    b[off..off + 4].copy_from_slice(&crc.to_le_bytes());
}

const HEADER_FIELDS: [(&str, std::ops::Range<usize>); 8] = [
    ("magic", 0..8),
    ("version", 8..12),
    ("salt", 12..16),
    ("first-seq", 16..24),
    ("prev-link", 24..44),
    ("allocated", 44..52),
    ("reserved", 52..60),
    ("header-crc", 60..64),
];

#[test]
fn segment_header_fields() {
    let (crash, clean) = bases();
    let work = Scratch::new("header");
    let mut failures = Vec::new();
    let mut cases = 0;
    for base in [crash, clean] {
        for (si, at) in [(0, "first-segment"), (1, "middle-segment"), (2, "last-segment")] {
            for (field, range) in HEADER_FIELDS {
                let hits = if field == "header-crc" { HITS.to_vec() } else { [&HITS[..], &RESEALED[..]].concat() };
                for hit in hits {
                    let case = format!("header.{field}.{hit:?}@{at}");
                    let mut files = base.files.clone();
                    let seg = files.get_mut(&base.segs[si].name).unwrap();
                    let changed = apply(hit, seg, range.clone(), &case);
                    if resealed(hit) {
                        reseal_header(seg);
                    }
                    let expect = match (changed, resealed(hit), field) {
                        // Zeroing the reserved bytes writes what is there already.
                        (false, _, _) => base.intact(),
                        // With a valid checksum the reserved bytes are not
                        // looked at (room for later format additions).
                        (true, true, "reserved") => base.intact(),
                        // A valid header with another salt: no frame of the
                        // segment validates; it reads as damage at its first
                        // frame with nothing valid after it in that file.
                        (true, true, "salt") => base.salt_replaced(si),
                        // The link to the previous segment: impossible
                        // values are a bad header; a plausible one that
                        // names another segment breaks the chain there; none
                        // at all is a header of the first format-2 segment
                        // and is checked like version 1 (by its first sequence).
                        (true, true, "prev-link") => match decode_segment_header(seg) {
                            Err(_) => base.header_damage(si),
                            Ok(h) if h.prev.is_none() => base.intact(),
                            Ok(_) => base.link_broken(si),
                        },
                        // The allocated length: beyond the largest segment
                        // is a bad header; 0 (not recorded) or within the
                        // file changes nothing; beyond the file reads as a
                        // cut tail, which the next segment's link disproves.
                        (true, true, "allocated") => match decode_segment_header(seg) {
                            Err(_) => base.header_damage(si),
                            Ok(h) if h.allocated <= seg.len() as u64 || si < base.last_seg() => base.intact(),
                            Ok(_) => base.cut_last_segment(seg.len()),
                        },
                        _ => base.header_damage(si),
                    };
                    failures.extend(run_case(base, &case, &files, &expect, &work.0.join("d")));
                    cases += 1;
                }
            }
        }
    }
    report("segment header fields", cases, failures);
}

const FRAME_FIELDS: [&str; 9] = ["crc", "length", "type", "flags-and-zero", "count", "sequence", "durable-hint", "payload", "padding"];

fn frame_field(f: &Frame, field: &str) -> std::ops::Range<usize> {
    let o = f.off;
    match field {
        "crc" => o..o + 4,
        "length" => o + 4..o + 8,
        "type" => o + 8..o + 9,
        "flags-and-zero" => o + 9..o + 12,
        "count" => o + 12..o + 16,
        "sequence" => o + 16..o + 24,
        "durable-hint" => o + 24..o + 32,
        "payload" => o + 32..o + 32 + f.len,
        "padding" => o + 32 + f.len..f.end(),
        _ => unreachable!(),
    }
}

/// The frames the matrix damages, by name.
fn frame_locations(base: &Base) -> Vec<(&'static str, usize)> {
    let seg0 = base.seg_frames(0);
    let last = base.seg_frames(base.last_seg());
    let mid0 = seg0[seg0.len() / 2 + 10];
    let batch = base.frames.iter().position(|f| f.kind == KIND_BATCH).unwrap();
    let last_record = *last.iter().rev().find(|&&i| base.frames[i].kind != KIND_MARK).unwrap();
    let mut locations = vec![
        ("first-record", 0),
        ("middle-record-of-segment-1", mid0),
        ("batch-in-segment-1", batch),
        // In the crash base: after the sync point, so nothing proves it durable.
        ("record-after-sync-in-segment-2", base.frame_with_seq(base.sync_point + 10)),
        ("middle-record-of-last-segment", last[last.len() / 2]),
        ("last-record", last_record),
    ];
    for (name, i) in &locations {
        let f = &base.frames[*i];
        assert!(f.kind != KIND_MARK && f.len % 8 != 0, "{name}: a record frame with padding");
        assert!(*name == "batch-in-segment-1" || f.kind != KIND_BATCH, "{name}");
    }
    assert!(base.frames[mid0].seg == 0 && mid0 < *seg0.last().unwrap());
    if base.frames.last().unwrap().kind == KIND_MARK {
        locations.push(("close-mark", base.frames.len() - 1));
    }
    locations
}

#[test]
fn frame_fields() {
    let (crash, clean) = bases();
    let work = Scratch::new("frame");
    let mut failures = Vec::new();
    let mut cases = 0;
    for base in [crash, clean] {
        for (at, fi) in frame_locations(base) {
            let f = &base.frames[fi];
            for field in FRAME_FIELDS {
                if f.kind == KIND_MARK && (field == "payload" || field == "padding") {
                    continue; // a MARK has neither
                }
                let structural = ["type", "flags-and-zero", "count", "sequence", "durable-hint"].contains(&field);
                let hits = if structural { [&HITS[..], &RESEALED[..]].concat() } else { HITS.to_vec() };
                for hit in hits {
                    let case = format!("frame.{field}.{hit:?}@{at}(seq {})", f.seq);
                    let mut files = base.files.clone();
                    let seg = files.get_mut(&base.segs[f.seg].name).unwrap();
                    let changed = apply(hit, seg, frame_field(f, field), &case);
                    if resealed(hit) {
                        reseal_frame(seg, f.off);
                    }
                    let new_hint = u64_at(seg, f.off + 24);
                    let expect = if !changed || field == "padding" {
                        // Zeroing a field that is zero (flags, padding, the
                        // hint of frames written before any sync) changes
                        // nothing; padding is outside the checksum and
                        // ignored (see the top of this file).
                        base.intact()
                    } else if resealed(hit) && field == "durable-hint" && new_hint < f.seq {
                        // A checksum-valid hint below the frame's sequence is
                        // a well-formed frame: nothing to detect, nothing lost.
                        base.intact()
                    } else {
                        base.frame_damage(fi)
                    };
                    failures.extend(run_case(base, &case, &files, &expect, &work.0.join("d")));
                    cases += 1;
                }
            }
        }
    }
    report("frame fields", cases, failures);
}

// ---------------------------------------------------------------------------
// Truncation at every byte offset of the last two frames

#[test]
fn truncation_at_every_offset_of_the_last_two_frames() {
    let (crash, clean) = bases();
    let work = Scratch::new("truncate");
    let mut failures = Vec::new();
    let mut cases = 0;
    for base in [crash, clean] {
        let last = base.seg_frames(base.last_seg());
        let (a, b) = (&base.frames[last[last.len() - 2]], &base.frames[last[last.len() - 1]]);
        let name = &base.segs[base.last_seg()].name;
        for len in a.off..=b.end() {
            let case = format!("truncate-last-segment-to-{len}(frames at {}, {}, end {})", a.off, b.off, b.end());
            let mut files = base.files.clone();
            files.get_mut(name).unwrap().truncate(len);
            let expect = base.cut_last_segment(len);
            failures.extend(run_case(base, &case, &files, &expect, &work.0.join("d")));
            cases += 1;
        }
    }
    report("truncation", cases, failures);
}

// ---------------------------------------------------------------------------
// Tails, whole segments and stray files

/// Bytes of five frames of segment 1 (another salt), for stale tails.
fn foreign_frames(base: &Base) -> Vec<u8> {
    let seg0 = base.seg_frames(0);
    let (from, to) = (&base.frames[seg0[3]], &base.frames[seg0[7]]);
    base.seg_bytes(0)[from.off..to.off].to_vec()
}

type Mutation = Box<dyn Fn(&Base, &mut Files) -> Expect>;

fn whole_file_cases() -> Vec<(&'static str, Mutation)> {
    let mut v: Vec<(&'static str, Mutation)> = Vec::new();
    let last_name = |b: &Base| b.segs[b.last_seg()].name.clone();
    let data_end = |b: &Base| b.frames.last().unwrap().end();

    // Zero-filled tails.
    v.push((
        "zero-fill-from-the-last-two-frames(frame boundary: the clean end)",
        Box::new(move |b, files| {
            let last = b.seg_frames(b.last_seg());
            let a = &b.frames[last[last.len() - 2]];
            files.get_mut(&last_name(b)).unwrap()[a.off..].fill(0);
            Expect::Clean { from: 1, to: a.seq - 1 }
        }),
    ));
    v.push((
        "zero-fill-from-inside-the-second-to-last-frame",
        Box::new(move |b, files| {
            let last = b.seg_frames(b.last_seg());
            let a = &b.frames[last[last.len() - 2]];
            files.get_mut(&last_name(b)).unwrap()[a.off + 20..].fill(0);
            Expect::Damage { seq: a.seq, proven: false, header: false, aside: vec![] }
        }),
    ));
    v.push((
        "zero-fill-everything-after-the-last-segment-header",
        Box::new(move |b, files| {
            files.get_mut(&last_name(b)).unwrap()[HEADER_LEN..].fill(0);
            Expect::Clean { from: 1, to: b.segs[b.last_seg()].first - 1 }
        }),
    ));
    // Stale tails: frames of another segment (other salt) or older frames of
    // the same segment after the end of the data.
    v.push((
        "stale-tail-from-another-segment-after-the-end",
        Box::new(move |b, files| {
            let stale = foreign_frames(b);
            let end = data_end(b);
            files.get_mut(&last_name(b)).unwrap()[end..end + stale.len()].copy_from_slice(&stale);
            Expect::Damage { seq: b.last_seq() + 1, proven: false, header: false, aside: vec![] }
        }),
    ));
    v.push((
        "stale-tail-of-own-older-frames-after-the-end",
        Box::new(move |b, files| {
            let last = b.seg_frames(b.last_seg());
            let (from, to) = (b.frames[last[2]].off, b.frames[last[6]].off);
            let end = data_end(b);
            let f = files.get_mut(&last_name(b)).unwrap();
            let stale = f[from..to].to_vec();
            f[end..end + stale.len()].copy_from_slice(&stale);
            Expect::Damage { seq: b.last_seq() + 1, proven: false, header: false, aside: vec![] }
        }),
    ));
    v.push((
        "stale-tail-over-the-last-record(torn write over recycled bytes)",
        Box::new(move |b, files| {
            let last = b.seg_frames(b.last_seg());
            let li = *last.iter().rev().find(|&&i| b.frames[i].kind != KIND_MARK).unwrap();
            let stale = foreign_frames(b);
            let at = b.frames[li].off;
            let f = files.get_mut(&last_name(b)).unwrap();
            f.truncate(at);
            f.extend_from_slice(&stale);
            f.resize(SEGMENT_SIZE as usize, 0);
            Expect::Damage { seq: b.frames[li].seq, proven: false, header: false, aside: vec![] }
        }),
    ));
    v.push((
        "stale-bytes-beyond-the-end-of-the-file",
        Box::new(move |b, files| {
            let stale = foreign_frames(b);
            files.get_mut(&last_name(b)).unwrap().extend_from_slice(&stale);
            Expect::Damage { seq: b.last_seq() + 1, proven: false, header: false, aside: vec![] }
        }),
    ));
    v.push((
        "last-segment-cut-inside-its-header",
        Box::new(move |b, files| {
            files.get_mut(&last_name(b)).unwrap().truncate(40);
            b.header_damage(b.last_seg())
        }),
    ));
    v.push((
        "last-segment-empty-file",
        Box::new(move |b, files| {
            files.get_mut(&last_name(b)).unwrap().clear();
            b.header_damage(b.last_seg())
        }),
    ));
    // Valid records after a corrupt one, spelled out (the frame matrix has
    // them at every location): two damaged frames, the first one decides.
    v.push((
        "two-damaged-frames-with-valid-ones-between-and-after",
        Box::new(move |b, files| {
            let s1 = b.seg_frames(1);
            let (x, y) = (&b.frames[s1[5]], &b.frames[s1[40]]);
            let f = files.get_mut(&b.segs[1].name).unwrap();
            f[x.off + 40] ^= 0x80;
            f[y.off + 40] ^= 0x80;
            b.frame_damage(s1[5])
        }),
    ));
    // Whole segments.
    v.push((
        "middle-segment-removed",
        Box::new(move |b, files| {
            files.remove(&b.segs[1].name);
            let seq = b.segs[1].first;
            Expect::Damage {
                seq,
                proven: b.frames.iter().any(|f| f.seg > 1 && f.hint >= seq),
                header: false,
                aside: vec![b.segs[2].name.clone()],
            }
        }),
    ));
    v.push((
        "middle-segment-truncated-at-a-frame-boundary-after-the-sync-point",
        Box::new(move |b, files| {
            let f = &b.frames[b.frame_with_seq(b.sync_point + 20)];
            files.get_mut(&b.segs[1].name).unwrap().truncate(f.off);
            // A hole between segments 2 and 3: segment 2 keeps its valid
            // prefix (nothing to copy), segment 3 is set aside.
            Expect::Damage {
                seq: f.seq,
                proven: b.frames.iter().any(|l| l.seg > 1 && l.hint >= f.seq),
                header: false,
                aside: vec![b.segs[2].name.clone()],
            }
        }),
    ));
    v.push((
        "middle-segment-zeroed-from-a-frame-boundary-before-the-sync-point",
        Box::new(move |b, files| {
            let f = &b.frames[b.frame_with_seq(b.sync_point - 20)];
            files.get_mut(&b.segs[1].name).unwrap()[f.off..].fill(0);
            Expect::Damage { seq: f.seq, proven: true, header: false, aside: vec![b.segs[2].name.clone()] }
        }),
    ));
    v.push((
        "middle-segment-truncated-inside-a-frame-after-the-sync-point",
        Box::new(move |b, files| {
            let fi = b.frame_with_seq(b.sync_point + 20);
            files.get_mut(&b.segs[1].name).unwrap().truncate(b.frames[fi].off + 17);
            let mut e = b.frame_damage(fi);
            if let Expect::Damage { proven, .. } = &mut e {
                // The frames after it in segment 2 are gone with the cut.
                *proven = b.frames.iter().any(|l| l.seg > 1 && l.hint >= b.frames[fi].seq);
            }
            e
        }),
    ));
    v.push((
        "first-segment-removed(a missing prefix is what truncation leaves)",
        Box::new(move |b, files| {
            files.remove(&b.segs[0].name);
            Expect::Clean { from: b.segs[1].first, to: b.last_seq() }
        }),
    ));
    v.push((
        "last-segment-removed",
        Box::new(move |b, files| {
            files.remove(&last_name(b));
            Expect::Clean { from: 1, to: b.segs[b.last_seg()].first - 1 }
        }),
    ));
    // Renamed and swapped segments (issue #10 §3): to a name recovery does
    // not read (the same as a removal), to a name beyond the end, and two
    // segments exchanging names. The extent record names what is missing.
    for (si, at) in [(0usize, "first"), (1, "middle"), (2, "last")] {
        v.push((
            ["first-segment-renamed-aside", "middle-segment-renamed-aside", "last-segment-renamed-aside"][si],
            Box::new(move |b, files| {
                let bytes = files.remove(&b.segs[si].name).unwrap();
                files.insert(format!("{}.old", b.segs[si].name), bytes);
                match si {
                    0 => Expect::Clean { from: b.segs[1].first, to: b.last_seq() },
                    2 => Expect::Clean { from: 1, to: b.segs[2].first - 1 },
                    _ => {
                        let seq = b.segs[1].first;
                        Expect::Damage {
                            seq,
                            proven: b.frames.iter().any(|f| f.seg > 1 && f.hint >= seq),
                            header: false,
                            aside: vec![b.segs[2].name.clone()],
                        }
                    }
                }
            }),
        ));
        let _ = at;
        v.push((
            ["first-segment-renamed-beyond-the-end", "middle-segment-renamed-beyond-the-end", "last-segment-renamed-beyond-the-end"]
                [si],
            Box::new(move |b, files| {
                let bytes = files.remove(&b.segs[si].name).unwrap();
                let far = seg_name(b.last_seq() + 1000);
                files.insert(far.clone(), bytes);
                match si {
                    // The header names another sequence: nothing in it
                    // proves anything, the chain ends before it.
                    0 => Expect::Damage { seq: b.last_seq() + 1, proven: false, header: false, aside: vec![far] },
                    1 => {
                        let seq = b.segs[1].first;
                        Expect::Damage {
                            seq,
                            proven: b.frames.iter().any(|f| f.seg == 2 && f.hint >= seq),
                            header: false,
                            aside: vec![b.segs[2].name.clone(), far],
                        }
                    }
                    _ => Expect::Damage { seq: b.segs[2].first, proven: false, header: false, aside: vec![far] },
                }
            }),
        ));
    }
    for (x, y, name) in [(0usize, 1usize, "first-and-middle-segments-swapped"), (1, 2, "middle-and-last-segments-swapped"), (0, 2, "first-and-last-segments-swapped")] {
        v.push((
            name,
            Box::new(move |b, files| {
                let (nx, ny) = (b.segs[x].name.clone(), b.segs[y].name.clone());
                let bx = files.remove(&nx).unwrap();
                let by = files.remove(&ny).unwrap();
                files.insert(nx, by);
                files.insert(ny, bx);
                // Both headers now disagree with their names.
                b.header_damage(x)
            }),
        ));
    }
    // Duplicated segments.
    v.push((
        "last-segment-duplicated-under-the-next-segment-name",
        Box::new(move |b, files| {
            let dup = seg_name(b.last_seq() + 1);
            files.insert(dup.clone(), files[&last_name(b)].clone());
            Expect::Damage { seq: b.last_seq() + 1, proven: false, header: true, aside: vec![dup] }
        }),
    ));
    v.push((
        "segment-1-content-under-segment-2-name",
        Box::new(move |b, files| {
            files.insert(b.segs[1].name.clone(), files[&b.segs[0].name].clone());
            b.header_damage(1)
        }),
    ));
    v.push((
        "segment-2-copied-under-a-name-inside-its-range",
        Box::new(move |b, files| {
            let dup = seg_name(b.segs[1].first + 1);
            files.insert(dup.clone(), files[&b.segs[1].name].clone());
            // Sorted between segments 2 and 3: segment 3 no longer follows;
            // the copy's own header names another sequence, so its frames
            // prove nothing; segment 3's hints decide.
            let seq = b.segs[1].next;
            Expect::Damage {
                seq,
                proven: b.frames.iter().any(|f| f.seg == 2 && f.hint >= seq),
                header: false,
                aside: vec![dup, b.segs[2].name.clone()],
            }
        }),
    ));
    v.push((
        "segment-1-copied-under-a-name-beyond-the-end",
        Box::new(move |b, files| {
            let dup = seg_name(b.last_seq() + 100);
            files.insert(dup.clone(), files[&b.segs[0].name].clone());
            Expect::Damage { seq: b.last_seq() + 1, proven: false, header: false, aside: vec![dup] }
        }),
    ));
    // Stray temporary files: removed at open, the log is intact.
    v.push((
        "stray-temp-files(garbage, spare, header-only next segment)",
        Box::new(move |b, files| {
            files.insert(format!("{:020}.wal.tmp", 99999), b"half-made segment".to_vec());
            files.insert("spare-3.wal.tmp".into(), vec![0u8; SEGMENT_SIZE as usize]);
            let mut next = files[&last_name(b)][..HEADER_LEN].to_vec();
            next.resize(SEGMENT_SIZE as usize, 0);
            files.insert(seg_name(b.last_seq() + 1) + ".tmp", next);
            b.intact()
        }),
    ));
    v.push((
        "stray-temp-copy-of-a-whole-segment",
        Box::new(move |b, files| {
            files.insert("spare-1.wal.tmp".into(), files[&b.segs[1].name].clone());
            files.insert(format!("{}.tmp", b.segs[1].name), files[&b.segs[1].name].clone());
            b.intact()
        }),
    ));
    v.push((
        "stray-temp-files-with-mid-log-damage",
        Box::new(move |b, files| {
            files.insert("spare-2.wal.tmp".into(), vec![7u8; 4096]);
            let fi = b.seg_frames(0)[50];
            let f = &b.frames[fi];
            files.get_mut(&b.segs[0].name).unwrap()[f.off + 33] ^= 0x04;
            b.frame_damage(fi)
        }),
    ));
    v
}

#[test]
fn tails_segments_and_stray_files() {
    let (crash, clean) = bases();
    let work = Scratch::new("whole");
    let mut failures = Vec::new();
    let mut cases = 0;
    for base in [crash, clean] {
        for (case, mutate) in whole_file_cases() {
            let mut files = base.files.clone();
            let expect = mutate(base, &mut files);
            failures.extend(run_case(base, case, &files, &expect, &work.0.join("d")));
            cases += 1;
        }
    }
    report("tails, segments and stray files", cases, failures);
}

/// Documented nuance: "open fails: CORRUPTION, nothing changed" holds for
/// the log's segments; stray temporary files are moved aside before the
/// scan decides and removed when it refuses, because no acknowledged
/// record can be in one (W8).
#[test]
fn stray_temp_files_are_removed_even_when_the_open_fails() {
    let (_, clean) = bases();
    let work = Scratch::new("tmpfail");
    let mut files = clean.files.clone();
    files.insert("spare-9.wal.tmp".into(), vec![1u8; 100]);
    let f = &clean.frames[clean.seg_frames(0)[20]];
    files.get_mut(&clean.segs[0].name).unwrap()[f.off + 40] ^= 1;
    let dir = work.0.join("d");
    write_files(&dir, &files);
    let err = open_timed(&dir, RecoveryMode::TolerateTail).unwrap().err().expect("mid-log damage after a clean close");
    assert_eq!(err.status, KEEL_STATUS_CORRUPTION, "{err}");
    let after = read_files(&dir);
    assert!(!after.contains_key("spare-9.wal.tmp"));
    files.remove("spare-9.wal.tmp");
    assert_eq!(after, files, "segments untouched");
}
