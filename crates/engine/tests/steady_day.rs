//! Issue 19's replica-size figure: a day of steady load on `watch`'s
//! defaults, simulated on the in-memory store with a scripted clock (the
//! snapshot ids, `created`, the store's `last_modified` and retention's
//! "now" all follow it), so 24 h take minutes.
//!
//! One snapshot every 0.75 s (a row of `ROW_BYTES` per snapshot, as a mail
//! catcher under steady mail appends), the WAL pinned and reset as `watch`
//! does, and `watch`'s default retention (every snapshot of the last hour,
//! hourly for a day, daily for a week; GC grace 1 h) applied every 10
//! minutes. Counts every object kind at the end.
//!
//! Not a CI test (minutes of CPU): run it with
//! `cargo test -p mailsafe_engine --release --test steady_day -- --ignored --nocapture`
//! (`MAILSAFE_SIM_HOURS` shortens it). The figure is in bench/RESULTS.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};
use mailsafe::snapshot::Snapshotter;
use mailsafe::store::memory::MemoryStore;
use mailsafe::watch::Retention;

/// Bytes appended to the db per snapshot (one small mail).
const ROW_BYTES: usize = 1024;
/// `watch`'s default cadence under steady load.
const EVERY_MS: i64 = 750;

#[tokio::test]
#[ignore = "a simulated day: minutes of CPU; run with --ignored --nocapture"]
async fn a_day_of_steady_load_keeps_a_bounded_replica() {
    let hours: i64 = std::env::var("MAILSAFE_SIM_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(24);
    let t0: DateTime<Utc> = "2026-11-02T00:00:00Z".parse().unwrap();
    let elapsed_ms = Arc::new(AtomicI64::new(0));
    let clock: mailsafe::snapshot::Clock = {
        let ms = elapsed_ms.clone();
        mailsafe::snapshot::Clock::new(move || {
            t0 + Duration::milliseconds(ms.load(Ordering::SeqCst))
        })
    };
    let mem = MemoryStore::new("day");
    mem.set_now(t0);
    // In memory where the machine has it: a commit per snapshot must not
    // wait on a disk the simulation does not measure.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let db_path = dir.path().join("app.db");
    let db = rusqlite::Connection::open(&db_path).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode=wal; PRAGMA synchronous=OFF; CREATE TABLE mail(id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
    )
    .unwrap();
    let mut w = Snapshotter::new(&db_path, Arc::new(mem.clone()))
        .with_wal_pin(true)
        .with_clock(clock);
    w.set_writer(Some(mailsafe::format::Writer {
        epoch: 1,
        host: "sim".into(),
        owner: "sim".into(),
    }));
    let retention = Retention::default();
    let per_run = (retention.interval.as_millis() as i64 / EVERY_MS) as u64;
    let snapshots = (hours * 3_600_000 / EVERY_MS) as u64;
    // Rows of pseudo-random bytes (fixed seed: the same day every run) so
    // zstd cannot shrink them away.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut prunes = 0;
    let started = std::time::Instant::now();
    for i in 1..=snapshots {
        let now = i as i64 * EVERY_MS;
        elapsed_ms.store(now, Ordering::SeqCst);
        mem.set_now(t0 + Duration::milliseconds(now));
        let body: Vec<u8> = (0..ROW_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        db.execute("INSERT INTO mail(body) VALUES (?1)", [body])
            .unwrap();
        w.snapshot().await.unwrap();
        if i % per_run == 0 {
            mailsafe::retention::prune_at(
                &mem,
                &retention.policy,
                retention.gc_grace,
                false,
                None,
                t0 + Duration::milliseconds(now),
            )
            .await
            .unwrap();
            prunes += 1;
        }
        if i % (3_600_000 / EVERY_MS) as u64 == 0 {
            eprintln!(
                "hour {}: {} objects, {:.0} s",
                i as i64 * EVERY_MS / 3_600_000,
                mem.keys().len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for key in mem.keys() {
        let kind = key.split_once('/').map_or(key.as_str(), |(k, _)| k);
        *kinds.entry(kind.to_string()).or_default() += 1;
    }
    let total: u64 = kinds.values().sum();
    let db_mib = std::fs::metadata(&db_path).unwrap().len() as f64 / (1 << 20) as f64;
    println!(
        "FIGURE steady day: {hours} h, {snapshots} snapshots, {prunes} retention runs, \
         db {db_mib:.1} MiB, {:.0} s: {total} objects {kinds:?}",
        started.elapsed().as_secs_f64()
    );
    let manifests = kinds.get("manifests").copied().unwrap_or(0);
    // The last hour (4,800) + 24 hourly + 7 daily, and bases kept for them.
    assert!(
        manifests <= 4_800 + 24 + 7 + 64,
        "{manifests} manifests after {hours} h"
    );
}
