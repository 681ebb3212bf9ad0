//! Shared helpers of the integration tests: a real S3 server (SeaweedFS) and
//! the `mailsafe` binary.
//!
//! [`s3`] hands each caller a fresh bucket on one SeaweedFS server: the one
//! named by `MAILSAFE_TEST_S3_ENDPOINT` (started by `scripts/test.sh`), or
//! else one this test binary starts on first use (via `scripts/s3.sh`) and
//! that a watchdog stops when the test binary exits. [`proxy::Proxy`] puts
//! the metering / fault-injecting proxy in front of it. Helpers used by one
//! test file stay in that file.
#![allow(dead_code)] // each test binary uses a different subset

pub mod azurite;
pub mod moto;
pub mod proxy;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use mailsafe::store::DynStore;
use mailsafe::store::s3::{S3Options, S3Store};

/// CA-bundle variables some environments set; mailsafe (and Litestream) must
/// not pick them up when talking to loopback S3 over plain HTTP.
pub const CA_VARS: &[&str] = &[
    "AWS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NIX_SSL_CERT_FILE",
];

/// Variables that would point a child at some other S3 or profile.
const AWS_VARS: &[&str] = &[
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
];

/// One S3 server and access keys.
#[derive(Debug, Clone)]
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

/// A fresh, empty bucket on the shared test server.
#[derive(Debug, Clone)]
pub struct S3 {
    /// The server and keys.
    pub server: Server,
    /// The bucket, unique to this caller.
    pub bucket: String,
}

impl S3 {
    /// Replica URL `s3://BUCKET/PREFIX` (`s3://BUCKET` for an empty prefix).
    pub fn url(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        }
    }

    /// Environment that points a child process (mailsafe, litestream) at
    /// this server with these keys.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.server.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.server.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.server.endpoint.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// The `mailsafe` binary with [`S3::env`] set and CA/AWS variables of the
    /// surrounding environment removed.
    pub fn mailsafe(&self) -> Command {
        let mut cmd = mailsafe();
        cmd.envs(self.env());
        cmd
    }

    /// An SDK client for this server, configured explicitly (no env chain),
    /// for tests that inspect or tamper with the bucket directly.
    pub fn client(&self) -> aws_sdk_s3::Client {
        self.server.client()
    }

    /// The engine's store on this bucket under replica `prefix`, for tests
    /// that write or read the replica directly.
    pub async fn store(&self, prefix: &str) -> DynStore {
        self.store_with(prefix, self.server.options()).await
    }

    /// The same with other `options`, e.g. another endpoint (a proxy in
    /// front of the server) or another number of attempts per request.
    pub async fn store_with(&self, prefix: &str, options: S3Options) -> DynStore {
        Arc::new(
            S3Store::with_options(&self.bucket, prefix, options)
                .await
                .unwrap_or_else(|e| panic!("store on bucket {}: {e}", self.bucket)),
        )
    }
}

impl Server {
    /// [`S3Options`] for this server with its keys (no credential chain)
    /// and 3 attempts per request: enough to ride over a warming server,
    /// few enough that a test of failures does not wait out 8.
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            max_attempts: Some(3),
            credentials: Some((self.access_key.clone(), self.secret_key.clone())),
            ..S3Options::default()
        }
    }

    /// An SDK client for this server (path-style, static keys, us-east-1).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "mailsafe-tests",
        );
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates `bucket` (retrying briefly while a just-started server warms
    /// up). Works from sync and async tests alike.
    pub fn create_bucket(&self, bucket: &str) {
        let (server, bucket) = (self.clone(), bucket.to_string());
        on_own_runtime(move || async move {
            let client = server.client();
            let mut last = String::new();
            for _ in 0..50 {
                match client.create_bucket().bucket(&bucket).send().await {
                    Ok(_) => return,
                    Err(e) => {
                        last = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
                        if last.contains("BucketAlreadyOwnedByYou") {
                            return;
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            panic!(
                "cannot create bucket {bucket} at {}: {last}",
                server.endpoint
            );
        })
    }
}

/// Runs the future `make` returns to its end on a runtime of its own, on a
/// thread of its own, so that sync tests and tests already inside a tokio
/// runtime can both call it (block_on inside a runtime panics).
pub fn on_own_runtime<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(make())
    })
    .join()
    .expect("thread of on_own_runtime")
}

/// The test S3 server: `MAILSAFE_TEST_S3_*` from the environment, or one
/// started for this test binary on first call.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        if let Ok(endpoint) = std::env::var("MAILSAFE_TEST_S3_ENDPOINT") {
            return Server {
                endpoint,
                access_key: std::env::var("MAILSAFE_TEST_S3_ACCESS_KEY").unwrap_or_default(),
                secret_key: std::env::var("MAILSAFE_TEST_S3_SECRET_KEY").unwrap_or_default(),
            };
        }
        start_own_server()
    })
}

