//! Serving the catcher's line protocols (SMTP and POP3) over TCP: one accept
//! loop with a connection cap, timed writes and TLS handshakes, and a drain
//! on shutdown. Each protocol's server only says how to greet, refuse and
//! drive one connection.
//!
//! Defences against hostile clients that do not depend on the protocol live
//! here: a cap on concurrent connections (one over it is answered with the
//! protocol's refusal in a detached task and closed, so a client that does
//! not read cannot stall the accept loop), a write timeout, a TLS handshake
//! timeout (a handshake is not progress), and a back-off when `accept`
//! fails (usually EMFILE).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a refused client has to read its refusal before it is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a listener admits and drains connections.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Protocol name for log lines (`SMTP`, `POP3`).
    pub protocol: &'static str,
    /// Most connections served at once; more get `refusal` and are closed.
    pub max_connections: usize,
    /// What a connection over the cap is told before it is closed.
    pub refusal: Vec<u8>,
    /// On shutdown, how long open connections may take to finish.
    pub drain_timeout: Duration,
}

/// Accepts connections on `listener` until `shutdown` completes, running
/// `handle(stream, peer, stop)` for each admitted one in its own task; `stop`
/// turns true when the server is shutting down, so each session can end
/// politely. Then stops accepting, waits up to the drain timeout for the
/// sessions, and aborts those still open.
pub async fn serve<H, F>(
    listener: TcpListener,
    admission: Admission,
    shutdown: impl Future<Output = ()>,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
    F: Future<Output = io::Result<()>> + Send + 'static,
{
    let max = admission.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let refusal: Arc<[u8]> = admission.refusal.into();
    let protocol = admission.protocol;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, max, "{protocol} connection refused: too many connections");
                        let refusal = refusal.clone();
                        tokio::spawn(async move {
                            let _ = timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(&refusal)).await;
                        });
                        continue;
                    };
                    let session = handle(stream, peer, stop_rx.clone());
                    sessions.spawn(async move {
                        let _permit = permit;
                        if let Err(e) = session.await {
                            tracing::debug!(%peer, error = %e, "{protocol} connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{protocol} accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = timeout(admission.drain_timeout, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "{protocol} sessions still open after the drain timeout; closing them"
        );
        sessions.shutdown().await;
    }
}

/// Binds `addr` for `protocol`, naming both in the error.
pub async fn bind(protocol: &'static str, addr: &str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        protocol,
        addr: addr.to_owned(),
        source,
    })
}

/// A listen address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {protocol} on {addr}: {source}")]
pub struct BindError {
    /// `SMTP` or `POP3`.
    pub protocol: &'static str,
    /// The address asked for.
    pub addr: String,
    /// Why.
    pub source: io::Error,
}

