//! The blocking half of a snapshot: opens the database, holds one read
//! transaction, decides which pages changed, and packs chunks / delta packs
//! for the uploader.
//!
//! Everything that determines the snapshot's content happens inside that one
//! read transaction, so the image is exactly one committed state even while
//! the application writes. In WAL mode the transaction never blocks the
//! writer; this reader never checkpoints (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`,
//! and `query_only` so this connection cannot write): only `watch`'s WAL
//! pin does, briefly (see [`super::pin`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc::Sender;

use super::pin::Guarantee;
use super::wal::{ScanEnd, WalFile, WalHeader};
use super::{Base, State, Upload};
use crate::Error;
use crate::crypto::{self, Key};
use crate::format::{
    self, ChunkRef, DbInfo, DeltaHeader, FORMAT_NAME, FORMAT_VERSION, Manifest, ObjectRef,
    SnapshotStats, SourcePosition, WalPosition,
};

/// zstd level for chunks and deltas. On a mail-shaped db (bench/maildb.py,
/// 256 KiB chunks) levels 1, 3, 6 and 9 all store within 0.5% of each other
/// (142 MB of 207 MB; LZ4 198 MB) while CPU grows 1.9 s → 5.5 s, so the
/// cheapest level wins.
const ZSTD_LEVEL: i32 = 1;
/// Re-base after this many deltas, so a restore never fetches more.
pub(super) const MAX_DELTAS: usize = 64;
/// Re-base when the deltas since the base would exceed 1/REBASE_DIVISOR of
/// the base's stored size: restore cost and storage stay within 25% of a
/// fresh base.
const REBASE_DIVISOR: u64 = 4;
/// A delta pack is built in memory; beyond this many uncompressed page bytes
/// a re-base (streamed chunk by chunk) is cheaper and keeps memory bounded.
const MAX_DELTA_BYTES: u64 = 32 << 20;
/// SQLite page cache of our connection (KiB): we read each page once.
const CACHE_KIB: i64 = 512;

/// What the reader found.
pub(crate) enum Outcome {
    /// The image equals the previous snapshot's; nothing was uploaded.
    Unchanged {
        /// Where in the source the (unchanged) image was read.
        source: SourcePosition,
    },
    /// Objects were uploaded; the manifest is ready to be written.
    Changed(Box<Changed>),
}

/// A snapshot whose objects are uploaded (or queued) and whose manifest is
/// complete except for the upload statistics.
pub(crate) struct Changed {
    pub manifest: Manifest,
    pub base: Arc<Base>,
    pub effective: Vec<[u8; 32]>,
    pub full_scan: bool,
    pub delta_pages: u64,
    /// An incremental snapshot's delta pack as stored (compressed, sealed),
    /// to be embedded in its manifest object; `None` for a base.
    pub delta: Option<Vec<u8>>,
}

fn sqlite_err(db: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::sqlite(db, e)
}

/// Refuses a missing path (we never create a database) and a file that is
/// not SQLite, with messages naming the path.
fn check_sqlite_file(db: &Path) -> Result<(), Error> {
    let mut magic = [0u8; 16];
    let n = super::wal::read_prefix(db, &mut magic).map_err(|e| Error::io(db, e))?;
    // A zero-length file is a valid, empty SQLite database.
    if crate::format::sqlite_header(&magic[..n]) != crate::format::SqliteHeader::Other {
        return Ok(());
    }
    Err(Error::Other(format!(
        "{}: not a SQLite database (bad header)",
        db.display()
    )))
}

/// Opens `db` for reading pages: never creates it, never checkpoints on
/// close, and cannot write (`query_only`).
pub(super) fn open(db: &Path) -> Result<Connection, Error> {
    let err = sqlite_err(db);
    // READ_WRITE without CREATE: a WAL-mode reader needs to write the -shm
    // index, but a missing database must never be created by a backup.
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&err)?;
    // Closing the last connection would otherwise checkpoint and delete the
    // application's WAL behind its back.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(&err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(&err)?;
    conn.execute_batch(&format!(
        "PRAGMA query_only = 1; PRAGMA cache_size = -{CACHE_KIB};"
    ))
    .map_err(&err)?;
    Ok(conn)
}

/// The `-wal` file of `db`.
pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut p = OsString::from(db.as_os_str());
    p.push("-wal");
    PathBuf::from(p)
}

/// What the WAL said before our read transaction began.
#[derive(Default)]
pub(super) struct PreScan {
    header: Option<WalHeader>,
    /// The last commit frame before BEGIN: the position we record.
    pub f0: Option<WalPosition>,
    /// Pages committed since the previous snapshot's position, when that
    /// position could be followed.
    pub pages: Option<BTreeSet<u32>>,
    /// The wal-index and the WAL header disagreed (a restart being written).
    in_flight: bool,
}

