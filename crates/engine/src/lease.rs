//! The single-writer lease of a replica prefix: two watchers (say, the old and
//! the new pod of a rolling update) must never interleave two histories.
//!
//! The lease is a sequence of *epoch* objects, `lease/<epoch>.json` (epoch
//! zero-padded so keys sort). Whoever holds the highest epoch, unreleased and
//! unexpired, owns the prefix. Epoch `n + 1` is created with
//! [`ObjectStore::put_if_absent`], so when two processes race to take over,
//! exactly one wins: no compare-and-swap on a single object is needed (the
//! store trait has none), and a plain `put` is only ever made by the holder
//! to its own epoch object (renewal, release).
//!
//! Idle costs nothing: the holder trusts its own monotonic clock and talks to
//! the store about the lease only *before a write*, and only when less than
//! half the TTL is left (one renewal per TTL/2 under constant writes; none
//! while idle). An idle holder's lease therefore lapses; if nobody took it
//! meanwhile, the next write simply takes the next epoch. If someone did, the
//! holder learns it before writing and backs off (see [`Lease::ensure`]).
//! Other processes treat a lease as expired only `SKEW` after its written
//! expiry, which absorbs clock differences between hosts.
//!
//! **Fencing.** The holder renews its epoch object with a conditional
//! replace ([`ObjectStore::put_if_match`] on the version it wrote). A process
//! that takes over a lease that was neither released nor already superseded
//! first marks the old epoch object `superseded_by` with a conditional
//! replace on the version it read, and only then creates the next epoch. So
//! a holder that renews after a takeover (paused, or with a clock gone
//! wrong) fails its renewal instead of writing on, and a takeover racing a
//! renewal fails and looks again. A holder that finds a newer epoch stops
//! ([`LeaseError::Fenced`]). Every manifest records its writer's epoch
//! ([`crate::format::Writer`]), so a write that was already in flight when
//! the lease was lost is recognisable afterwards ([`crate::format::fenced`]).
//!
//! **Crash takeover.** Waiting out the TTL is only needed when the holder
//! may still be alive. A writer holds a [`VolumeLock`] for its lifetime: an
//! `flock` on `<db>-mailsafe.lock` next to the database, a file that also
//! stores a random *volume id*; the lease record names that volume. The
//! kernel drops an `flock` when its process dies (`kill -9`, OOM kill), so a
//! new process that gets the lock and finds its own volume id in the live
//! lease has proof that the holder is dead, and takes over at once. A writer
//! on another volume has no such proof and waits (at most the TTL plus the
//! skew, when the holder is really gone); it says so in its log and in
//! `/healthz`.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{DynStore, StoreError};

/// Key prefix of the lease epochs.
pub const LEASE_PREFIX: &str = crate::format::LEASE_PREFIX;
/// Clock difference between hosts that the lease tolerates (a quarter of
/// the TTL when that is less, so that short test TTLs stay short).
const SKEW: Duration = Duration::from_secs(5);

/// Errors of the lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another live process holds the lease.
    #[error(
        "replica {replica} is being written by another process ({holder}, lease epoch {epoch}, \
         valid until {expires}); two writers would interleave two histories; if that process \
         is gone, its lease can be taken at {free_at}"
    )]
    Busy {
        /// The replica, as described by the store.
        replica: String,
        /// Who holds it (`host pid id volume`).
        holder: String,
        /// The holder's epoch.
        epoch: u64,
        /// When the holder's lease lapses unless renewed.
        expires: chrono::DateTime<chrono::Utc>,
        /// When another process may take it if it is not renewed (expiry
        /// plus the skew allowance).
        free_at: chrono::DateTime<chrono::Utc>,
    },
    /// Another process took the lease over while we held it: we must stop
    /// writing.
    #[error(
        "replica {replica}: this writer's lease (epoch {ours}) was taken over by another process \
         ({holder}, lease epoch {epoch}); stopping, since two writers would interleave two histories"
    )]
    Fenced {
        /// The replica, as described by the store.
        replica: String,
        /// Our epoch.
        ours: u64,
        /// Who holds it now.
        holder: String,
        /// The newer epoch.
        epoch: u64,
    },
    /// The object store failed.
    #[error("lease on {replica}: {source}")]
    Store {
        /// The replica, as described by the store.
        replica: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
}

