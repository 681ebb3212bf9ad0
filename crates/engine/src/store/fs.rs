//! A replica in a local directory (`file:///path`): one file per object,
//! keys map to relative paths.
//!
//! Writes are atomic and durable: the body goes to a temp file in the target
//! directory, is fsynced, then renamed into place and the directory fsynced,
//! so a crash leaves either the old object or the new one, never a torn file.
//! Temp files start with [`TMP_PREFIX`] and are never listed. A writer holds
//! an `flock` on its temp file until the file is in place, so [`FsStore::list`]
//! can tell the temp file of a writer that was killed (nobody holds its
//! lock; the kernel dropped it with the process) from one being written, and
//! removes the former as it passes.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, StoreError, check_key};

/// Name prefix of in-flight temp files; such files are skipped by `list`.
pub const TMP_PREFIX: &str = ".mailsafe-tmp-";

/// A store rooted at a local directory. The directory is created on the first
/// write.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn io_err(&self, what: &str, path: &Path, err: std::io::Error) -> StoreError {
        StoreError::Other(format!("{what} {}: {err}", path.display()))
    }
}

/// Runs blocking file I/O off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(format!("file store task failed: {e}")))?
}

/// The version tag of a file: a replace always creates a new inode (temp file
/// + rename), so inode, size and mtime together change on every write.
fn etag_of(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{:x}-{:x}-{:x}.{:x}",
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

fn meta_of(key: String, meta: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        key,
        size: meta.len(),
        last_modified: meta
            .modified()
            .ok()
            .map(chrono::DateTime::<chrono::Utc>::from),
        etag: Some(etag_of(meta)),
    }
}

/// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` when
/// another open file holds it. (`File::try_lock` needs Rust 1.89; the MSRV
/// is 1.85.) The lock lasts until every handle of this open file is closed,
/// which a killed process's are.
pub(crate) fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor that `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// A temp file being written, locked (see the module doc) until dropped.
struct Temp {
    path: PathBuf,
    /// Kept open: closing it drops the lock.
    _file: File,
}

/// Writes `body` to a fresh temp file next to `path`, fsynced and locked.
/// The caller renames or links it into place, then drops it.
fn write_temp(path: &Path, body: &[u8]) -> std::io::Result<Temp> {
    let dir = path.parent().expect("object paths have a parent");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()));
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    // Nobody else knows the name yet, so this cannot be refused.
    let res = try_lock(&file)
        .and_then(|_| file.write_all(body))
        .and_then(|()| file.sync_all());
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Temp {
        path: tmp,
        _file: file,
    })
}

/// Removes temp file `path` if its writer is gone (nobody holds its lock).
/// Best effort: a leftover only costs disk space.
fn sweep_if_dead(path: &Path) {
    let Ok(file) = File::open(path) else { return };
    if matches!(try_lock(&file), Ok(true)) && fs::remove_file(path).is_ok() {
        tracing::info!(path = %path.display(), "removed the temp file of an interrupted write");
    }
}

/// Makes a rename or link in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait::async_trait]
impl ObjectStore for FsStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let this = self.clone();
        blocking(move || {
            let tmp =
                write_temp(&path, &body).map_err(|e| this.io_err("cannot write", &path, e))?;
            if let Err(e) = fs::rename(&tmp.path, &path) {
                let _ = fs::remove_file(&tmp.path);
                return Err(this.io_err("cannot write", &path, e));
            }
            sync_dir(path.parent().unwrap()).map_err(|e| this.io_err("cannot sync", &path, e))
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        let this = self.clone();
        blocking(move || {
            if path.exists() {
                return Err(StoreError::AlreadyExists { key });
            }
            let tmp =
                write_temp(&path, &body).map_err(|e| this.io_err("cannot write", &path, e))?;
            // link(2) fails if the target exists, unlike rename: this makes the
            // create-if-absent atomic even against other processes.
            let linked = fs::hard_link(&tmp.path, &path);
            let _ = fs::remove_file(&tmp.path);
            match linked {
                Ok(()) => sync_dir(path.parent().unwrap())
                    .map_err(|e| this.io_err("cannot sync", &path, e)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    Err(StoreError::AlreadyExists { key })
                }
                Err(e) => Err(this.io_err("cannot write", &path, e)),
            }
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        let this = self.clone();
        blocking(move || match fs::read(&path) {
            Ok(v) => Ok(Bytes::from(v)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound { key }),
            Err(e) => Err(this.io_err("cannot read", &path, e)),
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        let this = self.clone();
        blocking(move || {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(StoreError::NotFound { key });
                }
                Err(e) => return Err(this.io_err("cannot read", &path, e)),
            };
            // The buffer is sized by what the file has, not by the range
            // asked for: a manifest is read as `0..cap + 1` (64 MiB), which
            // reserved 64 MiB for a 5 MB file.
            let size = file
                .metadata()
                .map_err(|e| this.io_err("cannot read", &path, e))?
                .len();
            let len = range.end.min(size).saturating_sub(range.start);
            let mut buf = super::buffers::buffer(len as usize);
            file.seek(SeekFrom::Start(range.start))
                .and_then(|_| file.take(len).read_to_end(&mut buf))
                .map_err(|e| this.io_err("cannot read", &path, e))?;
            Ok(super::buffers::freeze(buf))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let this = self.clone();
        blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![(root.clone(), String::new())];
            while let Some((dir, rel)) = stack.pop() {
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    // A missing root is an empty replica, not an error.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(this.io_err("cannot list", &dir, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| this.io_err("cannot list", &dir, e))?;
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if name.starts_with(TMP_PREFIX) {
                        sweep_if_dead(&entry.path());
                        continue;
                    }
                    let key = format!("{rel}{name}");
                    let ft = entry
                        .file_type()
                        .map_err(|e| this.io_err("cannot list", &dir, e))?;
                    if ft.is_dir() {
                        let sub = format!("{key}/");
                        // Only descend where keys under `prefix` can be.
                        if sub.starts_with(&prefix) || prefix.starts_with(&sub) {
                            stack.push((entry.path(), sub));
                        }
                    } else if ft.is_file() && key.starts_with(&prefix) {
                        let meta = entry
                            .metadata()
                            .map_err(|e| this.io_err("cannot stat", &entry.path(), e))?;
                        out.push(meta_of(key, &meta));
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let this = self.clone();
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(this.io_err("cannot delete", &path, e)),
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        let this = self.clone();
        blocking(move || match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(meta_of(key, &m)),
            Ok(_) => Err(StoreError::NotFound { key }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound { key }),
            Err(e) => Err(this.io_err("cannot stat", &path, e)),
        })
        .await
    }

    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<String, StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        let etag = etag.to_string();
        let this = self.clone();
        blocking(move || {
            // Check, write, re-check, rename: the window between the last
            // check and the rename is microseconds. A local directory has no
            // true compare-and-swap; leases on file:// replicas are meant for
            // one host.
            let current = |key: &str| match fs::metadata(&path) {
                Ok(m) => Ok(etag_of(&m)),
                Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound {
                    key: key.to_string(),
                }),
                Err(e) => Err(this.io_err("cannot stat", &path, e)),
            };
            if current(&key)? != etag {
                return Err(StoreError::PreconditionFailed { key });
            }
            let tmp =
                write_temp(&path, &body).map_err(|e| this.io_err("cannot write", &path, e))?;
            let res = match current(&key) {
                Ok(now) if now == etag => {
                    fs::rename(&tmp.path, &path).map_err(|e| this.io_err("cannot write", &path, e))
                }
                Ok(_) => Err(StoreError::PreconditionFailed { key: key.clone() }),
                Err(e) => Err(e),
            };
            if res.is_err() {
                let _ = fs::remove_file(&tmp.path);
            }
            res?;
            sync_dir(path.parent().unwrap()).map_err(|e| this.io_err("cannot sync", &path, e))?;
            current(&key)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed writer's temp file (nobody holds its lock) goes at the next
    /// listing; one being written (locked) stays.
    #[tokio::test]
    async fn list_sweeps_a_dead_writers_temp_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        store
            .put("manifests/a.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let sub = dir.path().join("manifests");
        let dead = sub.join(format!("{TMP_PREFIX}dead"));
        fs::write(&dead, b"half").unwrap();
        let live = write_temp(&sub.join("b.json"), b"being written").unwrap();
        let keys = super::super::conformance::keys(store.list("").await.unwrap());
        assert_eq!(keys, ["manifests/a.json"]);
        assert!(!dead.exists(), "the dead writer's temp file is swept");
        assert!(
            live.path.exists(),
            "a live writer's temp file is left alone"
        );
    }

    #[tokio::test]
    async fn round_trip_list_range_delete_and_conditionals() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path().join("replica"));
        super::super::conformance::run(&store).await;
        // No temp files are left behind or listed.
        let names: Vec<_> = fs::read_dir(dir.path().join("replica"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().starts_with(TMP_PREFIX)),
            "{names:?}"
        );
    }
}