/// Scans the WAL before BEGIN: from the previous position if it is still in
/// this WAL (or in the generation just before it, with its frames intact, or
/// after it while a [`Pin`](super::pin) guarantees no other restart), else
/// just to find the last commit. A pin's carried pages stand in for the
/// frames before its reset.
pub(super) fn wal_pre(
    path: &Path,
    prev: Option<&WalPosition>,
    pinned: Option<&Guarantee>,
) -> std::io::Result<PreScan> {
    // With a carry, the frames up to `carry.to` are already accounted for.
    let (prev, pinned, carried) = match pinned {
        Some(g) => match &g.carry {
            Some(c) if c.from.as_ref() == prev => (Some(&c.to), Some(g), c.pages.clone()),
            // Carried from another position: the pin began after `prev`.
            Some(_) => (prev, None, BTreeSet::new()),
            None => (prev, Some(g), BTreeSet::new()),
        },
        None => (prev, None, BTreeSet::new()),
    };
    let mut pre = wal_pre_from(path, prev, pinned)?;
    // A pinned WAL restarts at most once, and the writer finishes writing
    // the new header within its commit: looking again shortly settles it
    // (a full scan costs far more than these few milliseconds).
    let mut tries = 0;
    while pre.in_flight && pinned.is_some() && tries < 50 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        pre = wal_pre_from(path, prev, pinned)?;
        tries += 1;
    }
    if let Some(p) = &mut pre.pages {
        p.extend(carried);
    }
    Ok(pre)
}

fn wal_pre_from(
    path: &Path,
    prev: Option<&WalPosition>,
    pinned: Option<&Guarantee>,
) -> std::io::Result<PreScan> {
    // What is published now is visible to our transaction, which starts
    // later; commits in the file beyond it may not be. So F0 is capped here,
    // and the scan after BEGIN picks up whatever lies past it.
    let shm = {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let wal = path.as_os_str().as_bytes();
        let mut b = wal.strip_suffix(b"-wal").unwrap_or(wal).to_vec();
        b.extend_from_slice(b"-shm");
        PathBuf::from(OsString::from_vec(b))
    };
    let published = super::wal::published(&shm)?;
    let Some(mut wal) = WalFile::open(path)? else {
        return Ok(PreScan::default());
    };
    let Some(h) = wal.header else {
        return Ok(PreScan::default());
    };
    let limit = match published {
        Some((mx, s1, s2)) if s1 == h.salt1 && s2 == h.salt2 => mx,
        // Unreadable, or a restart in flight: no position we can prove.
        _ => {
            return Ok(PreScan {
                in_flight: true,
                ..Default::default()
            });
        }
    };
    if let Some(p) = prev {
        if p.salt1 == h.salt1 && p.salt2 == h.salt2 && p.frame <= limit && wal.holds(&h, p)? {
            let s = wal.scan_to(&h, p, limit)?;
            tracing::debug!(
                from = p.frame,
                to = s.commit.frame,
                pages = s.pages.len(),
                "wal: same generation"
            );
            return Ok(PreScan {
                header: Some(h),
                f0: Some(s.commit),
                pages: Some(s.pages),
                in_flight: false,
            });
        }
        // Pinned since before `p` was taken, in `p`'s generation: this is
        // the one restart the pin lets through, which happened before any
        // frame was added after the pin began (so after `p`), and every frame
        // of this generation came after the pin began.
        if let Some(g) = pinned {
            if g.generation == Some((p.salt1, p.salt2)) && h.salt1 == p.salt1.wrapping_add(1) {
                let new = wal.scan_to(&h, &h.start(), limit)?;
                tracing::debug!(
                    from = p.frame,
                    new_to = new.commit.frame,
                    "wal: restart while pinned"
                );
                return Ok(PreScan {
                    header: Some(h),
                    f0: Some(new.commit),
                    pages: Some(new.pages),
                    in_flight: false,
                });
            }
        }
        // The WAL restarted once since `p` (salt-1 is incremented at each
        // restart). A restart needs every old frame checkpointed, and the new
        // WAL overwrites the old one from its start, so the old frames after
        // `p` may still be in the file. The chain continued from `p`'s stored
        // checksum proves each one genuine; what must be shown is that the
        // chain reached the old WAL's end, i.e. nothing after it was lost:
        // - it stops at a whole frame of neither generation (an older
        //   leftover), or
        // - it stops exactly at end-of-file after frame `p` or later, with
        //   frame `p` intact: a WAL truncated (TRUNCATE checkpoint, deleted)
        //   and regrown would have lost or overwritten frame `p`.
        // And the new WAL must not have reached the first old frame we read
        // by the time we are done (it writes sequentially from frame 1), so
        // none of the frames we read was being overwritten.
        if h.salt1 == p.salt1.wrapping_add(1) && p.frame > 0 {
            let old = wal.scan(&h, p)?;
            let complete = match old.end {
                ScanEnd::Invalid { salt1 } => salt1 != h.salt1,
                ScanEnd::Eof => {
                    wal.ends_after(&h, old.valid_frames)
                        && (old.valid_frames > p.frame || wal.holds(&h, p)?)
                }
            };
            if complete {
                let new = wal.scan_to(&h, &h.start(), limit)?;
                let first_old = wal.frame_salt1(&h, p.frame + 1)?;
                tracing::debug!(from = p.frame, old_to = old.commit.frame, old_valid = old.valid_frames, end = ?old.end, new_to = new.commit.frame, ?first_old, "wal: restart");
                if first_old != Some(h.salt1) {
                    let mut pages = old.pages;
                    pages.extend(new.pages);
                    return Ok(PreScan {
                        header: Some(h),
                        f0: Some(new.commit),
                        pages: Some(pages),
                        in_flight: false,
                    });
                }
            }
        }
    }
    let s = wal.scan_to(&h, &h.start(), limit)?;
    // Pinned since before the previous snapshot while the WAL had no
    // header: this generation is the first since, all of it is new.
    let pages = pinned
        .filter(|g| prev.is_none() && g.generation.is_none())
        .map(|_| s.pages.clone());
    if pages.is_some() {
        tracing::debug!(to = s.commit.frame, "wal: new since pinned");
    }
    Ok(PreScan {
        header: Some(h),
        f0: Some(s.commit),
        pages,
        in_flight: false,
    })
}

