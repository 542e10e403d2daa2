//! Child processes that report through a pipe, for the kill -9 tests: the
//! parent runs this test binary again for one test, with the write end of
//! a pipe at `PIPE_FD`, and reads the child's lines until it dies.

use std::io::{BufRead, BufReader};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;

/// Where a child finds its end of the pipe.
pub const PIPE_FD: i32 = 100;

/// Child side: writes one report line. A pipe write shorter than PIPE_BUF
/// is atomic, so lines of several threads never interleave and a kill
/// never leaves half a line. Exits (status 4) when the parent is gone.
pub fn report(line: &str) {
    let b = line.as_bytes();
    // SAFETY: `b` is a live byte slice of b.len() bytes; PIPE_FD is the
    // write end the parent dup2()ed in before exec (a bad fd is an error).
    if unsafe { libc::write(PIPE_FD, b.as_ptr() as *const libc::c_void, b.len()) } != b.len() as isize {
        std::process::exit(4);
    }
}

/// A running child and the lines it reports (the channel ends when the
/// child's end of the pipe closes: it exited or was killed).
pub struct Child {
    pub process: std::process::Child,
    pub lines: mpsc::Receiver<String>,
}

/// Parent side: runs test `test` of this binary alone in a child, with the
/// environment `env`, stdin closed and its output to `output` (None: its
/// stdout is dropped and stderr shared). The child dies with the parent.
pub fn spawn(test: &str, env: &[(&str, String)], output: Option<std::fs::File>) -> Result<Child, String> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    let (rd, wr) = (fds[0], fds[1]);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    // --include-ignored: a test run by hand (#[ignore]) runs its child too.
    cmd.args([test, "--exact", "--include-ignored", "--nocapture", "--test-threads=1"]).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    match output {
        Some(out) => cmd.stdout(Stdio::from(out.try_clone().map_err(|e| format!("output: {e}"))?)).stderr(Stdio::from(out)),
        None => cmd.stdout(Stdio::null()),
    };
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: two syscalls (dup2, prctl) and
    // errno, without allocating or taking locks.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on the copy: only the child keeps a
            // write end, so the parent sees EOF once it is dead.
            if libc::dup2(wr, PIPE_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Do not outlive a parent that died or was killed.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let process = cmd.spawn();
    // SAFETY: `wr` is the parent's write end from pipe2 above, owned by
    // nothing else (the child has its own copy); closed once, here.
    unsafe { libc::close(wr) };
    // SAFETY: `rd` is the read end from pipe2 above, owned by nothing
    // else: the File takes it over and is its only closer.
    let reader = unsafe { std::fs::File::from_raw_fd(rd) };
    let process = process.map_err(|e| format!("spawning the child: {e}"))?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(Child { process, lines })
}
