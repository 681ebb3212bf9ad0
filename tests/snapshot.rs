//! The snapshot writer against a real S3 (SeaweedFS, via `common`): every
//! snapshot is rebuilt here from the stored objects alone, each object and
//! the image digest verified, and the rebuilt database opened by SQLite and
//! checked by content.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use mailsafe::format::{self, Manifest};
use mailsafe::snapshot::{SnapshotReport, Snapshotter};
use mailsafe::store::{DynStore, ObjectMeta, ObjectStore, StoreError};
use mailsafe::watch::metrics::{self, MeteredStore, Metrics};
use rusqlite::Connection;

/// A real store metered by the engine's own [`MeteredStore`] (a decorator,
/// not a mock: every call reaches SeaweedFS). Derefs to the store;
/// `store.store.clone()` is the `DynStore` a snapshotter takes.
struct Counted {
    store: DynStore,
    metrics: Arc<Metrics>,
    s3: common::S3,
}

impl std::ops::Deref for Counted {
    type Target = dyn ObjectStore;
    fn deref(&self) -> &(dyn ObjectStore + 'static) {
        &*self.store
    }
}

impl Counted {
    /// (requests, PUTs, bytes PUT) so far.
    fn counts(&self) -> (u64, u64, u64) {
        (
            self.metrics.total_requests(),
            self.metrics.requests(metrics::Op::Put),
            self.metrics.bytes(metrics::Op::Put),
        )
    }

    /// A replica under `sub` inside this one's prefix, counted with it.
    async fn sub(&self, sub: &str) -> DynStore {
        MeteredStore::wrap(
            self.s3.store(&format!("replica/{sub}")).await,
            self.metrics.clone(),
        )
    }
}

/// A counted store on a fresh bucket of the test server.
async fn store() -> Counted {
    store_at(&common::s3()).await
}

/// A counted store on `s3`'s bucket, replica prefix `replica`.
async fn store_at(s3: &common::S3) -> Counted {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("mailsafe=debug")
        .try_init();
    let metrics = Metrics::new();
    Counted {
        store: MeteredStore::wrap(s3.store("replica").await, metrics.clone()),
        metrics,
        s3: s3.clone(),
    }
}

async fn manifest(store: &dyn ObjectStore, id: &str) -> Manifest {
    let key = format::manifest_key(id);
    Manifest::from_json(&key, &store.get(&key).await.unwrap()).unwrap()
}

/// Rebuilds snapshot `id` into the file `out` from the stored objects only,
/// checking every object's stored sha256, every chunk's content sha256 and
/// the image digest, as a restore must. Streams to the file, so large images
/// need no memory.
async fn rebuild(store: &dyn ObjectStore, id: &str, out: &Path) -> Manifest {
    let m = manifest(store, id).await;
    let base = if m.is_base() {
        m.clone()
    } else {
        manifest(store, &m.base).await
    };
    assert!(base.is_base());
    let ps = u64::from(m.db.page_size);
    let file = std::fs::File::create(out).unwrap();
    let chunk_bytes = u64::from(base.chunk_pages) * ps;
    for (i, c) in base.chunks.iter().enumerate() {
        let (key, range) = c.location();
        let z = store.get_range(&key, range).await.unwrap();
        assert_eq!(format::sha256_hex(&z), c.stored_sha256);
        assert_eq!(z.len() as u64, c.stored_size);
        let data = zstd::decode_all(&z[..]).unwrap();
        assert_eq!(format::sha256_hex(&data), c.sha256);
        // Zero chunks stay holes (set_len below), sparing disk on big images.
        if data.iter().any(|&b| b != 0) {
            file.write_all_at(&data, i as u64 * chunk_bytes).unwrap();
        }
    }
    for d in &m.deltas {
        let z = format::get_delta(store, d).await.unwrap();
        assert_eq!(format::sha256_hex(&z), d.sha256, "{}", d.key);
        assert_eq!(z.len() as u64, d.size);
        let raw = zstd::decode_all(&z[..]).unwrap();
        let (h, pages) = format::decode_delta(&d.key, &raw).unwrap();
        assert_eq!(h.page_size, m.db.page_size);
        for (pgno, page) in pages {
            file.write_all_at(page, u64::from(pgno - 1) * ps).unwrap();
        }
    }
    file.set_len(u64::from(m.db.page_count) * ps).unwrap();
    drop(file);

    // The image digest, from the rebuilt file, chunk by chunk.
    let bytes_per_chunk = (u64::from(m.chunk_pages) * ps) as usize;
    let file = std::fs::File::open(out).unwrap();
    let len = file.metadata().unwrap().len();
    let mut digests = Vec::new();
    let mut buf = vec![0u8; bytes_per_chunk];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(bytes_per_chunk);
        file.read_exact_at(&mut buf[..n], off).unwrap();
        let h = format::sha256(&buf[..n]);
        let i = digests.len();
        let want = m
            .chunk_overrides
            .get(&(i as u32))
            .cloned()
            .unwrap_or_else(|| base.chunks[i].sha256.clone());
        assert_eq!(
            hex::encode(h),
            want,
            "chunk {i} of {id} ({} deltas, base {})",
            m.deltas.len(),
            m.base
        );
        digests.push(h);
        off += n as u64;
    }
    assert_eq!(
        format::image_digest(m.db.page_size, m.db.page_count, &digests),
        m.db.image_sha256,
        "image digest of {id}"
    );
    m
}

/// Opens a rebuilt image and runs `PRAGMA integrity_check`.
fn open_checked(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{}", path.display());
    c
}

/// The deterministic payload of row `id`, so content proves which rows a
/// rebuilt db holds.
fn payload(id: i64, len: usize) -> Vec<u8> {
    let seed = format::sha256(&id.to_be_bytes());
    seed.iter().cycle().take(len).copied().collect()
}

