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

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::format;
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
}
