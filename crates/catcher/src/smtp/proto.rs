//! The sans-IO SMTP server session (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS and AUTH PLAIN/LOGIN).
//!
//! [`Session`] takes the bytes a client sent and yields [`Event`]s: replies to
//! write, messages to deliver, a TLS upgrade to perform, or the end of the
//! session. It does no I/O and keeps no clock, so it can be fuzzed and unit
//! tested byte by byte, and the tokio server in `server.rs` stays a thin loop.
//!
//! Memory is bounded whatever the client sends: a command line longer than
//! [`Limits::max_line_length`] is discarded as it arrives (then answered with
//! 500 5.5.2), and message content beyond [`Limits::max_message_size`] is
//! counted but not kept (then answered with 552 5.3.4). The caller feeds one
//! read at a time and only reads again once [`Session::next_event`] asks for
//! more input, so pipelined input never piles up either. Across sessions, an
//! optional shared [`DataBudget`] caps the content all of them hold at once
//! (`452 4.3.1` for the message that would exceed it).

use std::collections::VecDeque;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::budget::DataBudget;
use crate::auth::{AuthPolicy, Credentials};
use crate::lines::{Line, LineBuffer};

/// Protocol limits and the features this server offers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Name the server gives itself in the greeting and EHLO reply.
    pub hostname: String,
    /// Largest message accepted, in bytes (advertised as `SIZE`).
    pub max_message_size: usize,
    /// Most recipients in one transaction; more get 452.
    pub max_recipients: usize,
    /// Longest command line, CRLF included. RFC 5321 asks for at least 512;
    /// AUTH lines carrying base64 credentials need more, so allow 4 KiB.
    pub max_line_length: usize,
    /// A TLS certificate is configured, so STARTTLS is offered.
    pub starttls: bool,
    /// MAIL and AUTH are refused until the session runs over TLS.
    pub require_tls: bool,
    /// Whether and how AUTH is offered.
    pub auth: AuthPolicy,
    /// Offer PLAIN and LOGIN over plain text connections too (they send the
    /// password in clear, so RFC 4954 reserves them for TLS by default).
    pub auth_allow_insecure: bool,
    /// Memory for message content shared by every session of a server;
    /// `None` leaves only the per-message limit.
    pub data_budget: Option<Arc<DataBudget>>,
    /// Only recipients matching this are accepted; others get 550
    /// (`MP_SMTP_ALLOWED_RECIPIENTS`).
    pub allowed_recipients: Option<regex::Regex>,
    /// Answer refused recipients 250 and drop them, as Mailpit's
    /// `MP_SMTP_IGNORE_REJECTED_RECIPIENTS` (a message left with none is
    /// answered 250 and not stored).
    pub ignore_rejected_recipients: bool,
    /// Errors injected on purpose (Mailpit's Chaos); `None` = off.
    pub chaos: super::chaos::Chaos,
    /// Refuse (451) a message whose headers contain CR CR LF; otherwise
    /// every CR CR LF is repaired to CR LF, as Mailpit does
    /// (`MP_SMTP_STRICT_RFC_HEADERS`).
    pub strict_rfc_headers: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            hostname: "mailsafe".into(),
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 4096,
            starttls: false,
            require_tls: false,
            auth: AuthPolicy::None,
            auth_allow_insecure: false,
            data_budget: None,
            allowed_recipients: None,
            ignore_rejected_recipients: false,
            chaos: None,
            strict_rfc_headers: false,
        }
    }
}

/// One SMTP reply: a code and one or more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// Text lines; an enhanced status code, when there is one, starts each.
    pub lines: Vec<String>,
}

impl Reply {
    fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            lines: vec![text.into()],
        }
    }

    /// The reply as it goes on the wire: `code-text` for every line but the
    /// last, which is `code text`, each ending in CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_to(&mut out);
        out
    }

    /// Appends the wire form to `out` (lets the server batch replies to a
    /// pipelined group into one write).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}{}\r\n", self.code, sep, line).as_bytes());
        }
    }

    /// True for 2xx and 3xx replies.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }
}

/// A complete message, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path from MAIL FROM (empty for the null sender `<>`).
    pub mail_from: String,
    /// Forward paths from every accepted RCPT TO, in order.
    pub rcpt_to: Vec<String>,
    /// The message content with dot-stuffing removed, line endings as sent.
    pub data: Vec<u8>,
    /// The user who authenticated, if any.
    pub username: Option<String>,
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// Whether the message arrived over TLS.
    pub tls: bool,
}

/// What the session wants its driver to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Write this reply.
    Reply(Reply),
    /// Store this message, then call [`Session::delivered`] with the outcome;
    /// the session produces nothing else until then.
    Deliver(Envelope),
    /// Write the 220 reply carried here, then upgrade the connection to TLS
    /// and call [`Session::tls_established`].
    StartTls(Reply),
    /// Write the final reply carried here and close the connection.
    Close(Reply),
    /// Check these credentials against the configured users (a bcrypt
    /// check is slow on purpose, so the driver runs it off the async
    /// workers), then call [`Session::authenticated`]; the session produces
    /// nothing else until then.
    Authenticate(Login),
}

/// A username and password received in AUTH PLAIN or LOGIN.
#[derive(PartialEq, Eq)]
pub struct Login {
    /// The authentication identity.
    pub user: String,
    /// The password, as sent.
    pub password: String,
}

impl std::fmt::Debug for Login {
    // A password must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login({:?}, <redacted>)", self.user)
    }
}

/// Failed AUTH attempts a session may make; the next failure is answered
/// 421 and the connection closed, so one connection cannot guess passwords
/// at the speed of the pipe.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// Where the session is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Reading message content after `354`.
    Data,
    /// A message was handed out for delivery; waiting for its outcome.
    Delivering,
    /// Waiting for the base64 response to an AUTH PLAIN challenge.
    AuthPlain,
    /// Waiting for the AUTH LOGIN username.
    AuthLoginUser,
    /// Waiting for the AUTH LOGIN password of this user.
    AuthLoginPass,
    /// Credentials were handed out for checking; waiting for the verdict.
    Authenticating,
    /// STARTTLS was accepted; the driver is upgrading the connection.
    TlsPending,
    /// QUIT was answered; nothing more is read.
    Closed,
}

