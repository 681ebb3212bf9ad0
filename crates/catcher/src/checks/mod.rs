//! Mailpit's message checks that reach outside the catcher: the link check
//! (`link`, HEAD requests to a message's links) and the spam check
//! (`spam`, SpamAssassin's `spamd`). Each one bounds what it sends and how
//! long it waits; the API handlers only call them.

pub mod link;
pub mod spam;