/// The content of one epoch object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseRecord {
    /// This epoch (also in the key).
    pub epoch: u64,
    /// Random id of the holding process instance.
    pub owner: String,
    /// Host name of the holder, for messages.
    pub host: String,
    /// Process id of the holder, for messages.
    pub pid: u32,
    /// When this epoch was taken.
    pub acquired: chrono::DateTime<chrono::Utc>,
    /// When the lease lapses unless renewed.
    pub expires: chrono::DateTime<chrono::Utc>,
    /// Set when the holder gave the lease up cleanly (shutdown).
    #[serde(default)]
    pub released: bool,
    /// The volume id of the holder's [`VolumeLock`], when it holds one;
    /// absent in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Set by the process that took this lease over without its holder
    /// releasing it: the epoch it took. The holder's next conditional renewal
    /// fails on this change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<u64>,
    /// Whether this epoch may have written a manifest: set (conditionally,
    /// like a renewal) before its first manifest is stored. `None` in
    /// records of older versions, which count as having written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrote: Option<bool>,
    /// The highest earlier epoch that may have written a manifest, carried
    /// from record to record at each takeover (older records are deleted).
    /// With [`Self::wrote`] it bounds the writer epochs of every manifest
    /// without reading them (see [`written_epoch_bound`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_below: Option<u64>,
}

impl LeaseRecord {
    /// Who holds it, for messages.
    pub fn holder(&self) -> String {
        let volume = self.volume.as_deref().unwrap_or("unknown");
        format!(
            "host {} pid {} id {} volume {volume}",
            self.host, self.pid, self.owner
        )
    }

    /// When a process other than the holder may take over unless the holder
    /// renews: the written expiry plus the skew allowance.
    fn free_at(&self) -> chrono::DateTime<chrono::Utc> {
        let ttl = (self.expires - self.acquired).to_std().unwrap_or_default();
        let skew = SKEW.min(ttl / 4);
        self.expires + chrono::Duration::from_std(skew).unwrap_or_default()
    }

    /// The highest epoch, this one or an earlier one, that may have written
    /// a manifest. Records of older versions say nothing, so their own
    /// epoch is the (safe) answer.
    fn written_bound(&self) -> u64 {
        match self.wrote {
            Some(false) => self
                .written_below
                .unwrap_or_else(|| self.epoch.saturating_sub(1)),
            _ => self.epoch,
        }
    }

    /// Whether a process other than the holder may take over now.
    fn is_free(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.released || self.superseded_by.is_some() || now > self.free_at()
    }
}

/// A writer's lifetime hold on the volume its database lives on: an
/// exclusive `flock` on `<db>-mailsafe.lock`, a file that also keeps the
/// volume's random id (see the module doc). Dropping it (or the process
/// dying) releases the lock; the file and its id stay. Clones share the
/// one lock: the loops of one process that write one db to several
/// replicas hold it together (see [`VolumeLock::try_hold`]).
#[derive(Debug, Clone)]
pub struct VolumeLock(std::sync::Arc<Held>);

/// The open, locked file behind a [`VolumeLock`].
#[derive(Debug)]
struct Held {
    /// Kept open: closing it would drop the lock.
    _file: std::fs::File,
    id: String,
    path: PathBuf,
}

/// The volume locks this process holds, by lock-file path, so that a
/// second loop on the same db shares the first one's lock instead of
/// failing to take it (an `flock` is per open file, so the process would
/// otherwise lock itself out).
static HELD: std::sync::Mutex<Vec<(PathBuf, std::sync::Weak<Held>)>> =
    std::sync::Mutex::new(Vec::new());

impl VolumeLock {
    /// The lock file of `db`: `<db>-mailsafe.lock`, beside it (SQLite's own
    /// `-wal`/`-shm` naming, so it moves with the database's directory).
    pub fn path_for(db: &Path) -> PathBuf {
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push("-mailsafe.lock");
        db.with_file_name(name)
    }

    /// Takes the lock of `db` without waiting. `Ok(None)` when another live
    /// process holds it (that process is then alive, so nothing is proven).
    /// Creates the file and a new volume id on first use.
    pub fn try_acquire(db: &Path) -> Result<Option<Self>, std::io::Error> {
        let path = Self::path_for(db);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        // The same non-blocking flock as restore's temp files.
        if !crate::store::fs::try_lock(&file)? {
            return Ok(None);
        }
        let mut text = String::new();
        // A file we cannot read as text gets a new id, like an empty one.
        let _ = file.read_to_string(&mut text);
        let stored = text.trim();
        let id = if stored.len() == 16 && stored.bytes().all(|b| b.is_ascii_hexdigit()) {
            stored.to_string()
        } else {
            let id = format!("{:016x}", rand::random::<u64>());
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(format!("{id}\n").as_bytes())?;
            file.sync_all()?;
            id
        };
        Ok(Some(Self(std::sync::Arc::new(Held {
            _file: file,
            id,
            path,
        }))))
    }

