//! A per-day summary of the history, so that `prune` and `snapshots` do not
//! read every manifest.
//!
//! `watch` writes a manifest about every 0.75 s under steady mail, ~100k a
//! day. Deciding retention needs only each snapshot's id, time, base and
//! writer epoch, and `snapshots` its sizes: a few dozen bytes, against one
//! GET per manifest (on AWS, 100k GETs are minutes and cost money).
//!
//! `index/<YYYYMMDD>.json` lists those fields ([`Summary`]) for every
//! snapshot whose id falls on that UTC day. `prune` writes it for days that
//! are over ([`CLOSED_AFTER`]) once it has decided, so the next prune reads
//! one object per past day instead of every manifest of it.
//!
//! An index is only a cache of what the manifests say:
//! - it is used only when its ids are exactly the day's listed manifests
//!   (the listing is needed anyway, one request per 1000 keys); a day that
//!   changed (a late writer with a lagging clock, a prune) is read from its
//!   manifests, and the next prune rewrites its index;
//! - with an encryption key it is sealed like every other object (AES-GCM,
//!   bound to its key), so a forged or damaged one is ignored, never
//!   trusted; in a plaintext replica it is trusted as far as the manifests
//!   are (whoever can plant an index can plant a manifest);
//! - `prune` still reads every snapshot it keeps (it needs their object
//!   references) and refuses to delete anything if one disagrees with its
//!   entry.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::crypto::Key;
use crate::format::{self, Manifest};
use crate::store::{ObjectStore, StoreError};

/// Key prefix of the day indexes.
pub const INDEX_PREFIX: &str = "index/";
/// Value of the index's `format` field.
pub const INDEX_FORMAT: &str = "mailsafe-index";
/// Version of the index layout.
pub const INDEX_VERSION: u32 = 1;
/// How long after its end a day is indexed: writers whose clock lags by
/// less than this still land in an open day. A later one only makes the
/// index stale, which readers detect.
pub const CLOSED_AFTER: chrono::Duration = chrono::Duration::hours(2);
/// Largest index object read: a day of 100k snapshots is about 20 MB.
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// What `prune` and `snapshots` need of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The snapshot id.
    pub id: String,
    /// The manifest's `created` (for retention's time buckets only).
    pub created: DateTime<Utc>,
    /// The base snapshot it is built on (itself for a base).
    pub base: String,
    /// The lease epoch of its writer (see [`format::fenced`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Its writer's host name, for `snapshots` (absent in indexes written
    /// before it was recorded, and for manifests without a writer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Size of the database image, in bytes.
    pub db_size: u64,
    /// Bytes of every object the snapshot needs.
    pub stored_bytes: u64,
    /// Bytes the snapshot uploaded.
    pub new_bytes: u64,
}

impl Summary {
    /// The summary of manifest `m`.
    pub fn of(m: &Manifest) -> Self {
        Summary {
            id: m.id.clone(),
            created: m.created,
            base: m.base.clone(),
            epoch: m.writer.as_ref().map(|w| w.epoch),
            host: m.writer.as_ref().map(|w| w.host.clone()),
            db_size: m.db.image_size(),
            stored_bytes: m.stats.stored_bytes,
            new_bytes: m.stats.new_bytes,
        }
    }
}

/// The stored index of one day.
#[derive(Debug, Serialize, Deserialize)]
struct DayIndex {
    format: String,
    version: u32,
    /// `YYYYMMDD`.
    day: String,
    /// In id order.
    snapshots: Vec<Summary>,
}

/// The key of day `day`'s index (`YYYYMMDD`).
pub fn index_key(day: &str) -> String {
    format!("{INDEX_PREFIX}{day}.json")
}

/// The UTC day (`YYYYMMDD`) a snapshot id falls on.
fn day_of(id: &str) -> &str {
    &id[..8]
}

/// Every snapshot of a replica as summaries, from the day indexes where they
/// are current and from the manifests elsewhere.
#[derive(Debug, Default)]
pub struct Summaries {
    /// Per listed snapshot id, in id order: its summary, or why its manifest
    /// could not be used.
    pub entries: BTreeMap<String, Result<Summary, Error>>,
    /// Days served from a current index.
    pub indexed_days: BTreeSet<String>,
    /// Manifests read (the rest came from indexes).
    pub manifests_read: usize,
}

