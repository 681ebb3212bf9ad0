//! Existing Mailpit clients, unchanged, against our API: the npm
//! `mailpit-api` and `cypress-mailpit` packages and the PyPI
//! `mailpit-api-client` package (all installed by scripts/setup.sh). Each client script asserts what it gets
//! back and exits non-zero on the first mismatch.

use std::path::PathBuf;
use std::process::Command;

use mailsafe_catcher::api::{self, ApiOptions};
use mailsafe_catcher::storage::{Store, StoreOptions};

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients")
}

async fn server() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("m.db"), StoreOptions::default()).unwrap();
    let app = api::router(store, ApiOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, dir)
}

async fn run(cmd: &str, args: &[&str]) {
    let dir = clients_dir();
    let mut c = Command::new(cmd);
    c.args(args).current_dir(&dir);
    // The clients talk to loopback: no proxy, no custom CA.
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (run scripts/setup.sh): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_mailpit_api_client_works_unchanged() {
    assert!(
        clients_dir().join("node_modules/mailpit-api").is_dir(),
        "tests/clients/node_modules missing: run scripts/setup.sh"
    );
    let (base, _dir) = server().await;
    run("node", &["mailpit-api.mjs", &base]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_cypress_mailpit_commands_work_unchanged() {
    assert!(
        clients_dir().join("node_modules/cypress-mailpit").is_dir(),
        "tests/clients/node_modules missing: run scripts/setup.sh"
    );
    let (base, _dir) = server().await;
    run("node", &["cypress-mailpit.cjs", &base]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_mailpit_api_client_works_unchanged() {
    let (base, _dir) = server().await;
    run("python3", &["mailpit_api_client.py", &base]).await;
}