    /// Fills `slot` with the lock of `db` if it is empty and the lock is
    /// free; logs what it found. Writers call it before each lease attempt:
    /// a process on the same volume that still holds it may exit meanwhile.
    pub fn try_hold(slot: &mut Option<VolumeLock>, db: &Path) {
        if slot.is_some() {
            return;
        }
        let path = Self::path_for(db);
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|(_, h)| h.strong_count() > 0);
        if let Some(h) = held
            .iter()
            .find(|(p, _)| *p == path)
            .and_then(|(_, h)| h.upgrade())
        {
            *slot = Some(VolumeLock(h));
            return;
        }
        match Self::try_acquire(db) {
            Ok(Some(lock)) => {
                tracing::debug!(path = %lock.0.path.display(), volume = %lock.0.id, "holding the volume lock");
                held.push((path, std::sync::Arc::downgrade(&lock.0)));
                *slot = Some(lock);
            }
            Ok(None) => tracing::debug!(
                path = %Self::path_for(db).display(),
                "another live process on this volume holds the volume lock"
            ),
            Err(e) => tracing::warn!(
                path = %Self::path_for(db).display(),
                "cannot take the volume lock ({e}); a crashed predecessor's lease will be waited out"
            ),
        }
    }

    /// The volume's id.
    pub fn id(&self) -> &str {
        &self.0.id
    }
}

/// The highest lease epoch ever taken on `store`'s prefix (0 if none):
/// every manifest's writer epoch is at most this (see
/// [`crate::format::fenced`]).
pub async fn newest_epoch(store: &dyn crate::store::ObjectStore) -> Result<u64, StoreError> {
    Ok(store
        .list(LEASE_PREFIX)
        .await?
        .iter()
        .filter_map(|m| epoch_of_key(&m.key))
        .max()
        .unwrap_or(0))
}

/// An upper bound on the writer epoch of every manifest in `store`'s
/// prefix: the newest lease record's own epoch if it has written (or is of
/// an older version), else the highest earlier epoch that may have (see
/// [`LeaseRecord::written_below`]). Two requests (LIST, GET), whatever the
/// history. The fencing rule uses it to decide the newest snapshot without
/// reading older manifests (see [`crate::history::newest_unfenced`]): a
/// writer that took over but has not written yet fences nothing.
pub async fn written_epoch_bound(store: &dyn crate::store::ObjectStore) -> Result<u64, StoreError> {
    Ok(written_bounds(store).await?.map_or(0, |b| b.epoch))
}

/// What the newest lease record says about which epochs wrote (see
/// [`written_epoch_bound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenBounds {
    /// The highest writer epoch any manifest may have.
    pub epoch: u64,
    /// When `epoch` is the newest record's own (it marked itself as
    /// writing): when it took the lease, by its own clock, and the highest
    /// earlier epoch that may have written. If no manifest of `epoch`
    /// exists, that earlier epoch bounds every manifest instead.
    pub marked: Option<(chrono::DateTime<chrono::Utc>, u64)>,
}

/// [`written_epoch_bound`] with what the record says beyond the bound
/// (`None` when no lease was ever taken). Two requests (LIST, GET).
pub async fn written_bounds(
    store: &dyn crate::store::ObjectStore,
) -> Result<Option<WrittenBounds>, StoreError> {
    let epoch = newest_epoch(store).await?;
    if epoch == 0 {
        return Ok(None);
    }
    let unknown = WrittenBounds {
        epoch,
        marked: None,
    };
    match store.get(&epoch_key(epoch)).await {
        Ok(body) => Ok(Some(serde_json::from_slice::<LeaseRecord>(&body).map_or(
            unknown,
            |rec| {
                let bound = rec.written_bound().min(epoch);
                WrittenBounds {
                    epoch: bound,
                    marked: (rec.wrote == Some(true) && bound == epoch)
                        .then(|| rec.written_below.map(|below| (rec.acquired, below)))
                        .flatten(),
                }
            },
        ))),
        // Deleted meanwhile (a newer epoch cleans up) or unreadable: the
        // epoch itself is the safe bound.
        Err(StoreError::NotFound { .. }) => Ok(Some(unknown)),
        Err(e) => Err(e),
    }
}

/// The epoch of a `lease/<epoch>.json` key.
fn epoch_of_key(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    name.strip_suffix(".json")?.parse::<u64>().ok()
}

