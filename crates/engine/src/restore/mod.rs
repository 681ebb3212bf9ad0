//! Restore, verify and list snapshots: the read side of the replica format.
//!
//! A restore is planned, then executed, then installed, each step in its own
//! module:
//! 1. [`plan`]: pick the snapshot (newest, by id, or the newest at or before
//!    a time), read and check its manifest and its base's, and list the
//!    objects with their sizes and hashes;
//! 2. [`build`]: download them in parallel into a temp file, checking every
//!    object's stored sha256, every chunk's content sha256 and the whole
//!    image's digest, then run SQLite's own check;
//! 3. [`install`]: fsync, drop stale `-wal`/`-shm`, rename atomically, fsync
//!    the directory.
//!
//! `verify` runs steps 1 and 2 into a scratch file and installs nothing. On
//! any failure the target is untouched and the temp file is removed.
//! [`follow`] repeats a restore for each new snapshot.

pub mod build;
pub mod follow;
pub mod install;
pub mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

pub use build::{BuildOptions, BuildStats, IntegrityCheck};
pub use install::TargetState;
pub use plan::{Pick, RestorePlan};

use crate::Error;
use crate::crypto::Key;
use crate::progress::Progress;
use crate::store::ObjectStore;

/// Downloads in flight by default. With one object per ~256 KiB chunk
/// (format v1) a restore was bound by GET latency: on the 200 MiB bench db
/// (~830 chunks, SeaweedFS on loopback, 2 busy cores) 8 in flight took 4.5 s
/// to build the image, 32 took 2.4-2.6 s, 64 was no faster. With packs
/// (v2) it is one GET per pack (~140 at 200 MiB, `build::RUN_BYTES`); memory stays at the
/// download budget (16 MiB, `build`) plus the delta packs fetched ahead.
pub const DEFAULT_PARALLELISM: usize = 32;

/// What `restore` should do.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Which snapshot.
    pub pick: Pick,
    /// Where the database goes.
    pub target: PathBuf,
    /// Exit successfully without doing anything if the target exists.
    pub if_db_not_exists: bool,
    /// Exit successfully without doing anything if the replica is empty.
    pub if_replica_exists: bool,
    /// Replace an existing database.
    pub force: bool,
    /// SQLite check on the rebuilt image before it is installed.
    pub integrity_check: IntegrityCheck,
    /// Concurrent downloads.
    pub parallelism: usize,
    /// Told the bytes to download and each object as it arrives.
    pub progress: Arc<dyn Progress>,
    /// Key of an encrypted replica.
    pub key: Option<Arc<Key>>,
    /// Pick the snapshot and plan the download, check the target, and stop:
    /// nothing is downloaded or written ([`RestoreOutcome::Planned`]).
    pub dry_run: bool,
}

impl RestoreOptions {
    /// Defaults for restoring the newest snapshot to `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            pick: Pick::Latest,
            target: target.into(),
            if_db_not_exists: false,
            if_replica_exists: false,
            force: false,
            integrity_check: IntegrityCheck::Quick,
            parallelism: DEFAULT_PARALLELISM,
            progress: crate::progress::none(),
            key: None,
            dry_run: false,
        }
    }
}

/// A restored or verified snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    /// The snapshot's id.
    pub snapshot: String,
    /// When the snapshot was taken.
    pub created: DateTime<Utc>,
    /// Where it was installed (`None` for `verify`).
    pub target: Option<PathBuf>,
    /// What was downloaded and rebuilt.
    #[serde(flatten)]
    pub stats: BuildStats,
    /// The SQLite check that passed.
    pub integrity_check: IntegrityCheck,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Set when the snapshot, asked for by id, was written by a fenced
    /// writer: `host#epoch` of the writer that had taken the lease over
    /// (see [`crate::index::fenced_by`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<String>,
}

/// What a restore would do: `restore --dry-run`'s answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanReport {
    /// The snapshot that would be restored.
    pub snapshot: String,
    /// When it was taken.
    pub created: DateTime<Utc>,
    /// Its base snapshot (itself for a base).
    pub base: String,
    /// Delta packs applied on top of the base.
    pub deltas: usize,
    /// Where it would be installed.
    pub target: PathBuf,
    /// Whether a database there would be replaced (`--force`).
    pub replaces: bool,
    /// Distinct objects to download.
    pub objects: usize,
    /// Stored bytes to download.
    pub download_bytes: u64,
    /// Size of the restored database, in bytes.
    pub db_size: u64,
    /// As [`RestoreReport::fenced_by`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<String>,
}

