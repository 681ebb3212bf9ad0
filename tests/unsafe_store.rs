//! A store that ignores conditional writes (an S3 clone that accepts a PUT
//! with `If-None-Match: *` over an existing key) cannot fence two writers:
//! `watch` and `cron` probe for it before their first lease and refuse to
//! write (exit 5, naming the store and the override flag), unless
//! `--unsafe-no-conditional-writes` says to go on.
//!
//! The store is a real second S3 server started by the test on 127.0.0.1:
//! moto 4 (`moto[server]==4.2.14`, which predates conditional writes; moto 5
//! honours them), installed into its own venv by scripts/setup.sh.

mod common;
mod watch_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{S3, Server, free_port};
use watch_support::{Watcher, create_db, insert};

/// The Python of the venv scripts/setup.sh installs old moto into
/// (`MAILSAFE_TEST_MOTO_PYTHON` overrides it).
fn moto_python() -> PathBuf {
    let p = std::env::var_os("MAILSAFE_TEST_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/mailsafe-moto4/bin/python"));
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (it installs moto[server]==4.2.14 there)",
        p.display()
    );
    p
}

/// A moto S3 server on 127.0.0.1, stopped on drop.
struct Moto {
    child: Child,
    server: Server,
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let child = Command::new(moto_python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let server = Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key: "moto-test".into(),
            secret_key: "moto-test-secret".into(),
        };
        Moto { child, server }
    }

    /// A new bucket (waits, through create_bucket's retries, for the
    /// server to answer).
    fn bucket(&self, name: &str) -> S3 {
        self.server.create_bucket(name);
        S3 {
            server: self.server.clone(),
            bucket: name.into(),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
