//! Sending caught mail on, as Mailpit does: releasing a stored message
//! through a configured SMTP server (`POST /api/v1/message/{ID}/release`,
//! `MP_SMTP_RELAY_CONFIG` or `MP_SMTP_RELAY_*`), auto-relaying new messages
//! to all or matching recipients (`MP_SMTP_RELAY_ALL`,
//! `MP_SMTP_RELAY_MATCHING`), and forwarding a copy of every new message to
//! fixed recipients (`MP_SMTP_FORWARD_CONFIG` or `MP_SMTP_FORWARD_*`).
//!
//! Unlike Mailpit, which relays inside the SMTP transaction (a slow relay
//! server stalls the sender, Mailpit issue #517), a new message is stored
//! and acknowledged first; auto-relay and forwarding then run from a
//! bounded queue ([`Outbound`]), so a relay failure is logged and never
//! loses or delays the stored message. A release answers the API caller
//! with the relay server's error.
//!
//! Only the configured servers are ever contacted: nothing in a message
//! chooses where it goes, and released recipients must pass the allow and
//! block lists.

pub mod client;
pub mod rewrite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::smtp::{Deliver, Delivery};
use crate::storage::{NewMessage, Store};
pub use client::{Auth, RelayError, Target};

/// Mailpit's relay and forward settings as written in its YAML files and
/// `MP_SMTP_RELAY_*` / `MP_SMTP_FORWARD_*` variables (kebab-case keys).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Settings {
    /// SMTP host; nothing is relayed without one.
    pub host: String,
    /// SMTP port (default 25).
    pub port: u16,
    /// Upgrade with STARTTLS.
    pub starttls: bool,
    /// TLS from the first byte.
    pub tls: bool,
    /// Accept any certificate.
    pub allow_insecure: bool,
    /// `none`, `plain`, `login` or `cram-md5`.
    pub auth: String,
    /// For plain, login and cram-md5.
    pub username: String,
    /// For plain and login.
    pub password: String,
    /// For cram-md5.
    pub secret: String,
    /// Envelope sender and `Return-Path` of relayed messages.
    pub return_path: String,
    /// Replace the From address (the original goes to `X-Original-From`).
    pub override_from: String,
    /// Relay only to recipients matching this regex (release only).
    pub allowed_recipients: String,
    /// Never relay to recipients matching this regex.
    pub blocked_recipients: String,
    /// Keep the message's Message-ID on release (default: a new one).
    pub preserve_message_ids: bool,
    /// Fail on a refused recipient instead of skipping it.
    pub forward_smtp_errors: bool,
    /// Forwarding only: comma-separated recipients.
    pub to: String,
    /// Deprecated name of `allowed-recipients`.
    pub recipient_allowlist: String,
}

/// The relay or forward configuration is invalid.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct ConfigError {
    /// `relay`, `forward`, or the file.
    pub what: String,
    /// What is wrong.
    pub why: String,
}

impl Settings {
    /// Reads a Mailpit YAML file (`MP_SMTP_RELAY_CONFIG`,
    /// `MP_SMTP_FORWARD_CONFIG`).
    pub fn from_yaml_file(path: &Path) -> Result<Settings, ConfigError> {
        let err = |why: String| ConfigError {
            what: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))
    }

    fn target(&self, what: &str) -> Result<Target, ConfigError> {
        let err = |why: String| ConfigError {
            what: what.into(),
            why,
        };
        let need = |v: &str, name: &str| {
            if v.is_empty() {
                Err(err(format!(
                    "{name} not set for {} authentication",
                    self.auth
                )))
            } else {
                Ok(v.to_owned())
            }
        };
        let auth = match self.auth.to_ascii_lowercase().as_str() {
            "" | "none" | "false" => Auth::None,
            "plain" => Auth::Plain {
                user: need(&self.username, "username")?,
                password: need(&self.password, "password")?,
            },
            "login" => Auth::Login {
                user: need(&self.username, "username")?,
                password: need(&self.password, "password")?,
            },
            a if a.starts_with("cram") => Auth::CramMd5 {
                user: need(&self.username, "username")?,
                secret: need(&self.secret, "secret")?,
            },
            other => return Err(err(format!("authentication method not supported: {other}"))),
        };
        if self.starttls && self.tls {
            return Err(err("TLS and STARTTLS cannot be required together".into()));
        }
        Ok(Target {
            host: self.host.clone(),
            port: if self.port == 0 { 25 } else { self.port },
            starttls: self.starttls,
            tls: self.tls,
            allow_insecure: self.allow_insecure,
            auth,
            timeout: Duration::from_secs(30),
        })
    }
}

