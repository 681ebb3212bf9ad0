//! Webhooks (`MP_WEBHOOK_URL`, `MP_WEBHOOK_LIMIT`, `MP_WEBHOOK_DELAY`)
//! against a receiver the test runs on 127.0.0.1: the JSON Mailpit posts for
//! each new message, its rate limit (drop, not delay), its delay, and a
//! receiver that never answers, which must neither slow SMTP nor queue
//! without bound.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailsafe_catcher::webhook::{WebhookConfig, WebhookStats};
use support::*;

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// (headers, body, when) of every request.
    requests: Mutex<Vec<(axum::http::HeaderMap, serde_json::Value, Instant)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A webhook receiver on 127.0.0.1 that answers each POST after `answer`
/// (`None`: never); returns its URL (with a password, which must never be
/// logged) and what it saw.
async fn receiver(answer: Option<Duration>) -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let s = s.clone();
                async move {
                    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    let json = serde_json::from_slice(&body).unwrap_or_default();
                    s.requests
                        .lock()
                        .unwrap()
                        .push((headers, json, Instant::now()));
                    match answer {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                    s.in_flight.fetch_sub(1, Ordering::SeqCst);
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://hook:hook-Secret-9@{}/hook",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// A catcher posting to `url` with `tune` applied to the webhook settings.
async fn server_with(url: &str, tune: impl FnOnce(&mut WebhookConfig)) -> Server {
    let mut hook = WebhookConfig::new(WebhookConfig::parse_url(url).unwrap());
    tune(&mut hook);
    Server::start(move |c, _| {
        c.label = "team-a".into();
        c.webhook = Some(hook);
    })
    .await
}

/// Sends `n` messages over SMTP (one session, swaks-like raw client).
async fn send(server: &Server, n: usize) {
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(c.cmd("EHLO x").await, 250);
    for i in 0..n {
        assert_eq!(c.cmd("MAIL FROM:<a@x>").await, 250);
        assert_eq!(c.cmd("RCPT TO:<b@y>").await, 250);
        assert_eq!(c.cmd("DATA").await, 354);
        c.send(
            format!("From: A <a@x>\r\nTo: b@y\r\nSubject: hook {i}\r\n\r\nbody {i}\r\n.\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(c.reply().await.0, 250);
    }
}

/// Polls until `cond` holds, within a generous bound.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(seen: &Seen) -> usize {
    seen.requests.lock().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_posts_mailpits_summary_json() {
    let logs = logs();
    let (url, seen) = receiver(Some(Duration::ZERO)).await;
    let mut server = server_with(&url, |w| w.interval = Duration::ZERO).await;
    send(&server, 3).await;
    eventually("3 webhooks", || count(&seen) == 3).await;
    let requests = seen.requests.lock().unwrap().clone();
    let mut subjects: Vec<String> = Vec::new();
    for (headers, body, _) in &requests {
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            headers["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("mailsafe/")
        );
        assert_eq!(headers["mailpit-label"], "team-a");
        // The body is the message's summary, exactly as the API lists it.
        let id = body["ID"].as_str().unwrap();
        let summary = serde_json::to_value(server.store.summary(id).await.unwrap()).unwrap();
        assert_eq!(*body, summary);
        for key in [
            "ID",
            "MessageID",
            "Read",
            "From",
            "To",
            "Cc",
            "Bcc",
            "ReplyTo",
            "Subject",
            "Created",
            "Username",
            "Tags",
            "Size",
            "Attachments",
            "Snippet",
        ] {
            assert!(body.get(key).is_some(), "{key} missing from {body}");
        }
        assert_eq!(body["From"]["Address"], "a@x");
        subjects.push(body["Subject"].as_str().unwrap().into());
    }
    subjects.sort();
    assert_eq!(subjects, ["hook 0", "hook 1", "hook 2"]);
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        !log.contains("hook-Secret-9"),
        "the URL's password is never logged"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_drops_and_the_delay_holds_each_request() {
    // One request per 600 s at most: the first message posts, the next
    // ones within the interval post nothing (Mailpit drops, not delays).
    let (url, seen) = receiver(Some(Duration::ZERO)).await;
    let mut server = server_with(&url, |w| {
        w.interval = Duration::from_secs(600);
        w.delay = Duration::from_millis(1500);
    })
    .await;
    let stats = stats(&server);
    let started = Instant::now();
    send(&server, 5).await;
    eventually("4 rate-limited", || {
        WebhookStats::get(&stats.rate_limited) == 4
    })
    .await;
    eventually("1 webhook", || count(&seen) == 1).await;
    // The delay: nothing arrives before 1.5 s after the message.
    let arrived = seen.requests.lock().unwrap()[0].2;
    assert!(arrived.duration_since(started) >= Duration::from_millis(1500));
    assert_eq!(seen.requests.lock().unwrap()[0].1["Subject"], "hook 0");
    eventually("sent counted", || WebhookStats::get(&stats.sent) == 1).await;
    assert_eq!(count(&seen), 1);
    server.stop().await;
}

fn stats(server: &Server) -> Arc<WebhookStats> {
    server.webhook.clone().expect("webhooks configured")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_neither_slows_smtp_nor_queues_without_bound() {
    let logs = logs();
    let (url, seen) = receiver(None).await;
    // Requests time out after 60 s: if SMTP waited for them, 40 messages
    // would take 20 minutes.
    let mut server = server_with(&url, |w| {
        w.interval = Duration::ZERO;
        w.timeout = Duration::from_secs(60);
        w.queue = 4;
        w.concurrency = 2;
    })
    .await;
    let stats = stats(&server);
    let started = Instant::now();
    send(&server, 40).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "SMTP took {took:?}");
    assert_eq!(server.count().await, 40);
    // 2 in flight (hanging), 4 queued, the rest dropped.
    eventually("two requests hang at the receiver", || count(&seen) == 2).await;
    eventually("the rest is dropped", || {
        WebhookStats::get(&stats.dropped) >= 40 - 2 - 4 - 1
    })
    .await;
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 2);
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(log.contains("webhook queue full"), "{log}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_error_answers_are_counted_and_logged_without_the_password() {
    let logs = logs();
    let (url, _seen) = receiver(None).await;
    let mut server = server_with(&url, |w| {
        w.interval = Duration::ZERO;
        w.timeout = Duration::from_millis(300);
    })
    .await;
    let stats = stats(&server);
    send(&server, 2).await;
    eventually("2 timeouts", || WebhookStats::get(&stats.failed) == 2).await;
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(log.contains("webhook timed out"), "{log}");
    assert!(log.contains("hook:xxxxx@127.0.0.1"), "{log}");
    assert!(!log.contains("hook-Secret-9"));
    server.stop().await;

    // Only http(s) URLs with a host are accepted.
    for bad in ["ftp://x/y", "file:///etc/passwd", "not a url"] {
        assert!(WebhookConfig::parse_url(bad).is_err(), "{bad}");
    }
}