/// Checks that `db` holds exactly rows `1..=n` of `t` with their payloads,
/// and returns `n`.
fn rows(db: &Connection) -> i64 {
    let mut stmt = db.prepare("SELECT id, payload FROM t ORDER BY id").unwrap();
    let mut n = 0;
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        let p: Vec<u8> = r.get(1).unwrap();
        n += 1;
        assert_eq!(id, n, "rows are not a committed prefix");
        assert_eq!(p, payload(id, p.len()), "row {id} content");
    }
    n
}

fn insert(db: &Connection, id: i64, len: usize) {
    db.execute(
        "INSERT INTO t(id, payload) VALUES (?1, ?2)",
        rusqlite::params![id, payload(id, len)],
    )
    .unwrap();
}

/// A database at `path` with `journal` mode and `page_size`, and table `t`.
fn create(path: &Path, journal: &str, page_size: u32) -> Connection {
    let db = Connection::open(path).unwrap();
    db.execute_batch(&format!(
        "PRAGMA page_size = {page_size}; PRAGMA journal_mode = {journal};
         CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB NOT NULL);"
    ))
    .unwrap();
    db
}

async fn snap(s: &mut Snapshotter) -> SnapshotReport {
    s.snapshot().await.unwrap()
}

#[tokio::test]
async fn wal_db_incremental_exact_and_unchanged_uploads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let db = create(&path, "WAL", 4096);
    for i in 1..=300 {
        insert(&db, i, 700);
    }
    let store = store().await;
    let mut s = Snapshotter::new(&path, store.store.clone());
    let first = snap(&mut s).await;
    assert!(first.base && first.full_scan, "{first:?}");
    let out = dir.path().join("r1.db");
    let m = rebuild(&*store, first.id.as_ref().unwrap(), &out).await;
    assert_eq!(m.stats.new_bytes, first.uploaded_bytes);
    assert_eq!(rows(&open_checked(&out)), 300);

    // One row: a delta found from the WAL, a few pages.
    // One PUT (format v2): the delta pack travels inside the manifest object.
    insert(&db, 301, 700);
    let before = store.counts();
    let second = snap(&mut s).await;
    assert!(!second.base && !second.full_scan, "{second:?}");
    assert!(second.delta_pages <= 4, "{second:?}");
    assert_eq!(second.uploaded_objects, 1, "{second:?}");
    let after = store.counts();
    assert_eq!(after.1 - before.1, 1, "one PUT per incremental snapshot");
    assert_eq!(after.2 - before.2, second.uploaded_bytes);
    let out = dir.path().join("r2.db");
    let m2 = rebuild(&*store, second.id.as_ref().unwrap(), &out).await;
    assert_eq!(m2.parent, first.id);
    assert_eq!(m2.stats.new_bytes, second.uploaded_bytes);
    let own = m2.deltas.last().unwrap();
    let (mkey, range) = own.embedded().expect("delta embedded in its manifest");
    assert_eq!(mkey, format::manifest_key(second.id.as_ref().unwrap()));
    assert_eq!(
        range.end, second.uploaded_bytes,
        "the delta ends the object"
    );
    assert!(store.list(format::DELTAS).await.unwrap().is_empty());
    assert_eq!(rows(&open_checked(&out)), 301);

    // Unchanged: no request at all, no id.
    let before = store.counts();
    let third = snap(&mut s).await;
    assert_eq!(third.id, None);
    assert_eq!(store.counts(), before);

    // A new snapshotter (a new process) continues the same history from the
    // stored manifest, still reading only the WAL's new frames.
    insert(&db, 302, 700);
    let mut fresh = Snapshotter::new(&path, store.store.clone());
    let fourth = snap(&mut fresh).await;
    assert!(!fourth.base && !fourth.full_scan, "{fourth:?}");
    let out = dir.path().join("r4.db");
    let m4 = rebuild(&*store, fourth.id.as_ref().unwrap(), &out).await;
    assert_eq!(m4.parent, second.id);
    assert_eq!(m4.deltas.len(), 2);
    assert_eq!(rows(&open_checked(&out)), 302);

    // Unchanged for a new process too: reads the manifest, uploads nothing.
    let before = store.counts();
    let mut fresh = Snapshotter::new(&path, store.store.clone());
    assert_eq!(snap(&mut fresh).await.id, None);
    let after = store.counts();
    assert_eq!((after.1, after.2), (before.1, before.2), "no PUT");
}

#[tokio::test]
async fn page_sizes_and_journal_modes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = store().await;
    for (i, (journal, ps)) in [
        ("DELETE", 512),
        ("WAL", 1024),
        ("TRUNCATE", 4096),
        ("PERSIST", 16384),
        ("WAL", 65536),
        ("DELETE", 65536),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("db{i}.db"));
        let db = create(&path, journal, ps);
        for r in 1..=40 {
            insert(&db, r, 3000);
        }
        // Each db in its own replica prefix of the same bucket.
        let sub = store.sub(&format!("db{i}/")).await;
        let mut s = Snapshotter::new(&path, sub.clone());
        let a = snap(&mut s).await;
        let out = dir.path().join(format!("out{i}.db"));
        let m = rebuild(&*sub, a.id.as_ref().unwrap(), &out).await;
        assert_eq!(m.db.page_size, ps, "{journal}");
        assert_eq!(rows(&open_checked(&out)), 40, "{journal} {ps}");

        db.execute("DELETE FROM t WHERE id > 30", []).unwrap();
        for r in 31..=45 {
            insert(&db, r, 100);
        }
        let b = snap(&mut s).await;
        assert!(b.id.is_some(), "{journal} {ps}: {b:?}");
        if journal == "WAL" {
            assert!(!b.full_scan, "{journal} {ps}: {b:?}");
        }
        let m = rebuild(&*sub, b.id.as_ref().unwrap(), &out).await;
        assert_eq!(m.parent, a.id);
        assert_eq!(rows(&open_checked(&out)), 45, "{journal} {ps}");

        let before = store.counts();
        assert_eq!(snap(&mut s).await.id, None, "{journal} {ps} unchanged");
        assert_eq!(store.counts(), before, "{journal} {ps} unchanged");
    }
}

