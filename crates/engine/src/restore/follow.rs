//! `restore --follow`: keeps a read-only copy of the replica's database
//! current, for a read-only catcher or a reporting replica.
//!
//! Each new snapshot is restored in full by the ordinary path (plan, build
//! into a temp file, verify, atomic rename), so a reader that opens the file
//! sees one whole, checked snapshot, never a torn file; a connection opened
//! earlier keeps reading the snapshot it opened (its inode) until it
//! reopens. Polling costs what finding the newest snapshot costs (a listing
//! of the newest history, see [`crate::history`]), not the history length.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;

use super::{Pick, RestoreOptions, RestoreOutcome, RestoreReport, plan, restore};
use crate::Error;
use crate::store::ObjectStore;

/// What `follow` does.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Target, key, checks and parallelism of each restore. `force` says
    /// whether a database already at the target may be replaced by the
    /// first one; the follower's own copies are always replaced.
    pub restore: RestoreOptions,
    /// How often the replica is asked for a newer snapshot.
    pub interval: Duration,
}

/// Follows the replica until `shutdown` resolves; returns how many snapshots
/// were installed. The first restore's errors end it (a wrong key, target
/// or replica should stop a new follower at once); later ones are logged
/// and retried on the next poll, the copy staying at the snapshot before.
/// `installed` is told of every snapshot put in place.
pub async fn follow(
    store: &dyn ObjectStore,
    opts: &FollowOptions,
    mut installed: impl FnMut(&RestoreReport),
    shutdown: impl Future<Output = ()>,
) -> Result<u64, Error> {
    tokio::pin!(shutdown);
    let key = opts.restore.key.clone();
    let mut current: Option<String> = None;
    let mut count = 0;
    let mut waiting_logged = false;
    loop {
        let newest = match plan::pick_id(store, &Pick::Latest, key.as_deref()).await {
            Ok(id) => Some(id),
            Err(Error::NoBackup(why)) => {
                if !waiting_logged {
                    tracing::info!(replica = %store.describe(), "waiting for a first snapshot: {why}");
                    waiting_logged = true;
                }
                None
            }
            Err(e) if current.is_some() => {
                tracing::warn!(replica = %store.describe(), "cannot find the newest snapshot, keeping the copy as it is: {e}");
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(id) = newest.filter(|id| current.as_ref() != Some(id)) {
            let once = RestoreOptions {
                pick: Pick::Id(id.clone()),
                force: opts.restore.force || current.is_some(),
                if_db_not_exists: false,
                if_replica_exists: false,
                dry_run: false,
                ..opts.restore.clone()
            };
            // A signal cuts a restore in flight short: dropping it removes
            // its temp file and leaves the copy at the snapshot before.
            let result = tokio::select! {
                r = restore(store, &once) => r,
                _ = &mut shutdown => return Ok(count),
            };
            match result {
                Ok(RestoreOutcome::Restored(report)) => {
                    let lag = (Utc::now() - report.created).num_milliseconds() as f64 / 1000.0;
                    tracing::info!(snapshot = %id, lag_seconds = lag, target = %once.target.display(), "following: snapshot installed");
                    installed(&report);
                    current = Some(id);
                    count += 1;
                }
                Ok(other) => {
                    return Err(Error::Other(format!(
                        "follow: restore of {id} did not install it ({other:?})"
                    )));
                }
                Err(e) if current.is_some() => {
                    tracing::warn!(snapshot = %id, "cannot install the new snapshot, retrying on the next poll: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(count),
            _ = tokio::time::sleep(opts.interval) => {}
        }
    }
}
