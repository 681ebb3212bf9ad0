//! Relay, release and forwarding through a real MTA: Debian's Postfix in a
//! throwaway configuration on 127.0.0.1 (its own config, queue and log in a
//! temporary directory; STARTTLS with a self-signed certificate; Cyrus SASL
//! from a sasldb with PLAIN, LOGIN and CRAM-MD5; relaying only for
//! authenticated clients). Postfix delivers what it accepts to a second
//! catcher, whose store shows what arrived; Postfix's own log shows the
//! envelope it was given. `relay.rs` covers the same paths against a catcher
//! as the relay server; this file proves our SMTP client speaks to the MTA
//! teams actually relay through.
//!
//! Needs root (Postfix's master starts as root and drops to the `postfix`
//! user), `postfix` and `saslpasswd2` (scripts/setup.sh installs both).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mailsafe_catcher::relay::{ForwardConfig, RelayConfig, Settings};
use mailsafe_catcher::storage::NewMessage;
use support::*;

/// The relay user's password in Postfix's sasldb.
const PASSWORD: &str = "pf-Secret-42";

/// A Postfix instance that relays for authenticated clients to
/// `127.0.0.1:next_hop` and refuses `refused@dest.test`. Stopped on drop.
struct Postfix {
    dir: tempfile::TempDir,
    port: u16,
}

