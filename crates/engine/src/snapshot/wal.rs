//! A reader for SQLite's `-wal` file that finds which pages were committed
//! after a known position, without taking any SQLite lock.
//!
//! Format (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic,
//! version, page size, checkpoint sequence, salt-1, salt-2, checksum), then
//! frames of a 24-byte header (page number, db size after commit or 0, salts,
//! running checksum) and one page. A frame is valid only if its salts match
//! the header's and the checksum chain from the WAL header through it holds;
//! only frames up to the last valid *commit* frame are committed.
//!
//! We read the file while the application writes it, so a frame may be torn:
//! the checksum chain simply stops there, which is the same answer SQLite
//! itself would give, and callers only trust positions up to commit frames.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::format::WalPosition;

const WAL_HEADER: u64 = 32;
const FRAME_HEADER: usize = 24;

/// A parsed, checksum-valid WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksums are computed on big-endian words (magic 0x377f0683).
    pub big_endian: bool,
    /// Page size of every frame.
    pub page_size: u32,
    /// Salt-1: incremented by one each time the WAL restarts.
    pub salt1: u32,
    /// Salt-2: random, new at each restart.
    pub salt2: u32,
    /// Checksum of the header, the chain's starting value.
    pub checksum: [u32; 2],
}

impl WalHeader {
    /// The position before this WAL's first frame.
    pub fn start(&self) -> WalPosition {
        WalPosition {
            salt1: self.salt1,
            salt2: self.salt2,
            frame: 0,
            checksum: self.checksum,
        }
    }
}

/// How a scan ended after its last valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// The file ends (or ends mid-frame) after the last valid frame.
    Eof,
    /// A whole frame follows that does not continue the chain; `salt1` is
    /// what its header says.
    Invalid {
        /// Salt-1 in the header of the first frame that is not valid.
        salt1: u32,
    },
}

