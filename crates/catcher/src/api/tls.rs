//! HTTPS for the API and web UI (`MP_UI_TLS_CERT` / `MP_UI_TLS_KEY`, as in
//! Mailpit): the TLS acceptor the HTTP server wraps each connection in.
//!
//! Handshakes run in each connection's own task under
//! [`HttpLimits::tls_handshake_timeout`](super::HttpLimits), holding a place
//! under the connection caps, so a client that opens a connection and never
//! finishes its handshake cannot hold up anyone else's for long.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

/// A TLS acceptor for `config` offering HTTP/1.1 by ALPN (the only protocol
/// the server speaks).
pub fn acceptor(config: &rustls::ServerConfig) -> TlsAcceptor {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
