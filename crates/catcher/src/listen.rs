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
