//! Helpers of the restore and corruption tests: real SQLite databases, and a
//! small, independent writer of the replica format (built only on the pure
//! helpers of `mailsafe::format`) so that restore can be tested against
//! exactly the objects the format contract describes, and so that tests can
//! tamper with individual objects.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Output;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use mailsafe::format::{
    self, ChunkRef, DbInfo, Manifest, ObjectRef, SnapshotStats, SourcePosition,
};
use mailsafe::store::DynStore;
use rusqlite::Connection;

use crate::common;

/// Creates a db at `path` with `page_size` and journal `mode`, and a table
/// `mail(id INTEGER PRIMARY KEY, body TEXT)`.
pub fn create_db(path: &Path, page_size: u32, mode: &str) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size={page_size}; PRAGMA journal_mode={mode};
         CREATE TABLE mail(id INTEGER PRIMARY KEY, body TEXT NOT NULL);"
    ))
    .unwrap();
    conn
}

/// Inserts `n` rows with distinct, incompressible-ish bodies of `len` bytes.
pub fn insert_rows(conn: &Connection, n: usize, len: usize) {
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut st = tx.prepare("INSERT INTO mail(body) VALUES (?1)").unwrap();
        for _ in 0..n {
            let body: String = (0..len)
                .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
                .collect();
            st.execute([body]).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Row count and a content digest of `mail`, to compare dbs by content.
pub fn content(path: &Path) -> (i64, String) {
    let conn = Connection::open(path).unwrap();
    let mut st = conn
        .prepare("SELECT id, body FROM mail ORDER BY id")
        .unwrap();
    let mut h = Vec::new();
    let mut n = 0;
    let mut rows = st.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        let body: String = r.get(1).unwrap();
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(body.as_bytes());
        n += 1;
    }
    (n, format::sha256_hex(&h))
}

/// `PRAGMA integrity_check` of the db at `path`.
pub fn integrity(path: &Path) -> String {
    let conn = Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// The committed page image of a db: its WAL is checkpointed first, then the
/// file is read. Returns `(page_size, bytes)`.
pub fn image(conn: &Connection, path: &Path) -> (u32, Vec<u8>) {
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    let bytes = std::fs::read(path).unwrap();
    let page_size: u32 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    (page_size, bytes)
}

/// Writes snapshots in the version-1 replica format (one object per chunk):
/// a base, then incrementals made of delta packs of the pages that differ
/// from the previous image.
pub struct ReplicaWriter {
    pub store: DynStore,
    /// Encrypts objects and signs manifests when set.
    pub key: Option<mailsafe::crypto::Key>,
    base: Option<Manifest>,
    prev: Option<(String, Vec<u8>)>,
    deltas: Vec<ObjectRef>,
}

impl ReplicaWriter {
    /// A writer into `store`.
    pub fn new(store: DynStore) -> Self {
        Self {
            store,
            key: None,
            base: None,
            prev: None,
            deltas: Vec::new(),
        }
    }

    async fn put(&self, key: &str, body: Vec<u8>) -> (String, u64) {
        let body = match &self.key {
            Some(k) if !key.starts_with(format::MANIFESTS) => k.seal(key, &body),
            _ => body,
        };
        let sha = format::sha256_hex(&body);
        let n = body.len() as u64;
        self.store.put(key, Bytes::from(body)).await.unwrap();
        (sha, n)
    }

    /// Chunk content digests (keyed when encrypting, as the writer does).
    fn chunk_hashes(&self, page_size: u32, image: &[u8]) -> Vec<[u8; 32]> {
        let len = format::chunk_pages(page_size) as usize * page_size as usize;
        image
            .chunks(len)
            .map(|c| mailsafe::crypto::content_digest(self.key.as_ref(), c))
            .collect()
    }

    /// Writes a base snapshot of `image` taken at `created`; returns its id.
    pub async fn base(&mut self, page_size: u32, image: &[u8], created: DateTime<Utc>) -> String {
        let id = format::new_snapshot_id(created);
        let chunk_pages = format::chunk_pages(page_size);
        let mut chunks = Vec::new();
        let mut stats = SnapshotStats::default();
        for chunk in image.chunks(chunk_pages as usize * page_size as usize) {
            let sha = hex::encode(mailsafe::crypto::content_digest(self.key.as_ref(), chunk));
            let packed = zstd::bulk::compress(chunk, 3).unwrap();
            let (stored_sha256, stored_size) = self.put(&format::chunk_key(&sha), packed).await;
            stats.new_objects += 1;
            stats.new_bytes += stored_size;
            stats.stored_bytes += stored_size;
            chunks.push(ChunkRef {
                sha256: sha,
                stored_sha256,
                stored_size,
                pack: None,
                offset: None,
                pack_size: None,
            });
        }
        let page_count = (image.len() / page_size as usize) as u32;
        let mut m = Manifest {
            format: format::FORMAT_NAME.into(),
            // The layout written here (one `chunks/<sha256>` object per
            // chunk, `deltas/<id>` objects) is format version 1, as the
            // session-2 build wrote it: these tests keep v1 replicas readable.
            version: 1,
            id: id.clone(),
            created,
            parent: self.prev.as_ref().map(|p| p.0.clone()),
            db: DbInfo {
                page_size,
                page_count,
                image_sha256: format::image_digest(
                    page_size,
                    page_count,
                    &self.chunk_hashes(page_size, image),
                ),
            },
            chunk_pages,
            base: id.clone(),
            chunks,
            deltas: vec![],
            chunk_overrides: Default::default(),
            source: SourcePosition::default(),
            stats,
            encryption: None,
            writer: None,
        };
        if let Some(k) = &self.key {
            k.sign_manifest(&mut m);
        }
        self.put(&format::manifest_key(&id), m.to_json()).await;
        self.base = Some(m);
        self.deltas.clear();
        self.prev = Some((id.clone(), image.to_vec()));
        id
    }

    /// Writes an incremental snapshot of `image` (one delta pack of the pages
    /// that differ from the previous snapshot); returns its id.
    pub async fn incremental(&mut self, image: &[u8], created: DateTime<Utc>) -> String {
        let base = self.base.clone().expect("a base snapshot first");
        let (prev_id, prev) = self.prev.clone().unwrap();
        let page_size = base.db.page_size;
        let ps = page_size as usize;
        let page_count = (image.len() / ps) as u32;
        let pages: Vec<(u32, &[u8])> = image
            .chunks(ps)
            .enumerate()
            .filter(|(i, p)| prev.get(i * ps..(i + 1) * ps) != Some(*p))
            .map(|(i, p)| (i as u32 + 1, p))
            .collect();
        let id = format::new_snapshot_id(created);
        let pack =
            zstd::bulk::compress(&format::encode_delta(page_size, page_count, &pages), 3).unwrap();
        let key = format::delta_key(&id);
        let (sha256, size) = self.put(&key, pack).await;
        self.deltas.push(ObjectRef {
            key,
            sha256,
            size,
            manifest_offset: None,
        });
        let hashes = self.chunk_hashes(page_size, image);
        let chunk_overrides = hashes
            .iter()
            .enumerate()
            .filter(|(i, h)| base.chunks.get(*i).map(|c| c.sha256.clone()) != Some(hex::encode(h)))
            .map(|(i, h)| (i as u32, hex::encode(h)))
            .collect();
        let mut m = Manifest {
            id: id.clone(),
            created,
            parent: Some(prev_id),
            db: DbInfo {
                page_size,
                page_count,
                image_sha256: format::image_digest(page_size, page_count, &hashes),
            },
            base: base.id.clone(),
            chunks: vec![],
            deltas: self.deltas.clone(),
            chunk_overrides,
            stats: SnapshotStats {
                new_objects: 2,
                new_bytes: size,
                stored_bytes: base.stats.stored_bytes
                    + self.deltas.iter().map(|d| d.size).sum::<u64>(),
            },
            ..base
        };
        if let Some(k) = &self.key {
            k.sign_manifest(&mut m);
        }
        self.put(&format::manifest_key(&id), m.to_json()).await;
        self.prev = Some((id.clone(), image.to_vec()));
        id
    }
}

/// A time `secs` seconds after a fixed point, for snapshot ids.
pub fn at(secs: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
        .unwrap()
        .to_utc()
        + chrono::Duration::seconds(secs)
}

/// Runs `mailsafe` with `args` against `s3`.
pub fn run(s3: &common::S3, args: &[&str]) -> Output {
    let out = s3.mailsafe().args(args).output().unwrap();
    eprintln!(
        "mailsafe {args:?} -> {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stderr of a run, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Names of the files in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Restore temp files (`.NAME.mailsafe-restore-*`) in `dir`: a restore,
/// failed or not, must leave none behind.
pub fn restore_temp_files(dir: &Path) -> Vec<String> {
    files_in(dir)
        .into_iter()
        .filter(|f| f.contains("mailsafe-restore"))
        .collect()
}

/// A source db `dir/src.db` (WAL, 4 KiB pages) with `rows` rows of `len`
/// bytes, and a replica under `prefix` holding one base snapshot of it taken
/// at `at(0)`. Returns the writer (to add snapshots), the db's path and an
/// open connection to it.
pub async fn replica_with_base(
    s3: &common::S3,
    prefix: &str,
    dir: &Path,
    rows: usize,
    len: usize,
) -> (ReplicaWriter, PathBuf, Connection) {
    let db = path(dir, "src.db");
    let conn = create_db(&db, 4096, "wal");
    insert_rows(&conn, rows, len);
    let (ps, img) = image(&conn, &db);
    let mut w = ReplicaWriter::new(s3.store(prefix).await);
    w.base(ps, &img, at(0)).await;
    (w, db, conn)
}

/// `dir/name` as a `String` argument.
pub fn arg(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// A path under `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
