//! The send API's memory per request, against a real catcher on
//! 127.0.0.1:0: one send near `MP_MAX_MESSAGE_SIZE` (a 36 MB attachment,
//! 48 MB of base64 in the JSON) must not raise the process's peak RSS by
//! 64 MiB or more, and the attachment must come back byte for byte. Before
//! the send API spooled its request (session 4's code) the same send raised
//! it by about 6x the body.
//!
//! A test binary of its own: VmHWM is per process, and other tests running
//! alongside would move it.

mod support;

use std::time::Duration;

use sha2::Digest;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Posts a send request over a raw socket, streaming an attachment of
/// `size` noise bytes in 768 KiB pieces (the client holds one piece), and
/// returns the answer's status, body and the attachment's SHA-256.
async fn stream_send(http: std::net::SocketAddr, size: usize) -> (u16, String, String) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let head = r#"{"From":{"Email":"a@example.com"},"To":[{"Email":"b@example.com"}],"Subject":"big","Text":"hi","Attachments":[{"Filename":"big.bin","Content":""#;
    let tail = r#""}]}"#;
    let len = head.len() + size.div_ceil(3) * 4 + tail.len();
    let mut conn = tokio::net::TcpStream::connect(http).await.unwrap();
    let req = format!(
        "POST /api/v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n{head}"
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut noise = Noise(0x5eed_0001);
    let mut sha = sha2::Sha256::new();
    let mut piece = vec![0u8; 768 * 1024];
    let mut sent = 0;
    while sent < size {
        let n = piece.len().min(size - sent);
        noise.fill(&mut piece[..n]);
        sha.update(&piece[..n]);
        conn.write_all(b64.encode(&piece[..n]).as_bytes())
            .await
            .unwrap();
        sent += n;
    }
    conn.write_all(tail.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(300), conn.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body, hex::encode(sha.finalize()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_near_the_size_limit_raises_peak_rss_by_less_than_64_mib() {
    let mut server = Server::start(|_, _| {}).await;
    // Warm up every stage of a send (spools, zstd, the writer, SQLite).
    let (status, body, _) = stream_send(server.http, 2 * 1024 * 1024).await;
    assert_eq!(status, 200, "{body}");
    let before = hwm_kib().max(rss_kib());
    let size = 36_000_000;
    let (status, body, sha) = stream_send(server.http, size).await;
    let after = hwm_kib();
    assert_eq!(status, 200, "{body}");
    let grew_mib = after.saturating_sub(before) / 1024;
    println!("a {size}-byte attachment (48 MB of JSON): peak RSS grew by {grew_mib} MiB");
    assert!(
        grew_mib < 64,
        "peak RSS grew by {grew_mib} MiB ({before} -> {after} KiB)"
    );
    assert_eq!(
        server.budget.as_ref().unwrap().used(),
        0,
        "the reservation came back"
    );
    // The message is whole: same bytes, and within the size limit.
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let http = support::http_client();
    let m: serde_json::Value =
        support::json_of(http.get(format!("http://{}/api/v1/message/{id}", server.http))).await;
    let att = &m["Attachments"][0];
    assert_eq!(att["FileName"], "big.bin");
    assert_eq!(att["Size"], size as u64);
    assert_eq!(att["Checksums"]["SHA256"], sha.as_str());
    assert!(
        m["Size"].as_u64().unwrap() < 50 * 1024 * 1024,
        "{}",
        m["Size"]
    );
    assert_eq!(m["Text"], "hi");
    server.stop().await;
}
