//! `cron`: scheduled rounds of snapshot + retention + garbage collection,
//! either in-process on a 5-field cron schedule (UTC) or once (`--once`, for
//! a Kubernetes CronJob).
//!
//! A round takes the writer lease (see [`crate::lease`]) so that a
//! cron job never interleaves its snapshots with a running watcher's; if the
//! lease is held, the round fails with a message naming the holder rather
//! than waiting, because a CronJob that waits only piles up behind the next.
//!
//! Shutdown works as in [`crate::watch`]: the shutdown future resolves to
//! one deadline (signal time plus the shutdown timeout, less the binary's
//! margin), and from then on every step of a round in flight is bounded by
//! it, whatever the store does. After the signal no new step starts: a
//! snapshot in flight may finish (it is the data), retention and GC are
//! left to the next round. What a round did not get done is said by
//! [`Progress::unfinished`], which the binary's outer watchdog also reads.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;

use crate::Error;
use crate::lease::{Lease, VolumeLock};
use crate::retention::{self, Policy, PruneReport};
use crate::snapshot::{SnapshotReport, Snapshotter};
use crate::store::DynStore;
use crate::watch::metrics::Metrics;

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
    /// Retention and GC; `None` when shutdown was asked for before they
    /// started (the next round applies them).
    pub prune: Option<PruneReport>,
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
    /// Encrypts the snapshots of a round when set.
    pub encryption: Option<Arc<crate::crypto::Key>>,
    /// Writes even if the store ignores conditional writes (see
    /// [`crate::store::probe_conditional_writes`]).
    pub unsafe_no_conditional_writes: bool,
    /// Where rounds are reported: the same [`Metrics`] `watch` fills (its
    /// snapshot, error and lease series; the store's traffic is counted when
    /// the store is a [`crate::watch::metrics::MeteredStore`] of them), so
    /// `/metrics`, alerts and the heartbeat work alike in every mode.
    pub metrics: Arc<Metrics>,
}

/// The step a round is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No round running.
    Idle,
    /// Taking the writer lease.
    Lease,
    /// Reading the db and uploading the snapshot.
    Snapshot,
    /// Releasing the writer lease after the snapshot.
    Release,
    /// Applying retention and collecting garbage.
    Prune,
}

#[derive(Debug)]
struct ProgressState {
    stage: Stage,
    /// The snapshot this round uploaded, once it did (`Some(None)`: the db
    /// was unchanged).
    uploaded: Option<Option<String>>,
}

/// How far the current round got, shared with the binary's shutdown
/// watchdog so that the process's last word says what was not done.
#[derive(Debug)]
pub struct Progress {
    db: std::path::PathBuf,
    replica: String,
    state: Mutex<ProgressState>,
}

impl Progress {
    /// Progress of the rounds backing up `db` to `store`.
    pub fn new(db: &std::path::Path, store: &DynStore) -> Arc<Self> {
        Arc::new(Self {
            db: db.to_path_buf(),
            replica: store.describe(),
            state: Mutex::new(ProgressState {
                stage: Stage::Idle,
                uploaded: None,
            }),
        })
    }

    fn set(&self, stage: Stage) {
        if let Ok(mut s) = self.state.lock() {
            if stage == Stage::Lease {
                s.uploaded = None;
            }
            s.stage = stage;
        }
    }

    fn uploaded(&self, id: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            s.uploaded = Some(id);
        }
    }

    /// What the round in progress has not done yet, in words, naming the db
    /// and the replica; `None` between rounds (nothing is left undone then:
    /// changes since the last round wait for the next one, as scheduled).
    pub fn unfinished(&self) -> Option<String> {
        let s = self.state.lock().ok()?;
        let (db, replica) = (self.db.display(), &self.replica);
        let uploaded = match (s.stage, &s.uploaded) {
            (Stage::Idle, _) => return None,
            (Stage::Lease | Stage::Snapshot, _) | (_, None) => {
                return Some(format!(
                    "the snapshot of {db} was NOT uploaded to {replica}: every change committed \
                     since the previous snapshot is missing from the replica; retention and \
                     garbage collection were not applied"
                ));
            }
            (_, Some(Some(id))) => format!("snapshot {id} of {db} is in {replica}"),
            (_, Some(None)) => format!("{db} was unchanged, so nothing needed uploading"),
        };
        Some(if s.stage == Stage::Release {
            format!(
                "{uploaded}; the writer lease was not released (it expires by itself); \
                 retention and garbage collection were not applied"
            )
        } else {
            format!(
                "{uploaded}; retention and garbage collection did not finish (the next \
                 round completes them)"
            )
        })
    }
}

