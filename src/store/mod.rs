//! Where backups live: the [`ObjectStore`] trait and its two implementations,
//! S3 (`s3://bucket/prefix`, on aws-sdk-s3) and a local directory
//! (`file:///path`).
//!
//! Keys passed to a store are relative to the replica's prefix; the store adds
//! the prefix. Stores never log or return credentials.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

/// Metadata of one stored object, as returned by [`ObjectStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the replica prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, when the store reports one.
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// Errors of an object store. Each names the key, bucket, path or endpoint.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object not found: {key}")]
    NotFound {
        /// The missing key (with prefix, as stored).
        key: String,
    },
    /// A conditional write found the object already there.
    #[error("object already exists: {key}")]
    AlreadyExists {
        /// The key that exists.
        key: String,
    },
    /// Anything else, with a message that names what was involved.
    #[error("{0}")]
    Other(String),
}

/// A flat key/value object store (S3 semantics). Implementations are cheap to
/// share behind an `Arc` and safe to call concurrently.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Where this store points, for messages (`s3://bucket/prefix at
    /// http://endpoint`, `file:///path`). Never contains credentials.
    fn describe(&self) -> String;
    /// Writes `body` at `key`, replacing any existing object.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError>;
    /// Writes `body` at `key` only if no object exists there; otherwise
    /// returns [`StoreError::AlreadyExists`].
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<(), StoreError>;
    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// Reads the bytes `range` of an object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;
    /// Lists every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// A shared handle to any object store.
pub type DynStore = Arc<dyn ObjectStore>;
