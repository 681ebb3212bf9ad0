//! `kill -9` of `snapshot` and of `watch` at random moments while a writer
//! commits rows, against a real S3 (SeaweedFS) behind the fault proxy adding
//! 60 ms to every request (so a snapshot's requests span a few hundred ms
//! and the kills land among them): after every kill the replica
//! restores to exactly a committed state (rows 1..=n with their bodies,
//! `integrity_check` ok, n never going back); the next run resumes without
//! any repair; and GC with a grace period of 0 then leaves only objects some
//! manifest references, all of which exist.

mod common;
mod watch_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use mailsafe::format::{self, Manifest};
use rand::Rng;
use rusqlite::Connection;
use watch_support::Watcher;

/// Kills that must land on a running process, per command.
const KILLS: usize = 10;
/// Bound on attempts per command (a snapshot may finish before its kill).
const MAX_ATTEMPTS: usize = 25;
const BODY: usize = 600;

/// The body of row `id`: incompressible and reproducible, so a restored row
/// can be checked byte for byte.
fn body_of(id: i64) -> Vec<u8> {
    let mut x = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..BODY)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Commits one row at a time until stopped; `committed` is the highest id
/// known committed.
fn writer(
    db: &Path,
    committed: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let db = db.to_path_buf();
    std::thread::spawn(move || {
        let conn = Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let mut id = committed.load(Ordering::SeqCst);
        while !stop.load(Ordering::SeqCst) {
            id += 1;
            conn.execute(
                "INSERT INTO t(id, body) VALUES (?1, ?2)",
                rusqlite::params![id, body_of(id)],
            )
            .unwrap();
            committed.store(id, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(8));
        }
    })
}

