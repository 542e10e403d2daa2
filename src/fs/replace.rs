//! Replacing a small file so that a crash leaves the old or the new one,
//! never a mix: write `<path>.tmp`, fdatasync it, rename it over `path`,
//! fsync the directory. The shards' state, manifest and delete files, the
//! engine's shard list, the WAL's extent record and the fence table's
//! high-water mark all go this one way.

use super::FileSystem;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Suffix of a file being replaced; a leftover one is an unfinished
/// replace (the old file still stands) and may be removed.
pub const TMP_SUFFIX: &str = ".tmp";

/// `path` with `TMP_SUFFIX` appended.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// Replaces `path` with `bytes` atomically and durably. On failure the
/// temporary file is removed (best effort) and the old file stays; the
/// error names the step and the file.
pub fn replace(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let step = |what: &str, p: &Path| {
        let what = format!("{what} {}", p.display());
        move |e| Error::io(what, e)
    };
    let written = (|| {
        let f = fs.create(&tmp).map_err(step("creating", &tmp))?;
        f.write_at(&[bytes], 0).map_err(step("writing", &tmp))?;
        f.sync_data().map_err(step("syncing", &tmp))?;
        fs.rename(&tmp, path).map_err(step("renaming into place", &tmp))
    })();
    if written.is_err() {
        let _ = fs.remove(&tmp);
    }
    written?;
    fs.sync_dir(dir).map_err(step("syncing", dir))
}
