//! The SMTP server end to end: a real catcher on 127.0.0.1 port 0 with a real
//! SQLite store, driven by real clients (Python's smtplib, swaks) and by raw
//! sockets where the exact bytes matter (error codes, pipelining, TLS,
//! shutdown). Every message a client saw acknowledged is then read back from
//! the store. Hostile clients are in `hostile_smtp.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use mailsafe_catcher::auth::{AuthPolicy, Credentials};
use mailsafe_catcher::smtp::{Deliver, Delivery, ServerOptions, SmtpServer};
use mailsafe_catcher::storage::{NewMessage, StorageError, Store};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    assert_eq!(page.messages[0].head.subject, "swaks hello");
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

/// SMTP and the send API store through the one insert path: after a
/// message from each, `/api/v1/messages` and `/api/v1/info` agree on the
/// totals, and the runtime counters count both messages and their bytes
/// (a second insert path once stored without counting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_and_send_api_messages_are_counted_alike() {
    let mut server = Server::start(|_, _| {}).await;
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(c.cmd("EHLO client").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.com>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    assert_eq!(
        c.cmd("Subject: by smtp\r\nTo: b@example.com\r\n\r\nbody\r\n.")
            .await,
        250
    );
    assert_eq!(c.cmd("QUIT").await, 221);
    let http = support::http_client();
    let base = format!("http://{}", server.http);
    let sent = http
        .post(format!("{base}/api/v1/send"))
        .json(&serde_json::json!({
            "From": {"Email": "c@example.com"},
            "To": [{"Email": "d@example.com"}],
            "Subject": "by api",
            "Text": "body",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let get = |path: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "GET {path}");
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let list = get("/api/v1/messages").await;
    let info = get("/api/v1/info").await;
    assert_eq!(
        (list["total"].as_u64(), list["unread"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        (info["Messages"].as_u64(), info["Unread"].as_u64()),
        (Some(2), Some(2))
    );
    let stats = &info["RuntimeStats"];
    let bytes: u64 = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Size"].as_u64().unwrap())
        .sum();
    assert_eq!(stats["SMTPAccepted"].as_u64(), Some(2), "{info}");
    assert_eq!(stats["SMTPAcceptedSize"].as_u64(), Some(bytes), "{info}");
    assert_eq!(stats["MessagesDeleted"].as_u64(), Some(0), "{info}");
    server.stop().await;
}

/// `SMTPRejected` in `/api/v1/info` counts the messages and recipients the
/// server refused (it was always 0): an announced SIZE over the limit, a
/// recipient over the limit and a message over the limit are three; a
/// syntax error is none, and neither is a stored message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_and_recipients_count_as_smtp_rejected() {
    let mut server = Server::start(|c, _| {
        c.max_message_size = 1024;
        c.smtp_max_recipients = 2;
    })
    .await;
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(c.cmd("EHLO client").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com> SIZE=999999").await, 552);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<not an address").await, 501);
    assert_eq!(c.cmd("RCPT TO:<b@example.com>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<c@example.com>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<d@example.com>").await, 452);
    assert_eq!(c.cmd("DATA").await, 354);
    let big = format!("Subject: big\r\n\r\n{}\r\n.", "x".repeat(2000));
    assert_eq!(c.cmd(&big).await, 552);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.com>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    assert_eq!(c.cmd("Subject: ok\r\n\r\nbody\r\n.").await, 250);
    assert_eq!(c.cmd("QUIT").await, 221);
    let http = support::http_client();
    let info: serde_json::Value =
        support::json_of(http.get(format!("http://{}/api/v1/info", server.http))).await;
    let stats = &info["RuntimeStats"];
    assert_eq!(stats["SMTPRejected"].as_u64(), Some(3), "{info}");
    assert_eq!(stats["SMTPAccepted"].as_u64(), Some(1), "{info}");
    server.stop().await;
}

/// A `Deliver` that keeps messages in memory and fails the first one, so
/// the SMTP server can be driven without a database.
#[derive(Default)]
struct FakeSink {
    delivered: std::sync::Mutex<Vec<NewMessage>>,
    calls: std::sync::atomic::AtomicUsize,
}

impl Deliver for FakeSink {
    fn deliver(&self, msg: NewMessage) -> Delivery<'_> {
        Box::pin(async move {
            if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                return Err(StorageError::Commit {
                    path: "/fake/mail.db".into(),
                    reason: "disk full".into(),
                });
            }
            let mut got = self.delivered.lock().unwrap();
            got.push(msg);
            Ok(format!("fake{}", got.len()))
        })
    }
}

/// The SMTP server delivers to whatever `Deliver` it is given: a failing
/// delivery is answered 451 saying storing failed (the sink's reason, with
/// its path, is for the log only) and the session goes on; a good one is answered 250 with the sink's ID, and the sink got the
/// envelope and the dot-unstuffed content.
#[tokio::test]
async fn smtp_server_delivers_to_a_fake_sink() {
    let sink = Arc::new(FakeSink::default());
    let server = SmtpServer::bind("127.0.0.1:0", ServerOptions::default(), sink.clone())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let mut c = Raw::connect(addr).await;
    assert_eq!(c.cmd("EHLO client").await, 250);
    for attempt in ["first", "second"] {
        assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await, 250);
        assert_eq!(c.cmd("RCPT TO:<b@example.com>").await, 250);
        assert_eq!(c.cmd("RCPT TO:<c@example.com>").await, 250);
        assert_eq!(c.cmd("DATA").await, 354);
        c.send(format!("Subject: {attempt}\r\n\r\n..dot\r\n.\r\n").as_bytes())
            .await;
        let (code, lines) = c.reply().await;
        if attempt == "first" {
            assert_eq!(code, 451, "{lines:?}");
            assert_eq!(lines, ["4.3.0 Error: could not store the message"]);
        } else {
            assert_eq!(
                (code, lines[0].as_str()),
                (250, "2.0.0 Ok: queued as fake1")
            );
        }
    }
    assert_eq!(c.cmd("QUIT").await, 221);
    let got = sink.delivered.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "a@example.com");
    assert_eq!(got[0].rcpt_to, ["b@example.com", "c@example.com"]);
    assert_eq!(got[0].raw, b"Subject: second\r\n\r\n.dot\r\n");
    assert_eq!(got[0].username, None);
    stop.send(()).unwrap();
    task.await.unwrap();
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
        c.smtp_auth = AuthPolicy::Users(Arc::new(
            Credentials::from_pairs("alice:s3cret", "MP_SMTP_AUTH").unwrap(),
        ));
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
        c.smtp_auth = AuthPolicy::Users(Arc::new(
            Credentials::from_pairs("bob:pw1 carol:pw2", "MP_SMTP_AUTH").unwrap(),
        ));
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
