//! TLS for every listener: loading the certificate and key
//! (`MP_SMTP_TLS_*` for SMTP STARTTLS / implicit TLS, `MP_UI_TLS_*` for
//! HTTPS) and the acceptor the HTTP server wraps each connection in.
//!
//! HTTPS handshakes run in each connection's own task under
//! [`HttpLimits::tls_handshake_timeout`](crate::api::HttpLimits), holding a
//! place under the connection caps, so a client that opens a connection and
//! never finishes its handshake cannot hold up anyone else's for long.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

/// The TLS certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load TLS {what} from {path}: {reason}")]
pub struct TlsError {
    /// `certificate` or `key`.
    pub what: &'static str,
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Loads a PEM certificate chain and private key into a rustls server
/// configuration.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let tls_err = |what, path: &Path, reason: String| TlsError {
        what,
        path: path.display().to_string(),
        reason,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| tls_err("certificate", cert, e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_err("certificate", cert, "no certificate found".into()));
    }
    let key_pem = std::fs::read(key).map_err(|e| tls_err("key", key, e.to_string()))?;
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| tls_err("key", key, e.to_string()))?
        .ok_or_else(|| tls_err("key", key, "no private key found".into()))?;
    // Name the provider explicitly: several rustls users in the workspace
    // may enable more than one, and then the implicit default panics.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("certificate", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| tls_err("key", key, e.to_string()))?;
    Ok(Arc::new(config))
}

/// A TLS acceptor for `config` offering HTTP/1.1 by ALPN (the only protocol
/// the HTTP server speaks).
pub fn acceptor(config: &rustls::ServerConfig) -> TlsAcceptor {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
