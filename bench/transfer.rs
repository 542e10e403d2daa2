//! Shard transfer benchmark: the pipelined backfill against the same
//! transfer run sequentially (`TransferOptions::pipeline`), between two
//! processes in two network namespaces (bench/transfer/run.sh sets them up
//! and shapes the link; bench/README.md "Shard transfer" lists the cases).
//!
//! One binary, one role per process:
//!
//!   transfer fill --dir D --ops N
//!       builds the source shard (shard 1 of the engine in D): N operations
//!       of mixed sizes (100 B, 4 KiB, 1 MiB), then measures the shard's
//!       durable put rate; prints one JSON line.
//!   transfer case --dir D --netns NS --listen IP --delay-us U --mode pipelined|sequential
//!                 --iface IF --rate-bytes R --writer-rate W --out FILE
//!       the source (run inside the source's namespace): starts the
//!       receiver and the delaying relay in namespace NS (this binary again,
//!       through `ip netns exec`), sends shard 1 to it through the relay
//!       while a writer puts W operations a second (0: none), and writes the
//!       case's measurements to FILE as JSON.
//!   transfer receiver --dir D --listen ADDR
//!   transfer relay --listen ADDR --to ADDR --delay-us U
//!       print "addr <address>" once listening, run until their stdin
//!       closes, then print one JSON line: peak RSS and CPU time.
//!
//! The relay delays each direction by half of U microseconds: U of added
//! round trip. It ends the TCP connection on each side, so the source's
//! TCP sees the relay's acks, not the receiver's: a delay added this way
//! is not a longer path, and TCP's own ack timing is not reproduced.

use keel::engine::Engine;
use keel::node::{Node, NodeOptions};
use keel::shard::{Options, Shard};
use keel::transfer::{Finish, Method, Progress, ProgressFn, Stage, TransferOptions, Transfers};
use keel::wal::Durability;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARD: u32 = 1;
const SOURCE_NODE: u64 = 1;
const RECEIVER_NODE: u64 = 2;
/// Both nodes authenticate: the peers are not on loopback.
const SECRET: &[u8] = b"keel transfer benchmark secret!!";
/// Every `LARGE_EVERY`-th operation is 1 MiB, every `MEDIUM_EVERY`-th
/// of the rest 4 KiB, the others 100 B.
const LARGE_EVERY: u64 = 2000;
const MEDIUM_EVERY: u64 = 5;
const DURABLE_PROBE_OPS: u64 = 300;

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let Some(role) = argv.first().cloned() else { usage("no role") };
    let args = Flags::parse(&argv[1..]);
    match role.as_str() {
        "fill" => fill(&args),
        "case" => case(&args),
        "receiver" => receiver(&args),
        "relay" => relay(&args),
        other => usage(&format!("unknown role {other}")),
    }
}

fn usage(why: &str) -> ! {
    eprintln!("bench transfer: {why}; roles: fill, case, receiver, relay (see the top of bench/transfer.rs)");
    std::process::exit(2)
}

/// `--name value` pairs.
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(a: &[String]) -> Flags {
        let mut m = HashMap::new();
        let mut it = a.iter();
        while let Some(k) = it.next() {
            let Some(name) = k.strip_prefix("--") else { usage(&format!("unexpected argument {k}")) };
            let Some(v) = it.next() else { usage(&format!("--{name} needs a value")) };
            m.insert(name.to_string(), v.clone());
        }
        Flags(m)
    }
    fn s(&self, k: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| usage(&format!("--{k} is missing")))
    }
    fn n(&self, k: &str) -> u64 {
        self.s(k).parse().unwrap_or_else(|_| usage(&format!("--{k} must be a whole number")))
    }
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("bench transfer: {what}: {e}");
    std::process::exit(1)
}

/// A field of /proc/self/status in KiB.
fn status_kib(status: &str, name: &str) -> u64 {
    status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// Peak resident set (VmHWM) and the current one (VmRSS) in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (status_kib(&status, "VmHWM:"), status_kib(&status, "VmRSS:"))
}

