//! History order is snapshot id order, whatever the clock says: snapshots,
//! `cron --once`, `watch` and `prune` run with the wall clock stepped back
//! and forward (Debian's `faketime`, monotonic time left alone) and every
//! committed row must still restore. Scenario 1 of issue 12: snapshots 1
//! and 2, snapshot 3 two hours behind, `prune --keep-last 1`: the restore
//! must give snapshot 3's rows, not snapshot 2's.
//!
//! The replica is a `file://` directory: S3 request signing rejects a
//! skewed clock, and the point here is the engine's order, not the S3 path.

mod common;
mod watch_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailsafe::format::Manifest;
use mailsafe::store::fs::FsStore;
use watch_support::*;

/// Debian's libfaketime (package `faketime`, installed by scripts/setup.sh).
/// Preloaded directly rather than through the `faketime` wrapper, which
/// does not pass SIGTERM on to the program it runs.
fn libfaketime() -> std::path::PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .chain([std::path::PathBuf::from(
            "/usr/lib/faketime/libfaketime.so.1",
        )])
        .find(|p| p.exists());
    found.expect("libfaketime.so.1 not found under /usr/lib: install faketime (scripts/setup.sh)")
}

/// `mailsafe` with the wall clock shifted by `offset` (a faketime offset
/// such as `-2h`; `None` runs on the real clock). Monotonic time is left
/// alone, as on a host whose wall clock is wrong.
fn mailsafe_at(offset: Option<&str>) -> Command {
    let mut cmd = common::mailsafe();
    if let Some(off) = offset {
        cmd.env("LD_PRELOAD", libfaketime())
            .env("FAKETIME", off)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_DONT_RESET", "1");
    }
    cmd.env_remove("MAILSAFE_ENCRYPTION_KEY");
    cmd
}

/// One `mailsafe snapshot` of `db` into `url` at clock `offset`.
fn snapshot_at(offset: Option<&str>, db: &Path, url: &str) {
    common::run_ok(
        mailsafe_at(offset)
            .args(["snapshot", "--db"])
            .arg(db)
            .args(["--replica", url]),
    );
}

/// One `mailsafe cron --once --keep-last 1 --json` round at clock `offset`
/// after a commit: it reports its new snapshot as the one kept, and its
/// history before it as forgotten.
fn cron_once_at(offset: Option<&str>, db: &Path, url: &str) {
    let out = common::run_ok(
        mailsafe_at(offset)
            .args([
                "cron",
                "--once",
                "--json",
                "--keep-last",
                "1",
                "--gc-grace",
                "0s",
                "--db",
            ])
            .arg(db)
            .args(["--replica", url]),
    );
    let round: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = round["snapshot"]["id"].as_str().expect("a new snapshot");
    let prune = &round["prune"];
    assert_eq!(prune["snapshots"][0]["id"], id, "{round}");
    assert!(
        !prune["forgotten"].as_array().unwrap().is_empty(),
        "{round}"
    );
}