/// The newest epoch, its record (if readable) and its version tag.
type Newest = (u64, Option<LeaseRecord>, Option<String>);

fn epoch_key(epoch: u64) -> String {
    format!("{LEASE_PREFIX}{epoch:020}.json")
}

/// A held lease (or one that was held and may have lapsed).
#[derive(Debug)]
pub struct Lease {
    store: DynStore,
    ttl: Duration,
    owner: String,
    host: String,
    /// The epoch we hold.
    epoch: u64,
    /// When our lease lapses by our own clock.
    valid_until: Instant,
    acquired: chrono::DateTime<chrono::Utc>,
    /// Our [`VolumeLock`]'s id, when we hold one.
    volume: Option<String>,
    /// The version tag of our epoch object as we last wrote it, for the
    /// conditional renewal (`None` if the store did not report one).
    etag: Option<String>,
    /// Whether our epoch record says it may have written (see
    /// [`Lease::mark_writing`]).
    wrote: bool,
    /// [`LeaseRecord::written_below`] of our epoch.
    written_below: u64,
}

/// What [`Lease::ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// Still ours, same epoch as before: the history continues.
    Continued,
    /// Ours again after it lapsed; someone else may have written meanwhile if
    /// `others_wrote`, in which case the caller must re-read the replica
    /// before writing (its idea of the newest snapshot may be stale).
    Retaken {
        /// Whether another process held an epoch between ours.
        others_wrote: bool,
    },
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

impl Lease {
    /// Tries once to take the lease of `store`'s prefix for `ttl`. With the
    /// `volume` lock held, a live lease naming the same volume is a dead
    /// process's (it held that lock) and is taken over at once.
    pub async fn try_acquire(
        store: DynStore,
        ttl: Duration,
        volume: Option<&VolumeLock>,
    ) -> Result<Self, LeaseError> {
        let owner = format!("{:016x}", rand::random::<u64>());
        let mut lease = Lease {
            store,
            ttl,
            owner,
            host: host_name(),
            epoch: 0,
            valid_until: Instant::now(),
            acquired: chrono::Utc::now(),
            volume: volume.map(|v| v.id().to_string()),
            etag: None,
            wrote: false,
            written_below: 0,
        };
        lease.take_next_epoch().await?;
        Ok(lease)
    }

