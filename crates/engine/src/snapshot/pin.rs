//! The WAL pin of `watch`: a read transaction held between snapshots so that
//! the application's WAL cannot restart behind our back, and a brief, safe
//! reset when it has grown.
//!
//! Why: a snapshot finds its changed pages in the WAL frames committed since
//! the previous snapshot's position. SQLite restarts the WAL (overwrites it
//! from the start) once a checkpoint has copied every frame into the db, and
//! an application checkpoints every 1000 pages by default; when that happened
//! twice between two snapshots, or the new WAL overwrote the old frames, the
//! page numbers were gone and the snapshot hashed every chunk of the db:
//! 920 ms at 293 MiB, seconds at 1 GiB (issue 18). A snapshot that full-scans
//! takes long, which made the next restart-in-between more likely still.
//!
//! What the pin guarantees, from SQLite's WAL locking (wal.c): while a read
//! transaction is open, a checkpoint cannot copy frames the reader may still
//! need, and a writer restarts the WAL only when every frame is copied and no
//! reader uses the WAL. A reader that began when the WAL was fully copied
//! reads the db file alone (read-mark 0) and lets exactly one restart happen,
//! but then blocks every later copy, so no second one. So while pinned, the
//! WAL is the generation it was when the pin began, or the one generation
//! after it, which holds only frames committed after the pin began. The
//! pinned WAL cannot be deleted either (the application's last close
//! checkpoints and deletes it only when no other connection is open).
//!
//! The cost: the application's checkpoints cannot catch up while we pin, so
//! the WAL grows. Once it holds [`RESET_FRAMES`] frames (after a snapshot),
//! [`Pin::reset`] lets it restart safely: take the write lock (`BEGIN
//! IMMEDIATE` on our own connection, so no commit can slip in), record the
//! pages of every frame since the last snapshot's position, release the
//! pin, run a PASSIVE checkpoint, pin again, release the write lock. The
//! recorded pages ([`Carry`]) join the next snapshot's changed set. The
//! application's writers wait for the write lock for as long as that takes
//! (the checkpoint copies at most about [`RESET_FRAMES`] pages and syncs):
//! measured in tests/snapshot.rs and bench/RESULTS.md, milliseconds.
//!
//! The guarantee rests on our locks lasting: they are POSIX locks, and one
//! `close()` of any descriptor of the db or its `-shm` anywhere in this
//! process drops them all (SQLite's own connections avoid that; raw reads
//! must go through `wal::read_prefix`, which uses a handle the pin keeps
//! open). tests/snapshot.rs checks the pin against another process.
//!
//! The pin is in memory only: after a restart of `watch` the first snapshot
//! may full-scan, as before. In rollback-journal mode a read transaction
//! would block the writer, so there is no pin.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::reader;
use super::wal::WalFile;
use crate::Error;
use crate::format::WalPosition;

/// WAL frames after which [`Pin::reset`] lets the WAL restart: SQLite's own
/// autocheckpoint threshold (and Litestream's minimum checkpoint), so the
/// application's WAL stays about as large as it would be without us.
pub const RESET_FRAMES: u32 = 1000;

/// How long a reset waits for the application's write lock before giving
/// up until the next snapshot (waiting blocks nobody).
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(1);

/// WAL salts: which generation of the WAL a frame belongs to.
pub(crate) type Generation = (u32, u32);

/// Pages committed between the previous snapshot's WAL position and `to`,
/// recorded by a reset (the frames themselves are gone after it).
#[derive(Debug, Clone)]
pub(crate) struct Carry {
    /// The previous snapshot's position the pages start from; the carry only
    /// applies to a snapshot building on that position.
    pub from: Option<WalPosition>,
    /// The last commit of the WAL when it was reset.
    pub to: WalPosition,
    /// Every page written by a frame after `from` up to `to`.
    pub pages: BTreeSet<u32>,
}