/// How a restore ended.
#[derive(Debug, Clone)]
pub enum RestoreOutcome {
    /// The snapshot was verified and installed.
    Restored(RestoreReport),
    /// `dry_run`: what would have been restored; nothing was written.
    Planned(PlanReport),
    /// `--if-db-not-exists` and the target exists: nothing done.
    SkippedDbExists,
    /// `--if-replica-exists` and the replica has no snapshot: nothing done.
    SkippedNoReplica,
}

/// Restores a snapshot to `opts.target`, verified, atomically.
pub async fn restore(
    store: &dyn ObjectStore,
    opts: &RestoreOptions,
) -> Result<RestoreOutcome, Error> {
    let started = Instant::now();
    let target = opts.target.as_path();
    let state = install::inspect(target)?;
    match state {
        TargetState::Database | TargetState::NotSqlite if opts.if_db_not_exists => {
            tracing::info!(target = %target.display(), "database exists, skipping restore (--if-db-not-exists)");
            return Ok(RestoreOutcome::SkippedDbExists);
        }
        TargetState::NotSqlite => {
            return Err(Error::Other(format!(
                "{} exists and is not an SQLite database; refusing to replace it (move it away first)",
                target.display()
            )));
        }
        TargetState::Database if !opts.force => {
            return Err(Error::Other(format!(
                "{} already exists; pass --force to replace it (or --if-db-not-exists to keep it)",
                target.display()
            )));
        }
        _ => {}
    }
    let picked = match plan::pick_manifest(store, &opts.pick, opts.key.as_deref()).await {
        Ok(m) => m,
        Err(Error::NoBackup(why))
            if opts.if_replica_exists && crate::history::newest_id(store).await?.is_none() =>
        {
            tracing::info!(replica = %store.describe(), "no snapshot in the replica, skipping restore (--if-replica-exists): {why}");
            return Ok(RestoreOutcome::SkippedNoReplica);
        }
        Err(e) => return Err(e),
    };
    let id = picked.id.clone();
    let plan = plan::plan_of(store, picked, opts.key.as_deref()).await?;
    let fenced_by = fenced_pick(store, &opts.pick, &plan, opts.key.as_deref()).await?;
    tracing::info!(
        snapshot = %id,
        objects = plan.objects(),
        bytes = plan.download_bytes(),
        target = %target.display(),
        "restoring"
    );
    if opts.dry_run {
        return Ok(RestoreOutcome::Planned(PlanReport {
            snapshot: id,
            created: plan.manifest.created,
            base: plan.manifest.base.clone(),
            deltas: plan.deltas.len(),
            target: target.to_path_buf(),
            replaces: state == TargetState::Database,
            objects: plan.objects(),
            download_bytes: plan.download_bytes(),
            db_size: plan.manifest.db.image_size(),
            fenced_by,
        }));
    }
    let tmp = install::temp_next_to(target)?;
    let tmp_path = tmp.path().to_path_buf();
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| Error::io(&tmp_path, e))?;
    let build_opts = BuildOptions {
        key: opts.key.clone(),
        parallelism: opts.parallelism,
        progress: opts.progress.clone(),
    };
    let built = Instant::now();
    let stats = build::build_image(store, &plan, file, &tmp_path, &build_opts).await?;
    build_opts.progress.finish();
    let checked = Instant::now();
    // The image must be on disk before the rename, and checked by SQLite:
    // the two are independent (one writes back, the other reads the page
    // cache), so they run at the same time rather than one after the other.
    let flush = {
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| Error::io(&tmp_path, e))?;
        let path = tmp_path.clone();
        tokio::task::spawn_blocking(move || file.sync_data().map_err(|e| Error::io(&path, e)))
    };
    let check = run_check(&tmp_path, opts.integrity_check, &id).await;
    let flushed = flush
        .await
        .map_err(|e| Error::Other(format!("restore fsync worker failed: {e}")))?;
    check?;
    flushed?;
    let installing = Instant::now();
    let replace = opts.force || state == TargetState::Empty;
    install::install(tmp, target, replace)?;
    tracing::debug!(
        plan_s = (built - started).as_secs_f64(),
        build_s = (checked - built).as_secs_f64(),
        check_and_fsync_s = (installing - checked).as_secs_f64(),
        install_s = installing.elapsed().as_secs_f64(),
        "restore phases"
    );
    let report = RestoreReport {
        snapshot: id,
        created: plan.manifest.created,
        target: Some(target.to_path_buf()),
        stats,
        integrity_check: opts.integrity_check,
        seconds: started.elapsed().as_secs_f64(),
        fenced_by,
    };
    tracing::info!(
        snapshot = %report.snapshot,
        target = %target.display(),
        db_size = report.stats.db_size,
        downloaded_bytes = report.stats.bytes,
        seconds = report.seconds,
        "restored"
    );
    Ok(RestoreOutcome::Restored(report))
}

