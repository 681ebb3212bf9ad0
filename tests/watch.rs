//! `mailsafe watch` as a process against a real S3 (SeaweedFS): RPO under
//! steady load, the final flush on SIGTERM, SeaweedFS stopped mid-load, an idle
//! minute metered by the proxy, and two watchers on one prefix. Every check
//! ends in a real `mailsafe restore` whose rows are counted.

mod common;
mod watch_support;

use std::time::{Duration, Instant};

use rand::Rng;

use common::free_port;
use watch_support::*;

/// Commits at ~30/s while polling the replica for new manifests; a commit
/// is "visible" when the first manifest whose read transaction started after
/// it appears. Then rows committed right before SIGTERM must be in the next
/// restore, and the watcher must exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpo_under_steady_load_and_final_flush() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("app.db");
    let url = s3.url("rpo");
    let db = create_db(&db_path);
    let mut w = Watcher::start(&s3, &s3.server.endpoint, &db_path, &url, &[]);
    w.wait_caught_up(Duration::from_secs(30)).await;
    let replica = s3.store("rpo").await;

    // The workload runs in a thread; the replica is polled from here.
    let load_secs = 10.0;
    let writer = {
        let path = db_path.clone();
        std::thread::spawn(move || {
            let db = create_db(&path);
            let start = Instant::now();
            let mut commits = Vec::new();
            let mut id = 0;
            while start.elapsed().as_secs_f64() < load_secs {
                id += 1;
                commits.push(insert(&db, id));
                std::thread::sleep(Duration::from_millis(33));
            }
            commits
        })
    };
    let mut seen: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    let poll_until = Instant::now() + Duration::from_secs_f64(load_secs);
    while Instant::now() < poll_until {
        poll_manifests(&replica, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let commits = writer.join().unwrap();
    // Then until the last commit is covered (a condition, not a fixed
    // window: a loaded machine is slower, not wrong), bounded.
    let last_commit = commits.last().copied().unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !seen.values().any(|(created, _)| *created >= last_commit) {
        poll_manifests(&replica, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rpo: Vec<f64> = commits
        .iter()
        .map(|&c| {
            seen.values()
                .filter(|(created, _)| *created >= c)
                .map(|(_, at)| at - c)
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    let uncovered = rpo.iter().filter(|r| r.is_infinite()).count();
    assert_eq!(
        uncovered,
        0,
        "{uncovered} commits never reached the replica; log:\n{}",
        w.logs()
    );
    let n = rpo.len();
    let (p50, p99, max) = (
        percentile(&mut rpo, 50.0),
        percentile(&mut rpo, 99.0),
        percentile(&mut rpo, 100.0),
    );
    println!(
        "watch RPO over {n} commits at ~30/s: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} snapshots)",
        p50 * 1e3,
        p99 * 1e3,
        max * 1e3,
        seen.len()
    );
    assert!(
        w.metric("mailsafe_snapshots_total{result=\"uploaded\"}")
            .await
            >= 2.0
    );
    assert!(w.metric("mailsafe_store_requests_total{op=\"put\"}").await >= 2.0);

    // Final flush: rows acknowledged right before SIGTERM.
    let last = commits.len() as i64;
    for id in last + 1..=last + 20 {
        insert(&db, id);
    }
    let logs = w.stop(Duration::from_secs(30));
    assert!(logs.contains("released the writer lease"), "{logs}");
    assert_eq!(
        restored_rows(&s3, &url, &dir.path().join("restored.db")),
        last + 20,
        "rows committed before SIGTERM"
    );
}

/// After the initial upload, a minute with no change makes no S3 request
/// (metered by the proxy every request passes through) and almost no CPU;
/// then a change is uploaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_minute_makes_no_requests() {
    let s3 = common::s3();
    let proxy = Proxy::start(&s3.server.endpoint, &[]);
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("idle.db");
    let url = s3.url("idle");
    let db = create_db(&db_path);
    for id in 1..=10 {
        insert(&db, id);
    }
    // The app keeps its connection open, as a real one does.
    let mut w = Watcher::start(&s3, &proxy.endpoint, &db_path, &url, &[]);
    w.wait_caught_up(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.reset().await;
    let req_before = w.metric("mailsafe_store_requests_total{op=\"put\"}").await
        + w.metric("mailsafe_store_requests_total{op=\"get\"}").await
        + w.metric("mailsafe_store_requests_total{op=\"list\"}").await;
    let cpu_before = w.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let cpu = w.cpu_seconds() - cpu_before;
    let requests = proxy.requests().await;
    let req_after = w.metric("mailsafe_store_requests_total{op=\"put\"}").await
        + w.metric("mailsafe_store_requests_total{op=\"get\"}").await
        + w.metric("mailsafe_store_requests_total{op=\"list\"}").await;
    println!("watch idle minute: {requests} S3 requests, {cpu:.2} CPU seconds");
    assert_eq!(requests, 0, "S3 requests while idle; log:\n{}", w.logs());
    assert_eq!(req_before, req_after);
    assert!(cpu < 0.5, "{cpu} CPU seconds while idle");

    // Still alive: the next change goes out.
    insert(&db, 11);
    // "Caught up" can be true before inotify has delivered the change, so
    // wait for the upload itself to reach S3.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proxy.requests().await == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        proxy.requests().await > 0,
        "no upload after a change; log:\n{}",
        w.logs()
    );
    w.wait_caught_up(Duration::from_secs(10)).await;
    w.stop(Duration::from_secs(30));
    assert_eq!(
        restored_rows(&s3, &url, &dir.path().join("restored.db")),
        11
    );
}

/// SeaweedFS itself is stopped for 10 s in the middle of a steady load (a
/// server of this test's own), then started again on the same ports and
/// data: the watcher keeps going, logs the outage once and the recovery
/// once (not a line per retry), catches up, and every committed row is
/// restorable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_stopped_mid_load_loses_nothing() {
    let own = common::OwnS3::start();
    let s3 = own.bucket("outage");
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("outage.db");
    let url = s3.url("outage");
    let db = create_db(&db_path);
    let mut w = Watcher::start(&s3, &s3.server.endpoint, &db_path, &url, &[]);
    w.wait_caught_up(Duration::from_secs(30)).await;

    // Rows keep coming from a thread while this one stops the server.
    let load = Duration::from_secs(16);
    let writer = {
        let path = db_path.clone();
        std::thread::spawn(move || {
            let db = create_db(&path);
            let start = Instant::now();
            let mut id = 0;
            while start.elapsed() < load {
                id += 1;
                insert(&db, id);
                std::thread::sleep(Duration::from_millis(50));
            }
            id
        })
    };
    drop(db);
    tokio::time::sleep(Duration::from_secs(3)).await;
    own.down();
    let down_at = Instant::now();
    // The store's own retries may span the whole outage (one snapshot
    // then takes 10 s or more) or give up (the loop's backoff takes over):
    // either way the replica falls behind.
    let mut max_lag: f64 = 0.0;
    while down_at.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        max_lag = max_lag.max(w.metric("mailsafe_replication_lag_seconds").await);
    }
    own.up();
    let id = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    assert!(
        max_lag > 3.0,
        "the replica never fell behind while S3 was down (lag {max_lag}); log:\n{}",
        w.logs()
    );
    w.wait_caught_up(Duration::from_secs(90)).await;
    let logs = w.stop(Duration::from_secs(30));
    let outages = logs.matches("retrying with backoff").count();
    let recoveries = logs.matches("reachable again").count();
    // A restarting server may fail once more while it warms up, but a
    // retry is never logged by itself.
    assert!(
        outages <= 3 && outages == recoveries,
        "each outage and recovery is logged once ({outages}, {recoveries}):\n{logs}"
    );
    assert_eq!(
        restored_rows(&s3, &url, &dir.path().join("restored.db")),
        id,
        "every committed row survives the outage"
    );
}

/// A second watcher on the same prefix (a rolling update: same volume, new
/// pod) does not write while the first runs, says why, and takes over once
/// the first shuts down; the replica holds one unbroken history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchers_on_one_prefix_never_interleave() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("shared.db");
    let url = s3.url("two");
    let db = create_db(&db_path);
    insert(&db, 1);
    let mut a = Watcher::start(&s3, &s3.server.endpoint, &db_path, &url, &[]);
    a.wait_caught_up(Duration::from_secs(30)).await;
    let mut b = Watcher::start(&s3, &s3.server.endpoint, &db_path, &url, &[]);
    let mut id = 1;
    for _ in 0..30 {
        id += 1;
        insert(&db, id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.wait_caught_up(Duration::from_secs(10)).await;
    assert!(
        b.logs().contains("is being written by another process"),
        "B must say who holds the replica:\n{}",
        b.logs()
    );
    assert_eq!(
        b.metric("mailsafe_snapshots_total{result=\"uploaded\"}")
            .await,
        0.0
    );
    assert_eq!(b.metric("mailsafe_lease_held").await, 0.0);

    // A goes away (rolling update); B takes over and uploads what follows.
    a.stop(Duration::from_secs(30));
    for _ in 0..10 {
        id += 1;
        insert(&db, id);
    }
    b.wait_caught_up(Duration::from_secs(20)).await;
    assert!(
        b.metric("mailsafe_snapshots_total{result=\"uploaded\"}")
            .await
            >= 1.0
    );
    assert_eq!(b.metric("mailsafe_lease_held").await, 1.0);
    b.stop(Duration::from_secs(30));

    // One history: each manifest's parent is the one before it.
    let replica = s3.store("two").await;
    let ms = manifests(replica.as_ref()).await;
    for pair in ms.windows(2) {
        assert_eq!(
            pair[1].parent.as_deref(),
            Some(pair[0].id.as_str()),
            "snapshot {} does not follow {}",
            pair[1].id,
            pair[0].id
        );
    }
    assert_eq!(
        restored_rows(&s3, &url, &dir.path().join("restored.db")),
        id
    );
}

/// The watcher may start before the database exists (the app creates it
/// later), and a SIGTERM before then exits 0 having uploaded nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_the_database_to_appear() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("later.db");
    let url = s3.url("later");
    let mut w = Watcher::start(&s3, &s3.server.endpoint, &db_path, &url, &[]);
    assert_eq!(
        w.metric("mailsafe_last_success_timestamp_seconds").await,
        0.0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = create_db(&db_path);
    for id in 1..=5 {
        insert(&db, id);
    }
    w.wait_caught_up(Duration::from_secs(20)).await;
    w.stop(Duration::from_secs(30));
    assert_eq!(restored_rows(&s3, &url, &dir.path().join("restored.db")), 5);

    let never = dir.path().join("never.db");
    let mut w2 = Watcher::start(&s3, &s3.server.endpoint, &never, &s3.url("never"), &[]);
    w2.metric("mailsafe_lease_held").await;
    w2.stop(Duration::from_secs(10));
    assert!(!never.exists());
}

/// A commit right before SIGTERM whose change signal has not reached the
/// loop yet (here: a 1 h poll interval, so it never would) still goes into
/// the final snapshot: at shutdown the watcher compares the db files with
/// what they were when its last snapshot started. Before this check it
/// exited 0 saying "everything committed is in the replica" without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_not_yet_signalled_at_sigterm_is_in_the_final_snapshot() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("late.db");
    let url = s3.url("late-signal");
    let db = create_db(&db_path);
    for id in 1..=3 {
        insert(&db, id);
    }
    let mut w = Watcher::start(
        &s3,
        &s3.server.endpoint,
        &db_path,
        &url,
        &["--poll-interval", "1h"],
    );
    // The start-up snapshot covers rows 1..=3.
    w.wait_caught_up(Duration::from_secs(20)).await;
    insert(&db, 4);
    let logs = w.stop(Duration::from_secs(30));
    let out = dir.path().join("restored.db");
    assert_eq!(restored_rows(&s3, &url, &out), 4, "{logs}");
}

/// The shutdown deadline holds whatever the store does: every S3 request
/// hangs (the proxy holds each for two minutes, longer than the SDK's read
/// timeout) while a snapshot is in flight and the lease still has to be
/// released; SIGTERM still ends the watcher within `--shutdown-timeout`,
/// with exit code 1 and the message saying what is not in the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hung_store_ends_within_the_shutdown_timeout() {
    let s3 = common::s3();
    let proxy = Proxy::start(&s3.server.endpoint, &[]);
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("hung.db");
    let url = s3.url("hung");
    let db = create_db(&db_path);
    insert(&db, 1);
    let timeout = Duration::from_secs(3);
    let mut w = Watcher::start(
        &s3,
        &proxy.endpoint,
        &db_path,
        &url,
        &["--shutdown-timeout", "3s"],
    );
    // Caught up: the lease is held, so shutdown will try to release it.
    w.wait_caught_up(Duration::from_secs(30)).await;
    proxy.latency(120_000).await;
    insert(&db, 2);
    // The snapshot of row 2 starts within the max delay and hangs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, logs) = w.term_within(timeout + Duration::from_millis(1500));
    assert_eq!(status.code(), Some(1), "log:\n{logs}");
    assert!(
        logs.contains("is NOT in the replica"),
        "the exit says what is missing; log:\n{logs}"
    );
    // What was uploaded before the hang is intact.
    proxy.latency(0).await;
    assert_eq!(restored_rows(&s3, &url, &dir.path().join("restored.db")), 1);
}

/// A snapshot reader stuck in SQLite's busy wait (another process holds an
/// exclusive lock on a rollback-journal db) runs on a blocking thread that
/// cannot be cancelled; it must not hold the process past the deadline
/// either (an async runtime waits for such threads when dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_another_process_locks_the_db_ends_in_time() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("locked.db");
    let url = s3.url("locked");
    let db = rusqlite::Connection::open(&db_path).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode = delete;
         CREATE TABLE t(id INTEGER PRIMARY KEY, at REAL NOT NULL, payload BLOB NOT NULL);",
    )
    .unwrap();
    insert(&db, 1);
    let timeout = Duration::from_secs(2);
    let mut w = Watcher::start(
        &s3,
        &s3.server.endpoint,
        &db_path,
        &url,
        &["--shutdown-timeout", "2s"],
    );
    w.wait_caught_up(Duration::from_secs(30)).await;
    // Holds the lock until the end of the test: the watcher's reader waits.
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    insert(&db, 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, logs) = w.term_within(timeout + Duration::from_millis(1200));
    assert_eq!(
        status.code(),
        Some(1),
        "row 2 could not be read; log:\n{logs}"
    );
    assert!(logs.contains("is NOT in the replica"), "log:\n{logs}");
    db.execute_batch("COMMIT").unwrap();
}

