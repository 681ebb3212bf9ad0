//! `mailsafe serve --replica` against a real S3 (SeaweedFS) and a real SMTP
//! client (Python's smtplib): mail acknowledged right before SIGTERM is in
//! the replica, and a fresh pod (no db) restores it on start.

mod common;
mod watch_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

use common::free_port;

struct Serve {
    child: Child,
    log: std::path::PathBuf,
    smtp: u16,
}

impl Serve {
    fn start(s3: &common::S3, db: &Path, url: &str) -> Serve {
        let (smtp, http) = (free_port(), free_port());
        let log = db.with_extension(format!("serve-{smtp}.log"));
        let child = s3
            .mailsafe()
            .args(["serve", "--db"])
            .arg(db)
            .args(["--smtp", &format!("127.0.0.1:{smtp}")])
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--replica", url])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start mailsafe serve");
        let s = Serve { child, log, smtp };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", smtp)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "SMTP never came up; log:\n{}",
                s.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "serve did not exit; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `n` messages over one SMTP session; returns once all are accepted.
fn send(port: u16, n: u32) {
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('127.0.0.1', {port}, timeout=30)\n\
         for i in range({n}):\n\
         \x20   s.sendmail('a@example.test', ['b@example.test'], 'Subject: m%d\\r\\n\\r\\nbody %d\\r\\n' % (i, i))\n\
         s.quit()\n"
    );
    let ok = Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "smtplib client failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replica_flushes_on_sigterm_and_restores_on_start() {
    let s3 = common::s3();
    let url = s3.url("serve");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mail.db");

    let mut a = Serve::start(&s3, &db, &url);
    send(a.smtp, 25);
    // SIGTERM right after the last acknowledgment.
    let st = a.stop();
    assert!(st.success(), "exit {st:?}; log:\n{}", a.logs());
    let out = dir.path().join("restored.db");
    let r = watch_support::restore(&s3, &url, &out, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(messages(&out), 25, "messages acknowledged before SIGTERM");

    // A new pod: empty volume, same replica.
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = dir2.path().join("mail.db");
    let mut b = Serve::start(&s3, &db2, &url);
    assert!(
        b.logs().contains("restored"),
        "no restore on start:\n{}",
        b.logs()
    );
    send(b.smtp, 5);
    let st = b.stop();
    assert!(st.success(), "exit {st:?}; log:\n{}", b.logs());
    assert_eq!(messages(&db2), 30);
    let out2 = dir.path().join("restored2.db");
    let r = watch_support::restore(&s3, &url, &out2, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(messages(&out2), 30);
}

/// Messages stored in a catcher database.
fn messages(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM mailbox", [], |r| r.get(0))
        .unwrap()
}

/// SMTP client for the random-SIGTERM test: one message per connection,
/// `ok SUBJECT` printed for each 250; waits up to 20 s for the server to come
/// up, and stops once the server has refused it for a second after that.
const SENDER: &str = r#"
import smtplib, sys, time
port, prefix = int(sys.argv[1]), sys.argv[2]
start = time.monotonic(); ever_ok = False; failing_since = None
for i in range(2000):
    subject = f"{prefix}-{i}"
    try:
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        s.sendmail("a@example.test", ["b@example.test"], f"Subject: {subject}\r\n\r\nbody {subject}\r\n")
        print("ok", subject, flush=True)
        ever_ok, failing_since = True, None
        try:
            s.quit()
        except Exception:
            s.close()
    except Exception:
        now = time.monotonic()
        failing_since = failing_since or now
        if (ever_ok and now - failing_since > 1.0) or now - start > 20:
            break
        time.sleep(0.02)
"#;

/// SIGTERM at random moments of `serve --replica` lives, a bounded number of
/// times: during the start-up restore, while mail arrives, between
/// messages. Every time the process ends within `--shutdown-timeout` with
/// exit 0, and every message acknowledged in any life is in the final
/// restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_random_moments_ends_in_time_and_loses_nothing() {
    use std::io::BufRead;
    let s3 = common::s3();
    let url = s3.url("random");
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(5);
    let mut rng = common::seeded_rng("sigterm_at_random_moments_ends_in_time_and_loses_nothing");
    let mut acked = Vec::new();
    for life in 0..8 {
        let pod = dir.path().join(format!("pod{life}"));
        std::fs::create_dir(&pod).unwrap();
        let db = pod.join("mail.db");
        let (smtp, http) = (free_port(), free_port());
        let log = pod.join("serve.log");
        let mut child = s3
            .mailsafe()
            .args(["serve", "--db"])
            .arg(&db)
            .args(["--smtp", &format!("127.0.0.1:{smtp}")])
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--replica", &url, "--shutdown-timeout", "5s"])
            // Keep every message (the default keeps the newest 500).
            .args(["--max-messages", "0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start mailsafe serve");
        let logs = || std::fs::read_to_string(&log).unwrap_or_default();
        let mut sender = Command::new("python3")
            .args(["-c", SENDER, &smtp.to_string(), &format!("life{life}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let out = sender.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            std::io::BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("ok ").map(str::to_owned))
                .collect::<Vec<_>>()
        });
        watch_support::wait_for_sigterm_handler(child.id(), Duration::from_secs(30));
        let delay = Duration::from_millis(rng.random_range(0..2500));
        std::thread::sleep(delay);
        let t = Instant::now();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "life {life}: serve still running 60 s after SIGTERM; log:\n{}",
                    logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t.elapsed();
        assert!(
            took < timeout + Duration::from_secs(1),
            "life {life} (SIGTERM {delay:?} after start): exit took {took:?}; log:\n{}",
            logs()
        );
        assert!(
            status.success(),
            "life {life} (SIGTERM {delay:?} after start): {status:?}; log:\n{}",
            logs()
        );
        // The server is gone: whatever the sender was told is final.
        let until = Instant::now() + Duration::from_secs(3);
        while sender.try_wait().unwrap().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = sender.kill();
        let _ = sender.wait();
        acked.extend(reader.join().unwrap());
    }
    assert!(!acked.is_empty(), "no life accepted any mail");
    let out = dir.path().join("restored.db");
    let r = watch_support::restore(&s3, &url, &out, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let conn = rusqlite::Connection::open(&out).unwrap();
    let mut stmt = conn.prepare("SELECT Subject FROM mailbox").unwrap();
    let present: std::collections::BTreeSet<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|s| !present.contains(*s)).collect();
    if !lost.is_empty() {
        for life in 0..8 {
            let prefix = format!("life{life}-");
            let n = lost.iter().filter(|s| s.starts_with(&prefix)).count();
            let m = acked.iter().filter(|s| s.starts_with(&prefix)).count();
            eprintln!("life {life}: {n} of {m} acknowledged messages lost");
            if n > 0 {
                let log = std::fs::read_to_string(dir.path().join(format!("pod{life}/serve.log")))
                    .unwrap_or_default();
                eprintln!("{log}");
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}
