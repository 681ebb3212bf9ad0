//! S3 faults during steady mail load, the Kubernetes sidecar way: `mailsafe
//! serve` takes mail over SMTP from a real client while a `mailsafe watch`
//! sidecar backs its db up through the fault proxy (bench/s3proxy), which
//! answers 3 requests in 10 with 503 SlowDown, resets connections mid-body, adds
//! 2 s of latency, then refuses everything for a while (an outage). Checked:
//! every acknowledged mail is in the restored replica, the watcher's RSS
//! stays bounded, and `/healthz` reports the lag (non-200) during the outage
//! and recovers after it.
//!
//! Phases end on conditions (faults seen, outage refusals seen, `/healthz`
//! non-200 seen), and the proxy's faults follow a fixed schedule, so the
//! test cannot miss its faults by chance. CI runs a short version (~70 s). `bench/faults.sh` runs the full one
//! (`FAULTS_FULL=1`: 30 s outage, longer phases) and records the figures this
//! test prints (`FIGURE` lines) in bench/RESULTS.md.

mod common;
mod watch_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use common::proxy::Proxy;
use watch_support::Watcher;

/// Phase lengths: (load before faults, 503/reset/latency phase, outage).
fn phases() -> (u64, u64, u64) {
    if std::env::var_os("FAULTS_FULL").is_some() {
        (10, 40, 30)
    } else {
        (4, 15, 15)
    }
}

/// Peak RSS allowed for the watcher, MiB: generous for a debug build, far
/// below what buffering a whole outage's worth of snapshots would take.
const RSS_LIMIT_MIB: u64 = 160;

