//! A small async SMTP client for relaying and forwarding: implicit TLS or
//! STARTTLS, AUTH PLAIN, LOGIN or CRAM-MD5, one message per connection, as
//! Mailpit's relay does with Go's `net/smtp`. Every step has a timeout, so
//! a relay server that stops answering cannot hold a worker forever.
//!
//! Errors carry the stage and the server's reply (code and text), never a
//! password.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac_md5::hmac_md5_hex;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How to reach and talk to a relay server (from `MP_SMTP_RELAY_*`,
/// `MP_SMTP_FORWARD_*` or their YAML files).
#[derive(Clone)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// Port (Mailpit's default: 25).
    pub port: u16,
    /// Upgrade with STARTTLS after EHLO.
    pub starttls: bool,
    /// TLS from the first byte.
    pub tls: bool,
    /// Accept any certificate (`allow-insecure`).
    pub allow_insecure: bool,
    /// How to authenticate.
    pub auth: Auth,
    /// Limit on each step (connect, each reply, the message upload).
    pub timeout: Duration,
}

impl std::fmt::Debug for Target {
    // Credentials never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Target({}:{}, starttls={}, tls={}, auth={})",
            self.host,
            self.port,
            self.starttls,
            self.tls,
            self.auth.name()
        )
    }
}

/// SMTP AUTH towards the relay server.
#[derive(Clone, Default)]
pub enum Auth {
    /// No AUTH.
    #[default]
    None,
    /// AUTH PLAIN.
    Plain {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// AUTH LOGIN.
    Login {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// AUTH CRAM-MD5.
    CramMd5 {
        /// User name.
        user: String,
        /// Shared secret.
        secret: String,
    },
}

impl Auth {
    /// Mailpit's name for the method.
    pub fn name(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Plain { .. } => "plain",
            Auth::Login { .. } => "login",
            Auth::CramMd5 { .. } => "cram-md5",
        }
    }
}

/// Relaying a message failed.
#[derive(Debug, thiserror::Error)]
#[error("relay to {server}: {stage}: {reply}")]
pub struct RelayError {
    /// `host:port`.
    pub server: String,
    /// What was being done (`connect`, `MAIL`, `RCPT to a@b`, ...).
    pub stage: String,
    /// The server's reply, or what went wrong below SMTP.
    pub reply: String,
    /// The reply code, when the server answered.
    pub code: Option<u16>,
}

/// Longest reply line read from a relay server (RFC 5321 allows 512).
const MAX_REPLY_LINE: u64 = 4096;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Conn {
    io: BufReader<Box<dyn Stream>>,
    server: String,
    timeout: Duration,
}

impl Conn {
    fn fail(&self, stage: &str, reply: impl Into<String>, code: Option<u16>) -> RelayError {
        RelayError {
            server: self.server.clone(),
            stage: stage.to_owned(),
            reply: reply.into(),
            code,
        }
    }

