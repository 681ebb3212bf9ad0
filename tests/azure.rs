//! The Azure Blob Storage store against Azurite (started by each test on
//! 127.0.0.1, tests/common/azurite.rs): the conformance checks every store
//! passes, pagination, the lease's conditional writes under a race, errors
//! that name the container and never the key or SAS, `az://` / `abs://`
//! URLs through `store::open`, and the binary's `snapshot`, `restore` and
//! `watch` takeover end to end.

mod common;
mod watch_support;

use std::time::Duration;

use bytes::Bytes;
use common::azurite::{self, Azurite};
use mailsafe::lease::{Lease, LeaseError};
use mailsafe::store::azure::{AzureOptions, AzureStore};
use mailsafe::store::{self, ObjectStore, StoreError};
use watch_support::Watcher;

#[tokio::test]
async fn azure_store_passes_the_conformance_checks() {
    let az = Azurite::start();
    az.container("conf");
    // Under a prefix, with a sibling prefix that merely starts the same.
    let store = az.store("conf", "replicas/one");
    az.store("conf", "replicas/one-other")
        .put("a/zz", Bytes::from_static(b"not mine"))
        .await
        .unwrap();
    store::conformance::run(store.as_ref()).await;
    // And at the container root.
    az.container("root");
    store::conformance::run(az.store("root", "").as_ref()).await;
}

#[tokio::test]
async fn azure_list_paginates_past_5000_keys() {
    let az = Azurite::start();
    az.container("many");
    // Azure pages listings by 5000 blobs.
    store::conformance::pagination(az.store("many", "p").as_ref(), 5123).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_conditional_writes_hold_under_a_race() {
    let az = Azurite::start();
    az.container("race");
    let store = az.store("race", "db");
    let writers = 16;

    // Create-only: of 16 concurrent creates of one key exactly one wins,
    // and the object holds the winner's body.
    let tries: Vec<_> = futures::future::join_all((0..writers).map(|i| {
        let store = store.clone();
        async move {
            store
                .put_if_absent("lease/x.json", Bytes::from(format!("writer {i}")))
                .await
                .map(|()| i)
        }
    }))
    .await;
    let won: Vec<_> = tries.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{tries:?}");
    for r in &tries {
        if let Err(e) = r {
            assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
        }
    }
    let body = store.get("lease/x.json").await.unwrap();
    assert_eq!(&body[..], format!("writer {}", won[0]).as_bytes());

    // Compare-and-swap: 16 replacements from the same version tag, one wins.
    let tag = store.head("lease/x.json").await.unwrap().etag.unwrap();
    let tries: Vec<_> = futures::future::join_all((0..writers).map(|i| {
        let (store, tag) = (store.clone(), tag.clone());
        async move {
            store
                .put_if_match("lease/x.json", Bytes::from(format!("swap {i}")), &tag)
                .await
                .map(|t| (i, t))
        }
    }))
    .await;
    let won: Vec<_> = tries.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{tries:?}");
    for r in &tries {
        if let Err(e) = r {
            assert!(matches!(e, StoreError::PreconditionFailed { .. }), "{e}");
        }
    }
    let body = store.get("lease/x.json").await.unwrap();
    assert_eq!(&body[..], format!("swap {}", won[0].0).as_bytes());
    assert_eq!(
        store.head("lease/x.json").await.unwrap().etag.as_ref(),
        Some(&won[0].1)
    );

    // The lease itself: of 8 processes racing for a free replica exactly
    // one holds it; the others are told who does.
    let tries: Vec<_> = futures::future::join_all((0..8).map(|_| {
        let store = az.store("race", "leased");
        async move { Lease::try_acquire(store, Duration::from_secs(60), None).await }
    }))
    .await;
    let held: Vec<_> = tries.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(held.len(), 1, "{tries:?}");
    assert!(
        store::probe_conditional_writes(az.store("race", "leased").as_ref(), false)
            .await
            .is_ok()
    );
    for r in &tries {
        if let Err(e) = r {
            assert!(matches!(e, LeaseError::Busy { .. }), "{e}");
        }
    }
}

#[tokio::test]
async fn azure_errors_name_the_container_and_never_the_credentials() {
    let az = Azurite::start();
    az.container("errs");

    // A missing container is named, with the endpoint.
    let store = az.store("no-such-container", "p");
    for err in [
        store.put("x", Bytes::from_static(b"x")).await.unwrap_err(),
        store.list("").await.unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, StoreError::NoSuchBucket { .. }), "{msg}");
        assert!(
            msg.contains("no-such-container") && msg.contains(&az.endpoint),
            "{msg}"
        );
    }

    // A wrong shared key and a forged SAS are refused, named, and never
    // shown.
    let key = "d3Jvbmcta2V5LW11c3Qtbm90LWFwcGVhci1hbnl3aGVyZQ==";
    let sas = "sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2099-01-01T00:00:00Z&sig=Zm9yZ2VkLXNhcy1zaWduYXR1cmU%3D";
    for opts in [
        AzureOptions {
            access_key: Some(key.into()),
            ..az.options()
        },
        AzureOptions {
            access_key: None,
            sas_token: Some(sas.into()),
            ..az.options()
        },
    ] {
        let store = AzureStore::with_options(None, "errs", "p", opts).unwrap();
        let err = store.put("x", Bytes::from_static(b"x")).await.unwrap_err();
        let msg = format!("{err} {err:?} {store:?}");
        assert!(matches!(err, StoreError::AccessDenied { .. }), "{msg}");
        assert!(msg.contains("errs") && msg.contains(&az.endpoint), "{msg}");
        assert!(!err.is_transient());
        for secret in [key, "Zm9yZ2VkLXNhcy1zaWduYXR1cmU", azurite::KEY] {
            assert!(!msg.contains(secret), "secret leaked: {msg}");
        }
    }

    // Nobody listening: named after the retries, and transient.
    let port = common::free_port();
    let opts = AzureOptions {
        endpoint: Some(format!("http://127.0.0.1:{port}/{}", azurite::ACCOUNT)),
        max_attempts: Some(2),
        ..az.options()
    };
    let store = AzureStore::with_options(None, "errs", "p", opts).unwrap();
    let err = store.list("").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{msg}");
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("errs"),
        "{msg}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn open_takes_az_and_abs_urls_with_the_account_from_url_or_env() {
    let az = Azurite::start();
    az.container("opened");
    // The account from the URL's user part; the key and endpoint as a
    // process gets them (the test's environment is not changed: the
    // options stand in for the variables).
    for url in [
        format!("az://{}@opened/pre/fix", azurite::ACCOUNT),
        format!("abs://{}@opened/pre/fix", azurite::ACCOUNT),
    ] {
        let opts = mailsafe::store::s3::S3Options {
            endpoint: Some(az.endpoint.clone()),
            max_attempts: Some(3),
            ..Default::default()
        };
        let result = store::open_with(&url, opts).await;
        if std::env::var_os("AZURE_STORAGE_KEY").is_some()
            || std::env::var_os("AZURE_STORAGE_SAS_TOKEN").is_some()
        {
            continue; // the environment has credentials: nothing to refuse
        }
        // No key in this test's environment: refused before any request,
        // naming what to set.
        let err = result.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{msg}");
        assert!(
            msg.contains("AZURE_STORAGE_KEY") && msg.contains(&url),
            "{msg}"
        );
    }
    let store = AzureStore::with_options(
        Some(azurite::ACCOUNT),
        "opened",
        "pre/fix",
        AzureOptions {
            account: None,
            ..az.options()
        },
    )
    .unwrap();
    store.put("k", Bytes::from_static(b"v")).await.unwrap();
    assert_eq!(
        store.describe(),
        format!("az://opened/pre/fix at {}", az.endpoint)
    );
    // Without an account anywhere, the URL is refused with a hint.
    if std::env::var_os("AZURE_STORAGE_ACCOUNT").is_none() {
        let err = store::open("az://opened/p", Some(&az.endpoint))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("AZURE_STORAGE_ACCOUNT"), "{err}");
    }
}

