//! S3 breadth against two real S3 servers on 127.0.0.1, SeaweedFS (through
//! the recording proxy, bench/s3proxy) and moto 4 (`common::moto`, which
//! answers a PUT's encryption and storage class on HEAD):
//!
//! - `--s3-sse` / `--s3-sse-kms-key-id` / `--s3-storage-class` reach the
//!   server on every PUT, and what was written restores;
//! - virtual-hosted-style requests (`--s3-path-style=false`) work end to
//!   end against moto, which takes the bucket from a `BUCKET.localhost`
//!   Host header, and `--s3-path-style` forces path style (the recording
//!   proxy, as the client's HTTP proxy, sees every request's Host);
//! - a config file's replicas each use their own keys (the process's AWS
//!   keys are wrong), in `watch` and in `restore --config`, never logged.
//!
//! The README's interoperability table comes from these runs.

mod common;
mod watch_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use common::moto::Moto;
use common::proxy::Proxy;
use watch_support::*;

/// `mailsafe snapshot` of `db` into `url` with `extra` flags.
fn snapshot(s3: &common::S3, db: &std::path::Path, url: &str, extra: &[&str]) {
    common::run_ok(
        s3.mailsafe()
            .args(["snapshot", "--db"])
            .arg(db)
            .args(["--replica", url])
            .args(extra),
    );
}

/// HEADs every object under `prefix/` of `s3`'s bucket: (key, SSE, class,
/// KMS key id).
async fn heads(
    s3: &common::S3,
    prefix: &str,
) -> Vec<(
    String,
    Option<ServerSideEncryption>,
    Option<StorageClass>,
    Option<String>,
)> {
    let client = s3.client();
    let list = client
        .list_objects_v2()
        .bucket(&s3.bucket)
        .prefix(format!("{prefix}/"))
        .send()
        .await
        .unwrap();
    let mut out = Vec::new();
    for o in list.contents() {
        let key = o.key().unwrap().to_string();
        let h = client
            .head_object()
            .bucket(&s3.bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        out.push((
            key,
            h.server_side_encryption().cloned(),
            h.storage_class().cloned(),
            h.ssekms_key_id().map(str::to_string),
        ));
    }
    assert!(!out.is_empty(), "nothing under {prefix}/");
    out
}

/// SSE-S3 and a storage class on SeaweedFS (the proxy sees both headers on
/// every PUT) and on moto (HEAD answers them for every object); SSE-KMS
/// with a key id on moto; every replica restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_storage_class_reach_both_servers() {
    let s3 = common::s3();
    let proxy = Proxy::start(&s3.server.endpoint, &[]);
    let moto = Moto::start();
    let m = moto.bucket("interop");
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("a.db");
    let db = create_db(&db_path);
    insert(&db, 1);
    let flags = ["--s3-sse", "AES256", "--s3-storage-class", "STANDARD_IA"];

    let via_proxy = [&["--endpoint", proxy.endpoint.as_str()][..], &flags].concat();
    snapshot(&s3, &db_path, &s3.url("sse"), &via_proxy);
    let stats = proxy.stats().await;
    let puts = stats["ops"]["PUT"]["requests"].as_u64().unwrap_or(0);
    let seen = |h: &str| stats["headers"][h].as_u64().unwrap_or(0);
    assert!(puts >= 2, "{stats:#}");
    for h in [
        "x-amz-server-side-encryption: AES256",
        "x-amz-storage-class: STANDARD_IA",
    ] {
        assert_eq!(seen(h), puts, "every PUT carries {h}: {stats:#}");
    }
    assert_eq!(
        restored_rows(&s3, &s3.url("sse"), &dir.path().join("r1.db")),
        1
    );

    snapshot(&m, &db_path, &m.url("sse"), &flags);
    for (key, sse, class, _) in heads(&m, "sse").await {
        assert_eq!(sse, Some(ServerSideEncryption::Aes256), "{key}");
        assert_eq!(class, Some(StorageClass::StandardIa), "{key}");
    }
    assert_eq!(
        restored_rows(&m, &m.url("sse"), &dir.path().join("r2.db")),
        1
    );

    let kms = ["--s3-sse-kms-key-id", "mailsafe-test-key"];
    snapshot(&m, &db_path, &m.url("kms"), &kms);
    for (key, sse, _, id) in heads(&m, "kms").await {
        assert_eq!(sse, Some(ServerSideEncryption::AwsKms), "{key}");
        assert_eq!(id.as_deref(), Some("mailsafe-test-key"), "{key}");
    }
    assert_eq!(
        restored_rows(&m, &m.url("kms"), &dir.path().join("r3.db")),
        1
    );
}

