//! `cron`: scheduled rounds of snapshot + retention + garbage collection,
//! either in-process on a 5-field cron schedule (UTC) or once (`--once`, for
//! a Kubernetes CronJob).
//!
//! A round takes the writer lease (see [`crate::watch::lease`]) so that a
//! cron job never interleaves its snapshots with a running watcher's; if the
//! lease is held, the round fails with a message naming the holder rather
//! than waiting, because a CronJob that waits only piles up behind the next.

use std::str::FromStr as _;
use std::time::Duration;

use serde::Serialize;

use crate::Error;
use crate::retention::{self, Policy, PruneReport};
use crate::snapshot::{SnapshotReport, Snapshotter};
use crate::store::DynStore;
use crate::watch::lease::Lease;

/// A parsed schedule: standard 5-field cron, evaluated in UTC.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    text: String,
}

impl Schedule {
    /// Parses `expr` (`minute hour day-of-month month day-of-week`).
    pub fn parse(expr: &str) -> Result<Self, Error> {
        let fields = expr.split_whitespace().count();
        if fields != 5 {
            return Err(Error::Other(format!(
                "invalid --schedule {expr:?}: expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            )));
        }
        let cron = croner::Cron::from_str(expr)
            .map_err(|e| Error::Other(format!("invalid --schedule {expr:?}: {e}")))?;
        Ok(Self {
            cron,
            text: expr.to_string(),
        })
    }

    /// The first time strictly after `after` that the schedule matches.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Result<chrono::DateTime<chrono::Utc>, Error> {
        self.cron
            .find_next_occurrence(&after, false)
            .map_err(|e| Error::Other(format!("schedule {:?} has no next run: {e}", self.text)))
    }
}

/// What one round did.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    /// The snapshot (its `id` is `None` when the db had not changed).
    pub snapshot: SnapshotReport,
    /// Retention and GC.
    pub prune: PruneReport,
}

/// Settings of a round.
#[derive(Debug, Clone)]
pub struct RoundConfig {
    /// Which snapshots to keep.
    pub policy: Policy,
    /// GC grace period.
    pub gc_grace: Duration,
    /// TTL of the writer lease taken for the snapshot.
    pub lease_ttl: Duration,
    /// Encrypts the snapshots of [`scheduled`] when set.
    pub encryption: Option<std::sync::Arc<crate::crypto::Key>>,
}

/// One round: lease, snapshot if changed, release, retention, GC.
pub async fn round(
    snapshotter: &mut Snapshotter,
    store: &DynStore,
    config: &RoundConfig,
) -> Result<RoundReport, Error> {
    let mut lease = Lease::try_acquire(store.clone(), config.lease_ttl)
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    let snap = snapshotter.snapshot().await;
    if let Err(e) = lease.release().await {
        tracing::warn!("could not release the writer lease (it expires by itself): {e}");
    }
    let snapshot = snap?;
    match &snapshot.id {
        Some(id) => tracing::info!(
            id,
            bytes = snapshot.uploaded_bytes,
            objects = snapshot.uploaded_objects,
            "snapshot uploaded"
        ),
        None => tracing::info!("database unchanged since the last snapshot; nothing uploaded"),
    }
    let prune = retention::prune(store.as_ref(), &config.policy, config.gc_grace, false).await?;
    tracing::info!(
        forgotten = prune.forgotten.len(),
        deleted_objects = prune.deleted_objects.len(),
        deleted_bytes = prune.deleted_bytes,
        "retention and garbage collection done"
    );
    Ok(RoundReport { snapshot, prune })
}

/// Runs rounds on `schedule` until `shutdown` completes. A failed round is
/// logged and the next one runs on schedule.
pub async fn scheduled(
    db: &std::path::Path,
    store: DynStore,
    schedule: &Schedule,
    config: &RoundConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let mut snapshotter = Snapshotter::new(db, store.clone()).with_key(config.encryption.clone());
    loop {
        let now = chrono::Utc::now();
        let next = schedule.next_after(now)?;
        tracing::info!(next = %next.to_rfc3339(), "next round");
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        if !db.exists() {
            tracing::warn!(db = %db.display(), "database does not exist (yet); skipping this round");
            continue;
        }
        if let Err(e) = round(&mut snapshotter, &store, config).await {
            tracing::error!("round failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn five_field_schedules_evaluate_in_utc() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-29T10:07:12Z")).unwrap(),
            at("2026-11-29T10:15:00Z")
        );
        // Strictly after: a round at 10:15:00 schedules the next one.
        assert_eq!(
            s.next_after(at("2026-11-29T10:15:00Z")).unwrap(),
            at("2026-11-29T10:30:00Z")
        );
        let daily = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(
            daily.next_after(at("2026-11-29T10:00:00Z")).unwrap(),
            at("2026-11-30T02:30:00Z")
        );
    }

    #[test]
    fn bad_schedules_are_refused_with_the_expression() {
        let e = Schedule::parse("0 * * * * *").unwrap_err().to_string();
        assert!(e.contains("expected 5 fields"), "{e}");
        let e = Schedule::parse("61 * * * *").unwrap_err().to_string();
        assert!(e.contains("61 * * * *"), "{e}");
    }
}
