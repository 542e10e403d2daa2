//! A fresh directory for a unit test, removed when the test is done with
//! it (integration tests have their own, `tests/common`).

use std::path::{Path, PathBuf};

/// An empty directory under the system's temp directory, named by the
/// test's `tag` and the process id (so that test binaries running at the
/// same time never share one). Whatever an earlier, interrupted run left
/// there is removed first; the directory goes when this is dropped.
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("keel-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
