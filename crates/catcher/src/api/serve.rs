//! Serves the HTTP side (API, UI, websocket) with limits a hostile client
//! cannot get around: hyper's own header-read timeout, a global and a per-IP
//! connection cap, and a TLS handshake timeout for HTTPS.
//!
//! `axum::serve` has none of these: measured on main 89dad44, 300 clients
//! sending half a request header were all still connected 45 s later, each
//! holding a file descriptor and a task. Here every connection must finish
//! its request head within `header_read_timeout` (hyper restarts that timer
//! whenever a kept-alive connection waits for its next request, so it is
//! also the keep-alive idle timeout), and connections beyond the caps are
//! answered 503 and closed at once instead of queueing without bound.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower_service::Service;

/// Limits of the HTTP listener. The defaults suit a catcher shared by a
/// team; tests shorten the timeouts.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A connection must send a complete request head within this long of
    /// connecting or of its previous response (keep-alive idle); otherwise
    /// it is closed (`MAILSAFE_HTTP_HEADER_TIMEOUT`, default 10 s).
    pub header_read_timeout: Duration,
    /// Most open HTTP connections, websockets included; more are answered
    /// 503 and closed (`MAILSAFE_HTTP_MAX_CONNECTIONS`, default 1024).
    pub max_connections: usize,
    /// Most open HTTP connections from one IP address
    /// (`MAILSAFE_HTTP_MAX_CONNECTIONS_PER_IP`, default 256: a browser opens
    /// about 6, but a team behind one proxy or NAT shares an address).
    pub max_connections_per_ip: usize,
    /// How long an HTTPS client may take over its TLS handshake (default
    /// 10 s); the connection counts against the caps meanwhile.
    pub tls_handshake_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_ip: 256,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Open connections, globally and per client address.
struct Admission {
    global: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// A connection's place under both caps, given back when it is dropped.
struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
    _global: OwnedSemaphorePermit,
}

impl Admission {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let global = self.global.clone().try_acquire_owned().ok()?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(Admitted {
            admission: self.clone(),
            ip,
            _global: global,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = self
            .admission
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is set) until
/// `shutdown` completes; then stops accepting, lets requests in flight
/// finish, and returns once every connection is closed. Websockets that were
/// already upgraded are no longer HTTP connections and end on their own.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let admission = Arc::new(Admission {
        global: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        per_ip: Mutex::new(HashMap::new()),
        max_per_ip: limits.max_connections_per_ip.max(1),
    });
    let tls = tls.map(|config| crate::tls::acceptor(&config));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    // Every connection task holds a receiver: the sender tells them to shut
    // down and, once all receivers are gone, that they have.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = admission.admit(peer.ip()) else {
            tracing::debug!(%peer, "HTTP connection refused: too many connections");
            if tls.is_none() {
                // Best effort, never waiting on the client: it may be one of
                // those that do not read.
                let _ = tcp.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
                      Content-Type: text/plain\r\nContent-Length: 21\r\n\r\ntoo many connections\n",
                );
            }
            continue;
        };
        let conn = Connection {
            router: router.clone(),
            http: http.clone(),
            peer,
            stop: stop_rx.clone(),
            _admitted: admitted,
        };
        let tls = tls.clone();
        let handshake_timeout = limits.tls_handshake_timeout;
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            match tls {
                None => conn.run(tcp).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => conn.run(stream).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    stop_tx.closed().await;
    Ok(())
}

/// One accepted connection and what serving it needs.
struct Connection {
    router: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    _admitted: Admitted,
}

impl Connection {
    async fn run<S>(self, io: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (router, peer) = (self.router.clone(), self.peer);
        // Handlers see the client address as with axum's
        // `into_make_service_with_connect_info`.
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            async move { router.call(req).await }
        });
        let conn = self
            .http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        let mut stop = self.stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stopped => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %self.peer, error = %e, "HTTP connection ended with an error");
        }
    }
}
