//! The SMTP server end to end: a real catcher on 127.0.0.1 port 0 with a real
//! SQLite store, driven by real clients (Python's smtplib, swaks) and by raw
//! sockets where the exact bytes matter (error codes, pipelining, hostile
//! input). Every message a client saw acknowledged is then read back from
//! the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mailsafe_catcher::smtp::{AuthPolicy, Credentials};
use mailsafe_catcher::storage::Store;
use mailsafe_catcher::{Catcher, Config};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A running catcher and the means to stop it.
struct Server {
    smtp: SocketAddr,
    http: SocketAddr,
    store: Store,
    db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), mailsafe_catcher::Error>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(tune: impl FnOnce(&mut Config, &Path)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            database: dir.path().join("mail.db"),
            smtp_bind: "127.0.0.1:0".into(),
            http_bind: "127.0.0.1:0".into(),
            max_messages: 0,
            ..Config::default()
        };
        tune(&mut config, dir.path());
        let db = config.database.clone();
        let catcher = Catcher::bind(config).await.expect("catcher starts");
        let (smtp, http, store) = (
            catcher.smtp_addr(),
            catcher.http_addr(),
            catcher.store().clone(),
        );
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(catcher.run(async {
            let _ = rx.await;
        }));
        Server {
            smtp,
            http,
            store,
            db,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("catcher stops in time")
                .unwrap()
                .expect("catcher stops cleanly");
        }
    }

    async fn count(&self) -> u64 {
        self.store.counts().await.unwrap().0
    }
}

/// A line-oriented raw SMTP client, for asserting exact replies.
struct Raw {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let mut raw = Raw {
            reader: BufReader::new(r),
            writer: w,
        };
        assert_eq!(raw.reply().await.0, 220);
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Reads one (possibly multi-line) reply: its code and its lines.
    async fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(
                n > 0,
                "connection closed while waiting for a reply; got {lines:?}"
            );
            let code: u16 = line[..3].parse().unwrap();
            let last = line.as_bytes()[3] == b' ';
            lines.push(line[4..].trim_end().to_string());
            if last {
                return (code, lines);
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> u16 {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await.0
    }

    /// Reads until EOF and returns what came.
    async fn rest(&mut self) -> String {
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.reader.read_to_string(&mut s))
            .await
            .expect("close in time")
            .unwrap();
        s
    }
}

/// Runs a Python script (with the SMTP port as argv[1]) and returns stdout.
fn python(script: &str, port: u16, extra: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .args(extra)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn python_async(script: &'static str, port: u16, extra: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        python(script, port, &extra)
    })
    .await
    .unwrap()
}

fn swaks(args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(args)
        .output()
        .expect("swaks runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

async fn swaks_async(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        swaks(&args)
    })
    .await
    .unwrap()
}

/// IDs of stored messages, newest first.
async fn ids(store: &Store) -> Vec<String> {
    store
        .list(0, 1000)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.id)
        .collect()
}

