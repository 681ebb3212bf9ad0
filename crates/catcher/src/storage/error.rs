//! The storage's one error type.

use std::path::PathBuf;

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
