//! The spam check against a real SpamAssassin: Debian's `spamd` (installed
//! by scripts/setup.sh) started on 127.0.0.1 by this test, messages sent
//! over SMTP (smtplib), `/api/v1/message/{ID}/sa-check` answered in
//! Mailpit's `SpamAssassinResponse` shape; a spamd that is down is reported
//! in `Error`, naming its address.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailsafe_catcher::checks::spam::SpamAssassin;
use serde_json::{Value, json};
use support::*;

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A spamd of this test's own, stopped (SIGTERM, its children with it) on
/// drop.
struct Spamd {
    child: Child,
    addr: String,
    _home: tempfile::TempDir,
}

impl Spamd {
    /// Starts spamd on a free loopback port and waits (at most 180 s: it
    /// compiles its rule set first, slow on a loaded machine) until it
    /// answers PING.
    fn start() -> Spamd {
        let home = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let bin = ["/usr/sbin/spamd", "/usr/bin/spamd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("spamd");
        let child = Command::new(bin)
            .args([
                &format!("--listen={addr}"),
                "--allowed-ips=127.0.0.1",
                "--min-children=1",
                "--max-children=1",
                "--nouser-config",
                "--syslog=stderr",
                "--username=nobody",
                &format!("--pidfile={}", home.path().join("spamd.pid").display()),
                &format!("--helper-home-dir={}", home.path().display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spamd runs (scripts/setup.sh installs Debian's spamd)");
        let mut spamd = Spamd {
            child,
            addr,
            _home: home,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if spamd.ping() {
                return spamd;
            }
            if let Ok(Some(status)) = spamd.child.try_wait() {
                panic!("spamd exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "spamd did not answer PING within 180 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether spamd answers `PING` with `PONG`.
    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"PING SPAMC/1.5\r\n\r\n").is_err() {
            return false;
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("PONG")
    }
}

impl Drop for Spamd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GTUBE: the string every SpamAssassin scores as spam (1000 points).
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

async fn sa_check(server: &Server, id: &str) -> (u16, Value) {
    let res = http_client()
        .get(format!(
            "http://{}/api/v1/message/{id}/sa-check",
            server.http
        ))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn newest_id(server: &Server, subject: &str) -> String {
    let found = json_of(http_client().get(format!(
        "http://{}/api/v1/search?query=subject:{subject}",
        server.http
    )))
    .await;
    found["messages"][0]["ID"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spamd_scores_messages_in_mailpits_shape() {
    let spamd = tokio::task::spawn_blocking(Spamd::start).await.unwrap();
    let addr = spamd.addr.clone();
    let mut server = Server::start(move |c, _| {
        c.spamassassin = Some(SpamAssassin { addr });
    })
    .await;
    let out = send(
        &server,
        &[
            &format!("b@example.com|From: a@example.com\\nTo: b@example.com\\nSubject: gtube\\n\\n{GTUBE}\\n"),
            "b@example.com|From: a@example.com\\nTo: b@example.com\\nSubject: plain\\nDate: Sun, 6 Dec 2026 09:00:00 +0000\\nMessage-ID: <plain@example.com>\\n\\nLunch at noon?\\n",
        ],
    )
    .await;
    assert_eq!(out, vec![json!("ok"), json!("ok")]);

    let (status, v) = sa_check(&server, &newest_id(&server, "gtube").await).await;
    assert_eq!(status, 200, "{v}");
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["Error", "IsSpam", "Rules", "Score"], "{v}");
    assert_eq!(v["Error"], "", "{v}");
    assert_eq!(v["IsSpam"], true, "{v}");
    assert!(v["Score"].as_f64().unwrap() >= 1000.0, "{v}");
    let gtube = v["Rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Name"] == "GTUBE")
        .unwrap_or_else(|| panic!("no GTUBE rule: {v}"));
    assert_eq!(gtube["Score"], 1000.0);
    assert!(
        gtube["Description"]
            .as_str()
            .unwrap()
            .contains("Generic Test"),
        "{v}"
    );

    let (status, v) = sa_check(&server, &newest_id(&server, "plain").await).await;
    assert_eq!(status, 200);
    assert_eq!(v["IsSpam"], false, "{v}");
    assert!(v["Score"].as_f64().unwrap() < 5.0, "{v}");
    // The UI learns that the check exists.
    let webui = json_of(http_client().get(format!("http://{}/api/v1/webui", server.http))).await;
    assert_eq!(webui["SpamAssassin"], true);
    server.stop().await;
    drop(spamd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spamd_that_is_down_is_reported_and_no_spamd_means_no_route() {
    let down = format!("127.0.0.1:{}", free_port());
    let d = down.clone();
    let mut server = Server::start(move |c, _| {
        c.spamassassin = Some(SpamAssassin { addr: d });
    })
    .await;
    send(&server, &["b@example.com|Subject: any\\n\\nhello\\n"]).await;
    let (status, v) = sa_check(&server, "latest").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["IsSpam"], false);
    let error = v["Error"].as_str().unwrap();
    assert!(
        error.contains(&down) && error.contains("refused"),
        "{error}"
    );
    server.stop().await;

    let mut plain = Server::start(|_, _| {}).await;
    send(&plain, &["b@example.com|Subject: any\\n\\nhello\\n"]).await;
    assert_eq!(sa_check(&plain, "latest").await.0, 404);
    plain.stop().await;
}
