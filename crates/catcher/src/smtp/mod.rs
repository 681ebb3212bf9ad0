//! The catcher's SMTP server.
//!
//! [`proto`] is the protocol as a sans-IO state machine (bytes in, events
//! out; fuzzed by `fuzz/`) and [`auth`] holds SMTP AUTH credentials.

pub mod auth;
pub mod proto;

pub use auth::{AuthPolicy, Credentials};
pub use proto::Limits;
