//! The S3 store (`s3://bucket/prefix`) on aws-sdk-s3.
//!
//! Endpoint from `--endpoint`, else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`
//! (path-style addressing with any custom endpoint, which is what MinIO,
//! SeaweedFS and most S3-compatible stores expect, virtual-hosted on AWS;
//! [`S3Options::path_style`] forces either); region from the AWS chain,
//! `us-east-1` when none is set; credentials from the standard AWS chain (env,
//! profile, web identity/IRSA, ECS, IMDS) unless a replica has its own keys.
//! Every object written carries the replica's server-side encryption and
//! storage class, if it asks for them ([`Sse`], [`S3Options::storage_class`]).
//!
//! Requests are retried with exponential backoff on throttling, 5xx and
//! connection errors (SDK standard mode, more attempts, no retry quota so a
//! long burst of 503s cannot switch retries off). Bodies of large objects go
//! up as multipart uploads. Whole-object reads are retried when the body is
//! cut off mid-way, which the SDK does not do by itself.

use std::ops::Range;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_runtime::client::retries::{RetryPartition, TokenBucket};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{ObjectMeta, ObjectStore, StoreError, check_key};

/// Most bytes reserved up front for a body of a whole object from its
/// Content-Length (a ranged read reserves its range's length): a larger
/// body grows as it arrives, so a lying header cannot make us allocate.
const BODY_HINT: u64 = 16 << 20;

/// Reads a response body into one buffer of `capacity` (its length, when
/// known). `ByteStream::collect` kept the body as the transport's pieces and
/// `into_bytes` then copied them into a second buffer: two copies of every
/// ranged read alive at once, which made 2.2 MiB of a restore's peak RSS per
/// 1 MiB download in flight (issue 18). The buffer is a recycled one
/// (`buffers`).
async fn read_body(
    mut body: ByteStream,
    capacity: u64,
) -> Result<Bytes, aws_sdk_s3::primitives::ByteStreamError> {
    let mut buf = super::buffers::buffer(capacity as usize);
    while let Some(piece) = body.try_next().await? {
        buf.extend_from_slice(&piece);
    }
    Ok(super::buffers::freeze(buf))
}

/// Objects larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 32 << 20;
/// Size of each part of a multipart upload (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 16 << 20;
/// Parts in flight at once: enough to fill a link, few enough to bound memory
/// beyond the body the caller already holds.
const PART_CONCURRENCY: usize = 4;
/// Attempts per request (first try included) unless `AWS_MAX_ATTEMPTS` says
/// otherwise. With the backoff below a request gives up after roughly 30 s of
/// trying, long enough to ride out a brief outage, short enough that a
/// one-shot command with a wrong endpoint fails in reasonable time.
const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Attempts to read a whole object whose body is cut off mid-way.
const BODY_ATTEMPTS: u32 = 6;

/// A store in an S3 bucket under a key prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket root.
    prefix: String,
    /// The endpoint, for messages.
    endpoint: String,
    /// Server-side encryption asked of every write.
    sse: Option<Sse>,
    /// Storage class of every write.
    storage_class: Option<aws_sdk_s3::types::StorageClass>,
}

/// Server-side encryption asked of the store on every PUT (and multipart
/// upload). This is the store's encryption at rest, on top of (not instead
/// of) mailsafe's own client-side encryption with `--encryption-key-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// `x-amz-server-side-encryption: AES256` (SSE-S3: keys the store holds).
    S3,
    /// `x-amz-server-side-encryption: aws:kms`, with this key id or ARN
    /// (`None`: the account's default KMS key).
    Kms(Option<String>),
}

impl std::str::FromStr for Sse {
    type Err = String;

    /// `AES256` (or `sse-s3`), `aws:kms` (or `sse-kms`); a KMS key id is
    /// given separately.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "aes256" | "sse-s3" => Ok(Sse::S3),
            "aws:kms" | "sse-kms" | "kms" => Ok(Sse::Kms(None)),
            _ => Err(format!(
                "server-side encryption {s:?}: expected AES256 (sse-s3) or aws:kms (sse-kms)"
            )),
        }
    }
}