/// `mailsafe serve` without a replica (the sidecar does the backups).
struct Serve {
    child: Child,
    smtp: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(db: &Path, log: &Path) -> Serve {
    let (smtp, http) = (free_port(), free_port());
    let child = common::mailsafe()
        .args(["serve", "--db"])
        .arg(db)
        .args(["--smtp", &format!("127.0.0.1:{smtp}")])
        .args(["--listen", &format!("127.0.0.1:{http}")])
        .args(["--max-messages", "0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", smtp)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "SMTP never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Serve { child, smtp }
}

/// A real SMTP client sending `rate` mails/s until `stop` exists (at most
/// `max_secs`); prints how many were acknowledged (250) when done. The test
/// ends the load on a condition (the phases it needs were observed), not
/// after a fixed time.
fn load(port: u16, stop: &Path, max_secs: u64, rate: u32) -> Child {
    let script = "import os, smtplib, sys, time\n\
        port, stop, secs, rate = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])\n\
        s = smtplib.SMTP('127.0.0.1', port, timeout=30)\n\
        n, t0 = 0, time.time()\n\
        while time.time() - t0 < secs and not os.path.exists(stop):\n\
        \x20   s.sendmail('a@example.test', ['b@example.test'], 'Subject: m%d\\r\\n\\r\\n%s\\r\\n' % (n, os.urandom(1200).hex()))\n\
        \x20   n += 1\n\
        \x20   d = t0 + n / rate - time.time()\n\
        \x20   if d > 0: time.sleep(d)\n\
        s.quit()\n\
        print(n)\n";
    Command::new("python3")
        .args([
            "-c",
            script,
            &port.to_string(),
            stop.to_str().unwrap(),
            &max_secs.to_string(),
            &rate.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// One poll of the watcher between phase checks: its RSS and replication lag.
async fn sample(w: &Watcher, peak_rss: &mut u64, max_lag: &mut f64) {
    *peak_rss = (*peak_rss).max(rss_mib(w.child.id()));
    if let Some(m) = w.metrics().await {
        *max_lag = max_lag.max(
            m.get("mailsafe_replication_lag_seconds")
                .copied()
                .unwrap_or(0.0),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn healthz(w: &Watcher) -> u16 {
    match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{}/healthz", w.http))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_outage_under_mail_load_lose_nothing() {
    let (calm, faulty, outage) = phases();
    let s3 = common::s3();
    let url = s3.url("faults");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mail.db");
    let proxy = Proxy::start(&s3.server.endpoint, &[]);
    let catcher = serve(&db, &dir.path().join("serve.log"));
    let mut w = Watcher::start(&s3, &proxy.endpoint, &db, &url, &["--health-max-lag", "5s"]);

    // Each phase lasts at least its length and until what it exists for
    // was observed (bounded by PHASE_LIMIT): faults injected, requests refused
    // by the outage, `/healthz` non-200 in it. The proxy's faults follow a
    // fixed schedule (the first request after they are switched on gets a
    // 503), so only a watcher that stops talking to S3 can miss them, and
    // that is a failure worth reporting.
    const PHASE_LIMIT: Duration = Duration::from_secs(120);
    let stop = dir.path().join("stop-load");
    let sender = load(catcher.smtp, &stop, 600, 20);
    let mut peak_rss = 0;
    let mut unhealthy_in_outage = false;
    let mut max_lag: f64 = 0.0;

    let phase = Instant::now();
    while phase.elapsed() < Duration::from_secs(calm) {
        sample(&w, &mut peak_rss, &mut max_lag).await;
    }

    proxy
        .control(
            reqwest::Method::POST,
            "faults?error_rate=0.3&reset_rate=0.2&latency_ms=2000",
        )
        .await;
    let phase = Instant::now();
    loop {
        let f = proxy.stats().await["faults"].clone();
        let n = |k: &str| f[k].as_u64().unwrap_or(0);
        let exercised = n("error_503") > 0 && n("reset_request") + n("reset_response") > 0;
        if exercised && phase.elapsed() >= Duration::from_secs(faulty) {
            break;
        }
        assert!(
            phase.elapsed() < PHASE_LIMIT,
            "the watcher made too few S3 requests for the fault schedule in {PHASE_LIMIT:?}: {f}; log:\n{}",
            w.logs()
        );
        sample(&w, &mut peak_rss, &mut max_lag).await;
    }

    // The outage: refused until we end it.
    proxy.outage(3600).await;
    let phase = Instant::now();
    loop {
        let refused = proxy.stats().await["faults"]["outage_refused"]
            .as_u64()
            .unwrap_or(0);
        // The lag limit is 5 s: after 6 s without a successful upload the
        // sidecar must say so.
        if phase.elapsed() >= Duration::from_secs(6) && healthz(&w).await != 200 {
            unhealthy_in_outage = true;
        }
        if refused > 0 && unhealthy_in_outage && phase.elapsed() >= Duration::from_secs(outage) {
            break;
        }
        if phase.elapsed() >= PHASE_LIMIT {
            break; // the asserts below say which expectation failed
        }
        sample(&w, &mut peak_rss, &mut max_lag).await;
    }
    let stats = proxy.stats().await;
    // Faults off: the watcher must recover by itself.
    proxy
        .control(
            reqwest::Method::POST,
            "faults?error_rate=0&reset_rate=0&latency_ms=0&outage_s=0",
        )
        .await;
    let recover = Instant::now();
    std::fs::write(&stop, b"").unwrap();
    let out = sender.wait_with_output().unwrap();
    assert!(out.status.success(), "SMTP client failed");
    let acknowledged: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    w.wait_caught_up(Duration::from_secs(90)).await;
    let recovered_after = recover.elapsed();
    let mut healthy = false;
    for _ in 0..40 {
        if healthz(&w).await == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(healthy, "/healthz did not recover; log:\n{}", w.logs());
    peak_rss = peak_rss.max(rss_mib(w.child.id()));
    w.term();
    assert!(w.wait(Duration::from_secs(60)).success(), "{}", w.logs());
    drop(catcher);

    let restored = dir.path().join("restored.db");
    let r = watch_support::restore(&s3, &url, &restored, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let n: i64 = rusqlite::Connection::open(&restored)
        .unwrap()
        .query_row("SELECT count(*) FROM mailbox", [], |r| r.get(0))
        .unwrap();
    let f = &stats["faults"];
    println!(
        "FIGURE phases_s calm={calm} faults={faulty} outage={outage}\n\
         FIGURE mails acknowledged={acknowledged} restored={n} lost={}\n\
         FIGURE watch_peak_rss_mib {peak_rss}\n\
         FIGURE max_replication_lag_s {max_lag:.1}\n\
         FIGURE caught_up_after_faults_cleared_s {:.1}\n\
         FIGURE injected error_503={} reset_request={} reset_response={} outage_refused={}\n\
         FIGURE status_counts {}",
        acknowledged - n,
        recovered_after.as_secs_f64(),
        f["error_503"],
        f["reset_request"],
        f["reset_response"],
        f["outage_refused"],
        stats["status"]
    );
    assert!(
        f["error_503"].as_u64().unwrap_or(0) > 0 && f["outage_refused"].as_u64().unwrap_or(0) > 0,
        "the faults were not exercised: {stats}"
    );
    assert!(
        f["reset_request"].as_u64().unwrap_or(0) + f["reset_response"].as_u64().unwrap_or(0) > 0,
        "no connection was reset: {stats}"
    );
    assert_eq!(n, acknowledged, "every acknowledged mail is in the replica");
    assert!(
        unhealthy_in_outage,
        "/healthz stayed 200 during the outage; log:\n{}",
        w.logs()
    );
    assert!(
        peak_rss > 0 && peak_rss < RSS_LIMIT_MIB,
        "watch peak RSS {peak_rss} MiB"
    );
}
