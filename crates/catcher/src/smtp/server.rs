//! The SMTP server: accepts TCP connections (optionally with implicit TLS),
//! drives one [`Session`] per connection, upgrades on STARTTLS, and hands
//! every message to its [`Deliver`] (the store), answering 250 only after
//! it says the message is durable.
//!
//! Defences against hostile clients live here, where the clock and sockets
//! are: an idle timeout that only progress resets (a complete line, or
//! message content) and fixed-size read buffers; the connection cap (extra
//! connections get 421 and are closed), write and TLS handshake timeouts
//! are [`crate::listen`]'s, shared with POP3.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::deliver::Deliver;
use super::proto::{Event, Limits, Reply, Session};
use crate::auth::AuthPolicy;
use crate::listen::{self, Admission, BindError, IdleClock, Input};
use crate::storage::NewMessage;

/// Bytes read from a socket at a time; with the session's own bounded
/// buffers this caps per-connection memory apart from the message itself.
const READ_CHUNK: usize = 64 * 1024;

/// Memory storing a message holds beside its raw bytes, as a multiple of
/// them: the parsed parts and search text (about the raw size) and the
/// compressed copy (zstd's buffer is sized for the worst case, the raw
/// size).
const DELIVERY_OVERHEAD: usize = 2;

/// How the server runs, beyond the protocol limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Protocol limits and offered features.
    pub limits: Limits,
    /// Certificate and key for STARTTLS / implicit TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Speak TLS from the first byte (SMTPS, port 465 style) instead of
    /// offering STARTTLS.
    pub implicit_tls: bool,
    /// Most connections served at once; more are refused with 421.
    pub max_connections: usize,
    /// Close a connection that makes no progress for this long.
    pub idle_timeout: Duration,
    /// Close a connection whose TLS handshake (implicit TLS or STARTTLS)
    /// has not completed after this long: a handshake is not progress, and
    /// a client that opens the TLS port and says nothing must not hold a
    /// connection slot for the whole idle timeout.
    pub tls_handshake_timeout: Duration,
    /// On shutdown, how long sessions may take to finish the transaction
    /// they are in.
    pub drain_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            tls: None,
            implicit_tls: false,
            max_connections: 1000,
            idle_timeout: Duration::from_secs(300),
            tls_handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound SMTP server, ready to [`run`](SmtpServer::run).
pub struct SmtpServer(listen::Bound<Shared>);

/// What every session task needs.
struct Shared {
    limits: Arc<Limits>,
    tls: Option<TlsAcceptor>,
    implicit_tls: bool,
    idle_timeout: Duration,
    tls_handshake_timeout: Duration,
    sink: Arc<dyn Deliver>,
}

impl SmtpServer {
    /// Binds `addr` (use port 0 for a free port); accepted messages go to
    /// `sink`.
    pub async fn bind(
        addr: &str,
        mut options: ServerOptions,
        sink: Arc<dyn Deliver>,
    ) -> Result<Self, BindError> {
        let listener = listen::bind("SMTP", addr).await?;
        options.limits.starttls = options.tls.is_some() && !options.implicit_tls;
        let shared = Shared {
            limits: Arc::new(options.limits),
            tls: options.tls.map(TlsAcceptor::from),
            implicit_tls: options.implicit_tls,
            idle_timeout: options.idle_timeout,
            tls_handshake_timeout: options.tls_handshake_timeout,
            sink,
        };
        let refusal = Reply {
            code: 421,
            lines: vec!["4.7.0 Too many connections, try again later".into()],
        };
        Ok(Self(listen::Bound::new(
            listener,
            shared,
            Admission {
                protocol: "SMTP",
                max_connections: options.max_connections,
                refusal: refusal.to_bytes(),
                drain_timeout: options.drain_timeout,
            },
            READ_CHUNK,
        )))
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Serves until `shutdown` completes; then stops accepting, tells idle
    /// sessions goodbye (421), lets sessions inside a transaction finish it
    /// (up to the drain timeout), and returns. Every message answered 250
    /// was committed before its answer, so nothing acknowledged is lost.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.0.run(shutdown).await;
    }
}

impl listen::Protocol for Shared {
    type Session = Session;

    fn tls(&self) -> (Option<&TlsAcceptor>, bool, Duration) {
        (
            self.tls.as_ref(),
            self.implicit_tls,
            self.tls_handshake_timeout,
        )
    }

    fn session(&self, tls: bool) -> Session {
        Session::new(self.limits.clone(), tls)
    }

