//! Small durable-file helpers shared by the log store, the state machine and node identity.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new contents,
/// never a mix: write a sibling temp file, fsync it, rename it over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).context(|| format!("create {}", tmp.display()))?;
    file.write_all(bytes).context(|| format!("write {}", tmp.display()))?;
    file.sync_all().context(|| format!("fsync {}", tmp.display()))?;
    fs::rename(&tmp, path).context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    sync_parent(path)
}

/// fsyncs the directory holding `path`, making a rename or create in it durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).context(|| format!("fsync directory {}", dir.display()))
}

/// Reads a JSON file, `None` if it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| crate::Error::Config(format!("{} is not valid JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::Error::io(format!("read {}", path.display()), e)),
    }
}
