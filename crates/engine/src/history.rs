//! Finding snapshots in a long history without listing all of it.
//!
//! `watch` writes a manifest about every 0.75 s under steady mail, ~100k a
//! day. Listing `manifests/` to find the newest one costs one LIST request per
//! 1000 keys: 0.01 s for 1 snapshot but 0.31-0.42 s for 20,000 on loopback
//! SeaweedFS (main 89dad44), a minute for a month of history on AWS.
//!
//! Two things keep it O(new) instead:
//! - **The anchor** (`head.json`, [`format::HEAD_KEY`]): the id of the newest
//!   *base* snapshot, written by the snapshotter right after each base
//!   manifest. A writer re-bases at least every 64 snapshots, so the anchor
//!   is never far behind the newest snapshot.
//! - **`StartAfter` listing** ([`ObjectStore::list_after`]): the keys after
//!   the anchor's manifest, in one LIST page whatever lies before it.
//!
//! The anchor is only a hint: readers always list what follows it, so a
//! stale anchor (a writer that died between the base manifest and the
//! anchor) costs a longer listing, never a wrong answer; an anchor naming a
//! manifest that does not exist (pruned, or planted) falls back to a full
//! listing. It is replaced conditionally and only forward
//! ([`advance_anchor`]), so a late writer cannot move it back.
//!
//! `--at` narrows its listing by the time encoded in ids (ids sort by time
//! and are strictly increasing along a history): the hour's prefix first,
//! then the day's, month's and year's, then everything.
//!
//! **Fencing, in one place.** A manifest written by a fenced writer (one
//! whose lease had been taken over, see [`format::fenced`]) is never the
//! snapshot that `restore`, `restore --at` or a starting writer builds on.
//! Deciding that for the newest snapshot needs no older manifest: the lease
//! says which epochs may have written ([`lease::written_epoch_bound`]), so a
//! manifest of that epoch (or of no lease) is unfenced, and walking back from
//! the newest skips only the late manifests after it ([`newest_unfenced`]).
//! A bound whose epoch wrote no manifest after the anchor (killed before its
//! first one landed) costs the manifests since that epoch took the lease,
//! not the whole history ([`after_a_stale_bound`]).
//! In an encrypted replica, manifests that fail authentication on the way
//! (planted by someone without the key, or damaged) are skipped with a
//! warning, unless none is usable: then the newest one's error is the
//! answer. Nothing proves a plaintext manifest is not the writer's, so there
//! a damaged one is an error, as are an unknown (newer) version and a key
//! that does not match the replica (another key id, or none for an
//! encrypted replica): never a reason to fall back to older data.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::crypto::Key;
use crate::format::{self, Manifest};
use crate::lease;
use crate::store::{ObjectStore, StoreError};

/// Content of the anchor object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Always [`ANCHOR_FORMAT`]: tells the anchor apart from stray JSON.
    pub format: String,
    /// Id of the newest base snapshot when the anchor was written.
    pub base: String,
}

/// Value of [`Anchor::format`].
pub const ANCHOR_FORMAT: &str = "mailsafe-anchor";