/// The shutdown future of a run, and the deadline it resolved to once it
/// did: every step of a round after the signal is bounded by it.
struct Stop<F> {
    shutdown: Pin<Box<F>>,
    deadline: Option<Instant>,
}

impl<F: Future<Output = Instant>> Stop<F> {
    fn new(shutdown: F) -> Self {
        Self {
            shutdown: Box::pin(shutdown),
            deadline: None,
        }
    }

    /// Resolves to the deadline once shutdown was asked for (at once if it
    /// already was). Cancel-safe: the shutdown future is only polled.
    async fn asked(&mut self) -> Instant {
        if let Some(d) = self.deadline {
            return d;
        }
        let d = self.shutdown.as_mut().await;
        self.deadline = Some(d);
        d
    }

    /// Runs `fut` to its end, or, once shutdown was asked for, until `end`
    /// of the deadline; `None` when it was cut off.
    async fn bound<T>(
        &mut self,
        fut: impl Future<Output = T>,
        end: impl FnOnce(Instant) -> Instant,
    ) -> Option<T> {
        tokio::pin!(fut);
        if self.deadline.is_none() {
            tokio::select! {
                biased;
                out = &mut fut => return Some(out),
                _ = self.asked() => {}
            }
        }
        let by = end(self.deadline.unwrap_or_else(Instant::now));
        tokio::time::timeout_at(by, fut).await.ok()
    }
}

/// Why a round did not complete.
enum RoundError {
    /// The round itself failed (logged; the next round runs on schedule).
    Failed(Error),
    /// The shutdown deadline cut it off; [`Progress::unfinished`] says
    /// what was not done.
    Cut,
}

impl From<Error> for RoundError {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

/// What a run keeps between rounds.
struct Writer {
    snapshotter: Snapshotter,
    /// The run's [`VolumeLock`]: taken when free, kept across rounds, so
    /// that a killed run's lease is taken over at once by the next run on
    /// its volume.
    volume: Option<VolumeLock>,
    /// Whether the store was found to refuse conditional creates of
    /// existing keys (probed before the run's first lease).
    probed: bool,
}

impl Writer {
    fn new(db: &std::path::Path, store: &DynStore, config: &RoundConfig) -> Self {
        Self {
            snapshotter: Snapshotter::new(db, store.clone()).with_key(config.encryption.clone()),
            volume: None,
            probed: false,
        }
    }
}

/// One round: lease, snapshot if changed, release, retention, GC, each
/// step bounded by the shutdown deadline once there is one.
async fn round<F: Future<Output = Instant>>(
    writer: &mut Writer,
    store: &DynStore,
    config: &RoundConfig,
    progress: &Progress,
    stop: &mut Stop<F>,
) -> Result<RoundReport, RoundError> {
    progress.set(Stage::Lease);
    // The lease release keeps a reserve of the deadline, as in `watch`.
    let before_release = |d: Instant| d - crate::watch::release_reserve(d);
    let Writer {
        snapshotter,
        volume,
        probed,
    } = writer;
    if !*probed {
        let probe = crate::store::probe_conditional_writes(
            store.as_ref(),
            config.unsafe_no_conditional_writes,
        );
        stop.bound(probe, before_release)
            .await
            .ok_or(RoundError::Cut)?
            .map_err(Error::from)?;
        *probed = true;
    }
    VolumeLock::try_hold(volume, snapshotter.db());
    let mut lease = stop
        .bound(
            Lease::try_acquire(store.clone(), config.lease_ttl, volume.as_ref()),
            before_release,
        )
        .await
        .ok_or(RoundError::Cut)?
        .map_err(|e| Error::Other(e.to_string()))?;
    config.metrics.set_lease_held(true);
    // Before the epoch's first manifest (see `lease::written_epoch_bound`).
    stop.bound(lease.mark_writing(), before_release)
        .await
        .ok_or(RoundError::Cut)?
        .map_err(|e| Error::Other(e.to_string()))?;
    progress.set(Stage::Snapshot);
    snapshotter.set_writer(Some(lease.writer()));
    let (started_wall, started) = (chrono::Utc::now(), Instant::now());
    let snap = stop.bound(snapshotter.snapshot(), before_release).await;
    progress.set(Stage::Release);
    if let Some(Ok(s)) = &snap {
        progress.uploaded(s.id.clone());
    }
    // A hung store must not hold the shutdown: a lease not released expires
    // by itself after its TTL.
    let released = stop
        .bound(lease.release(), |d| {
            d.max(Instant::now() + Duration::from_millis(50))
        })
        .await;
    match released {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::warn!("could not release the writer lease (it expires by itself): {e}")
        }
        None => tracing::warn!(
            "could not release the writer lease before the shutdown deadline (it expires by itself)"
        ),
    }
    config.metrics.set_lease_held(false);
    let snapshot = match snap {
        None => {
            progress.set(Stage::Snapshot);
            return Err(RoundError::Cut);
        }
        Some(s) => s?,
    };
    config
        .metrics
        .record_snapshot(started_wall, &snapshot, started.elapsed());
    match &snapshot.id {
        Some(id) => tracing::info!(
            id,
            bytes = snapshot.uploaded_bytes,
            objects = snapshot.uploaded_objects,
            "snapshot uploaded"
        ),
        None => tracing::info!("database unchanged since the last snapshot; nothing uploaded"),
    }
    if stop.deadline.is_some() {
        tracing::warn!(
            "shutdown: retention and garbage collection not applied this round (the next round applies them)"
        );
        progress.set(Stage::Idle);
        return Ok(RoundReport {
            snapshot,
            prune: None,
        });
    }
    progress.set(Stage::Prune);
    let prune = stop
        .bound(
            retention::prune(
                store.as_ref(),
                &config.policy,
                config.gc_grace,
                false,
                config.encryption.as_deref(),
            ),
            |d| d,
        )
        .await
        .ok_or(RoundError::Cut)??;
    tracing::info!(
        forgotten = prune.forgotten.len(),
        deleted_objects = prune.deleted_objects.len(),
        deleted_bytes = prune.deleted_bytes,
        "retention and garbage collection done"
    );
    progress.set(Stage::Idle);
    Ok(RoundReport {
        snapshot,
        prune: Some(prune),
    })
}

