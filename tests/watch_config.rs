//! `mailsafe watch --config FILE` against a real S3 (SeaweedFS): two dbs,
//! one of them with two replicas of which one points at a dead endpoint. The
//! live replicas keep snapshotting while the dead one fails (each pair has
//! its own loop), `/metrics` labels every pair, and `restore --config`
//! picks a named replica or the first with the newest snapshot. A bad file
//! is refused before anything starts, naming the file, key and line.

mod common;
mod watch_support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::free_port;
use watch_support::*;

/// Starts `mailsafe watch --config FILE` with `/metrics` on a free port.
fn start(s3: &common::S3, config: &Path, env: &[(&str, &str)], extra: &[&str]) -> Watcher {
    let port = free_port();
    let log = config.with_extension(format!("watch-{port}.log"));
    let mut cmd = s3.mailsafe();
    cmd.env("MAILSAFE_LOG", "mailsafe=debug,info")
        .args(["watch", "--config"])
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    Watcher {
        child: cmd.spawn().expect("start mailsafe watch"),
        log,
        http: format!("http://127.0.0.1:{port}"),
    }
}

/// `{db="DB",replica="NAME"}` of one pair.
fn labels(db: &Path, replica: &str) -> String {
    format!("{{db=\"{}\",replica=\"{replica}\"}}", db.display())
}

/// Waits (bounded) until the pair's replica holds every change seen: lag 0
/// after a success that came after `since` (unix seconds).
async fn wait_pair_caught_up(w: &Watcher, db: &Path, replica: &str, since: f64) {
    let l = labels(db, replica);
    let lag = format!("mailsafe_replication_lag_seconds{l}");
    let ok = format!("mailsafe_last_success_timestamp_seconds{l}");
    wait_metrics(w, &format!("{l} caught up"), |m| {
        m.get(&lag) == Some(&0.0) && m.get(&ok).is_some_and(|t| *t >= since)
    })
    .await;
}

