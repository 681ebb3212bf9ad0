//! The `watch` sidecar: upload a snapshot within about a second of every
//! committed change, and nothing at all while the database is idle.
//!
//! One loop owns everything: change signals come from [`changes`] (inotify,
//! or a local poll), are debounced (a snapshot starts once the db has been
//! quiet for `debounce`, or `max_delay` after the first unsaved change,
//! whichever comes first), and each snapshot goes through the engine's
//! [`Snapshotter`]. The object store is touched only to write a snapshot (and,
//! before a write, the [`lease`] when it needs renewing): no timer in this
//! module talks to the store, which is what makes idle free.
//!
//! Failures are retried with exponential backoff. A snapshot always reads the
//! database as it is *now*, so a later success covers everything committed
//! during an outage: nothing committed is skipped, it is only late. State
//! changes (replica unreachable, reachable again, lease lost) are logged once,
//! not once per retry.
//!
//! On shutdown the loop takes one final snapshot (retrying until the
//! deadline the shutdown future resolved to), releases the lease, and
//! returns; if it could not upload, the error says which changes are missing
//! from the replica. Every step after the signal is bounded by that one
//! deadline, whatever the store does: a snapshot in flight when the signal
//! arrives, the final snapshot and the lease release all share it (a hung
//! request cannot stretch it). The binary adds an outer watchdog on top.

pub mod changes;
pub mod metrics;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::lease::{Ensured, Lease, LeaseError, VolumeLock};
use crate::snapshot::{SnapshotReport, Snapshotter};
use crate::store::DynStore;
use changes::Changes;
use metrics::Metrics;

/// How often a watcher blocked by another writer's lease looks again.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// Settings of the watch loop.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The database to watch (may not exist yet).
    pub db: PathBuf,
    /// Quiet time after the last change before a snapshot starts.
    pub debounce: Duration,
    /// Longest delay between a change and the start of its snapshot.
    pub max_delay: Duration,
    /// Poll period when inotify is unavailable (or forced).
    pub poll_interval: Duration,
    /// Poll even where inotify works.
    pub force_poll: bool,
    /// Lifetime of the writer lease (see [`lease`]).
    pub lease_ttl: Duration,
    /// Longest wait between two retries while the store fails.
    pub max_backoff: Duration,
    /// Encrypts the snapshots when set (see [`crate::crypto`]).
    pub encryption: Option<std::sync::Arc<crate::crypto::Key>>,
    /// Retention and GC applied in process; `None` keeps every snapshot.
    pub retention: Option<Retention>,
    /// Writes even if the store ignores conditional writes (see
    /// [`crate::store::probe_conditional_writes`]); else such a store ends
    /// the loop with an error.
    pub unsafe_no_conditional_writes: bool,
}

/// Retention applied by the watch loop itself, so a sidecar left alone keeps
/// a bounded replica without a separate prune job.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Which snapshots to keep.
    pub policy: crate::retention::Policy,
    /// GC grace: unreferenced objects younger than this are kept.
    pub gc_grace: Duration,
    /// How often to apply it, counted from start-up; only after new
    /// snapshots (an idle watcher makes no request).
    pub interval: Duration,
}

impl Default for Retention {
    /// [`crate::retention::Policy::default_thinning`] every 10 minutes with
    /// the documented 1 h GC grace.
    fn default() -> Self {
        Self {
            policy: crate::retention::Policy::default_thinning(),
            gc_grace: Duration::from_secs(3600),
            interval: Duration::from_secs(600),
        }
    }
}

impl WatchConfig {
    /// The documented defaults for `db`.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        Self {
            db: db.into(),
            debounce: Duration::from_millis(250),
            max_delay: Duration::from_millis(750),
            poll_interval: Duration::from_millis(250),
            force_poll: false,
            lease_ttl: Duration::from_secs(120),
            max_backoff: Duration::from_secs(15),
            encryption: None,
            retention: Some(Retention::default()),
            unsafe_no_conditional_writes: false,
        }
    }
}

/// How the loop ended.
#[derive(Debug, Clone, Default)]
pub struct WatchOutcome {
    /// The newest snapshot this process uploaded, if any.
    pub last_snapshot: Option<String>,
    /// Snapshots uploaded by this process.
    pub snapshots: u64,
}

