//! Credentials and keys never reach stdout, stderr or `--json` output: every
//! backup command (succeeding and failing: wrong credentials, an unreachable
//! endpoint, a bad or wrong encryption key) and `serve` (with UI basic auth
//! and SMTP AUTH in use) run with recognisable secret values, at the default
//! log level and with `MAILSAFE_LOG` / `RUST_LOG` at `debug` and `trace`
//! (where the AWS SDK would print request headers), and no output contains
//! any of them, in plain text or in the base64 forms they travel in.

mod common;
mod restore_support;
mod watch_support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use restore_support::{create_db, insert_rows, path};

const FAKE_SECRET: &str = "FAKESECRETleakcanary93ad7cQ";
const SESSION_TOKEN: &str = "SESSIONTOKENleakcanary6b1f0eZ";
/// 32 key bytes, recognisable in hex and base64.
const KEY: [u8; 32] = *b"KEYleakcanary-0123456789abcdefgh";
const UI_USER: &str = "uiuser";
const UI_PASS: &str = "UIPASSleakcanary41d2";
const SMTP_USER: &str = "smtpuser";
const SMTP_PASS: &str = "SMTPPASSleakcanary77e0";

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Every form a secret could leak in.
fn secrets(s3: &common::S3) -> Vec<String> {
    vec![
        s3.server.secret_key.clone(),
        FAKE_SECRET.into(),
        SESSION_TOKEN.into(),
        String::from_utf8(KEY.to_vec()).unwrap(),
        hex::encode(KEY),
        b64(&KEY),
        UI_PASS.into(),
        SMTP_PASS.into(),
        // HTTP basic auth header and SMTP AUTH PLAIN / LOGIN payloads.
        b64(format!("{UI_USER}:{UI_PASS}").as_bytes()),
        b64(format!("\0{SMTP_USER}\0{SMTP_PASS}").as_bytes()),
        b64(SMTP_PASS.as_bytes()),
    ]
}

