//! The catcher's SMTP server.
//!
//! [`proto`] is the protocol as a sans-IO state machine (bytes in, events
//! out; fuzzed by `fuzz/`; credentials live in [`crate::auth`]), [`budget`]
//! caps message content held in memory across sessions, and [`server`]
//! drives sessions over tokio TCP/TLS and hands each message to a
//! [`Deliver`] (the store), answering 250 only once it is durable.

pub mod budget;
pub mod chaos;
pub mod deliver;
pub mod proto;
pub mod server;

pub use budget::DataBudget;
pub use deliver::{Deliver, Delivery};
pub use proto::Limits;

/// `max_message_size` meaning no limit (`MP_MAX_MESSAGE_SIZE=0`); SMTP
/// then advertises `SIZE 0` (RFC 1870: no fixed maximum), as Mailpit does.
pub const UNLIMITED: usize = usize::MAX;
pub use server::{ServerOptions, SmtpServer};
