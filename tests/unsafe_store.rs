//! A store that ignores conditional writes (an S3 clone that accepts a PUT
//! with `If-None-Match: *` over an existing key) cannot fence two writers:
//! `watch` and `cron` probe for it before their first lease and refuse to
//! write (exit 5, naming the store and the override flag), unless
//! `--unsafe-no-conditional-writes` says to go on.
//!
//! The store is a real second S3 server started by the test on 127.0.0.1:
//! moto 4 (`common::moto`).

mod common;
mod watch_support;

use std::time::Duration;

use common::moto::Moto;
use watch_support::{Watcher, create_db, insert};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_refuse_a_store_that_ignores_conditional_writes() {
    let moto = Moto::start();
    let s3 = moto.bucket("unsafe");
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("app.db");
    let db = create_db(&db_path);
    insert(&db, 1);
    let url = s3.url("refused");

    let mut w = Watcher::start(&s3, &s3.server.endpoint, &db_path, &url, &[]);
    let status = w.wait(Duration::from_secs(60));
    let logs = w.logs();
    assert_eq!(status.code(), Some(5), "watch must exit 5; log:\n{logs}");
    for needle in [
        "ignores conditional writes",
        "--unsafe-no-conditional-writes",
        &s3.server.endpoint,
    ] {
        assert!(logs.contains(needle), "log must say {needle:?}:\n{logs}");
    }
    let out = s3
        .mailsafe()
        .args(["cron", "--once", "--db"])
        .arg(&db_path)
        .args(["--replica", &url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "cron must exit 5:\n{err}");
    assert!(err.contains("ignores conditional writes"), "{err}");
    let replica = s3.store("refused").await;
    let written = replica.list(mailsafe::format::MANIFESTS).await.unwrap();
    assert!(written.is_empty(), "nothing may be written: {written:?}");

    // The override writes, and says what it risks.
    let url = s3.url("overridden");
    let mut w = Watcher::start(
        &s3,
        &s3.server.endpoint,
        &db_path,
        &url,
        &["--unsafe-no-conditional-writes"],
    );
    w.wait_caught_up(Duration::from_secs(60)).await;
    let logs = w.stop(Duration::from_secs(30));
    assert!(logs.contains("writing anyway"), "{logs}");
    let replica = s3.store("overridden").await;
    assert!(
        !replica
            .list(mailsafe::format::MANIFESTS)
            .await
            .unwrap()
            .is_empty()
    );
}
