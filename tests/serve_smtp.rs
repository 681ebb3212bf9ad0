//! `mailsafe serve` as users run it: configured only through Mailpit's `MP_*`
//! environment, fed by swaks, stopped with SIGTERM. Checks that each
//! variable reaches the SMTP server and that shutdown is clean and keeps
//! every acknowledged message.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::free_port;

fn wait_listening(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("mailsafe serve exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("mailsafe serve did not listen on {port}");
}

fn swaks(port: u16, extra: &[&str]) -> (bool, String) {
    let port = port.to_string();
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--from",
            "a@example.com",
        ])
        .args(["--to", "b@example.com"])
        .args(extra)
        .output()
        .expect("swaks runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn mp_environment_configures_smtp_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mail.db");
    let log_path = dir.path().join("serve.log");
    let (smtp, http) = (free_port(), free_port());
    let mut child = common::mailsafe()
        .arg("serve")
        .env("MP_DATABASE", &db)
        .env("MP_SMTP_BIND_ADDR", format!("127.0.0.1:{smtp}"))
        .env("MP_UI_BIND_ADDR", format!("127.0.0.1:{http}"))
        .env("MP_SMTP_AUTH", "alice:wonderland")
        .env("MP_SMTP_AUTH_ALLOW_INSECURE", "true")
        .env("MP_MAX_MESSAGE_SIZE", "1")
        .env("MP_SMTP_MAX_RECIPIENTS", "2")
        .env("MAILSAFE_LOG", "debug")
        // A file, not a pipe read only at the end: a full pipe would block
        // the server's logging, and with it the server.
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_listening(smtp, &mut child);

    let auth = [
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "wonderland",
    ];
    let (ok, out) = swaks(smtp, &[]);
    assert!(
        !ok && out.contains("530 5.7.0 Authentication required"),
        "{out}"
    );
    let (ok, out) = swaks(smtp, &auth);
    assert!(ok, "{out}");
    assert!(
        out.contains("SIZE 1048576"),
        "MP_MAX_MESSAGE_SIZE is in MB: {out}"
    );
    // Too big for one argv string (E2BIG): swaks reads a body given as the
    // name of an existing file from that file.
    let big = dir.path().join("big-body.txt");
    std::fs::write(&big, "x".repeat(1024 * 1024 + 10)).unwrap();
    let mut args = auth.to_vec();
    args.extend(["--body", big.to_str().unwrap()]);
    let (ok, out) = swaks(smtp, &args);
    assert!(
        !ok && out.contains("552 5.3.4"),
        "{}",
        &out[out.len().saturating_sub(2000)..]
    );
    let mut args = auth.to_vec();
    args.extend(["--to", "b@example.com,c@example.com,d@example.com"]);
    let (_, out) = swaks(smtp, &args);
    assert!(out.contains("452 4.5.3"), "{out}");

    stop(&mut child, &log_path);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains("wonderland"),
        "a password reached the log: {log}"
    );

    // Two messages were acknowledged (one plain, one to the two accepted
    // recipients); both are in the file.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM mailbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

/// Stops `child` with SIGTERM and waits (bounded) for it to exit 0.
fn stop(child: &mut Child, log_path: &std::path::Path) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(status.success(), "exit {status}: {log}");
}

/// `GET path` on 127.0.0.1:`port` over plain HTTP/1.0; the whole answer.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Mailpit's value syntax as a Mailpit deployment writes it: `1` for a
/// boolean (clap's own parser refused it), `0` MB for no size limit (it
/// used to be a 0-byte limit), `yes` for the UI setting.
#[test]
fn mailpit_booleans_and_unlimited_size_reach_smtp_and_the_ui() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let (smtp, http) = (free_port(), free_port());
    let mut child = common::mailsafe()
        .arg("serve")
        .env("MP_DATABASE", dir.path().join("mail.db"))
        .env("MP_SMTP_BIND_ADDR", format!("127.0.0.1:{smtp}"))
        .env("MP_UI_BIND_ADDR", format!("127.0.0.1:{http}"))
        .env("MP_SMTP_AUTH_ACCEPT_ANY", "1")
        .env("MP_SMTP_AUTH_ALLOW_INSECURE", "1")
        .env("MP_MAX_MESSAGE_SIZE", "0")
        .env("MP_HIDE_DELETE_ALL_BUTTON", "yes")
        .env("MP_DISABLE_VERSION_CHECK", "true")
        .env("MP_TAGS_USERNAME", "1")
        .env("MP_TAGS_TITLE_CASE", "yes")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_listening(smtp, &mut child);
    wait_listening(http, &mut child);
    let body = dir.path().join("body.txt");
    std::fs::write(&body, "y".repeat(2 * 1024 * 1024)).unwrap();
    let (ok, out) = swaks(
        smtp,
        &[
            "--auth",
            "PLAIN",
            "--auth-user",
            "anyone",
            "--auth-password",
            "anything",
            "--to",
            "alice+signup@example.org",
            "--body",
            body.to_str().unwrap(),
        ],
    );
    let tail = &out[out.len().saturating_sub(1500)..];
    assert!(ok, "{tail}");
    assert!(
        out.contains("SIZE 0"),
        "RFC 1870 no-limit SIZE expected: {}",
        &out[..out.len().min(1500)]
    );
    let webui = http_get(http, "/api/v1/webui");
    assert!(webui.contains("\"HideDeleteAllButton\":true"), "{webui}");
    // Plus-address tag (on by default), Title-cased, and the AUTH user.
    let list = http_get(http, "/api/v1/messages");
    assert!(
        list.contains("\"Signup\"") && list.contains("\"anyone\""),
        "{list}"
    );
    stop(&mut child, &log_path);
}

