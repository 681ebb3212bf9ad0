//! The catcher's POP3 server (Mailpit's `MP_POP3_*`), so mail clients can
//! download what the catcher caught.
//!
//! [`proto`] is the protocol as a sans-IO state machine (bytes in, events
//! out; fuzzed by `fuzz/`), and [`server`] drives sessions over TCP/TLS
//! through [`crate::listen`], the accept loop SMTP uses too, answering from
//! the [`Store`](crate::storage::Store). As in Mailpit, the server only
//! runs when POP3 users are configured.

pub mod proto;
pub mod server;

pub use server::{Pop3Options, Pop3Server};
