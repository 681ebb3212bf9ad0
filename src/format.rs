//! The replica's on-store format: object keys, snapshot ids, manifests and
//! delta packs. This module is the contract between the snapshot writer and
//! restore/verify/retention; `docs/FORMAT.md` describes it for humans.
//!
//! Layout under the replica prefix:
//!
//! | key | content |
//! |---|---|
//! | `manifests/<id>.json` | one immutable [`Manifest`] per snapshot, written last (the commit point) |
//! | `chunks/<sha256>` | zstd of [`Manifest::chunk_pages`] consecutive pages; named by the sha256 of the *uncompressed* bytes, so identical content is stored once |
//! | `deltas/<id>` | zstd of a delta pack: the pages one snapshot changed (see [`DeltaHeader`]) |
//! | `lease.json` | the single-writer lease (see `watch`) |
//!
//! Snapshot ids are `YYYYMMDDTHHMMSS.mmmZ-<8 hex>` (UTC), so keys sort by time
//! and a listing of `manifests/` is already in snapshot order.
//!
//! A manifest is either a *base* (lists every chunk of the image) or an
//! *incremental* one (names its base and lists the deltas applied on top of
//! it, in order). The logical image is: base chunks, then each delta's pages
//! written over it, then truncated to `db.page_count` pages.

use serde::{Deserialize, Serialize};

/// The manifest format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Value of [`Manifest::format`]: tells a manifest apart from stray JSON.
pub const FORMAT_NAME: &str = "mailsafe-manifest";
/// Target uncompressed chunk size; `chunk_pages = max(1, CHUNK_BYTES / page_size)`.
pub const CHUNK_BYTES: u32 = 256 * 1024;
/// Magic bytes at the start of an uncompressed delta pack.
pub const DELTA_MAGIC: &[u8; 8] = b"MSDELTA1";

/// Key prefix of manifests.
pub const MANIFESTS: &str = "manifests/";
/// Key prefix of chunks.
pub const CHUNKS: &str = "chunks/";
/// Key prefix of delta packs.
pub const DELTAS: &str = "deltas/";
/// Key of the writer lease.
pub const LEASE_KEY: &str = "lease.json";

/// Key of the manifest of snapshot `id`.
pub fn manifest_key(id: &str) -> String {
    format!("{MANIFESTS}{id}.json")
}

/// Key of the chunk whose uncompressed bytes hash to `sha256_hex`.
pub fn chunk_key(sha256_hex: &str) -> String {
    format!("{CHUNKS}{sha256_hex}")
}

/// Key of the delta pack written by snapshot `id`.
pub fn delta_key(id: &str) -> String {
    format!("{DELTAS}{id}")
}

/// One snapshot: everything needed to rebuild and verify the database image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Format version; readers refuse versions they do not know.
    pub version: u32,
    /// This snapshot's id (also in its key).
    pub id: String,
    /// When the snapshot's read transaction started (RFC 3339, UTC).
    pub created: chrono::DateTime<chrono::Utc>,
    /// The previous snapshot of the same history, if any.
    pub parent: Option<String>,
    /// The database image this snapshot describes.
    pub db: DbInfo,
    /// Pages per chunk.
    pub chunk_pages: u32,
    /// Id of the base manifest: this manifest's own id when it is a base.
    pub base: String,
    /// Base manifests only: every chunk of the image, in page order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    /// Incremental manifests only: every delta pack since the base, in the
    /// order they must be applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<ObjectRef>,
    /// Incremental manifests only: the content sha256 of each chunk (by index)
    /// whose content differs from the base, so the image digest can be
    /// checked without the base's pages.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub chunk_overrides: std::collections::BTreeMap<u32, String>,
    /// Where in the source db's WAL this snapshot ended, so the next snapshot
    /// (even from another process) can read only the new frames.
    pub source: SourcePosition,
    /// What this snapshot uploaded.
    pub stats: SnapshotStats,
}

/// The logical database image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DbInfo {
    /// SQLite page size in bytes.
    pub page_size: u32,
    /// Number of pages; the image is `page_size * page_count` bytes.
    pub page_count: u32,
    /// sha256 (hex) over `page_size` (u32 BE), `page_count` (u32 BE) and the
    /// raw 32-byte sha256 of each chunk's uncompressed bytes, in order. A
    /// two-level hash of the whole image: any changed byte changes it, and it
    /// can be updated from the changed chunks alone.
    pub image_sha256: String,
}

/// One chunk of a base manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkRef {
    /// sha256 (hex) of the uncompressed chunk; the object is `chunks/<this>`.
    pub sha256: String,
    /// sha256 (hex) of the stored (compressed) object.
    pub stored_sha256: String,
    /// Size of the stored object in bytes.
    pub stored_size: u64,
}

/// A stored object referenced by key, with its hash and size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectRef {
    /// Object key, relative to the replica prefix.
    pub key: String,
    /// sha256 (hex) of the stored bytes.
    pub sha256: String,
    /// Size of the stored object in bytes.
    pub size: u64,
}

/// Position in the source database that a snapshot corresponds to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourcePosition {
    /// The WAL position, when the db is in WAL mode.
    pub wal: Option<WalPosition>,
    /// The file change counter (header offset 24) of the main db file.
    pub change_counter: u32,
}

/// A frame boundary in a WAL file, with what is needed to keep validating the
/// checksum chain from there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalPosition {
    /// WAL header salt-1.
    pub salt1: u32,
    /// WAL header salt-2.
    pub salt2: u32,
    /// Number of frames covered (the last commit frame's 1-based index).
    pub frame: u32,
    /// Running checksum after that frame.
    pub checksum: [u32; 2],
}

/// What one snapshot uploaded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotStats {
    /// Objects uploaded by this snapshot (manifest included).
    pub new_objects: u64,
    /// Bytes uploaded by this snapshot (manifest included).
    pub new_bytes: u64,
    /// Stored bytes of every object this snapshot needs (chunks of its base,
    /// its deltas, its manifest).
    pub stored_bytes: u64,
}

/// Header of an uncompressed delta pack. The pack is `DELTA_MAGIC`, then
/// `page_size` (u32 BE), `page_count` (u32 BE, the db size after this delta),
/// `n` (u32 BE), then `n` times: `pgno` (u32 BE) and `page_size` bytes. The
/// whole pack is zstd-compressed when stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaHeader {
    /// Page size of the pages in this pack.
    pub page_size: u32,
    /// Database size in pages after this delta is applied.
    pub page_count: u32,
    /// Number of pages in the pack.
    pub pages: u32,
}
