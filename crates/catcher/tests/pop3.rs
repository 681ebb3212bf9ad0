//! The POP3 server (`MP_POP3_*`) against real clients on 127.0.0.1: Python's
//! `poplib` (plain, STLS and implicit TLS) and Debian's `fetchmail`, each
//! fetching every message byte for byte, with deletions applied at QUIT
//! only; and hostile clients as for SMTP (megabyte lines, slow loris, idle
//! connections past the cap, password guessing).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use mailsafe_catcher::auth::Credentials;
use mailsafe_catcher::storage::NewMessage;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const PASSWORD: &str = "pop secret";

/// Messages to fetch: a line starting with a dot (stuffed on the wire), a
/// lone dot line, 8-bit text and an attachment-sized body; CRLF throughout,
/// as SMTP delivers them.
fn messages() -> Vec<Vec<u8>> {
    let big: String = (0..4000).map(|i| format!("line {i:05} .x\r\n")).collect();
    vec![
        b"From: a@x\r\nTo: b@y\r\nSubject: first\r\n\r\nhello\r\n.leading dot\r\n.\r\n..\r\nend\r\n"
            .to_vec(),
        "From: a@x\r\nSubject: =?utf-8?q?zweite?=\r\n\r\nGr\u{fc}\u{df}e, 8-bit \u{2713}\r\n"
            .as_bytes()
            .to_vec(),
        format!("From: a@x\r\nSubject: third\r\n\r\n{big}").into_bytes(),
    ]
}

/// A catcher with POP3 user `pop` and the [`messages`] stored (oldest
/// first); `tune` adjusts the configuration further.
async fn pop3_server(tune: impl FnOnce(&mut mailsafe_catcher::Config, &Path)) -> Server {
    let server = Server::start(|c, dir| {
        c.pop3_bind = "127.0.0.1:0".into();
        c.pop3_auth = Some(Arc::new(
            Credentials::from_file(&{
                let f = dir.join("pop3.htpasswd");
                std::fs::write(&f, format!("pop:{PASSWORD}\n")).unwrap();
                f
            })
            .unwrap(),
        ));
        tune(c, dir);
    })
    .await;
    for raw in messages() {
        server
            .store
            .insert(NewMessage {
                raw,
                mail_from: "a@x".into(),
                rcpt_to: vec!["b@y".into()],
                username: None,
            })
            .await
            .unwrap();
    }
    server
}

const POPLIB_SCRIPT: &str = r#"
import base64, json, poplib, ssl, sys
port, mode, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cafile = sys.argv[4] if len(sys.argv) > 4 else None
if mode == "ssl":
    p = poplib.POP3_SSL("127.0.0.1", port, context=ssl.create_default_context(cafile=cafile), timeout=20)
else:
    p = poplib.POP3("127.0.0.1", port, timeout=20)
out = {"welcome": p.getwelcome().decode(), "caps": sorted(p.capa())}
if mode == "stls":
    p.stls(context=ssl.create_default_context(cafile=cafile))
    out["caps_tls"] = sorted(p.capa())
p.user("pop")
p.pass_(password)
out["stat"] = list(p.stat())
n = out["stat"][0]
out["list"] = [l.decode() for l in p.list()[1]]
out["uidl"] = [l.decode().split()[1] for l in p.uidl()[1]]
out["retr"] = [base64.b64encode(b"\r\n".join(p.retr(i)[1]) + b"\r\n").decode() for i in range(1, n + 1)]
out["top"] = base64.b64encode(b"\r\n".join(p.top(n, 2)[1]) + b"\r\n").decode()
p.dele(1)
p.dele(2)
out["stat_marked"] = list(p.stat())
p.rset()
out["stat_reset"] = list(p.stat())
p.dele(1)
if mode == "drop":
    p.sock.close()
else:
    out["quit"] = p.quit().decode()
print(json.dumps(out))
"#;