/// A Mailpit option that is not implemented stops the start, naming it,
/// instead of being ignored.
#[test]
fn an_unimplemented_mailpit_option_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::mailsafe()
        .arg("serve")
        .env("MP_DATABASE", dir.path().join("mail.db"))
        .env("MP_SMTP_BIND_ADDR", "127.0.0.1:0")
        .env("MP_UI_BIND_ADDR", "127.0.0.1:0")
        .env("MP_DEMO_MODE", "true")
        .env("MP_ENABLE_SPAMASSASSIN", "postmark")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("MP_DEMO_MODE") && err.contains("MP_ENABLE_SPAMASSASSIN=postmark"),
        "{err}"
    );
    assert!(
        !dir.path().join("mail.db").exists(),
        "nothing may start: {err}"
    );
}

/// Mailpit's log options: `MP_LOG_FILE` gets the logs (appended, nothing on
/// stderr), `MP_VERBOSE` logs debug lines, `MP_QUIET` errors only; a log
/// file that cannot be opened stops the start naming it; `MP_DISABLE_WAL`
/// with `--replica` is refused (the backup follows the WAL).
#[test]
fn mailpit_log_options_and_disable_wal() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("mailpit.log");
    let stderr_path = dir.path().join("stderr.log");
    let run = |extra: &[(&str, &str)]| {
        let (smtp, http) = (free_port(), free_port());
        let mut cmd = common::mailsafe();
        cmd.arg("serve")
            .env_remove("MAILSAFE_LOG")
            .env("MP_DATABASE", dir.path().join("mail.db"))
            .env("MP_SMTP_BIND_ADDR", format!("127.0.0.1:{smtp}"))
            .env("MP_UI_BIND_ADDR", format!("127.0.0.1:{http}"))
            .env("MP_LOG_FILE", &log_file)
            .env("MP_DISABLE_WAL", "1")
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        wait_listening(smtp, &mut child);
        let (ok, out) = swaks(smtp, &[]);
        assert!(ok, "{out}");
        stop(&mut child, &stderr_path);
        let stderr = std::fs::read_to_string(&stderr_path).unwrap();
        assert_eq!(stderr, "", "logs go to the file only");
        std::fs::read_to_string(&log_file).unwrap()
    };
    let verbose = run(&[("MP_VERBOSE", "true")]);
    assert!(verbose.contains("DEBUG"), "{verbose}");
    assert!(verbose.contains("INFO"), "{verbose}");
    assert!(!verbose.contains('\u{1b}'), "no colour codes in a file");
    let quiet = run(&[("MP_QUIET", "1")]);
    assert_eq!(quiet, verbose, "quiet: appended nothing (errors only)");
    // The rollback journal: no -wal file beside the db.
    let db = rusqlite::Connection::open(dir.path().join("mail.db")).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");

    let missing = dir.path().join("no-such-dir/mailpit.log");
    let out = common::mailsafe()
        .arg("serve")
        .env("MP_DATABASE", dir.path().join("mail.db"))
        .env("MP_LOG_FILE", &missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let out = common::mailsafe()
        .arg("serve")
        .env("MP_DATABASE", dir.path().join("other.db"))
        .env("MP_DISABLE_WAL", "true")
        .args([
            "--replica",
            &format!("file://{}", dir.path().join("r").display()),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("MP_DISABLE_WAL") && err.contains("--replica"),
        "{err}"
    );
    assert!(
        !dir.path().join("other.db").exists(),
        "nothing may start: {err}"
    );
}
