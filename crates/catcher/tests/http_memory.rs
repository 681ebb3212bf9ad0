//! Bounded memory per HTTP request, against a real catcher on 127.0.0.1:0:
//! a 60 MB `PUT /api/v1/tags` body is refused with 413 after the 1 MiB limit
//! without raising the process's peak RSS by anything like its size; the
//! send API takes only `application/json` (415 otherwise, so a cross-site
//! form cannot post mail), obeys the message size limit, and reserves from
//! the memory budget SMTP uses (503 while it is exhausted).
//!
//! One test binary of its own for the RSS test: VmHWM is per process, and
//! other tests running alongside would move it.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60mb_tags_body_is_413_and_rss_stays_bounded() {
    let mut server = Server::start(|_, _| {}).await;
    // Warm up the server (first requests allocate pools and caches).
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..3 {
        let r = http
            .get(format!("http://{}/api/v1/tags", server.http))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let before = hwm_kib().max(rss_kib());
    // 60 MB of IDs, streamed 1 MiB at a time so the client itself holds
    // only one chunk: `{"IDs":["xxxxxxxxxxxxxxxxxxxxxx", ...]}`, 2.4 M IDs
    // as in the issue (main 89dad44: peak RSS 24 -> 352 MiB, answer 200).
    let id = b"\"abcdefghijklmnopqrstuv\",";
    let total = 60 * 1000 * 1000;
    let mut conn = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let head = format!(
        "PUT /api/v1/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {total}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let writer = tokio::spawn(async move {
        let mut chunk = Vec::with_capacity(1024 * 1024);
        while chunk.len() + id.len() <= 1024 * 1024 {
            chunk.extend_from_slice(id);
        }
        let mut sent = 0;
        if wr.write_all(b"{\"IDs\":[").await.is_err() {
            return sent;
        }
        sent += 8;
        while sent < total {
            let n = chunk.len().min(total - sent);
            if wr.write_all(&chunk[..n]).await.is_err() {
                return sent;
            }
            sent += n;
        }
        sent
    });
    let answer = early_answer(&mut rd).await;
    assert!(
        answer
            .as_ref()
            .is_none_or(|a| a.starts_with("HTTP/1.1 413")),
        "{answer:?}"
    );
    drop(rd);
    let sent = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer stops")
        .unwrap();
    let after = hwm_kib();
    let grew_mib = after.saturating_sub(before) / 1024;
    println!("peak RSS grew by {grew_mib} MiB (client sent {sent} bytes before the close)");
    assert!(
        grew_mib < 64,
        "peak RSS grew by {grew_mib} MiB ({before} -> {after} KiB)"
    );
    // The server still answers.
    let r = http
        .get(format!("http://{}/api/v1/messages", server.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

fn send_body(subject: &str, attachment: usize) -> String {
    use base64::Engine;
    let content = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; attachment]);
    serde_json::json!({
        "From": {"Email": "a@example.com"},
        "To": [{"Email": "b@example.com"}],
        "Subject": subject,
        "Text": "hi",
        "Attachments": [{"Filename": "a.bin", "Content": content}],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_api_takes_only_json_within_the_size_limit_and_the_budget() {
    let mut server = Server::start(|c, _| {
        c.max_message_size = 1024 * 1024;
        c.smtp_max_data_memory = 8 * 1024 * 1024;
        c.send_budget_wait = Duration::from_millis(200);
    })
    .await;
    let url = format!("http://{}/api/v1/send", server.http);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = |ct: &'static str, body: String| {
        http.post(&url).header("Content-Type", ct).body(body).send()
    };
    // What a cross-site HTML form can send without a preflight (on main
    // 89dad44: 200 and a stored mail).
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r = post(ct, send_body("form", 10)).await.unwrap();
        assert_eq!(r.status(), 415, "{ct}");
        assert!(r.text().await.unwrap().contains("application/json"));
    }
    assert_eq!(server.count().await, 0);
    let r = post("application/json; charset=utf-8", send_body("ok", 10))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.count().await, 1);
    // Over MP_MAX_MESSAGE_SIZE (1 MiB here): 413, announced or not.
    // (Refused before the body is read: the client may see the answer or,
    // when the close overtakes it, a failed upload; never a stored mail.)
    if let Ok(r) = post("application/json", send_body("big", 2 * 1024 * 1024)).await {
        assert_eq!(r.status(), 413);
    }
    let big = send_body("big-chunked", 2 * 1024 * 1024);
    let mut conn = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let head = "POST /api/v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    conn.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let writer = tokio::spawn(async move {
        for c in big.as_bytes().chunks(64 * 1024) {
            let framed = [format!("{:x}\r\n", c.len()).as_bytes(), c, b"\r\n"].concat();
            if wr.write_all(&framed).await.is_err() {
                return;
            }
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    });
    let answer = early_answer(&mut rd).await;
    assert!(
        answer
            .as_ref()
            .is_none_or(|a| a.starts_with("HTTP/1.1 413")),
        "chunked: {answer:?}"
    );
    drop(rd);
    writer.abort();
    // While SMTP holds the whole memory budget for longer than the send
    // API waits: 503 with Retry-After, then 200 once the budget is free.
    let budget = server.budget.clone().expect("a budget is configured");
    assert!(budget.try_reserve(budget.limit()));
    let r = post("application/json", send_body("busy", 10))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    budget.release(budget.limit());
    let r = post("application/json", send_body("free", 10))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(budget.used(), 0, "the send API gave its reservation back");
    assert_eq!(server.count().await, 2);
    server.stop().await;
}