#[tokio::test]
async fn empty_db_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    std::fs::File::create(&path).unwrap();
    let store = store().await;
    let mut s = Snapshotter::new(&path, store.store.clone());
    let r = snap(&mut s).await;
    assert_eq!(r.db_size, 0);
    let out = dir.path().join("out.db");
    let m = rebuild(&*store, r.id.as_ref().unwrap(), &out).await;
    assert_eq!(m.db.page_count, 0);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 0);
    // Opening the empty image gives an empty, valid database.
    let c = open_checked(&out);
    let n: i64 = c
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(snap(&mut s).await.id, None);
}

#[tokio::test]
async fn one_row_on_a_100_mib_db_uploads_under_2_percent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let db = create(&path, "WAL", 4096);
    db.execute_batch("BEGIN").unwrap();
    // Incompressible rows: the base really is ~100 MiB.
    for i in 1..=26_000 {
        db.execute(
            "INSERT INTO t(id, payload) VALUES (?1, randomblob(4000))",
            [i],
        )
        .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    let store = store().await;
    let mut s = Snapshotter::new(&path, store.store.clone());
    let first = snap(&mut s).await;
    assert!(first.db_size >= 100 << 20, "{first:?}");
    db.execute(
        "INSERT INTO t(id, payload) VALUES (26001, randomblob(4000))",
        [],
    )
    .unwrap();
    // A new process, as a cron job would be.
    let mut s = Snapshotter::new(&path, store.store.clone());
    let second = snap(&mut s).await;
    assert!(!second.full_scan && !second.base, "{second:?}");
    assert!(
        second.uploaded_bytes * 50 < first.db_size,
        "second uploaded {} of {}",
        second.uploaded_bytes,
        first.db_size
    );
    let out = dir.path().join("out.db");
    rebuild(&*store, second.id.as_ref().unwrap(), &out).await;
    let c = open_checked(&out);
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 26_001);
}

/// A writer thread on `path` committing rows 1, 2, ... (200 to 3200 bytes)
/// until `stop` or 20 000 rows, checkpointing every `autocheckpoint` pages,
/// with `rewrites` also rewriting an old row every 50; publishes each
/// committed id in `committed` and returns the slowest commit.
fn spawn_writer(
    path: &Path,
    autocheckpoint: u32,
    rewrites: bool,
    committed: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<std::time::Duration> {
    let (path, committed, stop) = (path.to_path_buf(), committed.clone(), stop.clone());
    std::thread::spawn(move || {
        let db = Connection::open(&path).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(60)).unwrap();
        db.execute_batch(&format!("PRAGMA wal_autocheckpoint = {autocheckpoint}"))
            .unwrap();
        let mut slowest = std::time::Duration::ZERO;
        let mut id = 0;
        // Bounded in count as well as by the stop flag.
        while !stop.load(Ordering::SeqCst) && id < 20_000 {
            id += 1;
            let t = std::time::Instant::now();
            insert(&db, id, 200 + (id as usize * 37) % 3000);
            slowest = slowest.max(t.elapsed());
            committed.store(id as u64, Ordering::SeqCst);
            // A busy but not saturating writer: a mail server's pace.
            std::thread::sleep(std::time::Duration::from_millis(1));
            if rewrites && id % 50 == 0 {
                // Rewrites of old rows too, not only appends.
                db.execute("UPDATE t SET payload = payload WHERE id = ?1", [id / 2])
                    .unwrap();
            }
        }
        slowest
    })
}

/// A writer commits continuously (with frequent checkpoints, so the WAL
/// restarts under the snapshots) while snapshots are taken: every snapshot
/// rebuilds to a state the writer committed, between what was committed
/// when the snapshot started and when it ended.
#[tokio::test]
async fn snapshots_during_continuous_writes_are_committed_states() {
    for journal in ["WAL", "DELETE"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.db");
        let db = create(&path, journal, 4096);
        db.execute_batch("PRAGMA wal_autocheckpoint = 200").unwrap();
        drop(db);
        let committed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(&path, 200, true, &committed, &stop);
        let s3 = common::s3();
        let store = store_at(&s3).await;
        let mut s = Snapshotter::new(&path, store.store.clone());
        let mut taken = Vec::new();
        let mut incremental = 0;
        for _ in 0..12 {
            tokio::time::sleep(std::time::Duration::from_millis(60)).await;
            let lo = committed.load(Ordering::SeqCst);
            let r = snap(&mut s).await;
            // The writer publishes an id just after its commit, so one
            // commit may be in the db but not yet in the counter.
            let hi = committed.load(Ordering::SeqCst) + 1;
            if !r.full_scan {
                incremental += 1;
            }
            if let Some(id) = r.id {
                taken.push((id, lo, hi));
            }
        }
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        assert!(
            taken.len() >= 6,
            "{journal}: only {} snapshots",
            taken.len()
        );
        if journal == "WAL" {
            assert!(incremental >= 3, "{journal}: {incremental} incremental");
        }
        for (k, (id, lo, hi)) in taken.iter().enumerate() {
            let out = dir.path().join(format!("out{k}.db"));
            rebuild(&*store, id, &out).await;
            let n = rows(&open_checked(&out)) as u64;
            assert!(
                (*lo..=*hi).contains(&n),
                "{journal} snapshot {id}: {n} rows, committed {lo}..={hi}"
            );
            // The restore engineer's `mailsafe restore` agrees.
            if k % 4 == 3 {
                let target = dir.path().join(format!("restored{k}.db"));
                common::run_ok(
                    s3.mailsafe()
                        .args(["restore", "--integrity-check", "full", "--snapshot", id])
                        .arg("--db")
                        .arg(&target)
                        .args(["--replica", &s3.url("replica")]),
                );
                assert_eq!(rows(&open_checked(&target)) as u64, n, "restored {id}");
            }
        }
        common::run_ok(
            s3.mailsafe()
                .args(["verify", "--all", "--replica", &s3.url("replica")]),
        );
    }
}

