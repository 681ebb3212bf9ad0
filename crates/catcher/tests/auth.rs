//! Password guessing against a real catcher (127.0.0.1, port 0): SMTP AUTH
//! sessions are closed after three failures (Python's smtplib), unknown
//! users cost a bcrypt check like known ones, HTTP basic-auth failures are
//! throttled per client address (reqwest from 127.0.0.1 and 127.0.0.2), and
//! an implicit-TLS client that never finishes its handshake is dropped.

mod support;

use std::sync::Arc;
use std::time::Duration;

use mailsafe_catcher::auth::{AuthPolicy, Credentials, Throttle};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const GUESSING_SCRIPT: &str = r#"
import base64, smtplib, sys
port = int(sys.argv[1])
def plain(user, pw):
    return "PLAIN " + base64.b64encode(b"\0" + user.encode() + b"\0" + pw.encode()).decode()
s = smtplib.SMTP("127.0.0.1", port)
s.ehlo("guesser")
for pw in ["a", "b", "c"]:
    print(s.docmd("AUTH", plain("alice", pw))[0])
try:
    s.noop()
    print("still open")
except smtplib.SMTPServerDisconnected:
    print("closed")
s = smtplib.SMTP("127.0.0.1", port)
s.ehlo("guesser")
print(s.docmd("AUTH", plain("nobody", "x"))[0])
s.login("alice", "s3cret")
s.sendmail("a@x", ["b@y"], "Subject: after guessing\r\n\r\nbody\r\n")
print("sent")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_closes_after_three_failures_and_unknown_users_cost_bcrypt() {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let creds =
        Arc::new(Credentials::from_pairs(&format!("alice:{hash}"), "MP_SMTP_AUTH").unwrap());
    let c2 = creds.clone();
    let mut server = Server::start(move |c, _| {
        c.smtp_auth = AuthPolicy::Users(c2);
        c.smtp_auth_allow_insecure = true;
    })
    .await;
    let out = python_async(GUESSING_SCRIPT, server.smtp.port(), vec![]).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["535", "535", "421", "closed", "535", "sent"],
        "{out}"
    );
    // Three wrong passwords, one unknown user (checked against a stored
    // hash all the same) and smtplib's successful login: five bcrypt runs.
    assert_eq!(creds.bcrypt_checks(), 5);
    assert_eq!(server.count().await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_basic_auth_failures_are_throttled_per_client() {
    let auth = Credentials::from_pairs("alice:s3cret", "MP_UI_AUTH")
        .unwrap()
        .into_basic_auth()
        .with_throttle(Throttle::new(3, Duration::from_secs(600), 16));
    let mut server = Server::start(move |c, _| c.ui_auth = Some(auth)).await;
    let url = format!("http://{}/api/v1/messages", server.http);
    let client = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .no_proxy()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let (a, b) = (client([127, 0, 0, 1]), client([127, 0, 0, 2]));
    let status = |c: &reqwest::Client, pass: &'static str| {
        let req = c.get(&url).basic_auth("alice", Some(pass));
        async move { req.send().await.unwrap() }
    };
    // No credentials at all is the browser's challenge round trip, not a
    // failure.
    for _ in 0..5 {
        assert_eq!(a.get(&url).send().await.unwrap().status(), 401);
    }
    for _ in 0..3 {
        assert_eq!(status(&a, "guess").await.status(), 401);
    }
    // Throttled: even the right password is not checked now.
    let r = status(&a, "s3cret").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&retry), "{retry}");
    // Another client is not affected.
    assert_eq!(status(&b, "s3cret").await.status(), 200);
    // Probes stay open.
    let probe = a
        .get(format!("http://{}/readyz", server.http))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_handshake_that_never_comes_is_dropped() {
    let mut server = Server::start(|c, dir| {
        let (cert, key) = self_signed(dir);
        c.smtp_tls_cert = Some(cert);
        c.smtp_tls_key = Some(key);
        c.smtp_implicit_tls = true;
        // The idle timeout is long: only the handshake timeout can end this.
        c.smtp_idle_timeout = Duration::from_secs(600);
        c.smtp_tls_handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let mut silent = TcpStream::connect(server.smtp).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buf))
        .await
        .expect("the server closes a connection that never starts its TLS handshake");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    server.stop().await;
}

/// Sends one message with the npm `mailpit-api` client as `user:pass`
/// (`-` = no credentials) and exits 0 if the outcome is `argv[4]`: `sent`
/// or the HTTP status it failed with.
const NPM_SEND: &str = r#"
import { MailpitClient } from "mailpit-api";
const [base, user, pass, expect] = process.argv.slice(1);
const mp = new MailpitClient(base, user === "-" ? {} : { auth: { username: user, password: pass } });
let got;
try {
  await mp.sendMessage({ From: { Email: "a@example.com" }, To: [{ Email: "b@example.com" }], Subject: "via send api", Text: "x" });
  got = "sent";
} catch (e) {
  got = String(e?.status ?? e?.response?.status ?? e?.message ?? e);
}
if (!got.includes(expect)) { console.error(`expected ${expect}, got ${got}`); process.exit(1); }
"#;

async fn npm_send(base: &str, user: &str, pass: &str, expect: &str) {
    run_client(
        "node",
        &[
            "--input-type=module",
            "-e",
            NPM_SEND,
            base,
            user,
            pass,
            expect,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_api_has_its_own_credentials_or_takes_anyone() {
    use mailsafe_catcher::api::SendAuth;
    let ui = || {
        Credentials::from_pairs("ops:ui-pw", "MP_UI_AUTH")
            .unwrap()
            .into_basic_auth()
    };
    let sender = Credentials::from_pairs("app:send-pw", "MP_SEND_API_AUTH")
        .unwrap()
        .into_basic_auth();
    let mut server = Server::start(move |c, _| {
        c.ui_auth = Some(ui());
        c.send_auth = SendAuth::Users(sender);
    })
    .await;
    let base = format!("http://{}", server.http);
    npm_send(&base, "app", "send-pw", "sent").await;
    // The UI's users may not send, the sender may not read.
    npm_send(&base, "ops", "ui-pw", "401").await;
    npm_send(&base, "-", "", "401").await;
    let list = format!("{base}/api/v1/messages");
    let http = http_client();
    let as_sender = http.get(&list).basic_auth("app", Some("send-pw"));
    assert_eq!(as_sender.send().await.unwrap().status(), 401);
    let listed = json_of(http.get(&list).basic_auth("ops", Some("ui-pw"))).await;
    assert_eq!(listed["total"], 1);
    server.stop().await;

    // Accept any: no credentials needed to send, the UI keeps its auth.
    let mut server = Server::start(move |c, _| {
        c.ui_auth = Some(ui());
        c.send_auth = SendAuth::AcceptAny;
    })
    .await;
    let base = format!("http://{}", server.http);
    npm_send(&base, "-", "", "sent").await;
    npm_send(&base, "anyone", "anything", "sent").await;
    let list = format!("{base}/api/v1/messages");
    assert_eq!(http.get(&list).send().await.unwrap().status(), 401);
    assert_eq!(server.count().await, 2);
    server.stop().await;
}
