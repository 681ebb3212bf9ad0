//! Reading a large stored message over HTTP in bounded memory, against a
//! real catcher on 127.0.0.1:0: `GET /api/v1/message/{ID}/raw`, its
//! attachment part, the message view, its headers and `/view/{ID}.txt` /
//! `.html` of a 49 MB message (a 36 MB incompressible attachment) must each
//! leave the process's peak RSS less than 64 MiB above where it was, and
//! give the bytes back exactly. Before the reads streamed (raw) and parsed
//! an outline (part, message, views), one message view decompressed the
//! whole message and held mail-parser's decoded attachment beside it.
//!
//! The large message is put in place with SQLite's blob I/O, streamed from
//! a zstd file, so storing it costs this process nothing: the peak it
//! starts from is what the catcher needed before, not a 49 MB insert.
//!
//! A test binary of its own: VmHWM is per process, and other tests running
//! alongside would move it.

mod support;

use std::io::{Seek, Write};

use base64::Engine;
use sha2::Digest;
use support::*;

const ATTACHMENT: usize = 36_000_000;

/// The message: text and HTML alternatives, then `big.bin` (part 2).
fn head(subject: &str) -> String {
    format!(
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\n\
         Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n--inner\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nthe text\r\n--inner\r\n\
         Content-Type: text/html; charset=utf-8\r\n\r\n<p>the html</p>\r\n--inner--\r\n\r\n--outer\r\n\
         Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"big.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    )
}

const TAIL: &str = "--outer--\r\n";

/// Writes the message with `size` bytes of noise as its attachment through
/// `out`, 57 bytes (one base64 line) at a time; returns the raw message's
/// length and SHA-256 and the attachment's SHA-256.
fn write_message(out: &mut impl Write, size: usize) -> (u64, String, String) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut raw_sha = sha2::Sha256::new();
    let mut att_sha = sha2::Sha256::new();
    let mut len = 0u64;
    let mut put = |bytes: &[u8], out: &mut dyn Write| {
        raw_sha.update(bytes);
        len += bytes.len() as u64;
        out.write_all(bytes).unwrap();
    };
    put(head("big").as_bytes(), out);
    let mut noise = Noise(0x5eed_0002);
    let mut piece = [0u8; 57];
    let mut left = size;
    while left > 0 {
        let n = left.min(57);
        noise.fill(&mut piece[..n]);
        att_sha.update(&piece[..n]);
        let mut line = b64.encode(&piece[..n]).into_bytes();
        line.extend_from_slice(b"\r\n");
        put(&line, out);
        left -= n;
    }
    put(TAIL.as_bytes(), out);
    (
        len,
        hex::encode(raw_sha.finalize()),
        hex::encode(att_sha.finalize()),
    )
}

/// Replaces message `id`'s stored copy with the large message, compressed
/// into a temporary file and written into the row in place.
fn plant_large_message(db: &std::path::Path, id: &str) -> (u64, String, String) {
    let mut file = tempfile::tempfile().unwrap();
    let mut enc = zstd::stream::write::Encoder::new(&mut file, 1).unwrap();
    let sums = write_message(&mut enc, ATTACHMENT);
    enc.finish().unwrap();
    let compressed = file.stream_position().unwrap();
    file.rewind().unwrap();
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    let seq: i64 = conn
        .query_row("SELECT Seq FROM mailbox WHERE ID = ?1", [id], |r| r.get(0))
        .unwrap();
    conn.execute(
        "UPDATE mailbox_data SET Raw = zeroblob(?1) WHERE id = ?2",
        rusqlite::params![compressed as i64, seq],
    )
    .unwrap();
    conn.execute(
        "UPDATE mailbox SET Size = ?1 WHERE Seq = ?2",
        rusqlite::params![sums.0 as i64, seq],
    )
    .unwrap();
    let mut blob = conn
        .blob_open(rusqlite::MAIN_DB, "mailbox_data", "Raw", seq, false)
        .unwrap();
    std::io::copy(&mut file, &mut blob).unwrap();
    sums
}

