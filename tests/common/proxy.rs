//! The metering / fault-injecting S3 proxy (bench/s3proxy/s3proxy.py) as a
//! child process, shared by every test that meters requests or injects S3
//! faults (one starter, so a change to the proxy's interface is made once).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running proxy on 127.0.0.1 (a free port it picks itself); killed on drop.
pub struct Proxy {
    /// The proxy process (tests may signal it, e.g. to make it write stats).
    pub child: Child,
    /// `http://127.0.0.1:PORT`: point an S3 client here instead of upstream.
    pub endpoint: String,
}

impl Proxy {
    /// Starts a proxy in front of `upstream` with extra command-line flags
    /// (`--error-rate`, `--reset-rate`, `--stats-file`, ...), and waits for
    /// the `PORT n` line it prints once it listens.
    pub fn start(upstream: &str, extra: &[&str]) -> Proxy {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/s3proxy/s3proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--upstream", upstream])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start s3proxy.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("s3proxy.py printed {line:?}, not a PORT line"))
            .to_string();
        Proxy {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Calls the proxy's control API `/__proxy/PATH` and returns its JSON.
    pub async fn control(&self, method: reqwest::Method, path: &str) -> serde_json::Value {
        let url = format!("{}/__proxy/{path}", self.endpoint);
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .request(method, &url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// Counters by operation and injected faults since the last reset.
    pub async fn stats(&self) -> serde_json::Value {
        self.control(reqwest::Method::GET, "stats").await
    }

    /// Total requests forwarded (or refused) since the last reset.
    pub async fn requests(&self) -> u64 {
        let stats = self.stats().await;
        stats["ops"]
            .as_object()
            .map(|ops| {
                ops.values()
                    .map(|o| o["requests"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Zeroes the counters.
    pub async fn reset(&self) {
        self.control(reqwest::Method::POST, "reset").await;
    }

    /// Delays every request by `ms` from now on (0 ends it); two minutes
    /// outlast the SDK's read timeout, so a store "hangs".
    pub async fn latency(&self, ms: u64) {
        self.control(reqwest::Method::POST, &format!("faults?latency_ms={ms}"))
            .await;
    }

    /// Refuses every request for `secs` seconds from now.
    pub async fn outage(&self, secs: u64) {
        self.control(reqwest::Method::POST, &format!("faults?outage_s={secs}"))
            .await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
