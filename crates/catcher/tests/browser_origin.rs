//! Browser-origin safety against a real catcher on 127.0.0.1:0, with raw
//! websocket handshakes: a foreign `Origin` is refused on `/api/events` and
//! the API (Mailpit's `MP_API_CORS` rules), the UI's own origin and clients
//! without `Origin` keep working, allowed origins get Mailpit's CORS
//! headers, a loopback catcher refuses a rebound `Host`, and the number of
//! event subscribers is capped.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use mailsafe_catcher::api::OriginPolicy;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a websocket handshake for `/api/events` with `headers` and returns
/// the status line and the still-open connection.
async fn ws_handshake(addr: SocketAddr, headers: &str) -> (String, TcpStream) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /api/events HTTP/1.1\r\n{headers}Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut byte))
            .await
            .expect("handshake answered in time")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    (head.lines().next().unwrap_or_default().to_string(), c)
}

/// A raw request with `headers`; returns the whole answer.
async fn raw(addr: SocketAddr, method: &str, path: &str, headers: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_api_refuse_foreign_origins() {
    let mut server = Server::start(|_, _| {}).await;
    let addr = server.http;
    let host = format!("Host: {addr}\r\n");
    // A page on another site: refused (on main 89dad44 it got 101 and every
    // new mail's sender, subject and snippet).
    let (status, _) = ws_handshake(addr, &format!("{host}Origin: http://evil.example\r\n")).await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    // The UI's own page, and a client without Origin: upgraded.
    let (status, mut own) = ws_handshake(addr, &format!("{host}Origin: http://{addr}\r\n")).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let (status, _plain) = ws_handshake(addr, &host).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    // The same-origin socket receives events.
    let mut c = Raw::connect(server.smtp).await;
    for cmd in ["EHLO x", "MAIL FROM:<a@x>", "RCPT TO:<b@y>"] {
        assert_eq!(c.cmd(cmd).await, 250);
    }
    assert_eq!(c.cmd("DATA").await, 354);
    assert_eq!(c.cmd("Subject: live\r\n\r\nhi\r\n.").await, 250);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("live") {
        let n = tokio::time::timeout(Duration::from_secs(30), own.read(&mut buf))
            .await
            .expect("event in time")
            .unwrap();
        assert!(n > 0, "websocket closed");
        got.extend_from_slice(&buf[..n]);
    }
    // The API: a foreign page's request is refused, the UI's own and
    // non-browser ones are answered; no CORS headers go to a refused origin.
    let answer = raw(
        addr,
        "DELETE",
        "/api/v1/messages",
        &format!("{host}Origin: https://evil.example\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("Blocked due to CORS violation"), "{answer}");
    assert_eq!(
        server.count().await,
        1,
        "the refused DELETE deleted nothing"
    );
    let answer = raw(
        addr,
        "GET",
        "/api/v1/messages",
        &format!("{host}Origin: http://{addr}\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = raw(addr, "GET", "/api/v1/messages", &host).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin")
    );
    // An opaque origin (the UI's sandboxed preview loading a cid image) may
    // GET without being able to read the answer cross-origin; it may not
    // change anything nor open the websocket.
    let null = format!("{host}Origin: null\r\n");
    let answer = raw(addr, "GET", "/api/v1/messages", &null).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin")
    );
    let answer = raw(addr, "DELETE", "/api/v1/messages", &null).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let (status, _) = ws_handshake(addr, &null).await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    assert_eq!(server.count().await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mp_api_cors_allows_listed_origins_with_mailpit_headers() {
    let mut server = Server::start(|c, _| {
        c.origins = OriginPolicy {
            cors: "app.example, https://ui.example:8443".into(),
            ..OriginPolicy::default()
        };
    })
    .await;
    let addr = server.http;
    let host = format!("Host: {addr}\r\n");
    let (status, _ws) = ws_handshake(addr, &format!("{host}Origin: http://app.example\r\n")).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let answer = raw(
        addr,
        "GET",
        "/api/v1/messages",
        &format!("{host}Origin: https://ui.example:8443\r\n"),
    )
    .await
    .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("access-control-allow-origin: https://ui.example:8443"));
    assert!(answer.contains("access-control-allow-methods: get, post, delete, put, options"));
    assert!(answer.contains("access-control-allow-headers: *"));
    // Port-exact, as in Mailpit: the same host on another port is foreign.
    let answer = raw(
        addr,
        "GET",
        "/api/v1/messages",
        &format!("{host}Origin: https://ui.example:9999\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // A preflight gets a blank 200 with the headers.
    let answer = raw(
        addr,
        "OPTIONS",
        "/api/v1/send",
        &format!("{host}Origin: http://app.example\r\nAccess-Control-Request-Method: POST\r\n"),
    )
    .await
    .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("access-control-allow-origin: http://app.example"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_catcher_refuses_rebound_host_names() {
    // Bound to 127.0.0.1 (the test default): DNS rebinding protection on.
    let mut server = Server::start(|_, _| {}).await;
    let addr = server.http;
    let port = addr.port();
    let answer = raw(addr, "GET", "/api/v1/messages", "Host: evil.example\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = raw(addr, "GET", "/", &format!("Host: evil.example:{port}\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "UI too: {answer}");
    for ok in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let answer = raw(addr, "GET", "/api/v1/messages", &format!("Host: {ok}\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{ok}: {answer}");
    }
    server.stop().await;
    // Names can be added.
    let mut server = Server::start(|c, _| {
        c.origins.allowed_hosts = vec!["mail.test".into()];
    })
    .await;
    let answer = raw(server.http, "GET", "/livez", "Host: mail.test:8025\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = raw(server.http, "GET", "/livez", "Host: other.test\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_subscribers_are_capped() {
    // The cap as configured (`MAILSAFE_HTTP_MAX_EVENT_SUBSCRIBERS`).
    let mut s = Server::start(|c, _| c.max_event_subscribers = 2).await;
    let addr = s.http;
    let host = format!("Host: {addr}\r\n");
    let (a, _a) = ws_handshake(addr, &host).await;
    let (b, b_conn) = ws_handshake(addr, &host).await;
    assert!(a.starts_with("HTTP/1.1 101") && b.starts_with("HTTP/1.1 101"));
    let (c, _) = ws_handshake(addr, &host).await;
    assert!(c.starts_with("HTTP/1.1 503"), "third subscriber: {c}");
    // A subscriber that leaves frees its place (once the server noticed).
    drop(b_conn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (d, _d) = ws_handshake(addr, &host).await;
        if d.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "place never freed: {d}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}