/// The state of one SMTP connection.
#[derive(Debug)]
pub struct Session {
    limits: Arc<Limits>,
    phase: Phase,
    /// Unprocessed input; bounded by one read plus one partial line.
    input: LineBuffer,
    helo: Option<String>,
    tls: bool,
    username: Option<String>,
    /// Username received in AUTH LOGIN, kept until the password arrives.
    login_user: Option<String>,
    /// Username being checked (see [`Event::Authenticate`]).
    authenticating: Option<String>,
    /// Failed AUTH attempts in this session.
    auth_failures: u32,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    data: Vec<u8>,
    /// A recipient of this transaction was refused and ignored
    /// (`ignore_rejected_recipients`), so DATA goes ahead without any.
    dropped_recipients: bool,
    /// Bytes of content seen in this DATA, kept or not.
    data_size: usize,
    /// Bytes reserved from the shared [`DataBudget`] for `data` (its
    /// capacity), held until the message is stored or dropped.
    reserved: usize,
    /// The shared budget ran out during this DATA: content is only counted.
    over_budget: bool,
    /// At the start of a content line (where `.` has meaning).
    data_line_start: bool,
    /// Replies queued for output before the next input is looked at.
    pending: VecDeque<Event>,
    /// Counts complete lines consumed, so the driver can tell a client that
    /// makes progress from one that trickles bytes (slow loris).
    progress: u64,
    /// Messages and recipients refused since the driver last asked
    /// ([`Session::take_rejected`]).
    rejected: u64,
}

const CRLF_DOT_CRLF_MAX: usize = 3;

impl Session {
    /// A new session on a connection that is already encrypted (implicit TLS)
    /// or not.
    pub fn new(limits: Arc<Limits>, tls: bool) -> Self {
        Self {
            limits,
            phase: Phase::Command,
            input: LineBuffer::default(),
            helo: None,
            tls,
            username: None,
            login_user: None,
            dropped_recipients: false,
            authenticating: None,
            auth_failures: 0,
            mail_from: None,
            rcpt_to: Vec::new(),
            data: Vec::new(),
            data_size: 0,
            reserved: 0,
            over_budget: false,
            data_line_start: true,
            pending: VecDeque::new(),
            progress: 0,
            rejected: 0,
        }
    }

    /// The 220 greeting to send when the connection opens.
    pub fn greeting(&self) -> Reply {
        Reply::new(
            220,
            format!("{} ESMTP mailsafe ready", self.limits.hostname),
        )
    }

    /// The reply to send when the client stays silent too long.
    pub fn timeout_reply(&self) -> Reply {
        Reply::new(421, "4.4.2 Idle timeout, closing connection")
    }

    /// Number of complete lines (commands or content) consumed so far.
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// Bytes of the shared budget this session holds for message content.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Whether the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the session is in the middle of a mail transaction (MAIL
    /// accepted, message not yet answered), which shutdown lets finish.
    pub fn in_transaction(&self) -> bool {
        self.mail_from.is_some() || matches!(self.phase, Phase::Data | Phase::Delivering)
    }

    /// Hands the session bytes read from the client. Call [`next_event`]
    /// until it returns `None` before feeding more.
    ///
    /// [`next_event`]: Session::next_event
    pub fn feed(&mut self, input: &[u8]) {
        if matches!(self.phase, Phase::Closed | Phase::TlsPending) {
            return;
        }
        self.input.feed(input);
    }

