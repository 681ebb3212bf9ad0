//! Test fixtures shared by the engine's unit tests: a SQLite db with
//! snapshotters on one [`MemoryStore`], and lease records as writers write
//! them.

use bytes::Bytes;
use chrono::Utc;

use crate::format;
use crate::history::newest_id;
use crate::store::memory::MemoryStore;

/// A lease record for `epoch`, as a writer writes it.
pub fn lease_record(epoch: u64, wrote: bool, written_below: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "epoch": epoch, "owner": "o", "host": "h", "pid": 1,
            "acquired": "2026-12-06T00:00:00Z", "expires": "2026-12-06T00:02:00Z",
            "wrote": wrote, "written_below": written_below,
        })
        .to_string(),
    )
}

/// A db and its writers on one memory store.
pub struct Scene {
    pub mem: MemoryStore,
    pub store: crate::store::DynStore,
    pub conn: rusqlite::Connection,
    pub db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Scene {
    /// An empty WAL db with one table `t(x)` and an empty store.
    pub fn new() -> Self {
        let mem = MemoryStore::new("fence");
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode=wal; CREATE TABLE t(x);")
            .unwrap();
        Scene {
            store: std::sync::Arc::new(mem.clone()),
            mem,
            conn,
            db,
            _dir: dir,
        }
    }

    /// A snapshotter of the db that records lease epoch `epoch`.
    pub fn writer(&self, epoch: u64) -> crate::snapshot::Snapshotter {
        let mut w = crate::snapshot::Snapshotter::new(&self.db, self.store.clone());
        w.set_writer(Some(format::Writer {
            epoch,
            host: "h".into(),
            owner: format!("writer-{epoch}"),
        }));
        w
    }

    /// Commits a row and snapshots it with `w`; the new id.
    pub async fn snap(&self, w: &mut crate::snapshot::Snapshotter, row: i64) -> String {
        self.conn
            .execute("INSERT INTO t VALUES (?1)", [row])
            .unwrap();
        // Ids have millisecond resolution and a random suffix: two ids of
        // the same millisecond sort by chance (CI once drew exactly that).
        // Wait for a strictly later millisecond so the order is the script's.
        let newest = newest_id(&self.mem).await.unwrap();
        if let Some(t) = newest.as_deref().and_then(format::snapshot_id_time) {
            while Utc::now() < t + chrono::Duration::milliseconds(1) {
                tokio::task::yield_now().await;
            }
        }
        w.snapshot().await.unwrap().id.unwrap()
    }
}
