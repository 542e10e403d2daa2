//! `keel-wal`: inspects a keel write-ahead log without modifying it.
//! Usage, output and exit codes: docs/TOOLS.md. The checks mirror recovery
//! (docs/WAL.md), reimplemented read-only in `scan.rs`.

mod scan;

use keel::wal::format::{records, FRAME_BATCH, FRAME_MARK};
use keel::wal::extent::{self, Problem};
use keel::wal::RecoveryMode;
use keel::wal::scan::{kept_end, Damage, Frame, SegmentFile, SegmentScan};
use scan::{IoFail, Listing};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage: keel-wal dump DIR [--from SEQ] [--hex]
       keel-wal verify DIR [--mode tolerate_tail|absolute|point_in_time|salvage]
       keel-wal stat DIR

Inspects the keel WAL in DIR (or a single segment file) without changing it.
  dump    every record: sequence, segment, offset, length, frame type, payload
  verify  checks every segment header and frame; reports the first damage,
          torn tail or corruption, and whether Wal::open in MODE would open
  stat    segments, sequence range, durable watermark, stray files
Exit status: 0 clean, 1 damage or missing segments found, 2 usage error,
3 not a WAL or cannot be read, 4 dump --from is beyond the last record.
";

enum Fail {
    Usage(String),
    Io(String),
    /// `dump --from` names a record after the last one.
    Beyond(String),
    /// Writing our own output failed (a closed pipe ends the program quietly).
    Out(io::Error),
}

impl From<IoFail> for Fail {
    fn from(e: IoFail) -> Fail {
        Fail::Io(e.0)
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Out(e)
    }
}

enum Command {
    Help,
    Dump { dir: PathBuf, from: Option<u64>, hex: bool },
    Verify { dir: PathBuf, mode: RecoveryMode },
    Stat { dir: PathBuf },
}

