//! The metering / fault-injecting proxy (bench/s3proxy) in front of a real
//! SeaweedFS, and the S3 store riding out the faults it injects.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use mailsafe::store::s3::S3Options;
use mailsafe::store::{DynStore, StoreError};

use common::proxy::Proxy;

async fn store_via(proxy: &Proxy, s3: &common::S3, attempts: u32) -> DynStore {
    let opts = S3Options {
        endpoint: Some(proxy.endpoint.clone()),
        max_attempts: Some(attempts),
        ..s3.server.options()
    };
    s3.store_with("p", opts).await
}

#[tokio::test]
async fn proxy_counts_requests_and_bytes_by_operation() {
    let s3 = common::s3();
    let proxy = Proxy::start(&s3.server.endpoint, &[]);
    let store = store_via(&proxy, &s3, 3).await;
    let sizes = [1000usize, 20_000, 300_000];
    for (i, n) in sizes.iter().enumerate() {
        store
            .put(&format!("o{i}"), Bytes::from(vec![7u8; *n]))
            .await
            .unwrap();
    }
    for i in 0..sizes.len() {
        store.get(&format!("o{i}")).await.unwrap();
    }
    assert_eq!(store.list("").await.unwrap().len(), 3);
    store.delete("o0").await.unwrap();

    let stats = proxy.stats().await;
    let ops = &stats["ops"];
    let total: u64 = sizes.iter().map(|n| *n as u64).sum();
    assert_eq!(ops["PUT"]["requests"], 3, "{stats}");
    assert_eq!(ops["PUT"]["body_bytes_in"], total, "{stats}");
    assert!(
        ops["PUT"]["bytes_in"].as_u64().unwrap() > total,
        "headers count on the wire"
    );
    assert_eq!(ops["GET"]["requests"], 3, "{stats}");
    assert_eq!(ops["GET"]["body_bytes_out"], total, "{stats}");
    assert_eq!(ops["LIST"]["requests"], 1, "{stats}");
    assert_eq!(ops["DELETE"]["requests"], 1, "{stats}");
    assert_eq!(stats["total"]["requests"], 8, "{stats}");

    proxy.control(reqwest::Method::POST, "reset").await;
    assert_eq!(proxy.stats().await["total"]["requests"], 0);
}

#[tokio::test]
async fn proxy_stats_are_written_at_exit() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stats.json");
    let mut proxy = Proxy::start(
        &s3.server.endpoint,
        &["--stats-file", file.to_str().unwrap()],
    );
    let store = store_via(&proxy, &s3, 3).await;
    store.put("x", Bytes::from_static(b"12345")).await.unwrap();
    // SIGTERM, as a bench script would send.
    Command::new("kill")
        .arg(proxy.child.id().to_string())
        .status()
        .unwrap();
    proxy.child.wait().unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(stats["ops"]["PUT"]["body_bytes_in"], 5, "{stats}");
}

#[tokio::test]
async fn s3_store_rides_out_503s_and_connection_resets() {
    let s3 = common::s3();
    let proxy = Proxy::start(
        &s3.server.endpoint,
        &["--error-rate", "0.3", "--reset-rate", "0.2"],
    );
    let store = store_via(&proxy, &s3, 15).await;
    let n = 40;
    let body = |i: usize| Bytes::from(format!("object {i} ").repeat(2000 + i * 37));
    let puts: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let store = &store;
            async move { store.put(&format!("k/{i:03}"), body(i)).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in &puts {
        assert!(r.is_ok(), "{r:?}");
    }
    for i in 0..n {
        assert_eq!(
            store.get(&format!("k/{i:03}")).await.unwrap(),
            body(i),
            "object {i}"
        );
    }
    assert_eq!(store.list("k/").await.unwrap().len(), n);
    let stats = proxy.stats().await;
    let f = &stats["faults"];
    assert!(
        f["error_503"].as_u64().unwrap() > 5,
        "faults were injected: {stats}"
    );
    assert!(
        f["reset_request"].as_u64().unwrap() + f["reset_response"].as_u64().unwrap() > 2,
        "resets were injected: {stats}"
    );
}

#[tokio::test]
async fn s3_store_waits_out_a_short_outage_and_reports_a_long_one() {
    let s3 = common::s3();
    let proxy = Proxy::start(&s3.server.endpoint, &[]);
    let store = store_via(&proxy, &s3, 8).await;
    store.put("before", Bytes::from_static(b"1")).await.unwrap();

    proxy
        .control(reqwest::Method::POST, "faults?outage_s=2")
        .await;
    let t = Instant::now();
    store.put("during", Bytes::from_static(b"2")).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "the outage was real"
    );
    assert_eq!(&store.get("during").await.unwrap()[..], b"2");

    // Longer than the retries last: a transient error that names the
    // endpoint, not a hang.
    proxy
        .control(reqwest::Method::POST, "faults?outage_s=60")
        .await;
    let short = store_via(&proxy, &s3, 2).await;
    let err = short.list("").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        matches!(err, StoreError::Unreachable { .. } | StoreError::Other(_)),
        "{err}"
    );
    assert!(err.to_string().contains(&proxy.endpoint), "{err}");
}
