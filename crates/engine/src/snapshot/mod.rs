//! Consistent, incremental snapshots of a live SQLite database.
//!
//! Pages are read through SQLite (`sqlite_dbpage`) inside one read
//! transaction, never by copying the file, so a snapshot is always a state
//! some writer committed, and reading never blocks the writer. Changed pages
//! are found from the WAL's new frames when possible, else by hashing every
//! chunk; `watch` pins the WAL ([`pin`]) so that in steady state it always
//! is possible.
//!
//! The reading side ([`reader`]) runs on a blocking thread and streams
//! compressed objects through a small bounded channel to the uploader here,
//! so memory stays at a few chunks whatever the database size. The manifest
//! is written last, only after every object it names is stored; an
//! incremental snapshot's delta pack travels inside the manifest object, so
//! in steady state a snapshot is exactly one PUT.

mod pin;
mod reader;
pub mod wal;

pub use pin::{RESET_FRAMES, WalReset};

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::Error;
use crate::crypto::{self, Key};
use crate::format::{self, ChunkRef, Manifest};
use crate::manifest;
use crate::store::{DynStore, StoreError};

/// Objects uploaded concurrently. Small: packs are several MiB, so a few in
/// flight keep a link busy while bounding memory; some S3-compatible stores
/// (R2) throttle beyond a few concurrent uploads.
const UPLOAD_CONCURRENCY: usize = 4;

/// What one call to [`Snapshotter::snapshot`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SnapshotReport {
    /// The new snapshot's id; `None` when the db had not changed and nothing
    /// was uploaded.
    pub id: Option<String>,
    /// Objects uploaded (manifest included).
    pub uploaded_objects: u64,
    /// Bytes uploaded (manifest included).
    pub uploaded_bytes: u64,
    /// Size of the database image in bytes.
    pub db_size: u64,
    /// Whether every page had to be read (no usable WAL position).
    pub full_scan: bool,
    /// Whether the new snapshot is a base (lists every chunk) rather than a
    /// delta on top of one.
    pub base: bool,
    /// Pages written into the new snapshot's delta pack (0 for a base).
    pub delta_pages: u64,
    /// The new snapshot's `db.image_sha256`.
    pub image_sha256: Option<String>,
    /// The WAL reset done after this snapshot, if the pinned WAL had grown
    /// past its threshold (see [`Snapshotter::with_wal_pin`]).
    pub wal_reset: Option<WalReset>,
}

/// The base snapshot a history's incremental snapshots build on, with what
/// each of them needs from its chunk list derived once per base instead of
/// once per snapshot. Why: a 1 GiB db's base lists 4,100 chunks, and parsing
/// their hex digests, summing their packs and cloning them into a lookup map
/// on every snapshot was the part of a steady-state snapshot that grew with
/// the db (perf of `watch` at 1 GiB, bench/RESULTS.md, issue 18).
#[derive(Debug)]
pub(crate) struct Base {
    /// The base manifest's chunks, in order.
    pub chunks: Vec<ChunkRef>,
    /// Each chunk's content digest, parsed (`None` for a malformed one,
    /// which then never matches).
    pub digests: Vec<Option<[u8; 32]>>,
    /// Stored bytes of the distinct objects the chunks need (each pack whole).
    pub stored: u64,
}

impl Base {
    /// Derives the digests and stored size of `chunks`.
    pub(crate) fn new(chunks: Vec<ChunkRef>) -> Base {
        let digests = chunks
            .iter()
            .map(|c| format::parse_sha256(&c.sha256))
            .collect();
        let stored = reader::unique_stored(&chunks);
        Base {
            chunks,
            digests,
            stored,
        }
    }
}