/// The WAL restarting between two snapshots (checkpoint, then a new write
/// overwriting the WAL from its start) is followed from the old frames left
/// in the file, without a full scan, and the result is exact.
#[tokio::test]
async fn wal_restart_is_followed_incrementally() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.db");
    let db = create(&path, "WAL", 4096);
    db.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
    // A long first WAL generation, so later ones leave its frames behind.
    for i in 1..=200 {
        insert(&db, i, 3000);
    }
    db.execute_batch("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
    // Restarts the WAL: generation 2 overwrites its first frames.
    for i in 201..=210 {
        insert(&db, i, 100);
    }
    let store = store().await;
    let mut s = Snapshotter::new(&path, store.store.clone());
    let a = snap(&mut s).await;
    for i in 211..=230 {
        insert(&db, i, 100);
    }
    db.execute_batch("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
    // Restarts again: generation 3 overwrites a few frames; generation 2's
    // frames after the snapshot are still there, then generation 1's.
    insert(&db, 231, 100);
    let b = snap(&mut s).await;
    assert!(!b.full_scan, "{b:?}");
    assert!(!b.base, "{b:?}");
    let out = dir.path().join("out.db");
    let m = rebuild(&*store, b.id.as_ref().unwrap(), &out).await;
    assert_eq!(m.parent, a.id);
    assert_eq!(rows(&open_checked(&out)), 231);

    // Restart with the old generation running to end-of-file (the WAL file
    // is exactly as long as generation 3 was).
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    for i in 232..=240 {
        insert(&db, i, 100);
    }
    let c = snap(&mut s).await;
    for i in 241..=250 {
        insert(&db, i, 100);
    }
    db.execute_batch("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
    insert(&db, 251, 100);
    let d = snap(&mut s).await;
    assert!(!d.full_scan, "{d:?}");
    let m = rebuild(&*store, d.id.as_ref().unwrap(), &out).await;
    assert_eq!(m.parent, c.id);
    assert_eq!(rows(&open_checked(&out)), 251);

    // A TRUNCATE checkpoint loses the old frames: detected, full scan, and
    // still exact.
    insert(&db, 252, 100);
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    insert(&db, 253, 100);
    let e = snap(&mut s).await;
    assert!(e.full_scan, "{e:?}");
    rebuild(&*store, e.id.as_ref().unwrap(), &out).await;
    assert_eq!(rows(&open_checked(&out)), 253);
}

/// An application that checkpoints often (here every 20 pages) restarts its
/// WAL several times between two snapshots, which used to lose the changed
/// pages' numbers and force a full scan of the db (issue 18). With the WAL
/// pinned (`watch`'s snapshotter), the WAL cannot restart unseen: resets
/// happen under our write lock with the pages carried over, no snapshot
/// after the first full-scans, and every committed row restores.
#[tokio::test]
async fn pinned_wal_restarts_never_cause_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    for pinned in [false, true] {
        let path = dir.path().join(format!("pin-{pinned}.db"));
        let db = create(&path, "WAL", 4096);
        db.execute_batch("PRAGMA wal_autocheckpoint = 20").unwrap();
        let store = store().await;
        let mut s = Snapshotter::new(&path, store.store.clone())
            .with_wal_pin(pinned)
            .with_wal_reset_frames(100);
        let mut id = 0;
        let first = snap(&mut s).await;
        assert!(first.full_scan, "{first:?}");
        let (mut full, mut resets, mut last) = (0, 0, first);
        for _ in 0..6 {
            // About 80 frames: four checkpoints' worth of the application's.
            for _ in 0..40 {
                id += 1;
                insert(&db, id, 3000);
            }
            last = snap(&mut s).await;
            full += u32::from(last.full_scan);
            resets += u32::from(last.wal_reset.is_some());
            if let Some(r) = &last.wal_reset {
                assert!(r.carried && r.checkpointed > 0, "{r:?}");
            }
        }
        if pinned {
            assert_eq!(full, 0, "a pinned WAL full-scanned");
            assert!(resets >= 2, "{resets} resets");
        } else {
            // The case the pin is for: without it, the restarts lose track.
            assert!(full >= 3, "unpinned: only {full} full scans");
            assert_eq!(resets, 0);
        }
        let out = dir.path().join(format!("out-{pinned}.db"));
        rebuild(&*store, last.id.as_ref().unwrap(), &out).await;
        assert_eq!(rows(&open_checked(&out)), id, "pinned={pinned}");
    }
}

/// The application is usually another process: the pin must hold against
/// it (SQLite's locks are POSIX locks, which one close() of the db or `-shm`
/// anywhere in our process drops; reading the wal-index did exactly that).
/// The `sqlite3` shell checkpoints every 10 pages and exits (its last close
/// would checkpoint and delete the WAL) between snapshots: the WAL must not
/// restart or vanish unseen, so no snapshot after the first full-scans.
#[tokio::test]
async fn pin_holds_against_an_application_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    drop(create(&path, "WAL", 4096));
    let store = store().await;
    let mut s = Snapshotter::new(&path, store.store.clone()).with_wal_pin(true);
    assert!(snap(&mut s).await.full_scan);
    let mut id = 0;
    for round in 0..3 {
        let mut script = String::from("PRAGMA wal_autocheckpoint = 10;\n");
        for _ in 0..60 {
            id += 1;
            script += &format!("INSERT INTO t(id, payload) VALUES ({id}, randomblob(3000));\n");
        }
        let out = std::process::Command::new("sqlite3")
            .arg("-cmd")
            .arg(".timeout 30000")
            .arg(&path)
            .arg(&script)
            .output()
            .expect("sqlite3 (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = snap(&mut s).await;
        assert!(!r.full_scan, "round {round}: {r:?}");
    }
    let last = snap(&mut s).await;
    let out = dir.path().join("out.db");
    let m = rebuild(&*store, &s_last_id(&*store).await, &out).await;
    assert!(last.id.is_none() || last.id.as_deref() == Some(m.id.as_str()));
    let c = open_checked(&out);
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, id);
}