/// When the next snapshot is due, given the first and the last change not
/// yet uploaded: `debounce` after the last, but never later than
/// `max_delay` after the first.
pub fn due_at(first: Instant, last: Instant, debounce: Duration, max_delay: Duration) -> Instant {
    (last + debounce).min(first + max_delay)
}

/// The retry delay after `failures` consecutive failures: 0.5 s doubling,
/// capped at `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(500);
    base.saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max)
}

/// Changes seen but not yet in the replica.
#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Instant,
    first_wall: chrono::DateTime<chrono::Utc>,
    last: Instant,
}

/// Part of the shutdown budget kept back from the final snapshot for the
/// lease release: a tenth, at most half a second (one small PUT).
pub(crate) fn release_reserve(deadline: Instant) -> Duration {
    (deadline.saturating_duration_since(Instant::now()) / 10).min(Duration::from_millis(500))
}

/// Converts a monotonic instant in the past to wall-clock time.
fn wall(at: Instant) -> chrono::DateTime<chrono::Utc> {
    let ago = Instant::now().saturating_duration_since(at);
    chrono::Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default()
}

/// The watcher's snapshotter: the engine's, with the WAL pinned between
/// snapshots so that steady state never reads the whole db (issue 18; see
/// `snapshot::pin`).
fn new_snapshotter(config: &WatchConfig, store: &DynStore) -> Snapshotter {
    Snapshotter::new(&config.db, store.clone())
        .with_key(config.encryption.clone())
        .with_wal_pin(true)
}

/// The state of the loop that survives between snapshots.
struct Loop {
    config: WatchConfig,
    store: DynStore,
    metrics: Arc<Metrics>,
    snapshotter: Snapshotter,
    lease: Option<Lease>,
    /// Held from the first lease attempt on, for the process's lifetime:
    /// lets a successor on this volume prove we are dead (see [`lease`]).
    volume: Option<VolumeLock>,
    /// Whether the store was found to refuse conditional creates of
    /// existing keys (probed once, before the first lease).
    probed: bool,
    /// An error no retry can fix: the loop ends with it.
    fatal: Option<crate::Error>,
    pending: Option<Pending>,
    /// Consecutive failed attempts; 0 when healthy.
    failures: u32,
    /// When the next attempt may start after a failure.
    retry_at: Option<Instant>,
    /// The lease holder we last reported being blocked by, to log once.
    blocked_by: Option<String>,
    /// Set once shutdown was asked for: when everything must be done.
    deadline: Option<Instant>,
    /// The db files' stamp taken before the last successful snapshot: at
    /// shutdown, a different stamp means a commit we may not have seen.
    synced: Option<changes::Stamp>,
    outcome: WatchOutcome,
    /// The retention run in flight, if any (it runs beside the snapshots:
    /// GC's grace period and re-listing keep it safe, as with `cron`).
    prune: Option<tokio::task::JoinHandle<()>>,
    /// When retention is next due, and `outcome.snapshots` at its last run.
    next_prune: Instant,
    pruned_at_snapshots: u64,
}