/// What a snapshotter remembers between calls: the last manifest and what
/// is needed to continue incrementally from it.
#[derive(Debug, Clone)]
pub(crate) struct State {
    /// The newest manifest of this history. When it is a base, its chunk
    /// list lives in `base` only (`last.chunks` is empty), so cloning the
    /// state for a snapshot copies no per-chunk data.
    pub last: Manifest,
    /// Its base.
    pub base: Arc<Base>,
    /// The content sha256 of each chunk of `last`'s image.
    pub effective: Vec<[u8; 32]>,
}

impl State {
    /// Builds the state from a manifest and its base's chunk list, checking
    /// that together they reproduce the manifest's image digest.
    fn new(mut last: Manifest, base: Arc<Base>) -> Option<State> {
        last.chunks = Vec::new();
        let n = format::chunk_count(last.db.page_size, last.db.page_count) as usize;
        let mut effective = Vec::with_capacity(n);
        for i in 0..n {
            effective.push(match last.chunk_overrides.get(&(i as u32)) {
                Some(h) => format::parse_sha256(h)?,
                None => (*base.digests.get(i)?)?,
            });
        }
        let digest = format::image_digest(last.db.page_size, last.db.page_count, &effective);
        (digest == last.db.image_sha256).then_some(State {
            last,
            base,
            effective,
        })
    }
}

/// One object for the uploader.
#[derive(Debug)]
pub(crate) struct Upload {
    pub key: String,
    pub body: Bytes,
}

/// Takes snapshots of one database into one replica, remembering between
/// calls where the last one ended so that the next reads only what changed.
#[derive(Debug)]
pub struct Snapshotter {
    db: PathBuf,
    store: DynStore,
    /// `None` until loaded from the replica (or after the first snapshot).
    state: Option<State>,
    /// Whether the replica has been looked at for a previous manifest.
    loaded: bool,
    /// Encrypts objects and signs manifests when set.
    key: Option<Arc<Key>>,
    /// Target stored size of a chunk pack.
    pack_bytes: usize,
    /// Whether to pin the WAL between snapshots ([`pin`]).
    wal_pin: bool,
    /// WAL frames after which a pinned WAL is reset.
    reset_frames: u32,
    /// The pin, once taken.
    pin: Option<pin::Pin>,
    /// Recorded in every manifest (see [`format::fenced`]).
    writer: Option<format::Writer>,
    /// The wall clock for ids and `created`; `None` is the system's.
    clock: Option<Clock>,
}

/// A wall clock: what time a snapshot is taken at (its id and `created`).
/// Simulations script it to run a day of snapshots in minutes
/// (`crates/engine/tests/steady_day.rs`).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>);

impl Clock {
    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The time now.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

impl Snapshotter {
    /// A snapshotter for `db` writing to `store`. Nothing is read until
    /// [`Snapshotter::snapshot`] is called.
    pub fn new(db: impl Into<PathBuf>, store: DynStore) -> Self {
        Self {
            db: db.into(),
            store,
            state: None,
            loaded: false,
            key: None,
            pack_bytes: reader::pack_target(),
            wal_pin: false,
            reset_frames: RESET_FRAMES,
            pin: None,
            writer: None,
            clock: None,
        }
    }

    /// Takes snapshot times (ids and `created`) from `clock` instead of the
    /// system clock: for simulations of long runs.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Sets the lease holder recorded in the next manifests (`None`: none,
    /// as `snapshot` writes without a lease).
    pub fn set_writer(&mut self, writer: Option<format::Writer>) {
        self.writer = writer;
    }

    /// The database this snapshotter reads.
    pub fn db(&self) -> &std::path::Path {
        &self.db
    }

    /// Holds a read transaction on the database between snapshots (WAL mode
    /// only) so that the WAL cannot restart unseen, and resets it safely
    /// after a snapshot once it holds `RESET_FRAMES` frames: in steady state
    /// no snapshot then reads the whole db (issue 18). For the long-lived
    /// `watch`; a one-shot snapshot has nothing to pin for. The reset briefly
    /// takes the database's write lock and checkpoints (see `pin`).
    pub fn with_wal_pin(mut self, on: bool) -> Self {
        self.wal_pin = on;
        self
    }

