//! Step three of a restore: put the verified image in place without ever
//! exposing a partial file or clobbering a database nobody asked to replace.
//!
//! The image is built in a hidden temp file in the target's own directory (so
//! the final rename is atomic and never crosses filesystems), fsynced, the
//! target's stale `-wal`/`-shm` removed (a leftover WAL would otherwise be
//! replayed over the restored pages), renamed into place, and the directory
//! fsynced so the rename survives a crash.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

/// What is at the restore target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Nothing there.
    Absent,
    /// A zero-byte file: nothing to lose, replaced without `--force`.
    Empty,
    /// An SQLite database.
    Database,
    /// A file that is not an SQLite database.
    NotSqlite,
}

/// The directory a target lives in (`.` for a bare file name).
pub fn target_dir(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Looks at the target without changing anything. A missing directory is an
/// error here, before anything is downloaded.
pub fn inspect(target: &Path) -> Result<TargetState, Error> {
    let dir = target_dir(target);
    if !dir.is_dir() {
        return Err(Error::Other(format!(
            "cannot restore to {}: directory {} does not exist",
            target.display(),
            dir.display()
        )));
    }
    let meta = match std::fs::metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TargetState::Absent),
        Err(e) => return Err(Error::io(target, e)),
    };
    if meta.is_dir() {
        return Err(Error::Other(format!(
            "cannot restore to {}: it is a directory",
            target.display()
        )));
    }
    if meta.len() == 0 {
        return Ok(TargetState::Empty);
    }
    let mut header = [0u8; 16];
    let mut f = File::open(target).map_err(|e| Error::io(target, e))?;
    let n = f.read(&mut header).map_err(|e| Error::io(target, e))?;
    Ok(if n == 16 && &header == b"SQLite format 3\0" {
        TargetState::Database
    } else {
        TargetState::NotSqlite
    })
}

/// A new hidden temp file next to `target`; it is removed when dropped, so
/// every failure path cleans up after itself.
pub fn temp_next_to(target: &Path) -> Result<tempfile::NamedTempFile, Error> {
    let dir = target_dir(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    tempfile::Builder::new()
        .prefix(&format!(".{name}.mailsafe-restore-"))
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))
}

/// Installs the finished temp file at `target`. With `replace` false the
/// rename refuses to overwrite a file that appeared meanwhile.
pub fn install(tmp: tempfile::NamedTempFile, target: &Path, replace: bool) -> Result<(), Error> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = target.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(&side) {
            Ok(()) => {
                tracing::info!(path = %Path::new(&side).display(), "removed stale file of the restore target")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(side, e)),
        }
    }
    let persisted = if replace {
        tmp.persist(target).map_err(|e| e.error)
    } else {
        tmp.persist_noclobber(target).map_err(|e| e.error)
    };
    persisted.map_err(|e| Error::io(target, e))?;
    let dir = target_dir(target);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&dir, e))?;
    Ok(())
}