/// Writes and flushes `bytes` within `limit`: a client that stops reading
/// must not pin its session forever.
pub async fn write_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> io::Result<()> {
    timeout(limit, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
}

/// Runs the server side of a TLS handshake within `limit`.
pub async fn tls_accept<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    stream: S,
    limit: Duration,
) -> io::Result<TlsStream<S>> {
    timeout(limit, acceptor.accept(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// A protocol's listener between `bind` and `run`: the socket, the state
/// every session shares and how connections are admitted. SMTP and POP3
/// each wrap one, so the accept-and-serve glue exists once.
pub(crate) struct Bound<P> {
    listener: TcpListener,
    shared: Arc<P>,
    admission: Admission,
    /// Size of each connection's fixed read buffer (the protocol's choice:
    /// SMTP reads DATA in large chunks, POP3 only reads short commands).
    read_chunk: usize,
}

impl<P: Protocol + Send + 'static> Bound<P> {
    /// A bound `listener` serving `shared`'s protocol.
    pub(crate) fn new(
        listener: TcpListener,
        shared: P,
        admission: Admission,
        read_chunk: usize,
    ) -> Self {
        Self {
            listener,
            shared: Arc::new(shared),
            admission,
            read_chunk,
        }
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves every admitted connection with [`serve_connection`] until
    /// `shutdown` completes, then drains as [`serve`] does.
    pub(crate) async fn run(self, shutdown: impl Future<Output = ()>) {
        let (shared, read_chunk) = (self.shared, self.read_chunk);
        serve(
            self.listener,
            self.admission,
            shutdown,
            |stream, _, stop| {
                let shared = shared.clone();
                async move { serve_connection(stream, &*shared, stop, read_chunk).await }
            },
        )
        .await;
    }
}

/// A line protocol served over connections that may switch to TLS midway
/// (SMTP STARTTLS, POP3 STLS): what [`serve_connection`] needs of it. The
/// server's shared state implements it.
pub(crate) trait Protocol: Sync {
    /// One connection's protocol state.
    type Session: Send;

    /// The TLS acceptor (if any), whether TLS starts at the first byte,
    /// and the handshake timeout.
    fn tls(&self) -> (Option<&TlsAcceptor>, bool, Duration);

    /// A new session, told whether the connection starts encrypted.
    fn session(&self, tls: bool) -> Self::Session;

    /// The handshake after [`Protocol::drive`] returned true is done.
    fn tls_established(session: &mut Self::Session);

    /// Runs `session` over `stream` (greeting first if `greet`) until it
    /// ends (false) or the client was told to start TLS (true).
    fn drive<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        stream: &mut S,
        session: &mut Self::Session,
        greet: bool,
        stop: watch::Receiver<bool>,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<bool>> + Send;
}

/// Serves one connection of `protocol`: TLS from the first byte when it
/// says so, otherwise in clear, upgraded when the session asks and a
/// certificate is set; handshakes bounded by its timeout. `buf_size` is
/// the fixed read buffer.
pub(crate) async fn serve_connection<P: Protocol>(
    stream: TcpStream,
    protocol: &P,
    stop: watch::Receiver<bool>,
    buf_size: usize,
) -> io::Result<()> {
    let mut buf = vec![0u8; buf_size];
    let (tls, implicit_tls, handshake_timeout) = protocol.tls();
    if implicit_tls {
        let Some(acceptor) = tls else {
            return Ok(());
        };
        let mut stream = tls_accept(acceptor, stream, handshake_timeout).await?;
        let mut session = protocol.session(true);
        protocol
            .drive(&mut stream, &mut session, true, stop, &mut buf)
            .await?;
        return Ok(());
    }
    let mut plain = stream;
    let mut session = protocol.session(false);
    if protocol
        .drive(&mut plain, &mut session, true, stop.clone(), &mut buf)
        .await?
    {
        let Some(acceptor) = tls else {
            return Ok(());
        };
        let mut stream = tls_accept(acceptor, plain, handshake_timeout).await?;
        P::tls_established(&mut session);
        protocol
            .drive(&mut stream, &mut session, false, stop, &mut buf)
            .await?;
    }
    Ok(())
}

/// What waiting for a client's input brought.
pub(crate) enum Input {
    /// This many bytes were read into the buffer.
    Read(usize),
    /// The client closed the connection.
    Closed,
    /// The idle deadline passed first.
    IdleTimeout,
    /// The server started shutting down (see [`IdleClock::stopping`]).
    Stop,
}

/// A session's idle deadline, pushed back only by progress (a complete line
/// or message content, as the session counts it), so a client that
/// trickles bytes cannot hold a connection open, and the shutdown signal.
pub(crate) struct IdleClock {
    limit: Duration,
    last_progress: u64,
    deadline: tokio::time::Instant,
    stop: watch::Receiver<bool>,
    stopping: bool,
}

impl IdleClock {
    /// Starts the clock for a session whose progress count is `progress`.
    pub(crate) fn new(limit: Duration, progress: u64, stop: watch::Receiver<bool>) -> Self {
        let stopping = *stop.borrow();
        Self {
            limit,
            last_progress: progress,
            deadline: tokio::time::Instant::now() + limit,
            stop,
            stopping,
        }
    }

    /// True once the server is shutting down (or gone).
    pub(crate) fn stopping(&self) -> bool {
        self.stopping
    }

    /// Pushes the deadline back if the session's count moved.
    pub(crate) fn progress(&mut self, progress: u64) {
        if progress != self.last_progress {
            self.last_progress = progress;
            self.deadline = tokio::time::Instant::now() + self.limit;
        }
    }

    /// Reads from `stream` into `buf`, or reports the deadline or a
    /// shutdown, whichever comes first.
    pub(crate) async fn read<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut [u8],
    ) -> io::Result<Input> {
        use tokio::io::AsyncReadExt;
        tokio::select! {
            read = stream.read(buf) => Ok(match read? {
                0 => Input::Closed,
                n => Input::Read(n),
            }),
            _ = tokio::time::sleep_until(self.deadline) => Ok(Input::IdleTimeout),
            changed = self.stop.changed(), if !self.stopping => {
                // A dropped sender also means the server is going away.
                self.stopping = changed.is_err() || *self.stop.borrow();
                Ok(Input::Stop)
            }
        }
    }
}
