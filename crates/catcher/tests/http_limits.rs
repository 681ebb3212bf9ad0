//! The HTTP listener's limits against a real catcher on 127.0.0.1:0, with
//! raw sockets for the slow clients: half-sent headers are cut off after the
//! header-read timeout (also on idle keep-alive connections), the global and
//! per-IP connection caps refuse what is over them while other clients are
//! served, a stalled TLS handshake is cut off, and a websocket subscriber
//! that stops reading is dropped and its place freed.
//!
//! Timeouts are configured short (1-2 s) and every wait is bounded far above
//! them, so the tests do not depend on machine speed.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use mailsafe_catcher::api::HttpLimits;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound on anything that should happen "soon".
const BOUND: Duration = Duration::from_secs(30);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(BOUND)
        .build()
        .unwrap()
}

/// Connects to `server` from the loopback address `from` (all of 127/8 is
/// local on Linux), so one test can act as several clients.
async fn connect_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    socket.connect(server).await.unwrap()
}

/// Reads until the server closes the connection (EOF or reset) and returns
/// what it sent; panics if it is still open after `bound`.
async fn closed_within(conn: &mut TcpStream, bound: Duration, what: &str) -> String {
    let mut out = Vec::new();
    match tokio::time::timeout(bound, conn.read_to_end(&mut out)).await {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => panic!("{what}: connection still open after {bound:?}"),
    }
}

/// A complete GET over a fresh raw connection from `from`; returns the
/// status line ("" when the server closed without answering).
async fn get_from(from: [u8; 4], server: SocketAddr, path: &str) -> String {
    let mut conn = connect_from(from, server).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if conn.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let answer = closed_within(&mut conn, BOUND, path).await;
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_cut_off_while_others_are_served() {
    let mut server = Server::start(|c, _| {
        c.http_limits = HttpLimits {
            header_read_timeout: Duration::from_secs(2),
            max_connections: 1000,
            max_connections_per_ip: 1000,
            ..HttpLimits::default()
        };
    })
    .await;
    // 300 slowloris clients: half a request head each, then silence.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut c = TcpStream::connect(server.http).await.unwrap();
        c.write_all(b"GET /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(c);
    }
    // A normal client is served while they hang on.
    let r = client()
        .get(format!("http://{}/api/v1/messages", server.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A kept-alive connection that goes idle after its response is closed
    // as well (the header timer restarts while it waits for a next request).
    let mut idle = TcpStream::connect(server.http).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut idle, BOUND, "idle keep-alive").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Every slow client is disconnected: the header-read timeout is 2 s, the
    // bound 30 s (on main 89dad44 they stayed open indefinitely).
    let started = tokio::time::Instant::now();
    for (i, c) in slow.iter_mut().enumerate() {
        let left = BOUND.saturating_sub(started.elapsed());
        closed_within(
            c,
            left.max(Duration::from_secs(1)),
            &format!("slow client {i}"),
        )
        .await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_refuse_the_excess_and_serve_other_clients() {
    // A long header timeout: the held connections stay open for the whole
    // test, so every refusal below is the caps' doing.
    let mut server = Server::start(|c, _| {
        c.http_limits = HttpLimits {
            header_read_timeout: Duration::from_secs(120),
            max_connections: 8,
            max_connections_per_ip: 5,
            ..HttpLimits::default()
        };
    })
    .await;
    let hold = |from: [u8; 4]| {
        let addr = server.http;
        async move {
            let mut c = connect_from(from, addr).await;
            c.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .await
                .unwrap();
            c
        }
    };
    // Five held connections from 127.0.0.1 fill its share.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(hold([127, 0, 0, 1]).await);
    }
    // A sixth from the same address is answered 503 (or just closed) at once,
    // long before any timeout could have closed it.
    let status = get_from([127, 0, 0, 1], server.http, "/livez").await;
    assert!(
        status.is_empty() || status.starts_with("HTTP/1.1 503"),
        "sixth connection from one IP: {status:?}"
    );
    // Another address is served.
    let status = get_from([127, 0, 0, 2], server.http, "/livez").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    // Three more from 127.0.0.2 fill the global cap of 8; a ninth connection
    // from a third address is refused.
    for _ in 0..3 {
        held.push(hold([127, 0, 0, 2]).await);
    }
    let status = get_from([127, 0, 0, 3], server.http, "/livez").await;
    assert!(
        status.is_empty() || status.starts_with("HTTP/1.1 503"),
        "ninth connection overall: {status:?}"
    );
    // Freed places are handed out again (waiting until the server noticed
    // the closes, which takes no fixed time).
    held.clear();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let status = get_from([127, 0, 0, 1], server.http, "/livez").await;
        if status.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "places never came back: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_cut_off() {
    let mut server = Server::start(|c, dir| {
        let (cert, key) = self_signed(dir);
        c.ui_tls_cert = Some(cert);
        c.ui_tls_key = Some(key);
        c.http_limits = HttpLimits {
            tls_handshake_timeout: Duration::from_secs(1),
            ..HttpLimits::default()
        };
    })
    .await;
    // Connects and never says hello. Closed after the configured 1 s; the
    // bound of 8 s is below the 10 s that was hard-wired before.
    let mut c = TcpStream::connect(server.http).await.unwrap();
    closed_within(&mut c, Duration::from_secs(8), "stalled TLS handshake").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_subscriber_that_stops_reading_is_dropped() {
    let mut server = Server::start(|c, _| c.max_event_subscribers = 1).await;
    // One subscriber with a tiny receive buffer, which never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(server.http).await.unwrap();
    let upgrade = "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stalled.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(BOUND, stalled.read(&mut byte))
            .await
            .expect("upgrade answered in time")
            .unwrap();
        assert!(n == 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Its place is taken: a second subscriber is refused.
    let second = raw_ws_status(server.http).await;
    assert!(second.contains("503"), "{second}");
    // 24 MB of events (16 KB subjects): far more than the socket buffers
    // and the 256 KiB write buffer hold, so the server's writes stall.
    let subject = "s".repeat(16 * 1024);
    for batch in 0..30 {
        let inserts = (0..50).map(|i| {
            server.store.insert(mailsafe_catcher::storage::NewMessage {
                raw: format!("Subject: {batch} {i} {subject}\r\n\r\nbody\r\n").into_bytes(),
                mail_from: "a@example.com".into(),
                rcpt_to: vec!["b@example.com".into()],
                username: None,
            })
        });
        for r in futures::future::join_all(inserts).await {
            r.unwrap();
        }
    }
    // Within the 10 s send timeout (bounded generously) the stalled
    // subscriber is dropped: its connection closes and a new subscriber
    // gets its place. Before, it held the place for as long as it lived.
    let mut sink = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let answer = raw_ws_status(server.http).await;
        if answer.contains("101") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled subscriber kept its place: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The stalled connection was closed by the server (reading it now
    // drains what was buffered, then ends).
    let drained = tokio::time::timeout(BOUND, async {
        while let Ok(n) = stalled.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the stalled subscriber's connection is still open"
    );
    server.stop().await;
}

/// The status line of a websocket upgrade to `/api/events` (the connection
/// is dropped right after).
async fn raw_ws_status(server: SocketAddr) -> String {
    let mut c = TcpStream::connect(server).await.unwrap();
    let upgrade = "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    c.write_all(upgrade.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(BOUND, c.read(&mut buf))
        .await
        .expect("answered in time")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}
