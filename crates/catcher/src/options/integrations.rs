//! Options of Mailpit's integrations: relay (release), forwarding, POP3 and
//! webhooks. Parsed with Mailpit's names and syntax, but not implemented
//! yet: [`Integrations::unsupported`] names every one that is set, and the
//! catcher refuses to start on it rather than ignore it. Each group's
//! refusal goes once its feature is built.

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
    /// Most webhook requests per second (0 = no limit).
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
    /// Pushes the name of every option that is set (a non-default value)
    /// onto `out`: none of them is implemented yet.
    pub fn unsupported(&self, out: &mut Vec<&'static str>) {
        let r = &self.relay;
        let relay_set = r.config.is_some()
            || r.all
            || r.matching.is_some()
            || r.host.is_some()
            || r.port.is_some()
            || r.starttls
            || r.tls
            || r.allow_insecure
            || r.auth.is_some()
            || r.username.is_some()
            || r.password.is_some()
            || r.secret.is_some()
            || r.return_path.is_some()
            || r.override_from.is_some()
            || r.allowed_recipients.is_some()
            || r.blocked_recipients.is_some()
            || r.preserve_message_ids
            || r.fwd_smtp_errors;
        if relay_set {
            out.push("SMTP relay (MP_SMTP_RELAY_*, --smtp-relay-*)");
        }
        let f = &self.forward;
        let forward_set = f.config.is_some()
            || f.to.is_some()
            || f.host.is_some()
            || f.port.is_some()
            || f.starttls
            || f.tls
            || f.allow_insecure
            || f.auth.is_some()
            || f.username.is_some()
            || f.password.is_some()
            || f.secret.is_some()
            || f.return_path.is_some()
            || f.override_from.is_some()
            || f.fwd_smtp_errors;
        if forward_set {
            out.push("SMTP forwarding (MP_SMTP_FORWARD_*, --smtp-forward-config)");
        }
        let p = &self.pop3;
        if p.auth.is_some()
            || p.auth_file.is_some()
            || p.tls_cert.is_some()
            || p.tls_key.is_some()
            || p.bind.is_some()
        {
            out.push("POP3 (MP_POP3_*, --pop3*)");
        }
        if self.webhook.url.is_some() {
            out.push("webhooks (MP_WEBHOOK_URL, --webhook-url)");
        }
    }
}
