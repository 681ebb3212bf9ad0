//! One table drives every environment variable of the catcher's options
//! (`MP_*` as Mailpit names them, and our `MAILSAFE_*`): each row sets one
//! variable (sometimes with a partner) and expects either the value parsed
//! into [`Config`], a refusal naming an option that is not implemented, or
//! a clap error. A final check fails if any variable `Options` declares has
//! no row, so a new option cannot skip the table.
//!
//! The variables are real process environment, read by clap: this binary
//! has this one test, so nothing else reads the environment meanwhile.

use std::collections::BTreeSet;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use mailsafe_catcher::api::SendAuth;
use mailsafe_catcher::api::metrics::Prometheus;
use mailsafe_catcher::auth::AuthPolicy;
use mailsafe_catcher::options::{Logging, Options};
use mailsafe_catcher::{Config, Error};

#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    options: Options,
}

/// What a row expects.
enum Expect {
    /// Starts, and the config passes this check.
    Parsed(fn(&Config) -> bool),
    /// Starts, and the binary's logging (`Options::logging`) passes this
    /// check.
    Logs(fn(&Logging) -> bool),
    /// Refused at start, the message naming this text.
    Refused(&'static str),
    /// An invalid value or combination, the message naming this text.
    Invalid(&'static str),
}
use Expect::*;

const MB: usize = 1024 * 1024;

/// The environment, as the table's rows need it.
fn rows(dir: &std::path::Path) -> Vec<(Vec<(&'static str, String)>, Expect)> {
    let (cert, key) = self_signed(dir);
    let users = dir.join("users");
    std::fs::write(&users, "alice:secret\n").unwrap();
    let tags = dir.join("tags.yml");
    std::fs::write(&tags, "filters:\n  - match: from:alerts@\n    tags: ops\n").unwrap();
    let one = |k: &'static str, val: &str| vec![(k, val.to_string())];
    vec![
        // General
        (
            one("MP_DATABASE", "/tmp/x.db"),
            Parsed(|c| c.database.ends_with("x.db")),
        ),
        (
            one("MP_DATABASE", "/tmp"),
            Parsed(|c| c.database.ends_with("tmp/mailpit.db")),
        ),
        (
            one("MP_DATA_FILE", "/tmp/old.db"),
            Parsed(|c| c.database.ends_with("old.db")),
        ),
        (one("MP_DISABLE_WAL", "true"), Parsed(|c| c.disable_wal)),
        (one("MP_DISABLE_WAL", "off"), Parsed(|c| !c.disable_wal)),
        (one("MP_DISABLE_VERSION_CHECK", "1"), Parsed(|_| true)),
        (one("MP_DISABLE_AUTO_VACUUM", "yes"), Parsed(|_| true)),
        (
            one("MP_COMPRESSION", "3"),
            Parsed(|c| c.compression_level == 9),
        ),
        (
            one("MP_COMPRESSION", "2"),
            Parsed(|c| c.compression_level == 3),
        ),
        (
            one("MP_COMPRESSION", "0"),
            Parsed(|c| c.compression_level == 0),
        ),
        (one("MP_COMPRESSION", "4"), Invalid("--compression")),
        (
            one("MP_TENANT_ID", "team1"),
            Parsed(|c| c.tenant == "team1"),
        ),
        (one("MP_LABEL", "staging"), Parsed(|c| c.label == "staging")),
        (one("MP_MAX_MESSAGES", "0"), Parsed(|c| c.max_messages == 0)),
        (
            one("MP_MAX_AGE", "3d"),
            Parsed(|c| c.max_age == Some(Duration::from_secs(3 * 86400))),
        ),
        (
            one("MP_MAX_AGE", "12h"),
            Parsed(|c| c.max_age == Some(Duration::from_secs(12 * 3600))),
        ),
        (one("MP_MAX_AGE", "soon"), Invalid("--max-age")),
        (
            one("MP_MAX_MESSAGE_SIZE", "0"),
            Parsed(|c| c.max_message_size == usize::MAX),
        ),
        (
            one("MP_MAX_MESSAGE_SIZE", "2"),
            Parsed(|c| c.max_message_size == 2 * MB),
        ),
        (
            one("MP_USE_MESSAGE_DATES", "1"),
            Parsed(|c| c.use_message_dates),
        ),
        (
            one("MP_IGNORE_DUPLICATE_IDS", "true"),
            Parsed(|c| c.ignore_duplicate_ids),
        ),
        (
            one("MP_LOG_FILE", "/tmp/log"),
            Logs(|l| l.file.as_deref() == Some(std::path::Path::new("/tmp/log"))),
        ),
        (
            one("MP_QUIET", "1"),
            Logs(|l| l.level == tracing::Level::ERROR && l.file.is_none()),
        ),
        (
            one("MP_VERBOSE", "1"),
            Logs(|l| l.level == tracing::Level::DEBUG),
        ),
        (
            vec![("MP_VERBOSE", "true".into()), ("MP_QUIET", "true".into())],
            Logs(|l| l.level == tracing::Level::DEBUG),
        ),
        (
            one("MP_QUIET", "no"),
            Logs(|l| l.level == tracing::Level::INFO),
        ),
        (one("MP_DEMO_MODE", "1"), Refused("MP_DEMO_MODE")),
        // Web UI and API
        (
            one("MP_UI_BIND_ADDR", "127.0.0.1:18025"),
            Parsed(|c| c.http_bind == "127.0.0.1:18025"),
        ),
        (one("MP_WEBROOT", "/"), Parsed(|c| c.webroot == "/")),
        (one("MP_WEBROOT", "mail"), Parsed(|c| c.webroot == "/mail/")),
        (
            one("MP_WEBROOT", "/a//b/"),
            Parsed(|c| c.webroot == "/a/b/"),
        ),
        (one("MP_WEBROOT", "/a b"), Invalid("webroot")),
        (
            one("MP_UI_AUTH", "alice:pw bob:pw2"),
            Parsed(|c| c.ui_auth.is_some()),
        ),
        (
            one("MP_UI_AUTH_FILE", &users.display().to_string()),
            Parsed(|c| c.ui_auth.is_some()),
        ),
        (
            vec![
                ("MP_UI_TLS_CERT", cert.clone()),
                ("MP_UI_TLS_KEY", key.clone()),
            ],
            Parsed(|c| c.ui_tls_cert.is_some() && c.ui_tls_key.is_some()),
        ),
        (
            vec![("MP_UI_TLS_KEY", key.clone())],
            Invalid("MP_UI_TLS_CERT and MP_UI_TLS_KEY"),
        ),
        (
            vec![
                ("MP_UI_SSL_CERT", cert.clone()),
                ("MP_UI_SSL_KEY", key.clone()),
            ],
            Parsed(|c| c.ui_tls_cert.is_some() && c.ui_tls_key.is_some()),
        ),
        (one("MP_API_CORS", "*"), Parsed(|c| c.origins.cors == "*")),
        (
            one("MP_BLOCK_REMOTE_CSS_AND_FONTS", "1"),
            Parsed(|c| c.block_remote_css_and_fonts),
        ),
        (
            one("MP_ALLOW_INTERNAL_HTTP_REQUESTS", "1"),
            Parsed(|c| c.link_check.allow_internal && !c.link_check.no_rate_limit),
        ),
        (
            one("MP_DISABLE_LINK_CHECK_RATE_LIMIT", "1"),
            Parsed(|c| c.link_check.no_rate_limit && !c.link_check.allow_internal),
        ),
        (
            one("MP_ENABLE_SPAMASSASSIN", "127.0.0.1:783"),
            Parsed(|c| {
                c.spamassassin
                    .as_ref()
                    .is_some_and(|s| s.addr == "127.0.0.1:783")
            }),
        ),
        (
            one("MP_ENABLE_SPAMASSASSIN", "postmark"),
            Refused("MP_ENABLE_SPAMASSASSIN=postmark"),
        ),
        (
            one("MP_ALLOW_UNTRUSTED_TLS", "1"),
            Parsed(|c| c.link_check.allow_untrusted_tls),
        ),
        (one("MP_DISABLE_HTTP_COMPRESSION", "1"), Parsed(|_| true)),
        (
            one("MP_HIDE_DELETE_ALL_BUTTON", "YES"),
            Parsed(|c| c.hide_delete_all_button),
        ),
        (
            one("MP_HIDE_DELETE_ALL_BUTTON", "on"),
            Parsed(|c| !c.hide_delete_all_button),
        ),
        (one("MP_DISABLE_HTML_CHECK", "1"), Parsed(|_| true)),
        (
            one("MP_ENABLE_PROMETHEUS", "false"),
            Parsed(|c| c.prometheus == Prometheus::Off),
        ),
        (
            one("MP_ENABLE_PROMETHEUS", "TRUE"),
            Parsed(|c| c.prometheus == Prometheus::Ui),
        ),
        (
            one("MP_ENABLE_PROMETHEUS", "127.0.0.1:9090"),
            Parsed(|c| c.prometheus == Prometheus::Listen("127.0.0.1:9090".into())),
        ),
        (
            one("MP_ENABLE_PROMETHEUS", "1"),
            Invalid("MP_ENABLE_PROMETHEUS"),
        ),
        // Send API
        (
            one("MP_SEND_API_AUTH", "a:b"),
            Parsed(|c| matches!(c.send_auth, SendAuth::Users(_))),
        ),
        (
            one("MP_SEND_API_AUTH_FILE", &users.display().to_string()),
            Parsed(|c| matches!(c.send_auth, SendAuth::Users(_))),
        ),
        (
            one("MP_SEND_API_AUTH_ACCEPT_ANY", "1"),
            Parsed(|c| matches!(c.send_auth, SendAuth::AcceptAny)),
        ),
        (
            vec![
                ("MP_SEND_API_AUTH", "a:b".into()),
                ("MP_SEND_API_AUTH_ACCEPT_ANY", "true".into()),
            ],
            Invalid("MP_SEND_API_AUTH_ACCEPT_ANY"),
        ),
        // SMTP
        (
            one("MP_SMTP_BIND_ADDR", "127.0.0.1:11025"),
            Parsed(|c| c.smtp_bind == "127.0.0.1:11025"),
        ),
        (
            one("MP_SMTP_AUTH", "alice:pw"),
            Parsed(|c| matches!(c.smtp_auth, AuthPolicy::Users(_))),
        ),
        (
            one("MP_SMTP_AUTH_FILE", &users.display().to_string()),
            Parsed(|c| matches!(c.smtp_auth, AuthPolicy::Users(_))),
        ),
        (
            one("MP_SMTP_AUTH_ACCEPT_ANY", "1"),
            Parsed(|c| matches!(c.smtp_auth, AuthPolicy::AcceptAny)),
        ),
        (
            one("MP_SMTP_AUTH_ACCEPT_ANY", "0"),
            Parsed(|c| matches!(c.smtp_auth, AuthPolicy::None)),
        ),
        (
            one("MP_SMTP_AUTH_ALLOW_INSECURE", "true"),
            Parsed(|c| c.smtp_auth_allow_insecure),
        ),
        (
            vec![
                ("MP_SMTP_TLS_CERT", cert.clone()),
                ("MP_SMTP_TLS_KEY", key.clone()),
            ],
            Parsed(|c| c.smtp_tls_cert.is_some() && c.smtp_tls_key.is_some()),
        ),
        (
            vec![
                ("MP_SMTP_SSL_CERT", cert.clone()),
                ("MP_SMTP_SSL_KEY", key.clone()),
            ],
            Parsed(|c| c.smtp_tls_cert.is_some() && c.smtp_tls_key.is_some()),
        ),
        (
            one("MP_SMTP_REQUIRE_STARTTLS", "yes"),
            Parsed(|c| c.smtp_require_starttls),
        ),
        (
            one("MP_SMTP_TLS_REQUIRED", "1"),
            Parsed(|c| c.smtp_require_starttls),
        ),
        (
            one("MP_SMTP_REQUIRE_TLS", "1"),
            Parsed(|c| c.smtp_implicit_tls),
        ),
        (
            one("MP_SMTP_TLS_IMPLICIT", "true"),
            Parsed(|c| c.smtp_implicit_tls),
        ),
        (
            one("MP_SMTP_STRICT_RFC_HEADERS", "1"),
            Parsed(|c| c.smtp_strict_rfc_headers),
        ),
        (
            one("MP_STRICT_RFC_HEADERS", "1"),
            Parsed(|c| c.smtp_strict_rfc_headers),
        ),
        (
            one("MP_SMTP_MAX_RECIPIENTS", "5"),
            Parsed(|c| c.smtp_max_recipients == 5),
        ),
        (
            one("MP_SMTP_MAX_RECIPIENTS", "many"),
            Invalid("--smtp-max-recipients"),
        ),
        (
            one("MP_SMTP_ALLOWED_RECIPIENTS", "@example\\.org$"),
            Parsed(|c| {
                c.smtp_allowed_recipients
                    .as_ref()
                    .is_some_and(|r| r.is_match("a@example.org") && !r.is_match("a@x.com"))
            }),
        ),
        (
            one("MP_SMTP_ALLOWED_RECIPIENTS", "(unclosed"),
            Invalid("MP_SMTP_ALLOWED_RECIPIENTS"),
        ),
        (
            one("MP_SMTP_IGNORE_REJECTED_RECIPIENTS", "1"),
            Parsed(|c| c.smtp_ignore_rejected_recipients),
        ),
        (one("MP_SMTP_DISABLE_RDNS", "1"), Parsed(|_| true)),
        // Chaos and tags
        (
            one("MP_ENABLE_CHAOS", "true"),
            Parsed(|c| c.chaos.is_some_and(|t| t.sender.probability == 0)),
        ),
        (one("MP_ENABLE_CHAOS", "0"), Parsed(|c| c.chaos.is_none())),
        (
            one("MP_CHAOS_TRIGGERS", "Recipient:451:50"),
            Parsed(|c| c.chaos.is_some_and(|t| t.recipient.probability == 50)),
        ),
        (
            one("MP_CHAOS_TRIGGERS", "Recipient:451"),
            Invalid("MP_CHAOS_TRIGGERS"),
        ),
        (
            one("MP_TAG", "signup=subject:welcome"),
            Parsed(|c| c.tagging.rules.len() == 1 && c.tagging.rules[0].query == "subject:welcome"),
        ),
        (one("MP_TAG", "signup"), Invalid("MP_TAG")),
        (
            one("MP_TAGS_CONFIG", &tags.display().to_string()),
            Parsed(|c| c.tagging.rules.len() == 1 && c.tagging.rules[0].tags == ["ops"]),
        ),
        (
            one("MP_TAGS_CONFIG", "/nonexistent/tags.yml"),
            Invalid("MP_TAGS_CONFIG"),
        ),
        (
            one("MP_TAGS_TITLE_CASE", "1"),
            Parsed(|c| c.tagging.title_case),
        ),
        (
            one("MP_TAGS_DISABLE", "plus-addresses"),
            Parsed(|c| !c.tagging.plus_addresses && c.tagging.x_tags),
        ),
        (
            one("MP_TAGS_DISABLE", "X-Tags, plus-addressing"),
            Parsed(|c| !c.tagging.plus_addresses && !c.tagging.x_tags),
        ),
        (
            one("MP_TAGS_DISABLE", "subjects"),
            Invalid("MP_TAGS_DISABLE"),
        ),
        (one("MP_TAGS_USERNAME", "1"), Parsed(|c| c.tagging.username)),
        // POP3 (runs only with users, as in Mailpit) and webhooks
        (
            one("MP_POP3_BIND_ADDR", "127.0.0.1:1110"),
            Parsed(|c| c.pop3_bind == "127.0.0.1:1110" && c.pop3_auth.is_none()),
        ),
        (
            one("MP_POP3_AUTH", "a:b"),
            Parsed(|c| c.pop3_auth.as_ref().is_some_and(|u| u.verify("a", "b"))),
        ),
        (
            one("MP_POP3_AUTH_FILE", &users.display().to_string()),
            Parsed(|c| {
                c.pop3_auth
                    .as_ref()
                    .is_some_and(|u| u.verify("alice", "secret"))
            }),
        ),
        (
            vec![
                ("MP_POP3_AUTH", "a:b".into()),
                ("MP_POP3_AUTH_FILE", users.display().to_string()),
            ],
            Invalid("not both"),
        ),
        (
            vec![
                ("MP_POP3_TLS_CERT", cert.clone()),
                ("MP_POP3_TLS_KEY", key.clone()),
            ],
            Parsed(|c| c.pop3_tls_cert.is_some() && c.pop3_tls_key.is_some() && !c.pop3_stls),
        ),
        (one("MAILSAFE_POP3_STLS", "true"), Parsed(|c| c.pop3_stls)),
        (
            one("MP_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
            Parsed(|c| {
                c.webhook.as_ref().is_some_and(|w| {
                    w.url.as_str() == "http://127.0.0.1:9/hook"
                        && w.interval == Duration::from_secs(1)
                        && w.delay.is_zero()
                })
            }),
        ),
        (one("MP_WEBHOOK_URL", "ftp://x/y"), Invalid("http or https")),
        (
            vec![
                ("MP_WEBHOOK_URL", "https://h.test/x".into()),
                ("MP_WEBHOOK_LIMIT", "5".into()),
                ("MP_WEBHOOK_DELAY", "2".into()),
            ],
            Parsed(|c| {
                c.webhook.as_ref().is_some_and(|w| {
                    w.interval == Duration::from_secs(5) && w.delay == Duration::from_secs(2)
                })
            }),
        ),
        (
            one("MP_WEBHOOK_LIMIT", "0"),
            Parsed(|c| c.webhook.is_none()),
        ),
        (
            one("MP_WEBHOOK_DELAY", "2"),
            Parsed(|c| c.webhook.is_none()),
        ),
        // mailsafe's own
        (
            one("MAILSAFE_SMTP_MAX_CONNECTIONS", "7"),
            Parsed(|c| c.smtp_max_connections == 7),
        ),
        (
            one("MAILSAFE_SMTP_IDLE_TIMEOUT", "30s"),
            Parsed(|c| c.smtp_idle_timeout == Duration::from_secs(30)),
        ),
        (
            one("MAILSAFE_SMTP_MAX_DATA_MEMORY", "0"),
            Parsed(|c| c.smtp_max_data_memory == 0),
        ),
        (
            one("MAILSAFE_SMTP_MAX_DATA_MEMORY", "64"),
            Parsed(|c| c.smtp_max_data_memory == 64 * MB),
        ),
        (
            one("MAILSAFE_HTTP_HEADER_TIMEOUT", "3s"),
            Parsed(|c| c.http_limits.header_read_timeout == Duration::from_secs(3)),
        ),
        (
            one("MAILSAFE_HTTP_MAX_CONNECTIONS", "9"),
            Parsed(|c| c.http_limits.max_connections == 9),
        ),
        (
            one("MAILSAFE_HTTP_MAX_CONNECTIONS_PER_IP", "3"),
            Parsed(|c| c.http_limits.max_connections_per_ip == 3),
        ),
        (
            one("MAILSAFE_HTTP_ALLOWED_HOSTS", "a.test,b.test"),
            Parsed(|c| c.origins.allowed_hosts == ["a.test", "b.test"]),
        ),
        (
            vec![
                ("MAILSAFE_HTTP_AUTH_MAX_FAILURES", "3".into()),
                ("MP_UI_AUTH", "alice:secret".into()),
            ],
            Parsed(|c| c.ui_auth.as_ref().unwrap().throttle_limits().0 == 3),
        ),
        (
            vec![
                ("MAILSAFE_HTTP_AUTH_WINDOW", "5m".into()),
                ("MP_UI_AUTH", "alice:secret".into()),
            ],
            Parsed(|c| {
                c.ui_auth.as_ref().unwrap().throttle_limits() == (10, Duration::from_secs(300))
            }),
        ),
        (
            one("MAILSAFE_BCRYPT_THREADS", "3"),
            Parsed(|c| c.bcrypt_threads == 3),
        ),
        (
            one("MAILSAFE_HTTP_MAX_EVENT_SUBSCRIBERS", "2"),
            Parsed(|c| c.max_event_subscribers == 2),
        ),
        (
            one("MAILSAFE_TLS_HANDSHAKE_TIMEOUT", "3s"),
            Parsed(|c| {
                c.smtp_tls_handshake_timeout == Duration::from_secs(3)
                    && c.http_limits.tls_handshake_timeout == Duration::from_secs(3)
            }),
        ),
    ]
    .into_iter()
    .chain(relay_and_forward_rows(dir))
    .collect()
}

/// Mailpit's relay and forward settings: each variable with a host (and
/// forwarding's recipients) configures the relay or forward; Mailpit's
/// checks refuse bad combinations; YAML files as Mailpit writes them.
fn relay_and_forward_rows(dir: &std::path::Path) -> Vec<(Vec<(&'static str, String)>, Expect)> {
    const RELAY: &[&str] = &[
        "MP_SMTP_RELAY_PORT",
        "MP_SMTP_RELAY_STARTTLS",
        "MP_SMTP_RELAY_TLS",
        "MP_SMTP_RELAY_ALLOW_INSECURE",
        "MP_SMTP_RELAY_AUTH",
        "MP_SMTP_RELAY_USERNAME",
        "MP_SMTP_RELAY_PASSWORD",
        "MP_SMTP_RELAY_SECRET",
        "MP_SMTP_RELAY_RETURN_PATH",
        "MP_SMTP_RELAY_OVERRIDE_FROM",
        "MP_SMTP_RELAY_ALLOWED_RECIPIENTS",
        "MP_SMTP_RELAY_BLOCKED_RECIPIENTS",
        "MP_SMTP_RELAY_PRESERVE_MESSAGE_IDS",
        "MP_SMTP_RELAY_FWD_SMTP_ERRORS",
    ];
    const FORWARD: &[&str] = &[
        "MP_SMTP_FORWARD_PORT",
        "MP_SMTP_FORWARD_STARTTLS",
        "MP_SMTP_FORWARD_TLS",
        "MP_SMTP_FORWARD_ALLOW_INSECURE",
        "MP_SMTP_FORWARD_AUTH",
        "MP_SMTP_FORWARD_USERNAME",
        "MP_SMTP_FORWARD_PASSWORD",
        "MP_SMTP_FORWARD_SECRET",
        "MP_SMTP_FORWARD_RETURN_PATH",
        "MP_SMTP_FORWARD_OVERRIDE_FROM",
        "MP_SMTP_FORWARD_FWD_SMTP_ERRORS",
    ];
    // A value each one takes.
    let value = |k: &str| {
        if k.ends_with("_PORT") {
            "2525"
        } else if k.ends_with("_AUTH") {
            "none"
        } else if k.ends_with("_PATH") || k.ends_with("_FROM") {
            "b@x.test"
        } else {
            "1"
        }
        .to_string()
    };
    let host = |k: &'static str| (k, "smtp.test".to_string());
    let relay_yaml = dir.join("relay.yaml");
    std::fs::write(&relay_yaml, "host: relay.test\nport: 587\nstarttls: true\n").unwrap();
    let forward_yaml = dir.join("forward.yaml");
    std::fs::write(&forward_yaml, "host: fwd.test\nto: a@x.test, b@x.test\n").unwrap();
    let mut rows: Vec<(Vec<(&'static str, String)>, Expect)> = RELAY
        .iter()
        .map(|k| {
            (
                vec![host("MP_SMTP_RELAY_HOST"), (*k, value(k))],
                Parsed(|c| {
                    c.relay
                        .as_ref()
                        .is_some_and(|r| r.target.host == "smtp.test")
                }),
            )
        })
        .chain(FORWARD.iter().map(|k| {
            (
                vec![
                    host("MP_SMTP_FORWARD_HOST"),
                    ("MP_SMTP_FORWARD_TO", "a@x.test".into()),
                    (*k, value(k)),
                ],
                Parsed(|c| c.forward.as_ref().is_some_and(|f| f.to == ["a@x.test"])),
            )
        }))
        .collect();
    rows.extend([
        (
            vec![("MP_SMTP_RELAY_CONFIG", relay_yaml.display().to_string())],
            Parsed(|c| {
                c.relay.as_ref().is_some_and(|r| {
                    (r.target.host.as_str(), r.target.port, r.target.starttls)
                        == ("relay.test", 587, true)
                })
            }),
        ),
        (
            vec![("MP_SMTP_RELAY_CONFIG", "/nonexistent/relay.yaml".into())],
            Invalid("MP_SMTP_RELAY_CONFIG"),
        ),
        (
            vec![("MP_SMTP_FORWARD_CONFIG", forward_yaml.display().to_string())],
            Parsed(|c| {
                c.forward
                    .as_ref()
                    .is_some_and(|f| f.to == ["a@x.test", "b@x.test"])
            }),
        ),
        (
            vec![
                host("MP_SMTP_RELAY_HOST"),
                ("MP_SMTP_RELAY_ALL", "1".into()),
            ],
            Parsed(|c| c.relay.as_ref().is_some_and(|r| r.all)),
        ),
        (
            vec![("MP_SMTP_RELAY_ALL", "1".into())],
            Invalid("relay host"),
        ),
        (
            vec![
                host("MP_SMTP_RELAY_HOST"),
                ("MP_SMTP_RELAY_MATCHING", "^dev@".into()),
            ],
            Parsed(|c| c.relay.as_ref().is_some_and(|r| r.matching.is_some())),
        ),
        (
            vec![
                host("MP_SMTP_RELAY_HOST"),
                ("MP_SMTP_RELAY_AUTH", "plain".into()),
            ],
            Invalid("username"),
        ),
        (
            vec![host("MP_SMTP_FORWARD_HOST")],
            Invalid("To addresses missing"),
        ),
        (
            vec![("MP_SMTP_FORWARD_TO", "a@x.test".into())],
            Parsed(|c| c.forward.is_none()),
        ),
    ]);
    rows
}

fn self_signed(dir: &std::path::Path) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// Every variable the options declare.
fn declared() -> BTreeSet<String> {
    Serve::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_variable_parses_like_mailpit_or_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let all = declared();
    let table = rows(dir.path());
    let mut covered = BTreeSet::new();
    let mut failures = Vec::new();
    for (vars, expect) in &table {
        // SAFETY: this test binary has this one test; nothing else reads
        // the environment while it runs.
        unsafe {
            for k in &all {
                std::env::remove_var(k);
            }
            for (k, v) in vars {
                std::env::set_var(k, v);
            }
        }
        covered.extend(vars.iter().map(|(k, _)| k.to_string()));
        let outcome = Serve::try_parse_from(["serve"])
            .map_err(|e| e.to_string())
            .and_then(|s| {
                let logging = s.options.logging();
                s.options
                    .into_config()
                    .map(|c| (c, logging))
                    .map_err(|e| (e.to_string(), e))
                    .map_err(|(m, e)| {
                        if matches!(e, Error::NotImplemented(_)) {
                            format!("refused: {m}")
                        } else {
                            m
                        }
                    })
            });
        let ok = match (expect, &outcome) {
            (Parsed(check), Ok((config, _))) => check(config),
            (Logs(check), Ok((_, logging))) => check(logging),
            (Refused(name), Err(m)) => m.starts_with("refused: ") && m.contains(name),
            (Invalid(name), Err(m)) => !m.starts_with("refused: ") && m.contains(name),
            _ => false,
        };
        if !ok {
            let got = match &outcome {
                Ok((c, l)) => format!("parsed {l:?} {c:?}"),
                Err(m) => m.clone(),
            };
            failures.push(format!("{vars:?}: got {got}"));
        }
    }
    let missing: Vec<_> = all.difference(&covered).collect();
    assert!(missing.is_empty(), "variables without a row: {missing:?}");
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("{} rows over {} variables", table.len(), all.len());
}
