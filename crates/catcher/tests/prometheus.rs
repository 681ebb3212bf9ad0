//! `MP_ENABLE_PROMETHEUS` against a real catcher: mail over SMTP (smtplib),
//! one refused recipient, a delete through the API, then Mailpit's metrics
//! read back from `/metrics` (on the UI listener under a webroot and behind
//! basic auth, or on a listener of its own), each exposition checked by
//! `promtool check metrics` (Debian `prometheus`, installed by setup.sh).

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use mailsafe_catcher::api::metrics::Prometheus;
use serde_json::json;
use support::*;

/// The samples of an exposition: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// `promtool check metrics` on `text`: its verdict (lint problems included).
fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/setup.sh installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mail for the counters: two stored (one tagged by its plus-address), one
/// refused recipient.
async fn traffic(server: &Server) {
    let out = send(
        server,
        &[
            "bob+signup@example.com|To: bob+signup@example.com\\nSubject: one\\n\\nhello\\n",
            "carol@example.com|Subject: two\\n\\nhello again\\n",
            "eve@blocked.example|Subject: three\\n\\nno\\n",
        ],
    )
    .await;
    assert_eq!(out[0], json!("ok"));
    assert_eq!(out[1], json!("ok"));
    assert_eq!(out[2][0], json!(550), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_ui_listener_count_like_mailpit() {
    let mut server = Server::start(|c, _| {
        c.prometheus = Prometheus::Ui;
        c.webroot = "/mail/".into();
        c.smtp_allowed_recipients = Some(regex::Regex::new("@example\\.com$").unwrap());
        c.ui_auth = Some(
            mailsafe_catcher::auth::Credentials::from_pairs("ops:pw", "MP_UI_AUTH")
                .unwrap()
                .into_basic_auth(),
        );
    })
    .await;
    traffic(&server).await;
    let http = http_client();
    let base = format!("http://{}/mail", server.http);
    let list = json_of(
        http.get(format!("{base}/api/v1/messages"))
            .basic_auth("ops", Some("pw")),
    )
    .await;
    let two = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Subject"] == "two")
        .unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let deleted = http
        .delete(format!("{base}/api/v1/messages"))
        .basic_auth("ops", Some("pw"))
        .json(&json!({"IDs": [two]}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);

    let url = format!("{base}/metrics");
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        401,
        "behind the UI's auth"
    );
    let res = http
        .get(&url)
        .basic_auth("ops", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = res.text().await.unwrap();
    promtool(&text);
    let s = samples(&text);
    assert_eq!(s["mailpit_messages"], 1.0, "{text}");
    assert_eq!(s["mailpit_messages_unread"], 1.0);
    assert_eq!(s["mailpit_messages_deleted_total"], 1.0);
    assert_eq!(s["mailpit_smtp_accepted_total"], 2.0);
    assert_eq!(s["mailpit_smtp_rejected_total"], 1.0);
    assert_eq!(s["mailpit_smtp_ignored_total"], 0.0);
    assert!(s["mailpit_smtp_accepted_size_bytes_total"] > 40.0);
    assert!(s["mailpit_database_size_bytes"] > 0.0);
    assert!(s["mailpit_memory_usage_bytes"] > 0.0);
    assert!(s.contains_key("mailpit_uptime_seconds"));
    // Mailpit's eleven metrics and their types, no more.
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    assert_eq!(types.len(), 11, "{text}");
    assert!(text.contains("# TYPE mailpit_smtp_accepted_total counter"));
    assert!(text.contains("# TYPE mailpit_tag_messages gauge"));
    // "one" (still there) carries its plus-address tag.
    assert_eq!(
        s.get("mailpit_tag_messages{tag=\"signup\"}"),
        Some(&1.0),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_on_their_own_listener_and_not_on_the_ui() {
    let mut server = Server::start(|c, _| {
        c.prometheus = Prometheus::Listen("127.0.0.1:0".into());
    })
    .await;
    let addr = server.metrics.expect("a metrics listener");
    assert_ne!(addr, server.http);
    let http = http_client();
    assert_eq!(
        http.get(format!("http://{}/metrics", server.http))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    promtool(&text);
    assert_eq!(samples(&text)["mailpit_messages"], 0.0);
    server.stop().await;
}