/// Settings of an [`S3Store`] beyond the AWS chain. The default reads
/// everything from the environment.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Endpoint URL; overrides `AWS_ENDPOINT_URL(_S3)`.
    pub endpoint: Option<String>,
    /// Attempts per request, first try included; overrides
    /// `AWS_MAX_ATTEMPTS` (default 8).
    pub max_attempts: Option<u32>,
    /// Static access key id and secret, instead of the credential chain
    /// (a replica's own keys, tests and tools that hold keys themselves).
    pub credentials: Option<(String, String)>,
    /// `Some(true)`: path-style requests (`endpoint/bucket/key`);
    /// `Some(false)`: virtual-hosted (`bucket.endpoint/key`); `None`:
    /// path-style with a custom endpoint, virtual-hosted on AWS. (The SDK
    /// uses path-style with an IP-address endpoint whatever this says.)
    pub path_style: Option<bool>,
    /// Server-side encryption of every write.
    pub sse: Option<Sse>,
    /// Storage class of every write (`STANDARD_IA`, `GLACIER_IR`, ...; the
    /// store refuses a class it does not know).
    pub storage_class: Option<String>,
}

impl std::fmt::Debug for S3Options {
    // Hand-written so the secret can never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("max_attempts", &self.max_attempts)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("path_style", &self.path_style)
            .field("sse", &self.sse)
            .field("storage_class", &self.storage_class)
            .finish()
    }
}

