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
    /// The snapshot being restored (a base's `chunks` are left empty: the
    /// plan holds them in [`RestorePlan::chunks`], compacted).
    pub manifest: Manifest,
    /// The base snapshot's chunks, in page order (the manifest's own when it
    /// is a base).
    pub chunks: Vec<PlanChunk>,
    /// The pack keys the chunks name (each once; a chunk holds an index).
    pub packs: Vec<String>,
    /// The distinct chunks and where each goes, grouped once when the plan
    /// is made (the download count, the byte count and the build all use it).
    pub(crate) placements: Placements,
    /// Page count of the base image the chunks describe.
    pub base_page_count: u32,
    /// Delta packs to apply on top of the chunks, in order.
    pub deltas: Vec<ObjectRef>,
}

/// One chunk of the base image, as much of its manifest entry as a restore
/// uses: 56 bytes, where a parsed [`ChunkRef`] takes ~320 (three heap
/// strings: two hex digests and its pack's key). A 4 GiB db has 16,400
/// chunks, so the plan held ~5 MB that grew with the db; peak RSS of a
/// 4 GiB restore was 71.8 MiB against 57.8 at 1 GiB (issue 18: flat,
/// <= 64 MiB). The stored bytes' sha256 is not kept: restore proves a
/// chunk by its content digest (see `build::open_chunk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanChunk {
    /// sha256 of the uncompressed chunk: its name and its check.
    pub sha256: [u8; 32],
    /// Size of its stored bytes.
    pub stored_size: u64,
    /// Where its stored bytes start in its pack (0 for a v1 chunk object).
    pub offset: u64,
    /// Index of its pack in [`RestorePlan::packs`]; [`NO_PACK`] for a v1
    /// `chunks/<sha256>` object.
    pub pack: u32,
}

/// [`PlanChunk::pack`] of a v1 chunk stored as its own object.
pub const NO_PACK: u32 = u32::MAX;

impl PlanChunk {
    /// Whether the chunk lives in a pack (format v2) rather than its own object.
    pub fn is_packed(&self) -> bool {
        self.pack != NO_PACK
    }

    /// The byte range of its stored bytes in its object.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.stored_size
    }

    /// The chunk's logical name, `chunks/<sha256>`: its object key in
    /// format v1 and the associated data of its encryption in both.
    pub fn logical_key(&self) -> String {
        format::chunk_key(&hex::encode(self.sha256))
    }
}

impl RestorePlan {
    /// The plan of `manifest` over a base's chunk list, compacted (see
    /// [`PlanChunk`]) and grouped by content.
    fn new(
        manifest: Manifest,
        chunks: Vec<ChunkRef>,
        base_page_count: u32,
        deltas: Vec<ObjectRef>,
    ) -> Self {
        let (chunks, packs) = compact(chunks);
        let placements = Placements::of(&chunks);
        RestorePlan {
            manifest,
            chunks,
            packs,
            placements,
            base_page_count,
            deltas,
        }
    }

    /// The key of the object holding chunk `c`: its pack, or `chunks/…`.
    pub fn object_key(&self, c: &PlanChunk) -> String {
        match self.packs.get(c.pack as usize) {
            Some(p) => p.clone(),
            None => c.logical_key(),
        }
    }

    /// Distinct objects to download from (identical chunks are fetched
    /// once; a pack counts once however many of its chunks are needed).
    pub fn objects(&self) -> usize {
        let mut packs = std::collections::HashSet::new();
        let mut v1 = 0;
        let groups = &self.placements;
        for g in 0..groups.len() {
            let c = &self.chunks[groups.first(g)];
            if c.is_packed() {
                packs.insert(c.pack);
            } else {
                v1 += 1;
            }
        }
        packs.len() + v1 + self.deltas.len()
    }

    /// Stored bytes to download.
    pub fn download_bytes(&self) -> u64 {
        let groups = &self.placements;
        (0..groups.len())
            .map(|g| self.chunks[groups.first(g)].stored_size)
            .chain(self.deltas.iter().map(|d| d.size))
            .sum()
    }
}

