//! The POP3 server: accepts TCP connections (optionally with implicit TLS)
//! through [`crate::listen`], shared with SMTP (connection cap, write and
//! TLS handshake timeouts, drain), drives one [`Session`] per connection,
//! upgrades on STLS, and answers from the [`Store`].
//!
//! Per connection, memory is one fixed read buffer plus the message being
//! sent; the raw message and its wire form are reserved from the SMTP
//! memory cap ([`DataBudget`]) first, so many clients fetching large
//! messages at once get `-ERR [SYS/TEMP]` instead of exhausting memory. An
//! idle timeout that only complete lines reset drops slow clients.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::proto::{Entry, Event, Limits, Retrieved, Session, Verdict};
use crate::auth::Credentials;
use crate::listen::{self, Admission, BindError, IdleClock, Input};
use crate::smtp::DataBudget;
use crate::smtp::budget::Reservation;
use crate::storage::Store;

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 4 * 1024;

/// How the POP3 server runs.
#[derive(Debug, Clone)]
pub struct Pop3Options {
    /// Protocol limits and offered features (`stls` is set from `tls` and
    /// `implicit_tls`).
    pub limits: Limits,
    /// Users who may sign in (`MP_POP3_AUTH`, `MP_POP3_AUTH_FILE`).
    pub users: Arc<Credentials>,
    /// Certificate and key (`MP_POP3_TLS_CERT`, `MP_POP3_TLS_KEY`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With `tls`, speak TLS from the first byte (POP3S), as Mailpit does
    /// whenever a certificate is set; otherwise STLS is offered.
    pub implicit_tls: bool,
    /// Most connections served at once; more are refused.
    pub max_connections: usize,
    /// Close a connection that sends no complete line for this long (RFC
    /// 1939 asks for at least 10 minutes).
    pub idle_timeout: Duration,
    /// Close a connection whose TLS handshake takes longer than this.
    pub tls_handshake_timeout: Duration,
    /// On shutdown, how long sessions may take to finish a response.
    pub drain_timeout: Duration,
    /// Memory for messages being sent, shared with SMTP.
    pub data_budget: Option<Arc<DataBudget>>,
}

/// A bound POP3 server, ready to [`run`](Pop3Server::run).
pub struct Pop3Server(listen::Bound<Shared>);

struct Shared {
    limits: Arc<Limits>,
    users: Arc<Credentials>,
    tls: Option<TlsAcceptor>,
    implicit_tls: bool,
    idle_timeout: Duration,
    tls_handshake_timeout: Duration,
    data_budget: Option<Arc<DataBudget>>,
    store: Store,
}

impl Pop3Server {
    /// Binds `addr` (port 0 for a free port), serving `store`'s messages.
    pub async fn bind(
        addr: &str,
        mut options: Pop3Options,
        store: Store,
    ) -> Result<Self, BindError> {
        let listener = listen::bind("POP3", addr).await?;
        let implicit_tls = options.implicit_tls && options.tls.is_some();
        options.limits.stls = options.tls.is_some() && !implicit_tls;
        let shared = Shared {
            limits: Arc::new(options.limits),
            users: options.users,
            tls: options.tls.map(TlsAcceptor::from),
            implicit_tls,
            idle_timeout: options.idle_timeout,
            tls_handshake_timeout: options.tls_handshake_timeout,
            data_budget: options.data_budget,
            store,
        };
        Ok(Self(listen::Bound::new(
            listener,
            shared,
            Admission {
                protocol: "POP3",
                max_connections: options.max_connections,
                refusal: b"-ERR [SYS/TEMP] too many connections, try again later\r\n".to_vec(),
                drain_timeout: options.drain_timeout,
            },
            READ_CHUNK,
        )))
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Serves until `shutdown` completes; then stops accepting and ends
    /// every session without applying its deletions (as a dropped
    /// connection would), each after the response it is sending.
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
            write(stream, &session.greeting(), self).await?;
        }
        drive(stream, session, self, stop, buf).await
    }
}

async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    shared: &Shared,
) -> io::Result<()> {
    listen::write_within(stream, bytes, shared.idle_timeout).await
}