impl S3Store {
    /// Lists `prefix` (relative to the replica), from after `start_after`
    /// when given (S3's `StartAfter`, so the server skips what lies before).
    async fn list_from(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        // The replica root lists as "prefix/" so that "mail" never matches
        // "mailbox/...".
        let full = |rel: &str| {
            if self.prefix.is_empty() {
                rel.to_string()
            } else {
                format!("{}/{rel}", self.prefix)
            }
        };
        let full_prefix = full(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .set_start_after(start_after.map(full))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.map_err(e, &full_prefix))?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                let Some(rel) = key.get(strip..) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: rel.to_string(),
                    size: obj.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    last_modified: obj.last_modified().and_then(to_chrono),
                    etag: obj.e_tag().map(str::to_string),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// A store for `bucket` under `prefix`, configured from the AWS chain
    /// (see the module docs). `endpoint` overrides `AWS_ENDPOINT_URL(_S3)`.
    pub async fn new(
        bucket: &str,
        prefix: &str,
        endpoint: Option<&str>,
    ) -> Result<Self, StoreError> {
        let options = S3Options {
            endpoint: endpoint.map(str::to_string),
            ..S3Options::default()
        };
        Self::with_options(bucket, prefix, options).await
    }

    /// A store for `bucket` under `prefix` with explicit [`S3Options`];
    /// whatever they leave unset comes from the AWS chain.
    pub async fn with_options(
        bucket: &str,
        prefix: &str,
        options: S3Options,
    ) -> Result<Self, StoreError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = options
            .endpoint
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let max_attempts = options
            .max_attempts
            .or_else(|| env("AWS_MAX_ATTEMPTS").and_then(|v| v.parse().ok()))
            .unwrap_or(DEFAULT_MAX_ATTEMPTS)
            .max(1);
        let retry = RetryConfig::standard()
            .with_max_attempts(max_attempts)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(8));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            // Time to the first response byte; generous for slow stores, but
            // a hung connection still fails and is retried.
            .read_timeout(Duration::from_secs(60))
            .build();
        let region =
            RegionProviderChain::default_provider().or_else(Region::from_static("us-east-1"));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some((id, secret)) = options.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id, secret, None, None, "mailsafe",
            ));
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            // The standard strategy stops retrying once a shared quota is
            // spent (~100 retries); a sidecar riding out a 503 storm must
            // keep retrying, bounded per request by max_attempts instead.
            .retry_partition(
                RetryPartition::custom("mailsafe-s3")
                    .token_bucket(TokenBucket::unlimited())
                    .build(),
            )
            // Every object's sha256 is verified on restore, so the SDK's own
            // CRCs would only cost CPU and trip S3-compatible stores that do
            // not speak aws-chunked trailers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        let endpoint_desc = match &endpoint {
            Some(ep) => {
                conf = conf.endpoint_url(ep);
                ep.clone()
            }
            None => {
                let region = shared.region().map(|r| r.to_string()).unwrap_or_default();
                format!("https://s3.{region}.amazonaws.com")
            }
        };
        conf = conf.force_path_style(options.path_style.unwrap_or(endpoint.is_some()));
        Ok(Self {
            client: Client::from_conf(conf.build()),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: endpoint_desc,
            sse: options.sse,
            storage_class: options.storage_class.as_deref().map(Into::into),
        })
    }

    /// The `x-amz-server-side-encryption` value of every write.
    fn sse_header(&self) -> Option<aws_sdk_s3::types::ServerSideEncryption> {
        use aws_sdk_s3::types::ServerSideEncryption as E;
        self.sse.as_ref().map(|s| match s {
            Sse::S3 => E::Aes256,
            Sse::Kms(_) => E::AwsKms,
        })
    }

    /// The `x-amz-server-side-encryption-aws-kms-key-id` of every write.
    fn sse_kms_key_id(&self) -> Option<String> {
        match &self.sse {
            Some(Sse::Kms(id)) => id.clone(),
            _ => None,
        }
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full S3 key of a replica-relative key.
    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(self.join(key))
    }

    fn join(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// Turns an SDK error into a [`StoreError`] naming the bucket, key and
    /// endpoint. 412/409 answers become [`StoreError::PreconditionFailed`];
    /// callers refine that.
    fn map_err<E>(&self, err: SdkError<E, HttpResponse>, full_key: &str) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (bucket, endpoint) = (self.bucket.clone(), self.endpoint.clone());
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                return StoreError::Unreachable {
                    bucket,
                    endpoint,
                    detail: DisplayErrorContext(&err).to_string(),
                };
            }
            SdkError::ServiceError(_) | SdkError::ResponseError(_) => {}
            _ => {
                return StoreError::Other(format!(
                    "s3://{bucket}/{full_key} at {endpoint}: {}",
                    DisplayErrorContext(&err)
                ));
            }
        }
        let status = err.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
        let code = err.code().unwrap_or("").to_string();
        let message = err.message().unwrap_or("").to_string();
        let detail = if message.is_empty() {
            format!("{code} (HTTP {status})")
        } else {
            format!("{code}: {message} (HTTP {status})")
        };
        match (code.as_str(), status) {
            ("NoSuchBucket", _) => StoreError::NoSuchBucket { bucket, endpoint },
            ("NoSuchKey" | "NotFound", _) | ("", 404) => StoreError::NotFound {
                key: full_key.to_string(),
            },
            (
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "InvalidToken"
                | "ExpiredToken"
                | "AllAccessDisabled",
                _,
            )
            | (_, 401 | 403) => StoreError::AccessDenied {
                bucket,
                endpoint,
                detail,
            },
            ("PreconditionFailed" | "ConditionalRequestConflict", _) | (_, 409 | 412) => {
                StoreError::PreconditionFailed {
                    key: full_key.to_string(),
                }
            }
            _ => StoreError::Other(format!("s3://{bucket}/{full_key} at {endpoint}: {detail}")),
        }
    }

    async fn put_multipart(&self, full: &str, body: Bytes) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .set_server_side_encryption(self.sse_header())
            .set_ssekms_key_id(self.sse_kms_key_id())
            .set_storage_class(self.storage_class.clone())
            .send()
            .await
            .map_err(|e| self.map_err(e, full))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::Other(format!("s3://{}/{full}: no upload id", self.bucket)))?
            .to_string();
        let parts = body.len().div_ceil(PART_SIZE);
        let uploaded: Result<Vec<CompletedPart>, StoreError> = futures::stream::iter(0..parts)
            .map(|i| {
                let chunk = body.slice(i * PART_SIZE..((i + 1) * PART_SIZE).min(body.len()));
                let number = i as i32 + 1;
                let upload_id = &upload_id;
                async move {
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(ByteStream::from(chunk))
                        .send()
                        .await
                        .map_err(|e| self.map_err(e, full))?;
                    Ok(CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build())
                }
            })
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await;
        let completed = match uploaded {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.map_err(e, full)),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            // Best effort: an abandoned upload only costs storage until the
            // bucket's lifecycle rule (if any) removes it.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        completed
    }

    /// GET with an optional range, retrying when the body is cut off.
    async fn get_inner(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, StoreError> {
        let full = self.full_key(key)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.client.get_object().bucket(&self.bucket).key(&full);
            if let Some(r) = &range {
                if r.end <= r.start {
                    return Ok(Bytes::new());
                }
                req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
            }
            let out = match req.send().await {
                Ok(out) => out,
                // A range starting at or past the end: S3 answers 416.
                Err(e)
                    if range.is_some()
                        && e.raw_response().is_some_and(|r| r.status().as_u16() == 416) =>
                {
                    return Ok(Bytes::new());
                }
                Err(e) => return Err(self.map_err(e, &full)),
            };
            let expected = out.content_length().and_then(|n| u64::try_from(n).ok());
            let hint = range.as_ref().map_or(BODY_HINT, |r| r.end - r.start);
            match read_body(out.body, expected.unwrap_or(0).min(hint)).await {
                Ok(data) => {
                    if expected.is_none_or(|n| n == data.len() as u64) {
                        return Ok(data);
                    }
                    if attempt >= BODY_ATTEMPTS {
                        return Err(StoreError::Other(format!(
                            "s3://{}/{full} at {}: body truncated ({} of {} bytes)",
                            self.bucket,
                            self.endpoint,
                            data.len(),
                            expected.unwrap_or(0)
                        )));
                    }
                }
                Err(e) if attempt >= BODY_ATTEMPTS => {
                    return Err(StoreError::Other(format!(
                        "s3://{}/{full} at {}: reading body failed: {}",
                        self.bucket,
                        self.endpoint,
                        DisplayErrorContext(&e)
                    )));
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
        }
    }
}

fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{} at {}", self.bucket, self.endpoint)
        } else {
            format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        if body.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(&full, body).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .set_server_side_encryption(self.sse_header())
            .set_ssekms_key_id(self.sse_kms_key_id())
            .set_storage_class(self.storage_class.clone())
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.map_err(e, &full))
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        // A single PUT even for large bodies (S3 allows 5 GiB): conditional
        // multipart completion is not supported by every S3-compatible store.
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .if_none_match("*")
            .set_server_side_encryption(self.sse_header())
            .set_ssekms_key_id(self.sse_kms_key_id())
            .set_storage_class(self.storage_class.clone())
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| match self.map_err(e, &full) {
                StoreError::PreconditionFailed { key } => StoreError::AlreadyExists { key },
                other => other,
            })
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.get_inner(key, None).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.get_inner(key, Some(range)).await
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
        let full = self.full_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.map_err(e, &full) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.map_err(e, &full))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out
                .content_length()
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            last_modified: out.last_modified().and_then(to_chrono),
            etag: out.e_tag().map(str::to_string),
        })
    }

    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<String, StoreError> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .if_match(etag)
            .set_server_side_encryption(self.sse_header())
            .set_ssekms_key_id(self.sse_kms_key_id())
            .set_storage_class(self.storage_class.clone())
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.map_err(e, &full))?;
        match out.e_tag() {
            Some(t) => Ok(t.to_string()),
            // Some stores omit the ETag on PUT: ask for it.
            None => self.head(key).await?.etag.ok_or_else(|| {
                StoreError::Other(format!(
                    "s3://{}/{full} at {}: no ETag",
                    self.bucket, self.endpoint
                ))
            }),
        }
    }
}
