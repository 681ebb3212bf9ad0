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
        keys.extend(base.chunks.iter().map(|c| c.object_key()));
    }
    keys
}

fn prune(s3: &common::S3, url: &str, args: &[&str]) -> serde_json::Value {
    let out = common::run_ok(
        s3.mailsafe()
            .args(["prune", "--replica", url, "--json"])
            .args(args),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_what_it_says_and_collects_only_old_garbage() {
    let s3 = common::s3();
    let url = s3.url("ret");
    let replica = s3.store("ret").await;
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
        if [format::CHUNKS, format::PACKS, format::DELTAS]
            .iter()
            .any(|p| obj.key.starts_with(p))
        {
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

/// Format v2 keeps each incremental snapshot's delta pack inside its
/// manifest object. Forgetting such a snapshot while a kept one lists its
/// delta must copy the exact bytes to `deltas/<id>` first: the kept snapshot
/// still restores, the forgotten ones no longer list, and once nothing lists
/// the copies (after a re-base and a later prune) GC deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_copies_out_embedded_deltas_that_kept_snapshots_need() {
    let s3 = common::s3();
    let url = s3.url("copyout");
    let replica = s3.store("copyout").await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("c.db");
    let db = create_db(&db_path);
    // A base big enough that three small deltas stay deltas.
    for id in 1..=2000 {
        insert(&db, id);
    }
    let mut snap = Snapshotter::new(&db_path, replica.clone());
    let base = snap.snapshot().await.unwrap();
    assert!(base.base, "{base:?}");
    let mut ids = vec![base.id.unwrap()];
    for k in 1..=3i64 {
        for id in 2000 + (k - 1) * 5 + 1..=2000 + k * 5 {
            insert(&db, id);
        }
        let r = snap.snapshot().await.unwrap();
        assert!(!r.base && r.uploaded_objects == 1, "{r:?}");
        ids.push(r.id.unwrap());
    }
    let newest = manifests(replica.as_ref()).await.pop().unwrap();
    assert_eq!(newest.id, ids[3]);
    assert_eq!(newest.deltas.len(), 3);
    let mut embedded = Vec::new();
    for d in &newest.deltas {
        assert!(d.embedded().is_some(), "{d:?}");
        embedded.push(format::get_delta(replica.as_ref(), d).await.unwrap());
    }
    assert!(replica.list(format::DELTAS).await.unwrap().is_empty());
    let wanted: Vec<String> = ids[1..3].iter().map(|id| format::delta_key(id)).collect();

    // Dry run: says what it would copy, writes nothing.
    let dry = prune(
        &s3,
        &url,
        &["--keep-last", "1", "--gc-grace", "0s", "--dry-run"],
    );
    assert_eq!(dry["copied_deltas"], serde_json::json!(wanted), "{dry}");
    assert!(replica.list(format::DELTAS).await.unwrap().is_empty());

    let r = prune(&s3, &url, &["--keep-last", "1", "--gc-grace", "0s"]);
    assert_eq!(r["copied_deltas"], serde_json::json!(wanted), "{r}");
    assert_eq!(r["forgotten"], serde_json::json!(ids[1..3]), "{r}");
    assert_eq!(r["kept_as_base"], serde_json::json!([ids[0]]), "{r}");
    // Exactly the bytes (and so the sha256) the manifests recorded.
    let copies: Vec<String> = replica
        .list(format::DELTAS)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(copies, wanted);
    for (d, bytes) in newest.deltas.iter().zip(&embedded).take(2) {
        assert_eq!(&replica.get(&d.key).await.unwrap(), bytes, "{}", d.key);
        assert_eq!(format::sha256_hex(bytes), d.sha256);
    }
    // The forgotten snapshots no longer list; the kept one restores.
    let out = s3
        .mailsafe()
        .args(["snapshots", "--replica", &url, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[0].as_str(), ids[3].as_str()]);
    let target = dir.path().join("k.db");
    let o = restore(&s3, &url, &target, &["--snapshot", &ids[3]]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(row_ids(&target), 2015);
    let o = s3
        .mailsafe()
        .args(["verify", "--replica", &url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A re-base (a change bigger than a quarter of the base), then prune:
    // nothing lists the copies any more, so GC deletes them.
    for id in 2016..=4500 {
        insert(&db, id);
    }
    let rebased = snap.snapshot().await.unwrap();
    assert!(rebased.base, "{rebased:?}");
    let r = prune(&s3, &url, &["--keep-last", "1", "--gc-grace", "0s"]);
    for key in &wanted {
        assert!(
            r["deleted_objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == key),
            "{key} not collected: {r}"
        );
    }
    assert!(replica.list(format::DELTAS).await.unwrap().is_empty());
    let target = dir.path().join("rebased.db");
    let o = restore(&s3, &url, &target, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(row_ids(&target), 4500);
}

/// Snapshots run back to back while `prune --keep-last 1` runs in a loop
/// with a short grace period: every snapshot that remains restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_racing_snapshots_never_breaks_one() {
    let s3 = common::s3();
    let url = s3.url("race");
    let replica = s3.store("race").await;
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
    let replica = s3.store("cron").await;
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

/// Rewrites the payload of rows `ids` with fresh random bytes of the same
/// size, so exactly the pages holding them change.
fn rewrite(db: &rusqlite::Connection, ids: std::ops::RangeInclusive<i64>) {
    db.execute(
        "UPDATE t SET payload = randomblob(1000) WHERE id BETWEEN ?1 AND ?2",
        [*ids.start(), *ids.end()],
    )
    .unwrap();
}

/// Snapshots until one is a base (the deltas since the base outgrow it);
/// rewriting the same rows each time keeps the changed chunks the same.
async fn snapshot_until_base(
    snap: &mut Snapshotter,
    store: &dyn ObjectStore,
    db: &rusqlite::Connection,
    ids: std::ops::RangeInclusive<i64>,
) -> format::Manifest {
    for _ in 0..8 {
        rewrite(db, ids.clone());
        let r = snap.snapshot().await.unwrap();
        if r.base {
            let key = format::manifest_key(r.id.as_ref().unwrap());
            return format::Manifest::from_json(&key, &store.get(&key).await.unwrap()).unwrap();
        }
    }
    panic!("no re-base after 8 snapshots rewriting rows {ids:?}");
}

/// The packs a base's chunks live in.
fn packs_of(m: &format::Manifest) -> HashSet<String> {
    m.chunks.iter().filter_map(|c| c.pack.clone()).collect()
}

/// Dead space stays bounded: a re-base reuses a pack it still needs at least
/// half of in place, and rewrites the chunks it needs from a mostly dead pack
/// into its own packs; GC keeps a pack a kept base uses in part and deletes
/// one no kept manifest needs. Every snapshot restores afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebase_repacks_sparse_packs_and_gc_follows_pack_use() {
    let s3 = common::s3();
    let url = s3.url("repack");
    let replica = s3.store("repack").await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("repack.db");
    let db = create_db(&db_path);
    // ~6 MiB of incompressible rows in id (= page) order.
    db.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000)
         INSERT INTO t(id, at, payload) SELECT i, 0, randomblob(1000) FROM n;",
    )
    .unwrap();
    // One pack for the whole first base.
    let mut snap = Snapshotter::new(&db_path, replica.clone()).with_pack_bytes(64 << 20);
    let first = snap.snapshot().await.unwrap();
    assert!(first.base);
    let b1 = {
        let key = format::manifest_key(first.id.as_ref().unwrap());
        format::Manifest::from_json(&key, &replica.get(&key).await.unwrap()).unwrap()
    };
    let p0 = packs_of(&b1);
    assert_eq!(p0.len(), 1, "{p0:?}");
    let p0 = p0.into_iter().next().unwrap();
    let where_in = |m: &format::Manifest| -> std::collections::HashMap<String, String> {
        m.chunks
            .iter()
            .map(|c| (c.sha256.clone(), c.object_key()))
            .collect()
    };

    // Rewrite the first ~20%: the next base still needs ~80% of p0, so it
    // reuses p0 in place and packs only the changed chunks anew.
    let b2 = snapshot_until_base(&mut snap, replica.as_ref(), &db, 1..=1200).await;
    let before = where_in(&b1);
    let mut reused = 0;
    for c in &b2.chunks {
        if let Some(old) = before.get(&c.sha256) {
            assert_eq!(&c.object_key(), old, "an unchanged chunk moved");
            reused += 1;
        }
    }
    assert!(
        reused * 2 > b2.chunks.len(),
        "{reused} of {}",
        b2.chunks.len()
    );
    assert!(packs_of(&b2).contains(&p0));

    // GC with only b2 kept: p0 is partly dead but still needed, so it stays.
    let r = prune(&s3, &url, &["--keep-last", "1", "--gc-grace", "0s"]);
    let deleted: Vec<String> = r["deleted_objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert!(!deleted.contains(&p0), "{r}");
    replica.head(&p0).await.unwrap();

    // Rewrite the first ~80%: the next base would need only ~20% of p0, so
    // those chunks are written again into its own packs and p0 is unused.
    let b3 = snapshot_until_base(&mut snap, replica.as_ref(), &db, 1..=4800).await;
    let before = where_in(&b2);
    let mut moved = 0;
    for c in &b3.chunks {
        assert_ne!(c.object_key(), p0, "still read from the mostly dead pack");
        if before.get(&c.sha256) == Some(&p0) {
            moved += 1;
            assert!(c.pack.as_deref().unwrap().contains(&b3.id), "{c:?}");
        }
    }
    assert!(moved > 0, "no chunk was repacked");
    assert!(!packs_of(&b3).contains(&p0));
    // Every pack the new base uses is at least half live.
    for p in packs_of(&b3) {
        let mut seen = HashSet::new();
        let live: u64 = b3
            .chunks
            .iter()
            .filter(|c| c.pack.as_ref() == Some(&p) && seen.insert(c.sha256.clone()))
            .map(|c| c.stored_size)
            .sum();
        let size = b3
            .chunks
            .iter()
            .find(|c| c.pack.as_ref() == Some(&p))
            .unwrap()
            .pack_size
            .unwrap();
        assert!(live * 2 >= size, "{p}: {live} of {size} bytes live");
    }

    // GC with only b3 kept deletes p0 (and b2's pack), and what stays restores.
    let r = prune(&s3, &url, &["--keep-last", "1", "--gc-grace", "0s"]);
    let deleted: Vec<String> = r["deleted_objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert!(deleted.contains(&p0), "{r}");
    for p in packs_of(&b2).difference(&packs_of(&b3)) {
        assert!(deleted.contains(p), "{p} not deleted: {r}");
    }
    let out = dir.path().join("out.db");
    let res = s3
        .mailsafe()
        .args(["restore", "--replica", &url, "--db"])
        .arg(&out)
        .args(["--integrity-check", "full"])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let rows = |c: &rusqlite::Connection| -> String {
        c.query_row(
            "SELECT count(*) || ':' || group_concat(hex(substr(payload, 1, 8)), '') FROM (SELECT payload FROM t ORDER BY id)",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(rows(&rusqlite::Connection::open(&out).unwrap()), rows(&db));
}

/// Every key in the replica.
async fn keys(replica: &dyn ObjectStore) -> Vec<String> {
    let list = replica.list("").await.unwrap();
    list.into_iter().map(|o| o.key).collect()
}

/// Runs `prune --keep-last 1 --gc-grace 0s` (with `key` as
/// `MAILSAFE_ENCRYPTION_KEY` when given), asserts it exits 4 naming
/// `names` and deleted nothing; returns its stderr.
async fn prune_refused(
    s3: &common::S3,
    url: &str,
    replica: &dyn ObjectStore,
    key: Option<&str>,
    names: &str,
) -> String {
    let before = keys(replica).await;
    let mut cmd = s3.mailsafe();
    cmd.args([
        "prune",
        "--replica",
        url,
        "--keep-last",
        "1",
        "--gc-grace",
        "0s",
    ]);
    cmd.env_remove("MAILSAFE_ENCRYPTION_KEY");
    if let Some(k) = key {
        cmd.env("MAILSAFE_ENCRYPTION_KEY", k);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains(names), "stderr does not name {names}: {err}");
    assert_eq!(
        before,
        keys(replica).await,
        "prune deleted something: {err}"
    );
    err
}

/// A copy of `m`'s JSON as the manifest of snapshot `id`, `edit`ed; stored
/// at `id`'s key.
async fn plant(
    replica: &dyn ObjectStore,
    m: &format::Manifest,
    id: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let mut v = serde_json::to_value(m).unwrap();
    v["id"] = id.into();
    v["created"] = "2999-12-31T00:00:00Z".into();
    edit(&mut v);
    let key = format::manifest_key(id);
    replica
        .put(&key, Bytes::from(serde_json::to_vec(&v).unwrap()))
        .await
        .unwrap();
    key
}

/// A replica at `prefix` with three snapshots of a db of rows 1..=3
/// (encrypted with `key` when given); returns it and its head manifest.
async fn three_snapshots(
    s3: &common::S3,
    prefix: &str,
    dir: &std::path::Path,
    key: Option<mailsafe::crypto::Key>,
) -> (std::sync::Arc<dyn ObjectStore>, format::Manifest) {
    let replica = s3.store(prefix).await;
    let db_path = dir.join(format!("{prefix}.db"));
    let db = create_db(&db_path);
    let mut snap =
        Snapshotter::new(&db_path, replica.clone()).with_key(key.map(std::sync::Arc::new));
    for k in 1..=3i64 {
        insert(&db, k);
        snap.snapshot().await.unwrap();
    }
    let head = manifests(replica.as_ref()).await.pop().unwrap();
    (replica, head)
}

/// Scenario 3 of issue 12: someone holding only a PutObject credential
/// plants a manifest dated 2999 in an encrypted replica. Prune reads every
/// manifest through the one reader: the planted one has no valid MAC, so
/// prune deletes nothing, names it and exits 4 (on the old code it became
/// "newest" and `--keep-last 1` forgot every real snapshot). Without the
/// key an encrypted replica is not pruned at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_refuses_an_unauthenticated_manifest_in_an_encrypted_replica() {
    let s3 = common::s3();
    let url = s3.url("hostile-enc");
    let dir = tempfile::tempdir().unwrap();
    let raw = [9u8; 32];
    let key = mailsafe::crypto::Key::from_bytes(&raw);
    let (replica, head) = three_snapshots(&s3, "hostile-enc", dir.path(), Some(key)).await;
    let hex_key = hex::encode(raw);

    // No MAC at all.
    let planted = plant(
        replica.as_ref(),
        &head,
        "29991231T000000.000Z-deadbeef",
        |v| {
            v.as_object_mut().unwrap().remove("encryption");
        },
    )
    .await;
    prune_refused(&s3, &url, replica.as_ref(), Some(&hex_key), &planted).await;
    replica.delete(&planted).await.unwrap();
    // The real key id, a MAC that does not verify.
    let planted = plant(
        replica.as_ref(),
        &head,
        "29991231T000000.000Z-deadbee2",
        |_| {},
    )
    .await;
    prune_refused(&s3, &url, replica.as_ref(), Some(&hex_key), &planted).await;
    // Without the key nothing can be authenticated: nothing is pruned.
    prune_refused(&s3, &url, replica.as_ref(), None, "MAILSAFE_ENCRYPTION_KEY").await;
    replica.delete(&planted).await.unwrap();

    // The replica as written prunes, and the head restores every row.
    for cmd in [
        vec!["prune", "--keep-last", "1", "--gc-grace", "0s"],
        vec![
            "restore",
            "--db",
            dir.path().join("out.db").to_str().unwrap(),
        ],
    ] {
        common::run_ok(
            s3.mailsafe()
                .args(&cmd)
                .args(["--replica", &url])
                .env("MAILSAFE_ENCRYPTION_KEY", &hex_key),
        );
    }
    assert_eq!(row_ids(&dir.path().join("out.db")), 3);
}

/// Hostile manifests in a plaintext replica: a wrong version, an id that
/// does not match its key, absurd sizes, and a well-formed manifest dated
/// 2099 (nothing authenticates a plaintext manifest; the head being far
/// ahead of the clock is what gives it away). Each makes prune delete
/// nothing, name it and exit 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_refuses_hostile_manifests_in_a_plaintext_replica() {
    let s3 = common::s3();
    let url = s3.url("hostile-plain");
    let dir = tempfile::tempdir().unwrap();
    let (replica, head) = three_snapshots(&s3, "hostile-plain", dir.path(), None).await;
    let soon = "20991231T000000.000Z-0000000";
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 4] = [
        ("1", |v| v["version"] = 99.into(), "version 99"),
        (
            "2",
            |v| v["id"] = "20991231T000000.000Z-00000009".into(),
            "does not match",
        ),
        ("3", |v| v["chunk_pages"] = u32::MAX.into(), "chunk_pages"),
        // Well formed, parent = the real head: only its date is wrong.
        ("4", |_| {}, "ahead"),
    ];
    for (n, edit, why) in cases {
        let id = format!("{soon}{n}");
        let planted = plant(replica.as_ref(), &head, &id, |v| {
            v["parent"] = head.id.clone().into();
            if head.is_base() {
                v["base"] = id.clone().into();
            }
            edit(v)
        })
        .await;
        let err = prune_refused(&s3, &url, replica.as_ref(), None, &planted).await;
        assert!(err.contains(why), "case {n}: {err}");
        replica.delete(&planted).await.unwrap();
    }
    let r = restore(&s3, &url, &dir.path().join("out.db"), &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(row_ids(&dir.path().join("out.db")), 3);
}