/// Runs the session over `stream` until it closes; true when the client
/// asked for STLS and was told to go ahead.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    buf: &mut [u8],
) -> io::Result<bool> {
    let mut out = Vec::with_capacity(1024);
    let mut clock = IdleClock::new(shared.idle_timeout, session.progress(), stop);
    loop {
        while let Some(event) = session.next_event() {
            match event {
                Event::Reply(bytes) => out.extend_from_slice(&bytes),
                Event::Authenticate(login) => {
                    let verdict = if shared.users.check(login.user.clone(), login.password).await {
                        tracing::debug!(user = %login.user, "POP3 sign-in");
                        maildrop(shared).await
                    } else {
                        tracing::warn!(user = %login.user, "POP3 sign-in failed");
                        Verdict::Denied
                    };
                    session.authenticated(verdict);
                }
                Event::Retrieve { id, size, lines } => {
                    let (outcome, _held) = retrieve(shared, &id, size, lines).await;
                    session.retrieved(outcome);
                    // The response comes next: write it while its memory is
                    // still reserved, and without copying it into `out`.
                    if let Some(Event::Reply(bytes)) = session.next_event() {
                        write(stream, &out, shared).await?;
                        out.clear();
                        write(stream, &bytes, shared).await?;
                    }
                }
                Event::Update(ids) => {
                    let n = ids.len();
                    let ok = match shared.store.delete(ids).await {
                        Ok(gone) => {
                            tracing::debug!(
                                marked = n,
                                deleted = gone,
                                "POP3 QUIT applied deletions"
                            );
                            true
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "POP3 QUIT could not delete messages");
                            false
                        }
                    };
                    session.updated(ok);
                }
                Event::StartTls(bytes) => {
                    out.extend_from_slice(&bytes);
                    write(stream, &out, shared).await?;
                    return Ok(true);
                }
                Event::Close(bytes) => {
                    out.extend_from_slice(&bytes);
                    write(stream, &out, shared).await?;
                    return Ok(false);
                }
            }
        }
        if clock.stopping() {
            out.extend_from_slice(&session.shutdown_reply());
            write(stream, &out, shared).await?;
            return Ok(false);
        }
        if !out.is_empty() {
            write(stream, &out, shared).await?;
            out.clear();
        }
        clock.progress(session.progress());
        match clock.read(stream, buf).await? {
            Input::Read(n) => session.feed(&buf[..n]),
            Input::Closed => return Ok(false),
            Input::IdleTimeout => {
                let _ = write(stream, &session.timeout_reply(), shared).await;
                return Ok(false);
            }
            Input::Stop => {}
        }
    }
}

/// The maildrop: the newest messages, as Mailpit lists them.
async fn maildrop(shared: &Shared) -> Verdict {
    let max = shared.limits.max_messages as u64;
    match shared.store.list(0, max).await {
        Ok(page) => Verdict::Maildrop(
            page.messages
                .into_iter()
                .map(|m| Entry {
                    id: m.head.id,
                    size: m.head.size,
                })
                .collect(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "POP3 cannot list the maildrop");
            Verdict::Unavailable
        }
    }
}

/// Fetches one message for RETR or TOP, with its memory reserved first (the
/// raw copy and the stuffed wire form, each about its size); the
/// reservation is held until the response is written.
async fn retrieve(
    shared: &Shared,
    id: &str,
    size: u64,
    lines: Option<u64>,
) -> (Retrieved, Option<Reservation>) {
    let need = usize::try_from(size)
        .unwrap_or(usize::MAX)
        .saturating_mul(2);
    let held = match &shared.data_budget {
        None => None,
        Some(budget) => match budget.reserve(need.min(budget.limit())) {
            Some(held) => Some(held),
            None => {
                tracing::warn!(id, size, "no memory to send a message over POP3");
                return (Retrieved::NoMemory, None);
            }
        },
    };
    let outcome = match shared.store.raw(id).await {
        Ok(raw) => Retrieved::Message { raw, lines },
        Err(e) => {
            tracing::debug!(id, error = %e, "POP3 RETR of a message that is gone");
            Retrieved::Gone
        }
    };
    (outcome, held)
}