/// Summarises every snapshot of `store` (see the module doc): one LIST of
/// `manifests/` and of `index/`, one GET per indexed day, and one manifest
/// read (authenticated against `key`, `parallelism` at a time) per snapshot
/// of the other days. Store errors are errors; a manifest that fails its
/// checks is an entry with its error.
pub async fn summaries(
    store: &dyn ObjectStore,
    key: Option<&Key>,
    parallelism: usize,
) -> Result<Summaries, Error> {
    let ids = crate::history::all_ids(store).await?;
    let mut by_day: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in ids {
        by_day.entry(day_of(&id).to_string()).or_default().push(id);
    }
    let indexed: BTreeSet<String> = store
        .list(INDEX_PREFIX)
        .await?
        .iter()
        .filter_map(|m| {
            m.key
                .strip_prefix(INDEX_PREFIX)?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .collect();
    let mut out = Summaries::default();
    let mut unread = Vec::new();
    for (day, ids) in by_day {
        if indexed.contains(&day) {
            if let Some(list) = read_index(store, &day, key, &ids).await? {
                for s in list {
                    out.entries.insert(s.id.clone(), Ok(s));
                }
                out.indexed_days.insert(day);
                continue;
            }
        }
        unread.extend(ids);
    }
    let read: Vec<(String, Result<Manifest, Error>)> = futures::stream::iter(unread)
        .map(|id| async move {
            let m = crate::manifest::read(store, &format::manifest_key(&id), key).await;
            (id, m)
        })
        .buffered(parallelism.max(1))
        .collect()
        .await;
    for (id, m) in read {
        out.manifests_read += 1;
        match m {
            Ok(m) => {
                out.entries.insert(id, Ok(Summary::of(&m)));
            }
            // Deleted since the listing (another prune): not a snapshot.
            Err(Error::Store(StoreError::NotFound { .. })) => {}
            Err(e @ Error::Store(_)) => return Err(e),
            Err(e) => {
                out.entries.insert(id, Err(e));
            }
        }
    }
    Ok(out)
}

/// Day `day`'s index if it is current: readable, authentic with `key`, and
/// listing exactly `ids`. Anything else is logged and ignored (the day is
/// then read from its manifests).
async fn read_index(
    store: &dyn ObjectStore,
    day: &str,
    key: Option<&Key>,
    ids: &[String],
) -> Result<Option<Vec<Summary>>, Error> {
    let k = index_key(day);
    let body = match store.get_range(&k, 0..MAX_INDEX_BYTES + 1).await {
        Ok(b) if b.len() as u64 > MAX_INDEX_BYTES => {
            tracing::warn!(key = %k, "day index larger than {MAX_INDEX_BYTES} bytes; ignored");
            return Ok(None);
        }
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let plain = match key {
        Some(enc) => match enc.open(&k, &body) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(key = %k, error = %e, "day index failed authentication; ignored");
                return Ok(None);
            }
        },
        None => body.to_vec(),
    };
    let idx: DayIndex = match serde_json::from_slice(&plain) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(key = %k, error = %e, "day index unreadable; ignored");
            return Ok(None);
        }
    };
    if idx.format != INDEX_FORMAT || idx.version != INDEX_VERSION || idx.day != day {
        tracing::warn!(key = %k, "day index of another format, version or day; ignored");
        return Ok(None);
    }
    if !idx.snapshots.iter().map(|s| &s.id).eq(ids.iter()) {
        tracing::debug!(key = %k, "day index is stale; reading that day's manifests");
        return Ok(None);
    }
    Ok(Some(idx.snapshots))
}