/// What a pin held since before the previous snapshot's position was taken
/// guarantees to the next snapshot (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct Guarantee {
    /// The WAL generation when the pin began; `None` when the WAL had no
    /// valid header (no frames).
    pub generation: Option<Generation>,
    /// Pages recorded by a reset since the previous snapshot; the pin then
    /// began at `carry.to`.
    pub carry: Option<Carry>,
}

/// What one reset did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct WalReset {
    /// Frames in the WAL when it was reset.
    pub frames: u32,
    /// Frames the checkpoint copied into the db (all of them unless an
    /// application reader was behind).
    pub checkpointed: u32,
    /// How long we held the write lock: the longest any application commit
    /// waited for us.
    pub write_lock_held: Duration,
    /// Whether the changed pages were carried over (else the next snapshot
    /// full-scans).
    pub carried: bool,
}

/// A held read transaction on the database (WAL mode only).
#[derive(Debug)]
pub(crate) struct Pin {
    db: PathBuf,
    conn: Connection,
    /// Opened at the first reset: our connection for `BEGIN IMMEDIATE`.
    writer: Option<Connection>,
    /// The WAL generation when the read transaction began.
    generation: Option<Generation>,
    /// Whether the generation is known (it did not change while pinning).
    known: bool,
    /// Whether the pin has been held since before the previous snapshot's
    /// position was taken.
    pub covers_prev: bool,
    /// Pages recorded by resets since the previous snapshot.
    pub carry: Option<Carry>,
    /// The db and `-shm` kept open, so that reading them never closes a
    /// descriptor (which would drop the pin's locks). Dropped last.
    _files: Option<super::wal::Held>,
}

fn generation(wal: &Path) -> std::io::Result<Option<Generation>> {
    Ok(WalFile::open(wal)?
        .and_then(|w| w.header)
        .map(|h| (h.salt1, h.salt2)))
}

impl Pin {
    /// Pins `db`; `Ok(None)` when it is not in WAL mode (a read transaction
    /// would then block the writer).
    pub fn open(db: &Path) -> Result<Option<Pin>, Error> {
        // The header says WAL mode (read/write versions 2) without taking
        // any SQLite lock: a rollback-journal db, where every snapshot asks
        // again, costs no connection (nor a busy wait behind its writer).
        let mut header = [0u8; 20];
        let n = super::wal::read_prefix(db, &mut header).map_err(|e| Error::io(db, e))?;
        if n < 20 || header[18] != 2 {
            return Ok(None);
        }
        let conn = reader::open(db)?;
        let mut pin = Pin {
            db: db.to_path_buf(),
            conn,
            writer: None,
            generation: None,
            known: false,
            covers_prev: false,
            carry: None,
            _files: None,
        };
        if !pin.begin()? {
            return Ok(None);
        }
        // After BEGIN, which creates the -shm if it did not exist.
        let mut shm = db.as_os_str().to_owned();
        shm.push("-shm");
        pin._files = Some(super::wal::hold(&[db, Path::new(&shm)]).map_err(|e| Error::io(db, e))?);
        Ok(Some(pin))
    }

    fn wal(&self) -> PathBuf {
        reader::wal_path(&self.db)
    }

