//! The whole story of a catcher in pods that come and go, with real processes
//! against a real S3 (SeaweedFS): no captured email is ever lost.
//!
//! Every pod life, in Kubernetes order:
//! 1. a fresh, empty directory (an emptyDir);
//! 2. `mailsafe restore --if-db-not-exists --if-replica-exists` (the
//!    initContainer), then `mailsafe watch --listen` (the native sidecar,
//!    started before the catcher once `/healthz` answers, like its
//!    startupProbe), then `mailsafe serve` (the catcher) until `/readyz`;
//!    or, for the single-container variant, `mailsafe serve --replica` alone;
//! 3. every email acknowledged with 250 in any earlier life must be there,
//!    checked through the HTTP API by content (subject listing plus a body
//!    search for the emails sent right up to the previous shutdown);
//! 4. emails over SMTP from Python's smtplib: a batch that must all succeed,
//!    then a sender that keeps going while the catcher gets SIGTERM;
//! 5. SIGTERM to the catcher, wait for it to exit 0; then SIGTERM to the
//!    sidecar (as the kubelet stops native sidecars after the main
//!    containers), wait for exit 0; the directory is thrown away.
//!
//! `MAILSAFE_CHURN_LIVES` (default 10) sets the number of lives per variant,
//! `MAILSAFE_CHURN_SEED_MIB` (default 0) sends that many MiB of mail in the
//! first life so that later restores are of a db that size, and
//! `MAILSAFE_CHURN_REPORT` names a file that receives the measurements as
//! JSON (lost emails, cold start per life); `bench/pod-churn.sh` uses them.
//! Losses are counted over all lives and asserted at the end, so the report
//! is written even for a failing run.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use serde_json::{Value, json};

/// SMTP client: sends numbered emails, one connection each (as an app
/// sending notifications would), and prints `ok TOKEN` for every email the
/// server acknowledged with 250. In `all` mode any failure is fatal; in
/// `churn` mode it keeps going until the server has refused it for a second
/// (it is shutting down), or the count or time bound is reached.
const SENDER: &str = r#"
import base64, os, smtplib, sys, time
host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
max_n, max_s, kib, mode = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
deadline = time.monotonic() + max_s
failing_since = None
for i in range(max_n):
    if time.monotonic() > deadline:
        break
    token = f"{prefix}m{i}z"
    filler = ""
    if kib:
        raw = base64.encodebytes(os.urandom(kib * 768)).decode()
        filler = raw.replace("\n", "\r\n")
    msg = (f"From: churn@example.com\r\nTo: inbox@example.com\r\n"
           f"Subject: churn {token}\r\nMessage-ID: <{token}@mailsafe.test>\r\n"
           f"\r\nbody{token} sent at {time.time()}\r\n{filler}")
    try:
        s = smtplib.SMTP(host, port, timeout=15)
        s.sendmail("churn@example.com", ["inbox@example.com"], msg)
        # sendmail returned: the server answered 250 to the end of DATA.
        print("ok", token, flush=True)
        failing_since = None
        try:
            s.quit()
        except Exception:
            s.close()
    except Exception as e:
        print(f"not acknowledged {token}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if mode == "all":
            sys.exit(1)
        now = time.monotonic()
        failing_since = failing_since or now
        if now - failing_since > 1.0:
            break
        time.sleep(0.02)
"#;

/// How a pod runs mailsafe.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    /// `restore` initContainer + `watch` sidecar + `serve` (deployment.yaml).
    Sidecar,
    /// `serve --replica` alone (single-container.yaml).
    SingleContainer,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Sidecar => "sidecar",
            Variant::SingleContainer => "single",
        }
    }
}

/// A process of one pod life. Killed if still running when dropped, so a
/// failing test leaves nothing behind.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, as the kubelet sends it.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.name);
    }

    /// Waits for the exit and returns its code; fails (after SIGKILL) when
    /// the process outlives `limit`, as the kubelet would kill it.
    fn wait(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} still running {limit:?} after SIGTERM; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Blocking HTTP through reqwest on a private runtime.
struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Http {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn status(&self, url: &str) -> Option<u16> {
        // The request future must be created inside the runtime: reqwest
        // arms its timeout when `send` is called.
        self.rt
            .block_on(async { self.client.get(url).send().await })
            .ok()
            .map(|r| r.status().as_u16())
    }

    fn json(&self, url: &str) -> Value {
        self.rt.block_on(async {
            let resp = self
                .client
                .get(url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
            resp.json::<Value>()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        })
    }

    /// Polls `url` until it answers 200; fails after `limit`, or as soon as
    /// one of `procs` has exited (with its log).
    fn wait_ok(&self, url: &str, limit: Duration, procs: &mut [&mut Proc]) -> Duration {
        let start = Instant::now();
        loop {
            if self.status(url) == Some(200) {
                return start.elapsed();
            }
            for p in procs.iter_mut() {
                if !p.is_running() {
                    panic!(
                        "{} exited while waiting for {url}; log:\n{}",
                        p.name,
                        p.log_tail()
                    );
                }
            }
            assert!(start.elapsed() < limit, "{url} not 200 within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs the SMTP sender to completion; returns the acknowledged tokens.
fn send(port: u16, prefix: &str, max: usize, max_secs: f64, kib: usize, all: bool) -> Vec<String> {
    Sender::spawn(port, prefix, max, max_secs, kib, all).finish()
}

/// A running SMTP sender (the Python client above). Its acknowledgements
/// are read as they come, so a test can act while it is mid-stream.
struct Sender {
    child: Child,
    all: bool,
    acks: std::sync::mpsc::Receiver<String>,
    acked: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Sender {
    fn spawn(port: u16, prefix: &str, max: usize, max_secs: f64, kib: usize, all: bool) -> Sender {
        let mut child = Command::new("python3")
            .args(["-c", SENDER, "127.0.0.1", &port.to_string(), prefix])
            .args([max.to_string(), max_secs.to_string(), kib.to_string()])
            .arg(if all { "all" } else { "churn" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let (tx, acks) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(token) = line.strip_prefix("ok ") {
                    if tx.send(token.to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        Sender {
            child,
            all,
            acks,
            acked: Vec::new(),
            stderr,
        }
    }

    /// Blocks until `n` emails have been acknowledged (or `limit` passed).
    fn wait_for_acks(&mut self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.acked.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(token) => self.acked.push(token),
                Err(_) => panic!(
                    "only {} of {n} emails acknowledged within {limit:?}",
                    self.acked.len()
                ),
            }
        }
    }

    /// Waits for the sender to exit; returns every acknowledged token.
    fn finish(mut self) -> Vec<String> {
        let status = self.child.wait().unwrap();
        let err = self.stderr.join().unwrap();
        // The reader thread ends with the pipe: collect what it still has.
        while let Ok(token) = self.acks.recv_timeout(Duration::from_secs(5)) {
            self.acked.push(token);
        }
        if self.all {
            assert!(status.success(), "every email should be accepted:\n{err}");
        }
        self.acked
    }
}

/// Subjects of every message in the catcher, through `/api/v1/messages`.
fn all_tokens(http: &Http, base: &str) -> BTreeSet<String> {
    let mut tokens = BTreeSet::new();
    let mut start = 0;
    loop {
        let page = http.json(&format!("{base}/api/v1/messages?start={start}&limit=1000"));
        let messages = page["messages"].as_array().expect("messages array");
        for m in messages {
            if let Some(t) = m["Subject"].as_str().and_then(|s| s.strip_prefix("churn ")) {
                tokens.insert(t.to_owned());
            }
        }
        start += messages.len();
        let total = page["messages_count"]
            .as_u64()
            .or(page["total"].as_u64())
            .unwrap_or(0) as usize;
        if messages.is_empty() || start >= total {
            return tokens;
        }
    }
}

/// One email found by a body search, its subject the one it was sent with.
fn found_by_body(http: &Http, base: &str, token: &str) -> bool {
    let r = http.json(&format!("{base}/api/v1/search?query=body{token}&limit=5"));
    let subjects: Vec<&str> = r["messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["Subject"].as_str()).collect())
        .unwrap_or_default();
    subjects == [format!("churn {token}")]
}

/// Measurements of one variant's run.
#[derive(Debug, Default)]
struct Report {
    lives: usize,
    acknowledged: usize,
    lost: Vec<String>,
    /// The first life: nothing to restore yet.
    first_start_ms: f64,
    /// Every later life: restore, then ready.
    cold_start_ms: Vec<f64>,
    restored_db_bytes: Vec<u64>,
}

impl Report {
    fn to_json(&self, variant: Variant) -> Value {
        let mut sorted = self.cold_start_ms.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| {
            if sorted.is_empty() {
                0.0
            } else {
                sorted[((sorted.len() - 1) as f64 * p).round() as usize]
            }
        };
        json!({
            "variant": variant.name(),
            "lives": self.lives,
            "acknowledged": self.acknowledged,
            "lost": self.lost.len(),
            "lost_tokens": self.lost.iter().take(20).collect::<Vec<_>>(),
            "cold_start_ms_p50": pct(0.5),
            "cold_start_ms_p99": pct(0.99),
            "cold_start_ms_max": sorted.last().copied().unwrap_or(0.0),
            "first_start_ms": self.first_start_ms,
            "restored_db_bytes_max": self.restored_db_bytes.iter().max().copied().unwrap_or(0),
        })
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}")))
        .unwrap_or(default)
}

/// Size of the db's main file. Not the WAL: it holds the same pages many
/// times over, so main + WAL overstates the db (a seed counted that way as
/// "100 MiB" restored as 44 MiB). The catcher's own automatic checkpoints
/// move committed pages into the main file as mail comes in, and its
/// shutdown checkpoint the rest, so the main file is what a restore brings
/// back (give or take the last WAL's worth).
fn db_bytes(db: &Path) -> u64 {
    std::fs::metadata(db).map_or(0, |m| m.len())
}

fn churn(variant: Variant) {
    let lives = env_usize("MAILSAFE_CHURN_LIVES", 10);
    let seed_mib = env_usize("MAILSAFE_CHURN_SEED_MIB", 0);
    let s3 = common::s3();
    let replica = s3.url(variant.name());
    let http = Http::new();
    let work = tempfile::tempdir().unwrap();
    let mut acked: Vec<String> = Vec::new();
    // Sent right up to the previous shutdown: checked by body search too.
    let mut last_life_tail: Vec<String> = Vec::new();
    let mut report = Report::default();

    for life in 0..lives {
        // A new pod: a fresh emptyDir, nothing on disk.
        let dir = work.path().join(format!("pod{life}"));
        std::fs::create_dir(&dir).unwrap();
        let db = dir.join("mailsafe.db");
        let (smtp, web) = (free_port(), free_port());
        let base = format!("http://127.0.0.1:{web}");
        let started = Instant::now();

        let mut sidecar = None;
        let mut catcher = match variant {
            Variant::Sidecar => {
                let mut restore = s3.mailsafe();
                restore.args(["restore", "--db"]).arg(&db).args([
                    "--replica",
                    &replica,
                    "--if-db-not-exists",
                    "--if-replica-exists",
                ]);
                let mut restore = Proc::spawn("restore", restore, &dir);
                let code = restore.wait(Duration::from_secs(120));
                assert_eq!(
                    code,
                    0,
                    "life {life}: restore failed:\n{}",
                    restore.log_tail()
                );

                let metrics = free_port();
                let mut watch = s3.mailsafe();
                watch
                    .args(["watch", "--db"])
                    .arg(&db)
                    .args(["--replica", &replica])
                    .arg(format!("--listen=127.0.0.1:{metrics}"));
                let mut watch = Proc::spawn("watch", watch, &dir);
                // The startupProbe of the sidecar gates the catcher's start.
                http.wait_ok(
                    &format!("http://127.0.0.1:{metrics}/healthz"),
                    Duration::from_secs(30),
                    &mut [&mut watch],
                );
                // The catcher gets no replica and no credentials.
                let mut serve = common::mailsafe();
                serve
                    .args(["serve", "--db"])
                    .arg(&db)
                    .arg(format!("--smtp=127.0.0.1:{smtp}"))
                    .arg(format!("--listen=127.0.0.1:{web}"))
                    // Keep every message (the default keeps the newest 500).
                    .arg("--max-messages=0")
                    .env_remove("MAILSAFE_REPLICA");
                sidecar = Some(watch);
                Proc::spawn("serve", serve, &dir)
            }
            Variant::SingleContainer => {
                let mut serve = s3.mailsafe();
                serve
                    .args(["serve", "--db"])
                    .arg(&db)
                    .arg(format!("--smtp=127.0.0.1:{smtp}"))
                    .arg(format!("--listen=127.0.0.1:{web}"))
                    // Keep every message (the default keeps the newest 500).
                    .arg("--max-messages=0")
                    .args(["--replica", &replica]);
                Proc::spawn("serve", serve, &dir)
            }
        };
        {
            let mut procs: Vec<&mut Proc> = vec![&mut catcher];
            if let Some(w) = sidecar.as_mut() {
                procs.push(w);
            }
            http.wait_ok(
                &format!("{base}/readyz"),
                Duration::from_secs(120),
                &mut procs,
            );
        }
        let cold_start = started.elapsed();
        if life == 0 {
            report.first_start_ms = cold_start.as_secs_f64() * 1000.0;
        } else {
            // A cold start with a restore: from the first process of the pod
            // to the catcher's /readyz.
            report.cold_start_ms.push(cold_start.as_secs_f64() * 1000.0);
            report.restored_db_bytes.push(db_bytes(&db));
        }

        // Everything acknowledged in any earlier life is here.
        let present = all_tokens(&http, &base);
        let lost: Vec<String> = acked
            .iter()
            .filter(|t| !present.contains(*t))
            .cloned()
            .collect();
        for t in &last_life_tail {
            if !lost.contains(t) && !found_by_body(&http, &base, t) {
                report.lost.push(format!("{t} (body search)"));
            }
        }
        if !lost.is_empty() {
            eprintln!(
                "[{}] life {life}: {} of {} acknowledged emails missing, e.g. {:?}",
                variant.name(),
                lost.len(),
                acked.len(),
                &lost[..lost.len().min(5)]
            );
            report.lost.extend(lost.iter().cloned());
            // Count each loss once: later lives are checked against what
            // this life really had.
            acked.retain(|t| present.contains(t));
        }

        // Seed a big db in the first life, for cold-start measurements:
        // batches of 256 KiB emails until the db file has the size asked for
        // (what an email costs in the db depends on the catcher's indexes, so
        // the size is measured rather than computed). Bounded: should the
        // catcher's checkpoints stall, four times the size in mail is enough.
        let mut batch_no = 0;
        let seed_bytes = (seed_mib as u64) << 20;
        while life == 0 && db_bytes(&db) < seed_bytes {
            assert!(
                batch_no * 20 * 256 * 1024 < 4 * seed_bytes as usize,
                "seeding: {} bytes of mail sent, the db file is still {} bytes",
                batch_no * 20 * 256 * 1024,
                db_bytes(&db)
            );
            let prefix = format!("seed{}b{batch_no}", variant.name());
            let seeded = send(smtp, &prefix, 20, 600.0, 256, true);
            assert_eq!(seeded.len(), 20);
            report.acknowledged += seeded.len();
            acked.extend(seeded);
            batch_no += 1;
        }

        // Mail that must all be accepted, then mail right up to the end.
        let prefix = format!("{}L{life}", variant.name());
        let batch = send(smtp, &format!("{prefix}a"), 10, 60.0, 0, true);
        assert_eq!(batch.len(), 10, "life {life}: first batch");
        acked.extend(batch);
        let mut sender = Sender::spawn(smtp, &format!("{prefix}b"), 500, 60.0, 0, false);
        // SIGTERM lands while the sender is mid-stream: some emails are
        // acknowledged a moment before it, some are in flight, the rest are
        // refused.
        sender.wait_for_acks(5, Duration::from_secs(30));

        // The kubelet: SIGTERM to the catcher, wait, then to the sidecar.
        catcher.terminate();
        let code = catcher.wait(Duration::from_secs(40));
        assert_eq!(
            code,
            0,
            "life {life}: serve exit code; log:\n{}",
            catcher.log_tail()
        );
        let tail = sender.finish();
        if let Some(mut watch) = sidecar {
            assert!(
                watch.is_running(),
                "watch died early:\n{}",
                watch.log_tail()
            );
            watch.terminate();
            let code = watch.wait(Duration::from_secs(40));
            assert_eq!(
                code,
                0,
                "life {life}: watch exit code; log:\n{}",
                watch.log_tail()
            );
        }
        report.acknowledged += 10 + tail.len();
        last_life_tail = tail.iter().rev().take(3).cloned().collect();
        acked.extend(tail);
        report.lives += 1;
        eprintln!(
            "[{}] life {life}: cold start {:.0} ms, {} acknowledged so far",
            variant.name(),
            cold_start.as_secs_f64() * 1000.0,
            acked.len()
        );
        // The pod is gone, and its emptyDir with it.
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // One more restore checks the last life's emails.
    let dir = work.path().join("final");
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join("mailsafe.db");
    let mut restore = s3.mailsafe();
    restore
        .args(["restore", "--db"])
        .arg(&db)
        .args(["--replica", &replica]);
    let mut restore = Proc::spawn("restore", restore, &dir);
    let code = restore.wait(Duration::from_secs(120));
    assert_eq!(code, 0, "final restore:\n{}", restore.log_tail());
    let (smtp, web) = (free_port(), free_port());
    let mut serve = common::mailsafe();
    serve
        .args(["serve", "--db"])
        .arg(&db)
        .arg(format!("--smtp=127.0.0.1:{smtp}"))
        .arg(format!("--listen=127.0.0.1:{web}"))
        .arg("--max-messages=0");
    let mut serve = Proc::spawn("serve", serve, &dir);
    let base = format!("http://127.0.0.1:{web}");
    http.wait_ok(
        &format!("{base}/readyz"),
        Duration::from_secs(60),
        &mut [&mut serve],
    );
    let present = all_tokens(&http, &base);
    report
        .lost
        .extend(acked.iter().filter(|t| !present.contains(*t)).cloned());
    for t in &last_life_tail {
        if present.contains(t) && !found_by_body(&http, &base, t) {
            report.lost.push(format!("{t} (body search)"));
        }
    }

    let summary = report.to_json(variant);
    eprintln!("[{}] {summary}", variant.name());
    if let Ok(path) = std::env::var("MAILSAFE_CHURN_REPORT") {
        let path = format!("{path}.{}.json", variant.name());
        std::fs::write(&path, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    }
    assert!(
        report.lost.is_empty(),
        "{} acknowledged emails lost over {lives} pod lives: {:?}",
        report.lost.len(),
        &report.lost[..report.lost.len().min(20)]
    );
    assert!(
        report.acknowledged > lives * 10,
        "the churn senders sent nothing"
    );
}

/// deployment.yaml: restore initContainer, watch sidecar, catcher.
#[test]

fn sidecar_pods_lose_no_acknowledged_email() {
    churn(Variant::Sidecar);
}

/// single-container.yaml: `serve --replica` alone.
#[test]

fn single_container_pods_lose_no_acknowledged_email() {
    churn(Variant::SingleContainer);
}
