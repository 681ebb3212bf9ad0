//! The replica's on-store format: object keys, snapshot ids, manifests and
//! delta packs. This module is the contract between the snapshot writer and
//! restore/verify/retention; `docs/FORMAT.md` describes it for humans.
//!
//! Layout under the replica prefix:
//!
//! | key | content |
//! |---|---|
//! | `manifests/<id>.json` | one immutable [`Manifest`] per snapshot, written last (the commit point); since version 2 an incremental snapshot's delta pack follows the JSON in the same object (see [`manifest_object`]) |
//! | `chunks/<sha256>` | zstd of [`Manifest::chunk_pages`] consecutive pages; named by the sha256 of the *uncompressed* bytes, so identical content is stored once |
//! | `deltas/<id>` | zstd of a delta pack: the pages one snapshot changed (see [`DeltaHeader`]); written by version 1, and by `prune` when it forgets a snapshot whose embedded delta a kept one still needs |
//! | `packs/<id>-<n>` | version 2: many chunks' stored bytes back to back; a [`ChunkRef`] names its pack, offset and length |
//! | `lease/<epoch>.json` | the single-writer lease, one object per epoch (see `lease`) |
//! | `head.json` | the anchor: id of the newest base snapshot, a hint that lets readers find the newest snapshot with one LIST whatever the history's length (see `history`) |
//!
//! Snapshot ids are `YYYYMMDDTHHMMSS.mmmZ-<8 hex>` (UTC), so keys sort by time
//! and a listing of `manifests/` is already in snapshot order.
//!
//! A manifest is either a *base* (lists every chunk of the image) or an
//! *incremental* one (names its base and lists the deltas applied on top of
//! it, in order). The logical image is: base chunks, then each delta's pages
//! written over it, then truncated to `db.page_count` pages.

use serde::{Deserialize, Serialize};

/// The manifest format version this build writes.
pub const FORMAT_VERSION: u32 = 2;
/// Every manifest version this build reads: version 2 is a superset of 1
/// (a chunk entry without a pack means the v1 `chunks/<sha256>` object).
pub const READ_VERSIONS: &[u32] = &[1, 2];
/// Byte between a manifest's JSON and the delta pack embedded after it.
pub const EMBED_SEPARATOR: u8 = b'\n';
/// How much of a manifest object readers fetch first: enough for the JSON of
/// every incremental manifest (and of small bases), so listing snapshots
/// never downloads the embedded delta packs. A longer JSON costs a second GET
/// of the whole object.
pub const MANIFEST_PEEK: u64 = 64 * 1024;
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
/// Key prefix of chunk packs (format version 2).
pub const PACKS: &str = "packs/";
/// Key of the history anchor (see `crate::history`).
pub const HEAD_KEY: &str = "head.json";
/// Key prefix of the writer lease epochs (`lease/<epoch, 20 digits>.json`).
pub const LEASE_PREFIX: &str = "lease/";

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

/// Key of the `n`-th chunk pack written by snapshot `id`. Packs are named by
/// the snapshot that wrote them rather than by content: a chunk's location is
/// known the moment it is appended, and ids never repeat, so a pack key is
/// never overwritten with other bytes.
pub fn pack_key(id: &str, n: u32) -> String {
    format!("{PACKS}{id}-{n:04}")
}

/// Whether `key` has the shape [`pack_key`] produces (`packs/<id>-<digits>`),
/// so that a hostile manifest cannot steer reads outside the replica.
pub fn is_pack_key(key: &str) -> bool {
    let Some(rest) = key.strip_prefix(PACKS) else {
        return false;
    };
    let Some((id, n)) = rest.rsplit_once('-') else {
        return false;
    };
    !n.is_empty()
        && n.len() <= 9
        && n.bytes().all(|b| b.is_ascii_digit())
        && snapshot_id_time(id).is_some()
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
    /// Set when the snapshot's objects are encrypted (see `crate::crypto`);
    /// absent for plaintext backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// The lease holder that wrote this snapshot (see [`fenced`]); absent in
    /// manifests of older versions and of `snapshot`, which takes no lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<Writer>,
}