/// What `/healthz` says of a failed round: keys, bucket and endpoint only
/// go to the log (as in `watch`).
const ROUND_FAILED: &str = "the cron round failed (details in the log)";

/// The error a round cut off by the shutdown deadline ends the run with.
fn cut_off(progress: &Progress) -> Error {
    Error::Other(format!(
        "shutdown: the cron round did not finish before the shutdown deadline: {}",
        progress
            .unfinished()
            .unwrap_or_else(|| "nothing was left undone".into())
    ))
}

/// One round now (`cron --once`), cut off at the deadline `shutdown`
/// resolves to if it comes first; then the error says what was not done.
pub async fn once(
    db: &std::path::Path,
    store: DynStore,
    config: &RoundConfig,
    progress: &Progress,
    shutdown: impl Future<Output = Instant>,
) -> Result<RoundReport, Error> {
    let mut stop = Stop::new(shutdown);
    let mut writer = Writer::new(db, &store, config);
    match round(&mut writer, &store, config, progress, &mut stop).await {
        Ok(r) => Ok(r),
        Err(RoundError::Failed(e)) => {
            config.metrics.record_error(ROUND_FAILED);
            Err(e)
        }
        Err(RoundError::Cut) => Err(cut_off(progress)),
    }
}

/// Runs rounds on `schedule` until `shutdown` resolves (to the deadline of
/// the shutdown). A failed round is logged and the next one runs on
/// schedule. A round in flight at the signal finishes its snapshot by the
/// deadline and skips retention; if the deadline cuts it off, the error
/// says what was not done.
pub async fn scheduled(
    db: &std::path::Path,
    store: DynStore,
    schedule: &Schedule,
    config: &RoundConfig,
    progress: &Progress,
    shutdown: impl Future<Output = Instant>,
) -> Result<(), Error> {
    let mut stop = Stop::new(shutdown);
    let mut writer = Writer::new(db, &store, config);
    loop {
        let now = chrono::Utc::now();
        let next = schedule.next_after(now)?;
        tracing::info!(next = %next.to_rfc3339(), "next round");
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = stop.asked() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        if !db.exists() {
            tracing::warn!(db = %db.display(), "database does not exist (yet); skipping this round");
            continue;
        }
        match round(&mut writer, &store, config, progress, &mut stop).await {
            Ok(_) => {}
            // No round can ever write to such a store: stop.
            Err(RoundError::Failed(
                e @ Error::Store(crate::store::StoreError::NoConditionalWrites { .. }),
            )) => {
                config.metrics.record_error(ROUND_FAILED);
                return Err(e);
            }
            Err(RoundError::Failed(e)) => {
                config.metrics.record_error(ROUND_FAILED);
                tracing::error!("round failed: {e}")
            }
            Err(RoundError::Cut) => return Err(cut_off(progress)),
        }
        if stop.deadline.is_some() {
            return Ok(());
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