/// Scans the WAL after BEGIN from F0 to the last commit now visible: our
/// read snapshot lies between the two, so the union of pages covers every
/// change up to it. Returns the position to record (F0, which is never
/// beyond our snapshot) and the changed pages, or `(None, None)` if the WAL
/// restarted meanwhile.
fn wal_post(
    path: &Path,
    pre: PreScan,
    pinned: Option<&Guarantee>,
) -> std::io::Result<(Option<WalPosition>, Option<BTreeSet<u32>>)> {
    let (Some(h), Some(f0)) = (pre.header, pre.f0) else {
        return Ok((None, None));
    };
    let Some(mut wal) = WalFile::open(path)? else {
        return Ok((None, None));
    };
    if let (Some(g), Some(now)) = (pinned, wal.header) {
        // The one restart a pin begun in `h`'s generation lets through
        // (see `pin`): no frame was added to `h` after F0 before it, and all
        // of the new generation is new.
        if g.generation == Some((h.salt1, h.salt2)) && now.salt1 == h.salt1.wrapping_add(1) {
            let s = wal.scan(&now, &now.start())?;
            tracing::debug!(
                from = f0.frame,
                new_to = s.commit.frame,
                "wal: restart while pinned, during the snapshot"
            );
            let pages = pre.pages.map(|mut p| {
                p.extend(s.pages);
                p
            });
            return Ok((Some(f0), pages));
        }
    }
    if wal.header != Some(h) || !wal.holds(&h, &f0)? {
        return Ok((None, None));
    }
    let s = wal.scan(&h, &f0)?;
    let pages = pre.pages.map(|mut p| {
        p.extend(s.pages);
        p
    });
    Ok((Some(f0), pages))
}

/// Reads pages by number inside the read transaction.
struct Pages<'c> {
    stmt: rusqlite::CachedStatement<'c>,
    db: &'c Path,
    page_size: u32,
}

impl Pages<'_> {
    /// Appends page `pgno` to `out`.
    fn read_into(&mut self, pgno: u32, out: &mut Vec<u8>) -> Result<(), Error> {
        let db = self.db;
        let ps = self.page_size as usize;
        let start = out.len();
        self.stmt
            .query_row([pgno], |r| {
                let b = r.get_ref(0)?.as_blob()?;
                out.extend_from_slice(b);
                Ok(())
            })
            .map_err(|e| Error::sqlite(db, e))?;
        if out.len() - start != ps {
            // sqlite_dbpage returns an empty blob for pages past the end.
            out.resize(start + ps, 0);
        }
        Ok(())
    }

    /// Reads chunk `idx` (all its pages up to `page_count`) into `buf`.
    fn read_chunk(
        &mut self,
        idx: u32,
        chunk_pages: u32,
        page_count: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), Error> {
        buf.clear();
        let first = idx * chunk_pages + 1;
        let last = (first + chunk_pages - 1).min(page_count);
        for p in first..=last {
            self.read_into(p, buf)?;
        }
        Ok(())
    }
}

/// Where packed objects go while the read transaction is open.
struct Out<'a> {
    tx: &'a Sender<Upload>,
    /// Rollback-journal mode only: objects are spooled to a temporary file
    /// and uploaded after the transaction ends, because our SHARED lock
    /// would otherwise block the application's writer for the whole upload.
    /// (In WAL mode a reader blocks nobody, so objects stream directly.)
    spool: Option<Spool>,
}

