//! Options of Mailpit's integrations: relay (release), forwarding, POP3 and
//! webhooks, with Mailpit's names and syntax; [`Integrations::apply`] maps
//! them onto the config (`crate::relay`, `crate::pop3`, `crate::webhook`).

#[cfg(feature = "cli")]
use super::value::mailpit_bool;

/// Relay and forwarding, POP3 and webhook options.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Integrations {
    /// SMTP relay (`MP_SMTP_RELAY_*`).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub relay: RelayOptions,
    /// SMTP forwarding (`MP_SMTP_FORWARD_*`).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub forward: ForwardOptions,
    /// POP3 server (`MP_POP3_*`).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub pop3: Pop3Options,
    /// Webhooks (`MP_WEBHOOK_*`).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub webhook: WebhookOptions,
}

/// Mailpit's SMTP relay: a config file or `MP_SMTP_RELAY_*` settings
/// (env-only in Mailpit; hidden flags here).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RelayOptions {
    /// YAML file configuring the relay server (enables message release).
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_config",
            long = "smtp-relay-config",
            env = "MP_SMTP_RELAY_CONFIG"
        )
    )]
    pub config: Option<std::path::PathBuf>,
    /// Auto-relay every new message through the relay server.
    #[cfg_attr(feature = "cli", arg(id = "smtp_relay_all", long = "smtp-relay-all", env = "MP_SMTP_RELAY_ALL", value_parser = mailpit_bool))]
    pub all: bool,
    /// Auto-relay new messages to recipients matching this regex.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_matching",
            long = "smtp-relay-matching",
            env = "MP_SMTP_RELAY_MATCHING"
        )
    )]
    pub matching: Option<String>,
    /// Relay setting without a file: the relay server's host.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_host",
            long = "smtp-relay-host",
            env = "MP_SMTP_RELAY_HOST",
            hide = true
        )
    )]
    pub host: Option<String>,
    /// Relay setting without a file: its port.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_port",
            long = "smtp-relay-port",
            env = "MP_SMTP_RELAY_PORT",
            hide = true
        )
    )]
    pub port: Option<u16>,
    /// Relay setting without a file: use STARTTLS.
    #[cfg_attr(feature = "cli", arg(id = "smtp_relay_starttls", long = "smtp-relay-starttls", env = "MP_SMTP_RELAY_STARTTLS", value_parser = mailpit_bool, hide = true))]
    pub starttls: bool,
    /// Relay setting without a file: use implicit TLS.
    #[cfg_attr(feature = "cli", arg(id = "smtp_relay_tls", long = "smtp-relay-tls", env = "MP_SMTP_RELAY_TLS", value_parser = mailpit_bool, hide = true))]
    pub tls: bool,
    /// Relay setting without a file: skip certificate checks.
    #[cfg_attr(feature = "cli", arg(id = "smtp_relay_allow_insecure", long = "smtp-relay-allow-insecure", env = "MP_SMTP_RELAY_ALLOW_INSECURE", value_parser = mailpit_bool, hide = true))]
    pub allow_insecure: bool,
    /// Relay setting without a file: `none`, `plain`, `login` or `cram-md5`.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_auth",
            long = "smtp-relay-auth",
            env = "MP_SMTP_RELAY_AUTH",
            hide = true,
            hide_env_values = true
        )
    )]
    pub auth: Option<String>,
    /// Relay setting without a file: user name.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_username",
            long = "smtp-relay-username",
            env = "MP_SMTP_RELAY_USERNAME",
            hide = true
        )
    )]
    pub username: Option<String>,
    /// Relay setting without a file: password (plain, login).
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_password",
            long = "smtp-relay-password",
            env = "MP_SMTP_RELAY_PASSWORD",
            hide = true,
            hide_env_values = true
        )
    )]
    pub password: Option<String>,
    /// Relay setting without a file: secret (cram-md5).
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_secret",
            long = "smtp-relay-secret",
            env = "MP_SMTP_RELAY_SECRET",
            hide = true,
            hide_env_values = true
        )
    )]
    pub secret: Option<String>,
    /// Relay setting without a file: bounce address to use.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_return_path",
            long = "smtp-relay-return-path",
            env = "MP_SMTP_RELAY_RETURN_PATH",
            hide = true
        )
    )]
    pub return_path: Option<String>,
    /// Relay setting without a file: From address to use.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_override_from",
            long = "smtp-relay-override-from",
            env = "MP_SMTP_RELAY_OVERRIDE_FROM",
            hide = true
        )
    )]
    pub override_from: Option<String>,
    /// Relay setting without a file: regex recipients must match to be relayed.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_allowed_recipients",
            long = "smtp-relay-allowed-recipients",
            env = "MP_SMTP_RELAY_ALLOWED_RECIPIENTS",
            hide = true
        )
    )]
    pub allowed_recipients: Option<String>,
    /// Relay setting without a file: regex of recipients never relayed.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_relay_blocked_recipients",
            long = "smtp-relay-blocked-recipients",
            env = "MP_SMTP_RELAY_BLOCKED_RECIPIENTS",
            hide = true
        )
    )]
    pub blocked_recipients: Option<String>,
    /// Relay setting without a file: keep the original Message-ID.
    #[cfg_attr(feature = "cli", arg(id = "smtp_relay_preserve_message_ids", long = "smtp-relay-preserve-message-ids", env = "MP_SMTP_RELAY_PRESERVE_MESSAGE_IDS", value_parser = mailpit_bool, hide = true))]
    pub preserve_message_ids: bool,
    /// Relay setting without a file: pass the relay's SMTP errors back to the client.
    #[cfg_attr(feature = "cli", arg(id = "smtp_relay_fwd_smtp_errors", long = "smtp-relay-fwd-smtp-errors", env = "MP_SMTP_RELAY_FWD_SMTP_ERRORS", value_parser = mailpit_bool, hide = true))]
    pub fwd_smtp_errors: bool,
}