    /// The next thing to do, or `None` when more input is needed (or the
    /// session waits for [`delivered`](Session::delivered) /
    /// [`tls_established`](Session::tls_established), or is closed).
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            match self.phase {
                Phase::Delivering | Phase::Authenticating | Phase::TlsPending | Phase::Closed => {
                    return None;
                }
                Phase::Data => {
                    if !self.step_data() {
                        return None;
                    }
                }
                _ => {
                    let line = self.input.take_line(self.limits.max_line_length)?;
                    self.progress += 1;
                    match line {
                        Line::TooLong => self.push(Reply::new(500, "5.5.2 Line too long")),
                        Line::Complete(range) => {
                            let line = self.input.get(range).to_vec();
                            self.handle_line(&line);
                        }
                    }
                }
            }
        }
    }

    /// Messages and recipients this session refused since the last call, for
    /// Mailpit's `SMTPRejected` in `/api/v1/info`. Mailpit counts a message
    /// it cannot parse and a recipient its allow-list refuses; this catcher
    /// stores every message it can read and has no allow-list, so it counts
    /// the refusals a client sees for a message it sent or announced (size
    /// over the limit, no memory, storing failed) and for a recipient over
    /// `MP_SMTP_MAX_RECIPIENTS`. Syntax errors are not refusals.
    pub fn take_rejected(&mut self) -> u64 {
        std::mem::take(&mut self.rejected)
    }

    /// Answers a [`Event::Deliver`] that was not attempted because the
    /// memory delivery needs is not free: `452 4.3.1`, as for content that
    /// does not fit while it arrives; the client retries later.
    pub fn delivery_refused(&mut self) {
        if self.phase != Phase::Delivering {
            return;
        }
        self.release_data();
        self.phase = Phase::Command;
        self.rejected += 1;
        self.push(Reply::new(
            452,
            "4.3.1 Insufficient system storage, try again later",
        ));
    }

    /// Reports the outcome of a [`Event::Deliver`]: the stored message ID,
    /// or why storing failed (answered with a temporary 451 so the client
    /// retries).
    pub fn delivered(&mut self, outcome: Result<String, String>) {
        if self.phase != Phase::Delivering {
            return;
        }
        // The store is done with the content: its memory is free again.
        self.release_data();
        self.phase = Phase::Command;
        let reply = match outcome {
            // No ID: the store ignored it (a duplicate Message-ID).
            Ok(id) if id.is_empty() => Reply::new(250, "2.0.0 Ok: queued"),
            Ok(id) => Reply::new(250, format!("2.0.0 Ok: queued as {id}")),
            Err(why) => {
                self.rejected += 1;
                // One line only: the reason must not break the reply framing.
                let why: String = why.chars().filter(|c| !c.is_control()).take(200).collect();
                Reply::new(451, format!("4.3.0 Error: {why}"))
            }
        };
        self.push(reply);
    }

    /// Reports the verdict on an [`Event::Authenticate`]. The
    /// [`MAX_AUTH_FAILURES`]th failure closes the session with 421.
    pub fn authenticated(&mut self, ok: bool) {
        if self.phase != Phase::Authenticating {
            return;
        }
        self.phase = Phase::Command;
        let user = self.authenticating.take().unwrap_or_default();
        self.auth_verdict(user, ok);
    }

    fn auth_verdict(&mut self, user: String, ok: bool) {
        if ok {
            self.username = Some(user);
            return self.push(Reply::new(235, "2.7.0 Authentication successful"));
        }
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            self.phase = Phase::Closed;
            self.pending.push_back(Event::Close(Reply::new(
                421,
                "4.7.0 Too many failed authentication attempts, closing connection",
            )));
        } else {
            self.push(Reply::new(535, "5.7.8 Authentication credentials invalid"));
        }
    }

    /// The connection now runs over TLS: RFC 3207 requires forgetting
    /// everything learnt before, including any input pipelined after
    /// STARTTLS (it was sent in clear and could be an injection).
    pub fn tls_established(&mut self) {
        if self.phase != Phase::TlsPending {
            return;
        }
        self.phase = Phase::Command;
        self.tls = true;
        self.helo = None;
        self.username = None;
        self.reset_transaction();
        self.input.clear();
    }

    /// The code of the chaos trigger `pick` names, when chaos is on and
    /// the trigger fires.
    fn chaos(
        &self,
        pick: impl Fn(&super::chaos::Triggers) -> super::chaos::Trigger,
    ) -> Option<u16> {
        super::chaos::current(&self.limits.chaos).and_then(|t| pick(&t).fire())
    }

    fn push(&mut self, reply: Reply) {
        self.pending.push_back(Event::Reply(reply));
    }

    /// Consumes message content; returns false when more input is needed.
    fn step_data(&mut self) -> bool {
        let unread = self.input.unread();
        let rest_len = unread.len();
        if rest_len == 0 {
            return false;
        }
        let rest = self.input.get(unread.clone());
        match memchr(b'\n', rest) {
            Some(i) => {
                let line_start = self.data_line_start;
                let start = unread.start;
                let end = start + i + 1;
                self.input.consume_to(end);
                self.progress += 1;
                self.data_line_start = true;
                if line_start {
                    let line = self.input.get(start..end);
                    if line == b".\r\n" || line == b".\n" {
                        self.end_of_data();
                        return true;
                    }
                    let skip = usize::from(line[0] == b'.');
                    self.keep_data(start + skip, end);
                } else {
                    self.keep_data(start, end);
                }
                true
            }
            None => {
                // A partial line of 3+ bytes cannot be the terminator, so it
                // can go into the message now; this keeps the buffer small
                // however long a content line is.
                if rest_len < CRLF_DOT_CRLF_MAX {
                    return false;
                }
                let (start, end) = (unread.start, unread.end);
                self.input.consume_to(end);
                self.progress += 1;
                let skip =
                    usize::from(self.data_line_start && self.input.get(start..end)[0] == b'.');
                self.data_line_start = false;
                self.keep_data(start + skip, end);
                true
            }
        }
    }

    fn keep_data(&mut self, start: usize, end: usize) {
        let n = end - start;
        self.data_size = self.data_size.saturating_add(n);
        if self.data_size > self.limits.max_message_size || self.over_budget {
            // Over a limit: free what we held; the rest is only counted.
            self.release_data();
            return;
        }
        let need = self.data.len() + n;
        if need > self.data.capacity() {
            // Grow by doubling, as Vec would, but never past the message
            // limit, and only with memory reserved from the shared budget
            // (capacity, not length, is what the process really holds).
            let want = need
                .max(self.data.capacity().saturating_mul(2))
                .max(8 * 1024)
                .min(self.limits.max_message_size.max(need));
            let mut want = want;
            if let Some(budget) = &self.limits.data_budget {
                // Near the cap, settle for exactly what this line needs.
                let reserved = [want, need]
                    .into_iter()
                    .find(|&w| budget.try_reserve(w.saturating_sub(self.reserved)));
                let Some(w) = reserved else {
                    self.over_budget = true;
                    self.release_data();
                    return;
                };
                self.reserved = self.reserved.max(w);
                want = w;
            }
            self.data.reserve_exact(want - self.data.len());
        }
        self.data.extend_from_slice(self.input.get(start..end));
    }

    /// Drops the content held for the current message and returns its
    /// reservation to the shared budget.
    fn release_data(&mut self) {
        self.data = Vec::new();
        if self.reserved > 0 {
            if let Some(budget) = &self.limits.data_budget {
                budget.release(self.reserved);
            }
            self.reserved = 0;
        }
    }

    fn end_of_data(&mut self) {
        if self.data_size > self.limits.max_message_size {
            self.rejected += 1;
            return self.end_without_delivery(Reply::new(
                552,
                "5.3.4 Message size exceeds fixed maximum message size",
            ));
        }
        if self.over_budget {
            self.rejected += 1;
            return self.end_without_delivery(Reply::new(
                452,
                "4.3.1 Insufficient system storage, try again later",
            ));
        }
        if crlf_in_headers(&self.data) {
            if self.limits.strict_rfc_headers {
                self.rejected += 1;
                return self.end_without_delivery(Reply::new(
                    451,
                    "4.3.5 Unable to process mail: headers contain <CR><CR><LF>",
                ));
            }
            repair_cr_cr_lf(&mut self.data);
        }
        if self.rcpt_to.is_empty() {
            // Every recipient was refused and ignored: answered as if
            // queued, and dropped (Mailpit does the same).
            return self.end_without_delivery(Reply::new(250, "2.0.0 Ok: queued"));
        }
        let envelope = Envelope {
            mail_from: self.mail_from.take().unwrap_or_default(),
            rcpt_to: std::mem::take(&mut self.rcpt_to),
            data: std::mem::take(&mut self.data),
            username: self.username.clone(),
            helo: self.helo.clone().unwrap_or_default(),
            tls: self.tls,
        };
        // The reservation now covers the envelope's copy until the store
        // answers (see `delivered`).
        let held = std::mem::take(&mut self.reserved);
        self.reset_transaction();
        self.reserved = held;
        self.phase = Phase::Delivering;
        self.pending.push_back(Event::Deliver(envelope));
    }

    /// Ends the transaction at the end of DATA with `reply`, storing
    /// nothing.
    fn end_without_delivery(&mut self, reply: Reply) {
        self.reset_transaction();
        self.phase = Phase::Command;
        self.push(reply);
    }

    fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.dropped_recipients = false;
        self.rcpt_to.clear();
        self.release_data();
        self.data_size = 0;
        self.over_budget = false;
        self.data_line_start = true;
    }

    fn handle_line(&mut self, line: &[u8]) {
        match self.phase {
            Phase::AuthPlain => {
                self.phase = Phase::Command;
                self.auth_plain_response(line);
                return;
            }
            Phase::AuthLoginUser => {
                self.phase = Phase::Command;
                self.auth_login_user(line);
                return;
            }
            Phase::AuthLoginPass => {
                self.phase = Phase::Command;
                self.auth_login_pass(line);
                return;
            }
            _ => {}
        }
        let (verb, arg) = split_verb(line);
        let verb = verb.to_ascii_uppercase();
        match verb.as_slice() {
            b"EHLO" => self.cmd_helo(arg, true),
            b"HELO" => self.cmd_helo(arg, false),
            b"MAIL" => self.cmd_mail(arg),
            b"RCPT" => self.cmd_rcpt(arg),
            b"DATA" => self.cmd_data(arg),
            b"RSET" => {
                if !arg.is_empty() {
                    self.push(Reply::new(501, "5.5.4 Syntax: RSET"));
                } else {
                    self.reset_transaction();
                    self.push(Reply::new(250, "2.0.0 Ok"));
                }
            }
            b"NOOP" => self.push(Reply::new(250, "2.0.0 Ok")),
            b"QUIT" => {
                self.phase = Phase::Closed;
                self.pending
                    .push_back(Event::Close(Reply::new(221, "2.0.0 Bye")));
            }
            b"VRFY" => {
                if arg.is_empty() {
                    self.push(Reply::new(501, "5.5.4 Syntax: VRFY <address>"));
                } else {
                    self.push(Reply::new(
                        252,
                        "2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                    ));
                }
            }
            b"EXPN" => self.push(Reply::new(502, "5.5.1 EXPN not implemented")),
            b"HELP" => self.push(Reply::new(
                214,
                "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
            )),
            b"STARTTLS" => self.cmd_starttls(arg),
            b"AUTH" => self.cmd_auth(arg),
            _ => self.push(Reply::new(500, "5.5.2 Command not recognized")),
        }
    }

    fn cmd_helo(&mut self, arg: &[u8], extended: bool) {
        let name = trim(arg);
        // The name is echoed in the reply: a control character (a bare CR,
        // found by fuzzing) would break the reply's framing.
        if name.is_empty() || name.iter().any(|b| b.is_ascii_control()) {
            let verb = if extended { "EHLO" } else { "HELO" };
            self.push(Reply::new(501, format!("5.5.4 Syntax: {verb} hostname")));
            return;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        self.reset_transaction();
        let greeting = format!("{} greets {}", self.limits.hostname, name);
        self.helo = Some(name);
        if !extended {
            self.push(Reply::new(250, greeting));
            return;
        }
        let mut lines = vec![
            greeting,
            "PIPELINING".into(),
            // RFC 1870: `SIZE 0` is "no fixed maximum" (MP_MAX_MESSAGE_SIZE=0).
            if self.limits.max_message_size == super::UNLIMITED {
                "SIZE 0".into()
            } else {
                format!("SIZE {}", self.limits.max_message_size)
            },
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.limits.starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        self.push(Reply { code: 250, lines });
    }

    fn auth_offered(&self) -> bool {
        !matches!(self.limits.auth, AuthPolicy::None)
            && (self.tls || self.limits.auth_allow_insecure)
    }

    fn tls_missing(&self) -> bool {
        self.limits.require_tls && !self.tls
    }

    fn cmd_mail(&mut self, arg: &[u8]) {
        if self.helo.is_none() {
            return self.push(Reply::new(503, "5.5.1 Error: send HELO/EHLO first"));
        }
        if self.tls_missing() {
            return self.push(Reply::new(530, "5.7.0 Must issue a STARTTLS command first"));
        }
        if self.limits.auth.required() && self.username.is_none() {
            return self.push(Reply::new(530, "5.7.0 Authentication required"));
        }
        if self.mail_from.is_some() {
            return self.push(Reply::new(503, "5.5.1 Error: nested MAIL command"));
        }
        let Some(rest) = strip_prefix_ci(arg, b"FROM:") else {
            return self.push(Reply::new(501, "5.5.4 Syntax: MAIL FROM:<address>"));
        };
        let Some((addr, params)) = parse_path(rest) else {
            return self.push(Reply::new(501, "5.1.7 Bad sender address syntax"));
        };
        if let Some(code) = self.chaos(|t| t.sender) {
            return self.push(Reply::new(code, "Chaos sender error"));
        }
        for param in params {
            let (key, value) = match param.iter().position(|&b| b == b'=') {
                Some(i) => (&param[..i], Some(&param[i + 1..])),
                None => (param, None),
            };
            if key.eq_ignore_ascii_case(b"SIZE") {
                let size = value
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u64>().ok());
                match size {
                    None => return self.push(Reply::new(501, "5.5.4 Bad SIZE parameter")),
                    Some(n) if n > self.limits.max_message_size as u64 => {
                        self.rejected += 1;
                        return self.push(Reply::new(
                            552,
                            "5.3.4 Message size exceeds fixed maximum message size",
                        ));
                    }
                    Some(_) => {}
                }
            } else if key.eq_ignore_ascii_case(b"BODY") {
                let ok = value.is_some_and(|v| {
                    v.eq_ignore_ascii_case(b"7BIT") || v.eq_ignore_ascii_case(b"8BITMIME")
                });
                if !ok {
                    return self.push(Reply::new(501, "5.5.4 Bad BODY parameter"));
                }
            }
            // Other parameters (SMTPUTF8, AUTH=, DSN's RET/ENVID) change
            // nothing for a catcher that never relays; accept them.
        }
        self.mail_from = Some(addr);
        self.push(Reply::new(250, "2.1.0 Ok"));
    }

    fn cmd_rcpt(&mut self, arg: &[u8]) {
        if self.mail_from.is_none() {
            return self.push(Reply::new(503, "5.5.1 Error: need MAIL command"));
        }
        let Some(rest) = strip_prefix_ci(arg, b"TO:") else {
            return self.push(Reply::new(501, "5.5.4 Syntax: RCPT TO:<address>"));
        };
        let addr = match parse_path(rest) {
            Some((addr, _)) if !addr.is_empty() => addr,
            _ => return self.push(Reply::new(501, "5.1.3 Bad recipient address syntax")),
        };
        if let Some(code) = self.chaos(|t| t.recipient) {
            return self.push(Reply::new(code, "Chaos recipient error"));
        }
        if self.rcpt_to.len() >= self.limits.max_recipients {
            self.rejected += 1;
            return self.push(Reply::new(452, "4.5.3 Error: too many recipients"));
        }
        if let Some(allowed) = &self.limits.allowed_recipients
            && !allowed.is_match(&addr)
        {
            if self.limits.ignore_rejected_recipients {
                self.dropped_recipients = true;
                return self.push(Reply::new(250, "2.1.5 Ok"));
            }
            self.rejected += 1;
            return self.push(Reply::new(
                550,
                "5.1.0 Requested action not taken: mailbox unavailable",
            ));
        }
        self.rcpt_to.push(addr);
        self.push(Reply::new(250, "2.1.5 Ok"));
    }

    fn cmd_data(&mut self, arg: &[u8]) {
        if !arg.is_empty() {
            return self.push(Reply::new(501, "5.5.4 Syntax: DATA"));
        }
        if self.mail_from.is_none() {
            return self.push(Reply::new(503, "5.5.1 Error: need MAIL command"));
        }
        if self.rcpt_to.is_empty() && !self.dropped_recipients {
            return self.push(Reply::new(503, "5.5.1 Error: need RCPT command"));
        }
        if self
            .limits
            .data_budget
            .as_ref()
            .is_some_and(|b| b.is_exhausted())
        {
            // Refuse before the client streams a message we cannot keep.
            self.rejected += 1;
            return self.push(Reply::new(
                452,
                "4.3.1 Insufficient system storage, try again later",
            ));
        }
        self.phase = Phase::Data;
        self.release_data();
        self.over_budget = false;
        self.data_size = 0;
        self.data_line_start = true;
        self.push(Reply::new(354, "End data with <CR><LF>.<CR><LF>"));
    }

    fn cmd_starttls(&mut self, arg: &[u8]) {
        if !self.limits.starttls {
            return self.push(Reply::new(502, "5.5.1 STARTTLS not available"));
        }
        if self.tls {
            return self.push(Reply::new(503, "5.5.1 Already running TLS"));
        }
        if !arg.is_empty() {
            return self.push(Reply::new(501, "5.5.4 Syntax: STARTTLS"));
        }
        self.phase = Phase::TlsPending;
        self.pending
            .push_back(Event::StartTls(Reply::new(220, "2.0.0 Ready to start TLS")));
    }

    fn cmd_auth(&mut self, arg: &[u8]) {
        if matches!(self.limits.auth, AuthPolicy::None) {
            return self.push(Reply::new(502, "5.5.1 AUTH not available"));
        }
        if self.helo.is_none() {
            return self.push(Reply::new(503, "5.5.1 Error: send HELO/EHLO first"));
        }
        if !self.auth_offered() {
            return self.push(Reply::new(530, "5.7.0 Must issue a STARTTLS command first"));
        }
        if self.username.is_some() {
            return self.push(Reply::new(503, "5.5.1 Already authenticated"));
        }
        if self.mail_from.is_some() {
            return self.push(Reply::new(
                503,
                "5.5.1 AUTH not allowed during a transaction",
            ));
        }
        let (mech, initial) = split_verb(arg);
        let initial = trim(initial);
        let known = mech.eq_ignore_ascii_case(b"PLAIN") || mech.eq_ignore_ascii_case(b"LOGIN");
        if known && let Some(code) = self.chaos(|t| t.authentication) {
            return self.push(Reply::new(code, "Chaos authentication error"));
        }
        if mech.eq_ignore_ascii_case(b"PLAIN") {
            if initial.is_empty() {
                self.phase = Phase::AuthPlain;
                self.push(Reply::new(334, ""));
            } else {
                self.auth_plain_response(initial);
            }
        } else if mech.eq_ignore_ascii_case(b"LOGIN") {
            if initial.is_empty() {
                self.phase = Phase::AuthLoginUser;
                self.push(Reply::new(334, "VXNlcm5hbWU6"));
            } else {
                self.auth_login_user(initial);
            }
        } else if mech.is_empty() {
            self.push(Reply::new(501, "5.5.4 Syntax: AUTH mechanism"));
        } else {
            self.push(Reply::new(504, "5.5.4 Unrecognized authentication type"));
        }
    }

    /// Decodes one base64 client response; `None` answers the error itself.
    fn auth_decode(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        let line = trim(line);
        if line == b"*" {
            self.push(Reply::new(501, "5.0.0 Authentication cancelled"));
            return None;
        }
        match BASE64.decode(line) {
            Ok(v) => Some(v),
            Err(_) => {
                self.push(Reply::new(501, "5.5.2 Cannot decode response"));
                None
            }
        }
    }

    fn auth_plain_response(&mut self, line: &[u8]) {
        let Some(decoded) = self.auth_decode(line) else {
            return;
        };
        // authzid NUL authcid NUL passwd (RFC 4616).
        let mut parts = decoded.split(|&b| b == 0);
        let (Some(_authz), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.push(Reply::new(501, "5.5.2 Invalid PLAIN response"));
        };
        let (user, pass) = (user.to_vec(), pass.to_vec());
        self.check_credentials(&user, &pass);
    }

    fn auth_login_user(&mut self, line: &[u8]) {
        let Some(user) = self.auth_decode(line) else {
            return;
        };
        self.login_user = Some(String::from_utf8_lossy(&user).into_owned());
        self.phase = Phase::AuthLoginPass;
        self.push(Reply::new(334, "UGFzc3dvcmQ6"));
    }

    fn auth_login_pass(&mut self, line: &[u8]) {
        let user = self.login_user.take().unwrap_or_default();
        let Some(pass) = self.auth_decode(line) else {
            return;
        };
        self.check_credentials(user.as_bytes(), &pass);
    }

    fn check_credentials(&mut self, user: &[u8], pass: &[u8]) {
        let name = String::from_utf8_lossy(user).into_owned();
        match &self.limits.auth {
            AuthPolicy::None => self.auth_verdict(name, false),
            AuthPolicy::AcceptAny => self.auth_verdict(name, true),
            AuthPolicy::Users(_) => {
                match (String::from_utf8(user.to_vec()), std::str::from_utf8(pass)) {
                    (Ok(user), Ok(password)) => {
                        self.authenticating = Some(user.clone());
                        self.phase = Phase::Authenticating;
                        self.pending.push_back(Event::Authenticate(Login {
                            user,
                            password: password.to_owned(),
                        }));
                    }
                    // No configured user or password is anything but UTF-8.
                    _ => self.auth_verdict(name, false),
                }
            }
        }
    }
}

impl Drop for Session {
    /// A connection dropped mid-message (EOF, timeout, shutdown) must give
    /// its share of the budget back.
    fn drop(&mut self) {
        self.release_data();
    }
}

/// Drives a session with arbitrary input and checks its invariants; shared
/// by the cargo-fuzz target (`fuzz/`) and a randomized unit test so the
/// same checks run in CI without a nightly toolchain.
///
/// The first bytes choose the configuration and how the input is split
/// into reads; the rest is the client's byte stream. Panics on any broken
/// invariant: a reply that is not one well-formed SMTP reply, a kept
/// message larger than the limit, or a buffer that grows without bound.
/// Returns the reply codes seen, so tests can check the input reached every
/// state.
#[doc(hidden)]
pub fn fuzz_session(input: &[u8]) -> std::collections::BTreeSet<u16> {
    let mut seen = std::collections::BTreeSet::new();
    let Some((&knobs, rest)) = input.split_first() else {
        return seen;
    };
    let Some((&chunk, stream)) = rest.split_first() else {
        return seen;
    };
    let auth = match knobs & 3 {
        0 => AuthPolicy::None,
        1 => AuthPolicy::AcceptAny,
        _ => AuthPolicy::Users(Arc::new(
            Credentials::from_pairs("u:p", "fuzz").expect("static credentials parse"),
        )),
    };
    let limits = Arc::new(Limits {
        max_message_size: 64,
        max_recipients: 3,
        max_line_length: 32,
        starttls: knobs & 4 != 0,
        require_tls: knobs & 8 != 0,
        auth,
        auth_allow_insecure: knobs & 16 != 0,
        // A budget smaller than one message, so running out is reachable.
        data_budget: (knobs & 64 != 0).then(|| Arc::new(DataBudget::new(40))),
        ..Limits::default()
    });
    let mut session = Session::new(limits.clone(), knobs & 32 != 0);
    let chunk = usize::from(chunk).max(1);
    let mut check = |reply: &Reply| {
        seen.insert(reply.code);
        assert!((200..600).contains(&reply.code), "{reply:?}");
        assert!(!reply.lines.is_empty());
        for line in &reply.lines {
            assert!(!line.contains(['\r', '\n']), "{reply:?}");
        }
    };
    'input: for piece in stream.chunks(chunk) {
        session.feed(piece);
        while let Some(event) = session.next_event() {
            match event {
                Event::Reply(r) => check(&r),
                Event::Deliver(envelope) => {
                    assert!(envelope.data.len() <= limits.max_message_size);
                    assert!(!envelope.rcpt_to.is_empty());
                    assert!(envelope.rcpt_to.len() <= limits.max_recipients);
                    let outcome = if envelope.data.len() % 2 == 0 {
                        Ok("id".to_string())
                    } else {
                        Err("fail\r\n".to_string())
                    };
                    session.delivered(outcome);
                }
                Event::StartTls(r) => {
                    check(&r);
                    session.tls_established();
                }
                Event::Close(r) => {
                    check(&r);
                    break 'input;
                }
                Event::Authenticate(login) => {
                    let ok = match &limits.auth {
                        AuthPolicy::Users(creds) => creds.verify(&login.user, &login.password),
                        _ => panic!("only configured users need checking"),
                    };
                    session.authenticated(ok);
                }
            }
            assert!(session.data.len() <= limits.max_message_size);
            if let Some(budget) = &limits.data_budget {
                assert_eq!(budget.used(), session.reserved);
                assert!(budget.used() <= budget.limit());
                assert!(session.data.capacity() <= session.reserved);
            }
        }
        // Everything complete was consumed; what is left is at most one
        // partial line (command) or a possible terminator (data).
        assert!(session.input.unread_len() <= limits.max_line_length.max(chunk));
    }
    drop(session);
    if let Some(budget) = &limits.data_budget {
        assert_eq!(budget.used(), 0, "a closed session gives its memory back");
    }
    seen
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Whether the header section of `data` (up to its first empty line)
/// contains CR CR LF.
fn crlf_in_headers(data: &[u8]) -> bool {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| data.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(data.len());
    data[..end].windows(3).any(|w| w == b"\r\r\n")
}

/// Turns every CR CR LF of `data` into CR LF, in place (Mailpit's repair
/// for clients that double the CR, mailpit#87).
fn repair_cr_cr_lf(data: &mut Vec<u8>) {
    let mut out = 0;
    for i in 0..data.len() {
        let skip =
            data[i] == b'\r' && data.get(i + 1) == Some(&b'\r') && data.get(i + 2) == Some(&b'\n');
        if !skip {
            data[out] = data[i];
            out += 1;
        }
    }
    data.truncate(out);
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// Splits `VERB rest` at the first space.
fn split_verb(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], trim(&line[i + 1..])),
        None => (trim(line), &[][..]),
    }
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Parses `<path> [params...]` after `FROM:` / `TO:`. Accepts a space after
/// the colon and a bare address without brackets, as many real clients send
/// them; rejects control characters and unbalanced brackets. The address is
/// returned without brackets (and without a source route).
fn parse_path(s: &[u8]) -> Option<(String, Vec<&[u8]>)> {
    let s = trim(s);
    let (addr, rest) = if let Some(inner) = s.strip_prefix(b"<") {
        let close = inner.iter().position(|&b| b == b'>')?;
        (&inner[..close], &inner[close + 1..])
    } else {
        match s.iter().position(|&b| b == b' ') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, &[][..]),
        }
    };
    if addr
        .iter()
        .any(|&b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>' || b == b' ')
    {
        return None;
    }
    // Drop an obsolete source route (`@a,@b:user@c`).
    let addr = match (addr.first(), addr.iter().position(|&b| b == b':')) {
        (Some(b'@'), Some(i)) => &addr[i + 1..],
        _ => addr,
    };
    let addr = std::str::from_utf8(addr).ok()?.to_owned();
    if !rest.is_empty() && !rest.starts_with(b" ") {
        return None;
    }
    let params = rest
        .split(|&b| b == b' ')
        .filter(|p| !p.is_empty())
        .collect();
    Some((addr, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(limits: Limits) -> Session {
        Session::new(Arc::new(limits), false)
    }

    /// Feeds `input` and collects every event until input is exhausted,
    /// answering deliveries with a fixed ID.
    fn run(s: &mut Session, input: &[u8]) -> (Vec<u16>, Vec<Envelope>) {
        s.feed(input);
        let mut codes = Vec::new();
        let mut mails = Vec::new();
        while let Some(ev) = s.next_event() {
            match ev {
                Event::Reply(r) | Event::Close(r) | Event::StartTls(r) => codes.push(r.code),
                Event::Deliver(e) => {
                    mails.push(e);
                    s.delivered(Ok("ID1".into()));
                }
                Event::Authenticate(login) => {
                    let ok = match &s.limits.auth {
                        AuthPolicy::Users(c) => c.verify(&login.user, &login.password),
                        _ => unreachable!("only configured users are checked by the driver"),
                    };
                    s.authenticated(ok);
                }
            }
        }
        (codes, mails)
    }

    #[test]
    fn full_transaction_with_dot_unstuffing() {
        let mut s = session(Limits::default());
        let (codes, mails) = run(
            &mut s,
            b"EHLO client\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
        );
        assert_eq!(codes, vec![250, 250, 250, 354, 250, 221]);
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].mail_from, "a@x");
        assert_eq!(mails[0].rcpt_to, vec!["b@y".to_string()]);
        assert_eq!(mails[0].data, b"Subject: hi\r\n\r\n.dot\r\n");
        assert_eq!(mails[0].helo, "client");
    }

    #[test]
    fn byte_at_a_time_gives_same_result() {
        let input: &[u8] =
            b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\n.x\r\nline two is long\r\n.\r\nNOOP\r\n";
        let mut s = session(Limits::default());
        let mut codes = Vec::new();
        let mut mails = Vec::new();
        for b in input {
            let (c, m) = run(&mut s, std::slice::from_ref(b));
            codes.extend(c);
            mails.extend(m);
        }
        assert_eq!(codes, vec![250, 250, 250, 354, 250, 250]);
        assert_eq!(mails[0].data, b"x\r\nline two is long\r\n");
        assert_eq!(mails[0].mail_from, "");
    }

    #[test]
    fn wrong_order_unknown_and_syntax_errors() {
        let mut s = session(Limits::default());
        let (codes, _) = run(
            &mut s,
            b"MAIL FROM:<a@x>\r\nEHLO c\r\nRCPT TO:<b@y>\r\nDATA\r\nFOO\r\nMAIL TO:<a>\r\nMAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\nDATA\r\nRCPT TO:<>\r\nRCPT TO:b@y\r\nEHLO\r\nVRFY bob\r\nEXPN list\r\nHELP\r\n",
        );
        assert_eq!(
            codes,
            vec![
                503, 250, 503, 503, 500, 501, 250, 503, 503, 501, 250, 501, 252, 502, 214
            ]
        );
    }

    #[test]
    fn recipient_limit_gives_452_and_session_goes_on() {
        let mut s = session(Limits {
            max_recipients: 2,
            ..Limits::default()
        });
        let (codes, mails) = run(
            &mut s,
            b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\nRCPT TO:<3@y>\r\nDATA\r\nhi\r\n.\r\n",
        );
        assert_eq!(codes, vec![250, 250, 250, 250, 452, 354, 250]);
        assert_eq!(mails[0].rcpt_to.len(), 2);
    }

    #[test]
    fn oversized_message_is_discarded_with_552() {
        let mut s = session(Limits {
            max_message_size: 10,
            ..Limits::default()
        });
        let (codes, mails) = run(
            &mut s,
            b"EHLO c\r\nMAIL FROM:<a@x> SIZE=11\r\nMAIL FROM:<a@x> SIZE=5\r\nRCPT TO:<b@y>\r\nDATA\r\n0123456789abcdef\r\n.\r\nMAIL FROM:<a@x>\r\n",
        );
        assert_eq!(codes, vec![250, 552, 250, 250, 354, 552, 250]);
        assert!(mails.is_empty());
        assert!(s.data.is_empty());
    }

    #[test]
    fn shared_budget_refuses_the_message_that_does_not_fit_with_452() {
        let budget = Arc::new(DataBudget::new(30_000));
        let limits = Arc::new(Limits {
            max_message_size: 20_000,
            data_budget: Some(budget.clone()),
            ..Limits::default()
        });
        let (mut a, mut b) = (
            Session::new(limits.clone(), false),
            Session::new(limits.clone(), false),
        );
        let start = b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n";
        let body = format!("{}\r\n", "x".repeat(98)).repeat(150); // 15,000 bytes
        assert_eq!(run(&mut a, start).0, vec![250, 250, 250, 354]);
        assert_eq!(run(&mut b, start).0, vec![250, 250, 250, 354]);
        // A holds 15,000 bytes (reserved as capacity), B cannot get as much.
        assert!(run(&mut a, body.as_bytes()).0.is_empty());
        assert!(budget.used() >= 15_000 && budget.used() <= 30_000);
        assert!(run(&mut b, body.as_bytes()).0.is_empty());
        assert!(budget.used() <= 30_000);
        assert!(b.data.is_empty(), "B's content is thrown away as it comes");
        let (codes, mails) = run(&mut b, b".\r\n");
        assert_eq!(codes, vec![452]);
        assert!(mails.is_empty());
        // A is stored; both reservations come back, and B's retry fits.
        let (codes, mails) = run(&mut a, b".\r\n");
        assert_eq!((codes, mails[0].data.len()), (vec![250], 15_000));
        assert_eq!(budget.used(), 0);
        let (codes, mails) = run(
            &mut b,
            &[start.as_slice(), body.as_bytes(), b".\r\n"].concat(),
        );
        assert_eq!(codes, vec![250, 250, 250, 354, 250]);
        assert_eq!(mails.len(), 1);
        assert_eq!(budget.used(), 0);

        // An exhausted budget refuses DATA before any content is sent, and
        // a session dropped mid-message gives its share back.
        let c = {
            let mut c = Session::new(limits.clone(), false);
            run(&mut c, start);
            run(&mut c, body.as_bytes());
            c
        };
        assert!(budget.try_reserve(budget.limit() - budget.used()));
        let (codes, _) = run(
            &mut a,
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nRSET\r\n",
        );
        assert_eq!(codes, vec![250, 250, 452, 250]);
        let held = budget.used();
        drop(c);
        assert!(budget.used() <= held - 15_000);
    }

    #[test]
    fn helo_names_with_control_characters_are_refused() {
        // Fuzz regression: `EHLO x<CR>+MAIL…` echoed a bare CR in the 250.
        let crash = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/seeds/smtp_session/regress-ehlo-bare-cr"
        ))
        .unwrap();
        fuzz_session(&crash);
        let mut s = session(Limits::default());
        let (codes, _) = run(
            &mut s,
            b"EHLO x\r+y\r\nHELO a\tb\r\nEHLO \x7f\r\nEHLO ok.example\r\n",
        );
        assert_eq!(codes, vec![501, 501, 501, 250]);
    }

    #[test]
    fn long_line_is_dropped_with_bounded_memory() {
        let mut s = session(Limits::default());
        run(&mut s, b"EHLO c\r\n");
        let chunk = vec![b'A'; 64 * 1024];
        for _ in 0..64 {
            let (codes, _) = run(&mut s, &chunk);
            assert!(codes.is_empty());
            assert!(s.input.held() <= 4096 + chunk.len());
        }
        let (codes, _) = run(&mut s, b"\r\nNOOP\r\n");
        assert_eq!(codes, vec![500, 250]);
    }

    #[test]
    fn nul_bytes_and_garbage_do_not_break_the_session() {
        let mut s = session(Limits::default());
        let (codes, _) = run(&mut s, b"\0\0\0\r\nEHLO \0\r\n\xff\xfe\r\n\r\nNOOP\r\n");
        assert_eq!(codes, vec![500, 501, 500, 500, 250]);
    }

    #[test]
    fn auth_plain_and_login() {
        let creds = Credentials::from_pairs("alice:secret bob:pw", "test").unwrap();
        let limits = Limits {
            auth: AuthPolicy::Users(Arc::new(creds)),
            auth_allow_insecure: true,
            ..Limits::default()
        };
        let mut s = session(limits.clone());
        let plain = BASE64.encode(b"\0alice\0secret");
        let bad = BASE64.encode(b"\0alice\0wrong");
        let input = format!(
            "EHLO c\r\nMAIL FROM:<a@x>\r\nAUTH PLAIN {bad}\r\nAUTH PLAIN\r\n{plain}\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<a@x>\r\n"
        );
        let (codes, _) = run(&mut s, input.as_bytes());
        assert_eq!(codes, vec![250, 530, 535, 334, 235, 503, 250]);
        assert_eq!(s.username.as_deref(), Some("alice"));

        let mut s = session(limits);
        let input = format!(
            "EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH LOGIN\r\n{}\r\n{}\r\nAUTH LOGIN\r\n",
            BASE64.encode("bob"),
            BASE64.encode("pw")
        );
        let (codes, _) = run(&mut s, input.as_bytes());
        assert_eq!(codes, vec![250, 334, 501, 334, 334, 235, 503]);
        assert_eq!(s.username.as_deref(), Some("bob"));
    }

    #[test]
    fn third_failed_auth_closes_the_session_with_421() {
        let creds = Credentials::from_pairs("alice:secret", "test").unwrap();
        let limits = Limits {
            auth: AuthPolicy::Users(Arc::new(creds)),
            auth_allow_insecure: true,
            ..Limits::default()
        };
        let mut s = session(limits);
        let bad = BASE64.encode(b"\0alice\0wrong");
        let unknown = BASE64.encode(b"\0mallory\0secret");
        let input = format!(
            "EHLO c\r\nAUTH PLAIN {bad}\r\nAUTH PLAIN {unknown}\r\nAUTH PLAIN {bad}\r\nNOOP\r\n"
        );
        let (codes, _) = run(&mut s, input.as_bytes());
        // The NOOP after the close is never read.
        assert_eq!(codes, vec![250, 535, 535, 421]);
        assert!(s.username.is_none());
        // The credentials wait for the driver's verdict: nothing else is
        // answered meanwhile, pipelined commands included.
        let mut s = session(Limits {
            auth: AuthPolicy::Users(Arc::new(Credentials::from_pairs("a:b", "t").unwrap())),
            auth_allow_insecure: true,
            ..Limits::default()
        });
        s.feed(
            format!(
                "EHLO c\r\nAUTH PLAIN {}\r\nNOOP\r\n",
                BASE64.encode(b"\0a\0b")
            )
            .as_bytes(),
        );
        assert!(matches!(s.next_event(), Some(Event::Reply(r)) if r.code == 250));
        let Some(Event::Authenticate(login)) = s.next_event() else {
            panic!("credentials go to the driver");
        };
        assert_eq!(format!("{login:?}"), "Login(\"a\", <redacted>)");
        assert!(s.next_event().is_none());
        s.authenticated(true);
        assert!(matches!(s.next_event(), Some(Event::Reply(r)) if r.code == 235));
        assert!(matches!(s.next_event(), Some(Event::Reply(r)) if r.code == 250));
    }

    #[test]
    fn auth_needs_tls_unless_insecure_allowed() {
        let limits = Limits {
            auth: AuthPolicy::AcceptAny,
            starttls: true,
            ..Limits::default()
        };
        let mut s = session(limits);
        s.feed(b"EHLO c\r\nAUTH PLAIN AGEAYg==\r\nSTARTTLS\r\nNOOP\r\n");
        let Some(Event::Reply(ehlo)) = s.next_event() else {
            panic!("no EHLO reply")
        };
        assert!(ehlo.lines.contains(&"STARTTLS".to_string()));
        assert!(!ehlo.lines.iter().any(|l| l.starts_with("AUTH")));
        assert!(matches!(
            s.next_event(),
            Some(Event::Reply(Reply { code: 530, .. }))
        ));
        assert!(matches!(
            s.next_event(),
            Some(Event::StartTls(Reply { code: 220, .. }))
        ));
        // The pipelined NOOP sent in clear must be thrown away.
        assert_eq!(s.next_event(), None);
        s.tls_established();
        assert_eq!(s.next_event(), None);
        let (codes, _) = run(
            &mut s,
            b"MAIL FROM:<a@x>\r\nEHLO c\r\nAUTH PLAIN AGEAYg==\r\n",
        );
        assert_eq!(codes, vec![503, 250, 235]);
    }

    #[test]
    fn delivery_failure_is_temporary() {
        let mut s = session(Limits::default());
        s.feed(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nRSET\r\n");
        let mut codes = Vec::new();
        while let Some(ev) = s.next_event() {
            match ev {
                Event::Reply(r) => codes.push(r.code),
                Event::Deliver(_) => s.delivered(Err("disk full\r\n250 fake".into())),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(codes, vec![250, 250, 250, 354, 451, 250]);
    }

    #[test]
    fn reply_wire_format() {
        let r = Reply {
            code: 250,
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(r.to_bytes(), b"250-a\r\n250 b\r\n");
    }
    #[test]
    fn random_input_keeps_invariants() {
        use rand::{Rng, SeedableRng};
        let words: [&[u8]; 24] = [
            b"EHLO x\r\n",
            b"HELO x\r\n",
            b"MAIL FROM:<a@b> SIZE=99999\r\n",
            b"MAIL FROM:<> BODY=8BITMIME SMTPUTF8\r\n",
            b"cA==\r\n",
            b"VRFY x\r\n",
            b"NOOP\r\n",
            b"EXPN x\r\n",
            b"HELP\r\n",
            b"MAIL FROM:<a@b>\r\n",
            b"RCPT TO:<c@d>\r\n",
            b"DATA\r\n",
            b".\r\n",
            b"..\r\n",
            b"AUTH PLAIN\r\n",
            b"AUTH LOGIN dQ==\r\n",
            b"AHUAcA==\r\n",
            b"STARTTLS\r\n",
            b"RSET\r\n",
            b"\r\n",
            b"\0",
            b"\n",
            b"xxxxxxxxxxxxxxxxxxxxx",
            b"QUIT\r\n",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(5321);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            let mut input = vec![rng.random::<u8>(), rng.random::<u8>()];
            if rng.random_bool(0.3) {
                // Often start inside a transaction, so content, delivery and
                // its failures are reached as well as the command states.
                input.extend_from_slice(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
            }
            for _ in 0..rng.random_range(0..40) {
                if rng.random_bool(0.8) {
                    input.extend_from_slice(words[rng.random_range(0..words.len())]);
                } else {
                    input.push(rng.random());
                }
            }
            seen.extend(fuzz_session(&input));
        }
        // The input reaches every state: greeting-less replies from every
        // command family, AUTH challenges and outcomes, DATA, delivery (250
        // and the 451 of a failed store), every limit, STARTTLS and QUIT.
        for code in [
            214, 220, 221, 235, 250, 252, 334, 354, 451, 452, 500, 501, 502, 503, 530, 535, 552,
        ] {
            assert!(
                seen.contains(&code),
                "reply {code} never produced: {seen:?}"
            );
        }
    }
}