    /// Sets the WAL size (frames) that triggers a reset of a pinned WAL
    /// (default [`RESET_FRAMES`]); tests make it small.
    pub fn with_wal_reset_frames(mut self, frames: u32) -> Self {
        self.reset_frames = frames.max(1);
        self
    }

    /// Sets the target stored size of chunk packs (default 2 MiB, or
    /// `MAILSAFE_PACK_BYTES`); small packs let tests make many from a small
    /// db, benchmarks compare sizes.
    pub fn with_pack_bytes(mut self, bytes: usize) -> Self {
        self.pack_bytes = bytes.max(1);
        self
    }

    /// Encrypts every object and signs every manifest with `key` (no
    /// encryption when `None`). The replica's newest snapshot must have been
    /// written with the same key (or none, without one): one prefix never
    /// mixes keys, so [`Snapshotter::snapshot`] refuses to continue otherwise.
    pub fn with_key(mut self, key: Option<Arc<Key>>) -> Self {
        self.key = key;
        self
    }

    /// Takes one snapshot: uploads what changed since the previous one and
    /// writes its manifest last. Uploads nothing if nothing changed. With a
    /// WAL pin, then resets the WAL if it has grown (also after a failed
    /// attempt: an outage must not let the WAL grow without bound).
    pub async fn snapshot(&mut self) -> Result<SnapshotReport, Error> {
        let mut result = self.snapshot_once().await;
        let reset = self.reset_if_grown().await;
        if let Ok(r) = &mut result {
            r.wal_reset = reset;
        }
        result
    }

    /// Resets the pinned WAL if it holds `reset_frames` frames or more.
    async fn reset_if_grown(&mut self) -> Option<WalReset> {
        if self.pin.as_ref()?.wal_frames() < self.reset_frames {
            return None;
        }
        let mut pin = self.pin.take()?;
        let prev = self.state.as_ref().and_then(|s| s.last.source.wal.clone());
        let done = tokio::task::spawn_blocking(move || {
            let r = pin.reset(prev.as_ref());
            (r, pin)
        })
        .await;
        match done {
            Ok((Ok(r), pin)) => {
                self.pin = Some(pin);
                if let Some(r) = r {
                    tracing::debug!(
                        db = %self.db.display(),
                        frames = r.frames,
                        checkpointed = r.checkpointed,
                        carried = r.carried,
                        write_lock_held_us = r.write_lock_held.as_micros() as u64,
                        "wal reset"
                    );
                }
                r
            }
            Ok((Err(e), _)) => {
                // The pin is dropped: the WAL is free to restart, and the
                // next snapshot follows it as best it can (maybe a full scan).
                tracing::warn!(db = %self.db.display(), error = %e, "could not reset the pinned WAL; unpinned");
                None
            }
            Err(e) => {
                tracing::warn!(db = %self.db.display(), error = %e, "WAL reset panicked; unpinned");
                None
            }
        }
    }

