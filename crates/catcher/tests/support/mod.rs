//! Shared by the catcher's integration tests: a real catcher on 127.0.0.1
//! port 0 with a real SQLite store, a raw line-oriented SMTP client for exact
//! replies, and runners for real clients (Python's smtplib, swaks).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mailsafe_catcher::storage::Store;
use mailsafe_catcher::{Catcher, Config};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A catcher configuration for tests: database `db`, SMTP and HTTP on
/// 127.0.0.1 with free ports, everything else at its default.
pub fn loopback_config(db: PathBuf) -> Config {
    Config {
        database: db,
        smtp_bind: "127.0.0.1:0".into(),
        http_bind: "127.0.0.1:0".into(),
        ..Config::default()
    }
}

/// The HTTP API alone (no SMTP) over a store the test controls, on
/// 127.0.0.1 with a free port.
pub struct ApiServer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub store: Store,
    /// A client that never goes through a proxy.
    pub http: reqwest::Client,
    pub _dir: tempfile::TempDir,
}

impl ApiServer {
    /// Opens a fresh store in a temporary directory and serves the API on it.
    pub async fn start(
        opts: mailsafe_catcher::storage::StoreOptions,
        api_opts: mailsafe_catcher::api::ApiOptions,
    ) -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("mail.db"), opts).unwrap();
        ApiServer::serve(store, api_opts, dir).await
    }

    /// Serves the API on an already open `store` (kept alive by `dir`).
    pub async fn serve(
        store: Store,
        api_opts: mailsafe_catcher::api::ApiOptions,
        dir: tempfile::TempDir,
    ) -> ApiServer {
        let app = mailsafe_catcher::api::router(store.clone(), api_opts);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ApiServer {
            base,
            store,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            _dir: dir,
        }
    }
}

/// Calls the API `router` in-process with `tower::ServiceExt::oneshot`
/// (axum's testing example): no socket and no port, for tests that only
/// need requests and responses. Returns the status and the body as JSON
/// (`Null` when it is empty or not JSON).
pub async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (axum::http::StatusCode, serde_json::Value) {
    use tower::ServiceExt;
    let mut req = axum::http::Request::builder().method(method).uri(path);
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            axum::body::Body::from(v.to_string())
        }
        None => axum::body::Body::empty(),
    };
    let res = router
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// `GET path` through [`call`], asserting 200; the body as JSON.
pub async fn get_json(router: &axum::Router, path: &str) -> serde_json::Value {
    let (status, v) = call(router, "GET", path, None).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

/// An HTTP client for a catcher on 127.0.0.1 (proxy settings ignored).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Sends `request` and parses the answer's body as JSON.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// A running catcher and the means to stop it.
pub struct Server {
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    /// The POP3 address, when POP3 users are configured.
    pub pop3: Option<SocketAddr>,
    /// The metrics' own listener (`MP_ENABLE_PROMETHEUS=ip:port`).
    pub metrics: Option<SocketAddr>,
    /// The webhook task's counters, when webhooks are configured.
    pub webhook: Option<std::sync::Arc<mailsafe_catcher::webhook::WebhookStats>>,
    pub store: Store,
    pub db: PathBuf,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), mailsafe_catcher::Error>>>,
    pub _dir: tempfile::TempDir,
    /// The server's memory cap over message content, if configured.
    pub budget: Option<std::sync::Arc<mailsafe_catcher::smtp::DataBudget>>,
}

impl Server {
    pub async fn start(tune: impl FnOnce(&mut Config, &Path)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            max_messages: 0,
            ..loopback_config(dir.path().join("mail.db"))
        };
        tune(&mut config, dir.path());
        let db = config.database.clone();
        let catcher = Catcher::bind(config).await.expect("catcher starts");
        let (smtp, http, store) = (
            catcher.smtp_addr(),
            catcher.http_addr(),
            catcher.store().clone(),
        );
        let budget = catcher.data_budget().cloned();
        let pop3 = catcher.pop3_addr();
        let webhook = catcher.webhook_stats();
        let metrics = catcher.metrics_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(catcher.run(async {
            let _ = rx.await;
        }));
        Server {
            smtp,
            http,
            pop3,
            metrics,
            webhook,
            store,
            db,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
            budget,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("catcher stops in time")
                .unwrap()
                .expect("catcher stops cleanly");
        }
    }

    pub async fn count(&self) -> u64 {
        self.store.counts().await.unwrap().0
    }
}