/// GETs `path`, reading the body chunk by chunk: its status, length and
/// SHA-256, and the body itself when it is under 1 MiB.
async fn get(base: &str, path: &str) -> (u16, u64, String, Vec<u8>) {
    let mut res = http_client()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let mut sha = sha2::Sha256::new();
    let (mut len, mut small) = (0u64, Vec::new());
    while let Some(chunk) = res.chunk().await.unwrap() {
        sha.update(&chunk);
        len += chunk.len() as u64;
        if small.len() + chunk.len() < 1024 * 1024 {
            small.extend_from_slice(&chunk);
        }
    }
    (status, len, hex::encode(sha.finalize()), small)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_49_mb_message_raises_peak_rss_by_less_than_64_mib() {
    let mut server = Server::start(|_, _| {}).await;
    let base = format!("http://{}", server.http);
    let insert = |subject: &str| {
        let mut raw = head(subject).into_bytes();
        raw.extend_from_slice(b"AAAA\r\n");
        raw.extend_from_slice(TAIL.as_bytes());
        mailsafe_catcher::storage::NewMessage {
            raw,
            mail_from: "a@example.com".into(),
            rcpt_to: vec!["b@example.com".into()],
            username: None,
        }
    };
    let warm = server.store.insert(insert("warm")).await.unwrap();
    let big = server.store.insert(insert("big")).await.unwrap();
    let (raw_len, raw_sha, att_sha) = plant_large_message(&server.db, &big);
    println!("planted a {raw_len}-byte message");

    let paths = |id: &str| {
        [
            format!("/api/v1/message/{id}/raw"),
            format!("/api/v1/message/{id}/part/2"),
            format!("/api/v1/message/{id}"),
            format!("/api/v1/message/{id}/headers"),
            format!("/view/{id}.txt"),
            format!("/view/{id}.html"),
        ]
    };
    // Warm up every stage of a read (pools, zstd, the parser, hyper).
    for p in paths(&warm) {
        assert_eq!(get(&base, &p).await.0, 200, "{p}");
    }
    let before = hwm_kib().max(rss_kib());
    let mut worst = 0;
    for p in paths(&big) {
        let (status, len, sha, body) = get(&base, &p).await;
        let grew_mib = hwm_kib().saturating_sub(before) / 1024;
        println!("GET {p}: {status}, {len} bytes; peak RSS grew by {grew_mib} MiB so far");
        worst = worst.max(grew_mib);
        assert_eq!(status, 200, "{p}");
        if p.ends_with("/raw") {
            assert_eq!((len, sha.as_str()), (raw_len, raw_sha.as_str()), "raw");
        } else if p.ends_with("/part/2") {
            assert_eq!((len, sha.as_str()), (ATTACHMENT as u64, att_sha.as_str()));
        } else if p.ends_with(&big) {
            let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let att = &m["Attachments"][0];
            assert_eq!(att["FileName"], "big.bin", "{m}");
            assert_eq!(att["PartID"], "2");
            assert_eq!(att["Size"], ATTACHMENT as u64);
            assert_eq!(att["Checksums"]["SHA256"], att_sha.as_str());
            assert_eq!(m["Text"].as_str().unwrap().trim(), "the text");
            assert_eq!(m["HTML"].as_str().unwrap().trim(), "<p>the html</p>");
            assert_eq!(m["Subject"], "big");
        } else if p.ends_with("/headers") {
            let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(h["Subject"], serde_json::json!(["big"]));
        } else if p.ends_with(".txt") {
            assert_eq!(String::from_utf8_lossy(&body).trim(), "the text");
        } else {
            assert!(String::from_utf8_lossy(&body).contains("<p>the html</p>"));
        }
    }
    println!("reading a {raw_len}-byte message: peak RSS grew by {worst} MiB at most");
    assert!(
        worst < 64,
        "peak RSS grew by {worst} MiB (from {before} KiB)"
    );
    server.stop().await;
}