/// Records each manifest not seen before: its `created` time and when this
/// poll first saw it (unix seconds).
async fn poll_manifests(
    replica: &mailsafe::store::DynStore,
    seen: &mut std::collections::BTreeMap<String, (f64, f64)>,
) {
    for m in replica.list("manifests/").await.unwrap() {
        let id = m
            .key
            .trim_start_matches("manifests/")
            .trim_end_matches(".json")
            .to_string();
        if seen.contains_key(&id) {
            continue;
        }
        let at = unix_now();
        let body = replica.get(&m.key).await.unwrap();
        let man = mailsafe::format::Manifest::from_json(&m.key, &body).unwrap();
        let created = man.created.timestamp_micros() as f64 / 1e6;
        seen.insert(id, (created, at));
    }
}

/// SIGTERM at random moments of a steady load, a bounded number of times:
/// each watcher ends within its shutdown timeout with exit 0, and the
/// replica then holds every row committed before the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_random_moments_flushes_everything_in_time() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("random.db");
    let url = s3.url("random");
    let db = create_db(&db_path);
    let timeout = Duration::from_secs(5);
    let mut rng = common::seeded_rng("sigterm_at_random_moments_flushes_everything_in_time");
    let mut id = 0;
    for round in 0..8 {
        let mut w = Watcher::start(
            &s3,
            &s3.server.endpoint,
            &db_path,
            &url,
            &["--shutdown-timeout", "5s"],
        );
        wait_for_sigterm_handler(w.child.id(), Duration::from_secs(30));
        // Anywhere from right after start-up to well into the load.
        let delay = Duration::from_millis(rng.random_range(0..2000));
        let start = Instant::now();
        while start.elapsed() < delay {
            id += 1;
            insert(&db, id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = Instant::now();
        w.term();
        let status = w.wait(Duration::from_secs(60));
        let took = t.elapsed();
        assert!(
            took < timeout + Duration::from_secs(1),
            "round {round} (SIGTERM {delay:?} after start): exit took {took:?}; log:\n{}",
            w.logs()
        );
        assert!(
            status.success(),
            "round {round} (SIGTERM {delay:?} after start): {status:?}; log:\n{}",
            w.logs()
        );
        if id > 0 {
            assert_eq!(
                restored_rows(&s3, &url, &dir.path().join(format!("restored{round}.db"))),
                id,
                "round {round}: rows committed before SIGTERM"
            );
        }
    }
}

/// Retention where the writes are: `watch` applies `--keep-*` and GC in
/// process on an interval, so the replica stays bounded without a prune
/// job, and the newest snapshot always restores every committed row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_applies_retention_in_process() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("thin.db");
    let url = s3.url("thin");
    let db = create_db(&db_path);
    let mut w = Watcher::start(
        &s3,
        &s3.server.endpoint,
        &db_path,
        &url,
        &[
            "--retention-interval",
            "1s",
            "--keep-last",
            "2",
            "--gc-grace",
            "0s",
        ],
    );
    let replica = s3.store("thin").await;
    // Eight separate snapshots: one row, then wait until it is uploaded.
    for id in 1..=8 {
        insert(&db, id);
        w.wait_caught_up(Duration::from_secs(30)).await;
    }
    // Retention runs within about a second of new snapshots; wait for it
    // (a condition, bounded) to bring the replica down to --keep-last 2.
    let start = Instant::now();
    loop {
        let n = replica.list("manifests/").await.unwrap().len();
        if n <= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{n} manifests left; log:\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(w.logs().contains("retention and garbage collection done"));
    w.stop(Duration::from_secs(30));
    assert_eq!(restored_rows(&s3, &url, &dir.path().join("restored.db")), 8);
}

/// `/healthz` says what failed in words anyone who reaches the port may
/// read; the bucket, prefix and endpoint go to the log only. The store's
/// endpoint is a closed port, so every attempt fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_what_failed_but_not_the_bucket_or_endpoint() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("app.db");
    let db = create_db(&db_path);
    insert(&db, 1);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let url = s3.url("healthz-words");
    let w = Watcher::start(&s3, &dead, &db_path, &url, &["--health-max-lag", "1s"]);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let body = loop {
        // Failing on lag alone comes first ("last error: none" while the
        // first attempt is still retrying); wait for the recorded failure.
        if let Ok(r) = client.get(format!("{}/healthz", w.http)).send().await
            && r.status() != 200
        {
            let body = r.text().await.unwrap();
            if !body.contains("last error: none") {
                break body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never failed; log:\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        body.contains("uploading a snapshot to the replica failed"),
        "{body}"
    );
    let port = dead.rsplit(':').next().unwrap();
    for detail in [s3.bucket.as_str(), "healthz-words", port] {
        assert!(!body.contains(detail), "{detail} in {body}");
    }
    let logs = w.logs();
    for detail in [s3.bucket.as_str(), "healthz-words", port] {
        assert!(logs.contains(detail), "{detail} not in the log:\n{logs}");
    }
    // The final flush cannot succeed either; the drop kills the process.
    drop(w);
}