/// `mailsafe` with Azurite's account, key and endpoint in its environment.
fn mailsafe_on(az: &Azurite) -> std::process::Command {
    let mut cmd = common::mailsafe();
    cmd.envs(az.env());
    cmd
}

/// Restores the newest snapshot of `url` into `out` with the binary and
/// returns its row count (rows 1..=n).
fn restored_rows(az: &Azurite, url: &str, out: &std::path::Path) -> i64 {
    common::run_ok(mailsafe_on(az).args(["restore", "--db"]).arg(out).args([
        "--replica",
        url,
        "--integrity-check",
        "full",
    ]));
    watch_support::row_ids(out)
}

/// The binary end to end on Azurite: `snapshot`, `restore`, then `watch`
/// killed with -9 and restarted on the same volume, which takes the dead
/// writer's lease over at once (conditional writes on Azure) and backs up
/// the next commit; `abs://` names the same replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restore_and_watch_takeover_on_azurite() {
    let az = Azurite::start();
    az.container("e2e");
    let url = format!("az://{}@e2e/app", azurite::ACCOUNT);
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("app.db");
    let db = watch_support::create_db(&db_path);
    watch_support::insert(&db, 1);

    let out = common::run_ok(
        mailsafe_on(&az)
            .args(["snapshot", "--db"])
            .arg(&db_path)
            .args(["--replica", &url]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains(azurite::KEY) && !stderr.contains(azurite::KEY),
        "the key was printed"
    );
    assert_eq!(restored_rows(&az, &url, &dir.path().join("r1.db")), 1);
    let abs = format!("abs://{}@e2e/app", azurite::ACCOUNT);
    assert_eq!(restored_rows(&az, &abs, &dir.path().join("r2.db")), 1);

    // watch A: catches up, then dies without releasing its lease.
    let mut a = Watcher::start_with(mailsafe_on(&az), &db_path, &url, &[]);
    watch_support::insert(&db, 2);
    a.wait_caught_up(Duration::from_secs(60)).await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(!a.logs().contains(azurite::KEY), "the key was logged");

    // watch C on the same volume takes the live lease over at once (the
    // volume lock proves A dead) and backs up the next commit.
    let c = Watcher::start_with(mailsafe_on(&az), &db_path, &url, &[]);
    watch_support::insert(&db, 3);
    let start = std::time::Instant::now();
    loop {
        let held = c.metric("mailsafe_lease_held").await == 1.0;
        if held && c.metric("mailsafe_replication_lag_seconds").await == 0.0 {
            let out = dir
                .path()
                .join(format!("r{}.db", start.elapsed().as_millis()));
            if restored_rows(&az, &url, &out) == 3 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "row 3 not on Azurite within 60 s; log:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(c.logs().contains("taking over at once"), "{}", c.logs());
    assert!(!c.logs().contains(azurite::KEY), "the key was logged");
}
