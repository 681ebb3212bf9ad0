//! Progress of long operations (a restore's download), reported to whoever
//! drives the engine. The engine draws nothing itself: the binary implements
//! [`Progress`] with a terminal bar, tests and `serve --replica` pass
//! [`NoProgress`]. The shape follows rustic_core's `Progress` trait.

use std::sync::Arc;

/// Receives the progress of one operation. Called from several download
/// tasks at once, so implementations are shared (`&self`) and thread-safe.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// The total amount of work, in the unit [`Progress::inc`] counts
    /// (stored bytes for a restore).
    fn set_length(&self, len: u64);
    /// `n` more units are done.
    fn inc(&self, n: u64);
    /// The operation ended (successfully or not); a bar clears itself.
    fn finish(&self);
}

/// Reports nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_length(&self, _len: u64) {}
    fn inc(&self, _n: u64) {}
    fn finish(&self) {}
}

/// A shared [`NoProgress`], the default of every option struct.
pub fn none() -> Arc<dyn Progress> {
    Arc::new(NoProgress)
}
