//! The Mailpit-compatible HTTP API against a real server on 127.0.0.1:0 with
//! a temporary db: responses asserted field by field.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use mailsafe_catcher::api::ApiOptions;
use mailsafe_catcher::auth::Credentials;
use mailsafe_catcher::storage::{NewMessage, Store, StoreOptions};
use md5::Digest;
use serde_json::{Value, json};

mod support;

use support::ApiServer as Server;

async fn start_with(opts: StoreOptions, api_opts: ApiOptions) -> Server {
    Server::start(opts, api_opts).await
}

async fn start() -> Server {
    start_with(
        StoreOptions {
            max_messages: 0,
            ..Default::default()
        },
        ApiOptions::default(),
    )
    .await
}

impl Server {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }
    async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }
    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> reqwest::Response {
        self.http
            .request(method, format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
    async fn insert(&self, raw: &str) -> String {
        self.insert_env(raw, &[]).await
    }
    async fn insert_env(&self, raw: &str, rcpt: &[&str]) -> String {
        self.store
            .insert(NewMessage {
                raw: raw.as_bytes().to_vec(),
                mail_from: "sender@example.com".into(),
                rcpt_to: rcpt.iter().map(|s| s.to_string()).collect(),
                username: None,
            })
            .await
            .unwrap()
    }
    async fn search_ids(&self, q: &str) -> Vec<String> {
        let url = format!("/api/v1/search?query={}", urlencode(q));
        let v = self.json(&url).await;
        let mut ids: Vec<String> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["ID"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            v["messages_count"].as_u64().unwrap() as usize,
            ids.len(),
            "{q}"
        );
        ids.sort();
        ids
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A small PNG-looking payload and a PDF-looking one with known bytes.
fn png() -> Vec<u8> {
    let mut v = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    v.extend((0..200u32).map(|i| (i * 7 % 251) as u8));
    v
}
fn pdf() -> Vec<u8> {
    let mut v = b"%PDF-1.4\n".to_vec();
    v.extend((0..3000u32).map(|i| (i * 13 % 253) as u8));
    v
}

fn multipart_message() -> String {
    let subject = b64("Grüße ✓ quarterly report".as_bytes());
    format!(
        "From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jurgen@example.com>\r\n\
To: \"Bob Smith\" <bob@example.org>\r\n\
Cc: carol@example.net\r\n\
Reply-To: replies@example.com\r\n\
Subject: =?UTF-8?B?{subject}?=\r\n\
Message-ID: <multi-1@example.com>\r\n\
Date: Tue, 02 Jan 2024 10:00:00 +0000\r\n\
X-Tags: reports, urgent\r\n\
List-Unsubscribe: <mailto:unsub@example.com>, <https://example.com/unsub>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
--outer\r\n\
Content-Type: multipart/related; boundary=\"rel\"\r\n\
\r\n\
--rel\r\n\
Content-Type: multipart/alternative; boundary=\"alt\"\r\n\
\r\n\
--alt\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hello Bob, the quarterly numbers are attached.\r\n\
--alt\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>Hello <b>Bob</b>, the quarterly numbers are attached.</p><img src=\"cid:logo@example.com\">\r\n\
--alt--\r\n\
--rel\r\n\
Content-Type: image/png\r\n\
Content-ID: <logo@example.com>\r\n\
Content-Disposition: inline; filename=\"logo.png\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
{}\r\n\
--rel--\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"numbers.pdf\"\r\n\
Content-Disposition: attachment; filename=\"numbers.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
{}\r\n\
--outer--\r\n",
        b64(&png()),
        b64(&pdf())
    )
}

fn simple(from: &str, to: &str, subject: &str, body: &str) -> String {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{}@test>\r\n\r\n{body}\r\n",
        subject.replace(' ', "-")
    )
}

/// Asserts that `actual` has each of `expected`'s fields with its value,
/// naming the field that differs.
fn assert_fields(actual: &Value, expected: Value) {
    for (key, want) in expected.as_object().expect("expected fields") {
        assert_eq!(&actual[key], want, "field {key} of {actual}");
    }
}

fn checksums(data: &[u8]) -> Value {
    json!({
        "MD5": hex::encode(md5::Md5::digest(data)),
        "SHA1": hex::encode(sha1::Sha1::digest(data)),
        "SHA256": hex::encode(sha2::Sha256::digest(data)),
    })
}

#[tokio::test]
async fn multipart_message_fields_parts_and_views() {
    let s = start().await;
    let id = s.insert(&multipart_message()).await;

    let list = s.json("/api/v1/messages").await;
    assert_fields(
        &list,
        json!({
            "total": 1, "unread": 1, "count": 1, "messages_count": 1, "messages_unread": 1,
            "start": 0, "tags": ["reports", "urgent"],
        }),
    );
    let m = &list["messages"][0];
    assert_fields(
        m,
        json!({
            "ID": id, "MessageID": "multi-1@example.com", "Read": false,
            "From": {"Name": "Jürgen Müller", "Address": "jurgen@example.com"},
            "To": [{"Name": "Bob Smith", "Address": "bob@example.org"}],
            "Cc": [{"Name": "", "Address": "carol@example.net"}],
            "Bcc": [],
            "ReplyTo": [{"Name": "", "Address": "replies@example.com"}],
            "Subject": "Grüße ✓ quarterly report", "Tags": ["reports", "urgent"],
            "Size": multipart_message().len(), "Attachments": 1,
            "Snippet": "Hello Bob, the quarterly numbers are attached.", "Username": "",
        }),
    );
    let created = chrono::DateTime::parse_from_rfc3339(m["Created"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - created.to_utc()).num_seconds().abs() < 60);

    let d = s.json(&format!("/api/v1/message/{id}")).await;
    assert_eq!(d["ID"], id.as_str());
    assert_eq!(d["Subject"], "Grüße ✓ quarterly report");
    assert_eq!(
        d["Text"].as_str().unwrap().trim(),
        "Hello Bob, the quarterly numbers are attached."
    );
    assert!(d["HTML"].as_str().unwrap().contains("<b>Bob</b>"));
    assert_eq!(d["Date"], "2024-01-02T10:00:00Z");
    assert_eq!(d["Size"], multipart_message().len());
    assert_eq!(
        d["ListUnsubscribe"]["Links"],
        json!(["mailto:unsub@example.com", "https://example.com/unsub"])
    );
    assert_eq!(
        d["Inline"],
        json!([{
            "PartID": "1.2", "FileName": "logo.png", "ContentType": "image/png",
            "ContentID": "logo@example.com", "Size": png().len(), "Checksums": checksums(&png()),
        }])
    );
    assert_eq!(
        d["Attachments"],
        json!([{
            "PartID": "2", "FileName": "numbers.pdf", "ContentType": "application/pdf",
            "ContentID": "", "Size": pdf().len(), "Checksums": checksums(&pdf()),
        }])
    );
    // Viewing marks read.
    let list = s.json("/api/v1/messages").await;
    assert_eq!(list["unread"], 0);
    assert_eq!(list["messages"][0]["Read"], true);

    // `latest` works everywhere an ID does.
    let latest = s.json("/api/v1/message/latest").await;
    assert_eq!(latest["ID"], id.as_str());

    let part = s.get(&format!("/api/v1/message/{id}/part/2")).await;
    assert_eq!(part.status(), 200);
    assert_eq!(part.headers()["content-type"], "application/pdf");
    assert_eq!(part.bytes().await.unwrap().to_vec(), pdf());
    let inline = s.get(&format!("/api/v1/message/{id}/part/1.2")).await;
    assert_eq!(inline.headers()["content-type"], "image/png");
    assert_eq!(inline.bytes().await.unwrap().to_vec(), png());

    let raw = s.get(&format!("/api/v1/message/{id}/raw")).await;
    assert_eq!(raw.text().await.unwrap(), multipart_message());

    let h = s.json(&format!("/api/v1/message/{id}/headers")).await;
    assert_eq!(h["Message-Id"], json!(["<multi-1@example.com>"]));
    assert_eq!(h["X-Tags"], json!(["reports, urgent"]));
    assert_eq!(h["To"], json!(["\"Bob Smith\" <bob@example.org>"]));
    let keys: Vec<&String> = h.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    let html = s.get(&format!("/view/{id}.html")).await;
    assert_eq!(html.status(), 200);
    assert!(
        html.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = html.text().await.unwrap();
    assert!(
        html.contains(&format!("src=\"/api/v1/message/{id}/part/1.2\"")),
        "{html}"
    );
    let txt = s.get("/view/latest.txt").await.text().await.unwrap();
    assert_eq!(txt.trim(), "Hello Bob, the quarterly numbers are attached.");
}

#[tokio::test]
async fn errors_are_404_or_400_and_nothing_crashes() {
    let s = start().await;
    let id = s
        .insert(&simple("a@x.com", "b@y.com", "hello", "body"))
        .await;
    for p in [
        "/api/v1/message/nosuchid".to_string(),
        "/api/v1/message/nosuchid/raw".into(),
        "/api/v1/message/nosuchid/headers".into(),
        "/view/nosuchid.html".into(),
        format!("/api/v1/message/{id}/part/9"),
        format!("/api/v1/message/{id}/part/..%2F..%2Fetc%2Fpasswd"),
        format!("/api/v1/message/{id}/part/1.%2e"),
        // A text-only message has no HTML view.
        format!("/view/{id}.html"),
    ] {
        let r = s.get(&p).await;
        assert_eq!(r.status(), 404, "{p}");
        assert_eq!(r.text().await.unwrap(), "404 page not found");
    }
    for p in [
        "/api/v1/messages?limit=abc",
        "/api/v1/messages?start=1e9x",
        "/api/v1/search",
        "/api/v1/search?query=",
    ] {
        let r = s.get(p).await;
        assert_eq!(r.status(), 400, "{p}");
        assert!(!r.text().await.unwrap().is_empty());
    }
    // Malformed JSON bodies.
    for (method, path) in [
        (reqwest::Method::PUT, "/api/v1/messages"),
        (reqwest::Method::DELETE, "/api/v1/messages"),
        (reqwest::Method::PUT, "/api/v1/tags"),
        (reqwest::Method::POST, "/api/v1/send"),
    ] {
        let r = s
            .http
            .request(method.clone(), format!("{}{path}", s.base))
            .header("Content-Type", "application/json")
            .body("{\"IDs\": [")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{method} {path}");
        assert!(r.text().await.unwrap().contains("JSON"));
    }
    let r = s
        .send_json(
            reqwest::Method::PUT,
            "/api/v1/messages",
            json!({"IDs": "x"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    // Huge limits and offsets are fine.
    let v = s.json("/api/v1/messages?limit=99999999999&start=0").await;
    assert_eq!(v["count"], 1);
    let v = s.json("/api/v1/messages?start=99999999999").await;
    assert_eq!(v["count"], 0);
    assert_eq!(v["total"], 1);
    // Oversized body: refused before it is read, so the client sees the 413
    // or, when the server's close overtakes it, a failed upload.
    let big = vec![b'a'; 71 * 1024 * 1024];
    let r = s
        .http
        .post(format!("{}/api/v1/send", s.base))
        .body(big)
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    // Still alive.
    assert_eq!(s.get("/livez").await.status(), 200);
    assert_eq!(s.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn every_search_operator() {
    let s = start().await;
    let a = s
        .insert("From: Alice <alice@alpha.com>\r\nTo: Bob <bob@beta.com>\r\nCc: cc1@gamma.com\r\nReply-To: rt@delta.com\r\nSubject: Invoice 2024 ready\r\nMessage-ID: <inv-2024@alpha.com>\r\n\r\nPlease pay the invoice quickly.\r\n")
        .await;
    let b = s
        .insert_env(
            "From: Bob <bob@beta.com>\r\nTo: Alice <alice@alpha.com>\r\nSubject: Lunch tomorrow?\r\nMessage-ID: <lunch@beta.com>\r\nX-Tags: personal\r\n\r\nShall we have lunch at the big cafe?\r\n",
            &["alice@alpha.com", "hidden@secret.org"],
        )
        .await;
    let c = s.insert(&multipart_message()).await;
    let all = {
        let mut v = vec![a.clone(), b.clone(), c.clone()];
        v.sort();
        v
    };
    let one = |x: &String| vec![x.clone()];
    let two = |x: &String, y: &String| {
        let mut v = vec![x.clone(), y.clone()];
        v.sort();
        v
    };
    // Mark b read.
    s.send_json(
        reqwest::Method::PUT,
        "/api/v1/messages",
        json!({"IDs": [b], "Read": true}),
    )
    .await;

    // Each operator alone, then in combinations below.
    for (query, want) in [
        ("invoice", one(&a)),
        ("INVOICE", one(&a)),
        ("\"big cafe\"", one(&b)),
        ("\"cafe big\"", Vec::<String>::new()),
        ("-invoice", two(&b, &c)),
        ("!invoice", two(&b, &c)),
        ("to:alice", one(&b)),
        ("from:alice@alpha.com", one(&a)),
        ("cc:gamma", one(&a)),
        ("bcc:hidden@secret.org", one(&b)),
        ("reply-to:rt@delta", one(&a)),
        ("reply-to:replies", one(&c)),
        ("addressed:bob@beta.com", two(&a, &b)),
        ("subject:lunch", one(&b)),
        ("subject:\"Invoice 2024\"", one(&a)),
        ("message-id:inv-2024", one(&a)),
        ("tag:personal", one(&b)),
        ("tag:reports", one(&c)),
        ("-tag:personal", two(&a, &c)),
        ("is:read", one(&b)),
        ("is:unread", two(&a, &c)),
        ("is:tagged", two(&b, &c)),
        ("!is:tagged", one(&a)),
        ("has:attachment", one(&c)),
        ("has:inline", one(&c)),
        ("larger:2kb", one(&c)),
        ("smaller:2kb", two(&a, &b)),
        ("after:2000-01-01", all.clone()),
    ] {
        assert_eq!(s.search_ids(query).await, want, "{query}");
    }
    assert_eq!(
        s.search_ids("before:2000-01-01").await,
        Vec::<String>::new()
    );
    assert_eq!(s.search_ids("-before:2000-01-01").await, all);
    // File names and the HTML's text are searchable; UTF-8 too.
    assert_eq!(s.search_ids("numbers.pdf").await, one(&c));
    assert_eq!(s.search_ids("grüße").await, one(&c));
    // Short terms (under three characters) still match as substrings.
    assert_eq!(s.search_ids("ok").await, Vec::<String>::new());
    assert_eq!(s.search_ids("?").await, one(&b));
    // Combined terms are ANDed.
    assert_eq!(s.search_ids("from:bob is:read lunch").await, one(&b));
    assert_eq!(
        s.search_ids("from:bob is:unread").await,
        Vec::<String>::new()
    );
    // Counts of a search.
    let v = s.json("/api/v1/search?query=is%3Aunread&limit=1").await;
    assert_eq!(v["messages_count"], 2);
    assert_eq!(v["messages_unread"], 2);
    assert_eq!(v["count"], 1);
    assert_eq!(v["total"], 3);
    assert_eq!(v["unread"], 2);
    // Read status and deletion by search.
    let r = s
        .send_json(
            reqwest::Method::PUT,
            "/api/v1/messages",
            json!({"Search": "has:attachment", "Read": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.search_ids("is:read").await, two(&b, &c));
    let r = s
        .http
        .delete(format!("{}/api/v1/search?query=tag%3Apersonal", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = s.json("/api/v1/messages").await;
    assert_eq!(v["total"], 2);
    assert_eq!(v["tags"], json!(["reports", "urgent"]));
}

#[tokio::test]
async fn read_status_delete_and_tags_endpoints() {
    let s = start().await;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(
                s.insert(&simple("a@x.com", "b@y.com", &format!("m{i}"), "x"))
                    .await,
            );
        }
        v
    };
    // Newest first.
    let v = s.json("/api/v1/messages?start=1&limit=2").await;
    let got: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(v["start"], 1);

    // All read, then one unread.
    let r = s
        .send_json(
            reqwest::Method::PUT,
            "/api/v1/messages",
            json!({"Read": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    assert_eq!(s.json("/api/v1/messages").await["unread"], 0);
    s.send_json(
        reqwest::Method::PUT,
        "/api/v1/messages",
        json!({"ids": [ids[0]], "read": false}),
    )
    .await;
    assert_eq!(s.json("/api/v1/messages").await["unread"], 1);

    // Tags: set, list, rename, delete.
    let r = s
        .send_json(
            reqwest::Method::PUT,
            "/api/v1/tags",
            json!({"IDs": [ids[0], ids[1]], "Tags": ["Alpha", "beta<>"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.json("/api/v1/tags").await, json!(["Alpha", "beta"]));
    let m = s.json(&format!("/api/v1/message/{}", ids[0])).await;
    assert_eq!(m["Tags"], json!(["Alpha", "beta"]));
    let r = s
        .send_json(
            reqwest::Method::PUT,
            "/api/v1/tags/Alpha",
            json!({"Name": "Gamma"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.json("/api/v1/tags").await, json!(["beta", "Gamma"]));
    let r = s
        .http
        .delete(format!("{}/api/v1/tags/beta", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.json("/api/v1/tags").await, json!(["Gamma"]));
    let r = s
        .http
        .delete(format!("{}/api/v1/tags/nope", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Empty tag list clears.
    s.send_json(
        reqwest::Method::PUT,
        "/api/v1/tags",
        json!({"IDs": [ids[0], ids[1]], "Tags": []}),
    )
    .await;
    assert_eq!(s.json("/api/v1/tags").await, json!([]));
    let info = s.json("/api/v1/info").await;
    assert_eq!(info["Messages"], 4);

    // Delete two by ID (an unknown ID is ignored), then all.
    let r = s
        .send_json(
            reqwest::Method::DELETE,
            "/api/v1/messages",
            json!({"IDs": [ids[0], ids[1], "nope"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v = s.json("/api/v1/messages").await;
    assert_eq!(v["total"], 2);
    let r = s
        .http
        .delete(format!("{}/api/v1/messages", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = s.json("/api/v1/messages").await;
    assert_eq!(v["total"], 0);
    assert_eq!(v["messages"], json!([]));
    let info = s.json("/api/v1/info").await;
    assert_eq!(info["Messages"], 0);
    assert_eq!(info["RuntimeStats"]["MessagesDeleted"], 4);
    assert_eq!(info["RuntimeStats"]["SMTPAccepted"], 4);
}

#[tokio::test]
async fn send_api_stores_a_message_as_received() {
    let s = start().await;
    let logo = png();
    let r = s
        .send_json(
            reqwest::Method::POST,
            "/api/v1/send",
            json!({
                "From": {"Email": "john@example.com", "Name": "John Doe"},
                "To": [{"Email": "jane@example.com", "Name": "Jane Ünicode"}],
                "Cc": [{"Email": "manager@example.com"}],
                "Bcc": ["jack@example.com"],
                "ReplyTo": [{"Email": "secretary@example.com", "Name": "Secretary"}],
                "Subject": "Sent via API ✓",
                "Text": "plain body",
                "HTML": "<p>html body</p><img src=\"cid:logo\">",
                "Attachments": [
                    {"Content": b64(b"hello attachment"), "Filename": "a.txt"},
                    {"Content": b64(&logo), "Filename": "logo.png", "ContentID": "logo"}
                ],
                "Tags": ["api", "Test"],
                "Headers": {"X-Custom": "yes"}
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let id = v["ID"].as_str().unwrap().to_string();
    let m = s.json(&format!("/api/v1/message/{id}")).await;
    assert_fields(
        &m,
        json!({
            "From": {"Name": "John Doe", "Address": "john@example.com"},
            "To": [{"Name": "Jane Ünicode", "Address": "jane@example.com"}],
            "Cc": [{"Name": "", "Address": "manager@example.com"}],
            "Bcc": [{"Name": "", "Address": "jack@example.com"}],
            "ReplyTo": [{"Name": "Secretary", "Address": "secretary@example.com"}],
            "Subject": "Sent via API ✓",
        }),
    );
    assert_eq!(m["Text"].as_str().unwrap().trim(), "plain body");
    assert!(m["HTML"].as_str().unwrap().contains("<p>html body</p>"));
    assert_eq!(m["Tags"], json!(["api", "Test"]));
    assert_eq!(m["Attachments"][0]["FileName"], "a.txt");
    assert_eq!(
        m["Attachments"][0]["Checksums"],
        checksums(b"hello attachment")
    );
    assert_eq!(m["Inline"][0]["FileName"], "logo.png");
    assert_eq!(m["Inline"][0]["ContentType"], "image/png");
    assert_eq!(m["Inline"][0]["ContentID"], "logo");
    assert_eq!(m["Inline"][0]["Checksums"], checksums(&logo));
    let h = s.json(&format!("/api/v1/message/{id}/headers")).await;
    assert_eq!(h["X-Custom"], json!(["yes"]));
    // Validation errors are JSON {"Error": ...}.
    for body in [
        json!({"From": {"Email": "not an address"}, "To": []}),
        json!({"From": {"Email": "a@b.c"}, "To": [{"Email": "bad"}]}),
        json!({"From": {"Email": "a@b.c"}, "Headers": {"Subject": "x"}}),
        json!({"From": {"Email": "a@b.c"}, "Attachments": [{"Content": "!!!", "Filename": "x"}]}),
    ] {
        let r = s
            .send_json(reqwest::Method::POST, "/api/v1/send", body.clone())
            .await;
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert!(e["Error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
}

#[tokio::test]
async fn tenants_share_a_db_file_without_seeing_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = Store::open(
        &path,
        StoreOptions {
            tenant: "team-a".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let b = Store::open(
        &path,
        StoreOptions {
            tenant: "team b!".into(),
            ..Default::default()
        },
    )
    .unwrap();
    // No socket needed: the API of tenant a, called in-process.
    let api = mailsafe_catcher::api::router(a.clone(), ApiOptions::default());
    for (store, subject, body) in [(&a, "for a", "x"), (&b, "for b", "secret-b")] {
        store
            .insert(NewMessage {
                raw: simple("a@x.com", "b@y.com", subject, body).into_bytes(),
                mail_from: "a@x.com".into(),
                rcpt_to: vec![],
                username: None,
            })
            .await
            .unwrap();
    }
    let v = support::get_json(&api, "/api/v1/messages").await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["messages"][0]["Subject"], "for a");
    let v = support::get_json(&api, "/api/v1/search?query=secret").await;
    assert_eq!(v["messages_count"], 0);
    let pb = b.list(0, 10).await.unwrap();
    assert_eq!(pb.total, 1);
    assert_eq!(pb.messages[0].head.subject, "for b");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%mailbox'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.contains(&"team_a_mailbox".to_string()), "{tables:?}");
    assert!(
        tables.contains(&"team_b__mailbox".to_string()),
        "{tables:?}"
    );
}

#[tokio::test]
async fn pruning_by_count_and_by_age() {
    let s = start_with(
        StoreOptions {
            max_messages: 5,
            ..Default::default()
        },
        ApiOptions::default(),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            s.insert(&simple("a@x.com", "b@y.com", &format!("n{i}"), "x"))
                .await,
        );
    }
    let v = s.json("/api/v1/messages").await;
    assert_eq!(v["total"], 5);
    let got: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = ids[3..].iter().rev().map(|s| s.as_str()).collect();
    assert_eq!(got, want);
    assert_eq!(
        s.get(&format!("/api/v1/message/{}", ids[0])).await.status(),
        404
    );

    // Age: messages older than max_age are removed when the store opens and
    // then periodically.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("age.db");
    {
        let st = Store::open(&path, StoreOptions::default()).unwrap();
        for i in 0..3 {
            st.insert(NewMessage {
                raw: simple("a@x.com", "b@y.com", &format!("old{i}"), "x").into_bytes(),
                mail_from: String::new(),
                rcpt_to: vec![],
                username: None,
            })
            .await
            .unwrap();
        }
        assert_eq!(st.counts().await.unwrap().0, 3);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let st = Store::open(
        &path,
        StoreOptions {
            max_age: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while st.counts().await.unwrap().0 != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "old messages not pruned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn websocket_streams_mailpit_events() {
    use futures::StreamExt;
    let s = start().await;
    let ws_url = format!("{}/api/events", s.base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let id = s.insert(&simple("a@x.com", "b@y.com", "live", "x")).await;
    s.send_json(
        reqwest::Method::PUT,
        "/api/v1/messages",
        json!({"IDs": [id], "Read": true}),
    )
    .await;
    s.send_json(
        reqwest::Method::DELETE,
        "/api/v1/messages",
        json!({"IDs": [id]}),
    )
    .await;
    s.http
        .delete(format!("{}/api/v1/messages", s.base))
        .send()
        .await
        .unwrap();
    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !["new", "update", "delete", "truncate", "stats"]
        .iter()
        .all(|k| seen.contains_key(*k))
    {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        seen.entry(v["Type"].as_str().unwrap().to_string())
            .or_default()
            .push(v["Data"].clone());
    }
    assert_eq!(seen["new"][0]["ID"], id.as_str());
    assert_eq!(seen["new"][0]["Subject"], "live");
    assert_eq!(seen["update"][0], json!({"ID": id, "Read": true}));
    assert_eq!(seen["delete"][0], json!({"ID": id}));
    assert_eq!(seen["truncate"][0], Value::Null);
    assert!(seen["stats"][0]["Total"].is_u64() && seen["stats"][0]["Unread"].is_u64());
}

#[tokio::test]
async fn basic_auth_guards_the_api_but_not_the_probes() {
    let creds = Credentials::from_pairs("alice:s3cret bob:hunter2", "MP_UI_AUTH").unwrap();
    let s = start_with(
        StoreOptions::default(),
        ApiOptions {
            auth: Some(creds.into_basic_auth()),
            ..Default::default()
        },
    )
    .await;
    let r = s.get("/api/v1/messages").await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = s
        .http
        .get(format!("{}/api/v1/messages", s.base))
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .http
        .get(format!("{}/api/v1/messages", s.base))
        .basic_auth("bob", Some("hunter2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.get("/livez").await.status(), 200);
    assert_eq!(s.get("/readyz").await.status(), 200);

    // htpasswd with bcrypt.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, format!("carol:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
    let creds = Credentials::from_file(&file).unwrap();
    assert!(creds.verify("carol", "pw"));
    assert!(!creds.verify("carol", "pw2"));
    assert!(!creds.verify("dave", "pw"));
    assert!(Credentials::from_pairs("nocolon", "MP_UI_AUTH").is_err());
}

#[tokio::test]
async fn info_webui_swagger_and_envelope_bcc() {
    let s = start().await;
    let id = s
        .insert_env(
            &simple("a@x.com", "b@y.com", "bcc", "x"),
            &["b@y.com", "Hidden@Z.com"],
        )
        .await;
    let m = s.json(&format!("/api/v1/message/{id}")).await;
    assert_eq!(m["Bcc"], json!([{"Name": "", "Address": "Hidden@Z.com"}]));
    let h = s.json(&format!("/api/v1/message/{id}/headers")).await;
    assert_eq!(h["Bcc"], json!(["Hidden@Z.com"]));

    let info = s.json("/api/v1/info").await;
    assert_eq!(info["Messages"], 1);
    assert_eq!(info["Unread"], 0);
    assert!(info["DatabaseSize"].as_u64().unwrap() > 0);
    assert!(info["Database"].as_str().unwrap().ends_with("mail.db"));
    assert_eq!(info["RuntimeStats"]["SMTPAccepted"], 1);
    let ui = s.json("/api/v1/webui").await;
    assert_eq!(ui["MessageRelay"]["Enabled"], false);
    let sw = s.json("/api/v1/swagger.json").await;
    assert_eq!(sw["swagger"], "2.0");
    for p in [
        "/api/v1/messages",
        "/api/v1/search",
        "/api/v1/message/{ID}/part/{PartID}",
        "/api/v1/send",
        "/view/{ID}.html",
    ] {
        assert!(sw["paths"][p].is_object(), "{p}");
    }
}

/// The whole catcher (`Catcher::bind`): a real SMTP client (swaks) sends,
/// the API shows what arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_message_shows_up_in_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::loopback_config(dir.path().join("mail.db"));
    let catcher = mailsafe_catcher::Catcher::bind(config).await.unwrap();
    let (smtp, http) = (catcher.smtp_addr(), catcher.http_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(catcher.run(async {
        let _ = stopped.await;
    }));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("swaks")
            .args([
                "--server",
                &smtp.ip().to_string(),
                "--port",
                &smtp.port().to_string(),
                "--from",
                "swaks@example.com",
                "--to",
                "one@example.com,two@example.com",
                "--header",
                "Subject: =?UTF-8?B?w7xiZXIgc3dha3M=?=",
                "--header",
                "X-Tags: smtp, e2e",
                "--body",
                "sent by swaks",
                "--attach-type",
                "text/csv",
                "--attach-name",
                "data.csv",
                "--attach",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"a,b\n1,2\n")?;
                c.wait_with_output()
            })
            .expect("swaks runs (scripts/setup.sh installs it)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let http_client = support::http_client();
    let v: Value =
        support::json_of(http_client.get(format!("http://{http}/api/v1/messages"))).await;
    assert_eq!(v["total"], 1);
    let m = &v["messages"][0];
    assert_eq!(m["Subject"], "über swaks");
    assert_eq!(m["From"]["Address"], "swaks@example.com");
    assert_eq!(m["Tags"], json!(["e2e", "smtp"]));
    assert_eq!(m["Attachments"], 1);
    let id = m["ID"].as_str().unwrap();
    let d: Value =
        support::json_of(http_client.get(format!("http://{http}/api/v1/message/{id}"))).await;
    assert_eq!(d["Attachments"][0]["FileName"], "data.csv");
    assert_eq!(d["Attachments"][0]["Checksums"], checksums(b"a,b\n1,2\n"));
    assert_eq!(d["Text"].as_str().unwrap().trim(), "sent by swaks");
    // The UI is served by the same router.
    let ui = http_client
        .get(format!("http://{http}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(ui.status(), 200);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// `/part/{PartID}/thumb`: a real PNG attachment comes back as a 180x120
/// JPEG of its (cropped) pixels; a PDF as a blank 180x120 JPEG.
#[tokio::test]
async fn attachment_thumbnails_are_180x120_jpegs() {
    let s = start().await;
    let mut png_bytes = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        400,
        200,
        image::Rgb([220, 20, 20]),
    ))
    .write_to(
        &mut std::io::Cursor::new(&mut png_bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    let raw = format!(
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: pics\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee\r\n\
--b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"red.png\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b\r\nContent-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"doc.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        b64(&png_bytes),
        b64(&pdf())
    );
    let id = s.insert(&raw).await;
    let thumb = |part: &str| {
        let url = format!("/api/v1/message/{id}/part/{part}/thumb");
        let s = &s;
        async move {
            let r = s.get(&url).await;
            assert_eq!(r.status(), 200, "{url}");
            assert_eq!(r.headers()["content-type"], "image/jpeg");
            let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
            assert_eq!((img.width(), img.height()), (180, 120));
            img.to_rgb8()
        }
    };
    let red = thumb("2").await;
    for (x, y) in [(0, 0), (90, 60), (179, 119)] {
        let p = red.get_pixel(x, y).0;
        assert!(p[0] > 190 && p[1] < 60 && p[2] < 60, "pixel {x},{y}: {p:?}");
    }
    let blank = thumb("3").await;
    assert!(blank.pixels().all(|p| p.0.iter().all(|&c| c > 240)));
    assert_eq!(
        s.get(&format!("/api/v1/message/{id}/part/9/thumb"))
            .await
            .status(),
        404
    );
}

/// `latest` with `query` names the newest message matching the search, on
/// every route that takes an ID (parallel test runs read their own mail);
/// `/view/latest` and `/view/{ID}` are the UI's deep links; `?dl=1` makes
/// raw a download; parts are `inline`.
#[tokio::test]
async fn latest_with_query_is_the_newest_match_everywhere() {
    let s = start().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let location = |path: String| {
        let c = no_redirects.clone();
        let url = format!("{}{path}", s.base);
        async move {
            let r = c.get(url).send().await.unwrap();
            assert_eq!(r.status(), 302, "{path}");
            r.headers()["location"].to_str().unwrap().to_string()
        }
    };
    assert_eq!(location("/view/latest".into()).await, "/", "empty mailbox");

    let run1 = s
        .insert(&multipart_message().replace("bob@example.org", "alice+run1@example.org"))
        .await;
    let other = s
        .insert(&simple("a@example.com", "bob@example.org", "other", "hi"))
        .await;
    let run2 = s
        .insert(&simple(
            "a@example.com",
            "alice+run2@example.org",
            "run2",
            "code 222",
        ))
        .await;
    let q = format!("?query={}", urlencode("to:alice+run1@example.org"));

    let m = s.json(&format!("/api/v1/message/latest{q}")).await;
    assert_eq!(m["ID"], run1.as_str(), "not the newest overall ({run2})");
    let plain = s.json("/api/v1/message/latest").await;
    assert_eq!(plain["ID"], run2.as_str());
    let h = s.json(&format!("/api/v1/message/latest/headers{q}")).await;
    assert_eq!(h["Message-Id"], json!(["<multi-1@example.com>"]));
    let raw = s.get(&format!("/api/v1/message/latest/raw{q}")).await;
    assert!(raw.headers().get("content-disposition").is_none());
    assert!(raw.text().await.unwrap().contains("alice+run1@example.org"));
    let dl = s.get(&format!("/api/v1/message/latest/raw{q}&dl=1")).await;
    assert_eq!(
        dl.headers()["content-disposition"],
        format!("attachment; filename=\"{run1}.eml\"").as_str()
    );
    let part = s.get(&format!("/api/v1/message/latest/part/2{q}")).await;
    assert_eq!(part.status(), 200);
    assert_eq!(
        part.headers()["content-disposition"],
        "inline; filename=\"numbers.pdf\""
    );
    assert_eq!(part.bytes().await.unwrap().to_vec(), pdf());
    let txt = s
        .get(&format!("/view/latest.txt{q}"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(txt.trim(), "Hello Bob, the quarterly numbers are attached.");
    let html = s.get(&format!("/view/latest.html{q}")).await;
    assert_eq!(html.status(), 200);
    assert!(
        html.text()
            .await
            .unwrap()
            .contains(&format!("/api/v1/message/{run1}/part/1.2"))
    );

    // Nothing matches: 404, not some other message.
    let none = format!("?query={}", urlencode("to:nobody@example.org"));
    for path in [
        "/api/v1/message/latest",
        "/api/v1/message/latest/raw",
        "/view/latest.txt",
    ] {
        assert_eq!(
            s.get(&format!("{path}{none}")).await.status(),
            404,
            "{path}"
        );
    }

    // Deep links.
    assert_eq!(
        location("/view/latest".into()).await,
        format!("/view/{run2}")
    );
    assert_eq!(
        location(format!("/view/latest{q}")).await,
        format!("/view/{run1}")
    );
    assert_eq!(location(format!("/view/latest{none}")).await, "/");
    assert_eq!(
        location(format!("/view/{other}")).await,
        format!("/?m={other}")
    );
    assert_eq!(s.get("/view/..%2Fetc").await.status(), 404);
    assert_eq!(s.get("/view/nosuchid").await.status(), 404);
}
