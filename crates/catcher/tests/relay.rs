//! Relay and release, auto-relay and forwarding (`MP_SMTP_RELAY_*`,
//! `MP_SMTP_FORWARD_*`) against real SMTP servers on 127.0.0.1: a second
//! catcher (STARTTLS, AUTH LOGIN) whose store shows what arrived, envelope
//! included (recipients missing from the headers are recorded as Bcc), and
//! relay servers that are down. The stored message is never lost.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailsafe_catcher::auth::{AuthPolicy, Credentials};
use mailsafe_catcher::relay::{ForwardConfig, RelayConfig, Settings};
use mailsafe_catcher::storage::NewMessage;
use support::*;

/// A catcher that plays the relay server: STARTTLS and AUTH for user
/// `relay` when `auth`, plain otherwise.
async fn relay_target(auth: bool) -> Server {
    Server::start(move |c, dir| {
        if auth {
            let (cert, key) = self_signed(dir);
            c.smtp_tls_cert = Some(cert);
            c.smtp_tls_key = Some(key);
            c.smtp_auth = AuthPolicy::Users(Arc::new(
                Credentials::from_pairs("relay:relay-Secret-7", "MP_SMTP_AUTH").unwrap(),
            ));
        }
    })
    .await
}

fn settings(port: u16) -> Settings {
    Settings {
        host: "127.0.0.1".into(),
        port,
        ..Settings::default()
    }
}