/// While the WAL is pinned and reset under a continuous writer, the writer
/// waits for a reset only as long as the reset holds the write lock (a
/// bound far above the milliseconds measured, so a loaded machine cannot
/// fail it), snapshots never full-scan after the first, and the last one
/// restores every committed row.
#[tokio::test]
async fn pinned_wal_resets_under_a_continuous_writer_block_it_briefly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.db");
    let db = create(&path, "WAL", 4096);
    drop(db);
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&path, 20, false, &committed, &stop);
    let store = store().await;
    let mut s = Snapshotter::new(&path, store.store.clone())
        .with_wal_pin(true)
        .with_wal_reset_frames(100);
    let mut resets = Vec::new();
    let mut full = 0;
    let mut snapshots = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while resets.len() < 4 && std::time::Instant::now() < deadline {
        // Wait for some commits (a condition, not a fixed delay).
        let seen = committed.load(Ordering::SeqCst);
        while committed.load(Ordering::SeqCst) < seen + 30 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let r = snap(&mut s).await;
        if snapshots > 0 {
            full += u32::from(r.full_scan);
        }
        snapshots += 1;
        if let Some(x) = r.wal_reset {
            resets.push(x);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let slowest_commit = writer.join().unwrap();
    let last = snap(&mut s).await;
    full += u32::from(last.full_scan);
    assert!(
        resets.len() >= 4,
        "only {} resets in {snapshots} snapshots",
        resets.len()
    );
    assert_eq!(full, 0, "{full} full scans after the first");
    let held = resets.iter().map(|r| r.write_lock_held).max().unwrap();
    eprintln!(
        "write lock held at most {held:?} over {} resets; slowest commit {slowest_commit:?}",
        resets.len()
    );
    assert!(
        held < std::time::Duration::from_secs(10),
        "write lock held {held:?}"
    );
    assert!(
        slowest_commit < std::time::Duration::from_secs(30),
        "a commit waited {slowest_commit:?}"
    );
    let out = dir.path().join("out.db");
    let id = match &last.id {
        Some(id) => id.clone(),
        None => s_last_id(&*store).await,
    };
    rebuild(&*store, &id, &out).await;
    assert_eq!(
        rows(&open_checked(&out)) as u64,
        committed.load(Ordering::SeqCst)
    );
}

/// The newest snapshot id in the replica.
async fn s_last_id(store: &dyn ObjectStore) -> String {
    let list = store.list(format::MANIFESTS).await.unwrap();
    let key = list
        .iter()
        .rev()
        .find_map(|o| format::manifest_id(&o.key))
        .unwrap();
    key.to_string()
}

/// Free bytes for unprivileged users on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed struct we pass; the path is a valid
    // NUL-terminated string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(c.as_ptr(), &mut st) },
        0,
        "statvfs {}",
        dir.display()
    );
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Writes a ~1.2 GiB source db (SQLite writes the zero pages for real;
/// the rebuilt copy keeps them as holes). SeaweedFS refuses every write
/// (HTTP 500, "no writable volumes") when the disk gets near full, which
/// would fail concurrent tests too, so this runs only when the disk keeps
/// at least 2 GiB free afterwards, and otherwise says so and skips.
#[tokio::test]
async fn large_sparse_db_stores_repeated_chunks_once() {
    let dir = tempfile::tempdir().unwrap();
    let need = (1300u64 << 20) + (2u64 << 30);
    let free = free_bytes(dir.path());
    if free < need {
        eprintln!(
            "SKIPPED large_sparse_db_stores_repeated_chunks_once: {} MiB free under {}, needs {} MiB",
            free >> 20,
            dir.path().display(),
            need >> 20
        );
        return;
    }
    let path = dir.path().join("sparse.db");
    // Rollback journal: the zeroed pages are written once, not also to a WAL.
    let db = create(&path, "DELETE", 65536);
    // Past the 1 GiB lock-byte page, mostly zeros (a blob is at most 1e9
    // bytes, so two).
    for id in [1, 3] {
        db.execute(
            "INSERT INTO t(id, payload) VALUES (?1, zeroblob(600 * 1024 * 1024))",
            [id],
        )
        .unwrap();
    }
    insert(&db, 2, 5000);
    let store = store().await;
    let mut s = Snapshotter::new(&path, store.store.clone());
    let r = snap(&mut s).await;
    assert!(r.db_size > 1200 << 20, "{r:?}");
    assert!(r.uploaded_bytes < 2 << 20, "{r:?}");
    let out = dir.path().join("out.db");
    rebuild(&*store, r.id.as_ref().unwrap(), &out).await;
    let c = open_checked(&out);
    let len: i64 = c
        .query_row("SELECT length(payload) FROM t WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(len, 600 * 1024 * 1024);
    let p: Vec<u8> = c
        .query_row("SELECT payload FROM t WHERE id = 2", [], |r| r.get(0))
        .unwrap();
    assert_eq!(p, payload(2, 5000));
}

/// A database written by another program (the sqlite3 CLI), in a journal
/// mode and page size of its choosing, through the `mailsafe` binary.
#[tokio::test]
async fn cli_snapshots_a_sqlite3_cli_db_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.db");
    let sql = |stmt: &str| {
        let st = std::process::Command::new("sqlite3")
            .arg(&path)
            .arg(stmt)
            .status()
            .unwrap();
        assert!(st.success(), "sqlite3 {stmt}");
    };
    sql("PRAGMA page_size=8192; PRAGMA journal_mode=TRUNCATE; \
         CREATE TABLE notes(n INTEGER PRIMARY KEY, body TEXT); \
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 500) \
         INSERT INTO notes SELECT x, printf('note %d %s', x, hex(randomblob(50))) FROM c;");
    let s3 = common::s3();
    let url = s3.url("cli");
    let run = || {
        let out = common::run_ok(
            s3.mailsafe()
                .args(["snapshot", "--json", "--db"])
                .arg(&path)
                .args(["--replica", &url]),
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run();
    assert_eq!(first["base"], true, "{first}");
    sql("INSERT INTO notes(body) VALUES ('one more');");
    let second = run();
    // (The whole db is one chunk, so this may well be a re-base.)
    assert!(second["id"].is_string(), "{second}");
    assert!(
        second["uploaded_bytes"].as_u64().unwrap() < 64 * 1024,
        "{second}"
    );
    let third = run();
    assert!(third["id"].is_null(), "{third}");
    assert_eq!(third["uploaded_bytes"], 0, "{third}");

    // Rebuild the newest from the bucket and compare content with sqlite3.
    let store = s3.store("cli").await;
    let out = dir.path().join("out.db");
    rebuild(&*store, second["id"].as_str().unwrap(), &out).await;
    let c = open_checked(&out);
    let got: BTreeMap<i64, String> = c
        .prepare("SELECT n, body FROM notes")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let src = Connection::open(&path).unwrap();
    let want: BTreeMap<i64, String> = src
        .prepare("SELECT n, body FROM notes")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got.len(), 501);
    assert_eq!(got, want);
}

#[tokio::test]
async fn cli_refuses_missing_and_non_sqlite_files_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = common::s3();
    let url = s3.url("bad");
    let missing = dir.path().join("missing.db");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"this is not a database, just some text").unwrap();
    for path in [&missing, &junk] {
        let out = s3
            .mailsafe()
            .args(["snapshot", "--db"])
            .arg(path)
            .args(["--replica", &url])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&*path.to_string_lossy()), "{err}");
    }
    assert!(!missing.exists(), "a missing db must not be created");
    assert_eq!(
        std::fs::read(&junk).unwrap(),
        b"this is not a database, just some text"
    );
}