/// The anonymous resident set (RssAnon) in KiB: the heap, without the
/// shard's files mapped for reading, which the peak RSS also counts.
fn anon_kib() -> u64 {
    status_kib(&std::fs::read_to_string("/proc/self/status").unwrap_or_default(), "RssAnon:")
}

/// Samples `anon_kib` every 2 ms until `stop`; returns the highest.
fn anon_peak(stop: Arc<AtomicBool>) -> u64 {
    let mut peak = 0;
    while !stop.load(Ordering::Acquire) {
        peak = peak.max(anon_kib());
        std::thread::sleep(Duration::from_millis(2));
    }
    peak.max(anon_kib())
}

/// User and system CPU seconds of this process so far.
fn cpu_secs() -> (f64, f64) {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(ru.ru_utime), s(ru.ru_stime))
}

/// The JSON line a helper process prints when it ends.
fn usage_json() -> String {
    let (hwm, _) = memory_kib();
    let (user, sys) = cpu_secs();
    format!("{{\"peak_rss_kib\":{hwm},\"cpu_user_s\":{user:.3},\"cpu_sys_s\":{sys:.3}}}")
}

fn value(i: u64) -> Vec<u8> {
    let len = if i % LARGE_EVERY == 0 {
        1 << 20
    } else if i % MEDIUM_EVERY == 0 {
        4096
    } else {
        100
    };
    vec![(i % 251) as u8; len]
}

fn open_source(dir: &Path, durability: Durability) -> (Arc<Engine>, Shard) {
    let engine = Arc::new(Engine::open(dir, Options { durability, ..Options::default() }).unwrap_or_else(|e| die("open the source", e)));
    let shard = engine.open_shard(SHARD, true).unwrap_or_else(|e| die("open the source shard", e));
    (engine, shard)
}

fn fill(a: &Flags) {
    let dir = PathBuf::from(a.s("dir"));
    let ops = a.n("ops");
    let mut bytes = 0u64;
    {
        let (engine, shard) = open_source(&dir, Durability::None);
        for i in 0..ops {
            let v = value(i);
            bytes += v.len() as u64;
            shard.put(format!("k{i:010}").as_bytes(), &v).unwrap_or_else(|e| die("fill", e));
        }
        shard.sync_wal().unwrap_or_else(|e| die("sync", e));
        shard.close().unwrap_or_else(|e| die("close", e));
        engine.close().unwrap_or_else(|e| die("close", e));
    }
    // The durable rate: one writer's sync puts of 100 B.
    let (engine, shard) = open_source(&dir, Durability::Sync);
    let began = Instant::now();
    for i in 0..DURABLE_PROBE_OPS {
        shard.put(format!("probe{i:06}").as_bytes(), &[7; 100]).unwrap_or_else(|e| die("probe", e));
    }
    let rate = DURABLE_PROBE_OPS as f64 / began.elapsed().as_secs_f64();
    shard.close().unwrap_or_else(|e| die("close", e));
    engine.close().unwrap_or_else(|e| die("close", e));
    println!("{{\"ops\":{ops},\"value_bytes\":{bytes},\"durable_puts_per_s\":{rate:.1}}}");
}

fn node(listen: &str, id: u64) -> Arc<Node> {
    Arc::new(
        Node::open(NodeOptions {
            node_id: id,
            listen: listen.to_string(),
            secrets: vec![SECRET.to_vec()],
            max_frame_bytes: 4 << 20,
            heartbeat_misses: 30,
            ..NodeOptions::default()
        })
        .unwrap_or_else(|e| die("open the node", e)),
    )
}

/// Prints the address, waits for stdin to close, prints the usage line.
fn serve_until_stdin_closes(addr: &str) {
    println!("addr {addr}");
    let _ = std::io::stdout().flush();
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    println!("{}", usage_json());
}

fn receiver(a: &Flags) {
    let engine = Arc::new(Engine::open(Path::new(&a.s("dir")), Options::default()).unwrap_or_else(|e| die("open the receiver", e)));
    let node = node(&a.s("listen"), RECEIVER_NODE);
    let transfers = Transfers::attach(node.clone(), engine.clone()).unwrap();
    transfers.expect(SHARD, SOURCE_NODE);
    serve_until_stdin_closes(&node.addr().to_string());
    let _ = node.close();
}

