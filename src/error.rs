//! Error policy of the backup library.
//!
//! Every error names the key, path or address involved, and maps to one of the
//! documented exit codes (see [`Error::exit_code`]).

/// Errors of the backup library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot matched (empty replica, unknown id, nothing before `--at`).
    #[error("no backup found: {0}")]
    NoBackup(String),
    /// A downloaded object or the restored image failed verification.
    #[error("backup failed verification: {0}")]
    Verification(String),
    /// Anything else: I/O, object store, SQLite.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The process exit code documented in the README: 3 no backup found,
    /// 4 verification failed, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NoBackup(_) => 3,
            Error::Verification(_) => 4,
            Error::Other(_) => 1,
        }
    }
}