fn regex(what: &str, pattern: &str) -> Result<Option<Regex>, ConfigError> {
    if pattern.is_empty() {
        return Ok(None);
    }
    Regex::new(pattern).map(Some).map_err(|e| ConfigError {
        what: what.into(),
        why: e.to_string(),
    })
}

fn address(what: &str, value: &str) -> Result<Option<String>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    rewrite::parse_address(value)
        .map(|(_, a)| Some(a))
        .ok_or_else(|| ConfigError {
            what: what.into(),
            why: format!("not a valid email address: {value}"),
        })
}

/// A validated relay configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The server.
    pub target: Target,
    /// Envelope sender and `Return-Path` header on release.
    pub return_path: Option<String>,
    /// From address override.
    pub override_from: Option<String>,
    /// Released recipients must match.
    pub allowed: Option<Regex>,
    /// Recipients that are never relayed to.
    pub blocked: Option<Regex>,
    /// Keep Message-IDs on release.
    pub preserve_message_ids: bool,
    /// A refused recipient fails the relay.
    pub forward_smtp_errors: bool,
    /// Auto-relay every new message (`MP_SMTP_RELAY_ALL`).
    pub all: bool,
    /// Auto-relay new messages to matching recipients
    /// (`MP_SMTP_RELAY_MATCHING`).
    pub matching: Option<Regex>,
}

impl RelayConfig {
    /// Validates Mailpit's relay settings plus the auto-relay switches;
    /// `None` when no host is set (relaying off).
    pub fn new(
        s: &Settings,
        all: bool,
        matching: Option<&str>,
    ) -> Result<Option<RelayConfig>, ConfigError> {
        if s.host.is_empty() {
            if all || matching.is_some_and(|m| !m.is_empty()) {
                return Err(ConfigError {
                    what: "relay".into(),
                    why:
                        "auto-relay needs a relay host (MP_SMTP_RELAY_CONFIG or MP_SMTP_RELAY_HOST)"
                            .into(),
                });
            }
            return Ok(None);
        }
        let allowed = if s.allowed_recipients.is_empty() {
            &s.recipient_allowlist
        } else {
            &s.allowed_recipients
        };
        Ok(Some(RelayConfig {
            target: s.target("relay")?,
            return_path: address("relay return-path", &s.return_path)?,
            override_from: address("relay override-from", &s.override_from)?,
            allowed: regex("relay allowed-recipients", allowed)?,
            blocked: regex("relay blocked-recipients", &s.blocked_recipients)?,
            preserve_message_ids: s.preserve_message_ids,
            forward_smtp_errors: s.forward_smtp_errors,
            all,
            matching: regex("MP_SMTP_RELAY_MATCHING", matching.unwrap_or(""))?,
        }))
    }

    fn auto(&self) -> bool {
        self.all || self.matching.is_some()
    }
}

/// A validated forwarding configuration.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// The server.
    pub target: Target,
    /// Where every new message goes.
    pub to: Vec<String>,
    /// Envelope sender and `Return-Path` header.
    pub return_path: Option<String>,
    /// From address override.
    pub override_from: Option<String>,
    /// A refused recipient fails the forward.
    pub forward_smtp_errors: bool,
}