/// `mailsafe prune` on the real clock; returns its JSON report.
fn prune(url: &str, args: &[&str]) -> serde_json::Value {
    let out = common::run_ok(
        mailsafe_at(None)
            .args(["prune", "--replica", url, "--json", "--gc-grace", "0s"])
            .args(args),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Restores the newest snapshot (real clock) into a fresh file of `dir`;
/// returns its row count (checked to be rows 1..=n).
fn restored(dir: &Path, url: &str) -> i64 {
    let out = dir.join(format!("restored-{}.db", rand::random::<u32>()));
    common::run_ok(
        mailsafe_at(None)
            .args(["restore", "--integrity-check", "full", "--db"])
            .arg(&out)
            .args(["--replica", url]),
    );
    row_ids(&out)
}

fn insert_until(db: &rusqlite::Connection, from: i64, to: i64) {
    for id in from..=to {
        insert(db, id);
    }
}

/// Every manifest of the replica, in id (history) order.
async fn manifests_of(replica: &Path) -> Vec<Manifest> {
    manifests(&FsStore::new(replica)).await
}

/// A source db (WAL) and a `file://` replica in one temp dir.
struct Fixture {
    dir: tempfile::TempDir,
    replica: std::path::PathBuf,
    url: String,
    db_path: std::path::PathBuf,
    db: rusqlite::Connection,
    /// Rows committed so far (ids 1..=rows).
    rows: i64,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let replica = dir.path().join("replica");
        let url = format!("file://{}", replica.display());
        let db_path = dir.path().join("src.db");
        let db = create_db(&db_path);
        Fixture {
            dir,
            replica,
            url,
            db_path,
            db,
            rows: 0,
        }
    }

    /// Commits 10 more rows.
    fn commit(&mut self) {
        insert_until(&self.db, self.rows + 1, self.rows + 10);
        self.rows += 10;
    }

    /// For each clock offset: commits 10 rows, then takes a snapshot at it.
    fn snapshots_at(&mut self, offsets: &[Option<&str>]) {
        for off in offsets {
            self.commit();
            snapshot_at(*off, &self.db_path, &self.url);
        }
    }

    /// Rows of a restore of the newest snapshot.
    fn restored(&self) -> i64 {
        restored(self.dir.path(), &self.url)
    }
}

#[tokio::test]
async fn a_lagging_clock_does_not_lose_the_head_to_prune() {
    let mut f = Fixture::new();
    f.snapshots_at(&[None, None, Some("-2h")]);
    let ms = manifests_of(&f.replica).await;
    assert_eq!(ms.len(), 3);
    assert!(
        ms[2].created < ms[1].created,
        "faketime did not step the clock back: {} vs {}",
        ms[2].created,
        ms[1].created
    );

    let report = prune(&f.url, &["--keep-last", "1"]);
    assert_eq!(report["snapshots"][0]["id"], ms[2].id.as_str(), "{report}");
    assert_eq!(f.restored(), 30, "{report}");
    // The head is kept, the lagging one is not mistaken for the oldest.
    let left: Vec<String> = manifests_of(&f.replica)
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert!(left.contains(&ms[2].id), "{left:?}");
    assert!(!left.contains(&ms[1].id), "{left:?}");
}

#[tokio::test]
async fn a_clock_stepped_forward_then_back_keeps_history_order() {
    let mut f = Fixture::new();
    f.snapshots_at(&[Some("+2h"), None, None]);
    let ms = manifests_of(&f.replica).await;
    assert!(ms[0].created > ms[2].created, "faketime +2h had no effect");
    assert_eq!(f.restored(), 30);
    prune(&f.url, &["--keep-last", "1"]);
    assert_eq!(f.restored(), 30);
    // Hourly buckets use `created` clamped along id order: every snapshot
    // after the +2h one falls in its hour or later, and the head stands
    // for them.
    f.snapshots_at(&[Some("-1h")]);
    prune(&f.url, &["--keep-hourly", "1"]);
    assert_eq!(f.restored(), 40);
}

#[tokio::test]
async fn cron_and_watch_under_skewed_clocks_lose_no_commit() {
    let mut f = Fixture::new();
    f.snapshots_at(&[None]);

    // A cron round on a node 2 hours behind, pruning to one snapshot.
    f.commit();
    cron_once_at(Some("-2h"), &f.db_path, &f.url);
    assert_eq!(f.restored(), 20);

    // A watch sidecar on a node 3 hours ahead.
    let log = f.dir.path().join("watch.log");
    let child = mailsafe_at(Some("+3h"))
        .env("MAILSAFE_LOG", "mailsafe=debug,info")
        .args(["watch", "--debounce", "50ms", "--db"])
        .arg(&f.db_path)
        .args(["--replica", &f.url])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut watcher = Watcher {
        child,
        log,
        http: String::new(),
    };
    f.commit();
    let limit = Duration::from_secs(60);
    let start = Instant::now();
    loop {
        let ms = manifests_of(&f.replica).await;
        let head = ms.last().expect("a snapshot");
        if head.created > chrono::Utc::now() + chrono::Duration::hours(2) && f.restored() == 30 {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "watch did not back up rows 21..=30 within {limit:?}; log:\n{}",
            watcher.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watcher.stop(Duration::from_secs(60));

    // Back on the real clock, cron prunes to one snapshot again: the head
    // is its own new snapshot, not the watcher's future-dated one.
    f.commit();
    cron_once_at(None, &f.db_path, &f.url);
    assert_eq!(f.restored(), 40);
}