    async fn snapshot_once(&mut self) -> Result<SnapshotReport, Error> {
        if !self.loaded {
            self.state = load_state(&self.store, self.key.as_deref()).await?;
            self.loaded = true;
        }
        // One object queued: packs are several MiB each, so memory is about
        // (building + queued + UPLOAD_CONCURRENCY in flight) packs.
        let (tx, rx) = tokio::sync::mpsc::channel::<Upload>(1);
        let db = self.db.clone();
        let prev = self.state.clone();
        let key = self.key.clone();
        let pack_bytes = self.pack_bytes;
        let mut pin = self.pin.take();
        let wal_pin = self.wal_pin;
        let clock = self.clock.clone();
        let reader = tokio::task::spawn_blocking(move || {
            if wal_pin && pin.is_none() {
                // Taken before the read: the position it records is then
                // covered by the pin.
                match pin::Pin::open(&db) {
                    Ok(p) => pin = p,
                    Err(e) => tracing::debug!(db = %db.display(), error = %e, "cannot pin the WAL"),
                }
            }
            let pinned = pin.as_ref().and_then(pin::Pin::guarantee);
            let r = reader::read(
                &db,
                prev.as_ref(),
                key.as_deref(),
                pack_bytes,
                tx,
                pinned.as_ref(),
                clock.as_ref(),
            );
            (r, pin)
        });
        let uploaded = upload_all(&self.store, rx).await;
        let (outcome, pin) = reader
            .await
            .map_err(|e| Error::Other(format!("snapshot of {}: {e}", self.db.display())))?;
        self.pin = pin;
        // An upload error is the cause when both failed: the reader only
        // stops because the uploader hung up.
        let (mut objects, mut bytes) = uploaded?;
        let outcome = outcome?;

        let mut m = match outcome {
            reader::Outcome::Unchanged { source } => {
                let db_size = self.state.as_ref().map_or(0, |s| s.last.db.image_size());
                if let Some(s) = &mut self.state {
                    // Not persisted: a new process re-reads from the stored
                    // (older) position, which is merely more work.
                    s.last.source = source;
                }
                self.pin_covers_state();
                return Ok(SnapshotReport {
                    db_size,
                    ..Default::default()
                });
            }
            reader::Outcome::Changed(c) => c,
        };

        // stored_bytes counts every object the snapshot needs, itself
        // included, and an embedded delta's offset is where the JSON ends;
        // both depend on the JSON's own length, so settle it by iterating
        // (the length only grows, by a digit at a time, so this ends fast).
        m.manifest.writer = self.writer.clone();
        let needed = m.manifest.stats.stored_bytes;
        let delta = m.delta.take();
        let embed_len = delta.as_ref().map_or(0, |d| 1 + d.len() as u64);
        m.manifest.stats.new_objects = objects + 1;
        let mut json_len = 0u64;
        let json = loop {
            m.manifest.stats.new_bytes = bytes + json_len + embed_len;
            m.manifest.stats.stored_bytes = needed + json_len + embed_len.min(1);
            if delta.is_some() {
                let own = m
                    .manifest
                    .deltas
                    .last_mut()
                    .expect("an incremental manifest lists its own delta last");
                own.manifest_offset = Some(json_len + 1);
            }
            if let Some(k) = &self.key {
                // Signed last, over the final fields; the MAC has a fixed
                // length, so the size settles as without a key.
                k.sign_manifest(&mut m.manifest);
            }
            let json = m.manifest.to_json();
            if json.len() as u64 == json_len {
                break json;
            }
            json_len = json.len() as u64;
        };
        let body = format::manifest_object(&json, delta.as_deref());
        let key = format::manifest_key(&m.manifest.id);
        let len = body.len() as u64;
        // One PUT commits the snapshot: the manifest, with an incremental
        // snapshot's delta pack inside it.
        self.store.put_if_absent(&key, Bytes::from(body)).await?;
        objects += 1;
        bytes += len;
        if m.manifest.is_base() {
            // The anchor lets readers skip the history before this base (at
            // most one re-base per 64 snapshots, so this PUT is rare); a
            // failure only makes their listing longer.
            if let Err(e) =
                crate::history::advance_anchor(self.store.as_ref(), &m.manifest.id).await
            {
                tracing::warn!(error = %e, "could not move the history anchor; readers will list further back");
            }
        }

        let report = SnapshotReport {
            id: Some(m.manifest.id.clone()),
            uploaded_objects: objects,
            uploaded_bytes: bytes,
            db_size: m.manifest.db.image_size(),
            full_scan: m.full_scan,
            base: m.manifest.is_base(),
            delta_pages: m.delta_pages,
            image_sha256: Some(m.manifest.db.image_sha256.clone()),
            wal_reset: None,
        };
        tracing::debug!(db = %self.db.display(), id = %m.manifest.id, objects, bytes, "snapshot written");
        // A base's chunk list is in `m.base` already.
        m.manifest.chunks = Vec::new();
        self.state = Some(State {
            last: m.manifest,
            base: m.base,
            effective: m.effective,
        });
        self.pin_covers_state();
        Ok(report)
    }