fn relay(a: &Flags) {
    let listener = TcpListener::bind(a.s("listen")).unwrap_or_else(|e| die("relay listen", e));
    let to = a.s("to");
    let half = Duration::from_micros(a.n("delay-us") / 2);
    let addr = listener.local_addr().unwrap_or_else(|e| die("relay address", e)).to_string();
    std::thread::spawn(move || {
        for down in listener.incoming().flatten() {
            let Ok(up) = TcpStream::connect(&to) else { continue };
            for s in [&down, &up] {
                let _ = s.set_nodelay(true);
            }
            let (d2, u2) = (down.try_clone().expect("clone"), up.try_clone().expect("clone"));
            std::thread::spawn(move || delayed_copy(down, up, half));
            std::thread::spawn(move || delayed_copy(u2, d2, half));
        }
    });
    serve_until_stdin_closes(&addr);
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
fn delayed_copy(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = crossbeam_channel::unbounded::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (at, chunk) in rx {
            let due = at + delay;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0; 256 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// A helper process in the other namespace, stopped by closing its stdin.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
    addr: String,
}

impl Helper {
    fn spawn(netns: &str, args: &[&str]) -> Helper {
        let exe = std::env::current_exe().unwrap_or_else(|e| die("own path", e));
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| die("spawn a helper", e));
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let Some(addr) = line.trim().strip_prefix("addr ").map(str::to_string) else {
            die("a helper did not start", format!("{args:?} said {line:?}"))
        };
        Helper { child, stdin, out, addr }
    }

    /// Stops it and returns its usage line.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let mut line = String::new();
        let _ = self.out.read_line(&mut line);
        let _ = self.child.wait();
        let line = line.trim().to_string();
        if line.starts_with('{') {
            line
        } else {
            "null".into()
        }
    }
}

