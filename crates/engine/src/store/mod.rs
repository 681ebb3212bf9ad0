//! Where backups live: the [`ObjectStore`] trait and its implementations,
//! S3 (`s3://bucket/prefix`, on aws-sdk-s3, see `s3`; behind the default-on
//! `s3` feature, so the rest builds without the SDK), Azure Blob Storage
//! (`az://[account@]container/prefix`, on `object_store`, see `azure`;
//! behind the default-on `azure` feature), a local directory
//! (`file:///path`, see [`fs`]) and, for engine tests, memory with scripted
//! faults and a settable clock ([`memory`]). [`open`] picks one from a
//! replica URL; [`conformance`] is what each of them must do; [`buffers`]
//! recycles the buffers of the bodies they read.
//!
//! Keys passed to a store are relative to the replica's prefix; the store adds
//! the prefix. Stores never log or return credentials.

#[cfg(feature = "azure")]
pub mod azure;
pub mod buffers;
pub mod conformance;
pub mod fs;
pub mod memory;
#[cfg(feature = "s3")]
pub mod s3;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

/// Metadata of one stored object, as returned by [`ObjectStore::list`] and
/// [`ObjectStore::head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the replica prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, when the store reports one.
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
    /// An opaque version tag that changes whenever the object is replaced
    /// (the S3 ETag, or inode/size/mtime for files), for
    /// [`ObjectStore::put_if_match`]. `None` when the store did not report one
    /// (S3 listings do, but callers should use `head` before a conditional
    /// replace).
    pub etag: Option<String>,
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
    /// A conditional replace found a different version than expected (someone
    /// else replaced or deleted it since it was read).
    #[error("object changed since it was read: {key}")]
    PreconditionFailed {
        /// The key whose version did not match.
        key: String,
    },
    /// The replica URL could not be understood.
    #[error("invalid replica URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The bucket does not exist at that endpoint.
    #[error("bucket {bucket:?} does not exist at {endpoint}")]
    NoSuchBucket {
        /// The bucket name.
        bucket: String,
        /// The endpoint asked.
        endpoint: String,
    },
    /// The store refused the credentials or denied access.
    #[error("access denied to bucket {bucket:?} at {endpoint}: {detail}")]
    AccessDenied {
        /// The bucket name.
        bucket: String,
        /// The endpoint asked.
        endpoint: String,
        /// The store's error code and message (never the credentials).
        detail: String,
    },
    /// The endpoint could not be reached (connection refused, DNS, timeout),
    /// even after retries.
    #[error("cannot reach {endpoint} (bucket {bucket:?}): {detail}")]
    Unreachable {
        /// The bucket name.
        bucket: String,
        /// The endpoint asked.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// The store accepted a conditional create of an existing key (it
    /// ignores `If-None-Match`), so two writers could not be kept apart.
    #[error(
        "{store} ignores conditional writes: a create of the existing key {key} with \
         If-None-Match was accepted instead of refused (412), so the single-writer lease \
         cannot fence two writers and they could interleave two histories; refusing to \
         write. Use a store that supports conditional writes, or pass \
         --unsafe-no-conditional-writes (MAILSAFE_UNSAFE_NO_CONDITIONAL_WRITES=true) to \
         write anyway, with at most one writer"
    )]
    NoConditionalWrites {
        /// The store, as described by [`ObjectStore::describe`].
        store: String,
        /// The probe key.
        key: String,
    },
    /// Anything else, with a message that names what was involved.
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// Whether trying the same operation again later may succeed (network,
    /// throttling, server errors), as opposed to errors that need a human
    /// (bad URL, credentials, missing bucket or object).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. } | StoreError::Other(_))
    }

    /// The process exit code this error ends a command with when it is the
    /// cause (README, "Exit codes"): 2 for a malformed replica URL (a usage
    /// error), 5 for a store that ignores conditional writes, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            StoreError::InvalidUrl { .. } => 2,
            StoreError::NoConditionalWrites { .. } => 5,
            _ => 1,
        }
    }
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
    /// Reads the bytes `range` of an object. A range reaching past the end
    /// returns the bytes up to the end.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;
    /// Lists every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Lists the objects whose key starts with `prefix` and sorts strictly
    /// after `start_after`, sorted by key. On S3 this is one request when
    /// few keys follow (`StartAfter`), whatever lies before: finding what is
    /// newer than a known snapshot costs O(new), not O(history). The default
    /// filters a full [`ObjectStore::list`].
    async fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut all = self.list(prefix).await?;
        all.retain(|m| m.key.as_str() > start_after);
        Ok(all)
    }
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Size, time and version tag of one object, or
    /// [`StoreError::NotFound`].
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;
    /// Replaces `key` with `body` only if its current version tag is `etag`
    /// (from [`ObjectStore::head`]); otherwise returns
    /// [`StoreError::PreconditionFailed`] (or [`StoreError::NotFound`] if it
    /// is gone). Returns the new version tag. This is the compare-and-swap a
    /// lease needs.
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<String, StoreError>;
}