/// Where each distinct chunk goes in the image: chunk indices sorted by
/// content, so that each run of equal digests is one chunk to download and
/// the positions to write it at. 4 bytes a chunk (a map from digest to a
/// list of positions took ~80).
#[derive(Debug, Clone)]
pub(crate) struct Placements {
    order: Vec<u32>,
    /// Where each group starts in `order`, and `order.len()` last.
    starts: Vec<u32>,
}

impl Placements {
    /// The groups of `chunks`.
    pub(crate) fn of(chunks: &[PlanChunk]) -> Self {
        let mut order: Vec<u32> = (0..chunks.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            chunks[a as usize]
                .sha256
                .cmp(&chunks[b as usize].sha256)
                .then(a.cmp(&b))
        });
        let mut starts = Vec::new();
        for (i, w) in order.iter().enumerate() {
            if i == 0 || chunks[order[i - 1] as usize].sha256 != chunks[*w as usize].sha256 {
                starts.push(i as u32);
            }
        }
        starts.push(order.len() as u32);
        Placements { order, starts }
    }

    /// Number of distinct chunks.
    pub(crate) fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// The image positions (chunk indices) of distinct chunk `g`, ascending.
    pub(crate) fn positions(&self, g: usize) -> &[u32] {
        &self.order[self.starts[g] as usize..self.starts[g + 1] as usize]
    }

    /// The first image position of distinct chunk `g`: the index of its
    /// entry in the plan's chunks.
    pub(crate) fn first(&self, g: usize) -> usize {
        self.order[self.starts[g] as usize] as usize
    }
}

/// A manifest's chunk list as the plan holds it (see [`PlanChunk`]),
/// consumed so the parsed entries are freed as soon as this returns.
fn compact(chunks: Vec<ChunkRef>) -> (Vec<PlanChunk>, Vec<String>) {
    let mut packs: Vec<String> = Vec::new();
    let mut index: std::collections::HashMap<String, u32> = Default::default();
    let out = chunks
        .into_iter()
        .map(|c| {
            let (pack, offset) = match (c.pack, c.offset) {
                (Some(p), Some(o)) => {
                    let i = *index.entry(p).or_insert_with_key(|p| {
                        packs.push(p.clone());
                        (packs.len() - 1) as u32
                    });
                    (i, o)
                }
                _ => (NO_PACK, 0),
            };
            PlanChunk {
                // Validated as 64 hex digits when the manifest was parsed.
                sha256: decode_hex32(&c.sha256),
                stored_size: c.stored_size,
                offset,
                pack,
            }
        })
        .collect();
    (out, packs)
}

/// A sha256 in hex, as bytes; hashes were validated as 64 hex digits when
/// their manifest was parsed.
pub(crate) fn decode_hex32(s: &str) -> [u8; 32] {
    format::parse_sha256(s).unwrap_or_default()
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
    match pick {
        Pick::Id(id) => id_exists(store, id).await.map(|()| id.clone()),
        _ => Ok(pick_manifest(store, pick, key).await?.id),
    }
}

/// [`pick_id`], returning the picked snapshot's manifest, read and
/// authenticated against `key`: "latest" and `--at` read it on the way, so
/// a restore plans from it instead of reading (and, at 4 GiB, parsing 5 MB
/// of chunk list) a second time.
pub async fn pick_manifest(
    store: &dyn ObjectStore,
    pick: &Pick,
    key: Option<&Key>,
) -> Result<Manifest, Error> {
    let where_ = store.describe();
    match pick {
        Pick::Latest => crate::history::newest_unfenced(store, key)
            .await?
            .ok_or_else(|| Error::NoBackup(format!("no snapshot in {where_}"))),
        Pick::Id(id) => {
            id_exists(store, id).await?;
            load_authentic(store, id, key).await
        }
        Pick::At(at) => crate::history::unfenced_at(store, *at, key)
            .await?
            .ok_or_else(|| {
                Error::NoBackup(format!(
                    "no snapshot taken at or before {} in {where_}",
                    at.to_rfc3339()
                ))
            }),
    }
}

