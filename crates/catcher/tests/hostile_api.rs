//! Hostile HTTP requests against the catcher's whole router (API, UI and the
//! content-security middleware) on 127.0.0.1:0: bad and oversized IDs, path
//! traversal in part IDs, `/view` and `/ui` paths, huge `limit`/`start`
//! values, nasty search queries, malformed and deeply nested JSON, oversized
//! bodies (413, also when chunked), oversized headers and wrong methods.
//! Every answer is a 4xx with a body, never a 500, and the server keeps
//! serving afterwards.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Percent-encodes every byte that is not unreserved, so the path reaches
/// the server exactly as meant (no client-side `..` normalisation).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends one raw HTTP/1.1 request and returns the status line and body.
async fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("answered and closed in time")
        .ok();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Asserts a 4xx answer with a non-empty body.
async fn assert_client_error(res: reqwest::Response, what: &str) -> StatusCode {
    let status = res.status();
    assert!(status.is_client_error(), "{what}: {status}");
    let body = res.text().await.unwrap();
    assert!(!body.is_empty(), "{what}: empty body");
    status
}

async fn stored_id(server: &Server) -> String {
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(c.cmd("EHLO x").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@x>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(
        b"Subject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n\
--b\r\nContent-Type: text/plain; name=a.txt\r\nContent-Disposition: attachment; filename=\"../../a.txt\"\r\n\r\nsecret\r\n\
--b--\r\n.\r\n",
    )
    .await;
    let (code, lines) = c.reply().await;
    assert_eq!(code, 250);
    lines[0].rsplit(' ').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_traversal_are_404_or_400_never_500() {
    let mut server = Server::start(|_, _| {}).await;
    let base = format!("http://{}", server.http);
    let http = client();
    let id = stored_id(&server).await;
    // The attachment is reachable by its real part ID.
    let r = http
        .get(format!("{base}/api/v1/message/{id}/part/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!disposition.contains('/'), "{disposition}");
    assert_eq!(r.text().await.unwrap(), "secret");

    let long = "x".repeat(8 * 1024);
    let bad_ids = [
        // (`..` itself is normalised away by any URL client; the raw
        // requests below send it as is.)
        "nosuchid",
        "../../etc/passwd",
        "%00",
        "\0",
        "' OR 1=1 --",
        "\"; DROP TABLE messages; --",
        "ünïcødé",
        "*",
        "-1",
        "99999999999999999999999",
        long.as_str(),
    ];
    for bad in bad_ids {
        let e = enc(bad);
        for path in [
            format!("/api/v1/message/{e}"),
            format!("/api/v1/message/{e}/headers"),
            format!("/api/v1/message/{e}/raw"),
            format!("/api/v1/message/{e}/part/1"),
            format!("/api/v1/message/{e}/part/1/thumb"),
            format!("/api/v1/message/{e}/html-check"),
            format!("/view/{e}.html"),
            format!("/view/{e}.txt"),
            format!("/view/{e}"),
        ] {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_client_error(r, &path).await;
        }
        let r = http
            .post(format!("{base}/api/v1/message/{e}/release"))
            .json(&serde_json::json!({"To": ["x@y"]}))
            .send()
            .await
            .unwrap();
        assert_client_error(r, "release").await;
    }
    // Part IDs that are not MIME paths, or try to leave the message.
    for part in [
        "../../etc/passwd",
        "..",
        "1/../2",
        "2/..",
        "0",
        "-1",
        "1.",
        ".1",
        "1..2",
        "00000000002",
        "99999999999999999999",
        "2%00",
        "2 ",
        long.as_str(),
    ] {
        let path = format!("/api/v1/message/{id}/part/{}", enc(part));
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(assert_client_error(r, &path).await, 404, "{path}");
    }
    // Unencoded traversal, as a raw client sends it (no normalisation):
    // nothing outside the routes is ever served.
    for path in [
        "/view/../../../../etc/passwd".to_string(),
        "/view/..%2f..%2f..%2fetc%2fpasswd.html".into(),
        "/ui/../../Cargo.toml".into(),
        "/ui/..%2f..%2fCargo.toml".into(),
        format!("/api/v1/message/{id}/part/../../../../etc/passwd"),
        "//etc/passwd".into(),
        "/api/v1/../../etc/passwd".into(),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let (status, body) = raw_http(server.http, req.as_bytes()).await;
        // 301 only cleans repeated slashes (as Mailpit's router does); the
        // target is a path on this server, which is then a 404 too.
        assert!(
            status.contains(" 404 ") || status.contains(" 400 ") || status.contains(" 301 "),
            "{path}: {status}"
        );
        assert!(
            !body.contains("root:") && !body.contains("[package]"),
            "{path}"
        );
    }
    assert_eq!(
        http.get(format!("{base}/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_numbers_nasty_queries_bad_json_and_wrong_methods() {
    let mut server = Server::start(|_, _| {}).await;
    let base = format!("http://{}", server.http);
    let http = client();
    let id = stored_id(&server).await;

    for q in [
        "limit=9223372036854775807",
        "start=9223372036854775807",
        "limit=9223372036854775807&start=9223372036854775807",
        "limit=-9223372036854775808&start=-9223372036854775808",
        "limit=-1",
        "limit=18446744073709551616",
        "limit=1e400",
        "start=0x10",
        "limit=%00",
        "limit=1&limit=2",
    ] {
        for endpoint in ["/api/v1/messages", "/api/v1/search?query=parts&"] {
            let sep = if endpoint.ends_with('&') { "" } else { "?" };
            let url = format!("{base}{endpoint}{sep}{q}");
            let r = http.get(&url).send().await.unwrap();
            let status = r.status();
            assert!(status == 200 || status == 400, "{url}: {status}");
            let body = r.text().await.unwrap();
            if status == 200 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert!(v["messages"].as_array().unwrap().len() <= 1, "{url}");
            }
        }
    }
    for q in [
        "\"",
        "'",
        "\"\"\"",
        "NEAR(",
        "a OR",
        ")",
        "(",
        "*",
        "^",
        "-",
        "a AND NOT",
        "from:",
        "to:\"",
        "tag:",
        "is:",
        "is:nonsense",
        "has:",
        "before:",
        "after:notadate",
        "subject:\"unterminated",
        "\0",
        "%",
        "\\",
        "\u{202e}",
        "😀",
        "a:b:c:d",
        "message-id:<>",
        "{}",
        "[",
        "]",
        "a*b*c",
        "-(x)",
    ] {
        let url = format!("{base}/api/v1/search?query={}", enc(q));
        let r = http.get(&url).send().await.unwrap();
        let status = r.status();
        assert!(status == 200 || status == 400, "query {q:?}: {status}");
        if status == 400 {
            // A query refused for searching is refused for deleting too.
            let r = http.delete(&url).send().await.unwrap();
            assert_eq!(r.status(), 400, "delete query {q:?}");
        }
    }
    let r = http
        .get(format!("{base}/api/v1/search?query={}", "a".repeat(5000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        server.count().await,
        1,
        "no hostile search deleted anything"
    );

    // Malformed bodies: truncated, wrong types, deep nesting, bad UTF-8.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_obj = format!("{}1{}", "{\"IDs\":".repeat(10_000), "}".repeat(10_000));
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"IDs\": [".to_vec(),
        b"{\"IDs\": \"x\"}".to_vec(),
        b"{\"IDs\": [1, 2]}".to_vec(),
        b"{\"Read\": \"yes\"}".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\"string\"".to_vec(),
        deep.into_bytes(),
        deep_obj.into_bytes(),
        vec![0xff, 0xfe, b'{', b'}'],
        b"{\"IDs\": [\"\xff\"]}".to_vec(),
    ];
    for body in &bodies {
        for (method, path) in [
            (Method::PUT, "/api/v1/messages"),
            (Method::DELETE, "/api/v1/messages"),
            (Method::PUT, "/api/v1/tags"),
            (Method::PUT, "/api/v1/tags/sometag"),
            (Method::POST, "/api/v1/send"),
        ] {
            if method == Method::DELETE && body.starts_with(b"{\"Read\"") {
                // A valid object without IDs: Mailpit deletes everything.
                continue;
            }
            let r = http
                .request(method.clone(), format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let what = format!(
                "{method} {path} {:?}",
                String::from_utf8_lossy(&body[..body.len().min(20)])
            );
            assert_eq!(assert_client_error(r, &what).await, 400, "{what}");
        }
    }
    // A form body with broken escapes is read, not crashed on.
    let r = http
        .put(format!("{base}/api/v1/messages"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("ids=%zz&ids=%&read=%E0%A4&=&&&")
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == 200 || r.status() == 400 || r.status() == 404,
        "{}",
        r.status()
    );
    assert_eq!(server.count().await, 1);

    // Wrong methods are 405, never a handler running with nothing.
    for (method, path) in [
        (Method::POST, "/api/v1/messages".to_string()),
        (Method::PATCH, format!("/api/v1/message/{id}")),
        (Method::DELETE, format!("/api/v1/message/{id}")),
        (Method::POST, format!("/api/v1/message/{id}/raw")),
        (Method::PUT, "/api/v1/info".into()),
        (Method::DELETE, "/api/v1/send".into()),
        (Method::GET, "/api/v1/send".into()),
        (Method::POST, format!("/view/{id}.html")),
        (Method::PUT, "/livez".into()),
        (Method::POST, "/ui/app.js".into()),
        (Method::DELETE, "/".into()),
    ] {
        let r = http
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
    }
    assert_eq!(server.count().await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_oversized_headers_are_refused() {
    let mut server = Server::start(|_, _| {}).await;
    let base = format!("http://{}", server.http);
    let http = client();
    // Over the limits (50 MB for the send API, 1 MiB elsewhere), with a
    // length and chunked without one. Raw sockets: the server answers 413
    // before the body is all sent and closes, which an HTTP client busy
    // uploading may report as a broken pipe instead of the answer.
    for path in ["/api/v1/send", "/api/v1/messages"] {
        let method = if path.ends_with("send") {
            Method::POST
        } else {
            Method::PUT
        };
        for chunked in [false, true] {
            let mut conn = tokio::net::TcpStream::connect(server.http).await.unwrap();
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {}", 71 * 1024 * 1024)
            };
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            let chunk = if chunked {
                [
                    format!("{:x}\r\n", 1024 * 1024).into_bytes(),
                    vec![b'['; 1024 * 1024],
                    b"\r\n".to_vec(),
                ]
                .concat()
            } else {
                vec![b'['; 1024 * 1024]
            };
            let (mut rd, mut wr) = conn.into_split();
            let writer = tokio::spawn(async move {
                for _ in 0..71 {
                    if wr.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                if chunked {
                    let _ = wr.write_all(b"0\r\n\r\n").await;
                }
            });
            let answer = early_answer(&mut rd).await;
            assert!(
                answer
                    .as_ref()
                    .is_none_or(|a| a.starts_with("HTTP/1.1 413")),
                "{method} {path} chunked={chunked}: {answer:?}"
            );
            drop(rd);
            writer.abort();
        }
    }
    // A megabyte of headers is refused without harm.
    let req = format!(
        "GET /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "h".repeat(1024 * 1024)
    );
    let (status, _) = raw_http(server.http, req.as_bytes()).await;
    assert!(
        status.is_empty() || status.contains(" 431 ") || status.contains(" 400 "),
        "{status}"
    );
    // Garbage instead of HTTP.
    let (status, _) = raw_http(server.http, b"\0\0\0\0GARBAGE\r\n\r\n").await;
    assert!(status.is_empty() || status.contains(" 400 "), "{status}");
    let r = http
        .get(format!("{base}/api/v1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

/// A send request whose attachment is `size` bytes of base64 (`A`s), so
/// its strings are spooled rather than held.
fn large_send(subject: &str, content: &str) -> String {
    serde_json::json!({
        "From": {"Email": "a@example.com"},
        "To": [{"Email": "b@example.com"}],
        "Subject": subject,
        "Text": "hi",
        "Attachments": [{"Filename": "big.bin", "Content": content}],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_sends_queue_for_the_budget_and_bad_spooled_strings_are_400() {
    // A budget of 48 MiB takes one large send (40 MiB reserved) at a time.
    let server = Server::start(|c, _| {
        c.max_message_size = 20 * 1024 * 1024;
        c.smtp_max_data_memory = 48 * 1024 * 1024;
        c.send_budget_wait = Duration::from_secs(300);
    })
    .await;
    let url = format!("http://{}/api/v1/send", server.http);
    let http = client();
    let post = |body: String| {
        http.post(&url)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    // Three 12 MB sends at once: they wait their turn and all get stored
    // (session 4's code answered two of them 503 at once).
    let sends = (0..3).map(|i| {
        let body = large_send(&format!("big {i}"), &"QUJD".repeat(3_000_000));
        post(body)
    });
    for r in futures::future::join_all(sends).await {
        let r = r.unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
    assert_eq!(server.count().await, 3);
    assert_eq!(server.budget.as_ref().unwrap().used(), 0);
    // Bad content in spooled strings is the client's error, as in short ones.
    let long = "QUJD".repeat(10_000);
    for (body, want) in [
        (large_send("b64", &format!("{long}!!!!")), "big.bin"),
        (large_send("pad", &format!("QQ=={long}")), "big.bin"),
        (
            large_send("esc", &long).replacen(
                "\"Text\":\"hi\"",
                &format!("\"Text\":\"{long}\\x\""),
                1,
            ),
            "invalid JSON",
        ),
        (
            large_send("cut", &long)[..30_000].to_string(),
            "invalid JSON",
        ),
    ] {
        let r = post(body).await.unwrap();
        assert_eq!(r.status(), 400);
        let text = r.text().await.unwrap();
        assert!(text.contains(want), "{text}");
    }
    // Fields besides the bodies are held, so they are capped (4 MiB).
    let r = post(large_send(&"s".repeat(5 * 1024 * 1024), "QUJD"))
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(server.count().await, 3);
}