struct Spool {
    file: std::fs::File,
    end: u64,
    index: Vec<(String, u64, usize)>,
}

impl Out<'_> {
    fn send(&mut self, u: Upload) -> Result<(), Error> {
        let Some(sp) = &mut self.spool else {
            return send(self.tx, u);
        };
        use std::os::unix::fs::FileExt;
        sp.file.write_all_at(&u.body, sp.end).map_err(|e| {
            Error::Other(format!("cannot spool {} to a temporary file: {e}", u.key))
        })?;
        sp.index.push((u.key, sp.end, u.body.len()));
        sp.end += u.body.len() as u64;
        Ok(())
    }

    /// Uploads what was spooled (after the read transaction has ended).
    fn flush(&mut self) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let Some(sp) = self.spool.take() else {
            return Ok(());
        };
        for (key, off, len) in sp.index {
            let mut body = vec![0u8; len];
            sp.file
                .read_exact_at(&mut body, off)
                .map_err(|e| Error::Other(format!("cannot read spooled {key}: {e}")))?;
            send(
                self.tx,
                Upload {
                    key,
                    body: Bytes::from(body),
                },
            )?;
        }
        Ok(())
    }
}

/// Compresses (and, with a key, encrypts) chunks not yet stored, appends
/// them to the snapshot's current pack and queues each pack once it reaches
/// its target size, remembering where every chunk is.
struct ChunkSink<'a, 'b> {
    known: HashMap<[u8; 32], ChunkRef>,
    compressor: zstd::bulk::Compressor<'static>,
    out: &'a mut Out<'b>,
    /// Encryption key: seals objects and keys content digests.
    enc: Option<&'a Key>,
    /// Id of the snapshot being written: names its packs.
    id: String,
    /// The pack being filled (stored chunk bytes back to back).
    pack: Vec<u8>,
    /// Packs queued so far by this snapshot.
    packs: u32,
    /// Size of each pack this snapshot wrote, by key, to fill in
    /// [`ChunkRef::pack_size`] once a pack is closed.
    pack_sizes: HashMap<String, u64>,
    /// Target size of a pack.
    pack_target: usize,
}

/// Target stored size of a chunk pack. Restore time was dominated by request
/// count (GET latency on a busy store), so chunks travel in packs of a few
/// MiB instead of one ~170 KB object each. A pack is built in memory, so
/// this (times the packs queued and in flight, and the SDK's copies) bounds
/// the writer's memory: on the 200 MiB bench db a first backup peaks at
/// 29/36/50/79 MiB RSS with 1/2/4/8 MiB packs while restore time is the same
/// from 1 to 8 MiB (bench/RESULTS.md), so 2 MiB. `MAILSAFE_PACK_BYTES`
/// overrides it (benchmarks).
const PACK_TARGET: usize = 2 << 20;

