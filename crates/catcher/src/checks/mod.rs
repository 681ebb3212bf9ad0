//! Mailpit's message checks: the HTML check (`html`, the message's HTML and
//! CSS against email-client support data), the link check (`link`, HEAD
//! requests to a message's links) and the spam check (`spam`,
//! SpamAssassin's `spamd`). Those that reach outside the catcher bound what
//! they send and how long they wait; the API handlers only call them.

pub mod html;
pub mod link;
pub mod spam;
