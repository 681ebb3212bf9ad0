//! Mailpit's SMTP-side options against a real catcher on 127.0.0.1:0, with
//! Python's smtplib as the client and the HTTP API as the witness: tag
//! rules (`MP_TAG`, `MP_TAGS_CONFIG`), allowed recipients and ignoring the
//! refused ones, strict RFC headers, duplicate Message-IDs, message dates,
//! and chaos (`MP_ENABLE_CHAOS`, `/api/v1/chaos`).

mod support;

use serde_json::{Value, json};
use support::*;

async fn api(server: &Server, path: &str) -> Value {
    json_of(http_client().get(format!("http://{}{path}", server.http))).await
}

#[tokio::test]
async fn tag_rules_from_mp_tag_and_the_yaml_file_tag_matching_mail() {
    let mut server = Server::start(|c, dir| {
        let yaml = dir.join("tags.yml");
        std::fs::write(
            &yaml,
            "filters:\n  - match: from:alerts@\n    tags: Alert, ops\n",
        )
        .unwrap();
        let mut rules =
            mailsafe_catcher::storage::TagRule::parse_args("signup=subject:welcome").unwrap();
        rules.extend(
            mailsafe_catcher::storage::TagRule::from_yaml(&std::fs::read_to_string(yaml).unwrap())
                .unwrap(),
        );
        c.tagging.rules = rules;
    })
    .await;
    // The UI's websocket sees each message with its rule tags (the `new`
    // event waits for the rules).
    let ws_url = format!("ws://{}/api/events", server.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let out = send(
        &server,
        &[
            "b@example.com|Subject: Welcome aboard\\n\\nhi\\n",
            "b@example.com|From: alerts@example.com\\nSubject: disk\\n\\nfull\\n",
            "b@example.com|Subject: other\\n\\nnothing\\n",
        ],
    )
    .await;
    assert_eq!(out, vec![json!("ok"), json!("ok"), json!("ok")]);
    let list = api(&server, "/api/v1/messages").await;
    let tags: Vec<(String, Value)> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Subject"].as_str().unwrap().to_string(),
                m["Tags"].clone(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        vec![
            ("other".to_string(), json!([])),
            ("disk".to_string(), json!(["Alert", "ops"])),
            ("Welcome aboard".to_string(), json!(["signup"])),
        ]
    );
    // The tags are searchable like any other.
    let found = api(&server, "/api/v1/search?query=tag:signup").await;
    assert_eq!(found["messages_count"], 1);
    let mut live = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while live.len() < 3 {
        use futures::StreamExt;
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("three `new` events in time")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if v["Type"] == "new" {
            live.push((
                v["Data"]["Subject"].as_str().unwrap().to_string(),
                v["Data"]["Tags"].clone(),
            ));
        }
    }
    live.sort_by(|a, b| a.0.cmp(&b.0));
    let mut listed = tags;
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(live, listed, "the `new` events carry the rule tags");
    server.stop().await;
}

#[tokio::test]
async fn allowed_recipients_refuse_others_or_drop_them_silently() {
    let mut strict = Server::start(|c, _| {
        c.smtp_allowed_recipients = Some(regex::Regex::new(r"@allowed\.test$").unwrap());
    })
    .await;
    let out = send(
        &strict,
        &[
            "x@other.test|Subject: refused\\n\\nx\\n",
            "ok@allowed.test,x@other.test|Subject: half\\n\\nx\\n",
        ],
    )
    .await;
    assert_eq!(out[0][0], 550, "{out:?}");
    assert_eq!(out[1][0], 550, "the refused one is reported: {out:?}");
    let list = api(&strict, "/api/v1/messages").await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["messages"][0]["Subject"], "half");
    strict.stop().await;

    let mut quiet = Server::start(|c, _| {
        c.smtp_allowed_recipients = Some(regex::Regex::new(r"@allowed\.test$").unwrap());
        c.smtp_ignore_rejected_recipients = true;
    })
    .await;
    let out = send(
        &quiet,
        &[
            "x@other.test|Subject: dropped\\n\\nx\\n",
            "ok@allowed.test,x@other.test|Subject: kept\\n\\nx\\n",
        ],
    )
    .await;
    assert_eq!(out, vec![json!("ok"), json!("ok")], "2xx for everyone");
    let list = api(&quiet, "/api/v1/messages").await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["messages"][0]["Subject"], "kept");
    quiet.stop().await;
}