/// [`PACK_TARGET`], or `MAILSAFE_PACK_BYTES` when set.
pub(crate) fn pack_target() -> usize {
    std::env::var("MAILSAFE_PACK_BYTES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(PACK_TARGET)
}

impl<'b> ChunkSink<'_, 'b> {
    fn new<'a>(
        out: &'a mut Out<'b>,
        enc: Option<&'a Key>,
        id: String,
        pack_target: usize,
    ) -> Result<ChunkSink<'a, 'b>, Error> {
        let compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)
            .map_err(|e| Error::Other(format!("zstd: {e}")))?;
        Ok(ChunkSink {
            known: HashMap::new(),
            compressor,
            out,
            enc,
            id,
            pack: Vec::new(),
            packs: 0,
            pack_sizes: HashMap::new(),
            pack_target,
        })
    }

    /// Makes the chunks `base` stores known, so that [`ChunkSink::put`]
    /// references them instead of uploading them again. Only a new base
    /// needs this (an incremental snapshot stores no chunks): building the
    /// map costs a clone of every chunk reference.
    fn know(&mut self, base: &Base) {
        for (c, h) in base.chunks.iter().zip(&base.digests) {
            if let Some(h) = h {
                self.known.insert(*h, c.clone());
            }
        }
    }

    /// The digest naming chunk content `data` ([`crypto::content_digest`]).
    fn digest(&self, data: &[u8]) -> [u8; 32] {
        crypto::content_digest(self.enc, data)
    }

    /// The stored reference for chunk content `data` with digest `h`,
    /// uploading it unless an identical chunk is already stored.
    fn put(&mut self, h: [u8; 32], data: &[u8]) -> Result<ChunkRef, Error> {
        if let Some(c) = self.known.get(&h) {
            return Ok(c.clone());
        }
        let z = self
            .compressor
            .compress(data)
            .map_err(|e| Error::Other(format!("zstd: {e}")))?;
        let hex = hex::encode(h);
        // Sealed under the chunk's logical name, not the pack's, so its bytes
        // can live in any object without re-encryption.
        let z = seal(self.enc, &format::chunk_key(&hex), z);
        if !self.pack.is_empty() && self.pack.len() + z.len() > self.pack_target {
            self.close_pack()?;
        }
        if self.pack.capacity() == 0 {
            self.pack.reserve_exact(self.pack_target.max(z.len()));
        }
        let c = ChunkRef {
            sha256: hex,
            stored_sha256: format::sha256_hex(&z),
            stored_size: z.len() as u64,
            pack: Some(format::pack_key(&self.id, self.packs)),
            offset: Some(self.pack.len() as u64),
            pack_size: None,
        };
        self.pack.extend_from_slice(&z);
        self.known.insert(h, c.clone());
        Ok(c)
    }

    /// Queues the pack being filled, if it holds anything.
    fn close_pack(&mut self) -> Result<(), Error> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let key = format::pack_key(&self.id, self.packs);
        let body = std::mem::take(&mut self.pack);
        self.pack_sizes.insert(key.clone(), body.len() as u64);
        self.packs += 1;
        self.out.send(Upload {
            key,
            body: Bytes::from(body),
        })
    }

    /// Queues the last pack and fills in the pack size of every chunk in
    /// `refs` that went into a pack of this snapshot.
    fn finish(&mut self, refs: &mut [ChunkRef]) -> Result<(), Error> {
        self.close_pack()?;
        for c in refs.iter_mut() {
            if let Some(size) = c.pack.as_ref().and_then(|p| self.pack_sizes.get(p)) {
                c.pack_size = Some(*size);
            }
        }
        Ok(())
    }

    /// Repacking at write time: forgets every stored chunk whose pack the new
    /// base (content digests `image`) would use less than half of, by stored
    /// bytes, so those chunks are written again into the new base's packs and
    /// the old pack can be dropped by GC once older snapshots expire. This
    /// bounds dead space: every pack a base references is at least half live.
    fn forget_sparse_packs(&mut self, image: &[[u8; 32]]) {
        let mut used: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut seen = HashSet::new();
        for h in image {
            if !seen.insert(h) {
                continue;
            }
            if let Some(ChunkRef {
                pack: Some(p),
                pack_size: Some(size),
                stored_size,
                ..
            }) = self.known.get(h)
            {
                used.entry(p.as_str()).or_insert((0, *size)).0 += stored_size;
            }
        }
        let sparse: HashSet<String> = used
            .into_iter()
            .filter(|(_, (live, size))| live * 2 < *size)
            .map(|(p, _)| p.to_string())
            .collect();
        if sparse.is_empty() {
            return;
        }
        let before = self.known.len();
        self.known
            .retain(|_, c| c.pack.as_ref().is_none_or(|p| !sparse.contains(p)));
        tracing::debug!(
            packs = sparse.len(),
            forgotten = before - self.known.len(),
            "repacking chunks of mostly dead packs"
        );
    }
}

/// The bytes stored at `key`: `packed` itself, or sealed with the key.
fn seal(enc: Option<&Key>, key: &str, packed: Vec<u8>) -> Vec<u8> {
    match enc {
        Some(k) => k.seal(key, &packed),
        None => packed,
    }
}

fn send(tx: &Sender<Upload>, u: Upload) -> Result<(), Error> {
    let key = u.key.clone();
    tx.blocking_send(u)
        .map_err(|_| Error::Other(format!("upload of {key} aborted")))
}

/// Takes the snapshot's reading half. See the module docs.
pub(crate) fn read(
    db: &Path,
    prev: Option<&State>,
    enc: Option<&Key>,
    pack_bytes: usize,
    tx: Sender<Upload>,
    pinned: Option<&Guarantee>,
    clock: Option<&super::Clock>,
) -> Result<Outcome, Error> {
    check_sqlite_file(db)?;
    let conn = open(db)?;
    let err = sqlite_err(db);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(&err)?;
    let wal_mode = mode.eq_ignore_ascii_case("wal");
    let wal_file = wal_path(db);
    let prev_pos = prev.and_then(|s| s.last.source.wal.as_ref());
    let pre = if wal_mode {
        wal_pre(&wal_file, prev_pos, pinned).map_err(|e| Error::io(&wal_file, e))?
    } else {
        PreScan::default()
    };

    let mut out = Out {
        tx: &tx,
        spool: if wal_mode {
            None
        } else {
            let file = tempfile::tempfile().map_err(|e| {
                Error::Other(format!(
                    "cannot create a temporary spool file in {}: {e}",
                    std::env::temp_dir().display()
                ))
            })?;
            Some(Spool {
                file,
                end: 0,
                index: Vec::new(),
            })
        },
    };
    conn.execute_batch("BEGIN").map_err(&err)?;
    // The first read fixes the transaction's snapshot.
    let first = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(&err);
    let created = clock.map_or_else(chrono::Utc::now, super::Clock::now);
    let result = first.and_then(|_| {
        let (wal_pos, wal_pages) = if wal_mode {
            wal_post(&wal_file, pre, pinned).map_err(|e| Error::io(&wal_file, e))?
        } else {
            (None, None)
        };
        in_txn(
            db, &conn, prev, enc, pack_bytes, &mut out, created, wal_pos, wal_pages,
        )
    });
    // Ends the read transaction; nothing was written.
    let _ = conn.execute_batch("ROLLBACK");
    drop(conn);
    let result = result?;
    out.flush()?;
    Ok(result)
}