/// Who wrote a manifest: the writer's lease epoch and identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Writer {
    /// The epoch of the `lease/<epoch>.json` the writer held.
    pub epoch: u64,
    /// The writer's host name.
    pub host: String,
    /// The writer's random process id (the lease record's `owner`).
    pub owner: String,
}

/// The fencing rule, in one place: given the writer epochs of every manifest
/// in id (history) order, says which were written by a *fenced* writer, one
/// whose lease had already been taken over: a manifest whose epoch is lower
/// than that of an earlier manifest. Such a late write (a paused process
/// that finished an upload after losing its lease) is never "newest" for
/// `restore` nor the head that retention keeps. Manifests without a writer
/// (older versions, `snapshot`) are never fenced and fence nothing.
pub fn fenced(epochs: &[Option<u64>]) -> Vec<bool> {
    let mut highest = 0;
    epochs
        .iter()
        .map(|e| match *e {
            Some(e) if e < highest => true,
            Some(e) => {
                highest = e;
                false
            }
            None => false,
        })
        .collect()
}

/// How a snapshot's objects are encrypted, and the manifest's MAC.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Encryption {
    /// Algorithm: `aes-256-gcm`.
    pub alg: String,
    /// Public id of the key (derived from it; reveals nothing about it).
    pub key_id: String,
    /// HMAC-SHA256 (hex) of the manifest serialised with this field empty.
    pub mac: String,
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

impl DbInfo {
    /// Size of the database image in bytes (`page_size * page_count`).
    pub fn image_size(&self) -> u64 {
        u64::from(self.page_size) * u64::from(self.page_count)
    }
}

/// One chunk of a base manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkRef {
    /// sha256 (hex) of the uncompressed chunk. Without `pack` the object is
    /// `chunks/<this>` (version 1); either way `chunks/<this>` is the chunk's
    /// logical name, the associated data of its encryption.
    pub sha256: String,
    /// sha256 (hex) of the chunk's stored (compressed, maybe sealed) bytes.
    pub stored_sha256: String,
    /// Size of the chunk's stored bytes.
    pub stored_size: u64,
    /// Version 2: the pack object holding the stored bytes at
    /// `offset..offset + stored_size`; `None` means the v1 `chunks/<sha256>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<String>,
    /// Byte offset of the stored bytes in `pack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Total size of `pack`, so a writer can tell how much of it a new base
    /// still uses (repacking, see `docs/FORMAT.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_size: Option<u64>,
}

impl ChunkRef {
    /// Where the chunk's stored bytes are: `(object key, byte range)`.
    pub fn location(&self) -> (String, std::ops::Range<u64>) {
        match (&self.pack, self.offset) {
            (Some(p), Some(o)) => (p.clone(), o..o + self.stored_size),
            _ => (chunk_key(&self.sha256), 0..self.stored_size),
        }
    }

    /// The key of the object holding this chunk (its pack, or `chunks/…`).
    pub fn object_key(&self) -> String {
        match &self.pack {
            Some(p) => p.clone(),
            None => chunk_key(&self.sha256),
        }
    }
}

/// A stored delta pack referenced by its logical key, with its hash and size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectRef {
    /// Logical key, relative to the replica prefix: `deltas/<id>` of the
    /// snapshot that wrote it. It is also the AES-GCM associated data, so the
    /// bytes can live in the manifest object or at this key unchanged.
    pub key: String,
    /// sha256 (hex) of the stored bytes.
    pub sha256: String,
    /// Size of the stored bytes.
    pub size: u64,
    /// Version 2: the bytes are embedded in `manifests/<id>.json` (same id as
    /// the key) starting at this byte offset. Readers look there first and
    /// fall back to `key` (where `prune` copies them before it deletes that
    /// manifest). Absent: the bytes are the object at `key` (version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_offset: Option<u64>,
}

impl ObjectRef {
    /// The snapshot id in a `deltas/<id>` key.
    pub fn snapshot_id(&self) -> Option<&str> {
        self.key.strip_prefix(DELTAS)
    }

