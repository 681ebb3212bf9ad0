//! Noticing that the database changed, without touching the object store.
//!
//! The watcher subscribes (inotify, through `notify`) to the database's
//! *directory*, not to the file: the database may not exist yet, SQLite
//! creates and deletes `-wal`/`-journal` as it goes, and a restore replaces
//! the file by rename. Events for any name other than the db, `-wal` and
//! `-journal` are dropped (`-shm` changes on every read). Where inotify is not
//! available (or the directory is missing), a poll of the three files'
//! size, mtime and inode takes over: still purely local, so an idle watcher
//! costs no object-store request either way.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio::sync::mpsc;

/// A source of "the database changed" signals.
#[derive(Debug)]
pub struct Changes {
    rx: mpsc::UnboundedReceiver<Instant>,
    /// Kept alive for as long as events are wanted; dropping it stops them.
    _watcher: Option<notify::RecommendedWatcher>,
    /// The poll task, when polling; aborted on drop.
    poller: Option<tokio::task::JoinHandle<()>>,
    /// How changes are detected, for logs.
    pub mode: &'static str,
}

impl Drop for Changes {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.abort();
        }
    }
}

/// The file names whose changes mean the database changed.
fn watched_names(db: &Path) -> Vec<std::ffi::OsString> {
    let name = db.file_name().unwrap_or_default().to_os_string();
    let mut wal = name.clone();
    wal.push("-wal");
    let mut journal = name.clone();
    journal.push("-journal");
    vec![name, wal, journal]
}

/// Whether an event kind can mean new data. Opens, reads and closes cannot;
/// neither can metadata changes (SQLite running as root `fchown`s the `-wal`
/// on every open, read-only connections included), and every commit writes
/// data, so nothing is lost by ignoring them.
fn is_write_kind(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    !matches!(
        kind,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
    )
}

impl Changes {
    /// Starts watching `db` (which may not exist yet). With `force_poll`,
    /// polls every `poll_interval` instead of using inotify.
    pub fn start(db: &Path, poll_interval: Duration, force_poll: bool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        if !force_poll {
            match Self::inotify(db, tx.clone()) {
                Ok(w) => {
                    return Self {
                        rx,
                        _watcher: Some(w),
                        poller: None,
                        mode: "inotify",
                    };
                }
                Err(e) => tracing::warn!(
                    db = %db.display(),
                    error = %e,
                    "cannot watch the database directory for changes; polling every {:?} instead",
                    poll_interval
                ),
            }
        }
        let poller = tokio::spawn(poll(db.to_path_buf(), poll_interval, tx));
        Self {
            rx,
            _watcher: None,
            poller: Some(poller),
            mode: "poll",
        }
    }

    fn inotify(
        db: &Path,
        tx: mpsc::UnboundedSender<Instant>,
    ) -> Result<notify::RecommendedWatcher, notify::Error> {
        use notify::Watcher as _;
        let dir = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let names = watched_names(db);
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    // A rescan means events were lost: assume a change.
                    let relevant = ev.need_rescan()
                        || (is_write_kind(&ev.kind)
                            && ev.paths.iter().any(|p| {
                                p.file_name().is_some_and(|n| names.iter().any(|w| w == n))
                            }));
                    if relevant {
                        let _ = tx.send(Instant::now());
                    }
                }
                // An error from the backend may hide a change: report one.
                Err(_) => {
                    let _ = tx.send(Instant::now());
                }
            })?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }

    /// Waits for the next change signal and returns when the change was
    /// seen. Returns `None` only if detection stopped for good (which does
    /// not happen while `self` lives).
    pub async fn next(&mut self) -> Option<Instant> {
        self.rx.recv().await
    }

    /// Drops every signal already queued (they describe changes that a
    /// snapshot about to start will include anyway). Returns how many.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.rx.try_recv().is_ok() {
            n += 1;
        }
        n
    }
}

/// What the poller compares between rounds, per file.
type Fingerprint = Option<(u64, SystemTime, u64)>;

/// Size, modification time and inode of the db and its `-wal`/`-journal`:
/// whatever a commit writes changes it. The watch loop compares it at
/// shutdown with the stamp taken before its last successful snapshot, so a
/// commit whose change signal has not arrived yet is not missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(Vec<Fingerprint>);

impl Stamp {
    /// The stamp of `db`'s files now.
    pub fn of(db: &Path) -> Stamp {
        let dir = db.parent().map(Path::to_path_buf).unwrap_or_default();
        Stamp(
            watched_names(db)
                .into_iter()
                .map(|n| fingerprint(&dir.join(n)))
                .collect(),
        )
    }
}

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

async fn poll(db: PathBuf, every: Duration, tx: mpsc::UnboundedSender<Instant>) {
    let dir = db.parent().map(Path::to_path_buf).unwrap_or_default();
    let paths: Vec<PathBuf> = watched_names(&db)
        .into_iter()
        .map(|n| dir.join(n))
        .collect();
    let mut last: Vec<Fingerprint> = paths.iter().map(|p| fingerprint(p)).collect();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now: Vec<Fingerprint> = paths.iter().map(|p| fingerprint(p)).collect();
        if now != last {
            last = now;
            if tx.send(Instant::now()).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn expect_change(c: &mut Changes, what: &str) {
        tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .unwrap_or_else(|_| panic!("no change signal after {what} ({})", c.mode))
            .expect("change source closed");
    }

    async fn expect_quiet(c: &mut Changes, what: &str) {
        let r = tokio::time::timeout(Duration::from_millis(400), c.next()).await;
        assert!(
            r.is_err(),
            "unexpected change signal after {what} ({})",
            c.mode
        );
    }

    async fn sees_creation_writes_and_ignores_other_files(force_poll: bool) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let mut c = Changes::start(&db, Duration::from_millis(50), force_poll);
        assert_eq!(c.mode, if force_poll { "poll" } else { "inotify" });
        expect_quiet(&mut c, "nothing").await;
        std::fs::write(dir.path().join("other.db"), b"x").unwrap();
        std::fs::write(dir.path().join("app.db-shm"), b"x").unwrap();
        expect_quiet(&mut c, "writing unrelated files").await;

        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        conn.execute("CREATE TABLE t (x)", []).unwrap();
        expect_change(&mut c, "creating the db").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.drain();
        expect_quiet(&mut c, "draining").await;
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
        expect_change(&mut c, "a commit to the WAL").await;
        // Reading changes nothing that matters.
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.drain();
        let reader = rusqlite::Connection::open(&db).unwrap();
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        expect_quiet(&mut c, "a read").await;
    }

    #[tokio::test]
    async fn inotify_sees_creation_writes_and_ignores_other_files() {
        sees_creation_writes_and_ignores_other_files(false).await;
    }

    #[tokio::test]
    async fn poll_sees_creation_writes_and_ignores_other_files() {
        sees_creation_writes_and_ignores_other_files(true).await;
    }
}