    /// Takes the lease, waiting while another live process holds it. Logs
    /// once who holds it, and once when it is free. Polls the lease every
    /// `poll` while waiting (a waiting process is not an idle one).
    pub async fn acquire_waiting(
        store: DynStore,
        ttl: Duration,
        poll: Duration,
        volume: Option<&VolumeLock>,
    ) -> Result<Self, LeaseError> {
        let mut announced = false;
        loop {
            match Self::try_acquire(store.clone(), ttl, volume).await {
                Ok(l) => {
                    if announced {
                        tracing::info!(replica = %store.describe(), epoch = l.epoch, "writer lease is free again; taken");
                    }
                    return Ok(l);
                }
                Err(e @ LeaseError::Busy { .. }) => {
                    if !announced {
                        tracing::warn!("{e}; waiting for it to be released or to expire");
                        announced = true;
                    }
                    tokio::time::sleep(poll).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn err(&self, source: StoreError) -> LeaseError {
        LeaseError::Store {
            replica: self.store.describe(),
            source,
        }
    }

    /// The newest epoch record, if any. Unreadable records count as taken
    /// epochs held by nobody (so they are never reused).
    async fn newest(&self) -> Result<Option<Newest>, LeaseError> {
        let epoch = newest_epoch(self.store.as_ref())
            .await
            .map_err(|e| self.err(e))?;
        if epoch == 0 {
            return Ok(None);
        }
        // The version first: if the object changes after it, a conditional
        // replace with it fails, which is the safe side.
        let etag = match self.store.head(&epoch_key(epoch)).await {
            Ok(meta) => meta.etag,
            Err(StoreError::NotFound { .. }) => return Ok(Some((epoch, None, None))),
            Err(e) => return Err(self.err(e)),
        };
        match self.store.get(&epoch_key(epoch)).await {
            Ok(body) => Ok(Some((epoch, serde_json::from_slice(&body).ok(), etag))),
            // Deleted between list and get: someone is cleaning up behind a
            // newer epoch; report it as taken so the caller looks again.
            Err(StoreError::NotFound { .. }) => Ok(Some((epoch, None, None))),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Marks the live epoch `rec` (version `etag`) as superseded by
    /// `next`, so that its holder's conditional renewal fails. `false` when
    /// it changed since it was read (renewed, or taken by another): look
    /// again.
    async fn supersede(
        &self,
        rec: &LeaseRecord,
        etag: Option<&str>,
        next: u64,
    ) -> Result<bool, LeaseError> {
        let Some(etag) = etag else {
            // The store reports no versions: nothing to fence with.
            return Ok(true);
        };
        let mut fenced = rec.clone();
        fenced.superseded_by = Some(next);
        let body = Bytes::from(serde_json::to_vec_pretty(&fenced).unwrap_or_default());
        match self
            .store
            .put_if_match(&epoch_key(rec.epoch), body, etag)
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    fn record(&self, epoch: u64, released: bool) -> LeaseRecord {
        let now = chrono::Utc::now();
        LeaseRecord {
            epoch,
            owner: self.owner.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            acquired: self.acquired,
            expires: if released {
                now
            } else {
                now + chrono::Duration::from_std(self.ttl).unwrap_or_default()
            },
            released,
            volume: self.volume.clone(),
            superseded_by: None,
            wrote: Some(self.wrote),
            written_below: Some(self.written_below),
        }
    }

    /// Whether `rec`, a live lease, was held by a process that is now dead:
    /// it names our volume, whose lock we hold, so its holder let go of the
    /// lock, which only exit does.
    fn holder_is_dead(&self, rec: &LeaseRecord) -> bool {
        !rec.released && self.volume.is_some() && rec.volume == self.volume
    }

    /// Creates epoch `newest + 1` if the newest is free. Returns whether an
    /// epoch held by someone else lies between our previous one and the new.
    async fn take_next_epoch(&mut self) -> Result<bool, LeaseError> {
        loop {
            let newest = self.newest().await?;
            let next = match &newest {
                None => 1,
                Some((epoch, Some(rec), _)) if rec.owner == self.owner => epoch + 1,
                Some((epoch, Some(rec), _)) if rec.released || rec.superseded_by.is_some() => {
                    epoch + 1
                }
                Some((epoch, Some(rec), etag))
                    if rec.is_free(chrono::Utc::now()) || self.holder_is_dead(rec) =>
                {
                    if self.holder_is_dead(rec) {
                        tracing::info!(
                            replica = %self.store.describe(),
                            "the writer lease (epoch {epoch}) is held by {}, which ran on this \
                             volume and has exited (its volume lock is ours now); taking over at once",
                            rec.holder()
                        );
                    }
                    if !self.supersede(rec, etag.as_deref(), epoch + 1).await? {
                        continue;
                    }
                    epoch + 1
                }
                Some((epoch, Some(rec), _)) => {
                    // A newer epoch than ours, live: we were taken over.
                    if self.epoch != 0 && *epoch > self.epoch {
                        return Err(LeaseError::Fenced {
                            replica: self.store.describe(),
                            ours: self.epoch,
                            holder: rec.holder(),
                            epoch: *epoch,
                        });
                    }
                    return Err(LeaseError::Busy {
                        replica: self.store.describe(),
                        holder: rec.holder(),
                        epoch: *epoch,
                        expires: rec.expires,
                        free_at: rec.free_at(),
                    });
                }
                Some((epoch, None, _)) => {
                    // An unreadable or vanished newest epoch: treat as a
                    // stale record and move past it.
                    epoch + 1
                }
            };
            let others_wrote = self.epoch != 0 && next != self.epoch + 1;
            // Carried forward: the records below `next` are deleted once it
            // is ours, and readers need this bound (see
            // [`written_epoch_bound`]).
            self.written_below = match &newest {
                None => 0,
                Some((_, Some(rec), _)) => rec.written_bound(),
                Some((epoch, None, _)) => *epoch,
            };
            self.wrote = false;
            let start = Instant::now();
            let mut rec = self.record(next, false);
            rec.acquired = chrono::Utc::now();
            let body = Bytes::from(serde_json::to_vec_pretty(&rec).unwrap_or_default());
            match self.store.put_if_absent(&epoch_key(next), body).await {
                Ok(()) => {
                    self.epoch = next;
                    self.acquired = rec.acquired;
                    self.valid_until = start + self.ttl;
                    // The version renewals are conditional on.
                    self.etag = self
                        .store
                        .head(&epoch_key(next))
                        .await
                        .map_err(|e| self.err(e))?
                        .etag;
                    self.cleanup_below(next).await;
                    return Ok(others_wrote);
                }
                // Someone took that epoch first: look again.
                Err(StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    /// Best-effort removal of older epochs: only the newest decides.
    async fn cleanup_below(&self, epoch: u64) {
        let Ok(list) = self.store.list(LEASE_PREFIX).await else {
            return;
        };
        for m in list {
            let older = epoch_of_key(&m.key).is_some_and(|e| e < epoch);
            if older {
                let _ = self.store.delete(&m.key).await;
            }
        }
    }

    /// The epoch held.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether our own clock says the lease is still ours.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// Makes sure the lease is ours for at least half its TTL before a write.
    /// Costs no request when that is already so; renews when less is left;
    /// re-takes it when it lapsed and is free. Fails with
    /// [`LeaseError::Busy`] when another process took it.
    pub async fn ensure(&mut self) -> Result<Ensured, LeaseError> {
        let now = Instant::now();
        if now + self.ttl / 2 <= self.valid_until {
            return Ok(Ensured::Continued);
        }
        if now < self.valid_until {
            // Ours by our clock; the conditional replace proves nobody took
            // it over meanwhile (see the module doc).
            let rec = self.record(self.epoch, false);
            self.write_own(rec).await?;
            self.valid_until = now + self.ttl;
            return Ok(Ensured::Continued);
        }
        let others_wrote = self.take_next_epoch().await?;
        Ok(Ensured::Retaken { others_wrote })
    }

    /// Records in our epoch object, before the first manifest of this epoch
    /// is stored, that this epoch may now have written (see
    /// [`written_epoch_bound`]). One conditional replace per epoch (it
    /// renews the lease too); no request afterwards. Fails with
    /// [`LeaseError::Fenced`] when the lease was taken over, so a writer
    /// learns it before its first write. Call it after [`Lease::ensure`].
    pub async fn mark_writing(&mut self) -> Result<(), LeaseError> {
        if self.wrote {
            return Ok(());
        }
        self.wrote = true;
        let now = Instant::now();
        let rec = self.record(self.epoch, false);
        match self.write_own(rec).await {
            Ok(()) => {
                self.valid_until = now + self.ttl;
                Ok(())
            }
            Err(e) => {
                self.wrote = false;
                Err(e)
            }
        }
    }

    /// Gives the lease up so that a waiting process can take it at once.
    /// Does nothing if the lease already lapsed (it may be someone else's).
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        if !self.is_valid() {
            return Ok(());
        }
        let rec = self.record(self.epoch, true);
        self.valid_until = Instant::now();
        self.write_own(rec).await
    }

    /// Replaces our epoch object with `rec`, conditionally on the version
    /// we last wrote; [`LeaseError::Fenced`] when it changed (a takeover
    /// marked it superseded).
    async fn write_own(&mut self, rec: LeaseRecord) -> Result<(), LeaseError> {
        let key = epoch_key(self.epoch);
        let body = Bytes::from(serde_json::to_vec_pretty(&rec).unwrap_or_default());
        let Some(etag) = self.etag.clone() else {
            // The store reports no versions: a plain put, as before.
            return self.store.put(&key, body).await.map_err(|e| self.err(e));
        };
        match self.store.put_if_match(&key, body, &etag).await {
            Ok(tag) => {
                self.etag = Some(tag);
                Ok(())
            }
            Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => {
                self.valid_until = Instant::now();
                let (epoch, holder) = match self.newest().await? {
                    Some((epoch, Some(rec), _)) => (epoch, rec.holder()),
                    Some((epoch, None, _)) => (epoch, "unknown".into()),
                    None => (self.epoch, "unknown".into()),
                };
                Err(LeaseError::Fenced {
                    replica: self.store.describe(),
                    ours: self.epoch,
                    holder,
                    epoch,
                })
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Who we are, for the manifests we write (see
    /// [`crate::format::Writer`]).
    pub fn writer(&self) -> crate::format::Writer {
        crate::format::Writer {
            epoch: self.epoch,
            host: self.host.clone(),
            owner: self.owner.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::metrics::{MeteredStore, Metrics};

    async fn store(dir: &std::path::Path) -> DynStore {
        crate::store::open(&format!("file://{}", dir.display()), None)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let mut a = Lease::try_acquire(s.clone(), Duration::from_secs(60), None)
            .await
            .unwrap();
        assert_eq!(a.epoch(), 1);
        let err = Lease::try_acquire(s.clone(), Duration::from_secs(60), None)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LeaseError::Busy { epoch: 1, .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        a.release().await.unwrap();
        let b = Lease::try_acquire(s.clone(), Duration::from_secs(60), None)
            .await
            .unwrap();
        assert_eq!(b.epoch(), 2);
        // Older epochs are cleaned up: only the newest object remains.
        let keys: Vec<String> = s
            .list(LEASE_PREFIX)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, vec![epoch_key(2)]);
    }

    #[tokio::test]
    async fn an_idle_holder_makes_no_request_and_backs_off_after_a_takeover() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let s = MeteredStore::wrap(store(dir.path()).await, m.clone());
        let ttl = Duration::from_millis(400);
        let mut a = Lease::try_acquire(s.clone(), ttl, None).await.unwrap();
        let before = m.total_requests();
        assert_eq!(a.ensure().await.unwrap(), Ensured::Continued);
        assert_eq!(m.total_requests(), before, "a fresh lease needs no request");
        // Idle past the TTL (and the skew others allow): B takes over.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut b = Lease::try_acquire(s.clone(), Duration::from_secs(60), None)
            .await
            .unwrap();
        assert_eq!(b.epoch(), 2);
        // A learns it before writing, and stops: it was fenced.
        assert!(matches!(
            a.ensure().await,
            Err(LeaseError::Fenced {
                ours: 1,
                epoch: 2,
                ..
            })
        ));
        // Releasing A's lapsed lease must not touch B's.
        a.release().await.unwrap();
        assert!(Lease::try_acquire(s.clone(), ttl, None).await.is_err());
        b.release().await.unwrap();
        // A comes back, and is told that someone else wrote meanwhile.
        assert_eq!(
            a.ensure().await.unwrap(),
            Ensured::Retaken { others_wrote: true }
        );
        assert_eq!(a.epoch(), 3);
    }

    #[tokio::test]
    async fn a_lapsed_lease_nobody_took_is_simply_retaken() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let mut a = Lease::try_acquire(s.clone(), Duration::from_millis(200), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            a.ensure().await.unwrap(),
            Ensured::Retaken {
                others_wrote: false
            }
        );
        assert_eq!(a.epoch(), 2);
    }

    #[tokio::test]
    async fn racing_takeovers_have_exactly_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let attempts = (0..8).map(|_| Lease::try_acquire(s.clone(), Duration::from_secs(60), None));
        let results = futures::future::join_all(attempts).await;
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{results:?}");
    }

    use crate::store::memory::Op;

    fn memory() -> (crate::store::memory::MemoryStore, DynStore) {
        let m = crate::store::memory::MemoryStore::new("lease");
        (m.clone(), std::sync::Arc::new(m))
    }

    /// Two loops of one process on one db (two replicas) share the lock:
    /// the second is not locked out by the first; once both are gone it is
    /// free again.
    #[test]
    fn loops_of_one_process_share_the_volume_lock() {
        let vol = tempfile::tempdir().unwrap();
        let db = vol.path().join("app.db");
        let (mut a, mut b) = (None, None);
        VolumeLock::try_hold(&mut a, &db);
        VolumeLock::try_hold(&mut b, &db);
        let (a, b) = (a.expect("first loop"), b.expect("second loop shares it"));
        assert_eq!(a.id(), b.id());
        assert!(VolumeLock::try_acquire(&db).unwrap().is_none());
        drop((a, b));
        assert!(VolumeLock::try_acquire(&db).unwrap().is_some());
    }

    #[tokio::test]
    async fn a_restart_on_the_same_volume_takes_a_dead_holders_lease_at_once() {
        let (_, s) = memory();
        let vol = tempfile::tempdir().unwrap();
        let db = vol.path().join("app.db");
        let ttl = Duration::from_secs(120);
        let first = VolumeLock::try_acquire(&db).unwrap().unwrap();
        let a = Lease::try_acquire(s.clone(), ttl, Some(&first))
            .await
            .unwrap();
        // While the holder lives, nobody else on the volume gets the lock,
        // so nobody can claim it is dead.
        assert!(VolumeLock::try_acquire(&db).unwrap().is_none());
        let err = Lease::try_acquire(s.clone(), ttl, None).await.unwrap_err();
        assert!(matches!(err, LeaseError::Busy { epoch: 1, .. }), "{err}");
        assert!(
            err.to_string().contains(first.id()),
            "names the volume: {err}"
        );

        // kill -9: the lease is not released, the kernel drops the lock.
        let id = first.id().to_string();
        drop(a);
        drop(first);
        let again = VolumeLock::try_acquire(&db).unwrap().unwrap();
        assert_eq!(again.id(), id, "the volume keeps its id");
        let c = Lease::try_acquire(s.clone(), ttl, Some(&again))
            .await
            .unwrap();
        assert_eq!(c.epoch(), 2, "taken over without waiting out the TTL");
    }

    #[tokio::test]
    async fn a_writer_on_another_volume_waits_and_says_until_when() {
        let (_, s) = memory();
        let (v1, v2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ttl = Duration::from_secs(120);
        let lock1 = VolumeLock::try_acquire(&v1.path().join("app.db"))
            .unwrap()
            .unwrap();
        let a = Lease::try_acquire(s.clone(), ttl, Some(&lock1))
            .await
            .unwrap();
        drop(a);
        drop(lock1); // the holder died
        let lock2 = VolumeLock::try_acquire(&v2.path().join("app.db"))
            .unwrap()
            .unwrap();
        let before = chrono::Utc::now();
        let err = Lease::try_acquire(s.clone(), ttl, Some(&lock2))
            .await
            .unwrap_err();
        let LeaseError::Busy { free_at, .. } = &err else {
            panic!("{err}");
        };
        // At most the TTL plus the skew allowance.
        assert!(*free_at <= before + chrono::Duration::seconds(126), "{err}");
        assert!(*free_at > before + chrono::Duration::seconds(110), "{err}");
        assert!(err.to_string().contains("can be taken at"), "{err}");
    }

    /// A takeover the holder does not see coming (its own clock says the
    /// lease is still its own): the taker marks the old epoch superseded
    /// with a conditional replace, so the holder's conditional renewal fails
    /// and it stops, naming the other writer. The taker here proves the
    /// holder dead with a volume id it shares (as a restarted pod would),
    /// which makes the schedule exact: no TTL has to pass.
    #[tokio::test]
    async fn a_holder_taken_over_is_fenced_at_its_next_renewal() {
        let (mem, s) = memory();
        let (v1, v2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let lock1 = VolumeLock::try_acquire(&v1.path().join("a.db"))
            .unwrap()
            .unwrap();
        // Step 1: A takes the lease with a short TTL.
        let ttl = Duration::from_millis(400);
        let mut a = Lease::try_acquire(s.clone(), ttl, Some(&lock1))
            .await
            .unwrap();
        // Step 2: B, whose volume lock carries A's volume id, takes over.
        std::fs::write(
            VolumeLock::path_for(&v2.path().join("b.db")),
            format!("{}\n", lock1.id()),
        )
        .unwrap();
        let lock2 = VolumeLock::try_acquire(&v2.path().join("b.db"))
            .unwrap()
            .unwrap();
        let puts = mem.requests(Op::PutIfMatch);
        let b = Lease::try_acquire(s.clone(), Duration::from_secs(60), Some(&lock2))
            .await
            .unwrap();
        assert_eq!(b.epoch(), 2);
        assert_eq!(
            mem.requests(Op::PutIfMatch),
            puts + 1,
            "the old epoch was fenced"
        );
        // (Epoch 1 itself is then cleaned up: A's renewal finds it gone.)
        assert!(s.get(&epoch_key(1)).await.is_err());
        // Step 3: A wants to write. Within its TTL it renews (conditional
        // replace, refused); past it, it finds the newer epoch. Either way it
        // is fenced and names B.
        tokio::time::sleep(ttl / 2 + Duration::from_millis(20)).await;
        let err = a.ensure().await.unwrap_err();
        assert!(
            matches!(
                err,
                LeaseError::Fenced {
                    ours: 1,
                    epoch: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(&b.owner),
            "names the other writer: {err}"
        );
        // Step 4: A's manifests carry epoch 1, B's epoch 2: the rule knows.
        assert_eq!(a.writer().epoch, 1);
        assert_eq!(b.writer().epoch, 2);
    }

    #[tokio::test]
    async fn a_renewal_without_takeover_is_a_conditional_replace() {
        let (mem, s) = memory();
        let ttl = Duration::from_millis(400);
        let mut a = Lease::try_acquire(s.clone(), ttl, None).await.unwrap();
        let (puts, cas) = (mem.requests(Op::Put), mem.requests(Op::PutIfMatch));
        tokio::time::sleep(ttl / 2 + Duration::from_millis(20)).await;
        match a.ensure().await.unwrap() {
            // Renewed in time: one conditional replace, no plain put.
            Ensured::Continued => {
                assert_eq!(mem.requests(Op::PutIfMatch), cas + 1);
                assert_eq!(mem.requests(Op::Put), puts);
            }
            // A loaded machine slept past the TTL: retaken, nobody between.
            other => assert_eq!(
                other,
                Ensured::Retaken {
                    others_wrote: false
                }
            ),
        }
        a.release().await.unwrap();
        assert_eq!(mem.requests(Op::Put), puts, "release is conditional too");
    }
}
