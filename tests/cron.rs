//! `mailsafe cron` shutdown against a real S3 (SeaweedFS behind the fault
//! proxy): SIGTERM while a round is in flight on a hung store still ends the
//! process within `--shutdown-timeout`, saying what was not done; on a slow
//! store the round's snapshot finishes and retention is left for the next
//! round; SIGTERM between rounds ends it at once. Every check ends in a real
//! `mailsafe restore` whose rows are counted.

mod common;
mod watch_support;

use std::time::{Duration, Instant};

use watch_support::*;

/// Runs `mailsafe snapshot` of `db` into `url` (straight to SeaweedFS).
fn snapshot(s3: &common::S3, db: &std::path::Path, url: &str) {
    common::run_ok(
        s3.mailsafe()
            .args(["snapshot", "--db"])
            .arg(db)
            .args(["--replica", url]),
    );
}

/// `cron --schedule`: a SIGTERM between rounds exits 0 at once; a SIGTERM
/// while the scheduled round hangs on the store (every request held for two
/// minutes) exits 1 within the shutdown timeout, naming the db and saying
/// the snapshot is not in the replica. What was uploaded before is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_hung_scheduled_round_ends_within_the_shutdown_timeout() {
    let s3 = common::s3();
    let proxy = Proxy::start(&s3.server.endpoint, &[]);
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("hung.db");
    let url = s3.url("cron-hung");
    let db = create_db(&db_path);
    insert(&db, 1);
    snapshot(&s3, &db_path, &url);
    insert(&db, 2);
    let args = ["--schedule", "* * * * *", "--shutdown-timeout", "3s"];

    // Between rounds: nothing in flight, nothing undone.
    let mut idle = Watcher::cron(&s3, &proxy.endpoint, &db_path, &url, &args);
    wait_for_sigterm_handler(idle.child.id(), Duration::from_secs(10));
    let t = Instant::now();
    idle.stop(Duration::from_secs(10));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "an idle cron took {:?} to stop; log:\n{}",
        t.elapsed(),
        idle.logs()
    );

    let timeout = Duration::from_secs(3);
    let mut c = Watcher::cron(&s3, &proxy.endpoint, &db_path, &url, &args);
    wait_for_sigterm_handler(c.child.id(), Duration::from_secs(10));
    proxy.latency(120_000).await;
    // The round starts at the next full minute; signal a second into it.
    let now = unix_now();
    let next_minute = (now / 60.0).floor() * 60.0 + 60.0;
    tokio::time::sleep(Duration::from_secs_f64(next_minute - now + 1.0)).await;
    let (status, logs) = c.term_within(timeout + Duration::from_millis(1500));
    assert_eq!(status.code(), Some(1), "log:\n{logs}");
    assert!(
        logs.contains("was NOT uploaded") && logs.contains("hung.db"),
        "the exit says what was not done, naming the db; log:\n{logs}"
    );

    proxy.latency(0).await;
    assert_eq!(restored_rows(&s3, &url, &dir.path().join("restored.db")), 1);
}

/// `cron --once` on a slow store (every request delayed): a SIGTERM during
/// the round lets its snapshot finish and skips retention (so nothing is
/// forgotten although `--keep-last 1` asks for it), says so, and exits 0;
/// the snapshot restores with every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_round_finishes_the_snapshot_and_skips_retention() {
    let s3 = common::s3();
    let proxy = Proxy::start(&s3.server.endpoint, &[]);
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("slow.db");
    let url = s3.url("cron-slow");
    let replica = s3.store("cron-slow").await;
    let db = create_db(&db_path);
    for id in 1..=2 {
        insert(&db, id);
        snapshot(&s3, &db_path, &url);
    }
    insert(&db, 3);
    let before = manifests(replica.as_ref()).await.len();
    assert_eq!(before, 2);

    proxy.latency(400).await;
    let mut c = Watcher::cron(
        &s3,
        &proxy.endpoint,
        &db_path,
        &url,
        &[
            "--once",
            "--keep-last",
            "1",
            "--gc-grace",
            "0s",
            "--shutdown-timeout",
            "20s",
        ],
    );
    wait_for_sigterm_handler(c.child.id(), Duration::from_secs(10));
    // The first request of the round (the lease) is still held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.term();
    let status = c.wait(Duration::from_secs(30));
    let logs = c.logs();
    assert!(status.success(), "log:\n{logs}");
    assert!(
        logs.contains("snapshot uploaded")
            && logs.contains("retention and garbage collection not applied"),
        "the snapshot finished and retention was left for later; log:\n{logs}"
    );
    assert!(
        !logs.contains("retention and garbage collection done"),
        "log:\n{logs}"
    );
    proxy.latency(0).await;
    assert_eq!(
        manifests(replica.as_ref()).await.len(),
        before + 1,
        "one snapshot added, none forgotten"
    );
    assert_eq!(restored_rows(&s3, &url, &dir.path().join("restored.db")), 3);
}
