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
}
