//! `MP_WEBROOT`: a real catcher serving everything under `/mail/`, driven by
//! Mailpit's own clients (npm `mailpit-api`, `cypress-mailpit`, PyPI
//! `mailpit-api-client`) pointed at the prefixed URL, a websocket client,
//! and plain HTTP requests for the redirects, the page and the swagger
//! `basePath`. The browser side is tests/browser/webroot.test.mjs.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use support::{Server, http_client, json_of, run_client};

async fn catcher() -> (Server, String) {
    let server = Server::start(|c, _| c.webroot = "/mail/".into()).await;
    let base = format!("http://{}", server.http);
    (server, base)
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailpit_clients_work_under_the_webroot() {
    for (cmd, script) in [
        ("node", "mailpit-api.mjs"),
        ("node", "cypress-mailpit.cjs"),
        ("python3", "mailpit_api_client.py"),
    ] {
        // Each script expects an empty mailbox.
        let (mut server, base) = catcher().await;
        run_client(cmd, &[script, &format!("{base}/mail")]).await;
        server.stop().await;
    }
}

#[tokio::test]
async fn everything_lives_under_the_prefix_and_the_bare_prefix_redirects() {
    let (mut server, base) = catcher().await;
    let http = no_redirects();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    let bare = get("/mail").await.unwrap();
    assert_eq!(bare.status(), 302);
    assert_eq!(bare.headers()["location"], "/mail/");

    // Outside the prefix: nothing, not even the probes (as in Mailpit).
    for path in ["/", "/api/v1/messages", "/ui/app.js", "/livez", "/mailx/"] {
        assert_eq!(get(path).await.unwrap().status(), 404, "{path}");
    }
    for path in ["/mail/livez", "/mail/readyz", "/mail/ui/app.js"] {
        assert_eq!(get(path).await.unwrap().status(), 200, "{path}");
    }

    // The page points at its assets under the prefix and tells the script
    // where the API is.
    let page = get("/mail/").await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"<html lang="en" data-webroot="/mail/">"#));
    assert!(page.contains(r#"<script src="/mail/ui/app.js""#), "{page}");
    assert!(
        !page.contains(r#"="/ui/"#),
        "an asset path without the prefix"
    );

    let swagger = json_of(http.get(format!("{base}/mail/api/v1/swagger.json"))).await;
    assert_eq!(swagger["basePath"], "/mail");
    assert!(swagger["paths"]["/api/v1/messages"].is_object());

    // The websocket is under the prefix too, and sees a message sent there.
    let ws_url = format!("ws://{}/mail/api/events", server.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let sent = json_of(http.post(format!("{base}/mail/api/v1/send")).json(&json!({
        "From": {"Email": "a@example.com"},
        "To": [{"Email": "b@example.com"}],
        "Subject": "under the webroot",
        "Text": "hello",
    })))
    .await;
    let id = sent["ID"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a `new` event in time")
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if v["Type"] == "new" {
            assert_eq!(v["Data"]["ID"], id.as_str());
            break;
        }
    }

    // Deep links answer with the UI's URL under the prefix.
    let latest = get("/mail/view/latest").await.unwrap();
    assert_eq!(latest.status(), 302);
    assert_eq!(
        latest.headers()["location"].to_str().unwrap(),
        format!("/mail/view/{id}")
    );
    let view = get(&format!("/mail/view/{id}")).await.unwrap();
    assert_eq!(
        view.headers()["location"].to_str().unwrap(),
        format!("/mail/?m={id}")
    );
    let html = http_client()
        .get(format!("{base}/mail/view/{id}.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 200);
    assert!(html.text().await.unwrap().contains("hello"));
    // A doubled slash (clients joining a base URL ending in `/`) is cleaned
    // up under the prefix.
    let doubled = get(&format!("/mail//api/v1/message/{id}")).await.unwrap();
    assert_eq!(doubled.status(), 301);
    assert_eq!(
        doubled.headers()["location"].to_str().unwrap(),
        format!("/mail/api/v1/message/{id}")
    );
    server.stop().await;
}
