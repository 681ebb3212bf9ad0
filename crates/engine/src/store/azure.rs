//! The Azure Blob Storage store (`az://[account@]container/prefix`, also
//! spelled `abs://` as Litestream does), on Apache Arrow's `object_store`
//! crate; behind the default-on `azure` feature.
//!
//! Why `object_store` and not the `azure_storage_blobs` crates: the
//! `azure_storage*` 0.x crates were the unofficial SDK, deprecated when
//! Microsoft moved to the new `azure_storage_blob` crate, which is still a
//! beta with a changing API. `object_store` is maintained by the Apache Arrow
//! project for DataFusion, Delta Lake and others, releases often, and gives
//! exactly what the [`ObjectStore`] trait asks of a store: conditional create
//! (`If-None-Match: *`) and compare-and-swap (`If-Match`) puts for the lease,
//! ranged GETs, paginated listings, retries with backoff on throttling, 5xx
//! and connection errors, shared key and SAS authentication, and a custom
//! endpoint for Azurite. It reuses the `reqwest`/`hyper` stack the binary has.
//!
//! Account: the URL's user part (`az://ACCOUNT@container/prefix`), else
//! `AZURE_STORAGE_ACCOUNT`. Credentials: `AZURE_STORAGE_KEY` (shared key),
//! else `AZURE_STORAGE_SAS_TOKEN` (a SAS token, with or without its `?`).
//! Endpoint: `--endpoint` (`MAILSAFE_ENDPOINT`), else
//! `AZURE_STORAGE_ENDPOINT`, else `https://ACCOUNT.blob.core.windows.net`;
//! an emulator's endpoint names the account as its path
//! (`http://127.0.0.1:10000/devstoreaccount1`). Neither the key nor the SAS
//! token ever reaches a message or a log line: `object_store` leaves a SAS
//! request's URL out of its errors and [`scrub`] removes any signature left.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore as _, ObjectStoreExt as _,
    PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};

use super::{ObjectMeta, ObjectStore, StoreError, check_key};

/// Attempts per request (first try included), as the S3 store's default:
/// with the backoff below (200 ms doubling to 8 s) about 30 s of trying.
const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// Settings of an [`AzureStore`]; what they leave unset comes from the
/// environment (module docs).
#[derive(Clone, Default)]
pub struct AzureOptions {
    /// The storage account (overrides the URL's user part and
    /// `AZURE_STORAGE_ACCOUNT`).
    pub account: Option<String>,
    /// The account's shared key (base64), overriding `AZURE_STORAGE_KEY`.
    pub access_key: Option<String>,
    /// A SAS token (`sv=...&sig=...`), overriding `AZURE_STORAGE_SAS_TOKEN`.
    pub sas_token: Option<String>,
    /// The Blob service URL, overriding `AZURE_STORAGE_ENDPOINT`.
    pub endpoint: Option<String>,
    /// Attempts per request, first try included (default 8).
    pub max_attempts: Option<u32>,
}

