//! Retention ("which snapshots to keep", like restic's `forget`) and garbage
//! collection ("which objects nothing needs any more").
//!
//! Keeping a snapshot keeps everything it needs to restore: its manifest, its
//! base manifest and the base's chunks (their `chunks/` objects or the packs
//! holding them, whole), and every delta pack it lists (see
//! [`crate::format`]). Forgetting a snapshot deletes only its manifest; its
//! delta pack usually stays, because later incremental manifests list it too.
//! Since format version 2 that delta pack lives inside the manifest object,
//! so before deleting the manifest of a snapshot whose delta a kept snapshot
//! lists, prune copies those exact bytes (checked against the recorded
//! sha256) to `deltas/<id>`, where readers look when the manifest is gone. A
//! restore racing the prune therefore always finds the bytes in one place or
//! the other.
//!
//! GC deletes an object only when no kept manifest references it **and** it
//! is older than a grace period. A snapshot being written uploads its chunks
//! and deltas first and its manifest last, so for a while its new objects are
//! referenced by nothing; the grace period is what keeps GC away from them.
//! The newest snapshot (the history head: the highest id, whatever the
//! manifests' clocks say) is always kept whatever the policy says, so the chain
//! a concurrent writer builds on is never collected; and the manifests are
//! listed again right before deleting, so one that appeared meanwhile still
//! protects what it references.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use crate::Error;
use crate::crypto::Key;
use crate::format::{self, Manifest};
use crate::index::Summary;
use crate::manifest;
use crate::store::{ObjectStore, StoreError};

/// Which snapshots to keep. Every rule counts from the newest snapshot
/// backwards; a snapshot kept by any rule is kept. With no rule at all,
/// everything is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Keep every snapshot taken within this long of the newest one
    /// (restic's `--keep-within`).
    pub keep_within: Option<Duration>,
    /// Keep the N newest snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    pub keep_weekly: Option<u32>,
}

impl Policy {
    /// Whether no rule is set (then nothing is forgotten).
    pub fn is_empty(&self) -> bool {
        self.keep_within.is_none()
            && self.keep_last.is_none()
            && self.keep_hourly.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
    }

    /// The thinning `watch` and `serve --replica` apply when the user sets
    /// no policy of their own: every snapshot of the last hour, then one an
    /// hour for a day, one a day for a week. A sidecar writes ~4,800
    /// snapshots an hour under steady mail; this keeps a replica left alone
    /// for a year at about 4,800 + 24 + 7 manifests instead of millions.
    pub fn default_thinning() -> Policy {
        Policy {
            keep_within: Some(Duration::from_secs(3600)),
            keep_last: None,
            keep_hourly: Some(24),
            keep_daily: Some(7),
            keep_weekly: None,
        }
    }
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Snapshot id.
    pub id: String,
    /// When it was taken.
    pub created: DateTime<Utc>,
    /// Whether it is kept.
    pub keep: bool,
    /// The rules that keep it (`within`, `last`, `hourly`, `daily`,
    /// `weekly`, `newest`, `no-policy`).
    pub reasons: Vec<&'static str>,
}