/// Result of scanning frames forward from a position.
#[derive(Debug, Clone)]
pub struct Scan {
    /// The last commit frame reached (the start position if none).
    pub commit: WalPosition,
    /// Database size in pages after that commit (0 if no commit was found).
    pub db_pages: u32,
    /// Page numbers of every frame after the start up to `commit`.
    pub pages: BTreeSet<u32>,
    /// Index of the last valid frame (a commit or not).
    pub valid_frames: u32,
    /// How the scan stopped.
    pub end: ScanEnd,
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from
/// `s`.
pub fn checksum(big_endian: bool, data: &[u8], s: [u32; 2]) -> [u32; 2] {
    let (mut s0, mut s1) = (s[0], s[1]);
    for w in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (
                u32::from_be_bytes(w[0..4].try_into().expect("4 bytes")),
                u32::from_be_bytes(w[4..8].try_into().expect("4 bytes")),
            )
        } else {
            (
                u32::from_le_bytes(w[0..4].try_into().expect("4 bytes")),
                u32::from_le_bytes(w[4..8].try_into().expect("4 bytes")),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    [s0, s1]
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

/// An open `-wal` file.
#[derive(Debug)]
pub struct WalFile {
    file: File,
    len: u64,
    /// The header, if the file has a valid one.
    pub header: Option<WalHeader>,
}

impl WalFile {
    /// Opens `path` and reads its header. A missing, short or corrupt file
    /// gives `header: None` (there are no committed frames in it).
    pub fn open(path: &Path) -> io::Result<Option<WalFile>> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let mut h = [0u8; WAL_HEADER as usize];
        let header = if len >= WAL_HEADER {
            file.read_exact(&mut h)?;
            parse_header(&h)
        } else {
            None
        };
        Ok(Some(WalFile { file, len, header }))
    }

    fn frame_size(&self, page_size: u32) -> u64 {
        FRAME_HEADER as u64 + u64::from(page_size)
    }

    fn frame_offset(&self, page_size: u32, frame: u32) -> u64 {
        // Frame numbers are 1-based.
        WAL_HEADER + u64::from(frame - 1) * self.frame_size(page_size)
    }

    /// Whether frame `pos.frame` is still in the file with `pos`'s salts and
    /// checksum, i.e. the chain can be continued from `pos`.
    pub fn holds(&mut self, h: &WalHeader, pos: &WalPosition) -> io::Result<bool> {
        if pos.frame == 0 {
            return Ok(h.salt1 == pos.salt1 && h.salt2 == pos.salt2 && h.checksum == pos.checksum);
        }
        let off = self.frame_offset(h.page_size, pos.frame);
        if off + self.frame_size(h.page_size) > self.len {
            return Ok(false);
        }
        let mut fh = [0u8; FRAME_HEADER];
        self.file.seek(SeekFrom::Start(off))?;
        self.file.read_exact(&mut fh)?;
        Ok(be32(&fh, 8) == pos.salt1
            && be32(&fh, 12) == pos.salt2
            && [be32(&fh, 16), be32(&fh, 20)] == pos.checksum)
    }

    /// Whether the file ends exactly after frame `frame` (as it was when
    /// opened).
    pub fn ends_after(&self, h: &WalHeader, frame: u32) -> bool {
        self.len == WAL_HEADER + u64::from(frame) * self.frame_size(h.page_size)
    }

    /// Salt-1 in the header of frame `frame` as the file holds it now, or
    /// `None` if the file does not hold that whole frame.
    pub fn frame_salt1(&mut self, h: &WalHeader, frame: u32) -> io::Result<Option<u32>> {
        let off = self.frame_offset(h.page_size, frame);
        let len = self.file.metadata()?.len();
        if frame == 0 || off + self.frame_size(h.page_size) > len {
            return Ok(None);
        }
        let mut fh = [0u8; FRAME_HEADER];
        self.file.seek(SeekFrom::Start(off))?;
        self.file.read_exact(&mut fh)?;
        Ok(Some(be32(&fh, 8)))
    }

    /// Scans forward from `from` (a frame boundary with its running
    /// checksum, under `from`'s salts) until the chain breaks, collecting the
    /// page numbers of committed frames. `h` gives the page size and checksum
    /// byte order.
    pub fn scan(&mut self, h: &WalHeader, from: &WalPosition) -> io::Result<Scan> {
        self.scan_to(h, from, u32::MAX)
    }

    /// [`WalFile::scan`], stopping after frame `limit` at the latest.
    pub fn scan_to(&mut self, h: &WalHeader, from: &WalPosition, limit: u32) -> io::Result<Scan> {
        let fsize = self.frame_size(h.page_size);
        let mut scan = Scan {
            commit: from.clone(),
            db_pages: 0,
            pages: BTreeSet::new(),
            valid_frames: from.frame,
            end: ScanEnd::Eof,
        };
        let mut pending = Vec::new();
        let mut sum = from.checksum;
        let mut frame = from.frame;
        let start = self.frame_offset(h.page_size, frame + 1);
        self.file.seek(SeekFrom::Start(start))?;
        // Frames are read sequentially; a large buffer keeps this to few
        // syscalls without holding more than 1 MiB.
        let mut reader = io::BufReader::with_capacity(1 << 20, &mut self.file);
        let mut buf = vec![0u8; fsize as usize];
        let mut off = start;
        loop {
            if frame >= limit {
                scan.end = ScanEnd::Eof;
                break;
            }
            if off + fsize > self.len {
                scan.end = ScanEnd::Eof;
                break;
            }
            if let Err(e) = reader.read_exact(&mut buf) {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    // The file was truncated while we read.
                    scan.end = ScanEnd::Eof;
                    break;
                }
                return Err(e);
            }
            off += fsize;
            let salt1 = be32(&buf, 8);
            if salt1 != from.salt1 || be32(&buf, 12) != from.salt2 {
                scan.end = ScanEnd::Invalid { salt1 };
                break;
            }
            let s = checksum(h.big_endian, &buf[..8], sum);
            let s = checksum(h.big_endian, &buf[FRAME_HEADER..], s);
            if s != [be32(&buf, 16), be32(&buf, 20)] {
                scan.end = ScanEnd::Invalid { salt1 };
                break;
            }
            sum = s;
            frame += 1;
            scan.valid_frames = frame;
            pending.push(be32(&buf, 0));
            let commit = be32(&buf, 4);
            if commit != 0 {
                scan.pages.extend(pending.drain(..));
                scan.db_pages = commit;
                scan.commit = WalPosition {
                    salt1: from.salt1,
                    salt2: from.salt2,
                    frame,
                    checksum: sum,
                };
            }
        }
        Ok(scan)
    }
}

/// The last frame SQLite has *published* in the wal-index (`-shm`) header,
/// with the WAL salts it belongs to. A writer appends a commit's frames to
/// the `-wal` file first and publishes them in the wal-index afterwards, so
/// a reader starting now may not see a commit already in the file; a reader
/// starting after this call sees at least this frame. Returns `None` when the
/// header cannot be read consistently (no `-shm`, or being rewritten).
pub fn published(shm: &Path) -> io::Result<Option<(u32, u32, u32)>> {
    let mut b = [0u8; 96];
    match read_prefix(shm, &mut b) {
        Ok(96) => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    // Two copies of the header; SQLite's own readers trust it only when both
    // agree and it is initialised.
    if b[..48] != b[48..] || b[12] != 1 {
        return Ok(None);
    }
    let ne = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    // mxFrame is native-endian; the salts are the WAL header's bytes copied.
    Ok(Some((ne(16), be32(&b, 32), be32(&b, 36))))
}

/// How many frames of the WAL a checkpoint has copied into the db
/// (`nBackfill` of the wal-index's checkpoint info, after its two 48-byte
/// headers), or `None` if the `-shm` is missing or short.
pub fn backfilled(shm: &Path) -> io::Result<Option<u32>> {
    let mut b = [0u8; 100];
    match read_prefix(shm, &mut b) {
        Ok(100) => Ok(Some(u32::from_ne_bytes(
            b[96..100].try_into().expect("4 bytes"),
        ))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Handles on files SQLite locks (the db, its `-shm`) kept open while a
/// [`Held`] lives: see [`read_prefix`].
static HELD: std::sync::Mutex<Vec<(std::path::PathBuf, std::sync::Arc<File>)>> =
    std::sync::Mutex::new(Vec::new());

/// Keeps the files given to [`hold`] open until dropped.
#[derive(Debug)]
pub(crate) struct Held(Vec<std::path::PathBuf>);

/// Keeps `paths` (those that exist) open for [`read_prefix`] until the
/// returned guard is dropped. Needed while we hold SQLite locks on them that
/// must last (the WAL pin): closing *any* descriptor of a file drops every
/// POSIX lock the process holds on it (fcntl semantics), SQLite's included,
/// and reading the db header or the wal-index by open/read/close did exactly
/// that to the pin's read lock.
pub(crate) fn hold(paths: &[&Path]) -> io::Result<Held> {
    let mut held = Vec::new();
    let mut map = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for &p in paths {
        let f = match File::open(p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        map.push((p.to_path_buf(), std::sync::Arc::new(f)));
        held.push(p.to_path_buf());
    }
    Ok(Held(held))
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = HELD.lock().unwrap_or_else(|e| e.into_inner());
        for p in &self.0 {
            if let Some(i) = map.iter().position(|(q, _)| q == p) {
                map.remove(i);
            }
        }
    }
}

/// Reads the first `buf.len()` bytes of `path` (fewer if it is shorter);
/// returns how many. Through a handle kept open by [`hold`] when there is
/// one, so that no descriptor of a locked file is ever closed.
pub(crate) fn read_prefix(path: &Path, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let held = {
        let map = HELD.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().find(|(p, _)| p == path).map(|(_, f)| f.clone())
    };
    let mut own = None;
    let f: &File = match &held {
        Some(f) => f,
        None => own.insert(File::open(path)?),
    };
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn parse_header(h: &[u8; WAL_HEADER as usize]) -> Option<WalHeader> {
    let big_endian = match be32(h, 0) {
        0x377f_0682 => false,
        0x377f_0683 => true,
        _ => return None,
    };
    if be32(h, 4) != 3_007_000 {
        return None;
    }
    let page_size = be32(h, 8);
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return None;
    }
    let sum = checksum(big_endian, &h[..24], [0, 0]);
    if sum != [be32(h, 24), be32(h, 28)] {
        return None;
    }
    Some(WalHeader {
        big_endian,
        page_size,
        salt1: be32(h, 16),
        salt2: be32(h, 20),
        checksum: sum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL written by SQLite itself: checks the parser agrees with it about
    /// which pages each commit wrote.
    #[test]
    fn scan_finds_pages_of_committed_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(100));",
        )
        .unwrap();
        let wal_path = dir.path().join("t.db-wal");
        let mut wal = WalFile::open(&wal_path).unwrap().unwrap();
        let h = wal.header.unwrap();
        assert_eq!(h.page_size, 4096);
        let first = wal.scan(&h, &h.start()).unwrap();
        assert!(first.commit.frame >= 2, "{first:?}");
        assert!(first.pages.contains(&1) && first.pages.contains(&2));
        assert_eq!(first.end, ScanEnd::Eof);
        assert!(wal.holds(&h, &first.commit).unwrap());
        // The wal-index publishes the same last commit and salts.
        let shm = dir.path().join("t.db-shm");
        assert_eq!(
            published(&shm).unwrap(),
            Some((first.commit.frame, h.salt1, h.salt2))
        );

        // A second commit that touches only the table's page.
        db.execute("UPDATE t SET x = randomblob(100)", []).unwrap();
        let mut wal = WalFile::open(&wal_path).unwrap().unwrap();
        let second = wal.scan(&h, &first.commit).unwrap();
        assert_eq!(second.pages, BTreeSet::from([2]));
        assert_eq!(second.commit.frame, first.commit.frame + 1);
        assert_eq!(second.db_pages, 2);

        // Corrupting the last frame's page ends the chain before it.
        drop(wal);
        let mut bytes = std::fs::read(&wal_path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&wal_path, &bytes).unwrap();
        let mut wal = WalFile::open(&wal_path).unwrap().unwrap();
        let torn = wal.scan(&h, &h.start()).unwrap();
        assert_eq!(torn.commit, first.commit);
        assert!(matches!(torn.end, ScanEnd::Invalid { .. }));
    }

    #[test]
    fn missing_or_garbage_wal_has_no_header() {
        let dir = tempfile::tempdir().unwrap();
        assert!(WalFile::open(&dir.path().join("none")).unwrap().is_none());
        let p = dir.path().join("junk");
        std::fs::write(&p, [7u8; 64]).unwrap();
        assert!(WalFile::open(&p).unwrap().unwrap().header.is_none());
    }
}
