//! Crash takeover of the writer lease, against real SeaweedFS and the real
//! binary: after `kill -9` of `watch`, a restart on the same volume takes the
//! dead process's lease at once (it proves the holder dead through the
//! volume lock beside the db), while a writer on another volume waits for the
//! lease to expire and says so in its log and in `/healthz`.
//!
//! Prints `TAKEOVER same_volume_ms=… new_volume_ms=…` for bench/RESULTS.md.

mod common;
mod watch_support;

use std::time::{Duration, Instant};

use watch_support::{Watcher, create_db, insert, restored_rows};

/// Polls `cond` every 50 ms until it holds, at most `limit`; returns how
/// long it took. Panics with `what` and `logs()` otherwise.
async fn wait_until<F, Fut>(
    limit: Duration,
    what: &str,
    logs: impl Fn() -> String,
    cond: F,
) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; log:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn manifest_count(s3: &common::S3, prefix: &str) -> usize {
    s3.store(prefix)
        .await
        .list(mailsafe::format::MANIFESTS)
        .await
        .unwrap()
        .len()
}

async fn healthz(w: &Watcher) -> String {
    match reqwest::get(format!("{}/healthz", w.http)).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn kill9(w: &mut Watcher) {
    w.child.kill().unwrap(); // SIGKILL: no release, no final snapshot
    w.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_on_the_same_volume_takes_over_in_seconds() {
    let s3 = common::s3();
    let prefix = "takeover";
    let url = s3.url(prefix);
    let endpoint = s3.server.endpoint.clone();
    let (vol1, vol2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let db_path = vol1.path().join("app.db");
    let db = create_db(&db_path);
    insert(&db, 1);

    // A: the writer that will crash, with the default 2-minute lease.
    let mut a = Watcher::start(&s3, &endpoint, &db_path, &url, &[]);
    a.wait_caught_up(Duration::from_secs(30)).await;
    kill9(&mut a);
    let before = manifest_count(&s3, prefix).await;
    assert!(before >= 1);

    // D: another pod on another volume. It cannot prove A dead: it waits,
    // and says until when, in its log and in /healthz.
    let other_db = vol2.path().join("app.db");
    drop(create_db(&other_db));
    let d = Watcher::start(&s3, &endpoint, &other_db, &url, &[]);
    wait_until(
        Duration::from_secs(30),
        "the writer on another volume reports the lease it waits for",
        || d.logs(),
        || async { d.logs().contains("can be taken at") },
    )
    .await;
    assert!(
        d.logs().contains("is being written by another process"),
        "{}",
        d.logs()
    );
    wait_until(
        Duration::from_secs(30),
        "/healthz of the waiting writer names the lease",
        || d.logs(),
        || async {
            {
                let h = healthz(&d).await;
                h.contains("waiting for the writer lease") && h.contains("can be taken at")
            }
        },
    )
    .await;

    // C: A restarted on its volume (same db). It gets the volume lock the
    // kernel dropped with A, sees its own volume in A's live lease, and takes
    // over at once. Its lease is short so that D's wait can be measured.
    let started = Instant::now();
    let mut c = Watcher::start(&s3, &endpoint, &db_path, &url, &["--lease-ttl", "8s"]);
    c.metric("mailsafe_lease_held").await; // its HTTP server is up
    insert(&db, 2);
    let same_volume = wait_until(
        Duration::from_secs(60),
        "the first commit after the restart reaches the replica",
        || c.logs(),
        || async { manifest_count(&s3, prefix).await > before },
    )
    .await;
    let from_start = started.elapsed();
    assert!(
        same_volume < Duration::from_secs(2),
        "the first new commit took {same_volume:?} to reach the replica; log:\n{}",
        c.logs()
    );
    assert!(c.logs().contains("taking over at once"), "{}", c.logs());
    assert_eq!(
        restored_rows(&s3, &url, &vol1.path().join("restored.db")),
        2
    );
    assert_eq!(
        d.metric("mailsafe_snapshots_total{result=\"uploaded\"}")
            .await,
        0.0,
        "the writer on another volume must not write while C holds the lease"
    );

    // C crashes too. D, on another volume, takes the lease only once it has
    // expired: at most the TTL plus the skew allowance (2 s for 8 s) plus
    // its 2 s retry, after C's last renewal.
    kill9(&mut c);
    let new_volume = wait_until(
        Duration::from_secs(60),
        "the writer on another volume takes the expired lease",
        || d.logs(),
        || async { d.metric("mailsafe_lease_held").await == 1.0 },
    )
    .await;
    assert!(
        new_volume <= Duration::from_secs(8 + 2 + 2 + 10),
        "{new_volume:?}"
    );
    println!(
        "TAKEOVER same_volume_ms={} (commit to replica; {} ms from process start) \
         new_volume_ms={} (kill -9 to lease taken, lease TTL 8 s)",
        same_volume.as_millis(),
        from_start.as_millis(),
        new_volume.as_millis()
    );
    drop(d);
}

/// Real fencing between two live processes on one db: A's lease lapses
/// while it is idle, B (which waited) takes it over, marking A's epoch
/// superseded. At A's next commit A learns it was fenced, names B and exits
/// non-zero instead of writing; B backs the commit up, and every manifest
/// B wrote carries B's newer epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_taken_over_stops_and_names_the_other() {
    let s3 = common::s3();
    let prefix = "fenced";
    let url = s3.url(prefix);
    let endpoint = s3.server.endpoint.clone();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("app.db");
    let db = create_db(&db_path);
    insert(&db, 1);
    let mut a = Watcher::start(&s3, &endpoint, &db_path, &url, &["--lease-ttl", "3s"]);
    a.wait_caught_up(Duration::from_secs(30)).await;
    let b = Watcher::start(&s3, &endpoint, &db_path, &url, &["--lease-ttl", "60s"]);
    // A is idle: its lease lapses and B takes it.
    wait_until(
        Duration::from_secs(60),
        "B takes the lapsed lease",
        || b.logs(),
        || async { b.metric("mailsafe_lease_held").await == 1.0 },
    )
    .await;
    insert(&db, 2);
    let status = a.wait(Duration::from_secs(60));
    let logs = a.logs();
    assert!(!status.success(), "A must exit non-zero; log:\n{logs}");
    assert!(logs.contains("was taken over by another process"), "{logs}");
    assert!(
        logs.contains(&format!("pid {}", b.child.id())),
        "A must name B; log:\n{logs}"
    );
    b.wait_caught_up(Duration::from_secs(30)).await;
    assert_eq!(restored_rows(&s3, &url, &dir.path().join("restored.db")), 2);
    let ms = watch_support::manifests(s3.store(prefix).await.as_ref()).await;
    let epochs: Vec<u64> = ms
        .iter()
        .map(|m| {
            m.writer
                .as_ref()
                .expect("every manifest names its writer")
                .epoch
        })
        .collect();
    assert!(
        epochs.windows(2).all(|w| w[0] <= w[1]) && epochs.first() < epochs.last(),
        "epochs along history: {epochs:?}"
    );
    // `snapshots` names each snapshot's writer: its host and lease epoch.
    let out = common::run_ok(
        s3.mailsafe()
            .args(["snapshots", "--json", "--replica", &url]),
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["epoch"].as_u64().unwrap(),
            )
        })
        .collect();
    let written: Vec<(String, u64)> = ms
        .iter()
        .map(|m| (m.id.clone(), m.writer.as_ref().unwrap().epoch))
        .collect();
    assert_eq!(listed, written);
    let host = ms[0].writer.as_ref().unwrap().host.clone();
    assert!(!host.is_empty());
    assert!(rows.iter().all(|r| r["host"] == host.as_str()), "{rows:?}");
    let out = common::run_ok(s3.mailsafe().args(["snapshots", "--replica", &url]));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().ends_with("WRITER"), "{table}");
    let (last, epoch) = written.last().unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with(last.as_str()))
        .unwrap();
    assert!(row.ends_with(&format!("{host}#{epoch}")), "{table}");
}