fn parse_args(args: &[String]) -> Result<Command, Fail> {
    let usage = |msg: String| Fail::Usage(msg);
    if args.iter().any(|a| a == "-h" || a == "--help" || a == "help") {
        return Ok(Command::Help);
    }
    let (cmd, rest) = args.split_first().ok_or_else(|| usage("no command given".into()))?;
    let mut dir: Option<PathBuf> = None;
    let (mut from, mut hex, mut mode) = (None, false, None);
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        // --opt VALUE or --opt=VALUE
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, Fail> {
            inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| usage(format!("{name} needs a value")))
        };
        match (cmd.as_str(), name) {
            ("dump", "--from") => {
                let v = value()?;
                from = Some(v.parse().map_err(|_| usage(format!("--from wants a sequence number, not '{v}'")))?);
            }
            ("dump", "--hex") if inline.is_none() => hex = true,
            ("verify", "--mode") => {
                let v = value()?;
                mode = Some(scan::parse_mode(&v).ok_or_else(|| usage(format!("unknown recovery mode '{v}'")))?);
            }
            (_, n) if n.starts_with('-') && n != "-" => return Err(usage(format!("unknown option '{arg}' for {cmd}"))),
            _ if dir.is_none() => dir = Some(PathBuf::from(arg)),
            _ => return Err(usage(format!("unexpected argument '{arg}'"))),
        }
    }
    let known = ["dump", "verify", "stat"];
    if !known.contains(&cmd.as_str()) {
        return Err(usage(format!("unknown command '{cmd}'")));
    }
    let dir = dir.ok_or_else(|| usage(format!("{cmd} needs a WAL directory")))?;
    Ok(match cmd.as_str() {
        "dump" => Command::Dump { dir, from, hex },
        "verify" => Command::Verify { dir, mode: mode.unwrap_or(RecoveryMode::TolerateTail) },
        _ => Command::Stat { dir },
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = parse_args(&args).and_then(|cmd| match cmd {
        Command::Help => out.write_all(USAGE.as_bytes()).map(|_| 0).map_err(Fail::Out),
        Command::Dump { dir, from, hex } => dump(&mut out, &dir, from, hex),
        Command::Verify { dir, mode } => verify(&mut out, &dir, mode),
        Command::Stat { dir } => stat(&mut out, &dir),
    });
    let result = result.and_then(|code| out.flush().map(|_| code).map_err(Fail::Out));
    let code = match result {
        Ok(code) => code,
        Err(Fail::Usage(msg)) => {
            let _ = out.flush();
            eprint!("keel-wal: {msg}\n{USAGE}");
            2
        }
        Err(Fail::Io(msg)) => {
            let _ = out.flush();
            eprintln!("keel-wal: {msg}");
            3
        }
        Err(Fail::Beyond(msg)) => {
            let _ = out.flush();
            eprintln!("keel-wal: {msg}");
            4
        }
        Err(Fail::Out(e)) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(Fail::Out(e)) => {
            eprintln!("keel-wal: writing output: {e}");
            3
        }
    };
    ExitCode::from(code)
}

// ---- dump ------------------------------------------------------------------

fn dump(out: &mut impl Write, path: &Path, from: Option<u64>, hex: bool) -> Result<u8, Fail> {
    let l = scan::list(path)?;
    if let Some(meta) = &l.meta {
        print_extent(out, meta)?;
    }
    let Some(first) = l.segments.first() else {
        eprintln!("keel-wal: {} holds no WAL segments", path.display());
        return Ok(complain_of_extent(out, &l, &[])?);
    };
    let from = from.unwrap_or(0);
    if from != 0 && from < first.first_seq {
        eprintln!("keel-wal: note: sequence {from} is below the first retained record {}", first.first_seq);
    }
    // Segments that end before `from` are not read at all.
    let start = l.segments.iter().rposition(|s| s.first_seq <= from).unwrap_or(0);
    let mut scans: Vec<SegmentScan> = Vec::new();
    let mut end = first.first_seq;
    for seg in &l.segments[start..] {
        let bytes = scan::read_segment(&seg.path)?;
        // The same chain check as recovery (a declared gap is no damage).
        let quiet = keel::wal::scan::scan_segment(seg.clone(), &bytes, |_, _| Ok::<(), io::Error>(()))?;
        if let Some(why) = scans.last().and_then(|p| keel::wal::scan::does_not_follow(p, &quiet)) {
            eprintln!("keel-wal: stopped before segment {}: {why}; see `keel-wal verify`", seg.path.display());
            return Ok(1);
        }
        let s = keel::wal::scan::scan_segment(seg.clone(), &bytes, |f, frame| print_frame(out, f, &frame, from, hex))?;
        if let Some(allocated) = s.shortened {
            // Records may follow in the next segment only if it follows
            // this one; the chain check above says so at its turn.
            let last = l.segments.last().is_some_and(|f| f.path == seg.path);
            if last {
                out.flush()?;
                eprintln!(
                    "keel-wal: stopped at the end of segment {}: {} bytes where its header says {allocated} were allocated: its tail was cut; see `keel-wal verify`",
                    seg.path.display(),
                    bytes.len()
                );
                return Ok(1);
            }
        }
        if let Some((offset, why)) = &s.damage {
            out.flush()?;
            eprintln!(
                "keel-wal: stopped at damage in segment {} at offset {offset} (sequence {}): {why}; see `keel-wal verify`",
                seg.path.display(),
                s.next_seq
            );
            return Ok(1);
        }
        end = s.next_seq;
        scans.push(s);
    }
    if from >= end {
        let last = if end > first.first_seq { format!("the last record is {}", end - 1) } else { "the log holds no record".to_string() };
        return Err(Fail::Beyond(format!("sequence {from} is beyond the end of the log in {}: {last}", path.display())));
    }
    // Segments before `from` were not read: nothing to compare them with.
    match start {
        0 => Ok(complain_of_extent(out, &l, &scans)?),
        _ => Ok(0),
    }
}

/// What `wal.meta` says, as a `#` line before the records.
fn print_extent(out: &mut impl Write, meta: &extent::MetaFile) -> io::Result<()> {
    match meta {
        extent::MetaFile::Present(e) => {
            let names: Vec<String> = e.segments.iter().map(|&(first, _)| keel::wal::segment_file_name(first)).collect();
            writeln!(out, "# extent durable={} next={} segments={}", e.durable, e.next_seq, names.join(","))
        }
        extent::MetaFile::Damaged(why) => writeln!(out, "# extent {} is damaged: {why}", extent::META_NAME),
        extent::MetaFile::Missing => writeln!(out, "# extent none (no {})", extent::META_NAME),
    }
}

/// The extent record's complaints about `scans`, every segment of the
/// log read without damage, on stderr as `verify` reports them; 1 when
/// there are any (`Wal::open` would refuse the log), else 0.
fn complain_of_extent(out: &mut impl Write, l: &Listing, scans: &[SegmentScan]) -> io::Result<u8> {
    let problems = l.meta.as_ref().map_or(Vec::new(), |m| extent::check(m, scans, kept_end(scans, None)));
    out.flush()?;
    for p in &problems {
        eprintln!("keel-wal: missing: {p}; see `keel-wal verify`");
    }
    Ok(!problems.is_empty() as u8)
}

fn print_frame(out: &mut impl Write, seg: &SegmentFile, f: &Frame<'_>, from: u64, hex: bool) -> io::Result<()> {
    let h = &f.header;
    if h.kind == FRAME_MARK {
        if h.seq >= from {
            writeln!(out, "# mark segment={} offset={} next={} durable={} (clean close)", seg.name, f.offset, h.seq, h.durable)?;
        }
        return Ok(());
    }
    let recs = records(h.kind, h.count, f.payload).expect("a valid frame splits into its records");
    for (i, rec) in recs.iter().enumerate() {
        let seq = h.seq + i as u64;
        if seq < from {
            continue;
        }
        let kind = match h.kind {
            FRAME_BATCH => format!("batch[{}/{}]", i + 1, h.count),
            _ => "record".to_string(),
        };
        write!(out, "seq={seq} segment={} offset={} len={} type={kind}", seg.name, f.offset, rec.len())?;
        if hex {
            writeln!(out)?;
            hex_dump(out, rec)?;
        } else {
            writeln!(out, " payload=\"{}\"", escape(rec))?;
        }
    }
    Ok(())
}

/// Printable ASCII as is; quotes, backslashes and everything else escaped.
fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        match c {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

fn hex_dump(out: &mut impl Write, b: &[u8]) -> io::Result<()> {
    for (i, chunk) in b.chunks(16).enumerate() {
        let mut hex = String::with_capacity(50);
        for (j, c) in chunk.iter().enumerate() {
            hex.push_str(&format!("{}{c:02x}", if j == 8 { "  " } else { " " }));
        }
        let text: String = chunk.iter().map(|&c| if (0x20..=0x7e).contains(&c) { c as char } else { '.' }).collect();
        writeln!(out, "    {:08x} {hex:<49}  |{text}|", i * 16)?;
    }
    Ok(())
}

// ---- verify ----------------------------------------------------------------

fn verify(out: &mut impl Write, path: &Path, mode: RecoveryMode) -> Result<u8, Fail> {
    let l = scan::list(path)?;
    let scans = scan::scan_all(&l)?;
    writeln!(out, "verify {} (mode {})", path.display(), scan::mode_name(mode))?;
    let damage = keel::wal::scan::find_damage(&scans);
    let sum = scan::summarize(&scans, damage.as_ref());
    let kept_end = kept_end(&scans, damage.as_ref());
    let problems = l.meta.as_ref().map_or(Vec::new(), |m| extent::check(m, &scans, kept_end));
    match (scans.first(), scans.last()) {
        (Some(first), Some(last)) => writeln!(out, "segments: {} checked ({} .. {})", scans.len(), first.file.name, last.file.name)?,
        // No segment, but an extent record that lists some, or is damaged:
        // every segment is lost, and open refuses the log as it does any
        // other loss the record proves.
        _ if !problems.is_empty() => writeln!(out, "segments: none")?,
        _ => {
            writeln!(out, "clean: no segments (an empty log; Wal::open would create the first one)")?;
            writeln!(out, "verdict: {} would open", scan::mode_name(mode))?;
            return Ok(0);
        }
    }
    // A single segment file has no extent record: its header, hints and
    // a cut tail still bound the numbers handed out, as for a log without one.
    let next = kept_end.max(extent::next_floor(l.meta.as_ref().unwrap_or(&extent::MetaFile::Missing), &scans, false));
    let code = match &damage {
        None if !problems.is_empty() => {
            writeln!(out, "valid log: {}", range(&sum))?;
            report_extent(out, &problems)?;
            writeln!(out, "verdict: {}", extent_verdict(mode, next, kept_end))?;
            let others: Vec<String> = scan::MODES
                .iter()
                .filter(|m| **m != mode)
                .map(|m| format!("{} would {}", scan::mode_name(*m), if *m == RecoveryMode::Salvage { "open" } else { "fail" }))
                .collect();
            writeln!(out, "other modes: {}", others.join(", "))?;
            1
        }
        None => {
            let hint = sum.max_hint.map_or("none".to_string(), |h| h.to_string());
            match sum.clean_close {
                Some(_) => writeln!(out, "clean: {}; ends with a MARK frame (clean close), durable hint {hint}", range(&sum))?,
                None => writeln!(out, "clean: {}; no MARK at the end (not closed cleanly, or open), durable hint {hint}", range(&sum))?,
            }
            writeln!(out, "verdict: {} would open; the next append gets sequence {next}", scan::mode_name(mode))?;
            0
        }
        Some(d) => {
            report_damage(out, &scans, d)?;
            writeln!(out, "valid prefix: {}", range(&sum))?;
            report_extent(out, &problems)?;
            let opens = |m: RecoveryMode| d.opens(m) && (problems.is_empty() || m == RecoveryMode::Salvage);
            writeln!(out, "verdict: {}", verdict(&scans, d, mode, opens(mode), next))?;
            let others: Vec<String> = scan::MODES
                .iter()
                .filter(|m| **m != mode)
                .map(|m| format!("{} would {}", scan::mode_name(*m), if opens(*m) { "open" } else { "fail" }))
                .collect();
            writeln!(out, "other modes: {}", others.join(", "))?;
            1
        }
    };
    if !l.temp.is_empty() {
        writeln!(out, "note: open would remove {} stray temp file(s): {}", l.temp.len(), l.temp.join(" "))?;
    }
    if !l.salvaged.is_empty() {
        writeln!(out, "note: {} salvaged folder(s) from earlier recoveries: {}", l.salvaged.len(), l.salvaged.join(" "))?;
    }
    Ok(code)
}

fn range(sum: &scan::Summary) -> String {
    match sum.range {
        Some((a, b)) => format!("records {a}..{b} ({} records)", sum.records),
        None => "no records".to_string(),
    }
}

fn report_damage(out: &mut impl Write, scans: &[SegmentScan], d: &Damage) -> io::Result<()> {
    let seg = &scans[d.seg];
    writeln!(out, "damage: segment {} offset {} sequence {}: {}", seg.file.path.display(), d.offset, d.seq, d.reason)?;
    if d.bad_header {
        writeln!(out, "kind: corruption (a damaged segment header; headers are synced before a segment is used)")?;
    }
    if d.shortened {
        writeln!(out, "kind: corruption (the file was cut short: no crash shortens a segment, and what was cut may have been durable)")?;
    }
    match d.proof {
        Some((i, at, hint)) => writeln!(
            out,
            "kind: corruption (the valid frame at {} offset {at} has durable hint {hint} >= {}: it was written after sequence {} was durable)",
            scans[i].file.name, d.seq, d.seq
        )?,
        None if !d.bad_header && !d.shortened => writeln!(
            out,
            "kind: torn tail (no later valid frame has a durable hint >= {}: the unsynced end a crash leaves{})",
            d.seq,
            if d.evidence { "; valid frames follow it" } else { "" }
        )?,
        None => {}
    }
    Ok(())
}

/// The extent record's complaints (docs/WAL.md, "The extent record").
fn report_extent(out: &mut impl Write, problems: &[Problem]) -> io::Result<()> {
    for p in problems {
        writeln!(out, "missing: {p}")?;
    }
    Ok(())
}

fn extent_verdict(mode: RecoveryMode, next: u64, kept_end: u64) -> String {
    let name = scan::mode_name(mode);
    match mode {
        RecoveryMode::Salvage => format!("{name} would open, report what is missing{}", skips(next, kept_end)),
        _ => format!("{name} would fail to open (CORRUPTION); nothing would change"),
    }
}

fn skips(next: u64, kept_end: u64) -> String {
    if next > kept_end {
        format!(" and skip sequences {kept_end}..{}: the next append gets {next}", next - 1)
    } else {
        format!("; the next append gets sequence {next}")
    }
}

fn verdict(scans: &[SegmentScan], d: &Damage, mode: RecoveryMode, opens: bool, next: u64) -> String {
    let name = scan::mode_name(mode);
    if opens {
        let end = kept_end(scans, Some(d));
        format!("{name} would open after repairing: {}{}", scan::repair(d, scans, next > end), skips(next, end))
    } else {
        format!("{name} would fail to open (CORRUPTION); nothing would change")
    }
}

// ---- stat ------------------------------------------------------------------

fn stat(out: &mut impl Write, path: &Path) -> Result<u8, Fail> {
    let l: Listing = scan::list(path)?;
    let scans = scan::scan_all(&l)?;
    let damage = keel::wal::scan::find_damage(&scans);
    let sum = scan::summarize(&scans, damage.as_ref());
    writeln!(out, "log: {}", path.display())?;
    writeln!(out, "segments: {}", scans.len())?;
    if !scans.is_empty() {
        let w = scans.iter().map(|s| s.file.name.len()).max().unwrap_or(0).max(7);
        writeln!(out, "  {:<w$}  {:>12}  {:>12}  {:>12}  {:>8}  {:>12}", "segment", "first_seq", "last_seq", "size", "frames", "used")?;
        for s in &scans {
            let last = if s.next_seq > s.file.first_seq { (s.next_seq - 1).to_string() } else { "-".to_string() };
            write!(
                out,
                "  {:<w$}  {:>12}  {:>12}  {:>12}  {:>8}  {:>12}",
                s.file.name, s.file.first_seq, last, s.file.size, s.frames, s.end
            )?;
            match (&s.header, &s.damage) {
                (Err(why), _) => writeln!(out, "  bad header: {why}")?,
                (Ok(_), Some((at, why))) => writeln!(out, "  damage at offset {at}: {why}")?,
                _ => writeln!(out)?,
            }
        }
    }
    writeln!(out, "sequences: {}", range(&sum))?;
    let total: u64 = scans.iter().map(|s| s.file.size).sum();
    writeln!(out, "total size: {total} bytes in {} segment(s)", scans.len())?;
    match sum.max_hint {
        Some(h) => writeln!(out, "durable watermark on disk: {h} (largest durable hint)")?,
        None => writeln!(out, "durable watermark on disk: none (no frames)")?,
    }
    match sum.clean_close {
        Some(_) => writeln!(out, "clean close: yes (the log ends with a MARK frame)")?,
        None => writeln!(out, "clean close: no (the log does not end with a MARK frame)")?,
    }
    writeln!(out, "temp files: {}", list_or_none(&l.temp))?;
    writeln!(out, "salvaged folders: {}", list_or_none(&l.salvaged))?;
    if !l.other.is_empty() {
        writeln!(out, "other files: {}", l.other.join(" "))?;
    }
    let problems = l.meta.as_ref().map_or(Vec::new(), |m| extent::check(m, &scans, kept_end(&scans, damage.as_ref())));
    for p in &problems {
        writeln!(out, "missing: {p}; see `keel-wal verify`")?;
    }
    if let Some(d) = &damage {
        let kind = if d.torn_tail() { "torn tail" } else { "corruption" };
        writeln!(
            out,
            "damage: {kind} in segment {} at offset {} (sequence {}): {}; see `keel-wal verify`",
            scans[d.seg].file.name, d.offset, d.seq, d.reason
        )?;
    }
    Ok(0)
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(" ")
    }
}
