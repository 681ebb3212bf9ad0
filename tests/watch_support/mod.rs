//! Helpers of the watch, cron and retention tests: a `mailsafe watch` child
//! process, a row-writing workload whose rows prove what a restore holds, the
//! metering proxy (re-exported from tests/common), and direct reads of the
//! replica.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mailsafe::format::{self, Manifest};
use mailsafe::store::ObjectStore;
use rusqlite::Connection;

use crate::common::{S3, free_port};

/// Seconds since the Unix epoch, as a float.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A WAL database with table `t(id, at, payload)` at `path`.
pub fn create_db(path: &Path) -> Connection {
    let db = Connection::open(path).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode = wal;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, at REAL NOT NULL, payload BLOB NOT NULL);",
    )
    .unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db
}

/// Commits row `id` and returns when (unix seconds) the commit returned.
pub fn insert(db: &Connection, id: i64) -> f64 {
    let payload: Vec<u8> = (0..300)
        .map(|i| (id as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    db.execute(
        "INSERT INTO t(id, at, payload) VALUES (?1, ?2, ?3)",
        rusqlite::params![id, unix_now(), payload],
    )
    .unwrap();
    unix_now()
}

/// The ids in a (restored) database, checking that they are exactly 1..=n.
pub fn row_ids(path: &Path) -> i64 {
    let db = Connection::open(path).unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{}", path.display());
    let (n, max): (i64, Option<i64>) = db
        .query_row("SELECT count(*), max(id) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(Some(n).filter(|n| *n > 0), max, "rows are not 1..=n");
    n
}

/// Every manifest in the replica, by id (sorted = by time).
pub async fn manifests(store: &dyn ObjectStore) -> Vec<Manifest> {
    let mut out = Vec::new();
    for m in store.list(format::MANIFESTS).await.unwrap() {
        let body = store.get(&m.key).await.unwrap();
        out.push(Manifest::from_json(&m.key, &body).unwrap());
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// A running `mailsafe watch` (or `cron`); killed on drop if still running.
pub struct Watcher {
    pub child: Child,
    /// Its stderr (logs), written to this file.
    pub log: PathBuf,
    /// `http://127.0.0.1:PORT` of `/metrics` and `/healthz`.
    pub http: String,
}

impl Watcher {
    /// Starts `mailsafe watch` on `db` into `url`, S3 reached at `endpoint`.
    pub fn start(s3: &S3, endpoint: &str, db: &Path, url: &str, extra: &[&str]) -> Watcher {
        let mut cmd = s3.mailsafe();
        cmd.env("AWS_ENDPOINT_URL", endpoint);
        Self::start_with(cmd, db, url, extra)
    }

    /// Starts `cmd` (the `mailsafe` binary with the environment of some
    /// store, e.g. Azurite's) as `watch` on `db` into `url`.
    pub fn start_with(mut cmd: Command, db: &Path, url: &str, extra: &[&str]) -> Watcher {
        let port = free_port();
        let log = db.with_extension(format!("watch-{port}.log"));
        cmd.env("MAILSAFE_LOG", "mailsafe=debug,info")
            .args(["watch", "--db"])
            .arg(db)
            .args(["--replica", url, "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start mailsafe watch");
        Watcher {
            child,
            log,
            http: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Starts `mailsafe cron` on `db` into `url`, S3 reached at `endpoint`
    /// (`extra` says `--once` or `--schedule`), serving `/metrics` and
    /// `/healthz` on `http` as `watch` does.
    pub fn cron(s3: &S3, endpoint: &str, db: &Path, url: &str, extra: &[&str]) -> Watcher {
        let port = free_port();
        let log = db.with_extension(format!("cron-{port}.log"));
        let mut cmd = s3.mailsafe();
        cmd.env("AWS_ENDPOINT_URL", endpoint)
            .env("MAILSAFE_LOG", "mailsafe=debug,info")
            .args(["cron", "--db"])
            .arg(db)
            .args(["--replica", url, "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start mailsafe cron");
        Watcher {
            child,
            log,
            http: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn term(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {}", self.child.id());
    }

    /// SIGTERM, then waits (at most `limit`) for exit 0, failing the test
    /// with the log otherwise; returns the log.
    pub fn stop(&mut self, limit: Duration) -> String {
        self.term();
        let status = self.wait(limit);
        let logs = self.logs();
        assert!(status.success(), "exit {status:?}; log:\n{logs}");
        logs
    }

    /// SIGTERM, then asserts the process exits within `limit` (its
    /// shutdown timeout plus some slack); returns its status and log.
    pub fn term_within(&mut self, limit: Duration) -> (ExitStatus, String) {
        let t = Instant::now();
        self.term();
        let status = self.wait(limit + Duration::from_secs(60));
        let took = t.elapsed();
        let logs = self.logs();
        assert!(
            took < limit,
            "SIGTERM to exit took {took:?}, more than {limit:?}; log:\n{logs}"
        );
        (status, logs)
    }

    /// Waits for exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < limit,
                "watcher did not exit within {limit:?}; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/metrics` as (name{labels} → value).
    pub async fn metrics(&self) -> Option<std::collections::BTreeMap<String, f64>> {
        let text = reqwest::get(format!("{}/metrics", self.http))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// One metric, waiting for the server to be up.
    pub async fn metric(&self, name: &str) -> f64 {
        for _ in 0..100 {
            if let Some(m) = self.metrics().await {
                return *m.get(name).unwrap_or_else(|| panic!("no metric {name}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("metrics server never answered; log:\n{}", self.logs());
    }

    /// Waits until the replica holds everything seen (lag 0 after at least
    /// one uploaded snapshot), at most `limit`.
    pub async fn wait_caught_up(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let lag = self.metric("mailsafe_replication_lag_seconds").await;
            let ok = self.metric("mailsafe_last_success_timestamp_seconds").await;
            if lag == 0.0 && ok > 0.0 {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "not caught up within {limit:?} (lag {lag}); log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// CPU seconds (user + system) the process has used.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime), counted after the comm.
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Restores the newest snapshot of `url` into `out` with the binary.
pub fn restore(s3: &S3, url: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    s3.mailsafe()
        .args(["restore", "--db"])
        .arg(out)
        .args(["--replica", url, "--integrity-check", "full"])
        .args(extra)
        .output()
        .unwrap()
}

/// Restores the newest snapshot of `url` into `out` (which must succeed)
/// and returns its row count, checked to be rows 1..=n.
pub fn restored_rows(s3: &S3, url: &str, out: &Path) -> i64 {
    let r = restore(s3, url, out, &[]);
    assert!(
        r.status.success(),
        "restore of {url}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    row_ids(out)
}

#[allow(unused_imports)] // not every test binary meters requests
pub use crate::common::proxy::Proxy;

/// The p-th percentile (0..=100) of `xs` (sorted in place).
pub fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if xs.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (xs.len() - 1) as f64).round() as usize;
    xs[i]
}

/// Waits until process `pid` catches SIGTERM (its handler is installed, per
/// `SigCgt` in /proc), so a test's SIGTERM tests the shutdown path and not
/// the default action of a process still starting.
pub fn wait_for_sigterm_handler(pid: u32, limit: Duration) {
    let start = Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        // Signal n is bit n-1; SIGTERM is 15.
        if caught & (1 << 14) != 0 {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "process {pid} installed no SIGTERM handler within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
