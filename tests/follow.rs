//! `mailsafe restore --follow` against a real S3 (SeaweedFS): a read-only
//! copy that follows the replica, read all along by a process-external
//! reader that must only ever see whole snapshots.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// Rows in the copy at `path`, checked by SQLite first; `None` while there
/// is no copy yet.
fn read_copy(path: &Path) -> Option<Result<i64, String>> {
    if !path.exists() {
        return None;
    }
    let run = || -> rusqlite::Result<i64> {
        let c = Connection::open(path)?;
        // Two readers may open the copy at once (recovery of a WAL index
        // is exclusive for a moment): wait rather than fail.
        c.busy_timeout(Duration::from_secs(10))?;
        let check: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(rusqlite::Error::InvalidQuery);
        }
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
    };
    Some(run().map_err(|e| e.to_string()))
}

/// Waits (bounded) until the copy holds `rows` rows.
fn wait_rows(path: &Path, rows: i64, follower: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(Ok(n)) = read_copy(path)
            && n == rows
        {
            return;
        }
        assert!(
            follower.try_wait().unwrap().is_none(),
            "the follower exited:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "copy never reached {rows} rows:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn follow_installs_each_new_snapshot_whole_and_stops_on_sigterm() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=wal; CREATE TABLE t(x, pad);")
        .unwrap();
    let url = s3.url("follow");
    let add_and_snapshot = |n: i64| {
        for i in 0..n {
            conn.execute("INSERT INTO t VALUES (?1, randomblob(2000))", [i])
                .unwrap();
        }
        common::run_ok(
            s3.mailsafe()
                .arg("snapshot")
                .arg("--db")
                .arg(&db)
                .args(["--replica", &url]),
        );
    };
    add_and_snapshot(10);

    let copies = dir.path().join("copy");
    std::fs::create_dir(&copies).unwrap();
    let copy = copies.join("reports.db");
    // A database of the user's at the target is not replaced without --force.
    std::fs::write(&copy, b"").unwrap();
    Connection::open(&copy)
        .unwrap()
        .execute_batch("CREATE TABLE mine(x)")
        .unwrap();
    let out = s3
        .mailsafe()
        .args(["restore", "--follow", "--replica", &url, "--db"])
        .arg(&copy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    std::fs::remove_file(&copy).unwrap();

    let log = dir.path().join("follow.log");
    let mut follower = s3
        .mailsafe()
        .args([
            "restore",
            "--follow",
            "--follow-interval",
            "100ms",
            "--replica",
            &url,
            "--db",
        ])
        .arg(&copy)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_rows(&copy, 10, &mut follower, &log);

    // A reader opening the copy over and over while snapshots are swapped in.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (copy, stop) = (copy.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Some(r) = read_copy(&copy) {
                    seen.push(r);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    for round in 2..=4 {
        add_and_snapshot(10);
        wait_rows(&copy, 10 * round, &mut follower, &log);
    }
    stop.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    let counts: Vec<i64> = seen
        .iter()
        .map(|r| {
            r.clone()
                .unwrap_or_else(|e| panic!("a reader saw a broken copy: {e}"))
        })
        .collect();
    assert!(!counts.is_empty());
    assert!(
        counts.iter().all(|n| [10, 20, 30, 40].contains(n)),
        "{counts:?}"
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "went back: {counts:?}"
    );

    // SIGTERM: exit 0, no temp file left beside the copy.
    unsafe { libc::kill(follower.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = follower.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "follower ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let logs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert_eq!(
        logs.matches("following: snapshot installed").count(),
        4,
        "{logs}"
    );
    for entry in std::fs::read_dir(&copies).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            ["reports.db", "reports.db-wal", "reports.db-shm"].contains(&name.as_str()),
            "left behind: {name}"
        );
    }
}