    /// Where the bytes are embedded, for a version 2 reference: the
    /// manifest's key and the byte range in it.
    pub fn embedded(&self) -> Option<(String, std::ops::Range<u64>)> {
        let off = self.manifest_offset?;
        let id = self.snapshot_id()?;
        Some((manifest_key(id), off..off.checked_add(self.size)?))
    }

    /// Where the bytes are, for messages: the key, and the manifest that
    /// embeds them if any.
    pub fn describe(&self) -> String {
        match self.embedded() {
            Some((m, r)) => format!("{} (bytes {}..{} of {m})", self.key, r.start, r.end),
            None => self.key.clone(),
        }
    }
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

/// Pages per chunk for a database of `page_size`: chunks are about
/// [`CHUNK_BYTES`] so that one changed row rewrites a small object, yet a
/// large db is not millions of objects.
pub fn chunk_pages(page_size: u32) -> u32 {
    (CHUNK_BYTES / page_size.max(1)).max(1)
}

/// Number of chunks of an image of `page_count` pages (the last may be
/// partial).
pub fn chunk_count(page_size: u32, page_count: u32) -> u32 {
    page_count.div_ceil(chunk_pages(page_size))
}

/// What a file's first bytes say it is. Discovery (which files in a
/// directory to back up), the snapshot reader (refuse a file that is not a
/// database) and restore (never overwrite a non-database) each read the
/// bytes their own way (the reader must not open and close a second
/// descriptor on a db whose POSIX locks its connection holds) and ask this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteHeader {
    /// No bytes: SQLite treats an empty file as an empty database.
    Empty,
    /// SQLite's magic string. `page_size` is the header's page size when
    /// it is a valid one (a power of two from 512 to 65536; stored as 1 for
    /// 65536); `None` when too few bytes were given or it is invalid.
    Database {
        /// Page size in bytes.
        page_size: Option<u32>,
    },
    /// Anything else, including a file shorter than the magic.
    Other,
}

/// Classifies a file by its first bytes (`head`, 100 is the whole header;
/// 16 suffice to tell a database).
pub fn sqlite_header(head: &[u8]) -> SqliteHeader {
    const MAGIC: &[u8; 16] = b"SQLite format 3\0";
    if head.is_empty() {
        return SqliteHeader::Empty;
    }
    if head.len() < 16 || &head[..16] != MAGIC {
        return SqliteHeader::Other;
    }
    let page_size = head
        .get(16..18)
        .and_then(|b| match u16::from_be_bytes([b[0], b[1]]) {
            1 => Some(65536),
            n if (512..=32768).contains(&n) && n.is_power_of_two() => Some(u32::from(n)),
            _ => None,
        });
    SqliteHeader::Database { page_size }
}

/// sha256 of `bytes`, as raw bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// sha256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

/// Parses a 64-digit hex sha256 (as stored in manifests) back to bytes.
pub fn parse_sha256(hex_digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out).ok()?;
    Some(out)
}

/// The [`DbInfo::image_sha256`] of an image: sha256 over `page_size` (u32 BE),
/// `page_count` (u32 BE) and each chunk's raw sha256 in order. Hashing chunk
/// digests rather than the bytes lets an incremental snapshot update it from
/// the changed chunks alone, yet any changed byte still changes it.
pub fn image_digest(page_size: u32, page_count: u32, chunk_sha256: &[[u8; 32]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(page_size.to_be_bytes());
    h.update(page_count.to_be_bytes());
    for c in chunk_sha256 {
        h.update(c);
    }
    hex::encode(h.finalize())
}

/// A new snapshot id for a snapshot taken at `time`:
/// `YYYYMMDDTHHMMSS.mmmZ-<8 hex>`. The random suffix keeps two writers that
/// snapshot in the same millisecond from colliding; the time prefix makes keys
/// sort in snapshot order.
pub fn new_snapshot_id(time: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}-{:08x}",
        time.format("%Y%m%dT%H%M%S%.3fZ"),
        rand::random::<u32>()
    )
}

