//! The HTML check over HTTP against a running catcher: messages arrive over
//! SMTP (Python's smtplib), `GET /api/v1/message/{ID}/html-check` answers
//! Mailpit's `HTMLCheckResponse` with exactly Mailpit's keys (what the npm
//! `mailpit-api` client's `htmlCheck()` types), `latest` works, and a
//! message without HTML gets Mailpit's 400.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::*;

/// The keys of a JSON object.
fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set(names: &[&'static str]) -> BTreeSet<&'static str> {
    names.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_check_answers_mailpits_shape_over_http() {
    let mut server = Server::start(|_, _| {}).await;
    let html_mail = "flex@example.org|Subject: flex\\nMIME-Version: 1.0\\n\
        Content-Type: multipart/alternative; boundary=b\\n\\n\
        --b\\nContent-Type: text/plain\\n\\nplain\\n\
        --b\\nContent-Type: text/html\\n\\n\
        <html><head><style>.row { display: flex }</style></head>\
        <body><div class=row>a</div><script>x()</script></body></html>\\n--b--\\n";
    let text_mail = "text@example.org|Subject: text only\\n\\njust text\\n";
    assert_eq!(send(&server, &[html_mail]).await, ["ok"]);
    let ids = ids(&server.store).await;
    let html_id = ids[0].clone();
    let base = format!("http://{}", server.http);
    let http = http_client();

    let r = json_of(http.get(format!("{base}/api/v1/message/{html_id}/html-check"))).await;
    assert_eq!(keys(&r), set(&["Warnings", "Platforms", "Total"]));
    assert_eq!(
        keys(&r["Total"]),
        set(&["Tests", "Nodes", "Supported", "Partial", "Unsupported"])
    );
    assert_eq!(r["Total"]["Nodes"], 4, "style, body, div, script");
    assert!(r["Total"]["Tests"].as_u64().unwrap() > 100);
    let platforms = r["Platforms"].as_object().unwrap();
    for p in ["android", "desktop-webmail", "ios", "macos", "windows"] {
        assert!(platforms.contains_key(p), "platform {p}: {platforms:?}");
    }
    let warnings = r["Warnings"].as_array().unwrap();
    for w in warnings {
        assert_eq!(
            keys(w),
            set(&[
                "Slug",
                "Title",
                "Description",
                "URL",
                "Category",
                "Tags",
                "Keywords",
                "Results",
                "NotesByNumber",
                "Score"
            ]),
            "{w}"
        );
        assert_eq!(
            keys(&w["Score"]),
            set(&["Found", "Supported", "Partial", "Unsupported"])
        );
        for c in w["Results"].as_array().unwrap() {
            assert_eq!(
                keys(c),
                set(&[
                    "Name",
                    "Platform",
                    "Family",
                    "Version",
                    "Support",
                    "NoteNumber"
                ])
            );
        }
    }
    // Nothing supports <script>: it comes first.
    assert_eq!(warnings[0]["Slug"], "html-script");
    let flex = warnings
        .iter()
        .find(|w| w["Slug"] == "css-display-flex")
        .expect("display:flex from the <style> block is flagged");
    assert_eq!(flex["Score"]["Found"], 1);
    assert!(
        flex["Results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| { c["Name"] == "Outlook Windows (2019)" && c["Support"] == "no" })
    );
    assert!(flex["Score"]["Unsupported"].as_f64().unwrap() > 0.0);
    assert!(flex["Score"]["Partial"].as_f64().unwrap() > 0.0);

    // `latest` is the newest message, now the one without HTML: Mailpit's
    // 400 and words.
    assert_eq!(send(&server, &[text_mail]).await, ["ok"]);
    let get = |path: &str| {
        let request = http.get(format!("{base}/api/v1/message/{path}"));
        async move {
            let res = request.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let (status, text) = get("latest/html-check").await;
    assert_eq!(
        (status, text.trim()),
        (400, "message does not contain HTML")
    );
    let (status, _) = get("latest/html-check?query=subject:flex").await;
    assert_eq!(status, 200, "latest matching the query has HTML");
    assert_eq!(get("NoSuchId/html-check").await.0, 404);
    server.stop().await;
}