fn assert_clean(s3: &common::S3, what: &str, text: &str) {
    for s in secrets(s3) {
        assert!(
            !text.contains(&s),
            "{what}: output contains the secret {s:?}:\n{text}"
        );
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `mailsafe` against `s3` at log level `level` (`None`: the default).
fn cmd(s3: &common::S3, level: Option<&str>) -> Command {
    let mut c = s3.mailsafe();
    // Failing requests are retried; two attempts keep the failing runs short.
    c.env("AWS_MAX_ATTEMPTS", "2");
    if let Some(l) = level {
        c.env("MAILSAFE_LOG", l).env("RUST_LOG", l);
    }
    c
}

/// Runs one command, checks its exit code and that its output is clean.
fn check(s3: &common::S3, mut c: Command, what: &str, code: i32) -> String {
    let out = c.output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(code), "{what}:\n{t}");
    assert_clean(s3, what, &t);
    t
}

#[test]
fn backup_commands_never_print_credentials_or_keys() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db = path(dir.path(), "src.db");
    let conn = create_db(&db, 4096, "wal");
    insert_rows(&conn, 50, 200);
    let db_arg = db.to_str().unwrap().to_string();
    let key_file = path(dir.path(), "backup.key");
    std::fs::write(&key_file, KEY).unwrap();
    let kf = key_file.to_str().unwrap().to_string();
    let wrong_key = path(dir.path(), "wrong.key");
    std::fs::write(&wrong_key, [7u8; 32]).unwrap();
    let bad_key = path(dir.path(), "bad.key");
    std::fs::write(&bad_key, format!("{FAKE_SECRET}-not-32-bytes")).unwrap();
    let dead = format!("http://127.0.0.1:{}", common::free_port());

    for (round, level) in [None, Some("debug"), Some("trace")].into_iter().enumerate() {
        let url = s3.url(&format!("r{round}"));
        let u = url.as_str();
        let lv = level.unwrap_or("default");
        conn.execute("INSERT INTO mail(body) VALUES ('x')", [])
            .unwrap();

        // Succeeding commands, the key given as a file and in the env.
        let mut c = cmd(&s3, level);
        c.args(["snapshot", "--json", "--db", &db_arg, "--replica", u])
            .env("MAILSAFE_ENCRYPTION_KEY", hex::encode(KEY));
        let t = check(&s3, c, &format!("snapshot ({lv})"), 0);
        if level == Some("trace") {
            // The check is only meaningful if verbose output is on (our
            // own code and the SDK log at DEBUG; foreign TRACE is cut).
            assert!(t.contains("DEBUG"), "no debug output:\n{t}");
        }
        for args in [
            vec!["snapshots", "--json", "--replica", u],
            vec!["verify", "--json", "--all", "--replica", u],
            vec!["prune", "--json", "--keep-last", "1", "--replica", u],
        ] {
            let mut c = cmd(&s3, level);
            c.args(&args).args(["--encryption-key-file", &kf]);
            check(&s3, c, &format!("{args:?} ({lv})"), 0);
        }
        let target = path(dir.path(), &format!("restored{round}.db"));
        let mut c = cmd(&s3, level);
        c.args(["restore", "--db", target.to_str().unwrap(), "--replica", u])
            .env("MAILSAFE_ENCRYPTION_KEY", b64(&KEY));
        check(&s3, c, &format!("restore ({lv})"), 0);

        // Wrong credentials (with a session token), an unreachable
        // endpoint, a wrong key and a malformed key.
        let mut c = cmd(&s3, level);
        c.args(["snapshot", "--db", &db_arg, "--replica", u])
            .args(["--encryption-key-file", &kf])
            .env("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN);
        check(&s3, c, &format!("snapshot, wrong credentials ({lv})"), 1);
        let mut c = cmd(&s3, level);
        c.args(["restore", "--db", target.to_str().unwrap(), "--force"])
            .args(["--replica", u, "--encryption-key-file", &kf])
            .env("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN);
        check(&s3, c, &format!("restore, wrong credentials ({lv})"), 1);
        let mut c = cmd(&s3, level);
        c.args(["snapshot", "--db", &db_arg, "--replica", u])
            .args(["--endpoint", &dead])
            .env("MAILSAFE_ENCRYPTION_KEY", hex::encode(KEY))
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN);
        check(&s3, c, &format!("snapshot, unreachable ({lv})"), 1);
        let mut c = cmd(&s3, level);
        c.args(["verify", "--replica", u])
            .args(["--encryption-key-file", wrong_key.to_str().unwrap()]);
        check(&s3, c, &format!("verify, wrong key ({lv})"), 4);
        let mut c = cmd(&s3, level);
        c.args(["verify", "--replica", u])
            .args(["--encryption-key-file", bad_key.to_str().unwrap()]);
        check(&s3, c, &format!("verify, malformed key file ({lv})"), 2);
        let mut c = cmd(&s3, level);
        c.args(["snapshot", "--db", &db_arg, "--replica", u]).env(
            "MAILSAFE_ENCRYPTION_KEY",
            format!("{SESSION_TOKEN}{FAKE_SECRET}"),
        );
        check(&s3, c, &format!("snapshot, malformed key ({lv})"), 2);
    }
}

/// A long-running command (watch or serve), stopped with SIGTERM after
/// `work` ran; returns its whole output.
fn run_then_term(mut c: Command, log: &std::path::Path, work: impl FnOnce()) -> String {
    let mut child = c
        .stdout(Stdio::from(
            std::fs::File::create(log.with_extension("out")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    work();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
    format!(
        "{}\n{}",
        std::fs::read_to_string(log.with_extension("out")).unwrap_or_default(),
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

fn wait_port(port: u16, log: &std::path::Path) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "port {port} never opened:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn watch_and_serve_never_print_credentials_or_passwords() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db = path(dir.path(), "watched.db");
    let conn = create_db(&db, 4096, "wal");
    insert_rows(&conn, 20, 100);

    for level in [None, Some("trace")] {
        let lv = level.unwrap_or("default");
        // watch: a working replica, then one with wrong credentials.
        for (name, secret) in [("ok", None), ("denied", Some(FAKE_SECRET))] {
            let mut c = cmd(&s3, level);
            c.args(["watch", "--db", db.to_str().unwrap()])
                .args(["--replica", &s3.url(&format!("w-{lv}-{name}"))])
                .env("MAILSAFE_ENCRYPTION_KEY", hex::encode(KEY));
            if let Some(s) = secret {
                // SeaweedFS refuses a session token it did not issue, so
                // only the failing run carries one.
                c.env("AWS_SECRET_ACCESS_KEY", s)
                    .env("AWS_SESSION_TOKEN", SESSION_TOKEN);
            }
            let log = path(dir.path(), &format!("watch-{lv}-{name}.log"));
            let t = run_then_term(c, &log, || {
                for _ in 0..3 {
                    conn.execute("INSERT INTO mail(body) VALUES ('y')", [])
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(700));
                }
            });
            assert_clean(&s3, &format!("watch {name} ({lv})"), &t);
        }

        // serve with UI basic auth, SMTP AUTH and an encrypted replica; a
        // client authenticates (right and wrong) on both.
        for (name, endpoint) in [
            ("ok", None),
            (
                "unreachable",
                Some(format!("http://127.0.0.1:{}", common::free_port())),
            ),
        ] {
            let (smtp, http) = (common::free_port(), common::free_port());
            let mut c = cmd(&s3, level);
            c.args(["serve", "--db"])
                .arg(path(dir.path(), &format!("serve-{lv}-{name}.db")))
                .args(["--smtp", &format!("127.0.0.1:{smtp}")])
                .args(["--listen", &format!("127.0.0.1:{http}")])
                .args(["--replica", &s3.url(&format!("s-{lv}-{name}"))])
                .env("MP_UI_AUTH", format!("{UI_USER}:{UI_PASS}"))
                .env("MP_SMTP_AUTH", format!("{SMTP_USER}:{SMTP_PASS}"))
                .env("MP_SMTP_AUTH_ALLOW_INSECURE", "true")
                .env("MAILSAFE_ENCRYPTION_KEY", b64(&KEY));
            if let Some(e) = &endpoint {
                c.args(["--endpoint", e])
                    .env("AWS_SESSION_TOKEN", SESSION_TOKEN);
            }
            let log = path(dir.path(), &format!("serve-{lv}-{name}.log"));
            let t = run_then_term(c, &log, || {
                if endpoint.is_some() {
                    // Restore-on-start fails; give it the time to say so.
                    std::thread::sleep(Duration::from_secs(3));
                    return;
                }
                wait_port(smtp, &log);
                smtp_auth(smtp);
                for pass in [UI_PASS, "wrong"] {
                    let script = format!(
                        "import base64, urllib.request, urllib.error\n\
                         r = urllib.request.Request('http://127.0.0.1:{http}/api/v1/messages')\n\
                         r.add_header('Authorization', 'Basic ' + base64.b64encode(b'{UI_USER}:{pass}').decode())\n\
                         try:\n\
                         \x20   urllib.request.urlopen(r, timeout=10).read()\n\
                         except urllib.error.HTTPError as e:\n\
                         \x20   assert e.code == 401, e.code\n"
                    );
                    let st = Command::new("python3")
                        .args(["-c", &script])
                        .status()
                        .unwrap();
                    assert!(st.success(), "HTTP client failed");
                }
            });
            assert_clean(&s3, &format!("serve {name} ({lv})"), &t);
        }
    }
}

/// SMTP AUTH PLAIN (right), AUTH LOGIN (wrong), and one message.
fn smtp_auth(port: u16) {
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('127.0.0.1', {port}, timeout=30)\n\
         s.ehlo()\n\
         try:\n\
         \x20   s.login('{SMTP_USER}', 'x{SMTP_PASS}x')\n\
         except smtplib.SMTPAuthenticationError:\n\
         \x20   pass\n\
         s.close()\n\
         s = smtplib.SMTP('127.0.0.1', {port}, timeout=30)\n\
         s.login('{SMTP_USER}', '{SMTP_PASS}')\n\
         s.sendmail('a@example.test', ['b@example.test'], 'Subject: hi\\r\\n\\r\\nbody\\r\\n')\n\
         s.quit()\n"
    );
    let ok = Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "smtplib client failed");
}