/// The time encoded in a snapshot id, if it is well formed.
pub fn snapshot_id_time(id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let (time, suffix) = id.split_once('-')?;
    if suffix.len() != 8 || !suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%S%.3fZ")
        .ok()
        .map(|t| t.and_utc())
}

/// The snapshot id of a `manifests/<id>.json` key, if `key` is one.
pub fn manifest_id(key: &str) -> Option<&str> {
    key.strip_prefix(MANIFESTS)?.strip_suffix(".json")
}

/// Why a stored object could not be decoded. Every variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not valid JSON, or not a manifest of this shape.
    #[error("{key}: not a valid mailsafe manifest: {reason}")]
    BadManifest {
        /// Key of the manifest.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A manifest of another format or a version this build does not know.
    #[error(
        "{key}: unsupported manifest format {format:?} version {version} (this build reads {FORMAT_NAME:?} versions {READ_VERSIONS:?}); upgrade mailsafe"
    )]
    UnsupportedVersion {
        /// Key of the manifest.
        key: String,
        /// The `format` field found.
        format: String,
        /// The `version` field found.
        version: u64,
    },
    /// A delta pack that does not decode.
    #[error("{key}: corrupt delta pack: {reason}")]
    BadDelta {
        /// Key of the delta pack.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

impl From<FormatError> for crate::Error {
    fn from(e: FormatError) -> Self {
        crate::Error::Verification(e.to_string())
    }
}

impl Manifest {
    /// Parses the manifest stored at `key`, checking its format name and
    /// version first so that a manifest from a newer mailsafe is refused with a
    /// clear message instead of being misread. `bytes` may be the whole
    /// object or its JSON part: whatever follows the JSON (an embedded delta
    /// pack, read separately and checked against its own sha256) is ignored.
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Manifest, FormatError> {
        let bytes = match json_len(bytes) {
            Some(n) => &bytes[..n],
            None => bytes,
        };
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
            version: Option<u64>,
        }
        let bad = |reason: String| FormatError::BadManifest {
            key: key.to_string(),
            reason,
        };
        let head: Head = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let format = head.format.unwrap_or_default();
        let version = head.version.unwrap_or(0);
        if format != FORMAT_NAME || !READ_VERSIONS.iter().any(|&v| u64::from(v) == version) {
            return Err(FormatError::UnsupportedVersion {
                key: key.to_string(),
                format,
                version,
            });
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if manifest_id(key).is_some_and(|id| id != m.id) {
            return Err(bad(format!("its id {:?} does not match its key", m.id)));
        }
        if m.chunk_pages == 0 || !(512..=65536).contains(&m.db.page_size) {
            return Err(bad(format!(
                "impossible page_size {} / chunk_pages {}",
                m.db.page_size, m.chunk_pages
            )));
        }
        Ok(m)
    }

    /// Serialises the manifest as stored: compact JSON, since a base
    /// manifest of a large db lists thousands of chunks and is read by every
    /// new process (`… | jq` makes it readable).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// Whether this is a base manifest (lists every chunk itself).
    pub fn is_base(&self) -> bool {
        self.base == self.id
    }
}

/// Length of the JSON value at the start of `bytes` (a manifest object may
/// carry an embedded delta pack after it), or `None` when `bytes` does not
/// start with one complete JSON value (cut short, or not JSON at all).
pub fn json_len(bytes: &[u8]) -> Option<usize> {
    let mut it = serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    match it.next() {
        Some(Ok(_)) => Some(it.byte_offset()),
        _ => None,
    }
}

/// The stored bytes of a manifest object: the manifest's JSON, and for an
/// incremental snapshot of version 2 [`EMBED_SEPARATOR`] and its own delta
/// pack (as stored: compressed, sealed when encrypted), so that one PUT
/// commits the snapshot. The delta's [`ObjectRef::manifest_offset`] is
/// `json.len() + 1`.
pub fn manifest_object(json: &[u8], delta: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + delta.map_or(0, |d| d.len() + 1));
    out.extend_from_slice(json);
    if let Some(d) = delta {
        out.push(EMBED_SEPARATOR);
        out.extend_from_slice(d);
    }
    out
}

