//! HTTPS for the API and web UI (`MP_UI_TLS_CERT` / `MP_UI_TLS_KEY`) with a
//! self-signed certificate, basic auth from an htpasswd file (bcrypt) and
//! from `user:pass` pairs as Mailpit reads them, and a check that no
//! password (UI or SMTP AUTH, plain or base64) ever reaches the logs.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use mailsafe_catcher::auth::{AuthPolicy, Credentials};
use mailsafe_catcher::{Catcher, Config};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client that trusts only the test's self-signed certificate.
fn https_client(cert_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem).unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

const UI_PLAIN_PASS: &str = "plain-ui-Secret-1";
const UI_BCRYPT_PASS: &str = "bcrypt-ui-Secret-2";
const WRONG_PASS: &str = "wrong-guess-Secret-3";
const SMTP_PASS: &str = "smtp-auth-Secret-4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_htpasswd_and_plain_basic_auth_and_no_secret_in_logs() {
    let logs = logs();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let htpasswd = certs.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!(
            "# users\ncarol:{}\ndave:{UI_PLAIN_PASS}\n",
            bcrypt::hash(UI_BCRYPT_PASS, 4).unwrap()
        ),
    )
    .unwrap();
    let auth = Credentials::from_file(&htpasswd).unwrap().into_basic_auth();
    let (c2, k2) = (cert.clone(), key.clone());
    let mut server = Server::start(move |c, _| {
        c.ui_tls_cert = Some(c2);
        c.ui_tls_key = Some(k2);
        c.ui_auth = Some(auth);
        c.smtp_auth = AuthPolicy::Users(Arc::new(
            Credentials::from_pairs(&format!("sam:{SMTP_PASS}"), "MP_SMTP_AUTH").unwrap(),
        ));
        c.smtp_auth_allow_insecure = true;
    })
    .await;
    let base = format!("https://127.0.0.1:{}", server.http.port());
    let https = https_client(&std::fs::read(&cert).unwrap());

    // Guarded without credentials, open for probes, over TLS.
    let r = https
        .get(format!("{base}/api/v1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    assert_eq!(
        https
            .get(format!("{base}/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = https
        .get(format!("{base}/api/v1/messages"))
        .basic_auth("carol", Some(WRONG_PASS))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for (user, pass) in [("carol", UI_BCRYPT_PASS), ("dave", UI_PLAIN_PASS)] {
        let r = https
            .get(format!("{base}/api/v1/messages"))
            .basic_auth(user, Some(pass))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{user}");
        let page = https
            .get(format!("{base}/"))
            .basic_auth(user, Some(pass))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.headers().contains_key("content-security-policy"));
    }
    assert_eq!(
        https.get(format!("{base}/")).send().await.unwrap().status(),
        401
    );

    // SMTP AUTH (wrong, then right) and the message shows up over HTTPS.
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(c.cmd("EHLO x").await, 250);
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            b64(format!("\0sam\0{WRONG_PASS}"))
        ))
        .await,
        535
    );
    assert_eq!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            b64(format!("\0sam\0{SMTP_PASS}"))
        ))
        .await,
        235
    );
    assert_eq!(c.cmd("MAIL FROM:<a@x>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(b"Subject: over https\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    let v: serde_json::Value = support::json_of(
        https
            .get(format!("{base}/api/v1/messages"))
            .basic_auth("dave", Some(UI_PLAIN_PASS)),
    )
    .await;
    assert_eq!(v["messages"][0]["Subject"], "over https");
    assert_eq!(v["messages"][0]["Username"], "sam");

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(server.http).await.unwrap();
    plain
        .write_all(b"GET /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1 200"));

    // Clients that connect and never handshake do not hold up others.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(tokio::net::TcpStream::connect(server.http).await.unwrap());
    }
    let started = std::time::Instant::now();
    let r = https.get(format!("{base}/livez")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(stalled);
    server.stop().await;

    // Nothing secret was logged, in clear or base64, while logging worked.
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("TLS handshake"), "log capture works: {text}");
    for secret in [UI_PLAIN_PASS, UI_BCRYPT_PASS, WRONG_PASS, SMTP_PASS] {
        assert!(!text.contains(secret), "{secret} logged");
        assert!(
            !text.contains(&b64(secret.to_string())),
            "{secret} logged in base64"
        );
        assert!(
            !text.contains(&b64(format!("\0sam\0{secret}"))),
            "AUTH PLAIN logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_must_come_in_pairs_and_secrets_stay_out_of_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    for (c, k) in [(Some(cert.clone()), None), (None, Some(key.clone()))] {
        let config = Config {
            ui_tls_cert: c,
            ui_tls_key: k,
            ..loopback_config(dir.path().join("m.db"))
        };
        let err = Catcher::bind(config)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("MP_UI_TLS_CERT"), "{err}");
    }
    // A key file that is not a key names the file, not its content.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a key at all").unwrap();
    let config = Config {
        ui_tls_cert: Some(cert),
        ui_tls_key: Some(bogus.clone()),
        ..loopback_config(dir.path().join("m.db"))
    };
    let err = Catcher::bind(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains(&bogus.display().to_string()), "{err}");
    assert!(!err.contains("not a key at all"), "{err}");
    // A malformed auth entry is reported by position, never by content (it
    // could be half a password with a space in it).
    let err = Credentials::from_pairs("alice:ok half-of-a-password", "MP_UI_AUTH")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("#2") && !err.contains("half-of-a-password"),
        "{err}"
    );
}
