//! The [`Store`] handle: opening the db (migrations, read pool, vocabulary
//! load, writer thread), and the two doors every other module goes through:
//! [`Store::write`] (a job in the writer's next batch) and [`Store::read`]
//! (a pooled read connection).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{broadcast, oneshot};

use super::error::StorageError;
use super::index;
use super::model::{Counters, Event, RuntimeStats, StoreOptions};
use super::schema;
use super::writer::{self, Ctx, Job};

/// The catcher's message store. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    prefix: String,
    opts: StoreOptions,
    jobs: std::sync::mpsc::Sender<Box<dyn Job>>,
    readers: Mutex<Vec<Connection>>,
    events: broadcast::Sender<Event>,
    started: std::time::Instant,
    counters: Arc<Counters>,
    vocab: Arc<index::Vocab>,
}

/// Prepared statements each connection keeps (see [`configure`]).
const STATEMENT_CACHE: usize = 64;

fn configure(conn: &Connection, wal: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL lets readers run while the writer commits (`MP_DISABLE_WAL` trades
    // that for file systems without its shared memory); FULL makes every
    // commit durable before we acknowledge it.
    conn.pragma_update(None, "journal_mode", if wal { "WAL" } else { "DELETE" })?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -16000)?;
    // The writer alone runs ~18 distinct cached statements per batch (insert,
    // index, prune); rusqlite's default cache of 16 evicted them in turn, so
    // every statement was compiled again each batch (~10% of the writer's CPU
    // in the ingest benchmark).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    index::register_functions(conn)?;
    Ok(())
}

/// A connection to the store's db, in WAL mode unless `wal` is false
/// (`StoreOptions::disable_wal`).
pub(crate) fn open_conn(path: &Path, wal: bool) -> Result<Connection, StorageError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|source| StorageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    configure(&conn, wal).map_err(|source| StorageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(conn)
}

impl Store {
    /// Counters since the store was opened.
    pub fn runtime_stats(&self) -> RuntimeStats {
        let c = &self.inner.counters;
        RuntimeStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            accepted_size: c.accepted_size.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            deleted: c.deleted.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
        }
    }

    /// Records that a new message was dropped as a duplicate (`SMTPIgnored`
    /// in `/api/v1/info`).
    pub(crate) fn note_ignored(&self) {
        self.inner.counters.ignored.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that the SMTP server refused `n` messages or recipients
    /// (`SMTPRejected` in `/api/v1/info`).
    pub fn note_rejected(&self, n: u64) {
        self.inner.counters.rejected.fetch_add(n, Ordering::Relaxed);
    }

    /// Opens (creating if needed) the database at `path`, applies pending
    /// migrations for the tenant, and starts the writer thread.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StorageError> {
        let prefix = schema::tenant_prefix(&opts.tenant);
        let wal = !opts.disable_wal;
        let mut wconn = open_conn(path, wal)?;
        schema::migrate(&mut wconn, &prefix)?;
        schema::duplicate_index(&wconn, &prefix, opts.ignore_duplicate_ids)?;
        // Read in the background: `/readyz` must not wait for millions of
        // words (see `index::Vocab`).
        let vocab = Arc::new(index::Vocab::default());
        let vconn = open_conn(path, wal)?;
        vconn.pragma_update(None, "query_only", true)?;
        vocab.load_in_background(vconn, &prefix)?;
        let mut readers = Vec::new();
        for _ in 0..opts.read_connections.max(1) {
            let c = open_conn(path, wal)?;
            c.pragma_update(None, "query_only", true)?;
            readers.push(c);
        }
        let (events, _) = broadcast::channel(1024);
        let (jobs, rx) = std::sync::mpsc::channel::<Box<dyn Job>>();
        let counters = Arc::new(Counters::default());
        let w = writer::Writer::new(
            wconn,
            path.to_path_buf(),
            prefix.clone(),
            opts.clone(),
            events.clone(),
            counters.clone(),
            vocab.clone(),
        );
        std::thread::Builder::new()
            .name("mailsafe-store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(StorageError::Codec)?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                prefix,
                opts,
                jobs,
                readers: Mutex::new(readers),
                events,
                started: std::time::Instant::now(),
                counters,
                vocab,
            }),
        })
    }

    /// The database file this store uses.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The table-name prefix of this store's tenant.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    /// The tenant's indexed words (for compiling searches).
    pub(crate) fn vocab(&self) -> Arc<index::Vocab> {
        self.inner.vocab.clone()
    }

    /// Time since the store was opened.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Live notifications for the websocket (`/api/events`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Publishes an event the writer did not (a `new` held back until the
    /// tag rules ran).
    pub(super) fn publish(&self, e: Event) {
        // No subscribers is normal (no browser open).
        let _ = self.inner.events.send(e);
    }

    /// Runs `f` inside the writer's next batch transaction and returns its
    /// result after the batch commits. If `f` fails, only its own changes are
    /// rolled back.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Ctx) -> Result<T, StorageError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.inner
            .jobs
            .send(writer::fn_job(f, reply))
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Runs `f` on a pooled read connection in the blocking pool.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &str) -> Result<T, StorageError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.readers.lock().ok().and_then(|mut v| v.pop());
            let conn = match conn {
                Some(c) => c,
                None => {
                    let c = open_conn(&inner.path, !inner.opts.disable_wal)?;
                    c.pragma_update(None, "query_only", true)?;
                    c
                }
            };
            let out = f(&conn, &inner.prefix);
            if let Ok(mut v) = inner.readers.lock()
                && v.len() < inner.opts.read_connections.max(1)
            {
                v.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// Size of the database file (and its WAL) in bytes.
    pub fn db_size(&self) -> u64 {
        let p = self.path();
        let main = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = p.as_os_str().to_owned();
        wal.push("-wal");
        main + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }
}