impl ForwardConfig {
    /// Validates Mailpit's forward settings; `None` when no host is set.
    pub fn new(s: &Settings) -> Result<Option<ForwardConfig>, ConfigError> {
        if s.host.is_empty() {
            return Ok(None);
        }
        let mut to = Vec::new();
        for a in s.to.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            to.extend(address("forward to", a)?);
        }
        if to.is_empty() {
            return Err(ConfigError {
                what: "forward".into(),
                why: "To addresses missing".into(),
            });
        }
        Ok(Some(ForwardConfig {
            target: s.target("forward")?,
            to,
            return_path: address("forward return-path", &s.return_path)?,
            override_from: address("forward override-from", &s.override_from)?,
            forward_smtp_errors: s.forward_smtp_errors,
        }))
    }
}

/// Why a release was refused or failed (the API answers 400 with it).
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Bad request: addresses, lists, headers.
    #[error("{0}")]
    Refused(String),
    /// The relay server failed.
    #[error("SMTP error: {0}")]
    Smtp(#[from] RelayError),
}

/// The name this catcher gives itself in EHLO.
fn helo() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
        })
        .unwrap_or_else(|| "mailsafe".into())
}

/// Releases `raw` to `to` as Mailpit's release API does: recipients checked
/// against the allow and block lists, Bcc removed, Return-Path and envelope
/// sender from `return-path` (else the Sender or From address), a new Date,
/// a new Message-ID unless `preserve-message-ids`, From overridden if
/// configured.
pub async fn release(config: &RelayConfig, raw: &[u8], to: &[String]) -> Result<(), ReleaseError> {
    let mut rcpts = Vec::new();
    let (mut not_allowed, mut blocked) = (Vec::new(), Vec::new());
    for t in to {
        let Some((_, addr)) = rewrite::parse_address(t) else {
            return Err(ReleaseError::Refused(format!("Invalid email address: {t}")));
        };
        if config
            .allowed
            .as_ref()
            .is_some_and(|re| !re.is_match(&addr))
        {
            not_allowed.push(t.clone());
        } else if config.blocked.as_ref().is_some_and(|re| re.is_match(&addr)) {
            blocked.push(t.clone());
        }
        rcpts.push(addr);
    }
    let plural = |n: usize| if n == 1 { "Address" } else { "Addresses" };
    if !not_allowed.is_empty() {
        return Err(ReleaseError::Refused(format!(
            "Failed: {} do not match the allowlist: {}",
            plural(not_allowed.len()),
            not_allowed.join(", ")
        )));
    }
    if !blocked.is_empty() {
        return Err(ReleaseError::Refused(format!(
            "Failed: {} found on blocklist: {}",
            plural(blocked.len()),
            blocked.join(", ")
        )));
    }
    if rcpts.is_empty() {
        return Err(ReleaseError::Refused("No valid addresses found".into()));
    }
    let headers = rewrite::Headers::of(raw);
    let from = headers
        .address("Sender")
        .or_else(|| headers.address("From"))
        .ok_or_else(|| ReleaseError::Refused("No From header found".into()))?;
    let mut msg = rewrite::remove(raw, "Bcc");
    let from = match &config.return_path {
        Some(rp) => {
            msg = rewrite::remove(&msg, "Return-Path");
            msg = rewrite::prepend(&msg, "Return-Path", &format!("<{rp}>"));
            rp.clone()
        }
        None => from,
    };
    msg = rewrite::set(&msg, "Date", &chrono::Utc::now().to_rfc2822());
    if !config.preserve_message_ids {
        let id = format!("<{}@mailsafe>", unique_id());
        msg = rewrite::set(&msg, "Message-ID", &id);
    }
    send(
        &config.target,
        config.override_from.as_deref(),
        &from,
        &rcpts,
        msg,
        config.forward_smtp_errors,
    )
    .await?;
    Ok(())
}

/// A new random Message-ID local part (22 alphanumerics, as Mailpit's
/// short UUIDs).
fn unique_id() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(22)
        .map(char::from)
        .collect()
}

/// Sends with the From override applied (header and envelope).
async fn send(
    target: &Target,
    override_from: Option<&str>,
    from: &str,
    to: &[String],
    mut msg: Vec<u8>,
    rcpt_errors_fail: bool,
) -> Result<(), RelayError> {
    let from = match override_from {
        Some(o) => {
            msg = rewrite::override_from(&msg, o);
            o
        }
        None => from,
    };
    client::send(target, &helo(), from, to, &msg, rcpt_errors_fail)
        .await
        .map(drop)
}