/// Sends `data` (headers with a CR CR LF, which smtplib would rewrite)
/// over a raw connection; the DATA reply's code.
async fn send_raw(server: &Server, data: &[u8]) -> u16 {
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(c.cmd("EHLO client").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.com>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(data).await;
    c.send(b"\r\n.\r\n").await;
    c.reply().await.0
}

#[tokio::test]
async fn strict_rfc_headers_refuse_cr_cr_lf_and_the_default_repairs_it() {
    let raw = b"Subject: bad\r\r\nX-A: 1\r\n\r\nbody";
    let mut lax = Server::start(|_, _| {}).await;
    assert_eq!(send_raw(&lax, raw).await, 250);
    let list = api(&lax, "/api/v1/messages").await;
    let id = list["messages"][0]["ID"].as_str().unwrap().to_string();
    assert_eq!(list["messages"][0]["Subject"], "bad");
    let h = api(&lax, &format!("/api/v1/message/{id}/headers")).await;
    assert_eq!(h["X-A"], json!(["1"]), "{h}");
    lax.stop().await;

    let mut strict = Server::start(|c, _| c.smtp_strict_rfc_headers = true).await;
    assert_eq!(send_raw(&strict, raw).await, 451);
    assert_eq!(api(&strict, "/api/v1/messages").await["total"], 0);
    strict.stop().await;
}

#[tokio::test]
async fn duplicate_message_ids_are_ignored_and_message_dates_used() {
    let mut server = Server::start(|c, _| {
        c.ignore_duplicate_ids = true;
        c.use_message_dates = true;
    })
    .await;
    let msg = "b@example.com|Message-ID: <same@x>\\nDate: Tue, 02 Jan 2024 10:00:00 +0000\\nSubject: once\\n\\nx\\n";
    let out = send(&server, &[msg, msg]).await;
    assert_eq!(out, vec![json!("ok"), json!("ok")], "a duplicate gets 250");
    let list = api(&server, "/api/v1/messages").await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["messages"][0]["Created"], "2024-01-02T10:00:00.000Z");
    let info = api(&server, "/api/v1/info").await;
    assert_eq!(info["RuntimeStats"]["SMTPIgnored"], 1, "{info}");
    server.stop().await;
}

#[tokio::test]
async fn chaos_fails_what_the_api_says_and_smtplib_succeeds_once_it_stops() {
    let mut off = Server::start(|_, _| {}).await;
    let r = http_client()
        .get(format!("http://{}/api/v1/chaos", off.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "chaos is off by default");
    off.stop().await;

    let mut server = Server::start(|c, _| {
        c.chaos =
            Some(mailsafe_catcher::smtp::chaos::Triggers::parse("Recipient:452:100").unwrap());
    })
    .await;
    let now = api(&server, "/api/v1/chaos").await;
    assert_eq!(
        now,
        json!({
            "Sender": {"ErrorCode": 451, "Probability": 0},
            "Recipient": {"ErrorCode": 452, "Probability": 100},
            "Authentication": {"ErrorCode": 535, "Probability": 0},
        })
    );
    let mail = "b@example.com|Subject: chaos\\n\\nx\\n";
    let out = send(&server, &[mail]).await;
    assert_eq!(out, vec![json!([452, "Chaos recipient error"])]);
    // The sender trigger now, through the API.
    let set = |body: Value| {
        http_client()
            .put(format!("http://{}/api/v1/chaos", server.http))
            .json(&body)
            .send()
    };
    let r = set(json!({"Sender": {"ErrorCode": 550, "Probability": 100}}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["Recipient"]["Probability"], 0,
        "a PUT replaces every trigger"
    );
    let out = send(&server, &[mail]).await;
    assert_eq!(out, vec![json!([550, "Chaos sender error"])]);
    let r = set(json!({"Sender": {"ErrorCode": 200, "Probability": 100}}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "codes outside 400-599 are refused");
    // Chaos off again: smtplib's retry goes through.
    set(json!({})).await.unwrap();
    assert_eq!(send(&server, &[mail]).await, vec![json!("ok")]);
    assert_eq!(api(&server, "/api/v1/messages").await["total"], 1);
    server.stop().await;
}