/// Reads the stored bytes of delta pack `d`: from the manifest object that
/// embeds it (version 2), or, when that manifest is gone (forgotten by
/// `prune`, which copies the bytes out first) or for version 1, from
/// `d.key`. The caller checks them against `d.sha256` and `d.size`.
pub async fn get_delta(
    store: &dyn crate::store::ObjectStore,
    d: &ObjectRef,
) -> Result<bytes::Bytes, crate::store::StoreError> {
    if let Some((key, range)) = d.embedded() {
        match store.get_range(&key, range).await {
            Err(crate::store::StoreError::NotFound { .. }) => {}
            other => return other,
        }
    }
    store.get(&d.key).await
}

/// Size in bytes of an uncompressed delta pack header.
pub const DELTA_HEADER_LEN: usize = 8 + 12;

/// Writes the uncompressed delta pack header; the caller then writes each
/// page with [`encode_delta_page`]. Streaming (rather than building the pack
/// in memory) keeps the snapshot writer's memory bounded.
pub fn encode_delta_header(h: &DeltaHeader, out: &mut impl std::io::Write) -> std::io::Result<()> {
    out.write_all(DELTA_MAGIC)?;
    out.write_all(&h.page_size.to_be_bytes())?;
    out.write_all(&h.page_count.to_be_bytes())?;
    out.write_all(&h.pages.to_be_bytes())
}

/// Writes one page entry of a delta pack.
pub fn encode_delta_page(
    pgno: u32,
    page: &[u8],
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    out.write_all(&pgno.to_be_bytes())?;
    out.write_all(page)
}

/// Builds a whole uncompressed delta pack in memory (tests and small packs).
/// Every page must be `page_size` bytes.
pub fn encode_delta(page_size: u32, page_count: u32, pages: &[(u32, &[u8])]) -> Vec<u8> {
    let h = DeltaHeader {
        page_size,
        page_count,
        pages: pages.len() as u32,
    };
    let mut out = Vec::with_capacity(DELTA_HEADER_LEN + pages.len() * (4 + page_size as usize));
    encode_delta_header(&h, &mut out).expect("writing to a Vec cannot fail");
    for (pgno, page) in pages {
        assert_eq!(page.len(), page_size as usize, "delta page of wrong size");
        encode_delta_page(*pgno, page, &mut out).expect("writing to a Vec cannot fail");
    }
    out
}

/// The `(pgno, page bytes)` entries of a decoded delta pack, in pack order.
pub type DeltaPages<'a> = Vec<(u32, &'a [u8])>;