/// One stored message to relay or forward.
struct Job {
    id: String,
    mail_from: String,
    rcpt_to: Vec<String>,
    /// The message came without a Bcc header, so the one the store added
    /// (its envelope recipients) must not travel on.
    strip_bcc: bool,
}

/// The SMTP server's destination when auto-relay or forwarding is on: it
/// stores each message (acknowledged only once durable, as the store
/// alone), then queues it for the relay server. The queue is bounded: when
/// the relay server is too slow, the message is still stored and the
/// relay is skipped with a warning.
pub struct Outbound {
    store: Store,
    jobs: mpsc::Sender<Job>,
}

/// Messages waiting for auto-relay or forwarding; more are skipped.
const OUTBOUND_QUEUE: usize = 256;

impl Outbound {
    /// Starts the worker that relays and forwards what `store` receives
    /// through the returned [`Deliver`].
    pub fn start(
        store: Store,
        relay: Option<RelayConfig>,
        forward: Option<ForwardConfig>,
    ) -> Arc<Outbound> {
        let (jobs, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let relay = relay.filter(RelayConfig::auto);
        tokio::spawn(work(store.clone(), rx, relay, forward));
        Arc::new(Outbound { store, jobs })
    }
}

impl Deliver for Outbound {
    fn deliver(&self, msg: NewMessage) -> Delivery<'_> {
        Box::pin(async move {
            let (mail_from, rcpt_to) = (msg.mail_from.clone(), msg.rcpt_to.clone());
            let strip_bcc = rewrite::Headers::of(&msg.raw).value("Bcc").is_none();
            let id = self.store.insert(msg).await?;
            let job = Job {
                id: id.clone(),
                mail_from,
                rcpt_to,
                strip_bcc,
            };
            if self.jobs.try_send(job).is_err() {
                tracing::warn!(id = %id, "relay queue full; message stored but not relayed or forwarded");
            }
            Ok(id)
        })
    }
}

async fn work(
    store: Store,
    mut rx: mpsc::Receiver<Job>,
    relay: Option<RelayConfig>,
    forward: Option<ForwardConfig>,
) {
    while let Some(job) = rx.recv().await {
        let raw = match store.raw(&job.id).await {
            Ok(raw) if job.strip_bcc => rewrite::remove(&raw, "Bcc"),
            Ok(raw) => raw,
            Err(e) => {
                tracing::debug!(id = %job.id, error = %e, "message gone before it was relayed");
                continue;
            }
        };
        if let Some(r) = &relay {
            let to: Vec<String> = job
                .rcpt_to
                .iter()
                .filter(|t| !r.blocked.as_ref().is_some_and(|re| re.is_match(t)))
                .filter(|t| r.all || r.matching.as_ref().is_some_and(|re| re.is_match(t)))
                .cloned()
                .collect();
            if !to.is_empty() {
                let from = r.return_path.as_deref().unwrap_or(&job.mail_from);
                let sent = send(
                    &r.target,
                    r.override_from.as_deref(),
                    from,
                    &to,
                    raw.clone(),
                    r.forward_smtp_errors,
                )
                .await;
                match sent {
                    Ok(()) => {
                        tracing::info!(id = %job.id, to = %to.join(", "), server = %format!("{}:{}", r.target.host, r.target.port), "auto-relayed")
                    }
                    Err(e) => {
                        tracing::error!(id = %job.id, error = %e, "auto-relay failed; the message stays stored")
                    }
                }
            }
        }
        if let Some(f) = &forward {
            let from = f.return_path.as_deref().unwrap_or(&job.mail_from);
            let sent = send(
                &f.target,
                f.override_from.as_deref(),
                from,
                &f.to,
                raw,
                f.forward_smtp_errors,
            )
            .await;
            match sent {
                Ok(()) => tracing::info!(id = %job.id, to = %f.to.join(", "), "forwarded"),
                Err(e) => {
                    tracing::error!(id = %job.id, error = %e, "forwarding failed; the message stays stored")
                }
            }
        }
    }
}
