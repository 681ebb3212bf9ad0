//! Step one of a restore: pick the snapshot and gather everything needed to
//! rebuild it (its manifest, its base manifest, the list of objects with their
//! sizes and hashes), checking that the manifests are well formed before a
//! single data byte is downloaded.

use chrono::{DateTime, Utc};

use crate::Error;
use crate::crypto::Key;
use crate::format::{self, ChunkRef, Manifest, ObjectRef};
use crate::manifest;
use crate::store::{ObjectStore, StoreError};

/// Which snapshot to restore or verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// The newest snapshot in the replica.
    Latest,
    /// The snapshot with this id.
    Id(String),
    /// The newest snapshot taken at or before this time.
    At(DateTime<Utc>),
}

impl Pick {
    /// Builds a pick from the `--snapshot` / `--at` flags; a malformed time is
    /// a usage error.
    pub fn from_flags(snapshot: Option<&str>, at: Option<&str>) -> Result<Self, Error> {
        match (snapshot, at) {
            (Some(id), _) => Ok(Pick::Id(id.to_string())),
            (None, Some(at)) => DateTime::parse_from_rfc3339(at)
                .map(|t| Pick::At(t.with_timezone(&Utc)))
                .map_err(|e| {
                    Error::Usage(format!(
                        "--at {at:?} is not an RFC 3339 time (e.g. 2026-11-29T09:00:00Z): {e}"
                    ))
                }),
            (None, None) => Ok(Pick::Latest),
        }
    }
}

/// Everything needed to rebuild one snapshot's image, with the hashes to check
/// it against.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The snapshot being restored; a base's `chunks` are moved to
    /// [`RestorePlan::chunks`] (one copy, not two: ~5 MB at 4 GiB).
    pub manifest: Manifest,
    /// The base snapshot's chunks, in page order (the manifest's own when it
    /// is a base).
    pub chunks: Vec<ChunkRef>,
    /// Page count of the base image the chunks describe.
    pub base_page_count: u32,
    /// Delta packs to apply on top of the chunks, in order.
    pub deltas: Vec<ObjectRef>,
}

impl RestorePlan {
    /// Distinct objects to download from (identical chunks are fetched
    /// once; a pack counts once however many of its chunks are needed).
    pub fn objects(&self) -> usize {
        let keys: std::collections::HashSet<String> = self
            .unique_chunks()
            .iter()
            .map(|c| c.object_key())
            .collect();
        keys.len() + self.deltas.len()
    }

    /// Stored bytes to download.
    pub fn download_bytes(&self) -> u64 {
        self.unique_chunks()
            .iter()
            .map(|c| c.stored_size)
            .chain(self.deltas.iter().map(|d| d.size))
            .sum()
    }

    /// The distinct chunks, each once, in first-use order.
    pub(crate) fn unique_chunks(&self) -> Vec<&ChunkRef> {
        let mut seen = std::collections::HashSet::new();
        self.chunks
            .iter()
            .filter(|c| seen.insert(c.sha256.as_str()))
            .collect()
    }
}

/// The time encoded in a snapshot id, or `None` for a key that is not a
/// snapshot id.
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    format::snapshot_id_time(id)
}

/// Ids of every snapshot in the replica, in history order (id order, which
/// is never the manifests' clocks: see docs/FORMAT.md, History order). Keys under
/// `manifests/` that are not `<id>.json` are ignored.
pub async fn list_ids(store: &dyn ObjectStore) -> Result<Vec<String>, Error> {
    Ok(crate::history::all_ids(store).await?)
}

/// Resolves `pick` against the replica's snapshot ids without listing the
/// whole history (see [`crate::history`]): the newest through the anchor,
/// an id by its manifest, `--at` by the time prefix of ids.
///
/// "Latest" and `--at` skip a fenced writer's late manifests and planted or
/// damaged ones ([`crate::history::newest_unfenced`]).
pub async fn pick_id(
    store: &dyn ObjectStore,
    pick: &Pick,
    key: Option<&Key>,
) -> Result<String, Error> {
    let where_ = store.describe();
    match pick {
        Pick::Latest => crate::history::newest_unfenced(store, key)
            .await?
            .map(|m| m.id)
            .ok_or_else(|| Error::NoBackup(format!("no snapshot in {where_}"))),
        Pick::Id(id) => {
            let exists = format::snapshot_id_time(id).is_some()
                && match store.head(&format::manifest_key(id)).await {
                    Ok(_) => true,
                    Err(StoreError::NotFound { .. }) => false,
                    Err(e) => return Err(e.into()),
                };
            if exists {
                Ok(id.clone())
            } else {
                Err(Error::NoBackup(format!("no snapshot {id:?} in {where_}")))
            }
        }
        Pick::At(at) => crate::history::unfenced_at(store, *at, key)
            .await?
            .map(|m| m.id)
            .ok_or_else(|| {
                Error::NoBackup(format!(
                    "no snapshot taken at or before {} in {where_}",
                    at.to_rfc3339()
                ))
            }),
    }
}