/// Decodes an uncompressed delta pack stored at `key`: its header and each
/// `(pgno, page)` in pack order. Checks the magic, that the length matches
/// the header exactly, and that page numbers are in `1..=page_count`.
pub fn decode_delta<'a>(
    key: &str,
    bytes: &'a [u8],
) -> Result<(DeltaHeader, DeltaPages<'a>), FormatError> {
    let bad = |reason: String| FormatError::BadDelta {
        key: key.to_string(),
        reason,
    };
    if bytes.len() < DELTA_HEADER_LEN || &bytes[..8] != DELTA_MAGIC {
        return Err(bad("missing MSDELTA1 header".into()));
    }
    let u32_at = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let h = DeltaHeader {
        page_size: u32_at(8),
        page_count: u32_at(12),
        pages: u32_at(16),
    };
    if !(512..=65536).contains(&h.page_size) || !h.page_size.is_power_of_two() {
        return Err(bad(format!("impossible page size {}", h.page_size)));
    }
    let entry = 4 + h.page_size as usize;
    let want = (h.pages as usize)
        .checked_mul(entry)
        .and_then(|n| n.checked_add(DELTA_HEADER_LEN));
    if want != Some(bytes.len()) {
        return Err(bad(format!(
            "{} bytes, header says {} pages of {} bytes",
            bytes.len(),
            h.pages,
            h.page_size
        )));
    }
    let mut pages = Vec::with_capacity(h.pages as usize);
    for i in 0..h.pages as usize {
        let o = DELTA_HEADER_LEN + i * entry;
        let pgno = u32_at(o);
        if pgno == 0 || pgno > h.page_count {
            return Err(bad(format!(
                "page number {pgno} outside 1..={}",
                h.page_count
            )));
        }
        pages.push((pgno, &bytes[o + 4..o + entry]));
    }
    Ok((h, pages))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three callers' cases: empty, a database with valid/invalid/missing
    /// page size (1 means 65536), a short or foreign file.
    #[test]
    fn sqlite_header_tells_databases_from_other_files() {
        let mut head = b"SQLite format 3\0".to_vec();
        assert_eq!(
            sqlite_header(&head),
            SqliteHeader::Database { page_size: None }
        );
        for (raw, size) in [
            (4096u16, Some(4096)),
            (1, Some(65536)),
            (512, Some(512)),
            (1000, None),
            (256, None),
            (0, None),
        ] {
            head.truncate(16);
            head.extend_from_slice(&raw.to_be_bytes());
            assert_eq!(
                sqlite_header(&head),
                SqliteHeader::Database { page_size: size },
                "{raw}"
            );
        }
        assert_eq!(sqlite_header(b""), SqliteHeader::Empty);
        assert_eq!(sqlite_header(b"SQLite format"), SqliteHeader::Other);
        assert_eq!(
            sqlite_header(b"SQLite format 4\0\x10\x00"),
            SqliteHeader::Other
        );
        assert_eq!(sqlite_header(&[0u8; 100]), SqliteHeader::Other);
    }

    #[test]
    fn a_lower_epoch_after_a_higher_one_is_fenced() {
        let f = fenced(&[
            Some(1),
            None,
            Some(1),
            Some(3),
            Some(2),
            None,
            Some(3),
            Some(1),
            Some(4),
        ]);
        assert_eq!(
            f,
            [false, false, false, false, true, false, false, true, false]
        );
        assert!(fenced(&[]).is_empty());
    }

    #[test]
    fn chunk_pages_covers_every_page_size() {
        assert_eq!(chunk_pages(4096), 64);
        assert_eq!(chunk_pages(512), 512);
        assert_eq!(chunk_pages(65536), 4);
        assert_eq!(chunk_count(4096, 0), 0);
        assert_eq!(chunk_count(4096, 64), 1);
        assert_eq!(chunk_count(4096, 65), 2);
    }

    #[test]
    fn image_digest_depends_on_every_input() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let d = image_digest(4096, 2, &[a, b]);
        assert_ne!(d, image_digest(4096, 2, &[b, a]));
        assert_ne!(d, image_digest(4096, 3, &[a, b]));
        assert_ne!(d, image_digest(1024, 2, &[a, b]));
        assert_eq!(d, image_digest(4096, 2, &[a, b]));
        assert_eq!(d.len(), 64);
    }

    #[test]
    fn snapshot_ids_sort_by_time_and_round_trip() {
        let t1 = chrono::DateTime::parse_from_rfc3339("2026-11-29T09:59:59.999Z")
            .unwrap()
            .to_utc();
        let t2 = t1 + chrono::Duration::milliseconds(1);
        let (a, b) = (new_snapshot_id(t1), new_snapshot_id(t2));
        assert!(a.starts_with("20261129T095959.999Z-"), "{a}");
        assert!(a < b, "{a} !< {b}");
        assert_eq!(snapshot_id_time(&a), Some(t1));
        assert_eq!(snapshot_id_time("nonsense"), None);
        assert_eq!(manifest_id(&manifest_key(&a)), Some(a.as_str()));
    }

    #[test]
    fn delta_round_trip_and_corruption() {
        let p1 = vec![7u8; 512];
        let p2 = vec![9u8; 512];
        let pack = encode_delta(512, 5, &[(5, &p1), (1, &p2)]);
        let (h, pages) = decode_delta("deltas/x", &pack).unwrap();
        assert_eq!(
            h,
            DeltaHeader {
                page_size: 512,
                page_count: 5,
                pages: 2
            }
        );
        assert_eq!(pages, vec![(5, &p1[..]), (1, &p2[..])]);
        let err = decode_delta("deltas/x", &pack[..pack.len() - 1]).unwrap_err();
        assert!(err.to_string().contains("deltas/x"), "{err}");
        let mut beyond = pack.clone();
        beyond[12..16].copy_from_slice(&4u32.to_be_bytes());
        assert!(decode_delta("deltas/x", &beyond).is_err());
    }

    fn sample_manifest() -> Manifest {
        Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            id: "20261129T095959.999Z-0000abcd".into(),
            created: chrono::Utc::now(),
            parent: None,
            db: DbInfo {
                page_size: 4096,
                page_count: 1,
                image_sha256: "00".repeat(32),
            },
            chunk_pages: 64,
            base: "20261129T095959.999Z-0000abcd".into(),
            chunks: vec![],
            deltas: vec![],
            chunk_overrides: Default::default(),
            source: SourcePosition::default(),
            stats: SnapshotStats::default(),
            encryption: None,
            writer: None,
        }
    }

    #[test]
    fn manifest_object_embeds_the_delta_after_the_json() {
        let mut m = sample_manifest();
        m.base = "20261129T095959.000Z-0000abcd".into();
        let delta = b"\x28\xb5\x2f\xfd sealed or compressed bytes";
        m.deltas.push(ObjectRef {
            key: delta_key(&m.id),
            sha256: sha256_hex(delta),
            size: delta.len() as u64,
            manifest_offset: None,
        });
        // The offset is where the JSON ends (+1); settle it as the writer does.
        let mut json = m.to_json();
        loop {
            m.deltas[0].manifest_offset = Some(json.len() as u64 + 1);
            let again = m.to_json();
            if again.len() == json.len() {
                json = again;
                break;
            }
            json = again;
        }
        let object = manifest_object(&json, Some(delta));
        let key = manifest_key(&m.id);
        assert_eq!(json_len(&object), Some(json.len()));
        assert_eq!(Manifest::from_json(&key, &object).unwrap(), m);
        let (mkey, range) = m.deltas[0].embedded().unwrap();
        assert_eq!(mkey, key);
        assert_eq!(&object[range.start as usize..range.end as usize], delta);
        assert!(m.deltas[0].describe().contains(&key));
        // Cut inside the JSON: not a complete value.
        assert_eq!(json_len(&object[..json.len() - 1]), None);
        assert_eq!(json_len(b"\x89PNG"), None);
        // A base (no delta) is plain JSON; v1 references name their own object.
        assert_eq!(manifest_object(&json, None), json);
        m.deltas[0].manifest_offset = None;
        assert_eq!(m.deltas[0].embedded(), None);
        assert_eq!(m.deltas[0].describe(), delta_key(&m.id));
    }

    #[test]
    fn manifest_round_trip_and_version_check() {
        let m = sample_manifest();
        let key = manifest_key(&m.id);
        assert_eq!(Manifest::from_json(&key, &m.to_json()).unwrap(), m);

        // Version 1 (session 2's replicas) is still read.
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        v["version"] = 1.into();
        let v1 = Manifest::from_json(&key, &serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(v1.version, 1);
        v["version"] = 99.into();
        let err = Manifest::from_json(&key, &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(
            err,
            FormatError::UnsupportedVersion { version: 99, .. }
        ));
        assert!(err.to_string().contains(&key), "{err}");

        let err = Manifest::from_json(&key, b"{\"format\": \"other\"}").unwrap_err();
        assert!(matches!(err, FormatError::UnsupportedVersion { .. }));
        let err = Manifest::from_json(&key, b"not json").unwrap_err();
        assert!(err.to_string().contains(&key), "{err}");
        let err = Manifest::from_json("manifests/other.json", &m.to_json()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