    /// Begins the read transaction; `false` (and none held) outside WAL mode.
    fn begin(&mut self) -> Result<bool, Error> {
        let err = |e| Error::sqlite(&self.db, e);
        let wal = self.wal();
        let before = generation(&wal).map_err(|e| Error::io(&wal, e))?;
        self.conn.execute_batch("BEGIN").map_err(err)?;
        // The first read starts the transaction; journal_mode is read inside
        // it, so a switch to rollback mode just before cannot leave us
        // holding a SHARED lock that blocks the writer.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(err)?;
        let _: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Ok(false);
        }
        let after = generation(&wal).map_err(|e| Error::io(&wal, e))?;
        // A restart between the two reads: which generation we pinned is
        // unknown, so the pin guarantees nothing (the snapshot then falls
        // back to following the restart, or a full scan).
        self.known = before == after;
        self.generation = before;
        Ok(true)
    }

    /// The guarantee for a snapshot building on the previous one, if the pin
    /// has been held since before that one's position was taken.
    pub fn guarantee(&self) -> Option<Guarantee> {
        (self.known && self.covers_prev).then(|| Guarantee {
            generation: self.generation,
            carry: self.carry.clone(),
        })
    }

    /// Frames in the WAL (published in the wal-index) when some are not
    /// yet checkpointed, else 0: a WAL already fully checkpointed restarts
    /// at the next commit by itself, resetting it again would only take the
    /// write lock for nothing.
    pub fn wal_frames(&self) -> u32 {
        let mut shm = self.db.clone().into_os_string();
        shm.push("-shm");
        let shm = Path::new(&shm);
        let Ok(Some((mx, _, _))) = super::wal::published(shm) else {
            return 0;
        };
        match super::wal::backfilled(shm) {
            Ok(Some(n)) if n >= mx => 0,
            _ => mx,
        }
    }

    /// Lets the WAL restart without losing track of its pages: see the module
    /// doc. `prev` is the previous snapshot's position. `Ok(None)` when the
    /// application held the write lock too long (the pin is kept; the next
    /// snapshot tries again). On error the pin may be lost: the caller drops
    /// it (the next snapshot then has no guarantee).
    pub fn reset(&mut self, prev: Option<&WalPosition>) -> Result<Option<WalReset>, Error> {
        let db = self.db.clone();
        let err = |e| Error::sqlite(&db, e);
        let writer = match self.writer.take() {
            Some(w) => w,
            None => {
                let w = reader::open(&db)?;
                w.execute_batch("PRAGMA query_only = 0").map_err(err)?;
                w.busy_timeout(WRITE_LOCK_WAIT).map_err(err)?;
                w
            }
        };
        let writer = &*self.writer.insert(writer);
        match writer.execute_batch("BEGIN IMMEDIATE") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                tracing::debug!(db = %db.display(), "wal reset: write lock busy; next time");
                return Ok(None);
            }
            r => r.map_err(err)?,
        }
        let locked = Instant::now();
        let result = self.reset_locked(prev);
        let writer = self.writer.as_ref().expect("inserted above");
        let rolled_back = writer.execute_batch("ROLLBACK").map_err(err);
        let held = locked.elapsed();
        let mut r = result?;
        rolled_back?;
        r.write_lock_held = held;
        Ok(Some(r))
    }

    /// The part of [`Pin::reset`] under the write lock.
    fn reset_locked(&mut self, prev: Option<&WalPosition>) -> Result<WalReset, Error> {
        let wal = self.wal();
        // No commit can happen now: the WAL's last commit is final.
        let scan = reader::wal_pre(&wal, prev, self.guarantee().as_ref())
            .map_err(|e| Error::io(&wal, e))?;
        let frames = scan.f0.as_ref().map_or(0, |p| p.frame);
        let carry = match (scan.f0, scan.pages) {
            (Some(to), Some(pages)) => Some(Carry {
                from: prev.cloned(),
                to,
                pages,
            }),
            _ => None,
        };
        let err = |e| Error::sqlite(&self.db, e);
        self.conn.execute_batch("ROLLBACK").map_err(err)?;
        let (busy, log, checkpointed): (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(err)?;
        // Pinned again before the write lock goes: the generation we pin is
        // the one whose last commit `carry.to` is, and the restart that the
        // next commit may do is the one the pin lets through.
        if !self.begin()? {
            return Err(Error::Other(format!(
                "{}: no longer in WAL mode",
                self.db.display()
            )));
        }
        tracing::trace!(frames, busy, log, checkpointed, "wal: checkpointed");
        self.covers_prev = carry.is_some();
        self.carry = carry;
        Ok(WalReset {
            frames,
            checkpointed: checkpointed.max(0) as u32,
            write_lock_held: Duration::ZERO,
            carried: self.covers_prev,
        })
    }
}