/// Mailpit's SMTP forwarding: a config file or `MP_SMTP_FORWARD_*`
/// settings (env-only in Mailpit; hidden flags here).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ForwardOptions {
    /// YAML file configuring a server every message is forwarded to.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_forward_config",
            long = "smtp-forward-config",
            env = "MP_SMTP_FORWARD_CONFIG"
        )
    )]
    pub config: Option<std::path::PathBuf>,
    /// Forward setting without a file: the relay server's host.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_forward_host",
            long = "smtp-forward-host",
            env = "MP_SMTP_FORWARD_HOST",
            hide = true
        )
    )]
    pub host: Option<String>,
    /// Forward setting without a file: its port.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_forward_port",
            long = "smtp-forward-port",
            env = "MP_SMTP_FORWARD_PORT",
            hide = true
        )
    )]
    pub port: Option<u16>,
    /// Forward setting without a file: use STARTTLS.
    #[cfg_attr(feature = "cli", arg(id = "smtp_forward_starttls", long = "smtp-forward-starttls", env = "MP_SMTP_FORWARD_STARTTLS", value_parser = mailpit_bool, hide = true))]
    pub starttls: bool,
    /// Forward setting without a file: use implicit TLS.
    #[cfg_attr(feature = "cli", arg(id = "smtp_forward_tls", long = "smtp-forward-tls", env = "MP_SMTP_FORWARD_TLS", value_parser = mailpit_bool, hide = true))]
    pub tls: bool,
    /// Forward setting without a file: skip certificate checks.
    #[cfg_attr(feature = "cli", arg(id = "smtp_forward_allow_insecure", long = "smtp-forward-allow-insecure", env = "MP_SMTP_FORWARD_ALLOW_INSECURE", value_parser = mailpit_bool, hide = true))]
    pub allow_insecure: bool,
    /// Forward setting without a file: `none`, `plain`, `login` or `cram-md5`.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_forward_auth",
            long = "smtp-forward-auth",
            env = "MP_SMTP_FORWARD_AUTH",
            hide = true,
            hide_env_values = true
        )
    )]
    pub auth: Option<String>,
    /// Forward setting without a file: user name.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_forward_username",
            long = "smtp-forward-username",
            env = "MP_SMTP_FORWARD_USERNAME",
            hide = true
        )
    )]
    pub username: Option<String>,
    /// Forward setting without a file: password (plain, login).
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_forward_password",
            long = "smtp-forward-password",
            env = "MP_SMTP_FORWARD_PASSWORD",
            hide = true,
            hide_env_values = true
        )
    )]
    pub password: Option<String>,
    /// Forward setting without a file: secret (cram-md5).
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_forward_secret",
            long = "smtp-forward-secret",
            env = "MP_SMTP_FORWARD_SECRET",
            hide = true,
            hide_env_values = true
        )
    )]
    pub secret: Option<String>,
    /// Forward setting without a file: bounce address to use.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_forward_return_path",
            long = "smtp-forward-return-path",
            env = "MP_SMTP_FORWARD_RETURN_PATH",
            hide = true
        )
    )]
    pub return_path: Option<String>,
    /// Forward setting without a file: From address to use.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_forward_override_from",
            long = "smtp-forward-override-from",
            env = "MP_SMTP_FORWARD_OVERRIDE_FROM",
            hide = true
        )
    )]
    pub override_from: Option<String>,
    /// Forward setting without a file: comma-separated addresses every message is forwarded to.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "smtp_forward_to",
            long = "smtp-forward-to",
            env = "MP_SMTP_FORWARD_TO",
            hide = true
        )
    )]
    pub to: Option<String>,
    /// Forward setting without a file: pass the forward server's SMTP errors back to the client.
    #[cfg_attr(feature = "cli", arg(id = "smtp_forward_fwd_smtp_errors", long = "smtp-forward-fwd-smtp-errors", env = "MP_SMTP_FORWARD_FWD_SMTP_ERRORS", value_parser = mailpit_bool, hide = true))]
    pub fwd_smtp_errors: bool,
}