    /// Reads one reply: its code and its text lines joined.
    async fn reply(&mut self, stage: &str) -> Result<(u16, String), RelayError> {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            // A reply line is short; a server that never ends one must not
            // grow this buffer.
            let mut bounded = (&mut self.io).take(MAX_REPLY_LINE);
            let n = match timeout(self.timeout, bounded.read_line(&mut line)).await {
                Err(_) => return Err(self.fail(stage, "timed out", None)),
                Ok(Err(e)) => return Err(self.fail(stage, e.to_string(), None)),
                Ok(Ok(n)) => n,
            };
            if n == 0 || line.len() < 3 || !line.ends_with('\n') {
                return Err(self.fail(stage, "connection closed or bad reply", None));
            }
            let code: u16 = line[..3]
                .parse()
                .map_err(|_| self.fail(stage, "bad reply", None))?;
            text.push(line.get(4..).unwrap_or("").trim_end().to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text.join(" ")));
            }
        }
    }

    async fn write(&mut self, stage: &str, bytes: &[u8]) -> Result<(), RelayError> {
        let io = self.io.get_mut();
        match timeout(self.timeout, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        {
            Err(_) => Err(self.fail(stage, "timed out", None)),
            Ok(Err(e)) => Err(self.fail(stage, e.to_string(), None)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends `line` and expects a reply code in `ok`.
    async fn cmd(
        &mut self,
        stage: &str,
        line: &str,
        ok: &[u16],
    ) -> Result<(u16, String), RelayError> {
        self.write(stage, format!("{line}\r\n").as_bytes()).await?;
        let (code, text) = self.reply(stage).await?;
        if ok.contains(&code) {
            Ok((code, text))
        } else {
            Err(self.fail(stage, format!("{code} {text}"), Some(code)))
        }
    }
}

fn tls_connector(allow_insecure: bool) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions");
    let config = if allow_insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `allow-insecure`: any certificate is accepted (signatures are still
/// checked, so the handshake itself is sound).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn tls_upgrade(
    target: &Target,
    stream: Box<dyn Stream>,
    server: &str,
) -> Result<Box<dyn Stream>, RelayError> {
    let fail = |reply: String| RelayError {
        server: server.to_owned(),
        stage: "TLS handshake".into(),
        reply,
        code: None,
    };
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| fail(e.to_string()))?;
    let tls = timeout(
        target.timeout,
        tls_connector(target.allow_insecure).connect(name, stream),
    )
    .await
    .map_err(|_| fail("timed out".into()))?
    .map_err(|e| fail(e.to_string()))?;
    Ok(Box::new(tls))
}

/// What happened to each recipient of a relayed message.
#[derive(Debug, Default)]
pub struct Sent {
    /// Recipients the server refused (only when errors are not forwarded).
    pub refused: Vec<String>,
}

/// Sends `message` from `from` to `to` through `target`. A recipient the
/// server refuses fails the whole send when `rcpt_errors_fail` (Mailpit's
/// `forward-smtp-errors`), else it is logged and skipped.
pub async fn send(
    target: &Target,
    helo: &str,
    from: &str,
    to: &[String],
    message: &[u8],
    rcpt_errors_fail: bool,
) -> Result<Sent, RelayError> {
    let server = format!("{}:{}", target.host, target.port);
    let fail = |stage: &str, reply: String| RelayError {
        server: server.clone(),
        stage: stage.into(),
        reply,
        code: None,
    };
    let tcp = timeout(
        target.timeout,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| fail("connect", "timed out".into()))?
    .map_err(|e| fail("connect", e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn Stream> = Box::new(tcp);
    if target.tls {
        stream = tls_upgrade(target, stream, &server).await?;
    }
    let mut c = Conn {
        io: BufReader::new(stream),
        server: server.clone(),
        timeout: target.timeout,
    };
    let (code, text) = c.reply("greeting").await?;
    if code != 220 {
        return Err(c.fail("greeting", format!("{code} {text}"), Some(code)));
    }
    let (_, mut caps) = c.cmd("EHLO", &format!("EHLO {helo}"), &[250]).await?;
    if target.starttls {
        c.cmd("STARTTLS", "STARTTLS", &[220]).await?;
        let plain = c.io.into_inner();
        let tls = tls_upgrade(target, plain, &server).await?;
        c = Conn {
            io: BufReader::new(tls),
            server: server.clone(),
            timeout: target.timeout,
        };
        caps = c.cmd("EHLO", &format!("EHLO {helo}"), &[250]).await?.1;
    }
    let _ = caps;
    match &target.auth {
        Auth::None => {}
        Auth::Plain { user, password } => {
            let token = BASE64.encode(format!("\0{user}\0{password}"));
            c.cmd("AUTH PLAIN", &format!("AUTH PLAIN {token}"), &[235])
                .await?;
        }
        Auth::Login { user, password } => {
            c.cmd("AUTH LOGIN", "AUTH LOGIN", &[334]).await?;
            c.cmd("AUTH LOGIN", &BASE64.encode(user), &[334]).await?;
            c.cmd("AUTH LOGIN", &BASE64.encode(password), &[235])
                .await?;
        }
        Auth::CramMd5 { user, secret } => {
            let (_, challenge) = c.cmd("AUTH CRAM-MD5", "AUTH CRAM-MD5", &[334]).await?;
            let challenge = BASE64
                .decode(challenge.trim())
                .map_err(|_| c.fail("AUTH CRAM-MD5", "bad challenge", Some(334)))?;
            let digest = hmac_md5_hex(secret.as_bytes(), &challenge);
            let answer = BASE64.encode(format!("{user} {digest}"));
            c.cmd("AUTH CRAM-MD5", &answer, &[235]).await?;
        }
    }
    c.cmd("MAIL", &format!("MAIL FROM:<{from}>"), &[250])
        .await?;
    let mut sent = Sent::default();
    let mut accepted = 0;
    // When every recipient is refused, the answer says why (the server's
    // last refusal), not only that none was accepted.
    let mut last_refusal = None;
    for rcpt in to {
        match c
            .cmd("RCPT", &format!("RCPT TO:<{rcpt}>"), &[250, 251])
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) if !rcpt_errors_fail && e.code.is_some() => {
                tracing::warn!(server = %server, rcpt = %rcpt, reply = %e.reply, "relay server refused a recipient");
                sent.refused.push(rcpt.clone());
                last_refusal = Some((rcpt.clone(), e.reply, e.code));
            }
            Err(mut e) => {
                e.stage = format!("RCPT to {rcpt}");
                return Err(e);
            }
        }
    }
    if accepted == 0 {
        return Err(match last_refusal {
            Some((rcpt, reply, code)) => c.fail(
                "RCPT",
                format!("no recipient accepted (last, {rcpt}: {reply})"),
                code,
            ),
            None => c.fail("RCPT", "no recipient accepted", None),
        });
    }
    c.cmd("DATA", "DATA", &[354]).await?;
    let mut data = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    dot_stuff(message, &mut data);
    c.write("message", &data).await?;
    let (code, text) = c.reply("end of data").await?;
    if code != 250 {
        return Err(c.fail("end of data", format!("{code} {text}"), Some(code)));
    }
    // The message is accepted; a failed QUIT changes nothing.
    let _ = c.cmd("QUIT", "QUIT", &[221]).await;
    Ok(sent)
}

/// Appends `message` as SMTP DATA content: CRLF line ends, a leading dot
/// doubled, then the terminating `.` line.
fn dot_stuff(message: &[u8], out: &mut Vec<u8>) {
    crate::pop3::proto::encode(message, None, out);
}

/// HMAC-MD5 for CRAM-MD5 (RFC 2195), on the `md-5` crate the catcher
/// already uses for checksums.
mod hmac_md5 {
    use md5::{Digest, Md5};

    /// The HMAC-MD5 of `message` under `key`, in lower-case hex.
    pub fn hmac_md5_hex(key: &[u8], message: &[u8]) -> String {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..16].copy_from_slice(&Md5::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
        let inner = Md5::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        let outer = Md5::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        hex::encode(outer)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn rfc_2195_example() {
            // RFC 2195, section 2.
            let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
            assert_eq!(
                super::hmac_md5_hex(b"tanstaaftanstaaf", challenge),
                "b913a602c7eda7a495b4e6e7334d3890"
            );
        }
    }
}