/// A shared handle to any object store.
pub type DynStore = Arc<dyn ObjectStore>;

/// Key of the object [`probe_conditional_writes`] writes (under `lease/`,
/// where the lease ignores names that are not `<epoch>.json`).
pub const PROBE_KEY: &str = "lease/probe";

/// Checks that `store` refuses a conditional create of an existing key, as
/// the lease needs: writes [`PROBE_KEY`], then creates it again with
/// [`ObjectStore::put_if_absent`], which must fail with
/// [`StoreError::AlreadyExists`]. Some S3-compatible servers ignore
/// `If-None-Match` and overwrite; then this returns
/// [`StoreError::NoConditionalWrites`], unless `allow_unsafe` (the
/// `--unsafe-no-conditional-writes` flag), which logs a warning instead.
/// Two requests; writers run it before their first lease.
pub async fn probe_conditional_writes(
    store: &dyn ObjectStore,
    allow_unsafe: bool,
) -> Result<(), StoreError> {
    store.put(PROBE_KEY, Bytes::from_static(b"probe\n")).await?;
    match store
        .put_if_absent(PROBE_KEY, Bytes::from_static(b"probe again\n"))
        .await
    {
        Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Ok(()) => {
            let e = StoreError::NoConditionalWrites {
                store: store.describe(),
                key: PROBE_KEY.to_string(),
            };
            if !allow_unsafe {
                return Err(e);
            }
            tracing::warn!("{e}; writing anyway, as --unsafe-no-conditional-writes asks");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Opens the store a replica URL names: `s3://bucket[/prefix]`,
/// `az://[account@]container[/prefix]` (or `abs://`, Litestream's spelling)
/// or `file:///path`. `endpoint` overrides the S3 endpoint (else
/// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, else AWS) or the Azure Blob
/// service URL (else `AZURE_STORAGE_ENDPOINT`, else the account's); it is
/// ignored for `file://`. Nothing is contacted yet: a wrong endpoint,
/// credentials or bucket show up as errors of the first operation.
pub async fn open(url: &str, endpoint: Option<&str>) -> Result<DynStore, StoreError> {
    check_url(url)?;
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        #[cfg(feature = "s3")]
        {
            let store = s3::S3Store::new(bucket, prefix, endpoint).await?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = (bucket, prefix, endpoint);
            Err(StoreError::InvalidUrl {
                url: url.into(),
                reason: "this build has no S3 support (the engine's `s3` feature is off)".into(),
            })
        }
    } else if let Some(rest) = azure_url(url) {
        open_azure(url, rest, endpoint, None)
    } else {
        let path = url.strip_prefix("file://").unwrap_or_default();
        Ok(Arc::new(fs::FsStore::new(path)))
    }
}

/// The part after the scheme of an Azure URL (`az://` or `abs://`).
fn azure_url(url: &str) -> Option<&str> {
    url.strip_prefix("az://")
        .or_else(|| url.strip_prefix("abs://"))
}

/// Splits the part of an `az://` or `abs://` URL after the scheme into
/// (account from the user part, container, prefix).
pub(crate) fn parse_azure(rest: &str) -> (Option<&str>, &str, &str) {
    let (account, rest) = match rest.split_once('@') {
        Some((a, r)) if !a.contains('/') => (Some(a), r),
        _ => (None, rest),
    };
    let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (account.filter(|a| !a.is_empty()), container, prefix)
}

/// Opens the Azure store of `url` (`rest`: what follows its scheme).
fn open_azure(
    url: &str,
    rest: &str,
    endpoint: Option<&str>,
    max_attempts: Option<u32>,
) -> Result<DynStore, StoreError> {
    #[cfg(feature = "azure")]
    {
        let (account, container, prefix) = parse_azure(rest);
        let options = azure::AzureOptions {
            endpoint: endpoint.map(str::to_string),
            max_attempts,
            ..azure::AzureOptions::default()
        };
        let store =
            azure::AzureStore::with_options(account, container, prefix, options).map_err(|e| {
                match e {
                    // Name the URL as the user wrote it.
                    StoreError::InvalidUrl { reason, .. } => StoreError::InvalidUrl {
                        url: url.into(),
                        reason,
                    },
                    other => other,
                }
            })?;
        Ok(Arc::new(store))
    }
    #[cfg(not(feature = "azure"))]
    {
        let _ = (rest, endpoint, max_attempts);
        Err(StoreError::InvalidUrl {
            url: url.into(),
            reason: "this build has no Azure support (the engine's `azure` feature is off)".into(),
        })
    }
}

/// Opens `url` as [`open`] does, an S3 replica with `options` (its own
/// keys, addressing style, server-side encryption, storage class; what they
/// leave unset comes from the AWS chain). An Azure replica takes its
/// endpoint and attempts from `options`.
#[cfg(feature = "s3")]
pub async fn open_with(url: &str, options: s3::S3Options) -> Result<DynStore, StoreError> {
    check_url(url)?;
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        Ok(Arc::new(
            s3::S3Store::with_options(bucket, prefix, options).await?,
        ))
    } else if let Some(rest) = azure_url(url) {
        open_azure(url, rest, options.endpoint.as_deref(), options.max_attempts)
    } else {
        open(url, None).await
    }
}

/// Checks that `url` is one [`open`] can open (`s3://bucket[/prefix]` with
/// a bucket, `az://[account@]container[/prefix]` with a container,
/// `file:///path` with a path), without contacting anything: a config
/// file's replicas are checked before anything starts.
pub fn check_url(url: &str) -> Result<(), StoreError> {
    let reason = if let Some(rest) = url.strip_prefix("s3://") {
        if !rest.split('/').next().unwrap_or_default().is_empty() {
            return Ok(());
        }
        "no bucket name after s3://"
    } else if let Some(rest) = azure_url(url) {
        let (_, container, _) = parse_azure(rest);
        if !container.is_empty() {
            return Ok(());
        }
        "no container name after az:// (az://[account@]container/prefix)"
    } else if let Some(path) = url.strip_prefix("file://") {
        if !path.is_empty() {
            return Ok(());
        }
        "no path after file://"
    } else {
        "expected s3://bucket/prefix, az://[account@]container/prefix or file:///path"
    };
    Err(StoreError::InvalidUrl {
        url: url.into(),
        reason: reason.into(),
    })
}

/// Checks that a key is safe to map onto a path or an S3 key under a
/// prefix: not empty, no leading `/`, no empty, `.` or `..` components, no
/// NUL. Keys come from our own code, but also from listings of a bucket that
/// may be hostile, and must never escape the replica.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\0')
        || key.contains('\\')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err(StoreError::Other(format!("invalid object key {key:?}")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[tokio::test]
    async fn the_probe_refuses_a_store_that_ignores_conditional_writes() {
        let m = memory::MemoryStore::new("probe");
        probe_conditional_writes(&m, false).await.unwrap();
        m.ignore_conditional_writes(true);
        probe_conditional_writes(&m, true).await.unwrap();
        let err = probe_conditional_writes(&m, false).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::NoConditionalWrites { .. }),
            "{msg}"
        );
        assert!(msg.contains("memory://probe"), "names the store: {msg}");
        assert!(
            msg.contains("--unsafe-no-conditional-writes"),
            "names the flag: {msg}"
        );
    }

    #[test]
    fn keys_that_could_escape_are_refused() {
        for bad in [
            "", "/a", "a//b", "../x", "a/../b", "a/./b", "a/", "a\0b", "a\\b",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "a/b", "manifests/0001.json", "chunks/ab/cd.zst", "..a"] {
            assert!(check_key(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn urls_name_account_container_and_prefix() {
        assert_eq!(parse_azure("acct@box/a/b"), (Some("acct"), "box", "a/b"));
        assert_eq!(parse_azure("box/a"), (None, "box", "a"));
        assert_eq!(parse_azure("box"), (None, "box", ""));
        // An `@` in the prefix is not an account.
        assert_eq!(parse_azure("box/a@b"), (None, "box", "a@b"));
    }

    #[tokio::test]
    async fn open_rejects_unknown_schemes_and_empty_parts() {
        for url in [
            "/tmp/x",
            "s3://",
            "s3:///prefix",
            "file://",
            "gs://b/p",
            "az://",
            "abs:///prefix",
            "az://acct@/prefix",
        ] {
            let err = open(url, None).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidUrl { .. }), "{url}: {err}");
            assert!(err.to_string().contains(url), "{err}");
        }
    }
}
