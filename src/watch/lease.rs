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

    /// Whether a process other than the holder may take over now.
    fn is_free(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.released || now > self.free_at()
    }
}

/// A writer's lifetime hold on the volume its database lives on: an
/// exclusive `flock` on `<db>-mailsafe.lock`, a file that also keeps the
/// volume's random id (see the module doc). Dropping it (or the process
/// dying) releases the lock; the file and its id stay.
#[derive(Debug)]
pub struct VolumeLock {
    /// Kept open: closing it would drop the lock.
    _file: std::fs::File,
    id: String,
    path: PathBuf,
}

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
        if !crate::restore::install::try_lock(&file)? {
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
        Ok(Some(Self {
            _file: file,
            id,
            path,
        }))
    }

    /// Fills `slot` with the lock of `db` if it is empty and the lock is
    /// free; logs what it found. Writers call it before each lease attempt:
    /// a process on the same volume that still holds it may exit meanwhile.
    pub fn try_hold(slot: &mut Option<VolumeLock>, db: &Path) {
        if slot.is_some() {
            return;
        }
        match Self::try_acquire(db) {
            Ok(Some(lock)) => {
                tracing::debug!(path = %lock.path.display(), volume = %lock.id, "holding the volume lock");
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
        &self.id
    }
}

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
    async fn newest(&self) -> Result<Option<(u64, Option<LeaseRecord>)>, LeaseError> {
        let list = self
            .store
            .list(LEASE_PREFIX)
            .await
            .map_err(|e| self.err(e))?;
        let newest = list
            .iter()
            .filter_map(|m| {
                let name = m.key.rsplit('/').next()?;
                name.strip_suffix(".json")?.parse::<u64>().ok()
            })
            .max();
        let Some(epoch) = newest else {
            return Ok(None);
        };
        match self.store.get(&epoch_key(epoch)).await {
            Ok(body) => Ok(Some((epoch, serde_json::from_slice(&body).ok()))),
            // Deleted between list and get: someone is cleaning up behind a
            // newer epoch; report it as taken so the caller looks again.
            Err(StoreError::NotFound { .. }) => Ok(Some((epoch, None))),
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
                Some((epoch, Some(rec)))
                    if rec.owner == self.owner || rec.is_free(chrono::Utc::now()) =>
                {
                    epoch + 1
                }
                Some((epoch, Some(rec))) if self.holder_is_dead(rec) => {
                    tracing::info!(
                        replica = %self.store.describe(),
                        "the writer lease (epoch {epoch}) is held by {}, which ran on this \
                         volume and has exited (its volume lock is ours now); taking over at once",
                        rec.holder()
                    );
                    epoch + 1
                }
                Some((epoch, Some(rec))) => {
                    return Err(LeaseError::Busy {
                        replica: self.store.describe(),
                        holder: rec.holder(),
                        epoch: *epoch,
                        expires: rec.expires,
                        free_at: rec.free_at(),
                    });
                }
                Some((epoch, None)) => {
                    // An unreadable or vanished newest epoch: treat as a
                    // stale record and move past it.
                    epoch + 1
                }
            };
            let others_wrote = self.epoch != 0 && next != self.epoch + 1;
            let start = Instant::now();
            let mut rec = self.record(next, false);
            rec.acquired = chrono::Utc::now();
            let body = Bytes::from(serde_json::to_vec_pretty(&rec).unwrap_or_default());
            match self.store.put_if_absent(&epoch_key(next), body).await {
                Ok(()) => {
                    self.epoch = next;
                    self.acquired = rec.acquired;
                    self.valid_until = start + self.ttl;
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
            let older = m
                .key
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|e| e < epoch);
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
            // Still ours: nobody takes an unexpired lease, so a plain put of
            // our own epoch object is safe.
            let rec = self.record(self.epoch, false);
            let body = Bytes::from(serde_json::to_vec_pretty(&rec).unwrap_or_default());
            self.store
                .put(&epoch_key(self.epoch), body)
                .await
                .map_err(|e| self.err(e))?;
            self.valid_until = now + self.ttl;
            return Ok(Ensured::Continued);
        }
        let others_wrote = self.take_next_epoch().await?;
        Ok(Ensured::Retaken { others_wrote })
    }

    /// Gives the lease up so that a waiting process can take it at once.
    /// Does nothing if the lease already lapsed (it may be someone else's).
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        if !self.is_valid() {
            return Ok(());
        }
        let rec = self.record(self.epoch, true);
        let body = Bytes::from(serde_json::to_vec_pretty(&rec).unwrap_or_default());
        self.store
            .put(&epoch_key(self.epoch), body)
            .await
            .map_err(|e| self.err(e))?;
        self.valid_until = Instant::now();
        Ok(())
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
        // A learns it before writing, and does not write.
        assert!(matches!(
            a.ensure().await,
            Err(LeaseError::Busy { epoch: 2, .. })
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

    fn memory() -> (crate::store::memory::MemoryStore, DynStore) {
        let m = crate::store::memory::MemoryStore::new("lease");
        (m.clone(), std::sync::Arc::new(m))
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
}