#[allow(clippy::too_many_arguments)]
fn in_txn(
    db: &Path,
    conn: &Connection,
    prev: Option<&State>,
    enc: Option<&Key>,
    pack_bytes: usize,
    out: &mut Out<'_>,
    created: chrono::DateTime<chrono::Utc>,
    wal_pos: Option<WalPosition>,
    wal_pages: Option<BTreeSet<u32>>,
) -> Result<Outcome, Error> {
    let err = sqlite_err(db);
    let page_size: u32 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(&err)?;
    let page_count: u32 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(&err)?;
    let chunk_pages = format::chunk_pages(page_size);
    let n_chunks = format::chunk_count(page_size, page_count);
    let mut pages = Pages {
        stmt: conn
            .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
            .map_err(&err)?,
        db,
        page_size,
    };
    let (change_counter, rollback_header) = if page_count > 0 {
        let mut p1 = Vec::with_capacity(page_size as usize);
        pages.read_into(1, &mut p1)?;
        (
            u32::from_be_bytes(p1[24..28].try_into().expect("4 bytes")),
            p1[18] == 1,
        )
    } else {
        (0, true)
    };
    let source = SourcePosition {
        wal: wal_pos,
        change_counter,
    };

    // A previous snapshot we can build a delta on: same page geometry.
    let same_shape =
        prev.filter(|s| s.last.db.page_size == page_size && s.last.chunk_pages == chunk_pages);
    if let Some(s) = same_shape {
        // Rollback journal mode: SQLite bumps the header's change counter on
        // every commit, so an equal counter and size means no change.
        if source.wal.is_none()
            && s.last.source.wal.is_none()
            && rollback_header
            && change_counter != 0
            && s.last.source.change_counter == change_counter
            && s.last.db.page_count == page_count
        {
            return Ok(Outcome::Unchanged { source });
        }
    }

    let id = next_id(prev, created);
    let mut sink = ChunkSink::new(out, enc, id.clone(), pack_bytes)?;
    let ctx = Ctx {
        page_size,
        page_count,
        chunk_pages,
        n_chunks,
        created,
        source,
    };
    let Some(s) = same_shape else {
        return first_base(db, conn, prev, &mut sink, ctx, id);
    };

    // Find the changed chunks and the pages the delta must carry.
    let prev_count = s.last.db.page_count;
    // New chunks start with a zero digest, which no real chunk has.
    let mut effective = s.effective.clone();
    effective.resize(n_chunks as usize, [0u8; 32]);
    let mut buf = Vec::with_capacity((chunk_pages * page_size) as usize);
    let full_scan = wal_pages.is_none();
    if full_scan {
        // The O(db size) path: bench/engine.sh counts these lines.
        tracing::debug!(
            full_scan,
            pages = page_count,
            "snapshot: hashing every chunk"
        );
    }
    let delta_pages: BTreeSet<u32> = match wal_pages {
        Some(mut changed) => {
            // O(change): only the pages the WAL names, plus any growth (every
            // page past the old end belongs to the delta), and the chunks
            // holding them re-hashed.
            changed.retain(|&p| p >= 1 && p <= page_count);
            changed.extend(prev_count.saturating_add(1)..=page_count);
            let mut affected: BTreeSet<u32> =
                changed.iter().map(|p| (p - 1) / chunk_pages).collect();
            if page_count != prev_count && page_count > 0 {
                affected.insert((page_count - 1) / chunk_pages);
            }
            for &i in &affected {
                pages.read_chunk(i, chunk_pages, page_count, &mut buf)?;
                effective[i as usize] = sink.digest(&buf);
            }
            changed
        }
        None => {
            // Full scan: hash every chunk, in one pass over sqlite_dbpage.
            let mut changed = BTreeSet::new();
            scan_all(db, conn, page_size, page_count, chunk_pages, |i, data| {
                let h = crypto::content_digest(enc, data);
                if s.effective.get(i as usize) != Some(&h) {
                    let first = i * chunk_pages + 1;
                    let last = (first + chunk_pages - 1).min(page_count);
                    changed.extend(first..=last);
                }
                effective[i as usize] = h;
                Ok(())
            })?;
            changed
        }
    };
    let image_sha256 = format::image_digest(page_size, page_count, &effective);
    if image_sha256 == s.last.db.image_sha256 {
        return Ok(Outcome::Unchanged { source: ctx.source });
    }

    // Delta or re-base?
    let base_stored = s.base.stored;
    let prior_deltas: &[ObjectRef] = if s.last.is_base() {
        &[]
    } else {
        &s.last.deltas
    };
    let prior_stored: u64 = prior_deltas.iter().map(|d| d.size).sum();
    let raw = delta_pages.len() as u64 * u64::from(page_size);
    let mut rebase = prior_deltas.len() + 1 > MAX_DELTAS || raw > MAX_DELTA_BYTES;
    let mut delta = None;
    if !rebase {
        let z = encode_delta(&mut pages, page_size, page_count, &delta_pages)?;
        rebase = prior_stored + z.len() as u64 > base_stored / REBASE_DIVISOR;
        delta = Some(z);
    }
    if rebase {
        sink.know(&s.base);
        sink.forget_sparse_packs(&effective);
        let mut refs = Vec::with_capacity(n_chunks as usize);
        for (i, h) in effective.iter().enumerate() {
            let c = match sink.known.get(h) {
                Some(c) => c.clone(),
                None => {
                    pages.read_chunk(i as u32, chunk_pages, page_count, &mut buf)?;
                    sink.put(*h, &buf)?
                }
            };
            refs.push(c);
        }
        sink.finish(&mut refs)?;
        let m = base_manifest(id, Some(s), ctx, refs, image_sha256);
        return Ok(Outcome::Changed(Box::new(Changed {
            base: Arc::new(Base::new(m.chunks.clone())),
            manifest: m,
            effective,
            full_scan,
            delta_pages: 0,
            delta: None,
        })));
    }
    let key = format::delta_key(&id);
    // Sealed under its logical key, so prune can later copy the bytes out
    // of the manifest object to that key unchanged.
    let z = seal(enc, &key, delta.expect("built when not re-basing"));
    // The bytes travel in the manifest object (one PUT per incremental
    // snapshot); the offset is settled when the manifest is serialised.
    let dref = ObjectRef {
        key,
        sha256: format::sha256_hex(&z),
        size: z.len() as u64,
        manifest_offset: Some(0),
    };
    let mut deltas = prior_deltas.to_vec();
    deltas.push(dref);
    let mut chunk_overrides = std::collections::BTreeMap::new();
    for (i, h) in effective.iter().enumerate() {
        if s.base.digests.get(i).copied().flatten().as_ref() != Some(h) {
            chunk_overrides.insert(i as u32, hex::encode(h));
        }
    }
    let stored_bytes = base_stored + deltas.iter().map(|d| d.size).sum::<u64>();
    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        id,
        created,
        parent: Some(s.last.id.clone()),
        db: DbInfo {
            page_size,
            page_count,
            image_sha256,
        },
        chunk_pages,
        base: s.last.base.clone(),
        chunks: Vec::new(),
        deltas,
        chunk_overrides,
        source: ctx.source,
        stats: SnapshotStats {
            stored_bytes,
            ..Default::default()
        },
        encryption: None,
        writer: None,
    };
    Ok(Outcome::Changed(Box::new(Changed {
        manifest,
        base: s.base.clone(),
        effective,
        full_scan,
        delta_pages: delta_pages.len() as u64,
        delta: Some(z),
    })))
}