/// A line-oriented raw SMTP client, for asserting exact replies.
pub struct Raw {
    pub reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    pub writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let mut raw = Raw {
            reader: BufReader::new(r),
            writer: w,
        };
        assert_eq!(raw.reply().await.0, 220);
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Reads one (possibly multi-line) reply: its code and its lines.
    pub async fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(
                n > 0,
                "connection closed while waiting for a reply; got {lines:?}"
            );
            let code: u16 = line[..3].parse().unwrap();
            let last = line.as_bytes()[3] == b' ';
            lines.push(line[4..].trim_end().to_string());
            if last {
                return (code, lines);
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> u16 {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await.0
    }

    /// Reads until EOF and returns what came.
    pub async fn rest(&mut self) -> String {
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.reader.read_to_string(&mut s))
            .await
            .expect("close in time")
            .unwrap();
        s
    }
}

/// Runs a Python script (with the SMTP port as argv[1]) and returns stdout.
pub fn python(script: &str, port: u16, extra: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .args(extra)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub async fn python_async(script: &'static str, port: u16, extra: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        python(script, port, &extra)
    })
    .await
    .unwrap()
}

pub fn swaks(args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(args)
        .output()
        .expect("swaks runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

pub async fn swaks_async(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        swaks(&args)
    })
    .await
    .unwrap()
}

/// IDs of stored messages, newest first.
pub async fn ids(store: &Store) -> Vec<String> {
    store
        .list(0, 1000)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.head.id)
        .collect()
}

/// Writes a self-signed certificate for 127.0.0.1/localhost into `dir`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k)
}

/// A seeded stream of incompressible bytes (xorshift64), so zstd cannot
/// shrink the stored copy and a memory test sees the real cost.
pub struct Noise(pub u64);

impl Noise {
    /// Fills `buf` with the stream's next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            c.copy_from_slice(&self.0.to_le_bytes()[..c.len()]);
        }
    }
}

/// A memory figure of this test process from `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resident memory of this test process, in KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// Peak resident memory of this test process (server and client), in KiB.
/// Per process: a test that measures it needs a test binary of its own.
pub fn hwm_kib() -> u64 {
    status_kib("VmHWM:")
}

/// The first bytes the server answers on `rd` while the client may still be
/// uploading, or `None` when the connection was reset: a server that refuses
/// a body early (413) closes with the rest unread, and the reset that causes
/// can overtake its answer on the client's side.
pub async fn early_answer(rd: &mut tokio::net::tcp::OwnedReadHalf) -> Option<String> {
    let mut answer = vec![0u8; 256];
    match tokio::time::timeout(Duration::from_secs(60), rd.read(&mut answer))
        .await
        .expect("answered in time")
    {
        Ok(n) => Some(String::from_utf8_lossy(&answer[..n]).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("reading the answer: {e}"),
    }
}

/// Everything logged by this test binary, at every level (installs the
/// global subscriber on first use).
pub fn logs() -> &'static std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct W(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || W(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

/// tests/clients: the Mailpit client scripts and their node_modules.
pub fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients")
}

/// Runs a client script of [`clients_dir`] (`node x.mjs BASE`, `python3 x.py
/// BASE`) without proxies; panics with its output unless it exits 0.
pub async fn run_client(cmd: &str, args: &[&str]) {
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

/// Sends one message per `argv[2:]` item (`to|raw` with `\n` for CR LF)
/// from a@example.com; prints one JSON list of outcomes: `"ok"` or the
/// refusal's `[code, text]`.
pub const SEND: &str = r#"
import json, smtplib, sys
out = []
for item in sys.argv[2:]:
    to, raw = item.split("|", 1)
    raw = raw.replace("\\r", "\r").replace("\\n", "\r\n")
    try:
        with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as s:
            refused = s.sendmail("a@example.com", to.split(","), raw.encode())
            out.append("ok" if not refused else [[c, t.decode()] for c, t in refused.values()][0])
    except smtplib.SMTPRecipientsRefused as e:
        code, text = list(e.recipients.values())[0]
        out.append([code, text.decode()])
    except smtplib.SMTPResponseException as e:
        out.append([e.smtp_code, e.smtp_error.decode()])
print(json.dumps(out))
"#;

/// Sends `items` (see [`SEND`]) to `server` over SMTP with smtplib; one
/// outcome per item.
pub async fn send(server: &Server, items: &[&str]) -> Vec<serde_json::Value> {
    let out = python_async(
        SEND,
        server.smtp.port(),
        items.iter().map(|s| s.to_string()).collect(),
    )
    .await;
    serde_json::from_str(&out).unwrap()
}