/// Writes the index of every day that is over (ended more than
/// [`CLOSED_AFTER`] before `now`), has no current index in `s`, and whose
/// snapshots in `s` all read fine; `forgotten` ids (just deleted by prune)
/// are left out. Returns the days written. A failure only costs the next
/// prune its reads, so callers may log and go on.
pub async fn write_closed_days(
    store: &dyn ObjectStore,
    key: Option<&Key>,
    s: &Summaries,
    forgotten: &BTreeSet<String>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, Error> {
    let mut days: BTreeMap<&str, Vec<&Summary>> = BTreeMap::new();
    let mut broken: BTreeSet<&str> = BTreeSet::new();
    // Days this prune forgot a snapshot of: their index (if any) is stale.
    let mut touched: BTreeSet<&str> = BTreeSet::new();
    for (id, entry) in &s.entries {
        let day = day_of(id);
        match entry {
            Ok(sum) if !forgotten.contains(id) => days.entry(day).or_default().push(sum),
            Ok(_) => {
                days.entry(day).or_default();
                touched.insert(day);
            }
            Err(_) => {
                broken.insert(day);
            }
        }
    }
    let mut written = Vec::new();
    for (day, list) in days {
        // Current before this prune, and nothing of it was forgotten.
        let untouched = s.indexed_days.contains(day) && !touched.contains(day);
        if untouched || broken.contains(day) || !closed(day, now) {
            continue;
        }
        let k = index_key(day);
        if list.is_empty() {
            // Every snapshot of the day was forgotten.
            match store.delete(&k).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let idx = DayIndex {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            day: day.to_string(),
            snapshots: list.into_iter().cloned().collect(),
        };
        let json = serde_json::to_vec(&idx).expect("an index serialises");
        let body = match key {
            Some(enc) => enc.seal(&k, &json),
            None => json,
        };
        store.put(&k, Bytes::from(body)).await?;
        written.push(day.to_string());
    }
    Ok(written)
}

/// Whether day `day` (`YYYYMMDD`) ended more than [`CLOSED_AFTER`] before
/// `now`.
fn closed(day: &str, now: DateTime<Utc>) -> bool {
    chrono::NaiveDate::parse_from_str(day, "%Y%m%d")
        .ok()
        .and_then(|d| d.succ_opt())
        .and_then(|next| next.and_hms_opt(0, 0, 0))
        .is_some_and(|end| end.and_utc() + CLOSED_AFTER < now)
}

/// Who took the lease over from the writer of snapshot `m`, when a fenced
/// writer wrote it (see [`crate::format::fenced`]): `host#epoch` (or `epoch N`
/// when the host is not recorded) of the nearest earlier snapshot written
/// under a higher epoch; `None` when `m` is not fenced.
///
/// For `restore --snapshot ID`, where the user's explicit choice is
/// restored anyway but with a warning naming that writer. Costs the lease
/// bound's two requests when `m`'s epoch may be the newest that wrote (or
/// it has no writer); otherwise the epochs of every snapshot before it,
/// from the day indexes where they are current and from the manifests
/// elsewhere ([`summaries`]). Snapshots that fail their checks
/// are left out: their epochs are not evidence. (It lives here, not in
/// `history`, because it reads the summaries, and `index` is above `history`.)
pub async fn fenced_by(
    store: &dyn ObjectStore,
    m: &Manifest,
    key: Option<&Key>,
) -> Result<Option<String>, Error> {
    let Some(epoch) = crate::history::epoch_of(m) else {
        return Ok(None);
    };
    if epoch >= crate::lease::written_epoch_bound(store).await? {
        return Ok(None);
    }
    let all = summaries(store, key, 16).await?;
    Ok(all
        .entries
        .range(..m.id.clone())
        .rev()
        .filter_map(|(_, s)| s.as_ref().ok())
        .find(|s| s.epoch.is_some_and(|e| e > epoch))
        .map(|s| match (&s.host, s.epoch) {
            (Some(host), Some(e)) => format!("{host}#{e}"),
            (_, e) => format!("epoch {}", e.unwrap_or_default()),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::Op;
    use crate::test_support::Scene;

    /// A time at which today (by the clock) is a closed day.
    fn later() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::days(2)
    }

    fn ok(s: &Summaries) -> Vec<Summary> {
        s.entries
            .values()
            .map(|e| e.as_ref().unwrap().clone())
            .collect()
    }

    #[tokio::test]
    async fn an_index_replaces_a_days_manifest_reads_and_stays_exact() {
        let s = Scene::new();
        let mut w = s.writer(1);
        for row in 0..12 {
            s.snap(&mut w, row).await;
        }
        let first = summaries(&s.mem, None, 4).await.unwrap();
        assert_eq!(first.manifests_read, 12);
        // Today is not over: nothing is indexed yet.
        let none = BTreeSet::new();
        assert!(
            write_closed_days(&s.mem, None, &first, &none, Utc::now())
                .await
                .unwrap()
                .is_empty()
        );
        let days = write_closed_days(&s.mem, None, &first, &none, later())
            .await
            .unwrap();
        assert_eq!(days.len(), 1);

        let gets = s.mem.requests(Op::Get);
        let second = summaries(&s.mem, None, 4).await.unwrap();
        assert_eq!(second.manifests_read, 0);
        assert_eq!(
            s.mem.requests(Op::Get) - gets,
            1,
            "one GET: the day's index"
        );
        assert_eq!(ok(&second), ok(&first));

        // A snapshot the index does not list makes it stale: the day is
        // read from its manifests, with the same answer as without an index.
        s.snap(&mut w, 99).await;
        let third = summaries(&s.mem, None, 4).await.unwrap();
        assert_eq!(third.manifests_read, 13);
        assert_eq!(ok(&third)[..12], ok(&first)[..]);
    }

    #[tokio::test]
    async fn an_encrypted_replicas_index_is_sealed_and_a_forged_one_ignored() {
        let s = Scene::new();
        let key = std::sync::Arc::new(Key::parse(&[7u8; 32], "test").unwrap());
        let mut w = s.writer(1).with_key(Some(key.clone()));
        for row in 0..3 {
            s.snap(&mut w, row).await;
        }
        let first = summaries(&s.mem, Some(&key), 4).await.unwrap();
        let none = BTreeSet::new();
        let days = write_closed_days(&s.mem, Some(&key), &first, &none, later())
            .await
            .unwrap();
        let k = index_key(&days[0]);
        let body = s.mem.get(&k).await.unwrap();
        assert!(
            !body.windows(5).any(|w| w == b"\"id\":"),
            "sealed, not plain JSON"
        );
        assert_eq!(
            summaries(&s.mem, Some(&key), 4)
                .await
                .unwrap()
                .manifests_read,
            0
        );

        // A plain index planted by someone without the key, claiming other
        // times: ignored, the manifests decide.
        let mut forged: Vec<Summary> = ok(&first);
        for f in &mut forged {
            f.created = "2999-01-01T00:00:00Z".parse().unwrap();
        }
        let idx = DayIndex {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            day: days[0].clone(),
            snapshots: forged,
        };
        s.mem
            .put(&k, Bytes::from(serde_json::to_vec(&idx).unwrap()))
            .await
            .unwrap();
        let read = summaries(&s.mem, Some(&key), 4).await.unwrap();
        assert_eq!(read.manifests_read, 3);
        assert_eq!(ok(&read), ok(&first));
    }

    #[tokio::test]
    async fn prune_reads_only_what_it_keeps_and_refuses_a_lying_index() {
        use crate::retention::{Policy, prune};
        let s = Scene::new();
        let mut w = s.writer(1);
        for row in 0..20 {
            s.snap(&mut w, row).await;
        }
        let policy = Policy {
            keep_last: Some(2),
            ..Default::default()
        };
        let zero = std::time::Duration::ZERO;
        let without = prune(&s.mem, &policy, zero, true, None).await.unwrap();
        let needed = 2 + without.kept_as_base.len();
        assert_eq!(
            without.manifests_read,
            20 + needed,
            "every manifest, then the kept and their base"
        );
        let sums = summaries(&s.mem, None, 4).await.unwrap();
        write_closed_days(&s.mem, None, &sums, &BTreeSet::new(), later())
            .await
            .unwrap();
        let with = prune(&s.mem, &policy, zero, true, None).await.unwrap();
        assert_eq!(
            with.manifests_read, needed,
            "the two kept and their base only"
        );
        assert_eq!(with.forgotten, without.forgotten);
        assert_eq!(with.kept_as_base, without.kept_as_base);

        // An index that lies about a kept snapshot (its writer) stops prune
        // before it deletes anything.
        let day = &day_of(&with.forgotten[0]).to_string();
        let mut lie = ok(&sums);
        let last = lie.len() - 1;
        lie[last].epoch = Some(9);
        let idx = DayIndex {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            day: day.clone(),
            snapshots: lie,
        };
        s.mem
            .put(
                &index_key(day),
                Bytes::from(serde_json::to_vec(&idx).unwrap()),
            )
            .await
            .unwrap();
        let err = prune(&s.mem, &policy, zero, false, None).await.unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert!(err.to_string().contains("disagrees"), "{err}");
        assert_eq!(
            crate::history::all_ids(&s.mem).await.unwrap().len(),
            20,
            "nothing deleted"
        );
    }
}