/// A real store whose uploads are slow, like a distant S3.
#[derive(Debug)]
struct Slow {
    inner: DynStore,
    delay: std::time::Duration,
}

#[async_trait::async_trait]
impl ObjectStore for Slow {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.put_if_absent(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, r: std::ops::Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, r).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key).await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<String, StoreError> {
        self.inner.put_if_match(key, body, etag).await
    }
}

/// In rollback-journal mode a reader's SHARED lock blocks writers, so the
/// snapshot holds it only while reading: a writer that never waits
/// (busy_timeout 0) commits many times while the slow upload runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_mode_writer_is_not_blocked_during_upload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollback.db");
    let db = create(&path, "DELETE", 4096);
    db.execute_batch("BEGIN").unwrap();
    for i in 1..=2000 {
        db.execute(
            "INSERT INTO t(id, payload) VALUES (?1, randomblob(3000))",
            [i],
        )
        .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    let counting = store().await;
    let store: DynStore = Arc::new(Slow {
        inner: counting.store.clone(),
        delay: std::time::Duration::from_millis(150),
    });
    let started = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, started, done) = (path.clone(), started.clone(), done.clone());
        std::thread::spawn(move || {
            let db = Connection::open(&path).unwrap();
            db.busy_timeout(std::time::Duration::ZERO).unwrap();
            while !started.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let (mut ok, mut id) = (0, 2000);
            while !done.load(Ordering::SeqCst) && id < 3000 {
                if db
                    .execute(
                        "INSERT INTO t(id, payload) VALUES (?1, randomblob(100))",
                        [id + 1],
                    )
                    .is_ok()
                {
                    id += 1;
                    ok += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            ok
        })
    };
    let mut s = Snapshotter::new(&path, store.clone()).with_pack_bytes(256 << 10);
    started.store(true, Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    let r = snap(&mut s).await;
    let took = t0.elapsed();
    done.store(true, Ordering::SeqCst);
    let commits = writer.join().unwrap();
    // ~24 incompressible chunks, one per pack at this pack size, at 150 ms
    // each, 4 at a time: the upload takes ~1 s.
    assert!(r.uploaded_objects >= 20, "{r:?}");
    assert!(took >= std::time::Duration::from_millis(700), "{took:?}");
    assert!(
        commits >= 10,
        "only {commits} commits during a {took:?} snapshot"
    );
    let out = dir.path().join("out.db");
    rebuild(&*counting, r.id.as_ref().unwrap(), &out).await;
    let c = open_checked(&out);
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!((2000..=2000 + commits).contains(&n), "{n} rows");
}

/// splitmix64: the writer's and the checker's shared, deterministic choices.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One row change of the stress writer.
enum Op {
    /// Insert or replace row `id` at version `v` with a payload of `len`.
    Put(i64, u32, u32),
    /// Delete row `id`.
    Delete(i64),
}

/// What table `s` holds after each commit of the stress writer, replayed
/// without SQLite: commit `k`'s changes are a pure function of `k` and the
/// rows before it, so the checker can rebuild the state any snapshot claims.
#[derive(Default)]
struct Model {
    /// (id, version, payload length), in an order both sides share.
    rows: Vec<(i64, u32, u32)>,
    next_id: i64,
}

impl Model {
    /// Applies commit `k` to the model and returns its row changes: mostly
    /// appends (the db grows inside and across chunks), rewrites of old rows
    /// (new lengths move overflow pages), small deletes and now and then a
    /// large one (the file shrinks under incremental vacuum).
    fn step(&mut self, k: u64) -> Vec<Op> {
        let mut r = mix(k);
        let mut next = move || {
            r = mix(r);
            r
        };
        let mut ops = Vec::new();
        let roll = next() % 100;
        let n = self.rows.len();
        let len = |x: u64| 50 + (x % 7000) as u32;
        if k == 0 {
            // The starting db: big enough (~5 MiB, 80 chunks) that most
            // snapshots are deltas rather than re-bases.
            for _ in 0..1500 {
                self.next_id += 1;
                let l = len(next());
                self.rows.push((self.next_id, 0, l));
                ops.push(Op::Put(self.next_id, 0, l));
            }
        } else if roll < 55 || n < 40 {
            for _ in 0..1 + next() % 4 {
                self.next_id += 1;
                let l = len(next());
                self.rows.push((self.next_id, 0, l));
                ops.push(Op::Put(self.next_id, 0, l));
            }
        } else if roll < 85 {
            for _ in 0..1 + next() % 3 {
                let i = (next() % self.rows.len() as u64) as usize;
                let row = &mut self.rows[i];
                row.1 += 1;
                row.2 = len(next());
                ops.push(Op::Put(row.0, row.1, row.2));
            }
        } else {
            let m = if roll < 98 {
                1 + next() % 3
            } else {
                n as u64 / 10
            };
            for _ in 0..m {
                let i = (next() % self.rows.len() as u64) as usize;
                ops.push(Op::Delete(self.rows.swap_remove(i).0));
            }
        }
        ops
    }
}

/// Payload of row `id` at version `v`: distinct per version (so a restored
/// row proves which write it came from) and incompressible, so that deltas
/// weigh what they would on real mail and most snapshots stay deltas.
fn versioned(id: i64, v: u32, len: u32) -> Vec<u8> {
    let mut r = mix((id as u64) << 20 ^ u64::from(v));
    let mut out = Vec::with_capacity(len as usize + 8);
    while out.len() < len as usize {
        r = mix(r);
        out.extend_from_slice(&r.to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// Runs `sql` until SQLite stops answering "busy": a snapshot's read
/// transaction can briefly hold off VACUUM and journal-mode changes.
fn retry_busy(db: &Connection, sql: &str) {
    for _ in 0..200 {
        match db.execute_batch(sql) {
            Ok(()) => return,
            Err(e) if e.to_string().contains("locked") || e.to_string().contains("busy") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
    panic!("{sql}: still busy after 200 attempts");
}

/// The stress writer: commit `k` applies `Model::step(k)` and records `k` in
/// `meta`, then maintenance on a fixed schedule that moves pages without
/// changing content: incremental vacuum after deletes (the file shrinks,
/// including inside a chunk), PASSIVE / RESTART / TRUNCATE checkpoints (the
/// WAL restarts under the snapshots, once or several times between two),
/// VACUUM (every page rewritten) and once a page-size change.
fn stress_writer(path: &Path, committed: &AtomicU64, stop: &AtomicBool, max: u64) {
    let db = Connection::open(path).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
    let mut model = Model::default();
    let mut k = 0;
    let mut first = true;
    while !stop.load(Ordering::SeqCst) && k < max {
        if !std::mem::take(&mut first) {
            k += 1;
        }
        let ops = model.step(k);
        let deletes = ops.iter().any(|o| matches!(o, Op::Delete(_)));
        let tx = db.unchecked_transaction().unwrap();
        for op in ops {
            match op {
                Op::Put(id, v, len) => tx
                    .execute(
                        "INSERT OR REPLACE INTO s(id, v, payload) VALUES (?1, ?2, ?3)",
                        rusqlite::params![id, v, versioned(id, v, len)],
                    )
                    .unwrap(),
                Op::Delete(id) => tx.execute("DELETE FROM s WHERE id = ?1", [id]).unwrap(),
            };
        }
        tx.execute("UPDATE meta SET k = ?1", [k]).unwrap();
        tx.commit().unwrap();
        committed.store(k, Ordering::SeqCst);
        if deletes {
            retry_busy(&db, "PRAGMA incremental_vacuum");
        }
        if k == 900 {
            // Page size can only change outside WAL mode.
            retry_busy(&db, "PRAGMA journal_mode = DELETE");
            retry_busy(&db, "PRAGMA page_size = 8192; VACUUM");
            retry_busy(&db, "PRAGMA journal_mode = WAL");
        } else if k % 701 == 0 {
            retry_busy(&db, "VACUUM");
        } else if k % 401 == 0 {
            retry_busy(&db, "PRAGMA wal_checkpoint(TRUNCATE)");
        } else if k % 197 == 0 {
            retry_busy(&db, "PRAGMA wal_checkpoint(RESTART)");
        } else if k % 61 == 0 {
            retry_busy(&db, "PRAGMA wal_checkpoint(PASSIVE)");
        }
        // Paced so that several snapshots fall between two WAL restarts
        // (every 197 commits) whatever the machine's speed: unpaced, a quiet
        // machine finishes the 2500 commits in a few seconds and leaves too
        // few incremental snapshots to exercise deltas.
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
}

/// Checks that the restored db at `path` holds exactly what the stress
/// writer had committed after commit `k` (its `meta` row), replaying
/// `model` forward from commit `*at`.
fn check_stress_state(path: &Path, model: &mut Model, at: &mut u64) -> u64 {
    let db = Connection::open(path).unwrap();
    let k: u64 = db
        .query_row("SELECT k FROM meta", [], |r| r.get(0))
        .unwrap();
    assert!(k >= *at, "snapshots went back in time: {k} after {at}");
    while *at < k {
        *at += 1;
        model.step(*at);
    }
    let want: HashMap<i64, (u32, u32)> =
        model.rows.iter().map(|&(id, v, l)| (id, (v, l))).collect();
    let mut st = db.prepare("SELECT id, v, payload FROM s").unwrap();
    let mut rows = st.query([]).unwrap();
    let mut n = 0;
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        let v: u32 = r.get(1).unwrap();
        let p: Vec<u8> = r.get(2).unwrap();
        let Some(&(wv, wl)) = want.get(&id) else {
            panic!("commit {k}: row {id} should not exist");
        };
        assert_eq!(v, wv, "commit {k}: row {id} version");
        assert!(p == versioned(id, wv, wl), "commit {k}: row {id} payload");
        n += 1;
    }
    assert_eq!(n, want.len(), "commit {k}: row count");
    k
}

/// One snapshot of the churn test: records its id with the commits seen
/// before and after it, and whether it was incremental or a base.
async fn take(
    s: &mut Snapshotter,
    committed: &AtomicU64,
    taken: &mut Vec<(String, u64, u64)>,
    incremental: &mut u32,
    bases: &mut u32,
) {
    let lo = committed.load(Ordering::SeqCst);
    let r = snap(s).await;
    let hi = committed.load(Ordering::SeqCst);
    *incremental += u32::from(!r.full_scan);
    *bases += u32::from(r.base);
    if let Some(id) = r.id {
        taken.push((id, lo, hi));
    }
}

/// The engine under adversarial change (the 11:18 bench failure: a delta
/// that missed pages appended during a load): a writer appends, rewrites and
/// deletes rows of a WAL db that grows and shrinks through chunk boundaries,
/// with checkpoints that restart the WAL (once or more between snapshots),
/// VACUUM and a page-size change, while dozens of incremental snapshots are
/// taken (a new snapshotter process every few, continuing from the replica).
/// Then EVERY snapshot is restored through `mailsafe::restore` (all objects,
/// the image digest and a full integrity_check verified) and must equal,
/// row by row, the state the writer committed at that snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_snapshot_of_a_churning_db_restores_to_its_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("churn.db");
    let db = Connection::open(&path).unwrap();
    db.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA auto_vacuum = INCREMENTAL;
         PRAGMA journal_mode = WAL;
         CREATE TABLE s(id INTEGER PRIMARY KEY, v INTEGER NOT NULL, payload BLOB NOT NULL);
         CREATE TABLE meta(k INTEGER NOT NULL); INSERT INTO meta VALUES (0);",
    )
    .unwrap();
    drop(db);
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    const MAX_COMMITS: u64 = 2500;
    let writer = {
        let (path, committed, stop) = (path.clone(), committed.clone(), stop.clone());
        std::thread::spawn(move || stress_writer(&path, &committed, &stop, MAX_COMMITS))
    };
    let s3 = common::s3();
    let store = store_at(&s3).await;
    let mut s = Snapshotter::new(&path, store.store.clone());
    let mut taken = Vec::new();
    let (mut incremental, mut bases) = (0, 0);
    // Snapshots start once the seed (commit 0, indistinguishable by `meta`
    // from the empty table before it) is in.
    while committed.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let started = std::time::Instant::now();
    // Bounded by count and time; the writer may still be running at the end.
    for i in 0..60u64 {
        if started.elapsed() > std::time::Duration::from_secs(25) || writer.is_finished() {
            break;
        }
        if i % 8 == 7 {
            // A new process: continues from the newest manifest.
            s = Snapshotter::new(&path, store.store.clone());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10 + mix(i) % 120)).await;
        take(&mut s, &committed, &mut taken, &mut incremental, &mut bases).await;
    }
    // The writer changes the page size at commit 900. A loaded machine
    // commits slower, not wrongly: wait for it (a condition, generously
    // bounded), then snapshot a few times across and after the change.
    let waited = std::time::Instant::now();
    while committed.load(Ordering::SeqCst) < 950 && !writer.is_finished() {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(300),
            "the writer is stuck at commit {}",
            committed.load(Ordering::SeqCst)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        if writer.is_finished() {
            break;
        }
        take(&mut s, &committed, &mut taken, &mut incremental, &mut bases).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    // One more after the writer stopped: exactly its last commit.
    let last = committed.load(Ordering::SeqCst);
    match snap(&mut s).await.id {
        Some(id) => taken.push((id, last, last)),
        // Unchanged: the newest snapshot already holds it.
        None => taken.last_mut().expect("snapshots were taken").2 = last,
    }
    eprintln!(
        "{} snapshots ({incremental} incremental, {bases} bases) over {last} commits",
        taken.len()
    );
    assert!(taken.len() >= 20, "only {} snapshots", taken.len());
    assert!(incremental >= 5, "only {incremental} incremental snapshots");
    assert!(
        last > 900,
        "the writer made only {last} commits (no page-size change)"
    );

    let mut model = Model::default();
    model.step(0);
    let mut at = 0;
    for (n, (id, lo, hi)) in taken.iter().enumerate() {
        let target = dir.path().join(format!("restored{n}.db"));
        let mut opts = mailsafe::restore::RestoreOptions::new(&target);
        opts.pick = mailsafe::restore::Pick::Id(id.clone());
        opts.integrity_check = mailsafe::restore::IntegrityCheck::Full;
        if let Err(e) = mailsafe::restore::restore(&*store, &opts).await {
            panic!("restore of snapshot {n} ({id}, commits {lo}..={hi}): {e}");
        }
        let k = check_stress_state(&target, &mut model, &mut at);
        assert!(
            (*lo..=*hi).contains(&k),
            "snapshot {id} holds commit {k}, taken while {lo}..={hi} were committed"
        );
        std::fs::remove_file(&target).unwrap();
    }
}