/// Commits row `row` and snapshots it with `w`, in a strictly later
/// millisecond than the replica's newest snapshot (ids of one millisecond
/// sort by their random suffix). The new id.
async fn snap_after_newest(
    store: &mailsafe::store::DynStore,
    db: &rusqlite::Connection,
    w: &mut mailsafe::snapshot::Snapshotter,
    row: i64,
) -> String {
    insert(db, row);
    let newest = mailsafe::history::newest_id(store.as_ref()).await.unwrap();
    if let Some(t) = newest
        .as_deref()
        .and_then(mailsafe::format::snapshot_id_time)
    {
        while chrono::Utc::now() < t + chrono::Duration::milliseconds(1) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    w.snapshot().await.unwrap().id.unwrap()
}

/// A fenced writer's late manifest on SeaweedFS, through the real binary:
/// A (epoch 1) snapshots, B takes the lease (epoch 2) and snapshots, then A
/// finishes a late snapshot that sorts after B's. `restore` and `restore
/// --at` never pick it; `restore --snapshot` of it is the user's explicit
/// choice, restored with a warning and a `--json` field naming B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_writers_late_snapshot_is_restored_only_by_id_with_a_warning() {
    let s3 = common::s3();
    let prefix = "fenced-late";
    let url = s3.url(prefix);
    let store = s3.store(prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("app.db");
    let db = create_db(&db_path);
    let writer = |epoch: u64, host: &str| {
        let mut w = mailsafe::snapshot::Snapshotter::new(&db_path, store.clone());
        w.set_writer(Some(mailsafe::format::Writer {
            epoch,
            host: host.into(),
            owner: format!("owner-{epoch}"),
        }));
        w
    };
    let (mut a, mut b) = (writer(1, "host-a"), writer(2, "host-b"));
    snap_after_newest(&store, &db, &mut a, 1).await;
    let by_b = snap_after_newest(&store, &db, &mut b, 2).await;
    // B's lease record, as a taker that has written leaves it.
    let record = serde_json::json!({
        "epoch": 2, "owner": "owner-2", "host": "host-b", "pid": 1,
        "acquired": "2026-12-06T00:00:00Z", "expires": "2026-12-06T00:02:00Z",
        "wrote": true, "written_below": 1,
    });
    store
        .put(
            "lease/00000000000000000002.json",
            bytes::Bytes::from(record.to_string()),
        )
        .await
        .unwrap();
    let late = snap_after_newest(&store, &db, &mut a, 3).await;
    assert!(late > by_b);

    let restore = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut cmd = s3.mailsafe();
        cmd.args(["restore", "--json", "--replica", &url, "--db"])
            .arg(&out)
            .args(extra);
        let o = common::run_ok(&mut cmd);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v, String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (newest, _) = restore("newest.db", &[]);
    assert_eq!(newest["snapshot"], by_b.as_str(), "{newest}");
    assert!(newest.get("fenced_by").is_none(), "{newest}");
    let now = chrono::Utc::now().to_rfc3339();
    let (at, _) = restore("at.db", &["--at", &now]);
    assert_eq!(at["snapshot"], by_b.as_str(), "--at {now}: {at}");
    let (by_id, log) = restore("late.db", &["--snapshot", &late]);
    assert_eq!(by_id["snapshot"], late.as_str(), "{by_id}");
    assert_eq!(by_id["fenced_by"], "host-b#2", "{by_id}");
    assert!(
        log.contains("fenced writer") && log.contains("host-b#2"),
        "the warning names B: {log}"
    );
    let (b_by_id, _) = restore("b.db", &["--snapshot", &by_b]);
    assert!(b_by_id.get("fenced_by").is_none(), "{b_by_id}");
}
