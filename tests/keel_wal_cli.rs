//! The `keel-wal` inspection tool (src/bin/keel-wal/), run as a process
//! against real logs written through `keel::wal::Wal`.

mod common;

use common::{segment_files, TempDir};
use keel::wal::format::{decode_frame, decode_segment_header, Decoded, SEGMENT_HEADER_LEN};
use keel::wal::{segment_file_name, Durability, Options, RecoveryMode, Wal};
use std::path::{Path, PathBuf};
use std::process::Command;


struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The tests of this file run one at a time: each spawns `keel-wal`, and
/// a child forked by one test holds copies of the other tests' open
/// descriptors until it execs, a WAL's LOCK among them, so a WAL closed
/// and at once reopened by another test could find its lock still held.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn keel_wal(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-wal")).args(args).output().expect("running keel-wal");
    Run {
        code: out.status.code().expect("keel-wal was killed by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn opts(recovery: RecoveryMode) -> Options {
    Options { durability: Durability::None, recovery, segment_size: 64 << 10, ..Options::default() }
}

/// Writes a log of single records and batches (every 10th append a batch
/// of 3) spanning several 64 KiB segments, syncing now and then so the
/// durable hints grow, and closes it cleanly. Returns (sequence, payload)
/// of every record in order.
fn write_log(dir: &Path, appends: u64) -> Vec<(u64, Vec<u8>)> {
    let wal = Wal::open(dir, opts(RecoveryMode::TolerateTail)).unwrap();
    let mut written = Vec::new();
    for i in 0..appends {
        if i % 10 == 9 {
            let recs: Vec<Vec<u8>> = (0..3).map(|j| format!("batch-{i:05}-{j}").into_bytes()).collect();
            let refs: Vec<&[u8]> = recs.iter().map(|r| &r[..]).collect();
            let first = wal.append_batch(&refs).unwrap();
            written.extend(recs.into_iter().enumerate().map(|(j, r)| (first + j as u64, r)));
        } else {
            let p = format!("rec-{i:05}-{}", "x".repeat((i % 37) as usize * 17)).into_bytes();
            written.push((wal.append(&p).unwrap(), p));
        }
        if i % 50 == 49 {
            wal.sync().unwrap();
        }
    }
    wal.close().unwrap();
    written
}


/// Offset just past the last valid frame of a segment (walked here with the
/// format functions, independently of the tool).
fn valid_end(bytes: &[u8]) -> u64 {
    let salt = decode_segment_header(bytes).unwrap().salt;
    let mut off = SEGMENT_HEADER_LEN as usize;
    loop {
        match decode_frame(&bytes[off..], salt) {
            Decoded::Frame(h) => off += h.size() as usize,
            Decoded::End => return off as u64,
            Decoded::Invalid(why) => panic!("unexpected damage at {off}: {why}"),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Every file and folder under `dir` with its contents, to prove that the
/// tool changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.push((p.clone(), Vec::new()));
            v.extend(snapshot(&p));
        } else {
            v.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    v.sort();
    v
}

/// (seq, type, payload text) of each `seq=` line of `dump` output.
fn dumped(stdout: &str) -> Vec<(u64, String, String)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("seq="))
        .map(|l| {
            let field = |k: &str| l.split(' ').find_map(|f| f.strip_prefix(k)).unwrap().to_string();
            let payload = l.split_once(" payload=\"").map(|(_, p)| p.strip_suffix('"').unwrap().to_string());
            (field("seq=").parse().unwrap(), field("type="), payload.unwrap_or_default())
        })
        .collect()
}

#[test]
fn dump_prints_every_record_in_order_and_from_works() {
    let _serial = serial();
    let t = TempDir::new("dump");
    let written = write_log(&t.path().join("wal"), 600);
    let segs = segment_files(&t.path().join("wal"));
    assert!(segs.len() >= 3, "the log should span several segments, has {}", segs.len());

    let r = keel_wal(&["dump", s(&t.path().join("wal"))]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = dumped(&r.stdout);
    assert_eq!(got.len(), written.len());
    for ((seq, kind, text), (wseq, payload)) in got.iter().zip(&written) {
        assert_eq!(seq, wseq);
        assert_eq!(text.as_bytes(), &payload[..]);
        assert_eq!(kind.starts_with("batch["), payload.starts_with(b"batch-"), "seq {seq} has type {kind}");
    }
    assert!(r.stdout.contains("type=batch[3/3]"));
    // Every segment appears, with the frame offsets a segment can hold.
    for seg in &segs {
        let name = seg.file_name().unwrap().to_str().unwrap();
        assert!(r.stdout.contains(&format!("segment={name} offset=64 ")), "{name} missing from the dump");
    }
    assert!(r.stdout.contains("# mark "), "the clean-close MARK is shown:\n{}", r.stdout.lines().last().unwrap());

    // --from starts exactly there, also inside a batch and in a later segment.
    for from in [1, 2, 29, 31, 333, written.last().unwrap().0] {
        let r = keel_wal(&["dump", s(&t.path().join("wal")), "--from", &from.to_string()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let got: Vec<u64> = dumped(&r.stdout).iter().map(|d| d.0).collect();
        let want: Vec<u64> = written.iter().map(|w| w.0).filter(|q| *q >= from).collect();
        assert_eq!(got, want, "--from {from}");
    }
    // Past the end is an error of its own (exit 4), not an empty success.
    let last = written.last().unwrap().0;
    let beyond = keel_wal(&["dump", s(&t.path().join("wal")), &format!("--from={}", last + 5)]);
    assert_eq!((beyond.code, dumped(&beyond.stdout).len()), (4, 0), "{}", beyond.stderr);
    assert!(beyond.stderr.contains(&format!("sequence {} is beyond the end", last + 5)), "{}", beyond.stderr);
    assert!(beyond.stderr.contains(&format!("the last record is {last}")), "{}", beyond.stderr);
    assert_eq!(keel_wal(&["dump", s(&t.path().join("wal")), &format!("--from={}", last + 1)]).code, 4);
}

#[test]
fn dump_escapes_text_and_hex_dumps() {
    let _serial = serial();
    let t = TempDir::new("hex");
    let wal = Wal::open(&t.path().join("wal"), opts(RecoveryMode::TolerateTail)).unwrap();
    wal.append(b"hello, world").unwrap();
    wal.append(b"quote\" back\\ nl\n \x00\xff").unwrap();
    wal.append_batch(&[b"a", b"", b"0123456789abcdefXYZ"]).unwrap();
    wal.close().unwrap();

    let r = keel_wal(&["dump", s(&t.path().join("wal"))]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("seq=1 segment=00000000000000000001.wal offset=64 len=12 type=record payload=\"hello, world\""), "{}", r.stdout);
    assert!(r.stdout.contains(r#"seq=2 "#) && r.stdout.contains(r#"payload="quote\" back\\ nl\n \x00\xff""#), "{}", r.stdout);
    assert!(r.stdout.contains("seq=4 segment=00000000000000000001.wal offset=168 len=0 type=batch[2/3] payload=\"\""), "{}", r.stdout);

    let r = keel_wal(&["dump", "--hex", s(&t.path().join("wal"))]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("seq=1 segment=00000000000000000001.wal offset=64 len=12 type=record\n"), "{}", r.stdout);
    assert!(r.stdout.contains("00000000  68 65 6c 6c 6f 2c 20 77  6f 72 6c 64"), "{}", r.stdout);
    assert!(r.stdout.contains("|hello, world|"), "{}", r.stdout);
    // Second line of a 19-byte record.
    assert!(r.stdout.contains("00000010  58 59 5a"), "{}", r.stdout);
    assert!(!r.stdout.contains("payload="));
}

/// The value after `key` on the line starting with it.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no '{key}' line in:\n{out}"))
}

#[test]
fn stat_numbers_match_what_was_written() {
    let _serial = serial();
    let t = TempDir::new("stat");
    let written = write_log(&t.path().join("wal"), 500);
    let last = written.last().unwrap().0;
    std::fs::write(t.path().join("wal").join("spare-9.wal.tmp"), b"").unwrap();
    std::fs::create_dir(t.path().join("wal").join("salvaged-123")).unwrap();
    let before = snapshot(t.path());

    let r = keel_wal(&["stat", s(&t.path().join("wal"))]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = &r.stdout;
    let segs = segment_files(&t.path().join("wal"));
    assert_eq!(line(out, "segments: "), segs.len().to_string());
    assert_eq!(line(out, "sequences: "), format!("records 1..{last} ({} records)", written.len()));
    let total: u64 = segs.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(line(out, "total size: "), format!("{total} bytes in {} segment(s)", segs.len()));
    assert_eq!(line(out, "durable watermark on disk: "), format!("{last} (largest durable hint)"));
    assert!(line(out, "clean close: ").starts_with("yes"));
    assert_eq!(line(out, "temp files: "), "spare-9.wal.tmp");
    assert_eq!(line(out, "salvaged folders: "), "salvaged-123");

    // One table row per segment: name, first, last, size, frames, used.
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.first().is_some_and(|n| n.ends_with(".wal")))
        .collect();
    assert_eq!(rows.len(), segs.len());
    let mut frames = 0;
    for (i, (row, path)) in rows.iter().zip(&segs).enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let first: u64 = row[1].parse().unwrap();
        assert_eq!(row[0], segment_file_name(first));
        assert_eq!(row[0], path.file_name().unwrap().to_str().unwrap());
        let row_last: u64 = row[2].parse().unwrap();
        match rows.get(i + 1) {
            Some(next) => assert_eq!(row_last + 1, next[1].parse::<u64>().unwrap()),
            None => assert_eq!(row_last, last),
        }
        assert_eq!(row[3], bytes.len().to_string());
        assert_eq!(row[5], valid_end(&bytes).to_string(), "bytes used in {}", row[0]);
        frames += row[4].parse::<u64>().unwrap();
    }
    // 500 appends (450 records + 50 batches) and the MARK.
    assert_eq!(frames, 501);
    assert_eq!(snapshot(t.path()), before, "stat must not change anything");
}

#[test]
fn verify_passes_a_clean_log() {
    let _serial = serial();
    let t = TempDir::new("clean");
    let written = write_log(&t.path().join("wal"), 300);
    let last = written.last().unwrap().0;
    for mode in ["tolerate_tail", "absolute", "point_in_time", "salvage"] {
        let r = keel_wal(&["verify", s(&t.path().join("wal")), "--mode", mode]);
        assert_eq!(r.code, 0, "{mode}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains(&format!("clean: records 1..{last} ({last} records); ends with a MARK frame")), "{}", r.stdout);
        assert!(r.stdout.contains(&format!("verdict: {mode} would open; the next append gets sequence {}", last + 1)), "{}", r.stdout);
    }

    // A log whose handle was never closed (no MARK) and whose segment is
    // zero-filled after the last frame is clean too.
    let t = TempDir::new("unclosed");
    let wal = Wal::open(&t.path().join("wal"), Options { durability: Durability::Sync, ..opts(RecoveryMode::TolerateTail) }).unwrap();
    for i in 0..20 {
        wal.append(format!("r{i}").as_bytes()).unwrap();
    }
    std::mem::forget(wal); // what a crash leaves: every SYNC append is on disk
    let r = keel_wal(&["verify", s(&t.path().join("wal"))]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("clean: records 1..20 (20 records); no MARK at the end"), "{}", r.stdout);
    let r = keel_wal(&["stat", s(&t.path().join("wal"))]);
    assert!(line(&r.stdout, "clean close: ").starts_with("no"), "{}", r.stdout);
}

/// Segments of different sizes (grown up to a 1 MiB maximum, one fitted
/// to a large record) are a clean log to `verify`, `stat` and `dump`.
#[test]
fn a_log_of_grown_segments_is_clean() {
    let _serial = serial();
    let t = TempDir::new("grown");
    let dir = t.path().join("wal");
    let wal = Wal::open(&dir, Options { segment_size: 1 << 20, ..opts(RecoveryMode::TolerateTail) }).unwrap();
    let mut last = 0;
    for i in 0..600u64 {
        let len = if i == 20 { 700 << 10 } else { 3000 };
        last = wal.append(&vec![i as u8; len]).unwrap();
    }
    wal.close().unwrap();
    let sizes: Vec<u64> = segment_files(&dir).iter().map(|p| std::fs::metadata(p).unwrap().len()).collect();
    assert!(sizes.windows(2).any(|w| w[0] != w[1]), "segments of one size: {sizes:?}");
    let r = keel_wal(&["verify", s(&dir), "--mode", "absolute"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(&format!("clean: records 1..{last} ({last} records); ends with a MARK frame")), "{}", r.stdout);
    let r = keel_wal(&["stat", s(&dir)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(line(&r.stdout, "total size: "), format!("{} bytes in {} segment(s)", sizes.iter().sum::<u64>(), sizes.len()));
    let r = keel_wal(&["dump", s(&dir)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(dumped(&r.stdout).len() as u64, last);
}

#[test]
fn verify_finds_a_flipped_payload_byte() {
    let _serial = serial();
    let t = TempDir::new("flip");
    let written = write_log(&t.path().join("wal"), 600);
    // A single record in the middle of the first segment.
    let (seq, payload) = written.iter().find(|(q, p)| *q > 40 && p.starts_with(b"rec-")).unwrap().clone();
    let seg = &segment_files(&t.path().join("wal"))[0];
    let mut bytes = std::fs::read(seg).unwrap();
    let at = find(&bytes, &payload).unwrap();
    bytes[at + 2] ^= 0x20;
    std::fs::write(seg, &bytes).unwrap();
    let frame = at - 32;
    let before = snapshot(t.path());

    let r = keel_wal(&["verify", s(&t.path().join("wal"))]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let want = format!("damage: segment {} offset {frame} sequence {seq}: frame checksum mismatch", seg.display());
    assert_eq!(line(&r.stdout, "damage: "), &want["damage: ".len()..], "{}", r.stdout);
    assert!(line(&r.stdout, "kind: ").starts_with("corruption"), "{}", r.stdout);
    assert!(r.stdout.contains("verdict: tolerate_tail would fail to open (CORRUPTION)"), "{}", r.stdout);
    assert!(r.stdout.contains("absolute would fail, point_in_time would fail, salvage would open"), "{}", r.stdout);
    let salvage = keel_wal(&["verify", s(&t.path().join("wal")), "--mode=salvage"]);
    assert_eq!(salvage.code, 1);
    assert!(line(&salvage.stdout, "verdict: ").contains(&format!("keep records 1..{}", seq - 1)), "{}", salvage.stdout);

    // dump stops at the damage, having printed everything before it.
    let d = keel_wal(&["dump", s(&t.path().join("wal"))]);
    assert_eq!(d.code, 1);
    assert_eq!(dumped(&d.stdout).last().unwrap().0, seq - 1);
    assert!(d.stderr.contains(&format!("offset {frame} (sequence {seq}): frame checksum mismatch")), "{}", d.stderr);

    assert_eq!(snapshot(t.path()), before, "verify and dump must not change anything");
    // The library agrees with the verdict.
    let err = Wal::open(&t.path().join("wal"), opts(RecoveryMode::TolerateTail)).err().expect("open must fail");
    assert!(err.to_string().contains(&format!("offset {frame} (sequence {seq})")), "{err}");
}

#[test]
fn verify_reports_garbage_after_the_end_as_a_torn_tail() {
    let _serial = serial();
    let t = TempDir::new("tail");
    let written = write_log(&t.path().join("wal"), 400);
    let last = written.last().unwrap().0;
    let seg = segment_files(&t.path().join("wal")).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = valid_end(&bytes) as usize;
    bytes[end..end + 100].fill(0xab);
    std::fs::write(&seg, &bytes).unwrap();

    let r = keel_wal(&["verify", s(&t.path().join("wal"))]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(line(&r.stdout, "damage: ").starts_with(&format!("segment {} offset {end} sequence {}: ", seg.display(), last + 1)), "{}", r.stdout);
    assert!(line(&r.stdout, "kind: ").starts_with("torn tail"), "{}", r.stdout);
    assert!(line(&r.stdout, "verdict: ").starts_with(&format!("tolerate_tail would open after repairing: zero {} from offset {end}", seg.file_name().unwrap().to_str().unwrap())), "{}", r.stdout);
    assert!(r.stdout.contains("absolute would fail, point_in_time would open, salvage would open"), "{}", r.stdout);
    let abs = keel_wal(&["verify", s(&t.path().join("wal")), "--mode", "absolute"]);
    assert!(abs.stdout.contains("verdict: absolute would fail to open (CORRUPTION)"), "{}", abs.stdout);
    let st = keel_wal(&["stat", s(&t.path().join("wal"))]);
    assert!(line(&st.stdout, "damage: ").starts_with("torn tail in segment"), "{}", st.stdout);

    // The library agrees: ABSOLUTE refuses, TOLERATE_TAIL cuts and keeps everything.
    assert!(Wal::open(&t.path().join("wal"), opts(RecoveryMode::Absolute)).is_err());
    let wal = Wal::open(&t.path().join("wal"), opts(RecoveryMode::TolerateTail)).unwrap();
    assert_eq!(wal.last_seq(), last);
    wal.close().unwrap();
    assert_eq!(keel_wal(&["verify", s(&t.path().join("wal"))]).code, 0);
}

#[test]
fn verify_reports_a_segment_cut_short_as_corruption() {
    let _serial = serial();
    let t = TempDir::new("cut");
    let written = write_log(&t.path().join("wal"), 400);
    let last = written.last().unwrap().0;
    let seg = segment_files(&t.path().join("wal")).pop().unwrap();
    let end = valid_end(&std::fs::read(&seg).unwrap());
    let allocated = std::fs::metadata(&seg).unwrap().len();
    // Cut where the frames end: what is left holds no damaged byte.
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(end).unwrap();

    let r = keel_wal(&["verify", s(&t.path().join("wal"))]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(line(&r.stdout, "damage: ").starts_with(&format!("segment {} offset {end} sequence {}: ", seg.display(), last + 1)), "{}", r.stdout);
    assert!(line(&r.stdout, "damage: ").ends_with("its tail was cut"), "{}", r.stdout);
    assert!(line(&r.stdout, "kind: ").starts_with("corruption (the file was cut short"), "{}", r.stdout);
    assert!(r.stdout.contains("absolute would fail, point_in_time would open, salvage would open"), "{}", r.stdout);
    let salvage = keel_wal(&["verify", s(&t.path().join("wal")), "--mode", "salvage"]);
    // The next number is above all the lost bytes could have held; the
    // segment keeps its length (the next one's link proves its end).
    assert!(!salvage.stdout.contains("back its allocated"), "{}", salvage.stdout);
    let next = last + 1 + (allocated - end) / 4;
    assert!(salvage.stdout.contains(&format!("skip sequences {}..{}: the next append gets {next}", last + 1, next - 1)), "{}", salvage.stdout);

    // dump prints every record, then says it stopped at the cut.
    let d = keel_wal(&["dump", s(&t.path().join("wal"))]);
    assert_eq!(d.code, 1, "{}", d.stderr);
    assert_eq!(dumped(&d.stdout).last().map(|r| r.0), Some(last), "{}", d.stdout);
    assert!(d.stderr.contains("its tail was cut"), "{}", d.stderr);
    // A single segment file has no extent record; the verdict still skips
    // what the cut tail could have held.
    let one = keel_wal(&["verify", s(&seg), "--mode", "salvage"]);
    assert!(one.stdout.contains(&format!("the next append gets {next}")), "{}", one.stdout);

    // The library agrees, and the repaired log verifies clean.
    assert!(Wal::open(&t.path().join("wal"), opts(RecoveryMode::TolerateTail)).is_err());
    let wal = Wal::open(&t.path().join("wal"), opts(RecoveryMode::Salvage)).unwrap();
    assert_eq!(wal.append(b"after").unwrap(), next);
    wal.close().unwrap();
    assert_eq!(keel_wal(&["verify", s(&t.path().join("wal"))]).code, 0);
}

#[test]
fn verify_reports_a_bad_header_and_a_missing_segment_as_corruption() {
    let _serial = serial();
    let t = TempDir::new("header");
    write_log(&t.path().join("wal"), 600);
    let segs = segment_files(&t.path().join("wal"));
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&segs[1], &bytes).unwrap();
    let r = keel_wal(&["verify", s(&t.path().join("wal"))]);
    assert_eq!(r.code, 1);
    assert!(line(&r.stdout, "damage: ").starts_with(&format!("segment {} offset 0 ", segs[1].display())), "{}", r.stdout);
    assert!(line(&r.stdout, "kind: ").starts_with("corruption (a damaged segment header"), "{}", r.stdout);
    let salvage = keel_wal(&["verify", s(&t.path().join("wal")), "--mode", "salvage"]);
    let moved = segs.len() - 1;
    let name = segs[1].file_name().unwrap().to_str().unwrap();
    let first = name.trim_end_matches(".wal").parse::<u64>().unwrap();
    assert_eq!(
        line(&salvage.stdout, "verdict: "),
        format!(
            "salvage would open after repairing: move {moved} segment(s) from {name} on to salvaged-<ns>/, keep records 1..{} and skip sequences {first}..720: the next append gets 721",
            first - 1
        )
    );

    std::fs::remove_file(&segs[1]).unwrap();
    let r = keel_wal(&["verify", s(&t.path().join("wal"))]);
    assert_eq!(r.code, 1);
    let end = valid_end(&std::fs::read(&segs[0]).unwrap());
    assert!(line(&r.stdout, "damage: ").starts_with(&format!("segment {} offset {end} ", segs[0].display())), "{}", r.stdout);
    assert!(r.stdout.contains("(missing, replaced or swapped segment)"), "{}", r.stdout);
    assert!(line(&r.stdout, "kind: ").starts_with("corruption"), "{}", r.stdout);
}

/// `dump` shows the extent record (`wal.meta`) as a `#` line, and a
/// dump of the whole log reports the record's complaints as `verify` does
/// (status 1). It ignored the record: with the first segment gone, which
/// the record still lists (records `Wal::open` refuses to lose), it
/// printed the rest and exited 0.
#[test]
fn dump_shows_the_extent_record_and_what_it_says_is_missing() {
    let _serial = serial();
    let t = TempDir::new("dump-extent");
    let dir = t.path().join("wal");
    let written = write_log(&dir, 600);
    let last = written.last().unwrap().0;
    let segs = segment_files(&dir);
    let names: Vec<&str> = segs.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
    let r = keel_wal(&["dump", s(&dir)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().next(), Some(format!("# extent durable={last} next={} segments={}", last + 1, names.join(",")).as_str()), "{}", r.stdout);

    std::fs::remove_file(&segs[0]).unwrap();
    let second = names[1].trim_end_matches(".wal").parse::<u64>().unwrap();
    let r = keel_wal(&["dump", s(&dir)]);
    assert_eq!(r.code, 1, "a dump of a log missing a listed segment: {}", r.stderr);
    assert_eq!(dumped(&r.stdout).len() as u64, last - second + 1, "every record still there is printed");
    assert!(
        r.stderr.contains(&format!("missing: segment {} listed in wal.meta is missing (records 1..={})", names[0], second - 1)),
        "{}",
        r.stderr
    );
    // From a later segment on, the first is not read: nothing to compare.
    assert_eq!(keel_wal(&["dump", s(&dir), "--from", &last.to_string()]).code, 0);
}

#[test]
fn unreadable_input_exits_3_with_one_line() {
    let _serial = serial();
    let t = TempDir::new("missing");
    let missing = t.path().join("no-such-dir");
    for cmd in ["dump", "verify", "stat"] {
        let r = keel_wal(&[cmd, s(&missing)]);
        assert_eq!(r.code, 3, "{cmd}");
        assert_eq!(r.stderr, format!("keel-wal: cannot open {}: No such file or directory (os error 2)\n", missing.display()));
        assert!(r.stdout.is_empty());
    }
    let not_wal = t.path().join("notes.txt");
    std::fs::write(&not_wal, b"just some text, long enough to hold a segment header's worth of bytes").unwrap();
    let r = keel_wal(&["verify", s(&not_wal)]);
    assert_eq!(r.code, 3);
    assert_eq!(r.stderr, format!("keel-wal: {} is not a keel WAL segment (bad segment magic)\n", not_wal.display()));

    // A single segment file can be inspected on its own.
    write_log(&t.path().join("wal"), 10);
    let seg = &segment_files(&t.path().join("wal"))[0];
    let r = keel_wal(&["verify", s(seg)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let _serial = serial();
    let t = TempDir::new("usage");
    let d = s(t.path());
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate", d],
        &["dump"],
        &["dump", d, "--from"],
        &["dump", d, "--from", "abc"],
        &["dump", d, "--mode", "absolute"],
        &["verify", d, "--mode", "bogus"],
        &["verify", d, "--hex"],
        &["stat", d, d],
        &["stat", d, "--verbose"],
    ];
    for args in cases {
        let r = keel_wal(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("keel-wal: ") && r.stderr.contains("\nusage: keel-wal dump DIR"), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty());
    }
    let r = keel_wal(&["--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("usage: keel-wal dump DIR"));
}


/// Issue #10 §3: segments deleted, renamed or swapped behind keel's back
/// are found by every mode's verdict (exit 1), naming what is missing.
#[test]
fn verify_finds_deleted_renamed_and_swapped_segments_in_every_mode() {
    let _serial = serial();
    type Damage = fn(&Path, &[PathBuf]);
    let cases: [(&str, Damage, usize); 5] = [
        ("last segment removed", |_, segs| std::fs::remove_file(segs.last().unwrap()).unwrap(), 2),
        ("last segment renamed", |d, segs| std::fs::rename(segs.last().unwrap(), d.join("00000000000000009999.wal")).unwrap(), 2),
        ("first segment renamed", |d, segs| std::fs::rename(&segs[0], d.join("first.bak")).unwrap(), 0),
        ("middle segment removed", |_, segs| std::fs::remove_file(&segs[1]).unwrap(), 1),
        (
            "middle and last swapped",
            |d, segs| {
                std::fs::rename(&segs[1], d.join("x")).unwrap();
                std::fs::rename(&segs[2], &segs[1]).unwrap();
                std::fs::rename(d.join("x"), &segs[2]).unwrap();
            },
            1,
        ),
    ];
    for (what, damage, missing) in cases {
        let t = TempDir::new("extent");
        let dir = t.path().join("wal");
        write_log(&dir, 600);
        let segs = segment_files(&dir);
        assert_eq!(segs.len(), 3);
        damage(&dir, &segs);
        let name = segs[missing].file_name().unwrap().to_str().unwrap();
        for mode in ["tolerate_tail", "absolute", "point_in_time", "salvage"] {
            let r = keel_wal(&["verify", s(&dir), "--mode", mode]);
            assert_eq!(r.code, 1, "{what}, {mode}: {}{}", r.stdout, r.stderr);
            assert!(r.stdout.contains(name), "{what}, {mode}: {name} not named:\n{}", r.stdout);
            let verdict = line(&r.stdout, "verdict: ");
            if mode == "salvage" {
                assert!(verdict.starts_with("salvage would open") && verdict.ends_with(" 721"), "{what}: {verdict}");
            } else {
                assert!(verdict.contains("would fail to open (CORRUPTION)"), "{what}, {mode}: {verdict}");
            }
            // What verify predicts is what open does.
            let recovery = scan_mode(mode);
            let opened = Wal::open(&dir, opts(recovery));
            assert_eq!(opened.is_ok(), mode == "salvage", "{what}, {mode}");
            assert!(opened.err().is_none_or(|e| e.status == keel::status::KEEL_STATUS_CORRUPTION));
            if mode == "salvage" {
                break; // salvage repaired the directory
            }
        }
        let r = keel_wal(&["verify", s(&dir)]);
        assert_eq!(r.code, 0, "{what}: after the salvage: {}", r.stdout);
        // The numbers salvage skipped are a declared gap, not damage.
        let wal = Wal::open(&dir, opts(RecoveryMode::Absolute)).unwrap();
        assert_eq!(wal.append(b"after the gap").unwrap(), 721, "{what}");
        wal.close().unwrap();
        let r = keel_wal(&["dump", s(&dir)]);
        assert_eq!(r.code, 0, "{what}: {}", r.stderr);
        assert_eq!(dumped(&r.stdout).last().map(|d| d.0), Some(721), "{what}");
    }
}

/// Every segment gone and `wal.meta` left (or left damaged): open refuses
/// the log in every strict mode, and salvage opens it above the recorded
/// numbers; verify must say so, not call it an empty log.
#[test]
fn verify_finds_every_segment_removed_and_a_damaged_record_without_segments() {
    let _serial = serial();
    for damaged_meta in [false, true] {
        let what = if damaged_meta { "damaged wal.meta" } else { "wal.meta intact" };
        let t = TempDir::new("extent-none");
        let dir = t.path().join("wal");
        write_log(&dir, 600);
        for seg in segment_files(&dir) {
            std::fs::remove_file(seg).unwrap();
        }
        if damaged_meta {
            let meta = dir.join("wal.meta");
            let mut b = std::fs::read(&meta).unwrap();
            b[20] ^= 1;
            std::fs::write(&meta, b).unwrap();
        }
        for mode in ["tolerate_tail", "absolute", "point_in_time", "salvage"] {
            let r = keel_wal(&["verify", s(&dir), "--mode", mode]);
            assert_eq!(r.code, 1, "{what}, {mode}: {}{}", r.stdout, r.stderr);
            assert!(r.stdout.contains("wal.meta"), "{what}, {mode}: the record is not named:\n{}", r.stdout);
            let verdict = line(&r.stdout, "verdict: ");
            if mode == "salvage" {
                let next = if damaged_meta { " 1" } else { " 721" };
                assert!(verdict.starts_with("salvage would open") && verdict.ends_with(next), "{what}: {verdict}");
            } else {
                assert!(verdict.contains("would fail to open (CORRUPTION)"), "{what}, {mode}: {verdict}");
            }
            let opened = Wal::open(&dir, opts(scan_mode(mode)));
            assert_eq!(opened.is_ok(), mode == "salvage", "{what}, {mode}");
            match opened {
                Ok(wal) => {
                    assert_eq!(wal.append(b"after").unwrap(), if damaged_meta { 1 } else { 721 }, "{what}");
                    wal.close().unwrap();
                }
                Err(e) => assert_eq!(e.status, keel::status::KEEL_STATUS_CORRUPTION, "{what}, {mode}: {e}"),
            }
        }
    }
}

fn scan_mode(name: &str) -> RecoveryMode {
    match name {
        "tolerate_tail" => RecoveryMode::TolerateTail,
        "absolute" => RecoveryMode::Absolute,
        "point_in_time" => RecoveryMode::PointInTime,
        _ => RecoveryMode::Salvage,
    }
}

/// Issue #10 §6: things that are not a WAL are not "clean".
#[test]
fn verify_refuses_what_is_not_a_wal_directory() {
    let _serial = serial();
    let t = TempDir::new("notwal");
    // A directory named like a segment inside a log (Wal::open cannot read it).
    let dir = t.path().join("wal");
    write_log(&dir, 10);
    let fake = dir.join("00000000000000000500.wal");
    std::fs::create_dir(&fake).unwrap();
    let r = keel_wal(&["verify", s(&dir)]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stderr, format!("keel-wal: {} is named like a WAL segment but is not a regular file\n", fake.display()));
    let err = Wal::open(&dir, opts(RecoveryMode::TolerateTail)).err().expect("open fails on it too");
    assert!(err.message.contains("is named like a WAL segment but is not a regular file"), "{err}");

    // An engine's data directory: its logs are one level down per shard.
    let data = t.path().join("engine");
    let engine = keel::engine::Engine::open(&data, keel::shard::Options::default()).unwrap();
    drop(engine);
    for cmd in ["verify", "dump", "stat"] {
        let r = keel_wal(&[cmd, s(&data)]);
        assert_eq!(r.code, 3, "{cmd}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("is not a keel WAL directory"), "{cmd}: {}", r.stderr);
    }
    // An empty directory is an empty log.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(keel_wal(&["verify", s(&empty)]).code, 0);
}
