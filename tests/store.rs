//! The object stores against real servers: S3 on SeaweedFS (started by
//! `common`; the conformance checks every store passes, and S3's own), and
//! `file://` through `store::open`. Azure's are in tests/azure.rs.

mod common;

use bytes::Bytes;
use mailsafe::store::s3::{S3Options, S3Store};
use mailsafe::store::{self, DynStore, ObjectStore, StoreError};
use sha2::{Digest, Sha256};

/// A store on a fresh bucket under `prefix`, with the test keys.
async fn s3_store(s3: &common::S3, prefix: &str) -> S3Store {
    S3Store::with_options(&s3.bucket, prefix, s3.server.options())
        .await
        .unwrap()
}

fn keys(list: &[store::ObjectMeta]) -> Vec<&str> {
    list.iter().map(|m| m.key.as_str()).collect()
}

#[tokio::test]
async fn s3_passes_the_conformance_checks() {
    let s3 = common::s3();
    store::conformance::run(&s3_store(&s3, "conformance").await).await;
}

#[tokio::test]
async fn s3_round_trip_range_list_and_idempotent_delete() {
    let s3 = common::s3();
    let store = s3_store(&s3, "replicas/one").await;
    let other = s3_store(&s3, "replicas/one-other").await;
    assert!(store.describe().contains(&s3.bucket));
    assert!(store.describe().contains(&s3.server.endpoint));

    store
        .put("manifests/0001", Bytes::from_static(b"first manifest"))
        .await
        .unwrap();
    store
        .put("chunks/aa", Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    store.put("chunks/bb", Bytes::new()).await.unwrap();
    other
        .put("chunks/zz", Bytes::from_static(b"not mine"))
        .await
        .unwrap();

    assert_eq!(
        &store.get("manifests/0001").await.unwrap()[..],
        b"first manifest"
    );
    assert_eq!(&store.get("chunks/bb").await.unwrap()[..], b"");
    assert_eq!(
        &store.get_range("chunks/aa", 2..5).await.unwrap()[..],
        b"234"
    );
    assert_eq!(
        &store.get_range("chunks/aa", 8..20).await.unwrap()[..],
        b"89"
    );
    assert_eq!(
        &store.get_range("chunks/aa", 10..20).await.unwrap()[..],
        b""
    );

    // Listing is relative to the prefix, sorted, and never leaks into a
    // sibling prefix that merely starts with the same characters.
    let all = store.list("").await.unwrap();
    assert_eq!(keys(&all), ["chunks/aa", "chunks/bb", "manifests/0001"]);
    assert_eq!(all[0].size, 10);
    assert!(all[0].last_modified.is_some());
    assert_eq!(
        keys(&store.list("chunks/").await.unwrap()),
        ["chunks/aa", "chunks/bb"]
    );
    assert_eq!(keys(&other.list("").await.unwrap()), ["chunks/zz"]);

    // The object really is under the prefix in the bucket.
    let raw = s3
        .client()
        .get_object()
        .bucket(&s3.bucket)
        .key("replicas/one/chunks/aa")
        .send()
        .await
        .unwrap();
    assert_eq!(
        &raw.body.collect().await.unwrap().into_bytes()[..],
        b"0123456789"
    );

    let meta = store.head("chunks/aa").await.unwrap();
    assert_eq!(meta.size, 10);
    assert!(meta.etag.is_some());

    store
        .put("chunks/aa", Bytes::from_static(b"replaced"))
        .await
        .unwrap();
    assert_eq!(&store.get("chunks/aa").await.unwrap()[..], b"replaced");

    store.delete("chunks/aa").await.unwrap();
    store.delete("chunks/aa").await.unwrap();
    store.delete("never/existed").await.unwrap();
    let err = store.get("chunks/aa").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("replicas/one/chunks/aa"), "{err}");
    assert!(matches!(
        store.head("chunks/aa").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_range("chunks/aa", 0..1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        keys(&store.list("").await.unwrap()),
        ["chunks/bb", "manifests/0001"]
    );
}

#[tokio::test]
async fn s3_list_paginates_past_1000_keys() {
    let s3 = common::s3();
    store::conformance::pagination(&s3_store(&s3, "many").await, 1234).await;
}

#[tokio::test]
async fn s3_put_if_absent_never_replaces() {
    let s3 = common::s3();
    let store = s3_store(&s3, "").await;
    store
        .put_if_absent("manifest", Bytes::from_static(b"one"))
        .await
        .unwrap();
    let err = store
        .put_if_absent("manifest", Bytes::from_static(b"two"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("manifest"), "{err}");
    assert_eq!(&store.get("manifest").await.unwrap()[..], b"one");
}

#[tokio::test]
async fn s3_put_if_match_is_a_compare_and_swap() {
    let s3 = common::s3();
    let store = s3_store(&s3, "lease").await;
    store
        .put("lock", Bytes::from_static(b"holder A"))
        .await
        .unwrap();
    let tag = store.head("lock").await.unwrap().etag.unwrap();
    let tag2 = store
        .put_if_match("lock", Bytes::from_static(b"holder B"), &tag)
        .await
        .unwrap();
    assert_ne!(tag, tag2);
    assert_eq!(&store.get("lock").await.unwrap()[..], b"holder B");
    // A writer holding the stale tag loses.
    let err = store
        .put_if_match("lock", Bytes::from_static(b"holder C"), &tag)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "{err}"
    );
    assert_eq!(&store.get("lock").await.unwrap()[..], b"holder B");
}

#[tokio::test]
async fn s3_large_object_goes_multipart_and_round_trips() {
    let s3 = common::s3();
    let store = s3_store(&s3, "big").await;
    // Above the multipart threshold, not a multiple of the part size.
    let len = store::s3::MULTIPART_THRESHOLD + store::s3::PART_SIZE / 2 + 12345;
    let mut body = vec![0u8; len];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in body.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let want = Sha256::digest(&body);
    store.put("blob", Bytes::from(body)).await.unwrap();
    let head = s3
        .client()
        .head_object()
        .bucket(&s3.bucket)
        .key("big/blob")
        .send()
        .await
        .unwrap();
    // A multipart ETag ends in "-<parts>".
    assert!(
        head.e_tag().unwrap().trim_matches('"').ends_with("-3"),
        "{:?}",
        head.e_tag()
    );
    let got = store.get("blob").await.unwrap();
    assert_eq!(got.len(), len);
    assert_eq!(Sha256::digest(&got), want);
    let tail = store
        .get_range("blob", len as u64 - 10..len as u64)
        .await
        .unwrap();
    assert_eq!(&tail[..], &got[len - 10..]);
}

#[tokio::test]
async fn s3_wrong_credentials_name_endpoint_and_bucket_but_not_the_secret() {
    let s3 = common::s3();
    let secret = "wrong-secret-must-not-appear-anywhere";
    for creds in [
        ("no-such-key-id".to_string(), secret.to_string()),
        (s3.server.access_key.clone(), secret.to_string()),
    ] {
        let opts = S3Options {
            credentials: Some(creds.clone()),
            ..s3.server.options()
        };
        let store = S3Store::with_options(&s3.bucket, "p", opts).await.unwrap();
        for err in [
            store.put("x", Bytes::from_static(b"x")).await.unwrap_err(),
            store.list("").await.unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(
                matches!(err, StoreError::AccessDenied { .. }),
                "{creds:?}: {msg}"
            );
            assert!(
                msg.contains(&s3.server.endpoint) && msg.contains(&s3.bucket),
                "{msg}"
            );
            assert!(!msg.contains(secret), "secret leaked: {msg}");
            assert!(
                !format!("{err:?}").contains(secret),
                "secret leaked: {err:?}"
            );
            assert!(!err.is_transient());
        }
    }
}

#[tokio::test]
async fn s3_missing_bucket_is_named() {
    let s3 = common::s3();
    let bucket = format!("{}-missing", s3.bucket);
    let store = S3Store::with_options(&bucket, "p", s3.server.options())
        .await
        .unwrap();
    for err in [
        store.put("x", Bytes::from_static(b"x")).await.unwrap_err(),
        store.list("").await.unwrap_err(),
        store.get("x").await.unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, StoreError::NoSuchBucket { .. }), "{msg}");
        assert!(
            msg.contains(&bucket) && msg.contains(&s3.server.endpoint),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn s3_unreachable_endpoint_is_named_after_retries() {
    // A port that was free a moment ago: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let opts = S3Options {
        endpoint: Some(endpoint.clone()),
        max_attempts: Some(2),
        credentials: Some(("id".into(), "secret".into())),
        ..S3Options::default()
    };
    let store = S3Store::with_options("some-bucket", "p", opts)
        .await
        .unwrap();
    let err = store.list("").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{msg}");
    assert!(
        msg.contains(&endpoint) && msg.contains("some-bucket"),
        "{msg}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn open_picks_the_store_from_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("replica").display());
    let fs: DynStore = store::open(&url, None).await.unwrap();
    assert_eq!(fs.describe(), url);
    fs.put("a/b", Bytes::from_static(b"local")).await.unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("replica/a/b")).unwrap(),
        b"local"
    );

    let s3 = common::s3();
    let remote = store::open(&s3.url("pre/fix"), Some(&s3.server.endpoint))
        .await
        .unwrap();
    assert!(
        remote
            .describe()
            .starts_with(&format!("s3://{}/pre/fix at http://127.0.0.1:", s3.bucket))
    );
}