/// Maps a missing object to a verification failure (a snapshot that names an
/// object the replica does not have is a broken backup), other store errors
/// through unchanged.
pub(crate) fn missing_is_broken(err: impl Into<Error>, snapshot: &str) -> Error {
    match err.into() {
        Error::Store(StoreError::NotFound { key }) => Error::Verification(format!(
            "object {key} needed by snapshot {snapshot} is missing"
        )),
        other => other,
    }
}

/// Reads snapshot `id`'s manifest through the one reader
/// ([`crate::manifest::read`]): checked, and authenticated against `key`
/// (refused when encrypted and no key is given). A missing manifest is a
/// broken backup.
pub async fn load_authentic(
    store: &dyn ObjectStore,
    id: &str,
    key: Option<&Key>,
) -> Result<Manifest, Error> {
    manifest::read(store, &format::manifest_key(id), key)
        .await
        .map_err(|e| missing_is_broken(e, id))
}

/// [`load_authentic`] for a base manifest: one plain GET (see
/// [`crate::manifest::read_whole`]).
async fn load_authentic_base(
    store: &dyn ObjectStore,
    id: &str,
    key: Option<&Key>,
) -> Result<Manifest, Error> {
    manifest::read_whole(store, &format::manifest_key(id), key)
        .await
        .map_err(|e| missing_is_broken(e, id))
}

/// Builds the plan for snapshot `id`: its manifest and, for an incremental
/// snapshot, its base's chunk list. Both manifests are authenticated when a
/// key is given (and refused when encrypted and no key is given).
pub async fn plan(
    store: &dyn ObjectStore,
    id: &str,
    key: Option<&Key>,
) -> Result<RestorePlan, Error> {
    let mut manifest = load_authentic(store, id, key).await?;
    if manifest.base == manifest.id {
        return Ok(RestorePlan {
            chunks: std::mem::take(&mut manifest.chunks),
            base_page_count: manifest.db.page_count,
            deltas: Vec::new(),
            manifest,
        });
    }
    let base = load_authentic_base(store, &manifest.base, key).await?;
    let base_key = format::manifest_key(&base.id);
    if base.base != base.id {
        return Err(Error::Verification(format!(
            "{base_key}: base of snapshot {id} is itself incremental"
        )));
    }
    if base.db.page_size != manifest.db.page_size || base.chunk_pages != manifest.chunk_pages {
        return Err(Error::Verification(format!(
            "{base_key}: page size or chunk size differs from snapshot {id}"
        )));
    }
    Ok(RestorePlan {
        chunks: base.chunks,
        base_page_count: base.db.page_count,
        deltas: manifest.deltas.clone(),
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two writers interleaved on a fixed schedule: A (epoch 1) snapshots,
    /// B takes the lease (epoch 2) and snapshots, then A, which has not yet
    /// noticed, finishes a late snapshot whose id sorts after B's. `restore`
    /// picks B's, and retention's head is B's too (A's late one is forgotten).
    #[tokio::test]
    async fn a_fenced_writers_late_manifest_is_never_newest() {
        use crate::format::Writer;
        use crate::snapshot::Snapshotter;
        let mem = crate::store::memory::MemoryStore::new("fence");
        let store: crate::store::DynStore = std::sync::Arc::new(mem.clone());
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode=wal; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let writer = |epoch| Writer {
            epoch,
            host: "h".into(),
            owner: format!("writer-{epoch}"),
        };
        let mut a = Snapshotter::new(&db, store.clone());
        a.set_writer(Some(writer(1)));
        a.snapshot().await.unwrap().id.unwrap();
        conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let mut b = Snapshotter::new(&db, store.clone());
        b.set_writer(Some(writer(2)));
        let by_b = b.snapshot().await.unwrap().id.unwrap();
        // The lease epoch B took (only its key matters here).
        mem.put(
            "lease/00000000000000000002.json",
            bytes::Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
        conn.execute("INSERT INTO t VALUES (3)", []).unwrap();
        // Ids have millisecond resolution: let the clock pass B's.
        while format::snapshot_id_time(&format::new_snapshot_id(Utc::now()))
            <= format::snapshot_id_time(&by_b)
        {
            tokio::task::yield_now().await;
        }
        let late = a.snapshot().await.unwrap().id.unwrap();
        assert!(late > by_b, "{late} must sort after {by_b}");

        let picked = pick_id(store.as_ref(), &Pick::Latest, None).await.unwrap();
        assert_eq!(
            picked, by_b,
            "restore must not pick the fenced writer's {late}"
        );
        let policy = crate::retention::Policy {
            keep_last: Some(1),
            ..Default::default()
        };
        let report = crate::retention::prune(
            store.as_ref(),
            &policy,
            std::time::Duration::ZERO,
            true,
            None,
        )
        .await
        .unwrap();
        assert!(report.forgotten.contains(&late), "{report:?}");
        assert!(!report.forgotten.contains(&by_b), "{report:?}");
    }

    #[test]
    fn id_time_reads_the_sortable_stamp() {
        let t = id_time("20261129T094800.123Z-0badf00d").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-29T09:48:00.123+00:00");
        assert_eq!(id_time("garbage"), None);
    }

    #[test]
    fn pick_rejects_a_malformed_time_as_usage() {
        let err = Pick::from_flags(None, Some("yesterday")).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("yesterday"));
    }
}