/// Waits (bounded by 60 s) until `cond` holds of `/metrics`; `what` says
/// what for in the failure.
async fn wait_metrics(
    w: &Watcher,
    what: &str,
    cond: impl Fn(&std::collections::BTreeMap<String, f64>) -> bool,
) {
    let start = Instant::now();
    loop {
        if w.metrics().await.is_some_and(|m| cond(&m)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: not within 60 s; log:\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `restore --config FILE --db DB -o OUT [--replica NAME]` with the
/// file's `$BUCKET`; must succeed.
fn restore_through(
    s3: &common::S3,
    config: &Path,
    db: &Path,
    out: &Path,
    replica: Option<&str>,
) -> std::process::Output {
    let mut cmd = s3.mailsafe();
    cmd.env("BUCKET", &s3.bucket)
        .args(["restore", "--config"])
        .arg(config)
        .arg("--db")
        .arg(db)
        .arg("-o")
        .arg(out);
    if let Some(r) = replica {
        cmd.args(["--replica", r]);
    }
    common::run_ok(&mut cmd)
}

/// Two dbs, three replicas, one of them dead: the live ones keep taking
/// snapshots round after round while the dead one only counts errors;
/// every pair is labelled; at SIGTERM the dead one's final snapshot fails,
/// so mailsafe exits 1 naming it, but the live ones have everything; a
/// restore by name and one by "newest" (skipping the dead one) both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dbs_three_replicas_one_dead_store_delays_no_other() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = dir.path().join("mailsafe.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:
  - path: {a}
    debounce: 100ms
    replicas:
      - name: primary
        url: s3://${{BUCKET}}/a
      - name: dead
        url: s3://$BUCKET/a-dead
        endpoint: {dead}
  - path: {b}
    retention:
      interval: 0s
    replicas:
      - url: s3://$BUCKET/b
",
            a = a.display(),
            b = b.display(),
        ),
    )
    .unwrap();
    let (db_a, db_b) = (create_db(&a), create_db(&b));
    let mut w = start(
        &s3,
        &config,
        &[("BUCKET", &s3.bucket)],
        &["--shutdown-timeout", "5s"],
    );
    let dead_labels = labels(&a, "dead");
    for round in 0..3 {
        let since = unix_now();
        for id in round * 10 + 1..=round * 10 + 10 {
            insert(&db_a, id);
            insert(&db_b, id);
        }
        wait_pair_caught_up(&w, &a, "primary", since).await;
        wait_pair_caught_up(&w, &b, "replica1", since).await;
        if round == 1 {
            // The dead store's first attempt may still be in its client's
            // retries: wait (bounded) until it has failed once, so the last
            // round runs while that loop is failing and backing off.
            let start = Instant::now();
            while w
                .metric(&format!("mailsafe_snapshot_errors_total{dead_labels}"))
                .await
                < 1.0
            {
                assert!(
                    start.elapsed() < Duration::from_secs(90),
                    "the dead replica never failed; log:\n{}",
                    w.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        w.metric(&format!(
            "mailsafe_last_success_timestamp_seconds{dead_labels}"
        ))
        .await,
        0.0
    );
    let health = reqwest::get(format!("{}/healthz", w.http)).await.unwrap();
    let body = health.text().await.unwrap();
    assert!(body.contains("replica=\"primary\": ok"), "{body}");

    let (status, logs) = w.term_within(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(1),
        "the dead replica's final snapshot failed; log:\n{logs}"
    );
    assert!(logs.contains("replica dead"), "{logs}");

    // Restores through the same file.
    let restore = |db: &Path, out: &Path, replica: Option<&str>| {
        restore_through(&s3, &config, db, out, replica)
    };
    let out = dir.path().join("a-primary.db");
    restore(&a, &out, Some("primary"));
    assert_eq!(row_ids(&out), 30);
    let out = dir.path().join("a-newest.db");
    let r = restore(&a, &out, None);
    assert_eq!(row_ids(&out), 30);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("cannot read the replica's newest snapshot") && l.contains("dead")),
        "the dead one was skipped: {err}"
    );
    let out = dir.path().join("b.db.restored");
    restore(&b, &out, None);
    assert_eq!(row_ids(&out), 30);
}

/// A bad config file stops `watch` before anything starts (no listener, no
/// request), with exit 2 and a message naming the file, the key and the
/// line; so does an unset variable and a `restore --replica` name the file
/// does not have.
#[test]
fn bad_config_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yml");
    let port = free_port();
    let run = |text: &str| {
        std::fs::write(&config, text).unwrap();
        common::mailsafe()
            .args(["watch", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("MAILSAFE_DB")
            .env_remove("MAILSAFE_REPLICA")
            .env_remove("MAILSAFE_TEST_UNSET_VAR")
            .output()
            .unwrap()
    };
    let cases: &[(&str, &[&str])] = &[
        (
            "dbs:\n  - path: /tmp/a.db\n    replicas:\n      - url: s3://b/a\n        endpont: http://x\n",
            &["dbs[0].replicas[0]", "unknown field `endpont`", "line 5"],
        ),
        (
            "dbs:\n  - path: /tmp/a.db\n    max-delay: soon\n    replicas:\n      - url: s3://b/a\n",
            &["dbs[0].max-delay", "line 3"],
        ),
        (
            "dbs:\n  - path: /tmp/a.db\n    replicas:\n      - url: s3://$MAILSAFE_TEST_UNSET_VAR/a\n",
            &["line 4", "MAILSAFE_TEST_UNSET_VAR is not set"],
        ),
    ];
    for (text, wants) in cases {
        let started = Instant::now();
        let out = run(text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}\n{err}");
        assert!(err.contains(&*config.to_string_lossy()), "{err}");
        for want in *wants {
            assert!(err.contains(want), "{text}\n-> {err}\n(wanted {want:?})");
        }
        assert!(!err.contains("watching"), "nothing started: {err}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    // A missing file.
    let out = common::mailsafe()
        .args(["watch", "--config", "/nonexistent/mailsafe.yml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mailsafe.yml"));
    // restore --replica with a name the file does not have.
    std::fs::write(
        &config,
        "dbs:\n  - path: /tmp/a.db\n    replicas:\n      - {name: one, url: file:///tmp/x}\n",
    )
    .unwrap();
    let out = common::mailsafe()
        .args([
            "restore",
            "--db",
            "/tmp/a.db",
            "--replica",
            "two",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no replica named two") && err.contains("one"),
        "{err}"
    );
}

/// `restore --config --snapshot ID` / `--at T` without `--replica` search
/// the replicas in the file's order for that snapshot: the first replica
/// has only a newer snapshot (taken after the second replica's), so
/// picking by newest would look in the wrong one.
#[test]
fn restore_at_or_snapshot_searches_the_replicas_in_order() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("s.db");
    let db = create_db(&db_path);
    let (first, second) = (s3.url("first"), s3.url("second"));
    let config = dir.path().join("mailsafe.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {}\n    replicas:\n      - {{name: first, url: {first}}}\n      - {{name: second, url: {second}}}\n",
            db_path.display()
        ),
    )
    .unwrap();
    let snapshot = |url: &str| -> String {
        let out = common::run_ok(
            s3.mailsafe()
                .args(["snapshot", "--json", "--db"])
                .arg(&db_path)
                .args(["--replica", url]),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    insert(&db, 1);
    let old = snapshot(&second);
    // Strictly after the old snapshot's time, before the new one's.
    std::thread::sleep(Duration::from_millis(20));
    let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(Duration::from_millis(20));
    insert(&db, 2);
    snapshot(&first);
    for pick in [["--snapshot", old.as_str()], ["--at", between.as_str()]] {
        let out_db = dir.path().join(format!("{}.db", &pick[0][2..]));
        let out = s3
            .mailsafe()
            .args(["restore", "--config"])
            .arg(&config)
            .arg("--db")
            .arg(&db_path)
            .args(pick)
            .arg("-o")
            .arg(&out_db)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{pick:?}: {err}");
        assert_eq!(row_ids(&out_db), 1, "{pick:?}");
    }
}

/// Waits (bounded by 60 s) until the log has a line with every one of
/// `words`.
fn wait_log(w: &Watcher, words: &[&str]) {
    let start = Instant::now();
    while !w
        .logs()
        .lines()
        .any(|l| words.iter().all(|word| l.contains(word)))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no log line with {words:?} within 60 s; log:\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A recursive `dir` entry: the dbs there at start and one created while
/// `watch` runs each get their own loop, label and replica (the entry's
/// URL plus the db's path below the dir); files that are not dbs are
/// skipped with a debug line; a db deleted while watched is reported and
/// its loop stopped (its series leave `/metrics`) while the others go on;
/// `restore --config --db` finds a found db (even one that is gone) by the
/// same rule, and the derived URL restores it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_entry_finds_new_dbs_and_stops_removed_ones() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("t1")).unwrap();
    let (a, b, c) = (
        data.join("a.db"),
        data.join("t1/b.db"),
        data.join("t2/c.db"),
    );
    let (db_a, db_b) = (create_db(&a), create_db(&b));
    std::fs::write(data.join("notes.db"), "not a database").unwrap();
    let config = dir.path().join("mailsafe.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:
  - dir: {data}
    pattern: \"*.db\"
    recursive: true
    rescan-interval: 200ms
    debounce: 100ms
    replicas:
      - url: s3://$BUCKET/tenants/
",
            data = data.display(),
        ),
    )
    .unwrap();
    let mut w = start(
        &s3,
        &config,
        &[("BUCKET", &s3.bucket)],
        &["--shutdown-timeout", "5s"],
    );
    let since = unix_now();
    for id in 1..=5 {
        insert(&db_a, id);
        insert(&db_b, id);
    }
    wait_pair_caught_up(&w, &a, "replica1", since).await;
    wait_pair_caught_up(&w, &b, "replica1", since).await;
    wait_log(&w, &["not backed up", "notes.db", "not a SQLite database"]);

    // A new tenant: picked up by a rescan, with its own label.
    std::fs::create_dir_all(data.join("t2")).unwrap();
    let db_c = create_db(&c);
    let since = unix_now();
    for id in 1..=3 {
        insert(&db_c, id);
    }
    let c_success = format!(
        "mailsafe_last_success_timestamp_seconds{}",
        labels(&c, "replica1")
    );
    wait_metrics(&w, "the new db's loop", |m| m.contains_key(&c_success)).await;
    wait_pair_caught_up(&w, &c, "replica1", since).await;

    // b is deleted: reported, its loop stopped, its series gone; a and c
    // go on.
    drop(db_b);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", b.display()));
    }
    wait_log(&w, &["database is gone", &b.display().to_string()]);
    wait_log(&w, &["stopped (the database is gone)"]);
    let b_labels = labels(&b, "replica1");
    wait_metrics(&w, "b's series removed", |m| {
        !m.keys().any(|k| k.contains(&b_labels))
    })
    .await;
    let since = unix_now();
    for id in 6..=8 {
        insert(&db_a, id);
    }
    insert(&db_c, 4);
    wait_pair_caught_up(&w, &a, "replica1", since).await;
    wait_pair_caught_up(&w, &c, "replica1", since).await;
    let logs = w.stop(Duration::from_secs(60));
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("found a database") && l.contains("notes.db")),
        "{logs}"
    );

    // Restores: through the file by db path (b is gone, found by the same
    // rule), and straight from the derived URL.
    let restore = |db: &Path, out: &Path| restore_through(&s3, &config, db, out, None);
    let out = dir.path().join("a.restored");
    restore(&a, &out);
    assert_eq!(row_ids(&out), 8);
    let out = dir.path().join("b.restored");
    restore(&b, &out);
    assert_eq!(row_ids(&out), 5);
    let out = dir.path().join("c.restored");
    assert_eq!(restored_rows(&s3, &s3.url("tenants/t2/c.db"), &out), 4);
}
