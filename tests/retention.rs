//! Retention and garbage collection against a real S3 (SeaweedFS): kept
//! snapshots still restore after `prune`, forgotten ones are gone, garbage is
//! collected only past the grace period, and GC racing a stream of snapshots
//! never breaks one. Also `cron --once`.

mod common;
mod watch_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mailsafe::format;
use mailsafe::snapshot::Snapshotter;
use mailsafe::store::ObjectStore;
use watch_support::*;

/// Every object key the given manifests need (themselves, their bases, the
/// bases' chunks, their deltas).
async fn needed(store: &dyn ObjectStore) -> HashSet<String> {
    let ms = manifests(store).await;
    let mut keys = HashSet::new();
    for m in &ms {
        keys.insert(format::manifest_key(&m.id));
        keys.insert(format::manifest_key(&m.base));
        keys.extend(m.deltas.iter().map(|d| d.key.clone()));
        let base = ms
            .iter()
            .find(|b| b.id == m.base)
            .expect("base manifest kept");
        keys.extend(base.chunks.iter().map(|c| format::chunk_key(&c.sha256)));
    }
    keys
}

fn prune(s3: &common::S3, url: &str, args: &[&str]) -> serde_json::Value {
    let out = s3
        .mailsafe()
        .args(["prune", "--replica", url, "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_what_it_says_and_collects_only_old_garbage() {
    let s3 = common::s3();
    let url = s3.url("ret");
    let replica = store(&s3, "ret").await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("ret.db");
    let db = create_db(&db_path);
    let mut snap = Snapshotter::new(&db_path, replica.clone());
    // Six snapshots; snapshot k holds rows 1..=10k.
    let mut ids = Vec::new();
    for k in 1..=6i64 {
        for id in (k - 1) * 10 + 1..=k * 10 {
            insert(&db, id);
        }
        ids.push(snap.snapshot().await.unwrap().id.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // An object an interrupted upload left behind.
    let stray = format::chunk_key(&"ab".repeat(32));
    replica
        .put(&stray, Bytes::from_static(b"junk"))
        .await
        .unwrap();

    // Dry run: reports, deletes nothing.
    let before = replica.list("").await.unwrap().len();
    let dry = prune(
        &s3,
        &url,
        &["--keep-last", "2", "--gc-grace", "0s", "--dry-run"],
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(replica.list("").await.unwrap().len(), before);

    // A grace period protects the young stray object.
    let r = prune(&s3, &url, &["--keep-last", "2", "--gc-grace", "1h"]);
    assert!(r["young_unreferenced"].as_u64().unwrap() >= 1, "{r}");
    replica.get(&stray).await.unwrap();

    // Without grace it goes, and exactly what the kept snapshots need stays.
    let r = prune(&s3, &url, &["--keep-last", "2", "--gc-grace", "0s"]);
    assert!(
        r["deleted_objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == &stray),
        "{r}"
    );
    let remaining: Vec<_> = manifests(replica.as_ref())
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    for kept in &ids[4..] {
        assert!(remaining.contains(kept), "{kept} kept");
    }
    for gone in &ids[..4] {
        let is_base = manifests(replica.as_ref())
            .await
            .iter()
            .any(|m| &m.base == gone);
        assert_eq!(
            remaining.contains(gone),
            is_base,
            "{gone}: only bases of kept snapshots stay"
        );
    }
    let need = needed(replica.as_ref()).await;
    for obj in replica.list("").await.unwrap() {
        if obj.key.starts_with(format::CHUNKS) || obj.key.starts_with(format::DELTAS) {
            assert!(
                need.contains(&obj.key),
                "unreferenced {} survived GC",
                obj.key
            );
        }
    }
    // Kept snapshots restore with their content; a forgotten one is gone.
    for (k, id) in ids.iter().enumerate().skip(4) {
        let out = dir.path().join(format!("r{k}.db"));
        let o = restore(&s3, &url, &out, &["--snapshot", id]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(row_ids(&out), (k as i64 + 1) * 10);
    }
    let forgotten = ids[..4]
        .iter()
        .find(|id| !remaining.contains(*id))
        .expect("some snapshot was forgotten");
    let o = restore(
        &s3,
        &url,
        &dir.path().join("gone.db"),
        &["--snapshot", forgotten],
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Snapshots run back to back while `prune --keep-last 1` runs in a loop
/// with a short grace period: every snapshot that remains restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_racing_snapshots_never_breaks_one() {
    let s3 = common::s3();
    let url = s3.url("race");
    let replica = store(&s3, "race").await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("race.db");
    let db = create_db(&db_path);
    let mut snap = Snapshotter::new(&db_path, replica.clone());
    let pruner = {
        let s3 = s3.clone();
        let url = url.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut rounds = 0;
            while start.elapsed() < Duration::from_secs(8) {
                prune(&s3, &url, &["--keep-last", "1", "--gc-grace", "3s"]);
                rounds += 1;
            }
            rounds
        })
    };
    let start = Instant::now();
    let mut id = 0;
    let mut snapshots = 0;
    while start.elapsed() < Duration::from_secs(8) {
        for _ in 0..20 {
            id += 1;
            insert(&db, id);
        }
        if snap.snapshot().await.unwrap().id.is_some() {
            snapshots += 1;
        }
    }
    let rounds = pruner.join().unwrap();
    println!("{snapshots} snapshots raced {rounds} prune rounds");
    assert!(rounds >= 2 && snapshots >= 5);
    let v = s3
        .mailsafe()
        .args(["verify", "--all", "--replica", &url])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let out = dir.path().join("restored.db");
    let o = restore(&s3, &url, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(row_ids(&out), id);
}

/// `cron --once`: snapshot if changed, retention, GC, exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_once_snapshots_only_changes_and_applies_retention() {
    let s3 = common::s3();
    let url = s3.url("cron");
    let replica = store(&s3, "cron").await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("cron.db");
    let db = create_db(&db_path);
    let cron = || {
        let o = s3
            .mailsafe()
            .args([
                "cron",
                "--once",
                "--keep-last",
                "2",
                "--gc-grace",
                "0s",
                "--db",
            ])
            .arg(&db_path)
            .args(["--replica", &url])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let mut id = 0;
    for round in 1..=4 {
        for _ in 0..5 {
            id += 1;
            insert(&db, id);
        }
        cron();
        let ms = manifests(replica.as_ref()).await;
        let bases: HashSet<_> = ms.iter().map(|m| m.base.clone()).collect();
        let non_base = ms
            .iter()
            .filter(|m| !bases.contains(&m.id) || m.id == ms.last().unwrap().id)
            .count();
        assert!(non_base <= 2, "round {round}: {} manifests", ms.len());
    }
    let count = manifests(replica.as_ref()).await.len();
    cron(); // unchanged: nothing new
    assert_eq!(manifests(replica.as_ref()).await.len(), count);
    // The lease was released after each round.
    let out = dir.path().join("restored.db");
    let o = restore(&s3, &url, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(row_ids(&out), id);
}