/// For a snapshot asked for by id (`--snapshot`), the writer that fenced
/// its writer, if one did, with a warning: the user's explicit choice is
/// restored, but it is not history that any later snapshot builds on.
/// "Latest" and `--at` never pick such a snapshot ([`crate::history`]).
async fn fenced_pick(
    store: &dyn ObjectStore,
    pick: &Pick,
    plan: &RestorePlan,
    key: Option<&Key>,
) -> Result<Option<String>, Error> {
    if !matches!(pick, Pick::Id(_)) {
        return Ok(None);
    }
    let by = crate::index::fenced_by(store, &plan.manifest, key).await?;
    if let Some(by) = &by {
        tracing::warn!(
            snapshot = %plan.manifest.id,
            fenced_by = %by,
            "restoring a snapshot written by a fenced writer (a late write after {by} took the lease over); no later snapshot builds on it"
        );
    }
    Ok(by)
}

async fn run_check(path: &Path, check: IntegrityCheck, id: &str) -> Result<(), Error> {
    let (path, id) = (path.to_path_buf(), id.to_string());
    tokio::task::spawn_blocking(move || build::sqlite_check(&path, check, &id))
        .await
        .map_err(|e| Error::Other(format!("integrity check worker failed: {e}")))?
}

/// How `verify` checks.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// SQLite check on the rebuilt image.
    pub integrity_check: IntegrityCheck,
    /// Concurrent downloads.
    pub parallelism: usize,
    /// Key of an encrypted replica.
    pub key: Option<Arc<Key>>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            integrity_check: IntegrityCheck::Quick,
            parallelism: DEFAULT_PARALLELISM,
            key: None,
        }
    }
}

/// Checks everything a restore of snapshot `id` would check, rebuilding the
/// image in a scratch file under the system temp dir that is removed after.
pub async fn verify_id(
    store: &dyn ObjectStore,
    id: &str,
    opts: &VerifyOptions,
) -> Result<RestoreReport, Error> {
    let started = Instant::now();
    let plan = plan::plan(store, id, opts.key.as_deref()).await?;
    let tmp = tempfile::Builder::new()
        .prefix("mailsafe-verify-")
        .tempfile()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| Error::io(tmp.path(), e))?;
    let build_opts = BuildOptions {
        parallelism: opts.parallelism,
        key: opts.key.clone(),
        ..BuildOptions::default()
    };
    let stats = build::build_image(store, &plan, file, tmp.path(), &build_opts).await?;
    run_check(tmp.path(), opts.integrity_check, id).await?;
    Ok(RestoreReport {
        snapshot: id.to_string(),
        created: plan.manifest.created,
        target: None,
        stats,
        integrity_check: opts.integrity_check,
        seconds: started.elapsed().as_secs_f64(),
        fenced_by: None,
    })
}

/// Verifies the picked snapshot.
pub async fn verify(
    store: &dyn ObjectStore,
    pick: &Pick,
    opts: &VerifyOptions,
) -> Result<RestoreReport, Error> {
    let id = plan::pick_id(store, pick, opts.key.as_deref()).await?;
    verify_id(store, &id, opts).await
}