async fn post_release(server: &Server, id: &str, to: &[&str]) -> (u16, String) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!(
            "http://{}/api/v1/message/{id}/release",
            server.http
        ))
        .json(&serde_json::json!({ "To": to }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn eventually_count(server: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.count().await < n {
        assert!(Instant::now() < deadline, "waiting for {n} messages");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ORIGINAL: &[u8] = b"From: \"Ann\" <ann@example.com>\r\nTo: team@example.com\r\nBcc: secret@example.com\r\n\
Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <orig-1@example.com>\r\nSubject: release me\r\n\r\n\
.dotted line\r\nbody\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_over_starttls_with_auth_rewrites_headers_and_envelope() {
    let logs = logs();
    let mut target = relay_target(true).await;
    let mut s = settings(target.smtp.port());
    s.starttls = true;
    s.allow_insecure = true;
    s.auth = "login".into();
    s.username = "relay".into();
    s.password = "relay-Secret-7".into();
    s.return_path = "bounce@catcher.test".into();
    s.blocked_recipients = "@blocked\\.test$".into();
    let relay = RelayConfig::new(&s, false, None).unwrap();
    let mut catcher = Server::start(move |c, _| c.relay = relay).await;
    let id = catcher
        .store
        .insert(NewMessage {
            raw: ORIGINAL.to_vec(),
            mail_from: "ann@example.com".into(),
            rcpt_to: vec!["team@example.com".into()],
            username: None,
        })
        .await
        .unwrap();

    let (status, body) = post_release(&catcher, &id, &["Dest <dest@ok.test>"]).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    eventually_count(&target, 1).await;
    let got_id = ids(&target.store).await.remove(0);
    let got = String::from_utf8(target.store.raw(&got_id).await.unwrap()).unwrap();
    // Bcc removed, Return-Path set, Date and Message-ID new; the body as it
    // was (dot-stuffing undone by the receiver).
    assert!(!got.contains("secret@example.com"), "{got}");
    // (The receiving store adds its own Bcc header for the envelope.)
    assert!(
        got.starts_with("Bcc: dest@ok.test\r\nReturn-Path: <bounce@catcher.test>\r\n"),
        "{got}"
    );
    assert!(!got.contains("orig-1@example.com"), "{got}");
    assert!(got.contains("@mailsafe>"), "{got}");
    assert!(!got.contains("Mon, 1 Jan 2024"), "{got}");
    assert!(got.ends_with("\r\n\r\n.dotted line\r\nbody\r\n"), "{got}");
    // The envelope: the recipient only in RCPT is recorded as Bcc, and the
    // session authenticated as `relay`.
    let summary = target.store.summary(&got_id).await.unwrap();
    let bcc: Vec<_> = summary.head.bcc.iter().map(|a| a.address.clone()).collect();
    assert_eq!(bcc, ["dest@ok.test"]);
    assert_eq!(summary.head.username, "relay");

    // Blocked and malformed recipients are refused before connecting.
    let (status, body) = post_release(&catcher, &id, &["x@blocked.test"]).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("Failed: Address found on blocklist: x@blocked.test"),
        "{body}"
    );
    let (status, body) = post_release(&catcher, &id, &["not an address"]).await;
    assert_eq!(status, 400);
    assert!(body.contains("Invalid email address"), "{body}");
    assert_eq!(target.count().await, 1);

    // The relay server goes away: the API says why, the message stays.
    target.stop().await;
    let (status, body) = post_release(&catcher, &id, &["dest@ok.test"]).await;
    assert_eq!(status, 400);
    assert!(
        body.starts_with("SMTP error: relay to 127.0.0.1:"),
        "{body}"
    );
    assert_eq!(catcher.count().await, 1);
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(log.contains("release failed"), "{log}");
    assert!(
        !log.contains("relay-Secret-7"),
        "the relay password is never logged"
    );
    catcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_relay_matching_recipients_and_forwarding_a_copy() {
    let logs = logs();
    let mut target = relay_target(false).await;
    let port = target.smtp.port();
    let relay = RelayConfig::new(&settings(port), false, Some("^keep@")).unwrap();
    let forward = ForwardConfig::new(&Settings {
        to: "copy@fwd.test, second@fwd.test".into(),
        ..settings(port)
    })
    .unwrap();
    let mut catcher = Server::start(move |c, _| {
        c.relay = relay;
        c.forward = forward;
    })
    .await;
    let mut c = Raw::connect(catcher.smtp).await;
    assert_eq!(c.cmd("EHLO x").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<sender@app.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<keep@a.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<other@a.test>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(b"From: app@app.test\r\nSubject: auto\r\n\r\nhello\r\n.\r\n")
        .await;
    assert_eq!(c.reply().await.0, 250);
    eventually_count(&target, 2).await;
    let mut envelopes = Vec::new();
    for id in ids(&target.store).await {
        let s = target.store.summary(&id).await.unwrap();
        let mut bcc: Vec<String> = s.head.bcc.iter().map(|a| a.address.clone()).collect();
        bcc.sort();
        envelopes.push(bcc.join(","));
        assert_eq!(s.head.subject, "auto");
    }
    envelopes.sort();
    // Auto-relay went to the matching recipient only; the forward to its
    // fixed recipients.
    assert_eq!(envelopes, ["copy@fwd.test,second@fwd.test", "keep@a.test"]);

    // With the relay server down, SMTP still answers 250 and stores; the
    // failures are logged.
    target.stop().await;
    assert_eq!(c.cmd("MAIL FROM:<sender@app.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<keep@a.test>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(b"Subject: down\r\n\r\nstill stored\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(catcher.count().await, 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        if log.contains("auto-relay failed") && log.contains("forwarding failed") {
            break;
        }
        assert!(Instant::now() < deadline, "failures not logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    catcher.stop().await;
}

#[test]
fn mailpit_yaml_settings_and_their_checks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.yaml");
    std::fs::write(
        &file,
        "host: smtp.example.com\nport: 587\nstarttls: true\nauth: plain\nusername: u\npassword: p\n\
         return-path: bounce@example.com\nallowed-recipients: '@example\\.com$'\npreserve-message-ids: true\n",
    )
    .unwrap();
    let s = Settings::from_yaml_file(&file).unwrap();
    let r = RelayConfig::new(&s, false, None).unwrap().unwrap();
    assert_eq!(
        (r.target.host.as_str(), r.target.port),
        ("smtp.example.com", 587)
    );
    assert!(r.target.starttls && r.preserve_message_ids);
    assert_eq!(r.allowed.unwrap().as_str(), "@example\\.com$");
    // The password stays out of Debug output.
    assert!(!format!("{:?}", r.target).contains("p,"));
    // Mailpit's checks.
    for (bad, why) in [
        (
            Settings {
                auth: "plain".into(),
                ..settings(25)
            },
            "username",
        ),
        (
            Settings {
                auth: "gssapi".into(),
                ..settings(25)
            },
            "not supported",
        ),
        (
            Settings {
                tls: true,
                starttls: true,
                ..settings(25)
            },
            "together",
        ),
        (
            Settings {
                allowed_recipients: "(".into(),
                ..settings(25)
            },
            "allowed",
        ),
    ] {
        let e = RelayConfig::new(&bad, false, None).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    assert!(RelayConfig::new(&Settings::default(), true, None).is_err());
    assert!(
        RelayConfig::new(&Settings::default(), false, None)
            .unwrap()
            .is_none()
    );
    assert!(
        ForwardConfig::new(&settings(25))
            .unwrap_err()
            .to_string()
            .contains("To")
    );
}