/// Applies `policy` to `snapshots` (any order): `(id, created)` pairs.
/// Returns one decision per snapshot, newest first.
///
/// "Newest" is history order, which is snapshot id order (a writer makes
/// each id strictly after the previous one whatever its clock says, see
/// `snapshot::reader::next_id`), never the manifest's wall-clock `created`:
/// a snapshot taken on a host whose clock lags must not look older than its
/// parent, or `keep-last` would forget the history head. `created` only
/// places a snapshot in an hour/day/week bucket, and is clamped along id
/// order so that it never goes backwards (a lagging clock puts the snapshot
/// in its predecessor's bucket). The head (highest id) is always kept.
pub fn decide(policy: &Policy, snapshots: &[(String, DateTime<Utc>)]) -> Vec<Decision> {
    let mut sorted: Vec<&(String, DateTime<Utc>)> = snapshots.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    // Bucket times, oldest first, clamped to be non-decreasing.
    let mut clamped: Vec<DateTime<Utc>> = Vec::with_capacity(sorted.len());
    for (_, created) in &sorted {
        let t = match clamped.last() {
            Some(prev) if prev > created => *prev,
            _ => *created,
        };
        clamped.push(t);
    }
    sorted.reverse();
    clamped.reverse();

    type Bucket = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);
    let rules: [(&'static str, Option<u32>, Bucket); 4] = [
        ("last", policy.keep_last, |_| (0, 0, 0, 0)),
        ("hourly", policy.keep_hourly, |t| {
            (t.year(), t.ordinal(), t.hour(), 0)
        }),
        ("daily", policy.keep_daily, |t| {
            (t.year(), t.ordinal(), 0, 0)
        }),
        ("weekly", policy.keep_weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
    ];
    // keep-within counts back from the newest snapshot's (clamped) time.
    let newest_time = clamped.first().copied();
    let mut left: Vec<u32> = rules.iter().map(|r| r.1.unwrap_or(0)).collect();
    let mut last_bucket: Vec<Option<(i32, u32, u32, u32)>> = vec![None; rules.len()];

    sorted
        .iter()
        .zip(&clamped)
        .enumerate()
        .map(|(i, ((id, created), bucket_time))| {
            let mut reasons = Vec::new();
            if policy.is_empty() {
                reasons.push("no-policy");
            }
            if let (Some(within), Some(newest)) = (policy.keep_within, newest_time) {
                if (newest - *bucket_time).to_std().unwrap_or_default() <= within {
                    reasons.push("within");
                }
            }
            for (r, (name, _, bucket)) in rules.iter().enumerate() {
                if left[r] == 0 {
                    continue;
                }
                // keep-last: every snapshot is a bucket of its own.
                let b = if r == 0 {
                    None
                } else {
                    Some(bucket(bucket_time))
                };
                if b.is_none() || b != last_bucket[r] {
                    left[r] -= 1;
                    last_bucket[r] = b;
                    reasons.push(*name);
                }
            }
            if i == 0 && reasons.is_empty() {
                reasons.push("newest");
            }
            Decision {
                id: id.clone(),
                created: *created,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

/// What [`prune`] did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Whether nothing was deleted because this was a dry run.
    pub dry_run: bool,
    /// Every snapshot's verdict, newest first.
    pub snapshots: Vec<Decision>,
    /// Snapshot ids forgotten (manifests deleted).
    pub forgotten: Vec<String>,
    /// Manifests of forgotten snapshots kept because a kept snapshot is
    /// built on them (bases).
    pub kept_as_base: Vec<String>,
    /// `deltas/<id>` objects written because a forgotten snapshot's manifest
    /// embedded a delta pack that a kept snapshot lists.
    pub copied_deltas: Vec<String>,
    /// Unreferenced objects deleted.
    pub deleted_objects: Vec<String>,
    /// Their total size in bytes.
    pub deleted_bytes: u64,
    /// Unreferenced objects left alone because they are younger than the
    /// grace period (a snapshot may be uploading them).
    pub young_unreferenced: u64,
    /// Objects still referenced by a kept snapshot.
    pub referenced_objects: u64,
    /// Manifests read (the other snapshots were summarised by day indexes,
    /// see [`crate::index`]).
    pub manifests_read: usize,
    /// Days whose index this prune wrote.
    pub indexed_days: Vec<String>,
}

fn store_err(store: &dyn ObjectStore, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("{what} in {}: {e}", store.describe()))
}

/// How far ahead of this host's clock the newest snapshot id of a
/// *plaintext* replica may be before `prune` refuses to act on it. Nothing
/// authenticates a plaintext manifest, so anyone who can put an object can
/// plant one dated 2999 that would become the history head and make
/// `keep-last` forget every real snapshot. A day is far beyond any clock
/// skew between a writer and the prune job (tests step clocks by hours)
/// yet stops that cheap attack; encrypted replicas authenticate every
/// manifest instead (see docs/FORMAT.md, Hostile manifests).
pub const MAX_HEAD_AHEAD: chrono::Duration = chrono::Duration::days(1);

/// The refusal for a snapshot whose manifest failed its checks: one that
/// fails is never used to decide a deletion, so the whole prune stops with
/// an [`Error::Verification`] naming its key, before anything is deleted.
fn refuse(store: &dyn ObjectStore, id: &str, e: &Error) -> Error {
    let why = match e {
        Error::Verification(why) => why.clone(),
        other => other.to_string(),
    };
    Error::Verification(format!(
        "{why}; prune deletes nothing while a manifest of {} fails its checks \
         (if {} is not a snapshot of yours, move it away and prune again)",
        store.describe(),
        format::manifest_key(id)
    ))
}

/// Reads the manifests `ids` through the one reader ([`manifest::read`]:
/// checked, and authenticated against `key`), 16 at a time. Any that fails
/// its checks refuses the prune ([`refuse`]); one deleted since it was
/// listed (another prune) is left out.
async fn read_manifests(
    store: &dyn ObjectStore,
    ids: impl IntoIterator<Item = String>,
    key: Option<&Key>,
) -> Result<BTreeMap<String, Manifest>, Error> {
    use futures::StreamExt as _;
    let read: Vec<(String, Result<Manifest, Error>)> = futures::stream::iter(ids)
        .map(|id| async move {
            let m = manifest::read(store, &format::manifest_key(&id), key).await;
            (id, m)
        })
        .buffered(16)
        .collect()
        .await;
    let mut manifests = BTreeMap::new();
    for (id, m) in read {
        match m {
            Ok(m) => {
                manifests.insert(id, m);
            }
            Err(Error::Store(StoreError::NotFound { .. })) => {}
            Err(Error::Store(e)) => {
                return Err(store_err(
                    store,
                    &format!("reading {}", format::manifest_key(&id)),
                    e,
                ));
            }
            Err(e) => return Err(refuse(store, &id, &e)),
        }
    }
    Ok(manifests)
}

/// Refuses a plaintext replica whose head is dated far in the future (see
/// [`MAX_HEAD_AHEAD`]).
fn check_head_time(
    store: &dyn ObjectStore,
    head: Option<&str>,
    key: Option<&Key>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    if key.is_some() {
        return Ok(());
    }
    let Some((id, t)) = head.and_then(|id| Some((id, format::snapshot_id_time(id)?))) else {
        return Ok(());
    };
    if t > now + MAX_HEAD_AHEAD {
        return Err(Error::Verification(format!(
            "{}: the newest snapshot of {} is dated {}, more than {} h ahead of this host's clock ({}); \
             a plaintext manifest is not authenticated, so prune deletes nothing rather than trust it \
             (if it is not a snapshot of yours, move it away; if a writer's clock is that far off, fix it)",
            format::manifest_key(id),
            store.describe(),
            t.to_rfc3339(),
            MAX_HEAD_AHEAD.num_hours(),
            now.to_rfc3339()
        )));
    }
    Ok(())
}

/// Every object key the manifests `ids` need, base manifests included.
/// `get` looks a manifest up by id (the snapshot's own, and its base's).
fn references<'a>(
    ids: &BTreeSet<String>,
    get: impl Fn(&str) -> Option<&'a Manifest>,
) -> HashSet<String> {
    let mut refs = HashSet::new();
    for id in ids {
        let Some(m) = get(id) else { continue };
        refs.insert(format::manifest_key(&m.id));
        refs.insert(format::manifest_key(&m.base));
        for d in &m.deltas {
            refs.insert(d.key.clone());
        }
        if let Some(base) = get(&m.base) {
            // A pack stays while any kept base uses any chunk in it.
            for c in &base.chunks {
                refs.insert(c.object_key());
            }
        }
    }
    refs
}

/// Copies the delta pack embedded in a manifest to its own `deltas/<id>`
/// key, byte for byte, after checking it against the sha256 and size the
/// manifests recorded (so a damaged manifest is never laundered into a
/// valid-looking delta object, and the manifest is not deleted).
async fn copy_out(store: &dyn ObjectStore, d: &format::ObjectRef) -> Result<(), Error> {
    let (mkey, range) = d.embedded().expect("called for embedded deltas only");
    let bytes = store
        .get_range(&mkey, range)
        .await
        .map_err(|e| store_err(store, &format!("reading {}", d.describe()), e))?;
    if bytes.len() as u64 != d.size || format::sha256_hex(&bytes) != d.sha256 {
        return Err(Error::Verification(format!(
            "{}: stored bytes do not match the sha256/size the manifests record; \
             not forgetting snapshot {} (its manifest holds the only copy)",
            d.describe(),
            d.snapshot_id().unwrap_or("?")
        )));
    }
    store
        .put(&d.key, bytes)
        .await
        .map_err(|e| store_err(store, &format!("writing {}", d.key), e))
}

/// Forgets the snapshots `policy` does not keep, then deletes objects no kept
/// snapshot references that are older than `grace`. With `dry_run`, deletes
/// nothing and reports what it would delete. Every manifest is read
/// through the one reader and authenticated with `key` (an encrypted
/// replica needs its key); if any fails, or a plaintext replica's head is
/// dated far ahead (see [`MAX_HEAD_AHEAD`]), nothing is deleted and the
/// error ([`Error::Verification`], exit 4) names the key.
pub async fn prune(
    store: &dyn ObjectStore,
    policy: &Policy,
    grace: Duration,
    dry_run: bool,
    key: Option<&Key>,
) -> Result<PruneReport, Error> {
    prune_at(store, policy, grace, dry_run, key, Utc::now()).await
}

/// [`prune`] as if the time were `now` (the grace period, the head's date
/// check and which days are over count from it): for simulations with a
/// scripted clock.
pub async fn prune_at(
    store: &dyn ObjectStore,
    policy: &Policy,
    grace: Duration,
    dry_run: bool,
    key: Option<&Key>,
    now: DateTime<Utc>,
) -> Result<PruneReport, Error> {
    // What to keep is decided from summaries (day indexes where current,
    // manifests elsewhere: see crate::index), not by reading every manifest.
    let sums = crate::index::summaries(store, key, 16).await?;
    let mut summaries: BTreeMap<String, Summary> = BTreeMap::new();
    for (id, entry) in &sums.entries {
        match entry {
            Ok(s) => {
                summaries.insert(id.clone(), s.clone());
            }
            Err(e) => return Err(refuse(store, id, e)),
        }
    }
    check_head_time(
        store,
        summaries.keys().next_back().map(String::as_str),
        key,
        now,
    )?;
    // A fenced writer's late manifests are never the head: they get no
    // decision, so they are forgotten unless a kept snapshot builds on them.
    let epochs: Vec<Option<u64>> = summaries.values().map(|s| s.epoch).collect();
    let listed: Vec<(String, DateTime<Utc>)> = summaries
        .values()
        .zip(format::fenced(&epochs))
        .filter(|(_, fenced)| !fenced)
        .map(|(s, _)| (s.id.clone(), s.created))
        .collect();
    let decisions = decide(policy, &listed);
    let kept: BTreeSet<String> = decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.id.clone())
        .collect();
    // A kept incremental snapshot needs its base manifest.
    let needed: BTreeSet<String> = kept
        .iter()
        .flat_map(|id| {
            let base = summaries.get(id).map(|s| s.base.clone());
            std::iter::once(id.clone()).chain(base)
        })
        .collect();
    for id in &needed {
        if !summaries.contains_key(id) {
            return Err(Error::Verification(format!(
                "snapshot {} is built on base {id}, whose manifest {} is missing from {}; \
                 refusing to prune a replica that is already broken",
                kept.iter()
                    .find(|k| summaries.get(*k).is_some_and(|s| &s.base == id))
                    .map(String::as_str)
                    .unwrap_or("?"),
                format::manifest_key(id),
                store.describe()
            )));
        }
    }
    // What is kept is read whole: its object references, and a check that
    // an index told the truth about it.
    let manifests = read_manifests(store, needed.iter().cloned(), key).await?;
    for (id, m) in &manifests {
        if summaries.get(id) != Some(&Summary::of(m)) {
            return Err(Error::Verification(format!(
                "{}: the day index {} disagrees with this manifest; prune deletes nothing \
                 (move the index away and prune again)",
                format::manifest_key(id),
                crate::index::index_key(&id[..8])
            )));
        }
    }
    let mut report = PruneReport {
        dry_run,
        kept_as_base: needed.difference(&kept).cloned().collect(),
        forgotten: summaries
            .keys()
            .filter(|id| !needed.contains(*id))
            .cloned()
            .collect(),
        snapshots: decisions,
        manifests_read: sums.manifests_read + manifests.len(),
        ..PruneReport::default()
    };
    let forgotten: BTreeSet<String> = report.forgotten.iter().cloned().collect();

    // Delta packs embedded in manifests about to go that a kept snapshot
    // still lists: copied out first, so they are never lost.
    let mut copied = BTreeSet::new();
    for d in manifests.values().flat_map(|m| &m.deltas) {
        let Some((mkey, _)) = d.embedded() else {
            continue;
        };
        let goes = format::manifest_id(&mkey).is_some_and(|id| forgotten.contains(id));
        if !goes || !copied.insert(d.key.clone()) {
            continue;
        }
        if !dry_run {
            copy_out(store, d).await?;
        }
        report.copied_deltas.push(d.key.clone());
    }

    // Forget first: once a manifest is gone nobody can pick that snapshot,
    // and only then can its objects become garbage.
    if !dry_run {
        for id in &report.forgotten {
            let key = format::manifest_key(id);
            store
                .delete(&key)
                .await
                .map_err(|e| store_err(store, &format!("deleting {key}"), e))?;
        }
    }

    let mut refs = references(&needed, |id| manifests.get(id));
    let mut candidates = Vec::new();
    for prefix in [format::CHUNKS, format::PACKS, format::DELTAS] {
        let list = store
            .list(prefix)
            .await
            .map_err(|e| store_err(store, &format!("listing {prefix}"), e))?;
        candidates.extend(list);
    }
    // A snapshot may have committed its manifest while we listed: whatever
    // a manifest we did not see references is protected too (with its
    // base's chunks, reading that base if it is not kept).
    let new_ids: BTreeSet<String> = crate::history::all_ids(store)
        .await
        .map_err(|e| store_err(store, "listing manifests/", e))?
        .into_iter()
        .filter(|id| !summaries.contains_key(id))
        .collect();
    let mut again = read_manifests(store, new_ids.iter().cloned(), key).await?;
    let bases: BTreeSet<String> = again
        .values()
        .map(|m| m.base.clone())
        .filter(|b| !again.contains_key(b) && !manifests.contains_key(b))
        .collect();
    again.extend(read_manifests(store, bases, key).await?);
    refs.extend(references(&new_ids, |id| {
        again.get(id).or_else(|| manifests.get(id))
    }));

    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    for meta in candidates {
        if refs.contains(&meta.key) {
            report.referenced_objects += 1;
            continue;
        }
        // An object of unknown age might be brand new: keep it.
        let old = meta.last_modified.is_some_and(|t| now - t > grace);
        if !old {
            report.young_unreferenced += 1;
            continue;
        }
        if !dry_run {
            store
                .delete(&meta.key)
                .await
                .map_err(|e| store_err(store, &format!("deleting {}", meta.key), e))?;
        }
        report.deleted_bytes += meta.size;
        report.deleted_objects.push(meta.key);
    }
    if !dry_run {
        // The next prune reads one index per past day instead of its
        // manifests; failing to write one only costs that.
        match crate::index::write_closed_days(store, key, &sums, &forgotten, now).await {
            Ok(days) => report.indexed_days = days,
            Err(e) => {
                tracing::warn!(error = %e, "could not write the day indexes; the next prune reads manifests")
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn snaps(times: &[&str]) -> Vec<(String, DateTime<Utc>)> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("s{i:02}"), at(t)))
            .collect()
    }

    fn kept(policy: Policy, s: &[(String, DateTime<Utc>)]) -> Vec<String> {
        let mut k: Vec<String> = decide(&policy, s)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        k.sort();
        k
    }

    #[test]
    fn no_policy_keeps_everything() {
        let s = snaps(&["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"]);
        assert_eq!(kept(Policy::default(), &s), vec!["s00", "s01"]);
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_snapshot() {
        let s = snaps(&[
            "2026-11-01T00:00:00Z",
            "2026-11-01T09:00:00Z",
            "2026-11-01T09:30:00Z",
            "2026-11-01T10:00:00Z",
        ]);
        let p = Policy {
            keep_within: Some(Duration::from_secs(3600)),
            ..Policy::default()
        };
        // Measured from the newest snapshot, not from now: a replica left
        // alone keeps its last hour forever.
        assert_eq!(kept(p, &s), vec!["s01", "s02", "s03"]);
    }

    /// Issue 19's figure: a sidecar snapshotting every 0.75 s for a day
    /// keeps the last hour, 24 hourly and (within a day) 1 daily under the
    /// default thinning: bounded, whatever the history's length.
    #[test]
    fn default_thinning_bounds_a_day_of_steady_snapshots() {
        let t0 = at("2026-11-01T00:00:00Z");
        let n = 24 * 4800;
        let s: Vec<(String, DateTime<Utc>)> = (0..n)
            .map(|i| {
                (
                    format!("s{i:07}"),
                    t0 + chrono::Duration::milliseconds(750 * i as i64),
                )
            })
            .collect();
        let k = kept(Policy::default_thinning(), &s).len();
        println!("FIGURE default thinning: {n} snapshots over 24 h -> {k} kept");
        assert!((4800..=4800 + 24 + 7 + 1).contains(&k), "{k} kept");
    }

    #[test]
    fn keep_last_keeps_the_n_newest() {
        let s = snaps(&[
            "2026-11-01T00:00:00Z",
            "2026-11-01T00:05:00Z",
            "2026-11-01T00:10:00Z",
            "2026-11-01T00:15:00Z",
        ]);
        let p = Policy {
            keep_last: Some(2),
            ..Policy::default()
        };
        assert_eq!(kept(p, &s), vec!["s02", "s03"]);
    }

    #[test]
    fn hourly_keeps_the_newest_of_each_hour() {
        let s = snaps(&[
            "2026-11-01T10:05:00Z",
            "2026-11-01T10:55:00Z", // newest of 10h
            "2026-11-01T11:10:00Z",
            "2026-11-01T11:20:00Z", // newest of 11h
            "2026-11-01T12:00:00Z", // newest of 12h
        ]);
        let p = Policy {
            keep_hourly: Some(2),
            ..Policy::default()
        };
        assert_eq!(kept(p, &s), vec!["s03", "s04"]);
        let p = Policy {
            keep_hourly: Some(10),
            ..Policy::default()
        };
        assert_eq!(kept(p, &s), vec!["s01", "s03", "s04"]);
    }

    #[test]
    fn rules_combine_like_restic() {
        let s = snaps(&[
            "2026-10-20T09:00:00Z", // week 43
            "2026-10-27T09:00:00Z", // week 44
            "2026-11-02T09:00:00Z", // week 45 (Mon)
            "2026-11-03T09:00:00Z",
            "2026-11-03T18:00:00Z",
            "2026-11-04T08:00:00Z",
            "2026-11-04T08:30:00Z",
        ]);
        let p = Policy {
            keep_last: Some(1),
            keep_daily: Some(2),
            keep_weekly: Some(3),
            ..Policy::default()
        };
        // last: s06; daily: s06 (11-04), s04 (11-03); weekly: s06 (w45),
        // s01 (w44), s00 (w43).
        assert_eq!(kept(p, &s), vec!["s00", "s01", "s04", "s06"]);
        let d = decide(&p, &s);
        assert_eq!(d[0].id, "s06");
        assert_eq!(d[0].reasons, vec!["last", "daily", "weekly"]);
    }

    #[test]
    fn the_newest_is_kept_even_by_a_zero_policy() {
        let s = snaps(&["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"]);
        let p = Policy {
            keep_last: Some(0),
            ..Policy::default()
        };
        let d = decide(&p, &s);
        assert_eq!(kept(p, &s), vec!["s01"]);
        assert_eq!(d[0].reasons, vec!["newest"]);
    }

    /// Scenario 1 of issue 12: snapshot 3 was taken with the clock 2 hours
    /// behind. History order is id order, so it is the newest and
    /// `keep-last 1` keeps it, not snapshot 2.
    #[test]
    fn a_clock_stepped_back_does_not_demote_the_head() {
        let s = snaps(&[
            "2026-11-01T10:00:00Z",
            "2026-11-01T10:05:00Z",
            "2026-11-01T08:06:00Z", // taken at 10:06 with the clock -2h
        ]);
        let p = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        assert_eq!(kept(p, &s), vec!["s02"]);
        let d = decide(&p, &s);
        assert_eq!(d[0].id, "s02", "newest first is id order");
        // Even a zero policy keeps the head, not the latest `created`.
        let zero = Policy {
            keep_last: Some(0),
            ..Policy::default()
        };
        assert_eq!(kept(zero, &s), vec!["s02"]);
    }

    /// Buckets use `created` clamped along id order: a lagging snapshot
    /// joins its predecessor's hour (and, being newer, represents it), and
    /// one taken with the clock ahead pulls the snapshots after it into its
    /// bucket rather than letting them fall back into an earlier one.
    #[test]
    fn buckets_never_go_backwards_along_id_order() {
        let s = snaps(&[
            "2026-11-01T09:30:00Z",
            "2026-11-01T10:10:00Z",
            "2026-11-01T08:15:00Z", // clock -2h: clamped into 10h
        ]);
        let p = Policy {
            keep_hourly: Some(1),
            ..Policy::default()
        };
        assert_eq!(kept(p, &s), vec!["s02"]);
        let p = Policy {
            keep_hourly: Some(2),
            ..Policy::default()
        };
        assert_eq!(kept(p, &s), vec!["s00", "s02"]);

        let s = snaps(&[
            "2026-11-01T09:10:00Z",
            "2026-11-01T11:20:00Z", // clock +2h
            "2026-11-01T09:30:00Z", // back to normal: clamped into 11h
            "2026-11-01T09:40:00Z", // likewise
        ]);
        let p = Policy {
            keep_hourly: Some(2),
            ..Policy::default()
        };
        assert_eq!(kept(p, &s), vec!["s00", "s03"]);
    }

    /// Engine test on the in-memory store (no S3: the order of reads and
    /// deletions is the point). A manifest that fails the one reader, or a
    /// store failure while reading manifests, makes prune delete nothing;
    /// once the replica is sound again prune forgets and collects as usual.
    #[tokio::test]
    async fn prune_deletes_nothing_unless_every_manifest_checks_out() {
        use crate::store::memory::{Fault, MemoryStore, Op};
        let mem = MemoryStore::new("mem");
        // Every object is two hours old: past any grace period.
        mem.set_now(Utc::now() - chrono::Duration::hours(2));
        let store: crate::store::DynStore = std::sync::Arc::new(mem.clone());
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("m.db");
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.execute_batch("PRAGMA journal_mode=wal; CREATE TABLE t(x);")
            .unwrap();
        let mut snap = crate::snapshot::Snapshotter::new(&db_path, store.clone());
        let mut ids = Vec::new();
        for i in 0..3 {
            db.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
            ids.push(snap.snapshot().await.unwrap().id.unwrap());
        }
        let stray = format::chunk_key(&"ab".repeat(32));
        store
            .put(&stray, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        let policy = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let grace = Duration::from_secs(60);

        let planted = format::manifest_key("29991231T000000.000Z-00000001");
        let body = br#"{"format":"mailsafe-manifest","version":99}"#;
        store
            .put(&planted, bytes::Bytes::from_static(body))
            .await
            .unwrap();
        let before = mem.keys();
        let err = prune(store.as_ref(), &policy, grace, false, None)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert!(err.to_string().contains(&planted), "{err}");
        assert_eq!(mem.keys(), before, "nothing deleted");
        store.delete(&planted).await.unwrap();

        // A read failure of one manifest: no verdict, nothing deleted.
        mem.fail(Op::Get, "manifests/", Fault::Fail);
        let before = mem.keys();
        let err = prune(store.as_ref(), &policy, grace, false, None)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 1, "{err}");
        assert_eq!(mem.keys(), before, "nothing deleted");

        let report = prune(store.as_ref(), &policy, grace, false, None)
            .await
            .unwrap();
        assert_eq!(report.snapshots[0].id, ids[2], "the head is newest");
        assert!(report.deleted_objects.contains(&stray), "{report:?}");
        let left: Vec<String> = mem
            .keys()
            .into_iter()
            .filter_map(|k| format::manifest_id(&k).map(str::to_string))
            .collect();
        assert!(
            left.contains(&ids[2]) && !left.contains(&ids[1]),
            "{left:?}"
        );
    }
}
