//! `mailsafe serve --replica` against a real S3 (SeaweedFS) and a real SMTP
//! client (Python's smtplib): mail acknowledged right before SIGTERM is in
//! the replica, and a fresh pod (no db) restores it on start.

mod common;
mod watch_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use watch_support::free_port;

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
