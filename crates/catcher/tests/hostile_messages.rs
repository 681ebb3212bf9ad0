//! Hostile message content against a real catcher (127.0.0.1, port 0, real
//! SQLite store): HTML with many inline parts whose content IDs prefix each
//! other, and send-API display names that try to add headers.

mod support;

use mailsafe_catcher::storage::NewMessage;
use serde_json::{Value, json};
use support::*;

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The body of `GET url`, as text.
async fn get_text(url: &str) -> String {
    http().get(url).send().await.unwrap().text().await.unwrap()
}

/// The body of `GET url`, as JSON.
async fn get_json(url: &str) -> Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// Stores [`related`]`(ids)` and returns its ID.
async fn store_related(server: &Server, ids: &[String]) -> String {
    let msg = NewMessage {
        raw: related(ids),
        mail_from: "a@x".into(),
        rcpt_to: vec!["b@y".into()],
        username: None,
    };
    server.store.insert(msg).await.unwrap()
}

/// A multipart/related message whose HTML references `ids` by `cid:`, one
/// inline part per ID.
fn related(ids: &[String]) -> Vec<u8> {
    let mut html = String::new();
    for id in ids {
        html.push_str(&format!("<img src=\"cid:{id}\">\r\n"));
    }
    let mut m = String::from(
        "From: a@x\r\nTo: b@y\r\nSubject: inline\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/related; boundary=\"B\"\r\n\r\n\
         --B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n",
    );
    m.push_str(&html);
    for id in ids {
        m.push_str(&format!(
            "--B\r\nContent-Type: image/png\r\nContent-ID: <{id}>\r\n\
             Content-Disposition: inline\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n"
        ));
    }
    m.push_str("--B--\r\n");
    m.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cid_links_are_rewritten_in_one_pass_with_a_cap() {
    let mut server = Server::start(|_, _| {}).await;
    // `a` is a prefix of `a@b`: a replace per part turned `cid:a@b` into
    // `/api/v1/message/ID/part/N@b`.
    let ids = vec!["a".to_string(), "a@b".to_string()];
    let id = store_related(&server, &ids).await;
    let url = |id: &str| format!("http://{}/view/{id}.html", server.http);
    let html = get_text(&url(&id)).await;
    let srcs: Vec<&str> = html
        .lines()
        .filter_map(|l| l.strip_prefix("<img src=\"")?.strip_suffix("\">"))
        .collect();
    assert_eq!(srcs.len(), 2, "{html}");
    let detail = get_json(&format!("http://{}/api/v1/message/{id}", server.http)).await;
    for (src, part) in srcs.iter().zip(detail["Inline"].as_array().unwrap()) {
        let want = format!(
            "/api/v1/message/{id}/part/{}",
            part["PartID"].as_str().unwrap()
        );
        assert_eq!(*src, want, "{html}");
    }

    // Past the cap, references stay as they are.
    let many: Vec<String> = (0..1010).map(|i| format!("p{i}@x")).collect();
    let id = store_related(&server, &many).await;
    let html = get_text(&url(&id)).await;
    assert_eq!(html.matches("/api/v1/message/").count(), 1000);
    assert_eq!(html.matches("cid:").count(), 10);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_api_display_names_cannot_add_headers() {
    let mut server = Server::start(|_, _| {}).await;
    let base = format!("http://{}", server.http);
    let r = http()
        .post(format!("{base}/api/v1/send"))
        .json(&json!({
            "From": {"Email": "a@x", "Name": "Eve\r\nBcc: x@evil"},
            "To": [{"Email": "b@y", "Name": "Bob\nX-Injected: 1"}],
            "Cc": [{"Email": "c@y", "Name": "Çarol\r\nBcc: y@evil"}],
            "Subject": "names",
            "Text": "body"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let raw = get_text(&format!("{base}/api/v1/message/{id}/raw")).await;
    let head = raw.split("\r\n\r\n").next().unwrap();
    for line in head.lines() {
        assert!(
            !line.starts_with("Bcc:") && !line.starts_with("X-Injected:"),
            "{head}"
        );
    }
    assert!(head.contains("From: \"EveBcc: x@evil\" <a@x>"), "{head}");
    let detail = get_json(&format!("{base}/api/v1/message/{id}")).await;
    assert_eq!(detail["Bcc"], json!([]), "{detail}");
    assert_eq!(detail["Cc"][0]["Name"], "ÇarolBcc: y@evil");
    server.stop().await;
}

/// What a client sees of a failing store: 5xx bodies, `/readyz` and the
/// SMTP 451 reply say what failed; table names and SQLite's words (here
/// the tenant `secretvault`, whose tables are dropped under the running
/// server) only reach the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_told_without_their_details() {
    let logs = logs();
    let mut server = Server::start(|c, _| c.tenant = "secretvault".into()).await;
    let db = rusqlite::Connection::open(&server.db).unwrap();
    let tables: Vec<String> = db
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%secretvault%'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!tables.is_empty());
    for t in &tables {
        db.execute_batch(&format!("DROP TABLE IF EXISTS \"{t}\""))
            .unwrap();
    }
    let base = format!("http://{}", server.http);
    let seen_in_log = |what: &str| {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        text.contains(what)
    };

    let r = http().get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert_eq!(body.trim(), "database not ready");
    let r = http()
        .get(format!("{base}/api/v1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body = r.text().await.unwrap();
    assert_eq!(body.trim(), "the message store failed");

    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(c.cmd("EHLO x").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@x>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(b"Subject: s\r\n\r\nbody\r\n.\r\n").await;
    let (code, lines) = c.reply().await;
    assert_eq!(code, 451);
    assert_eq!(lines, ["4.3.0 Error: could not store the message"]);
    assert!(seen_in_log("secretvault"), "the details are logged");
    server.stop().await;
}