/// Virtual-hosted style end to end against moto, which takes the bucket
/// from the Host header `BUCKET.localhost:PORT`. No resolver here knows
/// that name, so the recording proxy is the client's HTTP proxy
/// (`HTTP_PROXY`, which the AWS SDK honours): it hands each request to moto
/// on 127.0.0.1 with its Host header untouched, and counts the Host
/// headers. With the endpoint `http://localhost:PORT`, a snapshot and a
/// restore with `--s3-path-style=false` address every request to
/// `BUCKET.localhost:PORT` (object keys in the path without the bucket);
/// with `--s3-path-style`, and by default with an endpoint, every request
/// goes to `localhost:PORT` with the bucket in the path. Each restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_hosted_and_path_style_end_to_end() {
    let moto = Moto::start();
    let m = moto.bucket("vhost");
    let proxy = Proxy::start(&m.server.endpoint, &[]);
    let port = m.server.endpoint.rsplit(':').next().unwrap().to_string();
    let endpoint = format!("http://localhost:{port}");
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("v.db");
    let db = create_db(&db_path);
    insert(&db, 1);
    // Every command through the proxy, whatever the environment says.
    let cmd = || {
        let mut c = m.mailsafe();
        c.env("HTTP_PROXY", &proxy.endpoint)
            .env("http_proxy", &proxy.endpoint)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        c
    };
    let cases: [(&[&str], String); 3] = [
        (
            &["--s3-path-style=false"],
            format!("vhost.localhost:{port}"),
        ),
        (&["--s3-path-style"], format!("localhost:{port}")),
        (&[], format!("localhost:{port}")),
    ];
    for (i, (style, host)) in cases.iter().enumerate() {
        proxy.reset().await;
        let url = m.url(&format!("style{i}"));
        common::run_ok(
            cmd()
                .args(["snapshot", "--endpoint", &endpoint, "--db"])
                .arg(&db_path)
                .args(["--replica", &url])
                .args(*style),
        );
        let out = dir.path().join(format!("r{i}.db"));
        common::run_ok(
            cmd()
                .args(["restore", "--endpoint", &endpoint, "--db"])
                .arg(&out)
                .args(["--replica", &url])
                .args(*style),
        );
        assert_eq!(row_ids(&out), 1, "{style:?}");
        let stats = proxy.stats().await;
        let hosts = stats["hosts"].as_object().unwrap();
        let total: u64 = hosts.values().map(|n| n.as_u64().unwrap()).sum();
        assert!(total >= 4, "{style:?}: {stats:#}");
        assert_eq!(
            hosts.keys().collect::<Vec<_>>(),
            [host],
            "{style:?}: every request addressed alike: {stats:#}"
        );
    }
}

/// A config file whose two replicas, on SeaweedFS and on moto, each bring
/// their own keys (SeaweedFS's from variables it names, moto's written in
/// the file) while the process's AWS keys are wrong: `watch` uploads to
/// both, `restore --config` reads each, and no log shows a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_replicas_use_their_own_keys() {
    let s3 = common::s3();
    let moto = Moto::start();
    let m = moto.bucket("keys");
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("k.db");
    let db = create_db(&db_path);
    insert(&db, 1);
    let config = dir.path().join("mailsafe.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:
  - path: {db}
    unsafe-no-conditional-writes: true   # moto 4 ignores them
    replicas:
      - name: seaweed
        url: {seaweed}
        endpoint: {seaweed_ep}
        access-key-id-env: SEAWEED_ID
        secret-access-key-env: SEAWEED_SECRET
      - name: moto
        url: {moto}
        endpoint: {moto_ep}
        access-key-id: {moto_id}
        secret-access-key: {moto_secret}
        sse: AES256
",
            db = db_path.display(),
            seaweed = s3.url("keys"),
            seaweed_ep = s3.server.endpoint,
            moto = m.url("keys"),
            moto_ep = m.server.endpoint,
            moto_id = m.server.access_key,
            moto_secret = m.server.secret_key,
        ),
    )
    .unwrap();
    let wrong = |cmd: &mut std::process::Command| {
        cmd.env("AWS_ACCESS_KEY_ID", "wrong")
            .env("AWS_SECRET_ACCESS_KEY", "wrong-secret")
            .env("SEAWEED_ID", &s3.server.access_key)
            .env("SEAWEED_SECRET", &s3.server.secret_key)
            .env("MAILSAFE_LOG", "mailsafe=trace,info");
    };
    let port = common::free_port();
    let log = dir.path().join("watch.log");
    let mut cmd = common::mailsafe();
    wrong(&mut cmd);
    cmd.args(["watch", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut w = Watcher {
        child: cmd.spawn().unwrap(),
        log,
        http: format!("http://127.0.0.1:{port}"),
    };
    for name in ["seaweed", "moto"] {
        let key = format!(
            "mailsafe_snapshots_total{{db=\"{}\",replica=\"{name}\",result=\"uploaded\"}}",
            db_path.display()
        );
        let start = Instant::now();
        while w.metric(&key).await < 1.0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name}: nothing uploaded; log:\n{}",
                w.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let logs = w.stop(Duration::from_secs(30));
    for (key, sse, _, _) in heads(&m, "keys").await {
        assert_eq!(sse, Some(ServerSideEncryption::Aes256), "{key}");
    }
    for name in ["seaweed", "moto"] {
        let out_db = dir.path().join(format!("{name}.db"));
        let mut cmd = common::mailsafe();
        wrong(&mut cmd);
        let out = cmd
            .args(["restore", "--config"])
            .arg(&config)
            .arg("--db")
            .arg(&db_path)
            .args(["--replica", name, "-o"])
            .arg(&out_db)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert!(!err.contains(&s3.server.secret_key), "{err}");
        assert_eq!(row_ids(&out_db), 1, "{name}");
    }
    for secret in [&s3.server.secret_key, &m.server.secret_key] {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret in the log:\n{logs}"
        );
    }
}
