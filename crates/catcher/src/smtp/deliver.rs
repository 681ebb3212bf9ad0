//! Where the SMTP server puts the messages it accepts.
//!
//! The server answers 250 only once [`Deliver::deliver`] has resolved, so
//! an implementation must resolve only when the message is durable. The
//! catcher's [`Store`] is the one real implementation; tests hand the
//! server a fake to drive it without a database.

use std::future::Future;
use std::pin::Pin;

use crate::storage::{NewMessage, StorageError, Store};

/// The future [`Deliver::deliver`] returns (boxed so the server can hold
/// any implementation behind one pointer).
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<String, StorageError>> + Send + 'a>>;

/// A destination for accepted messages.
pub trait Deliver: Send + Sync + 'static {
    /// Stores `msg`; resolves to its ID once it is durable, or to why it
    /// could not be stored (the client is answered 451 and retries).
    fn deliver(&self, msg: NewMessage) -> Delivery<'_>;

    /// Counts `n` messages or recipients the server refused (Mailpit's
    /// `SMTPRejected`, see `Session::take_rejected`).
    fn rejected(&self, n: u64) {
        let _ = n;
    }
}

impl Deliver for Store {
    fn deliver(&self, msg: NewMessage) -> Delivery<'_> {
        Box::pin(self.insert(msg))
    }

    fn rejected(&self, n: u64) {
        self.note_rejected(n);
    }
}