    /// The state's position was just taken by a read that began while the
    /// pin was held: the pin covers it, and any carry is spent.
    fn pin_covers_state(&mut self) {
        if let Some(p) = &mut self.pin {
            p.covers_prev = true;
            p.carry = None;
        }
    }
}

/// Uploads everything the reader sends, [`UPLOAD_CONCURRENCY`] at a time.
/// Returns (objects, bytes) uploaded. On the first failure it stops and
/// drops the channel, which stops the reader.
async fn upload_all(
    store: &DynStore,
    mut rx: tokio::sync::mpsc::Receiver<Upload>,
) -> Result<(u64, u64), Error> {
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    stream
        .map(|u| {
            let store = store.clone();
            async move {
                let n = u.body.len() as u64;
                store.put(&u.key, u.body).await?;
                Ok::<u64, StoreError>(n)
            }
        })
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_fold((0u64, 0u64), |(o, b), n| async move { Ok((o + 1, b + n)) })
        .await
        .map_err(Error::from)
}

/// Refuses to continue a replica whose newest snapshot was written under
/// another encryption setting (another key, or encrypted vs. plaintext):
/// restore, verify and retention read a prefix with one key, so mixing would
/// leave snapshots nobody can restore with the configured key. The message
/// names the key ids, never key material.
fn check_same_key(m: &Manifest, key: &str, enc: Option<&Key>) -> Result<(), Error> {
    let refuse = |why: String| {
        Err(Error::Usage(format!(
            "{key}: {why}; one replica prefix holds snapshots of one key only (use a new prefix, or the key it was written with)"
        )))
    };
    match (&m.encryption, enc) {
        (None, None) => Ok(()),
        (None, Some(k)) => refuse(format!(
            "the replica's newest snapshot is not encrypted but an encryption key (id {}) is configured",
            k.id()
        )),
        (Some(e), None) => refuse(format!(
            "the replica's newest snapshot is encrypted (key id {}) but no encryption key is configured (--encryption-key-file or ${})",
            e.key_id,
            crypto::KEY_ENV
        )),
        (Some(e), Some(k)) if e.key_id != k.id() => refuse(format!(
            "the replica's newest snapshot is encrypted with key id {}, the configured key has id {}",
            e.key_id,
            k.id()
        )),
        (Some(_), Some(_)) => Ok(()),
    }
}

/// Reads a manifest through the one reader ([`crate::manifest`]),
/// authenticating it when encrypting; `None` when it is missing or unusable
/// (the caller then starts a fresh base). A manifest written under another
/// key is an error (see [`check_same_key`]), checked before authentication
/// so that the message says which keys differ.
async fn read_manifest(
    store: &DynStore,
    key: &str,
    enc: Option<&Key>,
) -> Result<Option<Manifest>, Error> {
    let parsed = match manifest::fetch(store.as_ref(), key).await {
        Ok(b) => manifest::parse(key, &b),
        Err(Error::Store(StoreError::NotFound { .. })) => return Ok(None),
        Err(Error::Store(e)) => return Err(e.into()),
        Err(e) => Err(e),
    };
    let m = match parsed {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "manifest unusable; next snapshot is a full base");
            return Ok(None);
        }
    };
    check_same_key(&m, key, enc)?;
    if let Err(e) = manifest::authenticate(&m, key, enc) {
        // Same key id but a bad MAC: forged or damaged. Never build on it.
        tracing::warn!(error = %e, "manifest failed authentication; next snapshot is a full base");
        return Ok(None);
    }
    Ok(Some(m))
}

