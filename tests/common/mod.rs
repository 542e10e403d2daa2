//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod child;
pub mod ext4;
pub mod faultfs;
pub mod hookfs;
pub mod lockstep;
pub mod relay;
pub mod rng;
pub mod shard_model;
pub mod side;
pub mod tripfs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "keel-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the folder `from` to `to`, with everything below it. The folder
/// may belong to an open shard or WAL whose background workers create and
/// rename files meanwhile (spares, extent records): a copy during which a
/// file vanished or the set of names changed is taken again, so the copy
/// holds one set of names, as a crash would leave them.
pub fn copy_tree(from: &Path, to: &Path) {
    for _ in 0..1000 {
        let names = tree_names(from);
        let _ = std::fs::remove_dir_all(to);
        match try_copy_tree(from, to) {
            Ok(()) if tree_names(from) == names => return,
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("copying {} to {}: {e}", from.display(), to.display()),
        }
    }
    panic!("{} kept changing through 1000 copies", from.display());
}

fn try_copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            try_copy_tree(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// Every path below `dir`, relative to it, sorted (a vanished entry is left out).
fn tree_names(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(dir.join(&rel)) else { continue };
        for e in rd.flatten() {
            let p = rel.join(e.file_name());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The segment files (`*.wal`) of a WAL directory, in log order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}