/// `Ok` when snapshot `id` is in the replica (one HEAD), else
/// [`Error::NoBackup`] naming it.
async fn id_exists(store: &dyn ObjectStore, id: &str) -> Result<(), Error> {
    let exists = format::snapshot_id_time(id).is_some()
        && match store.head(&format::manifest_key(id)).await {
            Ok(_) => true,
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
    if exists {
        Ok(())
    } else {
        Err(Error::NoBackup(format!(
            "no snapshot {id:?} in {}",
            store.describe()
        )))
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
    plan_of(store, load_authentic(store, id, key).await?, key).await
}

/// [`plan`] for a snapshot whose manifest is already read and authenticated
/// (as [`pick_manifest`] returns it).
pub async fn plan_of(
    store: &dyn ObjectStore,
    mut manifest: Manifest,
    key: Option<&Key>,
) -> Result<RestorePlan, Error> {
    let id = manifest.id.clone();
    let id = id.as_str();
    if manifest.base == manifest.id {
        let chunks = std::mem::take(&mut manifest.chunks);
        let pages = manifest.db.page_count;
        return Ok(RestorePlan::new(manifest, chunks, pages, Vec::new()));
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
    let deltas = manifest.deltas.clone();
    Ok(RestorePlan::new(
        manifest,
        base.chunks,
        base.db.page_count,
        deltas,
    ))
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

    /// Identical chunks (a sparse db's zero chunks, repeated content) are
    /// one download written at each of their positions; packs are named
    /// once however many chunks they hold.
    #[test]
    fn compacted_chunks_group_by_content_and_share_pack_keys() {
        let sha = |b: u8| hex::encode([b; 32]);
        let chunk = |b: u8, pack: Option<&str>, offset: u64| ChunkRef {
            sha256: sha(b),
            stored_sha256: sha(0xee),
            stored_size: 10 + u64::from(b),
            pack: pack.map(String::from),
            offset: pack.map(|_| offset),
            pack_size: pack.map(|_| 100),
        };
        let plan = RestorePlan::new(
            serde_json::from_value(serde_json::json!({
                "format": "mailsafe-manifest", "version": 2, "id": "x", "created": "2026-11-29T10:00:00Z",
                "parent": null, "db": {"page_size": 4096, "page_count": 1, "image_sha256": sha(0)},
                "chunk_pages": 64, "base": "x", "chunks": [], "deltas": [],
                "source": {"change_counter": 0},
                "stats": {"new_objects": 1, "new_bytes": 1, "stored_bytes": 1}
            }))
            .unwrap(),
            vec![
                chunk(1, Some("packs/a"), 0),
                chunk(2, Some("packs/b"), 0),
                chunk(1, Some("packs/a"), 0),
                chunk(3, None, 0),
                chunk(2, Some("packs/b"), 0),
                chunk(4, Some("packs/a"), 11),
            ],
            1,
            Vec::new(),
        );
        let (chunks, packs) = (&plan.chunks, &plan.packs);
        assert_eq!(packs, &["packs/a", "packs/b"]);
        assert_eq!(chunks[5].pack, 0);
        assert_eq!(chunks[5].range(), 11..25);
        assert!(!chunks[3].is_packed());
        let g = &plan.placements;
        let groups: Vec<Vec<u32>> = (0..g.len()).map(|i| g.positions(i).to_vec()).collect();
        assert_eq!(groups, [vec![0, 2], vec![1, 4], vec![3], vec![5]]);
        assert_eq!(plan.objects(), 3, "packs/a, packs/b and chunks/0303…");
        assert_eq!(plan.download_bytes(), 11 + 12 + 13 + 14);
        assert_eq!(plan.object_key(&plan.chunks[3]), format::chunk_key(&sha(3)));
        assert_eq!(plan.object_key(&plan.chunks[1]), "packs/b");
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
