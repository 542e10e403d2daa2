//! A small ext4 file system of the tests' own: an image on a tmpfs of its
//! own, mounted on a loop device. Real kernel behaviour on demand: the
//! file system can be filled (ENOSPC), and the device under it can be made
//! to fail its writes (EIO), by filling the tmpfs that holds the image so
//! that blocks the image never wrote cannot be stored.
//!
//! Needs root, `mkfs.ext4`, `e2fsck` and a loop device; `mount` says so
//! and returns None where they are missing.
//!
//! One image at a time per test process (`ONE_AT_A_TIME`): a process
//! forked to run `mount`, `umount` or `e2fsck` for one test holds a copy
//! of every descriptor of the test process until it calls exec, those of
//! another test's files in its image too, and that test's umount then
//! fails with EBUSY though it closed them all.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Ext4Image {
    base: PathBuf,
    /// The tmpfs holding the image.
    backing: PathBuf,
    image: PathBuf,
    /// Where the file system is mounted.
    pub at: PathBuf,
    /// Held from the mount until the image is dropped (unmounted).
    _alone: MutexGuard<'static, ()>,
}

fn run(c: &mut Command) -> bool {
    c.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Runs `c`; on failure, what it printed.
fn run_or_say(c: &mut Command) -> Result<(), String> {
    match c.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("{}: {}{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))),
        Err(e) => Err(e.to_string()),
    }
}

impl Ext4Image {
    /// A fresh file system of `mib` MiB, mounted.
    pub fn mount(tag: &str, mib: u64) -> Option<Ext4Image> {
        // A test that failed holding it poisoned it; the image it held is
        // unmounted all the same (Drop).
        let alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let base = std::env::temp_dir().join(format!("keel-ext4-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let backing = base.join("backing");
        let at = base.join("mnt");
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&at).unwrap();
        let image = backing.join("ext4.img");
        let size = format!("size={}m", mib + 16);
        // -m 0: no blocks reserved for root, which the tests run as.
        let mounted = run(Command::new("mount").args(["-t", "tmpfs", "-o", &size, "tmpfs"]).arg(&backing))
            && std::fs::File::create(&image).and_then(|f| f.set_len(mib << 20)).is_ok()
            && run(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image))
            && run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&at));
        let disk = Ext4Image { base, backing, image, at, _alone: alone };
        if !mounted {
            eprintln!("skipped: cannot make and mount an ext4 image (needs root, mkfs.ext4 and a loop device)");
            return None;
        }
        Some(disk)
    }

    /// Fills the file system up to `leave` free bytes with a file of its
    /// own; returns its path.
    pub fn fill(&self, leave: u64) -> PathBuf {
        let path = self.at.join("filler");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let chunk = vec![0xAAu8; 64 << 10];
        loop {
            let room = self.free().saturating_sub(leave);
            if room == 0 || f.write_all(&chunk[..(room as usize).min(chunk.len())]).is_err() {
                break;
            }
        }
        f.sync_all().unwrap();
        path
    }

    /// Free bytes in the file system.
    pub fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.at.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `path` is NUL-terminated and `s` is a statvfs the call
        // fills; a zeroed one is a valid value of that plain C struct.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut s), 0, "statvfs {}", self.at.display());
            s.f_bavail as u64 * s.f_frsize as u64
        }
    }

    /// From now on the device fails every write to a block the image has
    /// not stored yet, as a thin-provisioned volume out of space does: the
    /// tmpfs under the image is filled.
    pub fn fail_writes(&self) {
        let mut f = std::fs::File::create(self.device_filler()).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
    }

    /// The device stores writes again.
    pub fn heal(&self) {
        std::fs::remove_file(self.device_filler()).unwrap();
    }

    fn device_filler(&self) -> PathBuf {
        self.backing.join("filler")
    }

    /// Unmounts the file system, repairs it as an operator would after a
    /// device failure (`e2fsck -fy`) and mounts it again.
    pub fn remount(&self) {
        if let Err(e) = run_or_say(Command::new("umount").arg(&self.at)) {
            panic!("umount {}: {e}; open in it: {:?}", self.at.display(), self.open_in_it());
        }
        // 0: clean, 1 or 2: errors corrected; more: not repaired.
        let fsck = Command::new("e2fsck").arg("-fy").arg(&self.image).output().unwrap();
        assert!(fsck.status.code().is_some_and(|c| c <= 2), "e2fsck: {}", String::from_utf8_lossy(&fsck.stdout));
        assert!(run(Command::new("mount").args(["-o", "loop"]).arg(&self.image).arg(&self.at)), "mount again");
    }

    /// This process's descriptors of files in the mounted file system.
    fn open_in_it(&self) -> Vec<PathBuf> {
        let fds = std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten();
        fds.filter_map(|fd| std::fs::read_link(fd.path()).ok()).filter(|p| p.starts_with(&self.at)).collect()
    }
}

impl Drop for Ext4Image {
    /// Lazily, should a failed test have left files open.
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).output();
        let _ = Command::new("umount").arg("-l").arg(&self.backing).output();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
