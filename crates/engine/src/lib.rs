//! mailsafe's backup library: keeps a live SQLite database safe on an object
//! store.
//!
//! Data flows top to bottom:
//! db pages ([`snapshot`]) → packed objects and manifests ([`format`]) →
//! [`store::ObjectStore`] (S3 or a local directory). [`restore`] walks the same
//! path upwards; [`watch`], [`cron`] and [`retention`] schedule and prune.

pub mod cron;
pub mod crypto;
pub mod error;
pub mod format;
pub mod history;
pub mod index;
pub mod lease;
pub mod manifest;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod store;
pub mod watch;

pub use error::Error;

#[cfg(test)]
mod test_support;
