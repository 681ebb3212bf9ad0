//! Mailpit's command-line mail tools against a real `mailsafe serve`:
//! `sendmail` (flags as PHP and cron pass them, recipients from arguments
//! or headers, `-bs` driven by Python's smtplib over a pipe, the binary
//! called as `sendmail`), `ingest` (a maildir-style folder and an mbox) and
//! `dump` (every message back out byte for byte, read-only beside the
//! running catcher). What arrived is read through the catcher's API.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

/// A `mailsafe serve` on free loopback ports; killed on drop.
struct Catcher {
    child: Child,
    smtp: u16,
    http: u16,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Catcher {
    fn start() -> Catcher {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("mail.db");
        let (smtp, http) = (free_port(), free_port());
        let mut child = common::mailsafe()
            .args(["serve", "--max-messages", "0", "--db"])
            .arg(&db)
            .args(["--smtp", &format!("127.0.0.1:{smtp}")])
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "serve exited");
            assert!(Instant::now() < deadline, "serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Catcher {
            child,
            smtp,
            http,
            db,
            _dir: dir,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.smtp)
    }

    /// The stored messages' summaries, newest first.
    async fn messages(&self) -> Vec<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/messages", self.http);
        let v: serde_json::Value = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["messages"].as_array().unwrap().clone()
    }

    async fn raw(&self, id: &str) -> Vec<u8> {
        let url = format!("http://127.0.0.1:{}/api/v1/message/{id}/raw", self.http);
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// The message with `subject`, waiting (bounded) for it.
    async fn by_subject(&self, subject: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(m) = self
                .messages()
                .await
                .into_iter()
                .find(|m| m["Subject"] == subject)
            {
                return m;
            }
            assert!(Instant::now() < deadline, "{subject:?} never arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Catcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addresses(list: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["Address"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// Runs `cmd` with `input` on stdin; returns (exit code, stdout + stderr).
fn run(mut cmd: Command, input: &[u8]) -> (i32, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

const MESSAGE: &[u8] =
    b"From: App <app@example.test>\nTo: Ann <ann@example.test>\nCc: cc@example.test\n\
Bcc: hidden@example.test\nSubject: via sendmail\n\n.leading dot\nbody\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_as_scripts_call_it() {
    let c = Catcher::start();
    // PHP's sendmail_path style: -t -i, sender glued to -f, no recipients
    // (they come from To, Cc and Bcc).
    let mut cmd = common::mailsafe();
    cmd.args([
        "sendmail",
        "-t",
        "-i",
        "-fbounce@example.test",
        "-S",
        &c.addr(),
    ]);
    let (code, out) = run(cmd, MESSAGE);
    assert_eq!(code, 0, "{out}");
    let m = c.by_subject("via sendmail").await;
    assert_eq!(
        addresses(&m["Bcc"]),
        ["hidden@example.test"],
        "the Bcc header's recipient got it"
    );
    let raw = c.raw(m["ID"].as_str().unwrap()).await;
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.ends_with("\r\n\r\n.leading dot\r\nbody\r\n"), "{raw}");

    // Recipients as arguments and the address from the environment, the
    // binary called as `sendmail` (a symlink, as in a Docker image).
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mailsafe"), &link).unwrap();
    let mut cmd = Command::new(&link);
    cmd.env("MP_SENDMAIL_SMTP_ADDR", c.addr())
        .env("MP_SENDMAIL_FROM", "env@example.test")
        .arg("only@example.test");
    let (code, out) = run(cmd, b"Subject: argv recipients\n\nhi\n");
    assert_eq!(code, 0, "{out}");
    let m = c.by_subject("argv recipients").await;
    assert_eq!(addresses(&m["Bcc"]), ["only@example.test"]);

    // Bad input: a clear error and exit 2 (usage); the catcher down: exit 1.
    let mut cmd = common::mailsafe();
    cmd.args(["sendmail", "-Q"]);
    let (code, out) = run(cmd, b"");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("unsupported sendmail flag -Q"), "{out}");
    let mut cmd = common::mailsafe();
    cmd.args(["sendmail", "-S", &c.addr()]);
    let (code, out) = run(cmd, b"Subject: nobody\n\nhi\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no recipients"), "{out}");
    let mut cmd = common::mailsafe();
    cmd.args([
        "sendmail",
        "-S",
        &format!("127.0.0.1:{}", free_port()),
        "a@b.test",
    ]);
    let (code, out) = run(cmd, b"Subject: x\n\nhi\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("sendmail to 127.0.0.1:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_bs_speaks_smtp_on_stdin() {
    let c = Catcher::start();
    // Python's smtplib over the pipe of `sendmail -bs`: every message it
    // accepts is in the catcher before its 250.
    let script = r#"
import smtplib, subprocess, sys
class Pipe(smtplib.SMTP):
    def _get_socket(self, host, port, timeout):
        self.proc = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        class S:
            def __init__(s, p): s.p = p
            def sendall(s, d): s.p.stdin.write(d); s.p.stdin.flush()
            def makefile(s, mode): return s.p.stdout
            def close(s): s.p.stdin.close(); s.p.wait()
        return S(self.proc)
s = Pipe()
s.connect("pipe", 0)
s.ehlo("client")
for i in range(2):
    s.sendmail("py@example.test", ["bs%d@example.test" % i], "Subject: bs %d\r\n\r\nbody %d\r\n" % (i, i))
s.quit()
print("ok")
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            env!("CARGO_BIN_EXE_mailsafe"),
            "sendmail",
            "-bs",
            "-S",
        ])
        .arg(c.addr())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("ok"), "{text}");
    for i in 0..2 {
        let m = c.by_subject(&format!("bs {i}")).await;
        assert_eq!(addresses(&m["Bcc"]), [format!("bs{i}@example.test")]);
    }
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_a_folder_and_an_mbox_then_dump_them_back() {
    let c = Catcher::start();
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("maildir");
    write(
        &maildir.join("cur/1.eml"),
        b"From: a@example.test\nTo: one@example.test\nSubject: file one\n\nfirst\n",
    );
    write(
        &maildir.join("new/2.eml"),
        b"From: b@example.test\nTo: two@example.test\nSubject: file two\n\nsecond\n",
    );
    write(&maildir.join(".hidden"), b"not mail");
    let mbox = dir.path().join("archive.mbox");
    write(
        &mbox,
        b"From x@y Mon Jan  1 00:00:00 2024\nFrom: m@example.test\nTo: m1@example.test\nSubject: mbox one\n\n>From quoted\n\n\
From x@y Mon Jan  1 00:00:01 2024\nFrom: m@example.test\nTo: m2@example.test\nSubject: mbox two\n\nsecond\n",
    );
    let out = common::run_ok(
        common::mailsafe()
            .args(["ingest", "-S", &c.addr()])
            .arg(&maildir)
            .arg(&mbox),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ingested 4 messages"), "{text}");
    for s in ["file one", "file two", "mbox one", "mbox two"] {
        c.by_subject(s).await;
    }
    let m = c.by_subject("mbox one").await;
    let raw = String::from_utf8(c.raw(m["ID"].as_str().unwrap()).await).unwrap();
    assert!(
        raw.contains("\r\n\r\nFrom quoted\r\n"),
        "mboxrd quoting undone: {raw}"
    );
    assert!(
        !raw.contains("Mon Jan  1"),
        "the mbox From line is not part of it: {raw}"
    );

    // dump, while the catcher runs: every message, byte for byte.
    let out_dir = dir.path().join("dump");
    let out = common::run_ok(common::mailsafe().arg("dump").arg(&c.db).arg(&out_dir));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dumped 4 messages"));
    for m in c.messages().await {
        let id = m["ID"].as_str().unwrap();
        let file = std::fs::read(out_dir.join(format!("{id}.eml"))).unwrap();
        assert_eq!(file, c.raw(id).await, "{id}");
    }
    // A path that is not a catcher database: a clear error naming it.
    let bogus = dir.path().join("bogus.db");
    rusqlite::Connection::open(&bogus)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    let out = common::mailsafe()
        .arg("dump")
        .arg(&bogus)
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bogus.db") && err.contains("not a catcher database"),
        "{err}"
    );
    // A missing file is not created.
    let missing = dir.path().join("missing.db");
    let out = common::mailsafe()
        .arg("dump")
        .arg(&missing)
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!missing.exists(), "dump never creates a database");
}