/// Runs the watch loop on `config.db`, writing to `store` (wrap it in
/// [`metrics::MeteredStore`] to have requests counted), until `shutdown`
/// completes; then takes the final snapshot and returns. `shutdown`
/// resolves to the deadline by which this function must have returned
/// (signal time plus the shutdown timeout, less what the caller keeps for
/// itself); it returns by then even if the store hangs.
pub async fn run(
    config: WatchConfig,
    store: DynStore,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = Instant>,
) -> Result<WatchOutcome, crate::Error> {
    let mut changes = Changes::start(&config.db, config.poll_interval, config.force_poll);
    tracing::info!(
        db = %config.db.display(),
        replica = %store.describe(),
        detection = changes.mode,
        "watching"
    );
    tokio::pin!(shutdown);
    let mut lp = Loop {
        snapshotter: new_snapshotter(&config, &store),
        config,
        store,
        metrics,
        lease: None,
        volume: None,
        probed: false,
        fatal: None,
        pending: None,
        failures: 0,
        retry_at: None,
        blocked_by: None,
        deadline: None,
        synced: None,
        outcome: WatchOutcome::default(),
        prune: None,
        next_prune: Instant::now(),
        pruned_at_snapshots: 0,
    };
    if let Some(r) = &lp.config.retention {
        lp.next_prune = Instant::now() + r.interval;
    }

    // The catcher (or any app) may create the db after we start.
    if !lp.config.db.exists() {
        tracing::info!(db = %lp.config.db.display(), "database does not exist yet; waiting for it");
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("stopped before the database appeared; nothing to upload");
                    return Ok(lp.outcome);
                }
                _ = changes.next() => {}
                // Covers a directory that inotify could not watch because it
                // did not exist yet (then the poller runs anyway).
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if lp.config.db.exists() {
                break;
            }
        }
    }
    // Whatever happened while we were not watching must be uploaded.
    lp.mark(Instant::now());

    loop {
        let due = lp.pending.map(|p| {
            let at = due_at(p.first, p.last, lp.config.debounce, lp.config.max_delay);
            lp.retry_at.map_or(at, |r| r.max(at))
        });
        tokio::select! {
            biased;
            deadline = &mut shutdown => {
                lp.deadline = Some(deadline);
                break;
            }
            Some(seen) = changes.next() => lp.mark(seen),
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                changes.drain();
                lp.attempt(None, &mut shutdown).await;
                if let Some(e) = lp.fatal.take() {
                    return Err(e);
                }
                if lp.deadline.is_some() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(lp.next_prune), if lp.config.retention.is_some() => {
                lp.start_prune();
            }
        }
    }
    if let Some(t) = lp.prune.take() {
        // Like a killed `prune`: what it deleted is consistent, the rest
        // waits for the next run.
        t.abort();
    }
    lp.finish(&mut changes).await
}