impl std::fmt::Debug for AzureOptions {
    // Hand-written so that neither secret can end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureOptions")
            .field("account", &self.account)
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("sas_token", &self.sas_token.as_ref().map(|_| "<redacted>"))
            .field("endpoint", &self.endpoint)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// A store in an Azure Blob Storage container under a key prefix.
#[derive(Clone)]
pub struct AzureStore {
    client: Arc<MicrosoftAzure>,
    container: String,
    /// Key prefix without leading or trailing `/`; empty for the container
    /// root.
    prefix: String,
    /// The Blob service URL, for messages.
    endpoint: String,
}

impl std::fmt::Debug for AzureStore {
    // Hand-written: the client's own `Debug` reaches its credential
    // provider, and the key must never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStore")
            .field("container", &self.container)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Removes what could carry a credential from a message: the value of a
/// SAS token's `sig=` (a URL `object_store` did not redact, a server's echo).
fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("REDACTED");
        rest = &rest[i + 4..];
        let end = rest
            .find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

impl AzureStore {
    /// A store for `container` under `prefix`; `url_account` is the account
    /// named by the URL's user part. Nothing is contacted yet.
    pub fn with_options(
        url_account: Option<&str>,
        container: &str,
        prefix: &str,
        options: AzureOptions,
    ) -> Result<Self, StoreError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url = format!("az://{container}/{prefix}");
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: url.clone(),
            reason,
        };
        let account = options
            .account
            .or_else(|| url_account.map(str::to_string))
            .or_else(|| env("AZURE_STORAGE_ACCOUNT"))
            .ok_or_else(|| {
                invalid(
                    "no storage account: write az://ACCOUNT@container/prefix or set \
                     AZURE_STORAGE_ACCOUNT"
                        .into(),
                )
            })?;
        let endpoint = options
            .endpoint
            .or_else(|| env("AZURE_STORAGE_ENDPOINT"))
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let max_attempts = options.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1);
        // As the S3 store: exponential backoff from 200 ms up to 8 s between
        // attempts, on throttling (429/503), 5xx and connection errors.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(8),
                base: 2.0,
            },
            max_retries: max_attempts as usize - 1,
            retry_timeout: Duration::from_secs(120),
        };
        let client_options = ClientOptions::new()
            .with_allow_http(endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            // A whole request, body included: packs are tens of MiB, so a
            // slow link still finishes; a hung connection fails and is
            // retried.
            .with_timeout(Duration::from_secs(300));
        let mut builder = MicrosoftAzureBuilder::new()
            .with_account(&account)
            .with_container_name(container)
            .with_endpoint(endpoint.clone())
            .with_retry(retry)
            .with_client_options(client_options);
        if let Some(key) = options.access_key.or_else(|| env("AZURE_STORAGE_KEY")) {
            builder = builder.with_access_key(key);
        } else if let Some(sas) = options.sas_token.or_else(|| env("AZURE_STORAGE_SAS_TOKEN")) {
            let pairs = object_store::azure::split_sas(&sas)
                .map_err(|_| invalid("AZURE_STORAGE_SAS_TOKEN is not a SAS token".into()))?;
            builder = builder.with_sas_authorization(pairs);
        } else {
            return Err(invalid(
                "no credentials: set AZURE_STORAGE_KEY (shared key) or \
                 AZURE_STORAGE_SAS_TOKEN"
                    .into(),
            ));
        }
        let client = builder
            .build()
            .map_err(|e| invalid(scrub(&e.to_string())))?;
        Ok(Self {
            client: Arc::new(client),
            container: container.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
        })
    }

    /// The container name.
    pub fn container(&self) -> &str {
        &self.container
    }

    fn join(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// The blob path of a replica-relative key.
    fn path(&self, key: &str) -> Result<(String, Path), StoreError> {
        check_key(key)?;
        let full = self.join(key);
        let path = Path::parse(&full)
            .map_err(|e| StoreError::Other(format!("invalid object key {key:?}: {e}")))?;
        Ok((full, path))
    }

    /// Turns an `object_store` error into a [`StoreError`] naming the
    /// container, key and endpoint. A conflict (409) and a failed
    /// precondition (412) both become [`StoreError::PreconditionFailed`];
    /// `put_if_absent` refines that.
    fn map_err(&self, err: object_store::Error, full_key: &str) -> StoreError {
        let (bucket, endpoint) = (self.container.clone(), self.endpoint.clone());
        let msg = scrub(&err.to_string());
        // Azure's error code is in the body the message carries.
        if msg.contains("ContainerNotFound") {
            return StoreError::NoSuchBucket { bucket, endpoint };
        }
        match err {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                key: full_key.to_string(),
            },
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => StoreError::PreconditionFailed {
                key: full_key.to_string(),
            },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StoreError::AccessDenied {
                bucket,
                endpoint,
                detail: msg,
            },
            ref e if unreachable(e) => StoreError::Unreachable {
                bucket,
                endpoint,
                detail: msg,
            },
            _ => StoreError::Other(format!(
                "az://{}/{full_key} at {}: {msg}",
                self.container, self.endpoint
            )),
        }
    }

    /// Lists under `prefix` (relative, any string), keys sorted.
    /// `object_store` lists by whole path segments, so the listing is of the
    /// directory `prefix` lies in, filtered to keys that start with it; the
    /// replica root lists as "prefix/" so "mail" never matches "mailbox/".
    async fn list_from(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let full_prefix = self.join(prefix);
        let dir = match full_prefix.rfind('/') {
            Some(i) => &full_prefix[..i],
            None => "",
        };
        let dir_path = if dir.is_empty() {
            None
        } else {
            Some(
                Path::parse(dir)
                    .map_err(|e| StoreError::Other(format!("invalid prefix {prefix:?}: {e}")))?,
            )
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut listing = match start_after {
            // Server-side `startFrom` where the service has it; Azurite
            // ignores it, so what comes back is filtered below all the same.
            Some(after) => {
                let offset = Path::parse(self.join(after))
                    .map_err(|e| StoreError::Other(format!("invalid key {after:?}: {e}")))?;
                self.client.list_with_offset(dir_path.as_ref(), &offset)
            }
            None => self.client.list(dir_path.as_ref()),
        };
        let mut out = Vec::new();
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|e| self.map_err(e, &full_prefix))?
        {
            let key = meta.location.as_ref();
            if !key.starts_with(&full_prefix) {
                continue;
            }
            let Some(rel) = key.get(strip..) else {
                continue;
            };
            if start_after.is_some_and(|after| rel <= after) {
                continue;
            }
            out.push(ObjectMeta {
                key: rel.to_string(),
                size: meta.size,
                last_modified: Some(meta.last_modified),
                etag: meta.e_tag,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn put_mode(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String, StoreError> {
        let (full, path) = self.path(key)?;
        // One Put Blob whatever the size (the service takes up to 5000 MiB
        // in one request): a conditional block-list commit would need the
        // condition on the commit, and mailsafe's objects are tens of MiB.
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let out = self
            .client
            .put_opts(&path, PutPayload::from(body), opts)
            .await
            .map_err(|e| self.map_err(e, &full))?;
        match out.e_tag {
            Some(t) => Ok(t),
            None => self.head(key).await?.etag.ok_or_else(|| {
                StoreError::Other(format!(
                    "az://{}/{full} at {}: no ETag",
                    self.container, self.endpoint
                ))
            }),
        }
    }
}

/// Whether `err` is a connection failure or timeout (after the retries).
fn unreachable(err: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return matches!(http.kind(), HttpErrorKind::Connect | HttpErrorKind::Timeout);
        }
        source = e.source();
    }
    false
}

#[async_trait::async_trait]
impl ObjectStore for AzureStore {
    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("az://{} at {}", self.container, self.endpoint)
        } else {
            format!(
                "az://{}/{} at {}",
                self.container, self.prefix, self.endpoint
            )
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.put_mode(key, body, PutMode::Overwrite).await.map(drop)
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        match self.put_mode(key, body, PutMode::Create).await {
            Ok(_) => Ok(()),
            Err(StoreError::PreconditionFailed { key }) => Err(StoreError::AlreadyExists { key }),
            Err(e) => Err(e),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let (full, path) = self.path(key)?;
        let got = self
            .client
            .get_opts(&path, GetOptions::default())
            .await
            .map_err(|e| self.map_err(e, &full))?;
        got.bytes().await.map_err(|e| self.map_err(e, &full))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let (full, path) = self.path(key)?;
        if range.end <= range.start {
            return Ok(Bytes::new());
        }
        let opts = GetOptions::default().with_range(Some(GetRange::Bounded(range.clone())));
        match self.client.get_opts(&path, opts).await {
            Ok(got) => got.bytes().await.map_err(|e| self.map_err(e, &full)),
            Err(e) => match self.map_err(e, &full) {
                // A range starting at or past the end (416 from the service,
                // or refused by the client): nothing there, as S3 answers.
                // The object must exist, though.
                StoreError::Other(msg) => {
                    if range.start >= self.head(key).await?.size {
                        return Ok(Bytes::new());
                    }
                    Err(StoreError::Other(msg))
                }
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.list_from(prefix, None).await
    }

    async fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        self.list_from(prefix, Some(start_after)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let (full, path) = self.path(key)?;
        match self.client.delete(&path).await {
            Ok(()) => Ok(()),
            Err(e) => match self.map_err(e, &full) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let (full, path) = self.path(key)?;
        let meta = self
            .client
            .head(&path)
            .await
            .map_err(|e| self.map_err(e, &full))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: meta.size,
            last_modified: Some(meta.last_modified),
            etag: meta.e_tag,
        })
    }

    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<String, StoreError> {
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some(etag.to_string()),
            version: None,
        });
        self.put_mode(key, body, mode).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_scrubbed() {
        let m = scrub("GET http://h/c/k?sv=2021&sig=abc%2Fdef&se=1 failed: sig=zzz");
        assert_eq!(
            m,
            "GET http://h/c/k?sv=2021&sig=REDACTED&se=1 failed: sig=REDACTED"
        );
    }

    #[test]
    fn debug_never_shows_the_secrets() {
        let o = AzureOptions {
            access_key: Some("the-key".into()),
            sas_token: Some("sig=the-sas".into()),
            ..AzureOptions::default()
        };
        let d = format!("{o:?}");
        assert!(!d.contains("the-key") && !d.contains("the-sas"), "{d}");
    }
}