/// Finds the newest manifest in the replica that a fenced writer did not
/// write and that passes its checks ([`crate::history::newest_unfenced`]),
/// and its base, so a new process continues the history incrementally (a
/// planted or late manifest is passed over, not built on). A replica whose newest manifest cannot be used (corrupt,
/// unknown version, missing base, failed authentication) is not an error
/// here: the next snapshot is then a fresh base, which is always correct. A
/// newest manifest written under another encryption key is an error (see
/// [`check_same_key`]).
async fn load_state(store: &DynStore, enc: Option<&Key>) -> Result<Option<State>, Error> {
    let last = match crate::history::newest_unfenced(store.as_ref(), enc).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        Err(e @ Error::Store(_)) => return Err(e),
        // No usable manifest among the newest: the listed newest says why
        // (another key is refused) or the next snapshot is a fresh base.
        Err(e) => {
            if let Some(id) = crate::history::newest_id(store.as_ref()).await? {
                read_manifest(store, &format::manifest_key(&id), enc).await?;
            }
            tracing::warn!(error = %e, "no usable manifest; next snapshot is a full base");
            return Ok(None);
        }
    };
    let key = &format::manifest_key(&last.id);
    let mut last = last;
    let base = if last.is_base() {
        Arc::new(Base::new(std::mem::take(&mut last.chunks)))
    } else {
        let base_key = format::manifest_key(&last.base);
        match read_manifest(store, &base_key, enc).await? {
            Some(b) if b.is_base() => Arc::new(Base::new(b.chunks)),
            _ => {
                tracing::warn!(key = %base_key, "base manifest unusable; next snapshot is a full base");
                return Ok(None);
            }
        }
    };
    let state = State::new(last, base);
    if state.is_none() {
        tracing::warn!(
            key,
            "newest manifest's chunks do not match its image digest; next snapshot is a full base"
        );
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Scene;

    /// What a snapshotter carries between snapshots (the base's parsed
    /// digests and stored size, derived once per base; a base manifest's
    /// chunk list kept only there) must be exactly what a new process
    /// derives from the replica, after deltas and after a re-base: a stale
    /// carried base would make later deltas name wrong overrides.
    #[tokio::test]
    async fn carried_base_is_what_the_replica_says_across_deltas_and_rebases() {
        let sc = Scene::new();
        // ~2 MiB of incompressible rows: several chunks, and deltas of a
        // few small rows stay far below a quarter of the base, so the
        // re-base comes from the 64-delta limit.
        sc.conn
            .execute_batch(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 600)
                 INSERT INTO t SELECT randomblob(3000) FROM c;",
            )
            .unwrap();
        let mut w = Snapshotter::new(&sc.db, sc.store.clone());
        let mut bases = 0;
        for row in 0..(reader::MAX_DELTAS as i64 + 3) {
            sc.snap(&mut w, row).await;
            let carried = w.state.clone().unwrap();
            let loaded = load_state(&sc.store, None).await.unwrap().unwrap();
            assert_eq!(carried.last.id, loaded.last.id);
            assert!(carried.last.chunks.is_empty() && loaded.last.chunks.is_empty());
            assert!(
                carried.base.chunks.len() >= 8,
                "{}",
                carried.base.chunks.len()
            );
            assert_eq!(carried.base.chunks, loaded.base.chunks, "row {row}");
            assert_eq!(carried.base.digests, loaded.base.digests, "row {row}");
            assert_eq!(carried.base.stored, loaded.base.stored, "row {row}");
            assert_eq!(carried.effective, loaded.effective, "row {row}");
            assert_eq!(
                carried.last.chunk_overrides, loaded.last.chunk_overrides,
                "row {row}"
            );
            bases += usize::from(carried.last.is_base());
        }
        // The first snapshot and the re-base after 64 deltas.
        assert_eq!(bases, 2);
    }
}