/// Mailpit's POP3 server.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Pop3Options {
    /// POP3 listen address (Mailpit's default `[::]:1110`; the server runs
    /// when POP3 users are set).
    #[cfg_attr(
        feature = "cli",
        arg(id = "pop3", long = "pop3", env = "MP_POP3_BIND_ADDR")
    )]
    pub bind: Option<String>,
    /// POP3 users, space-separated `user:password` pairs.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "pop3_auth",
            long = "pop3-auth",
            env = "MP_POP3_AUTH",
            hide_env_values = true
        )
    )]
    pub auth: Option<String>,
    /// POP3 users from an htpasswd-style file (enables POP3).
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "pop3_auth_file",
            long = "pop3-auth-file",
            env = "MP_POP3_AUTH_FILE"
        )
    )]
    pub auth_file: Option<std::path::PathBuf>,
    /// PEM certificate for POP3 TLS.
    #[cfg_attr(
        feature = "cli",
        arg(id = "pop3_tls_cert", long = "pop3-tls-cert", env = "MP_POP3_TLS_CERT")
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for POP3 TLS.
    #[cfg_attr(
        feature = "cli",
        arg(id = "pop3_tls_key", long = "pop3-tls-key", env = "MP_POP3_TLS_KEY")
    )]
    pub tls_key: Option<std::path::PathBuf>,
    /// With a POP3 certificate, offer STLS on a plain listener instead of
    /// Mailpit's implicit TLS (POP3S).
    #[cfg_attr(feature = "cli", arg(id = "pop3_stls", long = "pop3-stls", env = "MAILSAFE_POP3_STLS", value_parser = mailpit_bool))]
    pub stls: bool,
}

/// Mailpit's webhook.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct WebhookOptions {
    /// POST a summary of every new message to this URL.
    #[cfg_attr(
        feature = "cli",
        arg(id = "webhook_url", long = "webhook-url", env = "MP_WEBHOOK_URL")
    )]
    pub url: Option<String>,
    /// Seconds after a webhook request in which new messages send none
    /// (Mailpit's `rate.Sometimes` interval; 0 = one request per message).
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "webhook_limit",
            long = "webhook-limit",
            env = "MP_WEBHOOK_LIMIT",
            default_value = "1"
        )
    )]
    pub limit: u32,
    /// Seconds to wait before each webhook request.
    #[cfg_attr(
        feature = "cli",
        arg(
            id = "webhook_delay",
            long = "webhook-delay",
            env = "MP_WEBHOOK_DELAY",
            default_value = "0"
        )
    )]
    pub delay: u32,
}

