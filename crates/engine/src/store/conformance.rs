//! The checks every [`ObjectStore`] implementation must pass, shared by the
//! unit tests of the file and memory stores and the integration tests of the
//! S3 and Azure stores against real servers (tests/store.rs,
//! tests/azure.rs): one list of guarantees, not one copy per store. Public
//! (and so compiled into the library, a few hundred bytes) because
//! integration tests are another crate.

use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, StoreError};

/// The keys of a listing, in its order: what the checks compare.
pub fn keys(list: Vec<ObjectMeta>) -> Vec<String> {
    list.into_iter().map(|m| m.key).collect()
}

/// Checks what every [`ObjectStore`] must do on `store`, which must be
/// empty (a fresh prefix): round trips, ranged reads (past the end too),
/// sorted listings by prefix and after a key, create-only and
/// compare-and-swap writes, idempotent delete, keys that could escape
/// refused. Panics on the first difference.
pub async fn run(store: &dyn ObjectStore) {
    assert!(
        store.list("").await.unwrap().is_empty(),
        "missing root lists empty"
    );

    store
        .put("a/b/one", Bytes::from_static(b"hello world"))
        .await
        .unwrap();
    store.put("a/two", Bytes::from_static(b"2")).await.unwrap();
    store.put("z", Bytes::from_static(b"zz")).await.unwrap();
    assert_eq!(&store.get("a/b/one").await.unwrap()[..], b"hello world");
    assert_eq!(
        &store.get_range("a/b/one", 6..11).await.unwrap()[..],
        b"world"
    );
    assert_eq!(
        &store.get_range("a/b/one", 6..100).await.unwrap()[..],
        b"world"
    );
    assert!(
        store.get_range("a/b/one", 11..20).await.unwrap().is_empty(),
        "a range from the end is empty"
    );
    let missing = store.get_range("a/missing", 0..1).await.unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { .. }), "{missing}");

    assert_eq!(
        keys(store.list("").await.unwrap()),
        ["a/b/one", "a/two", "z"]
    );
    assert_eq!(keys(store.list("a/").await.unwrap()), ["a/b/one", "a/two"]);
    let after = keys(store.list_after("a/", "a/b/one").await.unwrap());
    assert_eq!(after, ["a/two"], "strictly after, within the prefix");
    assert!(store.list_after("a/", "a/two").await.unwrap().is_empty());
    assert_eq!(keys(store.list("a/t").await.unwrap()), ["a/two"]);

    let err = store
        .put_if_absent("z", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert_eq!(&store.get("z").await.unwrap()[..], b"zz");
    store
        .put_if_absent("new", Bytes::from_static(b"n"))
        .await
        .unwrap();

    let tag = store.head("z").await.unwrap().etag.unwrap();
    let tag2 = store
        .put_if_match("z", Bytes::from_static(b"v2"), &tag)
        .await
        .unwrap();
    assert_ne!(tag, tag2);
    let err = store
        .put_if_match("z", Bytes::from_static(b"v3"), &tag)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "{err}"
    );
    assert_eq!(&store.get("z").await.unwrap()[..], b"v2");

    store.delete("z").await.unwrap();
    store.delete("z").await.unwrap();
    assert!(matches!(
        store.get("z").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.head("z").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.get("../escape").await.is_err());
}

/// Checks listings longer than a page of the store's API (S3 pages by
/// 1000, Azure by 5000): writes `n` keys `k/00000`.. into the empty
/// `store`, then lists them all, a sub-prefix, and what follows a key near
/// the end (past a page boundary when `n` is beyond one page).
pub async fn pagination(store: &dyn ObjectStore, n: usize) {
    use futures::StreamExt;
    let expected: Vec<String> = (0..n).map(|i| format!("k/{i:05}")).collect();
    let results: Vec<_> = futures::stream::iter(&expected)
        .map(|key| store.put(key, Bytes::from(key.clone())))
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(results.iter().all(|r| r.is_ok()), "every put succeeds");
    assert_eq!(keys(store.list("k/").await.unwrap()), expected);
    // A sub-prefix that is not a whole path segment ("k/010").
    let sub = &expected[n.saturating_sub(150)][..5];
    let want: Vec<_> = expected
        .iter()
        .filter(|k| k.starts_with(sub))
        .cloned()
        .collect();
    assert_eq!(keys(store.list(sub).await.unwrap()), want, "prefix {sub}");
    // Strictly after a key, within the prefix.
    let from = n.saturating_sub(100);
    assert_eq!(
        keys(store.list_after("k/", &expected[from]).await.unwrap()),
        expected[from + 1..]
    );
    assert!(
        store
            .list_after("k/", &expected[n - 1])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list_after("k/", "a").await.unwrap().len(), n);
}
