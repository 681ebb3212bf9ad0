//! The catcher's storage: where messages live.
//!
//! One SQLite file in WAL mode. A single writer thread owns the write
//! connection and commits whatever is queued in one transaction (group
//! commit), so many SMTP sessions share one fsync; each caller is answered
//! only once its batch is durable. Reads use a small pool of separate
//! connections and never wait for the writer.
//!
//! Raw messages are stored zstd-compressed next to a summary row, tags and a
//! word-level FTS5 index that still answers Mailpit's substring search
//! exactly (see `index.rs`). Every table name carries the tenant prefix.

mod index;
mod parse;
mod query;
mod schema;
pub mod search;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

pub use parse::{
    Address, Attachment, Checksums, canonical_header_key, clean_tag, fuzz_mime, html_to_text,
};
pub use query::{Head, MessageDetail, MessageSummary, MessagesPage, PartData};
pub use schema::tenant_prefix;

use writer::{Ctx, Job};

/// Errors from the catcher's storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database file could not be opened or configured.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A schema migration step failed.
    #[error("schema migration {version} failed: {source}")]
    Migration {
        /// The migration's version label.
        version: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// Any other SQLite failure.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The batch this write belonged to could not be committed.
    #[error("commit of database {path} failed: {reason}")]
    Commit {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        reason: String,
    },
    /// No message with this ID.
    #[error("message {0} not found")]
    NotFound(String),
    /// A search query or argument the store cannot use.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The writer thread has stopped (the store is shutting down).
    #[error("the storage writer has stopped")]
    Closed,
    /// Compressing or decompressing a raw message failed.
    #[error("raw message codec: {0}")]
    Codec(#[from] std::io::Error),
    /// A blocking task panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
}

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Tenant (`MP_TENANT_ID`); its sanitised form prefixes every table.
    pub tenant: String,
    /// Keep at most this many messages, pruning the oldest (`MP_MAX_MESSAGES`;
    /// 0 = unlimited).
    pub max_messages: u64,
    /// Delete messages older than this (`MP_MAX_AGE`).
    pub max_age: Option<Duration>,
    /// Number of read connections kept open.
    pub read_connections: usize,
    /// zstd level for raw messages.
    pub compression_level: i32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            tenant: String::new(),
            max_messages: 500,
            max_age: None,
            read_connections: 4,
            compression_level: 3,
        }
    }
}

/// A message as received, before it is stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The raw RFC 5322 bytes (after SMTP dot-unstuffing).
    pub raw: Vec<u8>,
    /// SMTP envelope sender.
    pub mail_from: String,
    /// SMTP envelope recipients.
    pub rcpt_to: Vec<String>,
    /// SMTP AUTH user name, if the client authenticated.
    pub username: Option<String>,
}

/// A live notification, serialised exactly like Mailpit's websocket
/// messages: `{"Type": "new", "Data": {...}}`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `new`, `stats`, `update`, `delete`, `prune` or `truncate`.
    #[serde(rename = "Type")]
    pub kind: &'static str,
    /// The payload (a message summary for `new`, `null` for `prune`/`truncate`).
    #[serde(rename = "Data")]
    pub data: serde_json::Value,
}

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

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL lets readers run while the writer commits; FULL makes every commit
    // durable before we acknowledge it.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -16000)?;
    Ok(())
}

fn open_conn(path: &Path) -> Result<Connection, StorageError> {
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
    configure(&conn).map_err(|source| StorageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(conn)
}

/// Generates a Mailpit-style ID: 22 random base62 characters.
pub(crate) fn new_id() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(22)
        .map(char::from)
        .collect()
}

/// A random 24-character token for MIME boundaries and Message-IDs.
pub fn new_boundary() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Counters since the store was opened (for `/api/v1/info`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RuntimeStats {
    /// Messages stored.
    pub accepted: u64,
    /// Bytes of messages stored.
    pub accepted_size: u64,
    /// Messages the SMTP server rejected (reported via [`Store::note_rejected`]).
    pub rejected: u64,
    /// Messages deleted or pruned.
    pub deleted: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    accepted_size: AtomicU64,
    rejected: AtomicU64,
    pub(crate) deleted: AtomicU64,
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
        }
    }

    /// Records that the SMTP server refused a message (shown in `/api/v1/info`).
    pub fn note_rejected(&self) {
        self.inner.counters.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Opens (creating if needed) the database at `path`, applies pending
    /// migrations for the tenant, and starts the writer thread.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StorageError> {
        let prefix = schema::tenant_prefix(&opts.tenant);
        let mut wconn = open_conn(path)?;
        schema::migrate(&mut wconn, &prefix)?;
        // Read in the background: `/readyz` must not wait for millions of
        // words (see `index::Vocab`).
        let vocab = Arc::new(index::Vocab::default());
        let vconn = open_conn(path)?;
        vconn.pragma_update(None, "query_only", true)?;
        vocab.load_in_background(vconn, &prefix)?;
        let mut readers = Vec::new();
        for _ in 0..opts.read_connections.max(1) {
            let c = open_conn(path)?;
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

    /// Stores a message and returns its new ID once the row is durable.
    pub async fn insert(&self, msg: NewMessage) -> Result<String, StorageError> {
        let level = self.inner.opts.compression_level;
        // Parsing and compression run outside the writer so they spread over
        // cores; large messages go to the blocking pool so they do not stall
        // the async runtime.
        let prepared = if msg.raw.len() > 256 * 1024 {
            tokio::task::spawn_blocking(move || writer::Prepared::new(msg, level))
                .await
                .map_err(|e| StorageError::Task(e.to_string()))??
        } else {
            writer::Prepared::new(msg, level)?
        };
        let size = prepared.size();
        let id = self
            .write(move |conn, ctx| writer::insert(conn, ctx, prepared))
            .await?;
        let c = &self.inner.counters;
        c.accepted.fetch_add(1, Ordering::Relaxed);
        c.accepted_size.fetch_add(size, Ordering::Relaxed);
        Ok(id)
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
                    let c = open_conn(&inner.path)?;
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
}
