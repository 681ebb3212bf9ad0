//! `mailsafe watch --exec` against a real S3 (SeaweedFS), with a real app as
//! its child: a Python script that writes rows with the `sqlite3` module.
//! Rows the app writes, also the last ones written on SIGTERM, are in the
//! replica after it exits; mailsafe exits with the app's code; and
//! `--restore-if-db-not-exists` restores before the app starts.

mod common;
mod watch_support;

use std::path::Path;
use std::time::{Duration, Instant};

use watch_support::*;

/// The app: `app.py DB ROWS READY CODE MODE` appends ROWS rows after the
/// highest id in DB (table `t` of watch_support), writes that starting id
/// to READY, then exits with CODE at once (`exit`) or after one more row
/// written once SIGTERM arrives (`wait`). SIGTERM is blocked from the start
/// and taken with sigwait, so one sent early is not lost.
const APP: &str = r#"
import signal, sqlite3, sys, time
db, rows, ready, code, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode=wal")
conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, at REAL NOT NULL, payload BLOB NOT NULL)")
start = conn.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
def row(i):
    conn.execute("INSERT INTO t(id, at, payload) VALUES (?, ?, ?)", (i, time.time(), bytes(300)))
for i in range(start + 1, start + rows + 1):
    row(i)
with open(ready + ".tmp", "w") as f:
    f.write(str(start))
import os; os.rename(ready + ".tmp", ready)
if mode == "wait":
    signal.sigwait({signal.SIGTERM})
    row(start + rows + 1)
conn.close()
sys.exit(code)
"#;

/// The `--exec` command line running [`APP`] (paths quoted, as a user
/// would write them).
fn app_command(dir: &Path, db: &Path, rows: u32, ready: &Path, code: u8, mode: &str) -> String {
    let script = dir.join("app.py");
    std::fs::write(&script, APP).unwrap();
    format!(
        "python3 '{}' '{}' {rows} '{}' {code} {mode}",
        script.display(),
        db.display(),
        ready.display()
    )
}

/// Waits (bounded) until the app has written its rows; returns the id it
/// started after.
fn wait_ready(w: &Watcher, ready: &Path) -> i64 {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(ready) {
            return s.trim().parse().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the app never became ready; log:\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to mailsafe reaches the app (which writes one more row on it);
/// the final snapshot comes after the app exited, so that row is in the
/// replica; and mailsafe exits with the app's code (7).
#[test]
fn sigterm_reaches_the_app_and_its_code_passes_through() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let ready = dir.path().join("ready");
    let url = s3.url("exec");
    let cmd = app_command(dir.path(), &db, 50, &ready, 7, "wait");
    let mut w = Watcher::start(&s3, &s3.server.endpoint, &db, &url, &["--exec", &cmd]);
    assert_eq!(wait_ready(&w, &ready), 0);
    wait_for_sigterm_handler(w.child.id(), Duration::from_secs(30));
    w.term();
    let status = w.wait(Duration::from_secs(90));
    let logs = w.logs();
    assert_eq!(status.code(), Some(7), "log:\n{logs}");
    assert!(logs.contains("passing it on to the app"), "{logs}");
    assert_eq!(
        restored_rows(&s3, &url, &dir.path().join("restored.db")),
        51,
        "the row written on SIGTERM, after 50; log:\n{logs}"
    );
}

/// An app that ends by itself ends mailsafe, with its code and its rows in
/// the replica (exit 0 here). A second run on an empty volume with
/// `--restore-if-db-not-exists` starts the app only once the replica's
/// rows are in place (it starts after id 20), and passes its code 3 on.
#[test]
fn app_exit_ends_watch_and_restore_comes_before_the_app() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let url = s3.url("exec2");

    let db = dir.path().join("first.db");
    let ready = dir.path().join("ready1");
    let cmd = app_command(dir.path(), &db, 20, &ready, 0, "exit");
    let mut w = Watcher::start(&s3, &s3.server.endpoint, &db, &url, &["--exec", &cmd]);
    let status = w.wait(Duration::from_secs(90));
    assert_eq!(status.code(), Some(0), "log:\n{}", w.logs());
    assert_eq!(restored_rows(&s3, &url, &dir.path().join("r1.db")), 20);

    let volume = dir.path().join("new-volume");
    std::fs::create_dir(&volume).unwrap();
    let db = volume.join("app.db");
    let ready = dir.path().join("ready2");
    let cmd = app_command(dir.path(), &db, 10, &ready, 3, "exit");
    let mut w = Watcher::start(
        &s3,
        &s3.server.endpoint,
        &db,
        &url,
        &["--restore-if-db-not-exists", "--exec", &cmd],
    );
    let status = w.wait(Duration::from_secs(90));
    let logs = w.logs();
    assert_eq!(status.code(), Some(3), "log:\n{logs}");
    assert_eq!(std::fs::read_to_string(&ready).unwrap(), "20", "{logs}");
    assert_eq!(restored_rows(&s3, &url, &dir.path().join("r2.db")), 30);
}

/// A command line that does not split is a usage error (2) before anything
/// starts; a program that does not exist is an error (1) naming it.
#[test]
fn bad_exec_commands_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let replica = format!("file://{}", dir.path().join("replica").display());
    let run = |exec: &str| {
        common::mailsafe()
            .args(["watch", "--db"])
            .arg(&db)
            .args(["--replica", &replica, "--exec", exec])
            .output()
            .unwrap()
    };
    let out = run("app 'unclosed");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run("/nonexistent/app --flag");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/app"), "{err}");
}