impl Integrations {
    /// Sets the integrations' part of `config`: POP3 users, TLS and
    /// address, the webhook, the relay (YAML file or `MP_SMTP_RELAY_*`;
    /// a file replaces the variables, as Mailpit reads it over them) and
    /// forwarding. `label` is `MP_LABEL` (webhooks send it).
    pub fn apply(self, config: &mut crate::Config) -> Result<(), crate::Error> {
        use crate::Error;
        use crate::auth::Credentials;
        let p = self.pop3;
        let users = match (&p.auth, &p.auth_file) {
            (None, None) => None,
            (Some(pairs), None) => Some(Credentials::from_pairs(pairs, "MP_POP3_AUTH")?),
            (None, Some(path)) => Some(Credentials::from_file(path)?),
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "set MP_POP3_AUTH or MP_POP3_AUTH_FILE, not both".into(),
                ));
            }
        };
        if users.is_none() && (p.tls_cert.is_some() || p.tls_key.is_some()) {
            tracing::warn!("MP_POP3_TLS_* set without POP3 users: POP3 stays off (as in Mailpit)");
        }
        config.pop3_auth = users.map(std::sync::Arc::new);
        if let Some(bind) = p.bind {
            config.pop3_bind = bind;
        }
        config.pop3_tls_cert = p.tls_cert;
        config.pop3_tls_key = p.tls_key;
        config.pop3_stls = p.stls;

        let w = self.webhook;
        if let Some(url) = w.url.filter(|u| !u.is_empty()) {
            let url = crate::webhook::WebhookConfig::parse_url(&url).map_err(Error::Config)?;
            let mut hook = crate::webhook::WebhookConfig::new(url);
            hook.interval = std::time::Duration::from_secs(w.limit.into());
            hook.delay = std::time::Duration::from_secs(w.delay.into());
            config.webhook = Some(hook);
        }

        let r = self.relay;
        let relay_settings = match &r.config {
            Some(path) => crate::relay::Settings::from_yaml_file(path)
                .map_err(|e| Error::Config(format!("MP_SMTP_RELAY_CONFIG: {e}")))?,
            None => crate::relay::Settings {
                host: r.host.unwrap_or_default(),
                port: r.port.unwrap_or(0),
                starttls: r.starttls,
                tls: r.tls,
                allow_insecure: r.allow_insecure,
                auth: r.auth.unwrap_or_default(),
                username: r.username.unwrap_or_default(),
                password: r.password.unwrap_or_default(),
                secret: r.secret.unwrap_or_default(),
                return_path: r.return_path.unwrap_or_default(),
                override_from: r.override_from.unwrap_or_default(),
                allowed_recipients: r.allowed_recipients.unwrap_or_default(),
                blocked_recipients: r.blocked_recipients.unwrap_or_default(),
                preserve_message_ids: r.preserve_message_ids,
                forward_smtp_errors: r.fwd_smtp_errors,
                ..Default::default()
            },
        };
        if r.all && r.matching.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(Error::Config(
                "set MP_SMTP_RELAY_ALL or MP_SMTP_RELAY_MATCHING, not both".into(),
            ));
        }
        config.relay =
            crate::relay::RelayConfig::new(&relay_settings, r.all, r.matching.as_deref())
                .map_err(|e| Error::Config(e.to_string()))?;

        let f = self.forward;
        let forward_settings = match &f.config {
            Some(path) => crate::relay::Settings::from_yaml_file(path)
                .map_err(|e| Error::Config(format!("MP_SMTP_FORWARD_CONFIG: {e}")))?,
            None => crate::relay::Settings {
                host: f.host.unwrap_or_default(),
                port: f.port.unwrap_or(0),
                starttls: f.starttls,
                tls: f.tls,
                allow_insecure: f.allow_insecure,
                auth: f.auth.unwrap_or_default(),
                username: f.username.unwrap_or_default(),
                password: f.password.unwrap_or_default(),
                secret: f.secret.unwrap_or_default(),
                return_path: f.return_path.unwrap_or_default(),
                override_from: f.override_from.unwrap_or_default(),
                to: f.to.unwrap_or_default(),
                forward_smtp_errors: f.fwd_smtp_errors,
                ..Default::default()
            },
        };
        config.forward = crate::relay::ForwardConfig::new(&forward_settings)
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(())
    }
}
