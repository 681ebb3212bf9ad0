//! Step one of a restore: pick the snapshot and gather everything needed to
//! rebuild it (its manifest, its base manifest, the list of objects with their
//! sizes and hashes), checking that the manifests are well formed before a
//! single data byte is downloaded.

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use crate::Error;
use crate::crypto::{self, Key};
use crate::format::{self, ChunkRef, Manifest, ObjectRef};
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
    /// The snapshot being restored.
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

/// Ids of every snapshot in the replica, oldest first. Keys under
/// `manifests/` that are not `<id>.json` are ignored.
pub async fn list_ids(store: &dyn ObjectStore) -> Result<Vec<String>, Error> {
    let mut ids: Vec<String> = store
        .list(format::MANIFESTS)
        .await?
        .into_iter()
        .filter_map(|meta| {
            let id = format::manifest_id(&meta.key)?;
            (!id.is_empty() && !id.contains('/')).then(|| id.to_string())
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// Resolves `pick` against the replica's snapshot ids.
pub async fn pick_id(store: &dyn ObjectStore, pick: &Pick) -> Result<String, Error> {
    let ids = list_ids(store).await?;
    let where_ = store.describe();
    match pick {
        Pick::Latest => ids
            .last()
            .cloned()
            .ok_or_else(|| Error::NoBackup(format!("no snapshot in {where_}"))),
        Pick::Id(id) => {
            if ids.iter().any(|i| i == id) {
                Ok(id.clone())
            } else {
                Err(Error::NoBackup(format!("no snapshot {id:?} in {where_}")))
            }
        }
        Pick::At(at) => ids
            .iter()
            .rev()
            .find(|id| id_time(id).is_some_and(|t| t <= *at))
            .cloned()
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
pub(crate) fn missing_is_broken(err: StoreError, snapshot: &str) -> Error {
    match err {
        StoreError::NotFound { key } => Error::Verification(format!(
            "object {key} needed by snapshot {snapshot} is missing"
        )),
        other => Error::Store(other),
    }
}

/// Parses and checks one manifest: it must be a mailsafe manifest of a known
/// version whose id matches its key, with sane sizes.
pub fn parse_manifest(bytes: &[u8], key: &str) -> Result<Manifest, Error> {
    let bad = |why: String| Error::Verification(format!("{key}: {why}"));
    let m = Manifest::from_json(key, bytes)?;
    let ps = m.db.page_size;
    if !(512..=65536).contains(&ps) || !ps.is_power_of_two() {
        return Err(bad(format!("invalid page size {ps}")));
    }
    if m.chunk_pages == 0 {
        return Err(bad("chunk_pages is 0".into()));
    }
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex64(&m.db.image_sha256) {
        return Err(bad("image_sha256 is not a sha256".into()));
    }
    for c in &m.chunks {
        if !hex64(&c.sha256) || !hex64(&c.stored_sha256) {
            return Err(bad(format!("chunk {:?} has a malformed hash", c.sha256)));
        }
        // A pack location must be one the writer makes, complete, and
        // inside the pack's recorded size.
        let located = match (&c.pack, c.offset) {
            (None, None) => c.pack_size.is_none(),
            (Some(p), Some(o)) => {
                format::is_pack_key(p)
                    && o.checked_add(c.stored_size)
                        .is_some_and(|end| c.pack_size.is_none_or(|size| end <= size))
            }
            _ => false,
        };
        if !located {
            return Err(bad(format!(
                "chunk {:?} has a malformed pack location {:?} offset {:?} size {:?}",
                c.sha256, c.pack, c.offset, c.pack_size
            )));
        }
    }
    // Every key restore derives from a manifest must be one the writer could
    // have made: a hostile bucket must not steer reads (or, through a
    // file:// replica, anything else) outside the replica's own objects.
    let id_ok = |id: &str| format::snapshot_id_time(id).is_some();
    if !id_ok(&m.base) || m.parent.as_deref().is_some_and(|p| !id_ok(p)) {
        return Err(bad(format!(
            "base {:?} / parent {:?} is not a snapshot id",
            m.base, m.parent
        )));
    }
    for d in &m.deltas {
        let from_id = d.key.strip_prefix(format::DELTAS).is_some_and(id_ok);
        if !hex64(&d.sha256) || !from_id {
            return Err(bad(format!("delta {:?} is malformed", d.key)));
        }
    }
    if m.base == m.id {
        let want = u64::from(m.db.page_count).div_ceil(u64::from(m.chunk_pages));
        if m.chunks.len() as u64 != want || !m.deltas.is_empty() {
            return Err(bad(format!(
                "base manifest lists {} chunks and {} deltas for {} pages of {} per chunk",
                m.chunks.len(),
                m.deltas.len(),
                m.db.page_count,
                m.chunk_pages
            )));
        }
    } else if !m.chunks.is_empty() {
        return Err(bad("incremental manifest lists chunks".into()));
    }
    Ok(m)
}

/// Downloads and parses the manifest of snapshot `id` (its JSON only, not
/// an embedded delta pack).
pub async fn load_manifest(store: &dyn ObjectStore, id: &str) -> Result<Manifest, Error> {
    let key = format::manifest_key(id);
    let bytes = format::get_manifest(store, &key)
        .await
        .map_err(|e| missing_is_broken(e, id))?;
    parse_manifest(&bytes, &key)
}

/// [`load_manifest`], then checks it against the configured encryption key
/// (see [`crypto::check_manifest`]).
pub async fn load_authentic(
    store: &dyn ObjectStore,
    id: &str,
    key: Option<&Key>,
) -> Result<Manifest, Error> {
    let m = load_manifest(store, id).await?;
    crypto::check_manifest(&m, &format::manifest_key(id), key)?;
    Ok(m)
}

/// [`load_authentic`] for a base manifest: one plain GET, since a base
/// carries no delta pack and its chunk list often outgrows the first
/// [`format::MANIFEST_PEEK`] bytes (saves a round trip per restore).
async fn load_authentic_base(
    store: &dyn ObjectStore,
    id: &str,
    key: Option<&Key>,
) -> Result<Manifest, Error> {
    let mkey = format::manifest_key(id);
    let bytes = store
        .get(&mkey)
        .await
        .map_err(|e| missing_is_broken(e, id))?;
    let m = parse_manifest(&bytes, &mkey)?;
    crypto::check_manifest(&m, &mkey, key)?;
    Ok(m)
}

/// Builds the plan for snapshot `id`: its manifest and, for an incremental
/// snapshot, its base's chunk list. Both manifests are authenticated when a
/// key is given (and refused when encrypted and no key is given).
pub async fn plan(
    store: &dyn ObjectStore,
    id: &str,
    key: Option<&Key>,
) -> Result<RestorePlan, Error> {
    let manifest = load_authentic(store, id, key).await?;
    if manifest.base == manifest.id {
        return Ok(RestorePlan {
            chunks: manifest.chunks.clone(),
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
        chunks: base.chunks.clone(),
        base_page_count: base.db.page_count,
        deltas: manifest.deltas.clone(),
        manifest,
    })
}

/// Downloads every manifest, `parallelism` at a time, oldest first. A
/// manifest that fails to parse is returned as an error in its slot so that a
/// listing can show it without hiding the others.
pub async fn load_all(
    store: &dyn ObjectStore,
    parallelism: usize,
) -> Result<Vec<(String, Result<Manifest, Error>)>, Error> {
    let ids = list_ids(store).await?;
    let out = futures::stream::iter(ids)
        .map(|id| async move {
            let m = load_manifest(store, &id).await;
            match m {
                // A store failure other than a missing object (throttling,
                // network) fails the whole listing rather than one row.
                Err(Error::Store(e)) => Err(Error::Store(e)),
                m => Ok((id, m)),
            }
        })
        .buffered(parallelism.max(1))
        .try_collect()
        .await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn parse_manifest_names_the_key_and_refuses_unknown_versions() {
        let key = "manifests/x.json";
        for (body, want) in [
            (&b"\x00\x01garbage"[..], "not a valid mailsafe manifest"),
            (br#"{"hello":1}"#, "unsupported manifest format"),
            (
                br#"{"format":"mailsafe-manifest","version":99}"#,
                "version 99",
            ),
        ] {
            let err = parse_manifest(body, key).unwrap_err();
            assert_eq!(err.exit_code(), 4, "{err}");
            let msg = err.to_string();
            assert!(msg.contains(key) && msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn keys_that_leave_the_replica_are_refused() {
        let id = "20261129T100000.000Z-0000abcd";
        let sha = "ab".repeat(32);
        let manifest = |base: &str, parent: &str, delta: &str| {
            serde_json::json!({
                "format": "mailsafe-manifest", "version": 1, "id": id,
                "created": "2026-11-29T10:00:00Z", "parent": parent,
                "db": {"page_size": 4096, "page_count": 1, "image_sha256": sha},
                "chunk_pages": 64, "base": base, "chunks": [],
                "deltas": [{"key": delta, "sha256": sha, "size": 1}],
                "chunk_overrides": {}, "source": {"change_counter": 0},
                "stats": {"new_objects": 1, "new_bytes": 1, "stored_bytes": 1}
            })
            .to_string()
        };
        let good_delta = format!("deltas/{id}");
        let base = "20261129T090000.000Z-0000abcd";
        let ok = parse_manifest(manifest(base, base, &good_delta).as_bytes(), "k");
        assert!(ok.is_ok(), "{ok:?}");
        for (b, p, d) in [
            ("../../etc/passwd", base, good_delta.as_str()),
            (base, "../x", good_delta.as_str()),
            (base, base, "deltas/../../../etc/passwd"),
            (base, base, "deltas/a/b"),
            (base, base, "/etc/passwd"),
        ] {
            let err = parse_manifest(manifest(b, p, d).as_bytes(), "k").unwrap_err();
            assert_eq!(err.exit_code(), 4, "{b} {p} {d}: {err}");
        }
    }
}