/// Geometry and position of the image being read.
struct Ctx {
    page_size: u32,
    page_count: u32,
    chunk_pages: u32,
    n_chunks: u32,
    created: chrono::DateTime<chrono::Utc>,
    source: SourcePosition,
}

/// A base snapshot when there is no previous snapshot of the same page
/// geometry: one pass over every page, uploading each chunk not already
/// stored.
fn first_base(
    db: &Path,
    conn: &Connection,
    prev: Option<&State>,
    sink: &mut ChunkSink<'_, '_>,
    ctx: Ctx,
    id: String,
) -> Result<Outcome, Error> {
    if let Some(s) = prev {
        // Chunks are 256 KiB whatever the page size: identical ones stay
        // where they are.
        sink.know(&s.base);
    }
    let mut refs = Vec::with_capacity(ctx.n_chunks as usize);
    let mut effective = Vec::with_capacity(ctx.n_chunks as usize);
    scan_all(
        db,
        conn,
        ctx.page_size,
        ctx.page_count,
        ctx.chunk_pages,
        |_, data| {
            let h = sink.digest(data);
            refs.push(sink.put(h, data)?);
            effective.push(h);
            Ok(())
        },
    )?;
    let image_sha256 = format::image_digest(ctx.page_size, ctx.page_count, &effective);
    if let Some(s) = prev {
        if s.last.db.image_sha256 == image_sha256 {
            // Nothing new can have been packed: every chunk was known.
            return Ok(Outcome::Unchanged { source: ctx.source });
        }
    }
    sink.finish(&mut refs)?;
    let m = base_manifest(id, prev, ctx, refs, image_sha256);
    Ok(Outcome::Changed(Box::new(Changed {
        base: Arc::new(Base::new(m.chunks.clone())),
        manifest: m,
        effective,
        full_scan: true,
        delta_pages: 0,
        delta: None,
    })))
}