/// Restores the newest snapshot and checks it is a committed state: rows
/// 1..=n with their exact bodies and a clean integrity check. Returns n.
fn restore_and_check(s3: &common::S3, url: &str, dir: &Path, committed: i64, what: &str) -> i64 {
    let out = dir.join("restored.db");
    let _ = std::fs::remove_file(&out);
    let r = watch_support::restore(s3, url, &out, &[]);
    assert!(
        r.status.success(),
        "{what}: restore failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let conn = Connection::open(&out).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "{what}");
    let mut st = conn.prepare("SELECT id, body FROM t ORDER BY id").unwrap();
    let mut rows = st.query([]).unwrap();
    let mut n = 0i64;
    while let Some(row) = rows.next().unwrap() {
        let id: i64 = row.get(0).unwrap();
        let body: Vec<u8> = row.get(1).unwrap();
        n += 1;
        assert_eq!(id, n, "{what}: rows are not 1..=n");
        assert!(body == body_of(id), "{what}: row {id} has the wrong body");
    }
    assert!(
        n <= committed,
        "{what}: {n} rows restored, only {committed} committed"
    );
    drop(rows);
    drop(st);
    drop(conn);
    let _ = std::fs::remove_file(&out);
    n
}

fn kill9(child: &mut std::process::Child) -> bool {
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_never_breaks_the_replica() {
    let s3 = common::s3();
    let url = s3.url("crash");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
    )
    .unwrap();
    drop(conn);
    let committed = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&db, committed.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let proxy = common::proxy::Proxy::start(&s3.server.endpoint, &["--latency-ms", "60"]);
    let via = proxy.endpoint.as_str();

    // How long one snapshot takes here, to aim the kills inside it.
    let t0 = Instant::now();
    common::run_ok(
        s3.mailsafe()
            .args(["snapshot", "--db", db.to_str().unwrap(), "--replica", &url])
            .args(["--endpoint", via]),
    );
    let typical = t0.elapsed().max(Duration::from_millis(100));

    let mut last_n = 0;
    let (mut snapshot_kills, mut watch_kills) = (0, 0);
    let (mut snapshot_attempts, mut watch_attempts) = (0, 0);
    let lease_ttl = "1s";
    let mut rng = common::seeded_rng("crash");
    while snapshot_kills < KILLS || watch_kills < KILLS {
        let use_watch =
            watch_kills < KILLS && (snapshot_kills >= KILLS || watch_attempts <= snapshot_attempts);
        let what = if use_watch {
            watch_attempts += 1;
            assert!(watch_attempts <= MAX_ATTEMPTS, "watch kills kept missing");
            let mut wt = Watcher::start(&s3, via, &db, &url, &["--lease-ttl", lease_ttl]);
            // Kill only once it writes (a killed predecessor's lease must
            // lapse first), at a random moment of its upload cycle.
            let start = Instant::now();
            while !wt.logs().contains("took the replica's writer lease") {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "no lease:\n{}",
                    wt.logs()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(50..1000)));
            if kill9(&mut wt.child) {
                watch_kills += 1;
            }
            format!("after watch kill {watch_kills}")
        } else {
            snapshot_attempts += 1;
            assert!(
                snapshot_attempts <= MAX_ATTEMPTS,
                "snapshot kills kept missing"
            );
            let mut child = s3
                .mailsafe()
                .args(["snapshot", "--db", db.to_str().unwrap(), "--replica", &url])
                .args(["--endpoint", via])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let ms = typical.as_millis() as u64;
            let at = rng.random_range(10..ms.max(20));
            std::thread::sleep(Duration::from_millis(at));
            let hit = kill9(&mut child);
            eprintln!(
                "snapshot kill at {at} ms of {ms}: {}",
                if hit { "landed" } else { "missed" }
            );
            if hit {
                snapshot_kills += 1;
            }
            format!("after snapshot kill {snapshot_kills}")
        };
        let n = restore_and_check(
            &s3,
            &url,
            dir.path(),
            committed.load(Ordering::SeqCst),
            &what,
        );
        assert!(
            n >= last_n,
            "{what}: restored {n} rows, an earlier restore had {last_n}"
        );
        last_n = n;
    }
    eprintln!(
        "kills that landed: snapshot {snapshot_kills}/{snapshot_attempts}, watch {watch_kills}/{watch_attempts}; newest restore {last_n} rows of {} committed",
        committed.load(Ordering::SeqCst)
    );

    // The next runs resume without repair: once the writer stops, a watch
    // (after the killed one's lease lapses) catches up and exits cleanly,
    // a snapshot finds nothing new, and everything committed is restored.
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    // One more row, so the watch surely has something to upload.
    let total = committed.load(Ordering::SeqCst) + 1;
    Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO t(id, body) VALUES (?1, ?2)",
            rusqlite::params![total, body_of(total)],
        )
        .unwrap();
    let mut wt = Watcher::start(
        &s3,
        &s3.server.endpoint,
        &db,
        &url,
        &["--lease-ttl", lease_ttl],
    );
    wt.wait_caught_up(Duration::from_secs(60)).await;
    wt.term();
    assert!(wt.wait(Duration::from_secs(40)).success(), "{}", wt.logs());
    common::run_ok(s3.mailsafe().args([
        "snapshot",
        "--db",
        db.to_str().unwrap(),
        "--replica",
        &url,
    ]));
    let n = restore_and_check(&s3, &url, dir.path(), total, "final");
    assert_eq!(
        n, total,
        "everything committed is restored after a clean stop"
    );

    // GC with no grace: the uploads the kills orphaned are collected, and
    // what is left is exactly what the manifests reference.
    let out = common::run_ok(s3.mailsafe().args([
        "prune",
        "--gc-grace",
        "0s",
        "--json",
        "--replica",
        &url,
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "GC deleted {} orphaned object(s)",
        report["deleted_objects"].as_array().map_or(0, Vec::len)
    );
    let store = s3.store("crash").await;
    let listed: BTreeSet<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    let mut referenced = BTreeSet::new();
    for key in listed.iter().filter(|k| k.starts_with(format::MANIFESTS)) {
        let m = Manifest::from_json(key, &store.get(key).await.unwrap()).unwrap();
        referenced.insert(key.clone());
        referenced.extend(m.chunks.iter().map(|c| c.object_key()));
        // A delta embedded in a manifest that still exists is stored there
        // (format v2); otherwise it must be at its own key.
        referenced.extend(
            m.deltas
                .iter()
                .filter(|d| d.embedded().is_none_or(|(mk, _)| !listed.contains(&mk)))
                .map(|d| d.key.clone()),
        );
    }
    for key in &listed {
        // The lease and the history anchor are not snapshot data.
        if key.starts_with(format::LEASE_PREFIX) || key == format::HEAD_KEY {
            continue;
        }
        assert!(referenced.contains(key), "orphan left after GC: {key}");
    }
    for key in &referenced {
        assert!(
            listed.contains(key),
            "GC deleted a referenced object: {key}"
        );
    }
    let n = restore_and_check(&s3, &url, dir.path(), total, "after GC");
    assert_eq!(n, total);
}