/// A fresh bucket on the test server, named after the test binary, process
/// and a counter so parallel tests and runs never share one.
pub fn s3() -> S3 {
    static N: AtomicU32 = AtomicU32::new(0);
    let server = server().clone();
    let exe = std::env::current_exe().unwrap();
    let stem = exe.file_stem().unwrap().to_string_lossy();
    // Test binaries are named `name-<hash>`: keep the name part.
    let name: String = stem
        .split('-')
        .next()
        .unwrap()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(20)
        .collect::<String>()
        .to_ascii_lowercase();
    let bucket = format!(
        "t-{name}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u16>()
    );
    server.create_bucket(&bucket);
    S3 { server, bucket }
}

/// A port free on 127.0.0.1 right now, for a child process to bind. (A
/// child cannot be handed a listener; another process could take the port
/// in between, which on a test machine's loopback does not happen.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The `mailsafe` binary under test, with CA-bundle and AWS profile/endpoint
/// variables of the surrounding environment removed (callers add their own).
pub fn mailsafe() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailsafe"));
    for var in CA_VARS.iter().chain(AWS_VARS) {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd` to its end and returns its output; fails the test, showing
/// the command's arguments and stderr, unless it exited 0. (The arguments
/// only: the environment holds the S3 keys.)
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("start the command");
    assert!(
        out.status.success(),
        "{} {} exited with {}:\n{}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts SeaweedFS with `scripts/s3.sh` and a watchdog that stops it once
/// this process is gone (statics are never dropped, so no destructor could).
fn start_own_server() -> Server {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("mailsafe-test-s3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env_file = dir.join("s3.env");
    s3_script("start", &env_file);
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         MAILSAFE_S3_ENV='{env}' bash '{script}' stop >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        env = env_file.display(),
        script = root.join("scripts/s3.sh").display(),
        dir = dir.display(),
    );
    // Never waited for: it must outlive this process (setsid detaches it).
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &watchdog])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start S3 watchdog");
    server_from_env_file(&env_file)
}

/// Runs `scripts/s3.sh COMMAND` for the server of `env_file`; fails the
/// test if it fails.
fn s3_script(command: &str, env_file: &Path) {
    assert!(
        s3_script_ok(command, env_file),
        "scripts/s3.sh {command} failed"
    );
}

/// Runs `scripts/s3.sh COMMAND`; whether it succeeded.
fn s3_script_ok(command: &str, env_file: &Path) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(command)
        .env("MAILSAFE_S3_ENV", env_file)
        .stdout(std::process::Stdio::null())
        .status();
    status.is_ok_and(|s| s.success())
}

/// The endpoint and keys `scripts/s3.sh start` wrote to `env_file`.
fn server_from_env_file(env_file: &Path) -> Server {
    let text = std::fs::read_to_string(env_file).unwrap();
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("{name} missing in {}", env_file.display()))
            .to_string()
    };
    Server {
        endpoint: var("MAILSAFE_TEST_S3_ENDPOINT"),
        access_key: var("MAILSAFE_TEST_S3_ACCESS_KEY"),
        secret_key: var("MAILSAFE_TEST_S3_SECRET_KEY"),
    }
}

/// A SeaweedFS of one test's own, for tests that take the server itself
/// down and up again (a real outage: connections refused, then a restart
/// on the same ports and data dir). Stopped, its data deleted, on drop.
pub struct OwnS3 {
    env_dir: tempfile::TempDir,
    /// Its endpoint and keys.
    pub server: Server,
}

impl OwnS3 {
    /// Starts a server (on free loopback ports) and waits until S3 answers.
    pub fn start() -> OwnS3 {
        let env_dir = tempfile::tempdir().unwrap();
        let env_file = env_dir.path().join("s3.env");
        s3_script("start", &env_file);
        OwnS3 {
            server: server_from_env_file(&env_file),
            env_dir,
        }
    }

    /// A new bucket on this server.
    pub fn bucket(&self, name: &str) -> S3 {
        self.server.create_bucket(name);
        S3 {
            server: self.server.clone(),
            bucket: name.to_string(),
        }
    }

    /// Stops the server's processes; its data and ports are kept.
    pub fn down(&self) {
        s3_script("down", &self.env_dir.path().join("s3.env"));
    }

    /// Starts it again after [`OwnS3::down`]: same ports, same data.
    pub fn up(&self) {
        s3_script("up", &self.env_dir.path().join("s3.env"));
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        // No panic here: this may run while a failed test unwinds.
        let _ = s3_script_ok("stop", &self.env_dir.path().join("s3.env"));
    }
}

/// A random generator for tests that pick "random moments" (kill or SIGTERM
/// delays): seeded, so a failing run can be replayed exactly. The seed is
/// `MAILSAFE_TEST_SEED` when set, else a fixed one per test name; it is
/// printed either way, so `MAILSAFE_TEST_SEED=<n> cargo test NAME` reruns the
/// same schedule.
pub fn seeded_rng(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = std::env::var("MAILSAFE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            // FNV-1a of the name: stable across runs and toolchains.
            test.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        });
    eprintln!("{test}: MAILSAFE_TEST_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}