fn base_manifest(
    id: String,
    prev: Option<&State>,
    ctx: Ctx,
    chunks: Vec<ChunkRef>,
    image_sha256: String,
) -> Manifest {
    let stored_bytes = unique_stored(&chunks);
    Manifest {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        base: id.clone(),
        id,
        created: ctx.created,
        parent: prev.map(|s| s.last.id.clone()),
        db: DbInfo {
            page_size: ctx.page_size,
            page_count: ctx.page_count,
            image_sha256,
        },
        chunk_pages: ctx.chunk_pages,
        chunks,
        deltas: Vec::new(),
        chunk_overrides: Default::default(),
        source: ctx.source,
        stats: SnapshotStats {
            stored_bytes,
            ..Default::default()
        },
        encryption: None,
        writer: None,
    }
}

/// Stored bytes of the distinct objects `chunks` need: each pack whole (dead
/// space included, it is stored until GC drops the pack), each v1 chunk
/// object once.
pub(super) fn unique_stored(chunks: &[ChunkRef]) -> u64 {
    let mut seen = HashSet::new();
    chunks
        .iter()
        .filter_map(|c| match (&c.pack, c.pack_size) {
            (Some(p), Some(size)) => seen.insert(p.as_str()).then_some(size),
            _ => seen.insert(c.sha256.as_str()).then_some(c.stored_size),
        })
        .sum()
}

/// A new id, strictly after the previous one even if the clock did not move
/// (or moved back), so that `manifests/` listing order is history order.
fn next_id(prev: Option<&State>, created: chrono::DateTime<chrono::Utc>) -> String {
    let mut t = created;
    if let Some(p) = prev.and_then(|s| format::snapshot_id_time(&s.last.id)) {
        let min = p + chrono::Duration::milliseconds(1);
        if t < min {
            t = min;
        }
    }
    format::new_snapshot_id(t)
}

/// Streams every page of the image in order through `sqlite_dbpage` (one
/// query: its `pgno` index only supports equality, so ranges would rescan),
/// calling `f(chunk_index, chunk_bytes)` for each chunk.
fn scan_all(
    db: &Path,
    conn: &Connection,
    page_size: u32,
    page_count: u32,
    chunk_pages: u32,
    mut f: impl FnMut(u32, &[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let err = sqlite_err(db);
    let ps = page_size as usize;
    let mut buf = Vec::with_capacity(chunk_pages as usize * ps);
    let mut stmt = conn
        .prepare("SELECT pgno, data FROM sqlite_dbpage")
        .map_err(&err)?;
    let mut rows = stmt.query([]).map_err(&err)?;
    let mut expect = 1u32;
    let mut chunk = 0u32;
    while let Some(row) = rows.next().map_err(&err)? {
        let pgno: u32 = row.get(0).map_err(&err)?;
        if pgno > page_count {
            break;
        }
        if pgno != expect {
            return Err(Error::Other(format!(
                "{}: sqlite_dbpage returned page {pgno}, expected {expect}",
                db.display()
            )));
        }
        let data = row
            .get_ref(1)
            .and_then(|v| Ok(v.as_blob()?))
            .map_err(&err)?;
        let start = buf.len();
        buf.extend_from_slice(data);
        buf.resize(start + ps, 0);
        expect += 1;
        if buf.len() == chunk_pages as usize * ps {
            f(chunk, &buf)?;
            chunk += 1;
            buf.clear();
        }
    }
    if expect != page_count + 1 {
        return Err(Error::Other(format!(
            "{}: sqlite_dbpage returned {} of {page_count} pages",
            db.display(),
            expect - 1
        )));
    }
    if !buf.is_empty() {
        f(chunk, &buf)?;
    }
    Ok(())
}

/// Builds the zstd-compressed delta pack of `delta_pages` (read now, inside
/// the transaction).
fn encode_delta(
    pages: &mut Pages<'_>,
    page_size: u32,
    page_count: u32,
    delta_pages: &BTreeSet<u32>,
) -> Result<Vec<u8>, Error> {
    let zerr = |e: std::io::Error| Error::Other(format!("zstd: {e}"));
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(zerr)?;
    format::encode_delta_header(
        &DeltaHeader {
            page_size,
            page_count,
            pages: delta_pages.len() as u32,
        },
        &mut enc,
    )
    .map_err(zerr)?;
    let mut page = Vec::with_capacity(page_size as usize);
    for &p in delta_pages {
        page.clear();
        pages.read_into(p, &mut page)?;
        format::encode_delta_page(p, &page, &mut enc).map_err(zerr)?;
    }
    enc.flush().map_err(zerr)?;
    enc.finish().map_err(zerr)
}
