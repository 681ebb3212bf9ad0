//! Existing Mailpit clients, unchanged, against our API: the npm
//! `mailpit-api` and `cypress-mailpit` packages and the PyPI
//! `mailpit-api-client` package (all installed by scripts/setup.sh). Each client script asserts what it gets
//! back and exits non-zero on the first mismatch.

mod support;

use mailsafe_catcher::api::{self, ApiOptions};
use mailsafe_catcher::storage::{Store, StoreOptions};
use support::{clients_dir, run_client};

/// The API alone on a fresh store.
async fn server() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.db"), StoreOptions::default()).unwrap();
    let app = api::router(store, ApiOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_mailpit_api_client_works_unchanged() {
    assert!(
        clients_dir().join("node_modules/mailpit-api").is_dir(),
        "tests/clients/node_modules missing: run scripts/setup.sh"
    );
    let (base, _dir) = server().await;
    run_client("node", &["mailpit-api.mjs", &base]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_cypress_mailpit_commands_work_unchanged() {
    assert!(
        clients_dir().join("node_modules/cypress-mailpit").is_dir(),
        "tests/clients/node_modules missing: run scripts/setup.sh"
    );
    let (base, _dir) = server().await;
    run_client("node", &["cypress-mailpit.cjs", &base]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_mailpit_api_client_works_unchanged() {
    let (base, _dir) = server().await;
    run_client("python3", &["mailpit_api_client.py", &base]).await;
}
