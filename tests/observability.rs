//! Observability in every mode that backs up, against a real S3
//! (SeaweedFS) and a heartbeat receiver this test runs on 127.0.0.1:
//!
//! - `cron` and `serve --replica` serve `/metrics` and `/healthz` with the
//!   metric names `watch` serves (one metrics module), counting their
//!   snapshots there;
//! - `--heartbeat-url` is requested after each successful snapshot in
//!   `watch`, `cron` (scheduled and `--once`) and `serve --replica`, with
//!   its path and query intact; its failures (an error status, no answer
//!   within the timeout) are counted and logged without the URL's token,
//!   and a receiver that never answers delays no snapshot;
//! - an idle `watch` also pings every `--heartbeat-interval` while its
//!   replica is current, and a loop that fails does not.

mod common;
mod watch_support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use watch_support::*;

/// The secret parts of every heartbeat URL here: no log may show them.
const TOKEN: &str = "sekrit-token";
const CHECK: &str = "check-uuid-4711";

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    /// `200 OK`.
    Ok,
    /// `500 Internal Server Error`.
    Error,
    /// Reads the request and never answers (the connection stays open
    /// until the test ends).
    Never,
}

/// A heartbeat receiver on 127.0.0.1: records each request line.
struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head);
                let line = text.lines().next().unwrap_or_default().to_string();
                seen.lock().unwrap().push(line);
                let status = match answer {
                    Answer::Ok => "200 OK",
                    Answer::Error => "500 Internal Server Error",
                    Answer::Never => {
                        held.push(conn);
                        continue;
                    }
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        Receiver { port, requests }
    }

    /// The URL to give mailsafe: a path and a query that carry secrets.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ping/{CHECK}?token={TOKEN}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) for `n` requests; returns them.
    fn wait_for(&self, n: usize, limit: Duration, log: &dyn Fn() -> String) -> Vec<String> {
        let start = Instant::now();
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < limit,
                "{} of {n} heartbeats within {limit:?}; log:\n{}",
                got.len(),
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The request line every heartbeat must be.
fn expected_request() -> String {
    format!("GET /ping/{CHECK}?token={TOKEN} HTTP/1.1")
}

/// Asserts that `log` never shows the heartbeat URL's token or path.
fn assert_no_secret(log: &str) {
    assert!(
        !log.contains(TOKEN) && !log.contains(CHECK),
        "the log shows the heartbeat URL's secret parts:\n{log}"
    );
}

/// The metric names (`# TYPE` lines) `http` serves, waiting for it.
async fn metric_names(http: &str, log: &dyn Fn() -> String) -> BTreeSet<String> {
    let start = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("{http}/metrics")).await {
            let text = r.text().await.unwrap();
            return text
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .map(|l| l.split_whitespace().next().unwrap().to_string())
                .collect();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{http}/metrics never answered; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/healthz` answers 200.
async fn assert_healthy(http: &str) {
    let r = reqwest::get(format!("{http}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Waits until `name` reaches at least `want`, at most `limit`.
async fn wait_metric(w: &Watcher, name: &str, want: f64, limit: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let v = w.metric(name).await;
        if v >= want {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "{name} = {v} after {limit:?}, wanted {want}; log:\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A db `NAME.db` with one row under `dir`, watched into prefix
/// `obs-NAME` with `--heartbeat-url URL` and `extra` flags.
fn watch_pinging(
    s3: &common::S3,
    dir: &std::path::Path,
    name: &str,
    url: &str,
    extra: &[&str],
) -> (Watcher, rusqlite::Connection) {
    let db_path = dir.join(format!("{name}.db"));
    let db = create_db(&db_path);
    insert(&db, 1);
    let args = [&["--heartbeat-url", url][..], extra].concat();
    let endpoint = &s3.server.endpoint;
    let w = Watcher::start(
        s3,
        endpoint,
        &db_path,
        &s3.url(&format!("obs-{name}")),
        &args,
    );
    (w, db)
}

/// The metric names a plain `watch` serves: the reference of every mode.
async fn watch_names(s3: &common::S3, dir: &std::path::Path) -> BTreeSet<String> {
    let db = dir.join("ref.db");
    create_db(&db);
    let w = Watcher::start(s3, &s3.server.endpoint, &db, &s3.url("obs-ref"), &[]);
    metric_names(&w.http, &|| w.logs()).await
}

const UPLOADED: &str = "mailsafe_snapshots_total{result=\"uploaded\"}";
const SENT: &str = "mailsafe_heartbeats_total{result=\"sent\"}";
const FAILED: &str = "mailsafe_heartbeats_total{result=\"failed\"}";

/// `watch`: a heartbeat with path and query intact after each uploaded
/// snapshot, counted as sent; the names are the reference for the other
/// modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_pings_after_each_snapshot() {
    let s3 = common::s3();
    let receiver = Receiver::start(Answer::Ok);
    let dir = tempfile::tempdir().unwrap();
    let (w, db) = watch_pinging(&s3, dir.path(), "watch", &receiver.url(), &[]);
    wait_metric(&w, UPLOADED, 1.0, Duration::from_secs(60)).await;
    insert(&db, 2);
    wait_metric(&w, UPLOADED, 2.0, Duration::from_secs(60)).await;
    let got = receiver.wait_for(1, Duration::from_secs(30), &|| w.logs());
    assert!(got.iter().all(|r| *r == expected_request()), "{got:?}");
    wait_metric(&w, SENT, got.len() as f64, Duration::from_secs(30)).await;
    assert_eq!(w.metric(FAILED).await, 0.0);
    assert_no_secret(&w.logs());
}

/// `watch` with a receiver that answers 500, and one that never answers:
/// snapshots go on (two uploaded while the first ping still hangs, its
/// timeout being ten minutes), and the failures are counted and logged by host
/// only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_heartbeats_are_counted_and_never_delay_a_snapshot() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();

    let erroring = Receiver::start(Answer::Error);
    let (w, _db) = watch_pinging(&s3, dir.path(), "500", &erroring.url(), &[]);
    wait_metric(&w, FAILED, 1.0, Duration::from_secs(60)).await;
    assert_eq!(w.metric(SENT).await, 0.0);
    let log = w.logs();
    assert!(
        log.contains("heartbeat request failed: answered 500")
            && log.contains(&format!("http://127.0.0.1:{}/…", erroring.port)),
        "{log}"
    );
    assert_no_secret(&log);

    let silent = Receiver::start(Answer::Never);
    let timeout = ["--heartbeat-timeout", "600s"];
    let (w, db) = watch_pinging(&s3, dir.path(), "never", &silent.url(), &timeout);
    wait_metric(&w, UPLOADED, 1.0, Duration::from_secs(60)).await;
    silent.wait_for(1, Duration::from_secs(30), &|| w.logs());
    for row in 2..=3 {
        insert(&db, row);
        wait_metric(&w, UPLOADED, row as f64, Duration::from_secs(30)).await;
    }
    // The first ping is still waiting for its answer.
    assert_eq!(w.metric(SENT).await + w.metric(FAILED).await, 0.0);
    assert_no_secret(&w.logs());
}

/// An idle db: after its first snapshot nothing is written, yet `watch`
/// pings every `--heartbeat-interval` (three idle pings after the
/// snapshot's, still one snapshot uploaded); a `watch` whose store is down
/// never pings, however many intervals its failures span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watch_pings_on_an_interval_only_while_current() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Answer::Ok);
    let every = ["--heartbeat-interval", "300ms"];
    let (w, _db) = watch_pinging(&s3, dir.path(), "idle", &receiver.url(), &every);
    wait_metric(&w, UPLOADED, 1.0, Duration::from_secs(60)).await;
    let got = receiver.wait_for(4, Duration::from_secs(60), &|| w.logs());
    assert!(got.iter().all(|r| *r == expected_request()), "{got:?}");
    assert_eq!(w.metric(UPLOADED).await, 1.0, "no write, no snapshot");
    wait_metric(&w, SENT, 4.0, Duration::from_secs(30)).await;
    assert_no_secret(&w.logs());

    // Down from the start: failing attempts over many intervals, no ping.
    let silent = Receiver::start(Answer::Ok);
    let db_path = dir.path().join("down.db");
    insert(&create_db(&db_path), 1);
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let url = silent.url();
    let args = [&["--heartbeat-url", url.as_str()][..], &every].concat();
    let started = Instant::now();
    let down = Watcher::start(&s3, &dead, &db_path, &s3.url("obs-down"), &args);
    // Failures and five intervals: both conditions, waited for.
    wait_metric(
        &down,
        "mailsafe_snapshot_errors_total",
        3.0,
        Duration::from_secs(120),
    )
    .await;
    while started.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(down.metric(SENT).await + down.metric(FAILED).await, 0.0);
    assert!(silent.requests().is_empty(), "{:?}", silent.requests());
}

/// `cron --schedule`: `/metrics` with `watch`'s names and `/healthz` from
/// the start; the scheduled round's snapshot is counted there and pings.
/// `cron --once` pings before it exits, and a ping that gets no answer
/// within `--heartbeat-timeout` fails the ping, not the round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_serves_watchs_metrics_and_pings_after_each_round() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Answer::Ok);

    let watch_names = watch_names(&s3, dir.path()).await;

    let db_path = dir.path().join("c.db");
    let db = create_db(&db_path);
    insert(&db, 1);
    let c = Watcher::cron(
        &s3,
        &s3.server.endpoint,
        &db_path,
        &s3.url("obs-cron"),
        &[
            "--schedule",
            "* * * * *",
            "--heartbeat-url",
            &receiver.url(),
        ],
    );
    assert_eq!(metric_names(&c.http, &|| c.logs()).await, watch_names);
    assert_healthy(&c.http).await;
    // The first round comes at the next full minute.
    wait_metric(&c, UPLOADED, 1.0, Duration::from_secs(100)).await;
    assert!(c.metric("mailsafe_last_success_timestamp_seconds").await > 0.0);
    assert!(c.metric("mailsafe_store_requests_total{op=\"put\"}").await > 0.0);
    assert_eq!(c.metric("mailsafe_lease_held").await, 0.0);
    let got = receiver.wait_for(1, Duration::from_secs(30), &|| c.logs());
    assert_eq!(got[0], expected_request());
    wait_metric(&c, SENT, 1.0, Duration::from_secs(30)).await;
    assert_healthy(&c.http).await;
    assert_no_secret(&c.logs());
    drop(c);
    // (A later minute's round may have pinged again before the kill.)
    let before = receiver.requests().len();

    // --once: the ping is sent before the process exits.
    insert(&db, 2);
    let once = |url: &str, extra: &[&str]| {
        s3.mailsafe()
            .args(["cron", "--once", "--db"])
            .arg(&db_path)
            .args(["--replica", &s3.url("obs-cron"), "--heartbeat-url", url])
            .args(extra)
            .stdout(Stdio::null())
            .output()
            .unwrap()
    };
    let out = once(&receiver.url(), &[]);
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    let got = receiver.requests();
    assert_eq!(got.len(), before + 1, "{log}");
    assert_eq!(got[before], expected_request());
    assert_no_secret(&log);

    // No answer within the timeout: the round still succeeds.
    let silent = Receiver::start(Answer::Never);
    insert(&db, 3);
    let t = Instant::now();
    let out = once(&silent.url(), &["--heartbeat-timeout", "1s"]);
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    assert!(t.elapsed() < Duration::from_secs(60), "{log}");
    assert_eq!(silent.requests().len(), 1, "{log}");
    assert!(log.contains("heartbeat request failed"), "{log}");
    assert_no_secret(&log);
    assert_eq!(
        restored_rows(&s3, &s3.url("obs-cron"), &dir.path().join("r.db")),
        3
    );
}

/// `serve --replica`: `/metrics` (on `--metrics-listen`, the catcher's
/// `--listen` being its UI) with `watch`'s names, counting the backup's
/// snapshots; a ping after the first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replica_serves_watchs_metrics_and_pings() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Answer::Ok);
    let watch_names = watch_names(&s3, dir.path()).await;

    let db = dir.path().join("mail.db");
    let log = dir.path().join("serve.log");
    let metrics_port = common::free_port();
    let child = s3
        .mailsafe()
        .args(["serve", "--db"])
        .arg(&db)
        .args(["--smtp", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--replica", &s3.url("obs-serve")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(["--heartbeat-url", &receiver.url()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let serve = Watcher {
        child,
        log,
        http: format!("http://127.0.0.1:{metrics_port}"),
    };
    assert_eq!(
        metric_names(&serve.http, &|| serve.logs()).await,
        watch_names
    );
    wait_metric(&serve, UPLOADED, 1.0, Duration::from_secs(60)).await;
    let got = receiver.wait_for(1, Duration::from_secs(30), &|| serve.logs());
    assert_eq!(got[0], expected_request());
    wait_metric(&serve, SENT, 1.0, Duration::from_secs(30)).await;
    assert_healthy(&serve.http).await;
    assert_no_secret(&serve.logs());
}

/// The monitoring flags of `serve` need `--replica` (without it there is
/// nothing to observe), and a heartbeat URL that is not http(s) is a usage
/// error that does not repeat it.
#[test]
fn monitoring_flags_are_checked_before_anything_starts() {
    let out = common::mailsafe()
        .args(["serve", "--metrics-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = common::mailsafe()
        .args(["cron", "--once", "--db", "/nonexistent.db"])
        .args(["--replica", "file:///tmp/x", "--heartbeat-url"])
        .arg(format!("ftp://u:{TOKEN}@h/x"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("http or https"), "{err}");
    assert_no_secret(&err);
}