    fn tls_established(session: &mut Session) {
        session.tls_established();
    }

    async fn drive<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        stream: &mut S,
        session: &mut Session,
        greet: bool,
        stop: watch::Receiver<bool>,
        buf: &mut [u8],
    ) -> io::Result<bool> {
        if greet {
            write(stream, &session.greeting().to_bytes(), self).await?;
        }
        Ok(matches!(
            drive(stream, session, self, stop, buf).await?,
            Outcome::StartTls
        ))
    }
}

/// Why [`drive`] returned.
enum Outcome {
    /// The session is over (QUIT, EOF, timeout or shutdown).
    Closed,
    /// The client asked for STARTTLS and was told to go ahead.
    StartTls,
}

async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    shared: &Shared,
) -> io::Result<()> {
    listen::write_within(stream, bytes, shared.idle_timeout).await
}

/// Runs the session over `stream` until it closes or asks for TLS.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    buf: &mut [u8],
) -> io::Result<Outcome> {
    let mut out = Vec::with_capacity(1024);
    let mut clock = IdleClock::new(shared.idle_timeout, session.progress(), stop);
    loop {
        // Answer everything the input so far allows; with PIPELINING this
        // batches a whole group of replies into one write.
        while let Some(event) = session.next_event() {
            match event {
                Event::Reply(reply) => reply.write_to(&mut out),
                Event::Deliver(envelope) => {
                    let size = envelope.data.len();
                    // The raw copy is already counted (the session's
                    // reservation); storing it holds about as much again
                    // in parsed parts and search text, and again in the
                    // compressed copy. Capped at what is left of the budget
                    // beside the raw copy, so a message within the size
                    // limit always goes through once others are done.
                    let _held = match &shared.limits.data_budget {
                        None => None,
                        Some(budget) => {
                            let extra = size
                                .saturating_mul(DELIVERY_OVERHEAD)
                                .min(budget.limit().saturating_sub(session.reserved()));
                            match budget.reserve(extra) {
                                Some(held) => Some(held),
                                None => {
                                    tracing::warn!(
                                        size,
                                        "no memory to store a message; answering 452"
                                    );
                                    session.delivery_refused();
                                    continue;
                                }
                            }
                        }
                    };
                    let outcome = shared
                        .sink
                        .deliver(NewMessage {
                            raw: envelope.data,
                            mail_from: envelope.mail_from,
                            rcpt_to: envelope.rcpt_to,
                            username: envelope.username,
                        })
                        .await;
                    match &outcome {
                        Ok(id) => tracing::debug!(id = %id, size, "message stored"),
                        Err(e) => tracing::error!(error = %e, size, "storing a message failed"),
                    }
                    // The client learns that storing failed, not where or
                    // why (paths and SQLite's words are for the log).
                    session
                        .delivered(outcome.map_err(|_| "could not store the message".to_string()));
                }
                Event::Authenticate(login) => {
                    let ok = match &shared.limits.auth {
                        AuthPolicy::Users(creds) => creds.check(login.user, login.password).await,
                        // The session only asks when users are configured.
                        _ => false,
                    };
                    session.authenticated(ok);
                }
                Event::StartTls(reply) => {
                    reply.write_to(&mut out);
                    write(stream, &out, shared).await?;
                    return Ok(Outcome::StartTls);
                }
                Event::Close(reply) => {
                    reply.write_to(&mut out);
                    write(stream, &out, shared).await?;
                    return Ok(Outcome::Closed);
                }
            }
        }
        let rejected = session.take_rejected();
        if rejected > 0 {
            shared.sink.rejected(rejected);
        }
        if clock.stopping() && !session.in_transaction() {
            Reply {
                code: 421,
                lines: vec!["4.3.2 Service shutting down, try again later".into()],
            }
            .write_to(&mut out);
            write(stream, &out, shared).await?;
            return Ok(Outcome::Closed);
        }
        if !out.is_empty() {
            write(stream, &out, shared).await?;
            out.clear();
        }
        clock.progress(session.progress());
        match clock.read(stream, buf).await? {
            Input::Read(n) => session.feed(&buf[..n]),
            Input::Closed => return Ok(Outcome::Closed),
            Input::IdleTimeout => {
                session.timeout_reply().write_to(&mut out);
                let _ = write(stream, &out, shared).await;
                return Ok(Outcome::Closed);
            }
            Input::Stop => {}
        }
    }
}