const SEND_SCRIPT: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
msg = "From: a@example.com\r\nTo: b@example.com, c@example.com\r\nSubject: smtplib test\r\n\r\nHello\r\n.leading dot\r\n"
with smtplib.SMTP("127.0.0.1", port) as s:
    code, _ = s.ehlo("client.example")
    assert code == 250
    assert s.has_extn("pipelining") and s.has_extn("8bitmime") and s.has_extn("smtputf8")
    assert s.has_extn("enhancedstatuscodes")
    assert int(s.esmtp_features["size"]) == 1048576, s.esmtp_features
    refused = s.sendmail("a@example.com", ["b@example.com", "c@example.com"], msg)
    assert refused == {}, refused
    print(s.noop()[0], s.verify("b@example.com")[0])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_message_is_stored_verbatim() {
    let mut server = Server::start(|c, _| c.max_message_size = 1024 * 1024).await;
    let out = python_async(SEND_SCRIPT, server.smtp.port(), vec![]).await;
    assert_eq!(out.trim(), "250 252");
    let ids = ids(&server.store).await;
    assert_eq!(ids.len(), 1);
    let raw = server.store.raw(&ids[0]).await.unwrap();
    assert_eq!(
        raw,
        b"From: a@example.com\r\nTo: b@example.com, c@example.com\r\nSubject: smtplib test\r\n\r\nHello\r\n.leading dot\r\n"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_message_is_stored_and_visible_in_the_api() {
    let mut server = Server::start(|_, _| {}).await;
    let port = server.smtp.port().to_string();
    let (ok, out) = swaks_async(
        [
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--from",
            "sender@example.com",
            "--to",
            "rcpt@example.com",
            "--header",
            "Subject: swaks hello",
            "--body",
            "body text",
            "--pipeline",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    assert_eq!(server.count().await, 1);
    let page = server.store.list(0, 10).await.unwrap();
    assert_eq!(page.messages[0].subject, "swaks hello");
    let body: serde_json::Value = reqwest::get(format!("http://{}/api/v1/messages", server.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["messages"][0]["Subject"], "swaks hello", "{body}");
    assert_eq!(
        body["messages"][0]["From"]["Address"], "sender@example.com",
        "{body}"
    );
    // The web UI is served next to SMTP.
    let ui = reqwest::get(format!("http://{}/", server.http))
        .await
        .unwrap();
    assert!(ui.status().is_success());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_path_answers_its_code_and_the_session_goes_on() {
    let mut server = Server::start(|c, _| {
        c.max_message_size = 1000;
        c.smtp_max_recipients = 3;
    })
    .await;
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(c.cmd("MAIL FROM:<a@x>").await, 503, "MAIL before EHLO");
    assert_eq!(c.cmd("FOOBAR").await, 500, "unknown command");
    assert_eq!(c.cmd("EHLO").await, 501, "EHLO without a name");
    assert_eq!(c.cmd("EHLO client").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y>").await, 503, "RCPT before MAIL");
    assert_eq!(c.cmd("DATA").await, 503, "DATA before MAIL");
    assert_eq!(c.cmd("MAIL FROM a@x").await, 501, "MAIL without colon");
    assert_eq!(
        c.cmd("MAIL FROM:<a@x> SIZE=1001").await,
        552,
        "declared size too big"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@x> SIZE=abc").await, 501);
    assert_eq!(c.cmd("MAIL FROM:<a@x> SIZE=999 BODY=8BITMIME").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@x>").await, 503, "nested MAIL");
    assert_eq!(c.cmd("DATA").await, 503, "DATA before RCPT");
    assert_eq!(c.cmd("RCPT TO:<>").await, 501);
    assert_eq!(c.cmd("RCPT TO:<bad address>").await, 501);
    for i in 0..3 {
        assert_eq!(c.cmd(&format!("RCPT TO:<r{i}@y>")).await, 250);
    }
    assert_eq!(c.cmd("RCPT TO:<r3@y>").await, 452, "too many recipients");
    assert_eq!(c.cmd("DATA extra").await, 501);
    let long = format!("NOOP {}", "x".repeat(10_000));
    assert_eq!(c.cmd(&long).await, 500, "line too long");
    // The transaction survived all of the above.
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "y".repeat(2000)).as_bytes())
        .await;
    let (code, lines) = c.reply().await;
    assert_eq!(
        (code, lines[0].as_str()),
        (552, "5.3.4 Message size exceeds fixed maximum message size")
    );
    assert_eq!(
        c.cmd("RCPT TO:<late@y>").await,
        503,
        "552 ended the transaction"
    );
    assert_eq!(c.cmd("VRFY someone").await, 252);
    assert_eq!(c.cmd("EXPN list").await, 502);
    assert_eq!(c.cmd("HELP").await, 214);
    assert_eq!(c.cmd("STARTTLS").await, 502, "no certificate configured");
    assert_eq!(c.cmd("AUTH PLAIN").await, 502, "no auth configured");
    assert_eq!(c.cmd("RSET").await, 250);
    assert_eq!(c.cmd("NOOP").await, 250);
    // And a message still goes through on the same connection.
    assert_eq!(c.cmd("MAIL FROM:<a@x>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    assert_eq!(c.cmd("Subject: ok\r\n\r\nsmall\r\n.").await, 250);
    assert_eq!(c.cmd("QUIT").await, 221);
    assert_eq!(c.rest().await, "");
    assert_eq!(server.count().await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transactions_in_one_write() {
    let mut server = Server::start(|_, _| {}).await;
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(c.cmd("EHLO pipe").await, 250);
    // RFC 2920: the client may send MAIL/RCPT/DATA as a group, wait for 354,
    // then send the content together with the next group.
    c.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n")
        .await;
    for want in [250, 250, 250, 354] {
        assert_eq!(c.reply().await.0, want);
    }
    c.send(b"Subject: one\r\n\r\n1\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<nobody>\r\nRCPT TO:<d@y>\r\nDATA\r\n")
        .await;
    for want in [250, 250, 250, 250, 354] {
        assert_eq!(c.reply().await.0, want);
    }
    c.send(b"Subject: two\r\n\r\n2\r\n.\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 221);
    assert_eq!(server.count().await, 2);
    server.stop().await;
}

/// Writes a self-signed certificate for 127.0.0.1/localhost into `dir`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k)
}

const STARTTLS_SCRIPT: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context(cafile=sys.argv[2])
with smtplib.SMTP("127.0.0.1", port) as s:
    s.ehlo("c")
    assert s.has_extn("starttls") and not s.has_extn("auth"), s.esmtp_features
    code, _ = s.mail("a@x")
    print("mail-before-tls", code)
    s.starttls(context=ctx)
    s.ehlo("c")
    assert not s.has_extn("starttls")
    assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
    code, _ = s.mail("a@x")
    print("mail-before-auth", code)
    try:
        s.login("alice", "wrong")
    except smtplib.SMTPAuthenticationError as e:
        print("bad-password", e.smtp_code)
    s.login("alice", "s3cret")
    s.sendmail("a@x", ["b@y"], "Subject: over tls\r\n\r\nsecret body\r\n")
    print("sent")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_then_auth_required_with_smtplib() {
    let mut server = Server::start(|c, dir| {
        let (cert, key) = self_signed(dir);
        c.smtp_tls_cert = Some(cert);
        c.smtp_tls_key = Some(key);
        c.smtp_require_starttls = true;
        c.smtp_auth = AuthPolicy::Users(Arc::new(Credentials::parse("alice:s3cret").unwrap()));
    })
    .await;
    let cafile = server.db.parent().unwrap().join("cert.pem");
    let out = python_async(
        STARTTLS_SCRIPT,
        server.smtp.port(),
        vec![cafile.display().to_string()],
    )
    .await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "mail-before-tls 530",
            "mail-before-auth 530",
            "bad-password 535",
            "sent"
        ]
    );
    let ids = ids(&server.store).await;
    assert_eq!(ids.len(), 1);
    let raw = server.store.raw(&ids[0]).await.unwrap();
    assert!(raw.ends_with(b"secret body\r\n"));
    server.stop().await;
}

const IMPLICIT_TLS_SCRIPT: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context(cafile=sys.argv[2])
with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx) as s:
    s.ehlo("c")
    assert not s.has_extn("starttls")
    s.login("anyone", "anything")
    s.sendmail("a@x", ["b@y"], "Subject: smtps\r\n\r\nbody\r\n")
    print("sent")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_accept_any_auth() {
    let mut server = Server::start(|c, dir| {
        let (cert, key) = self_signed(dir);
        c.smtp_tls_cert = Some(cert);
        c.smtp_tls_key = Some(key);
        c.smtp_implicit_tls = true;
        c.smtp_auth = AuthPolicy::AcceptAny;
    })
    .await;
    let cafile = server.db.parent().unwrap().join("cert.pem");
    let out = python_async(
        IMPLICIT_TLS_SCRIPT,
        server.smtp.port(),
        vec![cafile.display().to_string()],
    )
    .await;
    assert_eq!(out.trim(), "sent");
    assert_eq!(server.count().await, 1);
    // A plain-text client gets no SMTP greeting from a TLS port.
    let mut s = TcpStream::connect(server.smtp).await.unwrap();
    s.write_all(b"EHLO x\r\n").await.unwrap();
    let mut buf = [0u8; 3];
    let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(!matches!(got, Ok(Ok(3)) if &buf == b"220"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_auth_plain_and_login_without_tls_when_allowed() {
    let mut server = Server::start(|c, _| {
        c.smtp_auth = AuthPolicy::Users(Arc::new(Credentials::parse("bob:pw1 carol:pw2").unwrap()));
        c.smtp_auth_allow_insecure = true;
    })
    .await;
    let port = server.smtp.port().to_string();
    let base = [
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--from",
        "a@x",
        "--to",
        "b@y",
    ];
    for (mech, user, pass, ok) in [
        ("PLAIN", "bob", "pw1", true),
        ("LOGIN", "carol", "pw2", true),
        ("LOGIN", "carol", "nope", false),
    ] {
        let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        args.extend(
            ["--auth", mech, "--auth-user", user, "--auth-password", pass].map(String::from),
        );
        let (success, out) = swaks_async(args).await;
        assert_eq!(success, ok, "{mech} {user}: {out}");
        if !ok {
            assert!(out.contains("535 5.7.8"), "{out}");
        }
    }
    // Without AUTH the server refuses mail when users are configured.
    let (success, out) = swaks_async(base.iter().map(|s| s.to_string()).collect()).await;
    assert!(!success);
    assert!(out.contains("530 5.7.0 Authentication required"), "{out}");
    assert_eq!(server.count().await, 2);
    server.stop().await;
}

/// Resident memory of this test process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_survived_with_bounded_memory() {
    let mut server = Server::start(|c, _| {
        c.max_message_size = 1024 * 1024;
        c.smtp_max_recipients = 100;
    })
    .await;
    let before = rss_kib();

    // 8 MiB line without a newline, then NUL bytes, then a newline.
    let mut c = Raw::connect(server.smtp).await;
    let chunk = vec![b'A'; 1024 * 1024];
    for _ in 0..8 {
        c.send(&chunk).await;
    }
    c.send(b"\0\0\0\r\n").await;
    assert_eq!(
        c.reply().await,
        (500, vec!["5.5.2 Line too long".to_string()])
    );
    assert_eq!(c.cmd("\0EHLO\0 x").await, 500);
    assert_eq!(c.cmd("EHLO x").await, 250);

    // 10k recipients in one pipelined write: 100 accepted, the rest 452.
    assert_eq!(c.cmd("MAIL FROM:<a@x>").await, 250);
    let mut rcpts = String::new();
    for i in 0..10_000 {
        rcpts.push_str(&format!("RCPT TO:<r{i}@y>\r\n"));
    }
    let (mut reader, mut writer) = (c.reader, c.writer);
    let sender = tokio::spawn(async move {
        writer.write_all(rcpts.as_bytes()).await.unwrap();
        writer
    });
    let mut codes = [0usize; 2];
    for _ in 0..10_000 {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        match &line[..3] {
            "250" => codes[0] += 1,
            "452" => codes[1] += 1,
            other => panic!("unexpected reply {other}"),
        }
    }
    assert_eq!(codes, [100, 9_900]);
    let mut c = Raw {
        reader,
        writer: sender.await.unwrap(),
    };

    // Endless DATA: 32 MiB against a 1 MiB limit, read and thrown away,
    // while another client delivers normally.
    assert_eq!(c.cmd("DATA").await, 354);
    let line = format!("{}\r\n", "z".repeat(998));
    let block = line.repeat(1024);
    for i in 0..32 {
        c.send(block.as_bytes()).await;
        if i == 16 {
            let (ok, out) = swaks_async(
                [
                    "--server",
                    "127.0.0.1",
                    "--port",
                    &server.smtp.port().to_string(),
                    "--to",
                    "b@y",
                    "--from",
                    "a@x",
                ]
                .map(String::from)
                .to_vec(),
            )
            .await;
            assert!(ok, "other clients are served meanwhile: {out}");
        }
    }
    c.send(b".\r\n").await;
    assert_eq!(c.reply().await.0, 552);
    assert_eq!(c.cmd("NOOP").await, 250);
    assert_eq!(server.count().await, 1);

    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 48, "memory grew by {grown_mib} MiB");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_loris_clients_are_dropped_and_the_cap_holds() {
    let mut server = Server::start(|c, _| {
        c.smtp_idle_timeout = Duration::from_millis(800);
        c.smtp_max_connections = 2;
    })
    .await;
    // Idle: 421 and close.
    let mut idle = Raw::connect(server.smtp).await;
    // Slow loris: a byte every 200 ms never completes a line.
    let mut loris = Raw::connect(server.smtp).await;
    // Third connection is over the cap.
    let mut third = TcpStream::connect(server.smtp).await.unwrap();
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_string(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf.starts_with("421 4.7.0"), "{buf}");

    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            if loris.writer.write_all(b"N").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        loris.rest().await
    });
    let started = std::time::Instant::now();
    assert!(idle.rest().await.starts_with("421 4.4.2"));
    let loris_out = trickle.await.unwrap();
    assert!(loris_out.starts_with("421 4.4.2"), "{loris_out}");
    assert!(started.elapsed() < Duration::from_secs(4));

    // Slots are free again.
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(c.cmd("NOOP").await, 250);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_transaction_in_flight() {
    let mut server = Server::start(|_, _| {}).await;
    let mut idle = Raw::connect(server.smtp).await;
    let mut busy = Raw::connect(server.smtp).await;
    assert_eq!(busy.cmd("EHLO x").await, 250);
    assert_eq!(busy.cmd("MAIL FROM:<a@x>").await, 250);
    assert_eq!(busy.cmd("RCPT TO:<b@y>").await, 250);
    assert_eq!(busy.cmd("DATA").await, 354);
    busy.send(b"Subject: in flight\r\n\r\npart one\r\n").await;

    let stop = server.stop.take().unwrap();
    let task = server.task.take().unwrap();
    stop.send(()).unwrap();
    // The idle session is told to go away at once.
    assert!(idle.rest().await.starts_with("421 4.3.2"));
    // New connections are refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(server.smtp).await.is_err(),
        "the SMTP listener is closed"
    );
    // The busy session completes its message, then is closed.
    busy.send(b"part two\r\n.\r\n").await;
    let (code, _) = busy.reply().await;
    assert_eq!(code, 250);
    assert!(busy.rest().await.starts_with("421 4.3.2"));
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Acknowledged means committed: a fresh store on the same file sees it.
    let Server {
        db, store, _dir, ..
    } = server;
    drop(store);
    let reopened = Store::open(&db, Default::default()).unwrap();
    let n = reopened.counts().await.unwrap().0;
    assert_eq!(n, 1);
}
