//! Step three of a restore: put the verified image in place without ever
//! exposing a partial file or clobbering a database nobody asked to replace.
//!
//! The image is built in a hidden temp file in the target's own directory (so
//! the final rename is atomic and never crosses filesystems), fsynced,
//! renamed into place, then the target's stale `-wal`/`-shm` are removed (a
//! leftover WAL would otherwise be replayed over the restored pages), and the
//! directory fsynced so both survive a crash. The side files go only *after*
//! the rename: removed before it, a rename that then fails (a file appeared
//! without `--force`, a full disk, a kill) would leave the old database
//! without the WAL holding its latest commits.
//!
//! The temp file is locked (`flock`) for as long as the restore runs, so a
//! later restore can tell the temp files of a killed one (unlocked) from
//! those of a restore still running, and sweeps only the former: a killed
//! restore of a large db must not leave its size behind on the volume.

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
    Ok(match crate::format::sqlite_header(&header[..n]) {
        crate::format::SqliteHeader::Database { .. } => TargetState::Database,
        _ => TargetState::NotSqlite,
    })
}

/// Name prefix of the restore temp files of `target` (`.NAME.mailsafe-restore-`).
fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    format!(".{name}.mailsafe-restore-")
}

/// Removes the temp files a killed restore of `target` left next to it:
/// those nobody holds the lock of (see [`temp_next_to`]). A temp file of a
/// restore still running is locked and left alone. Returns the paths removed.
/// Failures are logged, not returned: a leftover only costs disk space.
pub fn sweep_stale_temps(target: &Path) -> Vec<PathBuf> {
    let dir = target_dir(target);
    let prefix = temp_prefix(target);
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        // Locked: a live restore owns it. Unlocked: its owner died (a
        // process's flock goes with it), so nothing will ever rename it.
        if !matches!(crate::store::fs::try_lock(&file), Ok(true)) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed the temp file of an interrupted restore");
                removed.push(path);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the temp file of an interrupted restore")
            }
        }
    }
    removed
}

/// A new hidden temp file next to `target`, locked for its lifetime (see
/// [`sweep_stale_temps`], which runs first); it is removed when dropped, so
/// every failure path cleans up after itself.
pub fn temp_next_to(target: &Path) -> Result<tempfile::NamedTempFile, Error> {
    sweep_stale_temps(target);
    let dir = target_dir(target);
    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(target))
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    match crate::store::fs::try_lock(tmp.as_file()) {
        Ok(true) => Ok(tmp),
        Ok(false) => Err(Error::io(
            tmp.path(),
            std::io::Error::other("a fresh temp file is already locked"),
        )),
        Err(e) => Err(Error::io(tmp.path(), e)),
    }
}

/// Installs the finished temp file at `target`. With `replace` false the
/// rename refuses to overwrite a file that appeared meanwhile. The target's
/// stale `-wal`/`-shm` are removed only once the new file is in place.
pub fn install(tmp: tempfile::NamedTempFile, target: &Path, replace: bool) -> Result<(), Error> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    let persisted = if replace {
        tmp.persist(target).map_err(|e| e.error)
    } else {
        tmp.persist_noclobber(target).map_err(|e| e.error)
    };
    persisted.map_err(|e| Error::io(target, e))?;
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
    let dir = target_dir(target);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(target: &Path, suffix: &str) -> PathBuf {
        let mut s = target.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    }

    /// A rename that fails (here: a file appeared and `--force` was not
    /// given) must leave the existing database and its WAL alone: the WAL
    /// may hold its latest commits.
    #[test]
    fn a_failed_install_keeps_the_targets_wal() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.db");
        std::fs::write(&target, b"old db").unwrap();
        std::fs::write(side(&target, "-wal"), b"old commits").unwrap();
        std::fs::write(side(&target, "-shm"), b"old index").unwrap();
        let tmp = temp_next_to(&target).unwrap();
        std::fs::write(tmp.path(), b"new db").unwrap();
        assert!(install(tmp, &target, false).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"old db");
        assert_eq!(
            std::fs::read(side(&target, "-wal")).unwrap(),
            b"old commits"
        );
        assert!(side(&target, "-shm").exists());

        // With replace, the new file goes in and the stale side files go.
        let tmp = temp_next_to(&target).unwrap();
        std::fs::write(tmp.path(), b"new db").unwrap();
        install(tmp, &target, true).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new db");
        assert!(!side(&target, "-wal").exists());
        assert!(!side(&target, "-shm").exists());
    }

    /// The temp file of a killed restore (nobody holds its lock) is swept
    /// by the next restore; one of a restore still running (locked) is not,
    /// nor are other files.
    #[test]
    fn stale_temp_files_are_swept_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.db");
        let dead = dir.path().join(".app.db.mailsafe-restore-dead01");
        std::fs::write(&dead, vec![0u8; 4096]).unwrap();
        let other = dir.path().join(".other.db.mailsafe-restore-x");
        std::fs::write(&other, b"").unwrap();
        let live = temp_next_to(&target).unwrap();
        assert!(!dead.exists(), "the killed restore's temp file is swept");
        assert!(other.exists(), "another target's file is not ours");
        // A second restore running meanwhile leaves the first one's file.
        let second = temp_next_to(&target).unwrap();
        assert!(live.path().exists(), "a live restore's temp file is kept");
        assert_eq!(sweep_stale_temps(&target), Vec::<PathBuf>::new());
        drop(second);
        // Once its process is gone (simulated: the lock released by
        // closing every handle, without deleting the file), it is swept.
        let (file, path) = live.keep().unwrap();
        drop(file);
        assert_eq!(sweep_stale_temps(&target), vec![path]);
    }
}
