//! Error policy of the backup library.
//!
//! Every error names the key, path or address involved, and maps to one of the
//! documented exit codes (see [`Error::exit_code`]): 2 usage, 3 no backup
//! found, 4 verification failed, 5 the store ignores conditional writes, 1
//! anything else.

use std::path::PathBuf;

use crate::store::StoreError;

/// Errors of the backup library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot matched (empty replica, unknown id, nothing before `--at`).
    #[error("no backup found: {0}")]
    NoBackup(String),
    /// A downloaded object or the restored image failed verification. The
    /// message names the key (or snapshot) that failed.
    #[error("backup failed verification: {0}")]
    Verification(String),
    /// The caller asked for something that cannot work (a malformed time, a
    /// bad option value) and should fix the command line.
    #[error("invalid arguments: {0}")]
    Usage(String),
    /// A local file operation failed. (The cause is part of the message, not
    /// a `source()`, so that `{:#}` chains do not print it twice.)
    #[error("{path}: {error}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// SQLite refused or failed on a database file.
    #[error("{path}: {error}")]
    Sqlite {
        /// The database file involved.
        path: PathBuf,
        /// The underlying error.
        error: rusqlite::Error,
    },
    /// The object store failed (unreachable endpoint, wrong credentials,
    /// missing bucket); the message names the endpoint, bucket or key.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else, with a message that names what was involved.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The process exit code documented in the README: 2 usage, 3 no backup
    /// found, 4 verification failed, 5 the store ignores conditional writes
    /// (a writer refuses it), 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NoBackup(_) => 3,
            Error::Verification(_) => 4,
            Error::Usage(_) => 2,
            Error::Store(e) => e.exit_code(),
            Error::Io { .. } | Error::Sqlite { .. } | Error::Other(_) => 1,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }

    /// An [`Error::Sqlite`] for `path`.
    pub fn sqlite(path: impl Into<PathBuf>, error: rusqlite::Error) -> Self {
        Error::Sqlite {
            path: path.into(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_match_the_documented_table() {
        assert_eq!(Error::NoBackup("x".into()).exit_code(), 3);
        assert_eq!(Error::Verification("x".into()).exit_code(), 4);
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        assert_eq!(Error::Other("x".into()).exit_code(), 1);
        let io = Error::io("/nope", std::io::Error::other("boom"));
        assert_eq!(io.exit_code(), 1);
        assert!(io.to_string().contains("/nope"), "{io}");
        let store = Error::from(StoreError::NotFound {
            key: "chunks/ab".into(),
        });
        assert_eq!(store.exit_code(), 1);
        assert!(store.to_string().contains("chunks/ab"), "{store}");
        let unsafe_store = Error::from(StoreError::NoConditionalWrites {
            store: "s3://b/p at http://127.0.0.1:9000".into(),
            key: "lease/probe".into(),
        });
        assert_eq!(unsafe_store.exit_code(), 5);
    }
}
