//! The catcher's error type.

/// Errors the catcher reports to its caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: String,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Options that Mailpit has but this catcher does not implement (yet)
    /// were set: refused rather than ignored.
    #[error(
        "not implemented by mailsafe's catcher: {0}; unset it (README, \"Mailpit options\", lists what is supported)"
    )]
    NotImplemented(String),
    /// Credentials (`MP_SMTP_AUTH*`, `MP_UI_AUTH*`) could not be read.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The message store could not be opened.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The SMTP or POP3 server could not bind its address.
    #[error(transparent)]
    Listen(#[from] crate::listen::BindError),
    /// A TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}