impl Postfix {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    fn start(next_hop: u16) -> Postfix {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Postfix's daemons run as `postfix` and must reach the queue.
        chmod(root, 0o755);
        let conf = root.join("conf");
        std::fs::create_dir_all(conf.join("sasl")).unwrap();
        std::fs::create_dir_all(root.join("queue")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        chown_postfix(&root.join("data"));
        let (cert, key) = self_signed(root);
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = root.display();
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {r}/queue
data_directory = {r}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = test
myorigin = postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.2/32
relayhost = [127.0.0.1]:{next_hop}
smtp_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = {r}/maillog
maillog_file_prefixes = {r}
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
smtpd_sasl_local_domain = postfix.test
smtpd_sasl_authenticated_header = yes
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = check_recipient_access inline:{{ {{refused@dest.test=REJECT no such user here}} }}
",
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        // Debian's Postfix reads Cyrus's application config from
        // $config_directory/sasl (cyrus_sasl_config_path is not consulted).
        let sasldb = root.join("sasldb2");
        std::fs::write(
            conf.join("sasl/smtpd.conf"),
            format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN CRAM-MD5\nsasldb_path: {}\n",
                sasldb.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("saslpasswd2")
            .args(["-p", "-c", "-u", "postfix.test", "-f"])
            .arg(&sasldb)
            .arg("relay")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("saslpasswd2 (Debian sasl2-bin; scripts/setup.sh installs it)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(PASSWORD.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "saslpasswd2 failed");
        chown_postfix(&sasldb);
        // Debian's master.cf with smtpd on our port and no chroot (a chroot
        // would need copies of the resolver and SASL files inside the queue).
        let master = std::fs::read_to_string("/etc/postfix/master.cf")
            .expect("/etc/postfix/master.cf (Debian postfix; scripts/setup.sh installs it)");
        let master = master.replacen(
            "smtp      inet  n       -       y       -       -       smtpd",
            &format!("127.0.0.1:{port} inet n - n - - smtpd"),
            1,
        );
        assert!(master.contains(&format!("127.0.0.1:{port} inet")));
        std::fs::write(conf.join("master.cf"), master).unwrap();
        let pf = Postfix { dir, port };
        pf.postfix(&["-F", "*/*/chroot = n"], "postconf");
        pf.postfix(&["start"], "postfix");
        // Up when smtpd answers; Postfix logs why it is not to its maillog.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postfix did not listen on 127.0.0.1:{port}:\n{}",
                pf.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pf
    }

    /// Runs `program -c <conf> args`, failing with Postfix's log.
    fn postfix(&self, args: &[&str], program: &str) {
        let out = Command::new(program)
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup.sh installs postfix)"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Postfix's mail log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Waits for a log line containing every one of `parts`; returns it.
    fn wait_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.conf())
            .arg("stop")
            .output();
        // The master exits after its children; wait (bounded) so the queue
        // is not removed under a running daemon.
        let pid = self.dir.path().join("queue/pid/master.pid");
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(pid) = std::fs::read_to_string(&pid)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            if !Path::new(&format!("/proc/{pid}")).exists() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_postfix(path: &Path) {
    let ok = Command::new("chown")
        .arg("postfix")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(
        ok,
        "chown postfix {} (the tests run as root)",
        path.display()
    );
}

/// Relay settings for `pf` with STARTTLS and `auth` as user `relay`.
fn through(pf: &Postfix, auth: &str) -> Settings {
    let mut s = Settings {
        host: "127.0.0.1".into(),
        port: pf.port,
        starttls: true,
        allow_insecure: true,
        auth: auth.into(),
        username: "relay".into(),
        ..Settings::default()
    };
    if auth == "cram-md5" {
        s.secret = PASSWORD.into();
    } else {
        s.password = PASSWORD.into();
    }
    s
}

async fn release(server: &Server, id: &str, to: &[&str]) -> (u16, String) {
    let r = http_client()
        .post(format!(
            "http://{}/api/v1/message/{id}/release",
            server.http
        ))
        .json(&serde_json::json!({ "To": to }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The stored message whose Subject is `subject`, waiting for it.
async fn arrived(server: &Server, subject: &str) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for id in ids(&server.store).await {
            let s = server.store.summary(&id).await.unwrap();
            if s.head.subject == subject {
                let raw = String::from_utf8(server.store.raw(&id).await.unwrap()).unwrap();
                let bcc = s.head.bcc.iter().map(|a| a.address.clone()).collect();
                return (raw, bcc);
            }
        }
        assert!(Instant::now() < deadline, "{subject:?} never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn original(subject: &str) -> Vec<u8> {
    format!(
        "From: \"Ann\" <ann@example.com>\r\nTo: team@example.com\r\nBcc: secret@example.com\r\n\
         Message-ID: <{subject}@example.com>\r\nSubject: {subject}\r\n\r\n.dotted line\r\nbody\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_through_postfix_with_starttls_and_each_auth_mechanism() {
    let logs = logs();
    let mut dest = Server::start(|_, _| ()).await;
    let pf = Postfix::start(dest.smtp.port());
    for auth in ["plain", "login", "cram-md5"] {
        let mut s = through(&pf, auth);
        // A return path per round tells its log lines apart.
        s.return_path = format!("bounce-{auth}@catcher.test");
        let relay = RelayConfig::new(&s, false, None).unwrap();
        let mut catcher = Server::start(move |c, _| c.relay = relay).await;
        let subject = format!("released-{auth}");
        let id = catcher
            .store
            .insert(NewMessage {
                raw: original(&subject),
                mail_from: "ann@example.com".into(),
                rcpt_to: vec!["team@example.com".into()],
                username: None,
            })
            .await
            .unwrap();
        let (status, body) = release(&catcher, &id, &["Dest <dest@dest.test>"]).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "{auth}: {}", pf.log());

        let (raw, bcc) = arrived(&dest, &subject).await;
        // Postfix accepted it from an authenticated client over TLS and
        // passed it on; our rewrite (Bcc dropped, Return-Path set, a new
        // Message-ID) survived the hop, the body byte for byte.
        assert!(raw.contains("by postfix.test (Postfix)"), "{raw}");
        assert!(
            raw.contains("(Authenticated sender: relay"),
            "{auth}: {raw}"
        );
        assert!(raw.contains("with ESMTPSA"), "TLS + AUTH: {raw}");
        assert!(!raw.contains("secret@example.com"), "{raw}");
        assert!(!raw.contains(&format!("<{subject}@example.com>")), "{raw}");
        assert!(raw.ends_with("\r\n\r\n.dotted line\r\nbody\r\n"), "{raw}");
        assert_eq!(bcc, ["dest@dest.test"], "the envelope recipient");
        // The envelope Postfix was given: our return path as MAIL FROM and
        // the released recipient as RCPT TO.
        let queued = pf.wait_log(&[&format!("from=<bounce-{auth}@catcher.test>"), "nrcpt=1"]);
        let qid = queued.split(": ").nth(1).unwrap().to_string();
        pf.wait_log(&[&qid, "to=<dest@dest.test>", "status=sent"]);
        assert_eq!(catcher.count().await, 1, "the released message is kept");
        catcher.stop().await;
    }

    // Postfix refuses a recipient: the API answers with Postfix's words,
    // the stored message stays; a wrong password is answered the same way.
    let relay = RelayConfig::new(&through(&pf, "login"), false, None).unwrap();
    let mut catcher = Server::start(move |c, _| c.relay = relay).await;
    let id = catcher
        .store
        .insert(NewMessage {
            raw: original("refused"),
            mail_from: "ann@example.com".into(),
            rcpt_to: vec!["team@example.com".into()],
            username: None,
        })
        .await
        .unwrap();
    let (status, body) = release(&catcher, &id, &["refused@dest.test"]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no such user here"), "{body}");
    catcher.stop().await;
    let mut bad = through(&pf, "login");
    bad.password = "wrong".into();
    let relay = RelayConfig::new(&bad, false, None).unwrap();
    let mut catcher = Server::start(move |c, _| c.relay = relay).await;
    let id = catcher
        .store
        .insert(NewMessage {
            raw: original("bad-password"),
            mail_from: "ann@example.com".into(),
            rcpt_to: vec!["team@example.com".into()],
            username: None,
        })
        .await
        .unwrap();
    let (status, body) = release(&catcher, &id, &["dest@dest.test"]).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("535"),
        "Postfix's authentication failure: {body}"
    );
    assert_eq!(catcher.count().await, 1);
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        !log.contains(PASSWORD),
        "the relay password is never logged"
    );
    catcher.stop().await;
    dest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_relay_and_forwarding_through_postfix() {
    let mut dest = Server::start(|_, _| ()).await;
    let pf = Postfix::start(dest.smtp.port());
    let relay = RelayConfig::new(&through(&pf, "plain"), false, Some("^keep@")).unwrap();
    let forward = ForwardConfig::new(&Settings {
        to: "copy@fwd.test".into(),
        ..through(&pf, "cram-md5")
    })
    .unwrap();
    let mut catcher = Server::start(move |c, _| {
        c.relay = relay;
        c.forward = forward;
    })
    .await;
    let mut c = Raw::connect(catcher.smtp).await;
    assert_eq!(c.cmd("EHLO x").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<app@app.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<keep@a.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<other@a.test>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(b"From: app@app.test\r\nSubject: auto\r\n\r\nhello\r\n.\r\n")
        .await;
    assert_eq!(c.reply().await.0, 250);
    // Two deliveries through Postfix: the auto-relay to the matching
    // recipient only, the forward to its fixed recipient.
    pf.wait_log(&["to=<keep@a.test>", "status=sent"]);
    pf.wait_log(&["to=<copy@fwd.test>", "status=sent"]);
    assert!(!pf.log().contains("to=<other@a.test>"), "{}", pf.log());
    let deadline = Instant::now() + Duration::from_secs(60);
    while dest.count().await < 2 {
        assert!(Instant::now() < deadline, "two copies arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut envelopes = Vec::new();
    for id in ids(&dest.store).await {
        let s = dest.store.summary(&id).await.unwrap();
        assert_eq!(s.head.subject, "auto");
        envelopes.extend(s.head.bcc.iter().map(|a| a.address.clone()));
    }
    envelopes.sort();
    assert_eq!(envelopes, ["copy@fwd.test", "keep@a.test"]);
    assert_eq!(catcher.count().await, 1);
    catcher.stop().await;
    dest.stop().await;
}