/// Snapshot ids of `manifests/` keys, sorted (history order). Keys that are
/// not `<id>.json` of a well-formed id are ignored.
fn ids_of(list: Vec<crate::store::ObjectMeta>) -> Vec<String> {
    let mut ids: Vec<String> = list
        .iter()
        .filter_map(|m| format::manifest_id(&m.key))
        .filter(|id| format::snapshot_id_time(id).is_some())
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

/// Every snapshot id of the replica, oldest first (one LIST per 1000).
pub async fn all_ids(store: &dyn ObjectStore) -> Result<Vec<String>, StoreError> {
    Ok(ids_of(store.list(format::MANIFESTS).await?))
}

/// The anchor's base id, if the anchor exists and reads as one.
async fn anchor(store: &dyn ObjectStore) -> Result<Option<String>, StoreError> {
    match store.get(format::HEAD_KEY).await {
        Ok(body) => Ok(serde_json::from_slice::<Anchor>(&body)
            .ok()
            .filter(|a| a.format == ANCHOR_FORMAT && format::snapshot_id_time(&a.base).is_some())
            .map(|a| a.base)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The ids of the recent part of the history, oldest first: the anchor's
/// base (when its manifest exists) and every snapshot after it. Usually two
/// requests (GET anchor, LIST after it); the whole history when there is no
/// usable anchor. The newest snapshot is the last id; callers that must
/// skip some (a fenced writer's late manifest) walk back from the end.
pub async fn recent_ids(store: &dyn ObjectStore) -> Result<Vec<String>, StoreError> {
    let Some(base) = anchor(store).await? else {
        return all_ids(store).await;
    };
    let base_key = format::manifest_key(&base);
    let after = ids_of(store.list_after(format::MANIFESTS, &base_key).await?);
    let base_exists = match store.head(&base_key).await {
        Ok(_) => true,
        Err(StoreError::NotFound { .. }) => false,
        Err(e) => return Err(e),
    };
    if !base_exists && after.is_empty() {
        // Pruned or planted: nothing vouches for this part of the history.
        return all_ids(store).await;
    }
    let mut ids = Vec::with_capacity(after.len() + 1);
    if base_exists {
        ids.push(base);
    }
    ids.extend(after);
    Ok(ids)
}

/// The newest snapshot id of the replica, if it has any (see
/// [`recent_ids`]).
pub async fn newest_id(store: &dyn ObjectStore) -> Result<Option<String>, StoreError> {
    Ok(recent_ids(store).await?.pop())
}

/// The newest snapshot id taken at or before `at` (by the time its id
/// encodes), listing the hour of `at` first, then its day, month and year,
/// then everything.
pub async fn id_at(
    store: &dyn ObjectStore,
    at: DateTime<Utc>,
) -> Result<Option<String>, StoreError> {
    let stamp = at.format("%Y%m%dT%H").to_string();
    // Prefix lengths: hour (YYYYMMDDTHH), day, month, year, all.
    for len in [11, 8, 6, 4, 0] {
        let prefix = format!("{}{}", format::MANIFESTS, &stamp[..len]);
        let found = ids_of(store.list(&prefix).await?)
            .into_iter()
            .rev()
            .find(|id| format::snapshot_id_time(id).is_some_and(|t| t <= at));
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// What one manifest is to a reader looking for the newest usable snapshot.
enum Candidate {
    /// Checked and authentic.
    Usable(Box<Manifest>),
    /// Gone (pruned since the listing) or failed its checks or
    /// authentication: skipped, with the reason.
    Skipped(Option<Error>),
}

/// Reads candidate `id`. Errors of the store, key mismatches, unknown
/// versions and, in a plaintext replica, any damage are errors; a manifest
/// that is missing (pruned meanwhile) is skipped, and so is one that an
/// encrypted replica's key proves is not its writer's (it fails
/// authentication or does not even parse).
async fn candidate(
    store: &dyn ObjectStore,
    id: &str,
    key: Option<&Key>,
) -> Result<Candidate, Error> {
    let mkey = format::manifest_key(id);
    let bytes = match crate::manifest::fetch(store, &mkey).await {
        Ok(b) => b,
        Err(Error::Store(StoreError::NotFound { .. })) => return Ok(Candidate::Skipped(None)),
        Err(e @ Error::Store(_)) => return Err(e),
        Err(e) => return Ok(Candidate::Skipped(Some(e))),
    };
    let m = match crate::manifest::parse(&mkey, &bytes) {
        Ok(m) => m,
        Err(e) => {
            // A newer version is a newer writer's: never skipped (that
            // would restore older data); only an encrypted replica can
            // prove that garbage is not its writer's (it could not be
            // authenticated either).
            let newer = matches!(
                Manifest::from_json(&mkey, &bytes),
                Err(format::FormatError::UnsupportedVersion { .. })
            );
            return if key.is_some() && !newer {
                Ok(Candidate::Skipped(Some(e)))
            } else {
                Err(e)
            };
        }
    };
    match (&m.encryption, key) {
        // The wrong key or none: the caller must fix its configuration.
        (Some(e), Some(k)) if e.key_id != k.id() => crate::manifest::authenticate(&m, &mkey, key)?,
        (Some(_), None) => crate::manifest::authenticate(&m, &mkey, key)?,
        // A bad MAC, or plaintext in an encrypted replica: planted or
        // damaged.
        _ => {
            if let Err(e) = crate::manifest::authenticate(&m, &mkey, key) {
                return Ok(Candidate::Skipped(Some(e)));
            }
        }
    }
    Ok(Candidate::Usable(Box::new(m)))
}

/// The writer epoch a manifest records, if it was written under a lease.
pub(crate) fn epoch_of(m: &Manifest) -> Option<u64> {
    m.writer.as_ref().map(|w| w.epoch)
}

/// The newest snapshot among `ids` (history order) that a fenced writer did
/// not write, given `bound`, the highest writer epoch any manifest may have
/// ([`lease::written_epoch_bound`]): walking back from the newest, the first
/// usable manifest written under `bound` or without a lease. The manifests
/// passed over on the way were written under a lower epoch after a manifest
/// of the bound's epoch, so they are fenced (once that manifest is seen: a
/// lease-less one met before it is the answer only then). [`Walk::Stale`] when the
/// walk ends with only such manifests: the bound is stale (an epoch marked
/// itself but its manifest never landed, or was pruned), and only the whole
/// history decides ([`unfenced_by_reading_all`]).
async fn walk_back(
    store: &dyn ObjectStore,
    ids: &[String],
    key: Option<&Key>,
    bound: u64,
) -> Result<Walk, Error> {
    let mut first_error = None;
    let mut fenced = 0usize;
    // A lease-less manifest met after skipping some: never fenced itself,
    // but the skipped ones (newer) are fenced only if a manifest of the
    // bound's epoch comes before them, which the walk has yet to see.
    let mut leaseless: Option<Box<Manifest>> = None;
    for id in ids.iter().rev() {
        match candidate(store, id, key).await? {
            Candidate::Usable(m) => match epoch_of(&m) {
                Some(e) if e < bound => fenced += 1,
                None if fenced > 0 => {
                    leaseless.get_or_insert(m);
                }
                _ => {
                    let m = leaseless.take().unwrap_or(m);
                    if fenced > 0 {
                        tracing::warn!(
                            replica = %store.describe(),
                            skipped = fenced,
                            snapshot = %m.id,
                            "skipped newer manifests written by a writer whose lease had been taken over"
                        );
                    }
                    return Ok(Walk::Found(m));
                }
            },
            Candidate::Skipped(None) => {}
            Candidate::Skipped(Some(e)) => {
                tracing::warn!(replica = %store.describe(), error = %e, "skipping a manifest that failed its checks");
                first_error.get_or_insert(e);
            }
        }
    }
    Ok(if fenced > 0 {
        Walk::Stale
    } else {
        Walk::Nothing(first_error)
    })
}

/// How [`walk_back`] ended.
enum Walk {
    /// The newest unfenced usable snapshot.
    Found(Box<Manifest>),
    /// Only fenced-looking manifests: the lease's bound is stale.
    Stale,
    /// No usable manifest at all; the newest one's error, if any failed.
    Nothing(Option<Error>),
}

/// The exact fencing rule over every snapshot among `ids` (history order):
/// reads each manifest (16 at a time). For the rare case the lease cannot
/// decide (see [`walk_back`]), and for `--at` before the newest writer.
/// Manifests that fail their checks are left out; when none is usable, the
/// newest one's error is the answer.
async fn unfenced_by_reading_all(
    store: &dyn ObjectStore,
    ids: &[String],
    key: Option<&Key>,
) -> Result<Option<Manifest>, Error> {
    use futures::StreamExt as _;
    let read: Vec<Candidate> = futures::stream::iter(ids)
        .map(|id| candidate(store, id, key))
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut newest_error = None;
    let mut usable = Vec::new();
    for c in read {
        match c {
            Candidate::Usable(m) => usable.push(*m),
            Candidate::Skipped(e) => newest_error = e.or(newest_error),
        }
    }
    if usable.is_empty() {
        return newest_error.map_or(Ok(None), Err);
    }
    let epochs: Vec<Option<u64>> = usable.iter().map(epoch_of).collect();
    let fenced = format::fenced(&epochs);
    Ok(usable
        .into_iter()
        .zip(fenced)
        .rev()
        .find(|(_, f)| !f)
        .map(|(m, _)| m))
}

/// The newest snapshot that a fenced writer did not write, read and
/// authenticated against `key`: what `restore` restores and what a starting
/// writer continues (see the module doc). Usually three requests (anchor,
/// LIST after it, lease LIST + GET) and one manifest GET, whatever the
/// history length.
pub async fn newest_unfenced(
    store: &dyn ObjectStore,
    key: Option<&Key>,
) -> Result<Option<Manifest>, Error> {
    let ids = recent_ids(store).await?;
    if ids.is_empty() {
        return Ok(None);
    }
    let bounds = lease::written_bounds(store).await?;
    let bound = bounds.map_or(0, |b| b.epoch);
    let found = match walk_back(store, &ids, key, bound).await? {
        Walk::Found(m) => Some(m),
        Walk::Nothing(Some(e)) => return Err(e),
        Walk::Stale => match bounds.and_then(|b| b.marked) {
            Some(marked) => after_a_stale_bound(store, &ids, key, bound, marked).await?,
            None => None,
        },
        Walk::Nothing(None) => None,
    };
    match found {
        Some(m) => Ok(Some(*m)),
        // A stale bound that its record cannot settle, or manifests pruned
        // since the listing: the whole history decides.
        None => unfenced_by_reading_all(store, &all_ids(store).await?, key).await,
    }
}

/// How far before its lease record's `acquired` a writer's first manifest
/// may sort. Both come from the writer's own clock, so its manifests sort
/// after that time; this covers that clock stepping back by up to this much
/// between taking the lease and the first snapshot.
const STALE_SLACK: chrono::Duration = chrono::Duration::minutes(5);

/// The newest unfenced snapshot when the walk from the anchor met no
/// manifest of the bound's epoch (`bound`, which marked itself as writing:
/// it was killed before its first manifest landed, or that one sorts
/// before the anchor). `marked` is its record's `acquired` and the highest
/// earlier epoch that may have written. Reads only the manifests from the
/// bound's start ([`STALE_SLACK`] before `acquired`) on: if one is of the
/// bound's epoch, the walk over them decides as usual; if none is, that
/// epoch wrote nothing, so the earlier epoch bounds every manifest and a
/// walk from the anchor with it decides. `None` when neither settles it
/// (the earlier epoch's manifest is not after the anchor either): then
/// only the whole history does.
async fn after_a_stale_bound(
    store: &dyn ObjectStore,
    recent: &[String],
    key: Option<&Key>,
    bound: u64,
    (acquired, below): (DateTime<Utc>, u64),
) -> Result<Option<Box<Manifest>>, Error> {
    let since = acquired - STALE_SLACK;
    let reaches_before_anchor = recent
        .first()
        .and_then(|id| format::snapshot_id_time(id))
        .is_some_and(|first| since < first);
    if reaches_before_anchor {
        let start = format::manifest_key(&since.format("%Y%m%dT%H%M%S%.3fZ").to_string());
        let ids = ids_of(store.list_after(format::MANIFESTS, &start).await?);
        if let Walk::Found(m) = walk_back(store, &ids, key, bound).await? {
            return Ok(Some(m));
        }
    }
    // No manifest of `bound` since it started (the walk from the anchor
    // covered that span when it started after the anchor's base).
    Ok(match walk_back(store, recent, key, below).await? {
        Walk::Found(m) => Some(m),
        _ => None,
    })
}

/// The newest snapshot taken at or before `at` (by the time its id encodes)
/// that a fenced writer did not write. A candidate written by the newest
/// writer that wrote (or without a lease) is decided at once; an older
/// writer's candidate needs the epochs of every snapshot before it, so that
/// case reads each manifest up to `at` (16 at a time; default thinning keeps
/// a replica near 5,000 snapshots).
pub async fn unfenced_at(
    store: &dyn ObjectStore,
    at: DateTime<Utc>,
    key: Option<&Key>,
) -> Result<Option<Manifest>, Error> {
    let Some(newest) = id_at(store, at).await? else {
        return Ok(None);
    };
    let bound = lease::written_epoch_bound(store).await?;
    if let Candidate::Usable(m) = candidate(store, &newest, key).await? {
        if epoch_of(&m).is_none_or(|e| e >= bound) {
            return Ok(Some(*m));
        }
    }
    let ids: Vec<String> = all_ids(store)
        .await?
        .into_iter()
        .filter(|id| id.as_str() <= newest.as_str())
        .collect();
    unfenced_by_reading_all(store, &ids, key).await
}

/// Moves the anchor forward to base snapshot `base` (called after its
/// manifest is stored). Replaces it only if it names an older base, with a
/// conditional write, so a writer that lost the race (or a late, fenced one)
/// never moves it back. Returns whether it was written. Failing to write it
/// is harmless to correctness (readers list past a stale anchor), so callers
/// may log and go on.
pub async fn advance_anchor(store: &dyn ObjectStore, base: &str) -> Result<bool, StoreError> {
    let body = Bytes::from(
        serde_json::to_vec(&Anchor {
            format: ANCHOR_FORMAT.into(),
            base: base.to_string(),
        })
        .expect("an anchor serialises"),
    );
    let current = match store.head(format::HEAD_KEY).await {
        Ok(meta) => meta,
        Err(StoreError::NotFound { .. }) => {
            return match store.put_if_absent(format::HEAD_KEY, body).await {
                Ok(()) => Ok(true),
                Err(StoreError::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    if anchor(store).await?.is_some_and(|old| old.as_str() >= base) {
        return Ok(false);
    }
    let Some(etag) = current.etag else {
        return Ok(false);
    };
    match store.put_if_match(format::HEAD_KEY, body, &etag).await {
        Ok(_) => Ok(true),
        Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{MemoryStore, Op};
    use crate::test_support::{Scene, lease_record};

    fn id(t: &str, n: u32) -> String {
        format!("{t}-{n:08x}")
    }

    async fn manifest(s: &MemoryStore, id: &str) {
        s.put(&format::manifest_key(id), Bytes::from_static(b"{}"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn newest_costs_two_requests_whatever_the_history() {
        let s = MemoryStore::new("h");
        for i in 0..3000 {
            manifest(&s, &id("20261201T000000.000Z", i)).await;
        }
        let base = id("20261205T100000.000Z", 0);
        manifest(&s, &base).await;
        assert!(advance_anchor(&s, &base).await.unwrap());
        let newer = [id("20261205T100001.000Z", 1), id("20261205T100002.000Z", 2)];
        for n in &newer {
            manifest(&s, n).await;
        }
        let lists = s.requests(Op::List);
        let gets = s.requests(Op::Get);
        assert_eq!(
            newest_id(&s).await.unwrap().as_deref(),
            Some(newer[1].as_str())
        );
        assert_eq!(s.requests(Op::List) - lists, 1, "one LIST after the anchor");
        assert_eq!(s.requests(Op::Get) - gets, 1, "one GET of the anchor");
        assert_eq!(
            recent_ids(&s).await.unwrap(),
            [base.as_str(), newer[0].as_str(), newer[1].as_str()]
        );
    }

    #[tokio::test]
    async fn anchor_only_moves_forward_and_a_bad_one_falls_back_to_listing() {
        let s = MemoryStore::new("h");
        let (old, new) = (id("20261205T100000.000Z", 0), id("20261205T110000.000Z", 0));
        manifest(&s, &old).await;
        manifest(&s, &new).await;
        assert!(advance_anchor(&s, &new).await.unwrap());
        assert!(!advance_anchor(&s, &old).await.unwrap(), "never backwards");
        assert_eq!(anchor(&s).await.unwrap().as_deref(), Some(new.as_str()));

        // No anchor at all: the whole listing.
        let bare = MemoryStore::new("bare");
        manifest(&bare, &old).await;
        assert_eq!(
            newest_id(&bare).await.unwrap().as_deref(),
            Some(old.as_str())
        );
        assert_eq!(newest_id(&MemoryStore::new("empty")).await.unwrap(), None);

        // An anchor naming a manifest that does not exist (planted, or
        // pruned) with nothing after it: the whole listing decides.
        let planted = id("29991231T000000.000Z", 0);
        s.put(
            format::HEAD_KEY,
            Bytes::from(
                serde_json::to_vec(&Anchor {
                    format: ANCHOR_FORMAT.into(),
                    base: planted,
                })
                .unwrap(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(newest_id(&s).await.unwrap().as_deref(), Some(new.as_str()));
        // Garbage in the anchor is ignored the same way.
        s.put(format::HEAD_KEY, Bytes::from_static(b"not json"))
            .await
            .unwrap();
        assert_eq!(newest_id(&s).await.unwrap().as_deref(), Some(new.as_str()));
    }

    #[tokio::test]
    async fn at_narrows_by_hour_day_month_year() {
        let s = MemoryStore::new("h");
        let ids = [
            id("20251231T235959.000Z", 1),
            id("20261205T090000.000Z", 2),
            id("20261205T100000.000Z", 3),
            id("20261205T103000.000Z", 4),
        ];
        for i in &ids {
            manifest(&s, i).await;
        }
        let at = |t: &str| t.parse::<DateTime<Utc>>().unwrap();
        let lists = s.requests(Op::List);
        assert_eq!(
            id_at(&s, at("2026-12-05T10:45:00Z")).await.unwrap(),
            Some(ids[3].clone())
        );
        assert_eq!(s.requests(Op::List) - lists, 1, "found in the hour");
        assert_eq!(
            id_at(&s, at("2026-12-05T10:15:00Z")).await.unwrap(),
            Some(ids[2].clone())
        );
        assert_eq!(
            id_at(&s, at("2026-12-05T09:59:59Z")).await.unwrap(),
            Some(ids[1].clone())
        );
        assert_eq!(
            id_at(&s, at("2026-06-01T00:00:00Z")).await.unwrap(),
            Some(ids[0].clone())
        );
        assert_eq!(id_at(&s, at("2020-01-01T00:00:00Z")).await.unwrap(), None);
    }

    /// The fenced scenario on a fixed schedule: A (epoch 1) snapshots, B
    /// takes the lease (epoch 2, has written) and snapshots, then A finishes
    /// a late snapshot that sorts after B's. Returns (scene, B's, A's late).
    async fn fenced_history() -> (Scene, String, String) {
        let s = Scene::new();
        let mut a = s.writer(1);
        s.snap(&mut a, 1).await;
        let mut b = s.writer(2);
        let by_b = s.snap(&mut b, 2).await;
        s.mem
            .put("lease/00000000000000000002.json", lease_record(2, true, 1))
            .await
            .unwrap();
        let late = s.snap(&mut a, 3).await;
        assert!(late > by_b);
        (s, by_b, late)
    }

    #[tokio::test]
    async fn at_and_a_starting_writer_skip_a_fenced_writers_late_manifest() {
        let (s, by_b, late) = fenced_history().await;
        let at = unfenced_at(&s.mem, Utc::now(), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(at.id, by_b, "--at now must not pick the fenced {late}");
        // A writer starting now (epoch 3) continues B's history, not A's.
        s.mem
            .put("lease/00000000000000000003.json", lease_record(3, true, 2))
            .await
            .unwrap();
        let mut c = s.writer(3);
        let by_c = s.snap(&mut c, 4).await;
        let m = crate::manifest::read(&s.mem, &format::manifest_key(&by_c), None)
            .await
            .unwrap();
        assert_eq!(m.parent.as_deref(), Some(by_b.as_str()), "built on {m:?}");
        assert_eq!(
            newest_unfenced(&s.mem, None).await.unwrap().unwrap().id,
            by_c
        );
    }

    #[tokio::test]
    async fn fenced_by_names_the_writer_that_took_over() {
        let (s, by_b, late) = fenced_history().await;
        let read = |id: String| {
            let mem = s.mem.clone();
            async move {
                crate::manifest::read(&mem, &format::manifest_key(&id), None)
                    .await
                    .unwrap()
            }
        };
        let first = all_ids(&s.mem).await.unwrap()[0].clone();
        assert_eq!(
            crate::index::fenced_by(&s.mem, &read(late.clone()).await, None)
                .await
                .unwrap()
                .as_deref(),
            Some("h#2"),
            "A's late {late} was fenced by B's {by_b}"
        );
        assert_eq!(
            crate::index::fenced_by(&s.mem, &read(by_b).await, None)
                .await
                .unwrap(),
            None
        );
        // A's snapshot before the takeover: an older epoch than the bound,
        // but nothing of a higher epoch precedes it.
        assert_eq!(
            crate::index::fenced_by(&s.mem, &read(first).await, None)
                .await
                .unwrap(),
            None
        );
        // `restore --snapshot` of the late one restores it (the user's
        // explicit choice) and reports who fenced it.
        let dir = tempfile::tempdir().unwrap();
        let mut opts = crate::restore::RestoreOptions::new(dir.path().join("out.db"));
        opts.pick = crate::restore::Pick::Id(late.clone());
        match crate::restore::restore(&s.mem, &opts).await.unwrap() {
            crate::restore::RestoreOutcome::Restored(r) => {
                assert_eq!((r.snapshot, r.fenced_by.as_deref()), (late, Some("h#2")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_taker_that_has_not_written_fences_nothing_and_costs_no_history_read() {
        let s = Scene::new();
        let mut a = s.writer(1);
        for row in 0..20 {
            s.snap(&mut a, row).await;
        }
        let newest = newest_id(&s.mem).await.unwrap().unwrap();
        // B took epoch 2 (A's record is gone, as a takeover deletes it) and
        // has not written yet.
        s.mem
            .put("lease/00000000000000000002.json", lease_record(2, false, 1))
            .await
            .unwrap();
        let gets = s.mem.requests(Op::Get);
        let m = newest_unfenced(&s.mem, None).await.unwrap().unwrap();
        assert_eq!(m.id, newest);
        assert_eq!(
            s.mem.requests(Op::Get) - gets,
            3,
            "anchor, lease record and one manifest"
        );
        // A record of an older version says nothing: the whole rule
        // decides, with the same answer.
        s.mem
            .put("lease/00000000000000000002.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(
            newest_unfenced(&s.mem, None).await.unwrap().unwrap().id,
            newest
        );
    }

    #[tokio::test]
    async fn a_planted_manifest_in_an_encrypted_replica_is_skipped_not_fatal() {
        let s = Scene::new();
        let key = std::sync::Arc::new(Key::parse(&[7u8; 32], "test").unwrap());
        let mut a = s.writer(1).with_key(Some(key.clone()));
        let real = s.snap(&mut a, 1).await;
        // Someone with write access but no key plants a plaintext manifest
        // that sorts last (a copy of a real one under a new id).
        let plain = Scene::new();
        let mut p = plain.writer(1);
        let donor = plain.snap(&mut p, 1).await;
        let body = plain.mem.get(&format::manifest_key(&donor)).await.unwrap();
        let planted = "29991231T000000.000Z-00000001";
        let text = String::from_utf8(body.to_vec())
            .unwrap()
            .replace(&donor, planted);
        s.mem
            .put(&format::manifest_key(planted), Bytes::from(text))
            .await
            .unwrap();
        let picked = newest_unfenced(&s.mem, Some(&key)).await.unwrap().unwrap();
        assert_eq!(picked.id, real);
        let at = unfenced_at(&s.mem, "3000-01-01T00:00:00Z".parse().unwrap(), Some(&key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(at.id, real);
        // Without the key the encrypted snapshots are refused, not skipped.
        s.mem.delete(&format::manifest_key(planted)).await.unwrap();
        let err = newest_unfenced(&s.mem, None).await.unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
    }

    /// Epoch 2 marked itself as writing 30 minutes into a history of 200
    /// snapshots (10 s apart) and was killed before its first manifest;
    /// epoch 1 went on writing. Its bound is stale, but deciding that reads
    /// only the manifests since epoch 2 took the lease (less the slack),
    /// not the whole history.
    #[tokio::test]
    async fn a_stale_bound_reads_only_the_manifests_since_its_epoch_started() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let s = Scene::new();
        let t0 = Utc::now() - chrono::Duration::hours(2);
        let secs = std::sync::Arc::new(AtomicI64::new(0));
        let clock = {
            let secs = secs.clone();
            crate::snapshot::Clock::new(move || {
                t0 + chrono::Duration::seconds(secs.load(Ordering::SeqCst))
            })
        };
        let mut a = s.writer(1).with_clock(clock);
        let mut newest = String::new();
        for i in 0..200 {
            secs.store(i * 10, Ordering::SeqCst);
            newest = s.snap(&mut a, i).await;
        }
        let acquired = t0 + chrono::Duration::seconds(1800);
        let record = serde_json::json!({
            "epoch": 2, "owner": "o", "host": "h", "pid": 1,
            "acquired": acquired, "expires": acquired + chrono::Duration::minutes(2),
            "wrote": true, "written_below": 1,
        });
        s.mem
            .put(
                "lease/00000000000000000002.json",
                Bytes::from(record.to_string()),
            )
            .await
            .unwrap();
        let since_start = all_ids(&s.mem)
            .await
            .unwrap()
            .iter()
            .filter(|id| format::snapshot_id_time(id).unwrap() > acquired - STALE_SLACK)
            .count() as u64;
        let gets = s.mem.requests(Op::Get);
        let m = newest_unfenced(&s.mem, None).await.unwrap().unwrap();
        let read = s.mem.requests(Op::Get) - gets;
        assert_eq!(m.id, newest, "epoch 2 wrote nothing: epoch 1's newest");
        println!(
            "FIGURE stale bound: {read} GETs for 200 snapshots, {since_start} since the epoch started"
        );
        assert!(
            read <= since_start + 64 + 3,
            "{read} GETs: at most the span since the epoch started ({since_start}), the walk from the anchor and the anchor, lease and answer"
        );
        // The exact rule over the whole history agrees.
        let all = unfenced_by_reading_all(&s.mem, &all_ids(&s.mem).await.unwrap(), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(all.id, newest);
    }

    /// Epoch 2 marked itself as writing and died before its manifest landed
    /// (a `kill -9` in between): its bound is stale. A lease-less snapshot
    /// older than epoch 1's newest must not win; the whole rule decides.
    #[tokio::test]
    async fn a_stale_bound_never_picks_an_older_leaseless_snapshot() {
        let s = Scene::new();
        let mut a = s.writer(1);
        s.snap(&mut a, 1).await;
        let mut plain = crate::snapshot::Snapshotter::new(&s.db, s.store.clone());
        s.snap(&mut plain, 2).await;
        let mut a = s.writer(1);
        let newest = s.snap(&mut a, 3).await;
        s.mem
            .put("lease/00000000000000000002.json", lease_record(2, true, 1))
            .await
            .unwrap();
        assert_eq!(
            newest_unfenced(&s.mem, None).await.unwrap().unwrap().id,
            newest
        );
    }
}