fn iface_tx_bytes(iface: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/statistics/tx_bytes"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// When the backfill ended and how many bytes the link carried until then.
#[derive(Default, Clone, Copy)]
struct BackfillEnd {
    at: Option<Instant>,
    tx_bytes: u64,
    bytes_sent: u64,
}

/// Puts at `rate` a second until `stop`; returns each put's latency in µs.
fn writer(shard: Shard, rate: u64, stop: Arc<AtomicBool>) -> Vec<u64> {
    let began = Instant::now();
    let mut lat = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) {
        let due = began + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let t = Instant::now();
        if shard.put(format!("w{:010}", i % 10_000).as_bytes(), &[1; 100]).is_err() {
            break;
        }
        lat.push(t.elapsed().as_micros() as u64);
        i += 1;
    }
    lat
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn case(a: &Flags) {
    let dir = PathBuf::from(a.s("dir"));
    let netns = a.s("netns");
    let listen = a.s("listen");
    let iface = a.s("iface");
    let rate_bytes = a.n("rate-bytes");
    let writer_rate = a.n("writer-rate");
    let pipeline = match a.s("mode").as_str() {
        "pipelined" => true,
        "sequential" => false,
        m => usage(&format!("--mode {m} is not pipelined or sequential")),
    };
    let recv_dir = dir.join("receiver");
    let _ = std::fs::remove_dir_all(&recv_dir);
    std::fs::create_dir_all(&recv_dir).unwrap_or_else(|e| die("receiver dir", e));
    let recv_dir_s = recv_dir.to_string_lossy().to_string();
    let receiver = Helper::spawn(&netns, &["receiver", "--dir", &recv_dir_s, "--listen", "127.0.0.1:0"]);
    let delay = a.s("delay-us");
    let relay = Helper::spawn(&netns, &["relay", "--listen", &format!("{listen}:0"), "--to", &receiver.addr, "--delay-us", &delay]);

    let (engine, shard) = open_source(&dir.join("source"), Durability::Sync);
    let node = node("0.0.0.0:0", SOURCE_NODE);
    let transfers = Transfers::attach(node.clone(), engine.clone()).unwrap();
    node.connect(RECEIVER_NODE, &relay.addr).unwrap_or_else(|e| die("connect", e));
    // The peak from here on: the transfer's memory, not the shard's open.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (_, rss_before) = memory_kib();
    let anon_before = anon_kib();
    let cpu_before = cpu_secs();

    let end = Arc::new(Mutex::new(BackfillEnd::default()));
    let tx0 = iface_tx_bytes(&iface);
    let progress = {
        let (end, iface) = (end.clone(), iface.clone());
        ProgressFn(Arc::new(move |p: &Progress| {
            let over = !matches!(p.stage, Stage::Connecting | Stage::Backfill | Stage::CatchingUp);
            let mut e = end.lock().unwrap();
            if over && e.at.is_none() {
                *e = BackfillEnd { at: Some(Instant::now()), tx_bytes: iface_tx_bytes(&iface), bytes_sent: p.report.bytes };
            }
        }))
    };
    let opts = TransferOptions {
        method: Method::Snapshot,
        auto_finish: Some(Finish::Copy),
        progress: Some(progress),
        pipeline,
        ..TransferOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let w = (writer_rate > 0).then(|| {
        let (s, stop) = (shard.clone(), stop.clone());
        std::thread::spawn(move || writer(s, writer_rate, stop))
    });
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || anon_peak(stop))
    };
    let began = Instant::now();
    let r = transfers.send_shard(&shard, SHARD, RECEIVER_NODE, &opts).unwrap_or_else(|e| die("transfer", e));
    let drain = began.elapsed();
    let tx1 = iface_tx_bytes(&iface);
    stop.store(true, Ordering::Release);
    let mut lat = w.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    let anon_peak = sampler.join().unwrap_or_default();
    lat.sort_unstable();
    let (hwm, _) = memory_kib();
    let cpu_after = cpu_secs();
    let relay_usage = relay.finish();
    let receiver_usage = receiver.finish();
    let _ = node.close();
    drop(shard);
    let _ = engine.close();
    let _ = std::fs::remove_dir_all(&recv_dir);

    let e = *end.lock().unwrap();
    let backfill = e.at.map(|t| t - began).unwrap_or(drain);
    let link_backfill = if e.at.is_some() { e.tx_bytes - tx0 } else { tx1 - tx0 };
    let secs = |d: Duration| d.as_secs_f64();
    let j = format!(
        concat!(
            "{{\"mode\":\"{}\",\"delay_us\":{},\"rate_bytes\":{},\"writer_rate\":{},",
            "\"drain_s\":{:.6},\"backfill_s\":{:.6},\"bytes\":{},\"backfill_bytes\":{},\"entries\":{},\"ops\":{},\"batches\":{},",
            "\"read_s\":{:.6},\"send_s\":{:.6},\"final_hold_us\":{},\"max_batches_in_memory\":{},\"max_batch_bytes\":{},",
            "\"link_bytes\":{},\"link_backfill_bytes\":{},",
            "\"writer_puts\":{},\"writer_p50_us\":{},\"writer_p99_us\":{},",
            "\"source\":{{\"peak_rss_kib\":{},\"rss_before_kib\":{},\"peak_anon_kib\":{},\"anon_before_kib\":{},\"cpu_user_s\":{:.3},\"cpu_sys_s\":{:.3}}},",
            "\"receiver\":{},\"relay\":{}}}"
        ),
        if pipeline { "pipelined" } else { "sequential" },
        delay,
        rate_bytes,
        writer_rate,
        secs(drain),
        secs(backfill),
        r.bytes,
        e.bytes_sent,
        r.entries,
        r.ops,
        r.batches,
        secs(r.read_time),
        secs(r.send_time),
        r.final_hold.as_micros(),
        r.max_batches_in_memory,
        opts.max_batch_bytes,
        tx1 - tx0,
        link_backfill,
        lat.len(),
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        hwm,
        rss_before,
        anon_peak,
        anon_before,
        cpu_after.0 - cpu_before.0,
        cpu_after.1 - cpu_before.1,
        receiver_usage,
        relay_usage,
    );
    std::fs::write(a.s("out"), j + "\n").unwrap_or_else(|e| die("write the result", e));
}