/// Runs [`POPLIB_SCRIPT`] and returns its findings.
async fn poplib(port: u16, mode: &str, cafile: Option<&Path>) -> serde_json::Value {
    let mut args = vec![mode.to_string(), PASSWORD.to_string()];
    args.extend(cafile.map(|c| c.display().to_string()));
    serde_json::from_str(&python_async(POPLIB_SCRIPT, port, args).await).unwrap()
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// Checks what [`POPLIB_SCRIPT`] saw against the stored messages: the
/// listing (newest first), every message byte for byte, and TOP.
fn check_fetch(out: &serde_json::Value, stored: &[(String, Vec<u8>)]) {
    let n = stored.len();
    let total: usize = stored.iter().map(|(_, raw)| raw.len()).sum();
    assert_eq!(out["stat"], serde_json::json!([n, total]));
    let list: Vec<String> = stored
        .iter()
        .enumerate()
        .map(|(i, (_, raw))| format!("{} {}", i + 1, raw.len()))
        .collect();
    assert_eq!(out["list"], serde_json::json!(list));
    let uidl: Vec<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(out["uidl"], serde_json::json!(uidl));
    for (i, (_, raw)) in stored.iter().enumerate() {
        assert!(
            b64(&out["retr"][i]) == *raw,
            "message {} differs:\n{}",
            i + 1,
            String::from_utf8_lossy(&b64(&out["retr"][i]))
        );
    }
    // TOP n 2: the header, the blank line and two body lines.
    let last = &stored[n - 1].1;
    let head_end = memfind(last, b"\r\n\r\n").unwrap() + 4;
    let two_lines = head_end + memfind(&last[head_end..], b"\r\n").unwrap() + 2;
    let two_lines = two_lines + memfind(&last[two_lines..], b"\r\n").unwrap() + 2;
    assert_eq!(b64(&out["top"]), last[..two_lines]);
    let (first, second) = (stored[0].1.len(), stored[1].1.len());
    assert_eq!(
        out["stat_marked"],
        serde_json::json!([n - 2, total - first - second])
    );
    assert_eq!(out["stat_reset"], serde_json::json!([n, total]));
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The stored messages as POP3 lists them: newest first, with their IDs.
async fn stored(server: &Server) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for id in ids(&server.store).await {
        let raw = server.store.raw(&id).await.unwrap();
        out.push((id, raw));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poplib_fetches_every_message_exactly_and_deletes_at_quit_only() {
    let mut server = pop3_server(|_, _| {}).await;
    let port = server.pop3.expect("POP3 runs").port();
    let before = stored(&server).await;
    assert_eq!(before.len(), 3);
    // The store adds a Bcc header for envelope-only recipients, as Mailpit.
    for ((_, stored), sent) in before.iter().rev().zip(messages()) {
        assert!(stored.ends_with(&sent));
    }

    // A client that marks message 1 and drops the connection deletes
    // nothing.
    let out = poplib(port, "drop", None).await;
    check_fetch(&out, &before);
    assert!(
        out["welcome"].as_str().unwrap().starts_with("+OK mailsafe"),
        "{out}"
    );
    let caps = out["caps"].as_array().unwrap();
    for cap in ["TOP", "UIDL", "USER", "RESP-CODES"] {
        assert!(caps.contains(&cap.into()), "{out}");
    }
    assert!(!caps.contains(&"STLS".into()), "no certificate, no STLS");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline && server.count().await == 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.count().await, 3);

    // The same with QUIT deletes the newest message, and only it.
    let out = poplib(port, "plain", None).await;
    check_fetch(&out, &before);
    assert_eq!(out["quit"], "+OK goodbye (1 messages deleted)");
    let after = stored(&server).await;
    assert_eq!(after, before[1..]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poplib_over_stls_and_implicit_tls() {
    for stls in [true, false] {
        let mut server = pop3_server(|c, dir| {
            let (cert, key) = self_signed(dir);
            c.pop3_tls_cert = Some(cert);
            c.pop3_tls_key = Some(key);
            c.pop3_stls = stls;
        })
        .await;
        let port = server.pop3.unwrap().port();
        let cafile = server.db.parent().unwrap().join("cert.pem");
        let before = stored(&server).await;
        let mode = if stls { "stls" } else { "ssl" };
        let out = poplib(port, mode, Some(&cafile)).await;
        check_fetch(&out, &before);
        let caps = out["caps"].as_array().unwrap();
        assert_eq!(
            caps.contains(&"STLS".into()),
            stls,
            "{mode}: {}",
            out["caps"]
        );
        if stls {
            assert!(!out["caps_tls"].as_array().unwrap().contains(&"STLS".into()));
        }
        assert_eq!(stored(&server).await, before[1..], "{mode}");

        let mut raw = TcpStream::connect(server.pop3.unwrap()).await.unwrap();
        let mut first = [0u8; 3];
        let got = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut first)).await;
        if stls {
            // Before STLS, sign-in works in clear too (as in Mailpit), but
            // STLS after it is refused.
            let mut c = Pop::from(raw).await;
            assert_eq!(c.cmd("USER pop").await, "+OK send PASS");
            assert!(c.cmd(&format!("PASS {PASSWORD}")).await.starts_with("+OK"));
            assert_eq!(c.cmd("STLS").await, "-ERR command not valid in this state");
        } else {
            // A plain-text client gets no POP3 greeting from a TLS port.
            assert!(!matches!(got, Ok(Ok(3)) if &first == b"+OK"));
        }
        server.stop().await;
    }
}

/// A line-oriented raw POP3 client.
struct Pop {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Pop {
    async fn connect(addr: std::net::SocketAddr) -> Pop {
        Pop::from(TcpStream::connect(addr).await.unwrap()).await
    }

    /// Wraps a connection whose first 3 bytes (`+OK`) were already read.
    async fn from(stream: TcpStream) -> Pop {
        let (r, w) = stream.into_split();
        let mut pop = Pop {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = pop.line().await;
        assert!(
            greeting.contains("POP3 server ready"),
            "greeting: {greeting}"
        );
        pop
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(n > 0, "connection closed");
        line.trim_end().to_string()
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.line().await
    }

    async fn rest(&mut self) -> String {
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.reader.read_to_string(&mut s))
            .await
            .expect("closed in time")
            .unwrap();
        s
    }
}

/// fetchmail (Debian) fetches every message into a file per message through
/// an MDA, keeping CRLF line ends and adding no header of its own; then,
/// without `--keep`, it deletes them at QUIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchmail_fetches_every_message_byte_exact() {
    let mut server = pop3_server(|_, _| {}).await;
    let port = server.pop3.unwrap().port();
    let before = stored(&server).await;
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let rc = work.path().join("fetchmailrc");
    // Each message goes to its own file; the MDA counts them.
    let mda = format!(
        "sh -c 'n=$(ls {0} | wc -l); cat > {0}/msg$n'",
        out_dir.display()
    );
    std::fs::write(
        &rc,
        format!(
            "set no syslog\n\
             set invisible\n\
             poll 127.0.0.1 service {port} protocol pop3 uidl auth password\n\
             \tuser \"pop\" password \"{PASSWORD}\" is \"tester\" here\n\
             \tsslproto ''\n\
             \tmda \"{mda}\"\n\
             \tno rewrite no stripcr\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let home = work.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("fetchmail")
            .env("HOME", &home)
            .env("FETCHMAILHOME", &home)
            .args(["-f", rc.to_str().unwrap(), "--nosyslog", "-v"])
            .output()
            .expect("fetchmail runs")
    })
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "fetchmail failed:\n{log}");
    let mut got = Vec::new();
    for i in 0..before.len() {
        got.push(std::fs::read(out_dir.join(format!("msg{i}"))).unwrap());
    }
    let want: Vec<Vec<u8>> = before.iter().map(|(_, raw)| raw.clone()).collect();
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g == w,
            "fetchmail got:\n{}\nstored:\n{}\nlog:\n{log}",
            String::from_utf8_lossy(g),
            String::from_utf8_lossy(w)
        );
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(
        server.count().await,
        0,
        "fetched messages are deleted:\n{log}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_long_lines_slow_loris_guessing_and_the_cap() {
    let mut server = pop3_server(|c, _| {
        c.pop3_idle_timeout = Duration::from_millis(800);
        c.pop3_max_connections = 3;
    })
    .await;
    let addr = server.pop3.unwrap();
    let before = rss_kib();

    // 8 MiB without a newline, then a newline: one error, then normal
    // service on the same connection.
    let mut c = Pop::connect(addr).await;
    let chunk = vec![b'A'; 1024 * 1024];
    for _ in 0..8 {
        c.writer.write_all(&chunk).await.unwrap();
    }
    assert_eq!(c.cmd("\0\0").await, "-ERR line too long");
    assert_eq!(c.cmd("USER pop").await, "+OK send PASS");
    // Three wrong passwords close the connection.
    assert_eq!(
        c.cmd("PASS wrong1").await,
        "-ERR [AUTH] invalid user name or password"
    );
    c.cmd("USER pop").await;
    c.cmd("PASS wrong2").await;
    c.cmd("USER pop").await;
    assert_eq!(
        c.cmd("PASS wrong3").await,
        "-ERR [AUTH] too many failed sign-ins, closing connection"
    );
    assert_eq!(c.rest().await, "");
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 32, "memory grew by {grown_mib} MiB");

    // Idle and slow-loris clients are dropped after the idle timeout; the
    // slow one never completes a line.
    let mut idle = Pop::connect(addr).await;
    let mut loris = Pop::connect(addr).await;
    let mut signed_in = Pop::connect(addr).await;
    // A fourth connection is over the cap.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let mut refusal = String::new();
    tokio::time::timeout(Duration::from_secs(5), fourth.read_to_string(&mut refusal))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        refusal,
        "-ERR [SYS/TEMP] too many connections, try again later\r\n"
    );
    signed_in.cmd("USER pop").await;
    signed_in.cmd(&format!("PASS {PASSWORD}")).await;
    assert_eq!(signed_in.cmd("DELE 1").await, "+OK message 1 deleted");
    let trickle = tokio::spawn(async move {
        // 20 s of trickle: a timer reset by every byte would keep it open
        // that long; the bound below leaves a loaded machine 14 s of slack.
        for _ in 0..100 {
            if loris.writer.write_all(b"N").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        loris.rest().await
    });
    let started = std::time::Instant::now();
    let timed_out = "-ERR [SYS/TEMP] idle timeout, closing connection\r\n";
    assert_eq!(idle.rest().await, timed_out);
    assert_eq!(trickle.await.unwrap(), timed_out);
    // The signed-in client timed out too: its DELE is not applied.
    assert_eq!(signed_in.rest().await, timed_out);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(server.count().await, 3);

    // Slots are free again.
    let mut c = Pop::connect(addr).await;
    assert_eq!(c.cmd("QUIT").await, "+OK goodbye");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_is_off_without_users_and_shutdown_says_goodbye() {
    let mut server = Server::start(|c, _| c.pop3_bind = "127.0.0.1:0".into()).await;
    assert_eq!(server.pop3, None, "as in Mailpit, no users means no POP3");
    server.stop().await;

    let mut server = pop3_server(|_, _| {}).await;
    let mut c = Pop::connect(server.pop3.unwrap()).await;
    c.cmd("USER pop").await;
    c.cmd(&format!("PASS {PASSWORD}")).await;
    assert_eq!(c.cmd("DELE 1").await, "+OK message 1 deleted");
    let (stop, task) = (server.stop.take().unwrap(), server.task.take().unwrap());
    stop.send(()).unwrap();
    assert_eq!(
        c.rest().await,
        "-ERR [SYS/TEMP] server shutting down, try again later\r\n"
    );
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Reopen the database: the marked message was not deleted.
    let store = mailsafe_catcher::storage::Store::open(
        &server.db,
        mailsafe_catcher::storage::StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(store.counts().await.unwrap().0, 3);
}