impl Loop {
    /// Starts a retention run in the background if one is due: new
    /// snapshots since the last run and none still running.
    fn start_prune(&mut self) {
        let Some(r) = self.config.retention.clone() else {
            return;
        };
        self.next_prune = Instant::now() + r.interval;
        if self.prune.as_ref().is_some_and(|t| !t.is_finished())
            || self.outcome.snapshots == self.pruned_at_snapshots
        {
            return;
        }
        self.pruned_at_snapshots = self.outcome.snapshots;
        let store = self.store.clone();
        let key = self.config.encryption.clone();
        self.prune = Some(tokio::spawn(async move {
            match crate::retention::prune(
                store.as_ref(),
                &r.policy,
                r.gc_grace,
                false,
                key.as_deref(),
            )
            .await
            {
                Ok(rep) => tracing::info!(
                    forgotten = rep.forgotten.len(),
                    deleted_objects = rep.deleted_objects.len(),
                    deleted_bytes = rep.deleted_bytes,
                    "retention and garbage collection done"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "retention failed; retrying at the next interval")
                }
            }
        }));
    }

    /// Records a change seen at `seen`.
    fn mark(&mut self, seen: Instant) {
        let wall_seen = wall(seen);
        self.metrics.record_change(wall_seen);
        match &mut self.pending {
            Some(p) => p.last = p.last.max(seen),
            None => {
                self.pending = Some(Pending {
                    first: seen,
                    first_wall: wall_seen,
                    last: seen,
                })
            }
        }
    }

    /// One snapshot attempt. With a `deadline` (shutdown), gives up when it
    /// passes. If `shutdown` fires meanwhile, records its deadline in
    /// `self.deadline` and lets the attempt go on until shortly before it
    /// (what it uploads counts towards the final snapshot).
    async fn attempt<F: Future<Output = Instant>>(
        &mut self,
        deadline: Option<Instant>,
        shutdown: &mut std::pin::Pin<&mut F>,
    ) {
        let started = Instant::now();
        let started_wall = chrono::Utc::now();
        // Before the snapshot reads: a commit after this changes the stamp.
        let stamp = changes::Stamp::of(&self.config.db);
        let pending = self.pending.take();
        // `fut` borrows self: the deadline is recorded after it is done.
        let mut shut_at = None;
        let result = {
            let fut = self.lease_then_snapshot();
            tokio::pin!(fut);
            match deadline {
                Some(d) => tokio::time::timeout_at(d, &mut fut)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::Store(
                            "timed out before the snapshot finished".into(),
                        ))
                    }),
                None => {
                    tokio::select! {
                        r = &mut fut => r,
                        end = shutdown.as_mut() => {
                            shut_at = Some(end);
                            let d = end - release_reserve(end);
                            tokio::time::timeout_at(d, &mut fut).await.unwrap_or_else(|_| {
                                Err(Failure::Store("timed out before the snapshot finished".into()))
                            })
                        }
                    }
                }
            }
        };
        if shut_at.is_some() {
            self.deadline = shut_at;
        }
        match result {
            Ok(report) => {
                self.metrics
                    .record_snapshot(started_wall, &report, started.elapsed());
                if let Some(id) = &report.id {
                    self.outcome.snapshots += 1;
                    self.outcome.last_snapshot = Some(id.clone());
                    tracing::debug!(
                        id,
                        bytes = report.uploaded_bytes,
                        objects = report.uploaded_objects,
                        full_scan = report.full_scan,
                        took_ms = started.elapsed().as_millis() as u64,
                        "snapshot uploaded"
                    );
                }
                if self.failures > 0 {
                    tracing::info!(
                        replica = %self.store.describe(),
                        failed_attempts = self.failures,
                        "replica reachable again; caught up"
                    );
                }
                self.failures = 0;
                self.retry_at = None;
                self.blocked_by = None;
                self.synced = Some(stamp);
            }
            Err(failure) => {
                // Put the changes back: they are still not in the replica.
                if let Some(p) = pending {
                    self.pending = Some(match self.pending {
                        Some(q) => Pending {
                            first: p.first,
                            first_wall: p.first_wall,
                            last: q.last.max(p.last),
                        },
                        None => p,
                    });
                    self.metrics.record_change(p.first_wall);
                }
                self.failures += 1;
                // `/healthz` says what failed; keys, bucket and endpoint
                // only go to the log.
                let public = failure.public();
                // Waiting for another writer's lease: look again soon, so a
                // rolling update hands over within seconds.
                let delay = match failure {
                    Failure::Busy(..) => BUSY_RETRY,
                    Failure::Store(_) => backoff(self.failures, self.config.max_backoff),
                    Failure::Fenced(msg) => {
                        let since = self
                            .pending
                            .map(|p| {
                                p.first_wall
                                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                            })
                            .unwrap_or_else(|| "-".into());
                        let e = crate::Error::Other(format!(
                            "{msg}; the changes committed to {} since {since} were NOT uploaded by this process",
                            self.config.db.display()
                        ));
                        tracing::error!("{e}");
                        self.metrics.set_lease_held(false);
                        self.lease = None;
                        self.metrics.record_error(public);
                        self.fatal = Some(e);
                        return;
                    }
                    Failure::Fatal(e) => {
                        tracing::error!("{e}");
                        self.metrics.record_error(public);
                        self.fatal = Some(e);
                        return;
                    }
                };
                self.retry_at = Some(Instant::now() + delay);
                self.metrics.record_error(public);
                match &failure {
                    Failure::Busy(holder, free_at) => {
                        // Public: when, not who (the holder is in the log).
                        self.metrics.set_lease_wait(Some(format!(
                            "another writer holds it; if that writer is gone, it can be taken at {}",
                            free_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        )));
                        if self.blocked_by.as_deref() != Some(holder.as_str()) {
                            tracing::warn!("{failure}; not writing, retrying until it is free");
                            self.blocked_by = Some(holder.clone());
                        }
                    }
                    Failure::Fatal(_) | Failure::Fenced(_) => {}
                    Failure::Store(_) => {
                        if self.failures == 1 {
                            tracing::warn!(
                                replica = %self.store.describe(),
                                "snapshot failed, retrying with backoff (up to {:?}): {failure}",
                                self.config.max_backoff
                            );
                        } else {
                            tracing::info!(
                                failures = self.failures,
                                "snapshot failed again: {failure}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Makes sure we hold the lease, then snapshots.
    async fn lease_then_snapshot(&mut self) -> Result<SnapshotReport, Failure> {
        match &mut self.lease {
            None => {
                if !self.probed {
                    crate::store::probe_conditional_writes(
                        self.store.as_ref(),
                        self.config.unsafe_no_conditional_writes,
                    )
                    .await
                    .map_err(|e| match e {
                        e @ crate::store::StoreError::NoConditionalWrites { .. } => {
                            Failure::Fatal(e.into())
                        }
                        e => Failure::Store(e.to_string()),
                    })?;
                    self.probed = true;
                }
                VolumeLock::try_hold(&mut self.volume, &self.config.db);
                let lease = Lease::try_acquire(
                    self.store.clone(),
                    self.config.lease_ttl,
                    self.volume.as_ref(),
                )
                .await?;
                tracing::info!(epoch = lease.epoch(), "took the replica's writer lease");
                self.metrics.set_lease_held(true);
                self.lease = Some(lease);
                // Another process may have written since this snapshotter
                // was created: start from what the replica says.
                self.snapshotter = new_snapshotter(&self.config, &self.store);
            }
            Some(lease) => match lease.ensure().await {
                Ok(Ensured::Continued)
                | Ok(Ensured::Retaken {
                    others_wrote: false,
                }) => {}
                Ok(Ensured::Retaken { others_wrote: true }) => {
                    tracing::info!(
                        epoch = lease.epoch(),
                        "retook the writer lease after another process held it; continuing from the replica's newest snapshot"
                    );
                    self.snapshotter = new_snapshotter(&self.config, &self.store);
                }
                Err(e) => {
                    self.metrics.set_lease_held(false);
                    return Err(e.into());
                }
            },
        }
        if let Some(lease) = &mut self.lease {
            // Before this epoch's first manifest: readers then know that an
            // older writer's late manifest is fenced (see
            // `lease::written_epoch_bound`).
            if let Err(e) = lease.mark_writing().await {
                self.metrics.set_lease_held(false);
                return Err(e.into());
            }
        }
        self.metrics.set_lease_held(true);
        // Every manifest names the epoch it was written under.
        let writer = self.lease.as_ref().map(Lease::writer);
        self.snapshotter.set_writer(writer);
        self.snapshotter
            .snapshot()
            .await
            .map_err(|e| Failure::Store(e.to_string()))
    }

    /// The final snapshot and lease release, after shutdown was asked for.
    async fn finish(mut self, changes: &mut Changes) -> Result<WatchOutcome, crate::Error> {
        let end = self.deadline.unwrap_or_else(Instant::now);
        // The lease release gets what the final snapshot leaves, at least
        // this reserve.
        let deadline = end - release_reserve(end);
        // A commit made just before the signal may still be on its way
        // through inotify.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(Some(seen)) = tokio::time::timeout(Duration::ZERO, changes.next()).await {
            self.mark(seen);
        }
        // The signal may still be slower than that (a loaded machine, or a
        // poll interval): the files themselves say whether anything was
        // written since the last snapshot started.
        if self.pending.is_none()
            && self.synced.as_ref() != Some(&changes::Stamp::of(&self.config.db))
        {
            tracing::debug!("db files changed since the last snapshot; taking a final one");
            self.mark(Instant::now());
        }
        let never_succeeded = self.metrics.last_success().is_none();
        if self.pending.is_some() || never_succeeded || self.failures > 0 {
            if self.pending.is_none() {
                self.mark(Instant::now());
            }
            tracing::info!("shutting down: taking the final snapshot");
            let never = std::future::pending::<Instant>();
            tokio::pin!(never);
            // An attempt in flight at the signal may have used it all up.
            while Instant::now() < deadline {
                changes.drain();
                self.attempt(Some(deadline), &mut never).await;
                if self.failures == 0 {
                    break;
                }
                let next = self.retry_at.unwrap_or_else(Instant::now);
                if next >= deadline {
                    break;
                }
                tokio::time::sleep_until(next).await;
            }
        }
        if let Some(lease) = &mut self.lease {
            // A hung store must not hold the shutdown: a lease not released
            // expires by itself after its TTL.
            let release_by = end.max(Instant::now() + Duration::from_millis(50));
            match tokio::time::timeout_at(release_by, lease.release()).await {
                Ok(Ok(())) => tracing::info!(epoch = lease.epoch(), "released the writer lease"),
                Ok(Err(e)) => {
                    tracing::warn!("could not release the writer lease (it expires by itself): {e}")
                }
                Err(_) => tracing::warn!(
                    "could not release the writer lease before the shutdown deadline (it expires by itself)"
                ),
            }
            self.metrics.set_lease_held(false);
        }
        if let Some(p) = self.pending {
            let last = self
                .metrics
                .last_snapshot_id()
                .map(|id| format!("the newest snapshot in the replica from this process is {id}"))
                .unwrap_or_else(|| "this process uploaded no snapshot".into());
            let since = p
                .first_wall
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            return Err(crate::Error::Other(format!(
                "shutdown: could not upload the final snapshot of {} to {} before the shutdown \
                 deadline: every change committed since {since} is NOT in the replica ({last}); \
                 last error: {}",
                self.config.db.display(),
                self.store.describe(),
                self.metrics
                    .health(Duration::ZERO)
                    .err()
                    .unwrap_or_default()
                    .trim_end()
            )));
        }
        tracing::info!(
            snapshots = self.outcome.snapshots,
            last = self.outcome.last_snapshot.as_deref().unwrap_or("-"),
            "everything committed is in the replica; exiting"
        );
        Ok(self.outcome)
    }
}

/// Why an attempt failed.
#[derive(Debug)]
enum Failure {
    /// Another process holds the lease (its description, and when it can
    /// be taken if not renewed).
    Busy(String, chrono::DateTime<chrono::Utc>),
    /// The store or the snapshot failed.
    Store(String),
    /// Retrying cannot help (a store that ignores conditional writes).
    Fatal(crate::Error),
    /// Another process took our lease over: stop (its description).
    Fenced(String),
}

impl Failure {
    /// What failed, in words anyone who can reach `/healthz` may read: the
    /// detail (object keys, bucket, endpoint, the lease holder) is logged.
    fn public(&self) -> &'static str {
        match self {
            Failure::Busy(..) => "another writer holds the replica's lease",
            Failure::Store(_) => "uploading a snapshot to the replica failed (details in the log)",
            Failure::Fatal(_) => "the replica's store cannot be used safely (details in the log)",
            Failure::Fenced(_) => "another writer took the replica's lease over; this one stopped",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Busy(s, _) | Failure::Store(s) | Failure::Fenced(s) => f.write_str(s),
            Failure::Fatal(e) => write!(f, "{e}"),
        }
    }
}

impl From<LeaseError> for Failure {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Busy { free_at, .. } => Failure::Busy(e.to_string(), free_at),
            LeaseError::Fenced { .. } => Failure::Fenced(e.to_string()),
            LeaseError::Store { .. } => Failure::Store(e.to_string()),
        }
    }
}

/// Serves `/metrics` and `/healthz` of every loop in `metrics` on `listen`
/// in the background. Returns the bound address (useful with port 0).
pub async fn serve_http(
    listen: &str,
    metrics: metrics::Registry,
    health_max_lag: Duration,
) -> Result<std::net::SocketAddr, crate::Error> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| crate::Error::Other(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| crate::Error::Other(format!("cannot listen on {listen}: {e}")))?;
    let app = metrics::router(metrics, health_max_lag);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server on {addr} stopped: {e}");
        }
    });
    tracing::info!(%addr, "serving /metrics and /healthz");
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_is_debounced_but_bounded_by_max_delay() {
        let t0 = Instant::now();
        let d = Duration::from_millis(250);
        let m = Duration::from_secs(1);
        // A single change: debounce after it.
        assert_eq!(due_at(t0, t0, d, m), t0 + d);
        // Changes keep coming: never later than max_delay after the first.
        assert_eq!(due_at(t0, t0 + Duration::from_millis(900), d, m), t0 + m);
        assert_eq!(
            due_at(t0, t0 + Duration::from_millis(500), d, m),
            t0 + Duration::from_millis(750)
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let max = Duration::from_secs(15);
        assert_eq!(backoff(1, max), Duration::from_millis(500));
        assert_eq!(backoff(2, max), Duration::from_secs(1));
        assert_eq!(backoff(4, max), Duration::from_secs(4));
        assert_eq!(backoff(10, max), max);
        assert_eq!(backoff(100, max), max);
    }
}
