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
         valid until {expires}); two writers would interleave two histories"
    )]
    Busy {
        /// The replica, as described by the store.
        replica: String,
        /// Who holds it (`host pid id`).
        holder: String,
        /// The holder's epoch.
        epoch: u64,
        /// When the holder's lease lapses unless renewed.
        expires: chrono::DateTime<chrono::Utc>,
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
}

impl LeaseRecord {
    fn holder(&self) -> String {
        format!("host {} pid {} id {}", self.host, self.pid, self.owner)
    }

    /// Whether a process other than the holder may take over now.
    fn is_free(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        let ttl = (self.expires - self.acquired).to_std().unwrap_or_default();
        let skew = SKEW.min(ttl / 4);
        self.released || now > self.expires + chrono::Duration::from_std(skew).unwrap_or_default()
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
    /// Tries once to take the lease of `store`'s prefix for `ttl`.
    pub async fn try_acquire(store: DynStore, ttl: Duration) -> Result<Self, LeaseError> {
        let owner = format!("{:016x}", rand::random::<u64>());
        let mut lease = Lease {
            store,
            ttl,
            owner,
            host: host_name(),
            epoch: 0,
            valid_until: Instant::now(),
            acquired: chrono::Utc::now(),
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
    ) -> Result<Self, LeaseError> {
        let mut announced = false;
        loop {
            match Self::try_acquire(store.clone(), ttl).await {
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
        }
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
                Some((epoch, Some(rec))) => {
                    return Err(LeaseError::Busy {
                        replica: self.store.describe(),
                        holder: rec.holder(),
                        epoch: *epoch,
                        expires: rec.expires,
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
        let mut a = Lease::try_acquire(s.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(a.epoch(), 1);
        let err = Lease::try_acquire(s.clone(), Duration::from_secs(60))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LeaseError::Busy { epoch: 1, .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        a.release().await.unwrap();
        let b = Lease::try_acquire(s.clone(), Duration::from_secs(60))
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
        let mut a = Lease::try_acquire(s.clone(), ttl).await.unwrap();
        let before = m.total_requests();
        assert_eq!(a.ensure().await.unwrap(), Ensured::Continued);
        assert_eq!(m.total_requests(), before, "a fresh lease needs no request");
        // Idle past the TTL (and the skew others allow): B takes over.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut b = Lease::try_acquire(s.clone(), Duration::from_secs(60))
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
        assert!(Lease::try_acquire(s.clone(), ttl).await.is_err());
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
        let mut a = Lease::try_acquire(s.clone(), Duration::from_millis(200))
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
        let attempts = (0..8).map(|_| Lease::try_acquire(s.clone(), Duration::from_secs(60)));
        let results = futures::future::join_all(attempts).await;
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{results:?}");
    }
}