/// Verifies every snapshot, oldest first, and returns each one's outcome; a
/// store failure (not a broken snapshot) stops early. An empty replica is
/// [`Error::NoBackup`].
pub async fn verify_all(
    store: &dyn ObjectStore,
    opts: &VerifyOptions,
) -> Result<Vec<(String, Result<RestoreReport, Error>)>, Error> {
    let ids = plan::list_ids(store).await?;
    if ids.is_empty() {
        return Err(Error::NoBackup(format!(
            "no snapshot in {}",
            store.describe()
        )));
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match verify_id(store, &id, opts).await {
            Err(Error::Store(e)) => return Err(Error::Store(e)),
            r => out.push((id, r)),
        }
    }
    Ok(out)
}

/// One row of `mailsafe snapshots`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotInfo {
    /// Snapshot id.
    pub id: String,
    /// When it was taken.
    pub created: Option<DateTime<Utc>>,
    /// `base` or `incremental`.
    pub kind: Option<&'static str>,
    /// Its base snapshot.
    pub base: Option<String>,
    /// Database size in bytes.
    pub db_size: Option<u64>,
    /// Stored bytes of every object the snapshot needs.
    pub stored_bytes: Option<u64>,
    /// Bytes the snapshot uploaded.
    pub new_bytes: Option<u64>,
    /// Lease epoch of its writer (none for lease-less writers).
    pub epoch: Option<u64>,
    /// Its writer's host name, when recorded.
    pub host: Option<String>,
    /// Why the manifest could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Lists every snapshot in history (id) order from the day indexes where
/// they are current and otherwise from the manifests, each read through the
/// one reader (checked, and authenticated against `key`: an encrypted
/// replica lists only with its key); see [`crate::index`]. Unreadable
/// manifests are listed with their error rather than hidden.
pub async fn list_snapshots(
    store: &dyn ObjectStore,
    parallelism: usize,
    key: Option<&Key>,
) -> Result<Vec<SnapshotInfo>, Error> {
    let all = crate::index::summaries(store, key, parallelism).await?;
    Ok(all
        .entries
        .into_iter()
        .map(|(id, s)| match s {
            Ok(s) => SnapshotInfo {
                kind: Some(if s.base == s.id {
                    "base"
                } else {
                    "incremental"
                }),
                created: Some(s.created),
                base: Some(s.base),
                db_size: Some(s.db_size),
                stored_bytes: Some(s.stored_bytes),
                new_bytes: Some(s.new_bytes),
                epoch: s.epoch,
                host: s.host,
                error: None,
                id,
            },
            Err(e) => SnapshotInfo {
                created: plan::id_time(&id),
                kind: None,
                base: None,
                db_size: None,
                stored_bytes: None,
                new_bytes: None,
                epoch: None,
                host: None,
                error: Some(e.to_string()),
                id,
            },
        })
        .collect())
}

/// Tunes glibc's malloc for a process about to restore (the binary calls
/// it before starting its runtime; it must run before the runtime's threads
/// exist):
/// - at most two arenas: glibc gives threads that contend for malloc arenas
///   of their own and keeps the freed ~1 MiB download buffers in them, so
///   with 32 downloads on the blocking pool a 1 GiB restore peaked at
///   87-104 MB RSS; with two arenas 65 MB for the same CPU;
/// - blocks of 512 KiB and more (the downloads' buffers, whole packs of
///   2-4 MiB) are mapped: glibc's default threshold rises to the
///   largest block freed (the manifest's 5 MB at 4 GiB), after which those
///   buffers came from the heap and fragmented it as the restore went on. A
///   4 GiB restore from SeaweedFS peaked at 65.9-72.9 MiB RSS (dev build;
///   anonymous memory grew 43 -> 49.5 MB over the run while ~24 MB was
///   live), 59.4-61.1 MiB with this. The price was page faults (~0.5
///   million at 4 GiB: each download's buffer faulted in afresh), until the
///   stores recycled their body buffers (`store::buffers`). A threshold of
///   260 KiB reached 49 MiB, but also
///   mapped the HTTP connections' read buffers (up to ~408 KiB, regrown
///   often): 1.2 million more faults and 3-4.5 s more system CPU.
///
/// bench/RESULTS.md, issue 18.
pub fn tune_malloc_for_restore() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before the
    // runtime's threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 10);
    }
}
