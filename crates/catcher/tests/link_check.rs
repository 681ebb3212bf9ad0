//! The link check against HTTP servers this test runs on 127.0.0.1: a real
//! catcher with `MP_ALLOW_INTERNAL_HTTP_REQUESTS` tests a message's links
//! (status, redirect followed or not, a redirect loop) and answers Mailpit's
//! `LinkCheckResponse`; without the option the same loopback links are
//! refused with 451 before any request leaves the catcher.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::any;
use mailsafe_catcher::checks::link::LinkChecker;
use serde_json::{Value, json};
use support::*;

/// A target server: `/ok` 200, `/gone` 404, `/moved` 302 to `/ok`,
/// `/loop` 302 to itself; counts the requests it gets.
async fn target() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new()
        .route("/ok", any(|| async { StatusCode::OK }))
        .route("/gone", any(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/moved",
            any(|| async { (StatusCode::FOUND, [(header::LOCATION, "/ok")]) }),
        )
        .route(
            "/loop",
            any(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
        )
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                h.fetch_add(1, Ordering::SeqCst);
                next.run(req)
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, hits)
}

/// Sends a message whose HTML and text name the target's paths; its ID.
async fn send_links(server: &Server, base: &str) -> String {
    let html = format!(
        "<p><a href=\"{base}/ok\">ok</a> <a href='{base}/gone'>gone</a> \
         <a href={base}/moved>moved</a> <img src=\"{base}/loop\"> \
         <a href=\"mailto:x@example.com\">mail</a></p>"
    );
    let sent = json_of(
        http_client()
            .post(format!("http://{}/api/v1/send", server.http))
            .json(&json!({
                "From": {"Email": "a@example.com"},
                "To": [{"Email": "b@example.com"}],
                "Subject": "links",
                "HTML": html,
                "Text": format!("also {base}/ok and <{base}/gone>\n"),
            })),
    )
    .await;
    sent["ID"].as_str().unwrap().to_string()
}

async fn link_check(server: &Server, id: &str, follow: bool) -> Value {
    let q = if follow { "?follow=true" } else { "" };
    let res = http_client()
        .get(format!(
            "http://{}/api/v1/message/{id}/link-check{q}",
            server.http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// (path, code, status) of each link.
fn statuses(v: &Value, base: &str) -> Vec<(String, u64, String)> {
    v["Links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["URL"].as_str().unwrap().replacen(base, "", 1),
                l["StatusCode"].as_u64().unwrap(),
                l["Status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_checked_with_the_internal_override() {
    let (base, hits) = target().await;
    let mut server =
        Server::start(|c, _| c.link_check = LinkChecker::new(true, false, false)).await;
    let id = send_links(&server, &base).await;

    let v = link_check(&server, &id, false).await;
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["Errors", "Links"],
        "Mailpit's LinkCheckResponse: {v}"
    );
    let s = |p: &str, c: u64, t: &str| (p.to_string(), c, t.to_string());
    assert_eq!(
        statuses(&v, &base),
        [
            s("/ok", 200, "OK"),
            s("/gone", 404, "Not Found"),
            s("/moved", 302, "Found"),
            s("/loop", 302, "Found"),
        ],
        "anchors, then images; text links already seen are not repeated: {v}"
    );
    assert_eq!(v["Errors"], 1);

    // Following redirects: /moved lands on /ok, /loop gives up (no answer).
    let v = link_check(&server, &id, true).await;
    let got = statuses(&v, &base);
    assert_eq!(got[2], s("/moved", 200, "OK"), "{v}");
    assert_eq!(got[3].1, 0, "a redirect loop is an error: {v}");
    assert_eq!(v["Errors"], 2);
    assert!(hits.load(Ordering::SeqCst) >= 8);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_links_are_refused_without_the_override() {
    let (base, hits) = target().await;
    let mut server = Server::start(|_, _| {}).await;
    let id = send_links(&server, &base).await;
    let v = link_check(&server, &id, true).await;
    let got = statuses(&v, &base);
    assert_eq!(got.len(), 4, "{v}");
    for (path, code, status) in &got {
        assert_eq!(*code, 451, "{path}: {v}");
        assert_eq!(status, "Blocked private/reserved address");
    }
    assert_eq!(v["Errors"], 4);
    // `localhost` by name is refused as well.
    let named = base.replace("127.0.0.1", "localhost");
    let id = send_links(&server, &named).await;
    let v = link_check(&server, &id, false).await;
    assert!(
        v["Links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["StatusCode"] == 451),
        "{v}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no request reached the target"
    );
    server.stop().await;
}
