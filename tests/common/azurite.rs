//! Azure Blob Storage for the tests: Azurite (npm `azurite`, installed by
//! scripts/setup.sh), its blob service started by the test on 127.0.0.1 on a
//! free port, in memory, and stopped on drop. It holds Azurite's well-known
//! development account; [`Azurite::container`] creates a container with one
//! Shared Key signed request (the store itself never creates containers).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailsafe::store::DynStore;
use mailsafe::store::azure::{AzureOptions, AzureStore};

use super::free_port;

/// Azurite's development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its well-known key (published by Microsoft; not a secret).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The REST version of the container request.
const VERSION: &str = "2021-08-06";

/// Azurite's blob server: `MAILSAFE_TEST_AZURITE`, else `azurite-blob` on
/// the PATH (scripts/setup.sh installs it).
fn azurite_blob() -> PathBuf {
    if let Some(p) = std::env::var_os("MAILSAFE_TEST_AZURITE") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("azurite-blob"))
            .find(|p| p.exists())
    });
    found.expect("azurite-blob not on PATH: run scripts/setup.sh (it installs npm azurite)")
}

/// A running Azurite blob service.
pub struct Azurite {
    child: Child,
    /// Its Blob service URL, account included
    /// (`http://127.0.0.1:PORT/devstoreaccount1`).
    pub endpoint: String,
    /// Its working directory (blobs are in memory).
    _dir: tempfile::TempDir,
}

impl Azurite {
    /// Starts Azurite and waits (30 s at most) for its port to accept.
    pub fn start() -> Azurite {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(azurite_blob())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            // Blobs in memory: nothing to clean, nothing left on disk (the
            // option excludes --location; the working directory is a
            // temporary one in case anything is written anyway).
            .arg("--inMemoryPersistence")
            .current_dir(dir.path())
            // object_store may speak a newer REST version than this Azurite.
            .arg("--skipApiVersionCheck")
            // No telemetry: a test must not reach out, and Azurite would
            // otherwise keep a cache in /tmp.
            .arg("--disableTelemetry")
            .arg("--silent")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        let mut azurite = Azurite {
            child,
            endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = azurite.child.try_wait() {
                panic!("azurite-blob exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "azurite-blob not listening on 127.0.0.1:{port} after 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        azurite
    }

    /// Environment that points a `mailsafe` child at this Azurite (the
    /// account's key; the URL names the container).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT", ACCOUNT.into()),
            ("AZURE_STORAGE_KEY", KEY.into()),
            ("AZURE_STORAGE_ENDPOINT", self.endpoint.clone()),
        ]
    }

    /// [`AzureOptions`] for this Azurite with the account's key and 3
    /// attempts per request.
    pub fn options(&self) -> AzureOptions {
        AzureOptions {
            account: Some(ACCOUNT.into()),
            access_key: Some(KEY.into()),
            endpoint: Some(self.endpoint.clone()),
            max_attempts: Some(3),
            ..AzureOptions::default()
        }
    }

    /// The engine's store on `container` under `prefix`.
    pub fn store(&self, container: &str, prefix: &str) -> DynStore {
        Arc::new(AzureStore::with_options(None, container, prefix, self.options()).unwrap())
    }

    /// Creates `container` (Create Container, signed with the account's
    /// Shared Key).
    pub fn container(&self, name: &str) {
        use base64::Engine as _;
        use hmac::Mac as _;
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        // Shared Key string-to-sign: verb, eleven empty standard headers
        // (Content-Length is empty for 0), the x-ms- headers, then the
        // resource as /account/path (Azurite's path already starts with the
        // account) and the query.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{VERSION}\n\
             /{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let url = format!("{}/{name}?restype=container", self.endpoint);
        let resp = put_empty(&url, &date, &format!("SharedKey {ACCOUNT}:{sig}"));
        assert!(
            resp == 201,
            "create container {name} at {}: HTTP {resp}",
            self.endpoint
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One PUT of an empty body with the Azure headers; the HTTP status, 0 if
/// none.
fn put_empty(url: &str, date: &str, auth: &str) -> u16 {
    let (url, date, auth) = (url.to_string(), date.to_string(), auth.to_string());
    super::on_own_runtime(move || async move {
        reqwest::Client::new()
            .put(&url)
            .header("x-ms-date", date)
            .header("x-ms-version", VERSION)
            .header("Authorization", auth)
            .header("Content-Length", "0")
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}
