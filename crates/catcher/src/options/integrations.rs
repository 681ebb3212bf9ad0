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

/// Declares the options of an SMTP server the catcher sends to (relay or
/// forwarding): the settings Mailpit's relay and forward configs share
/// (`MP_SMTP_<KIND>_HOST` … `_FWD_SMTP_ERRORS`, hidden flags
/// `--smtp-<kind>-…`), then the kind's own fields, and `settings()`, which
/// reads them (or the kind's YAML file, which replaces the variables, as
/// Mailpit reads it over them) into one [`crate::relay::Settings`].
macro_rules! smtp_server_options {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            kind: $id:literal, $flag:literal, $env:literal;
            $($own:tt)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default)]
        #[cfg_attr(feature = "cli", derive(clap::Args))]
        pub struct $name {
            /// YAML file configuring the server (replaces the variables).
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_config"), long = concat!("smtp-", $flag, "-config"), env = concat!("MP_SMTP_", $env, "_CONFIG")))]
            pub config: Option<std::path::PathBuf>,
            /// Setting without a file: the server's host.
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_host"), long = concat!("smtp-", $flag, "-host"), env = concat!("MP_SMTP_", $env, "_HOST"), hide = true))]
            pub host: Option<String>,
            /// Setting without a file: its port.
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_port"), long = concat!("smtp-", $flag, "-port"), env = concat!("MP_SMTP_", $env, "_PORT"), hide = true))]
            pub port: Option<u16>,
            /// Setting without a file: use STARTTLS.
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_starttls"), long = concat!("smtp-", $flag, "-starttls"), env = concat!("MP_SMTP_", $env, "_STARTTLS"), value_parser = mailpit_bool, hide = true))]
            pub starttls: bool,
            /// Setting without a file: use implicit TLS.
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_tls"), long = concat!("smtp-", $flag, "-tls"), env = concat!("MP_SMTP_", $env, "_TLS"), value_parser = mailpit_bool, hide = true))]
            pub tls: bool,
            /// Setting without a file: skip certificate checks.
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_allow_insecure"), long = concat!("smtp-", $flag, "-allow-insecure"), env = concat!("MP_SMTP_", $env, "_ALLOW_INSECURE"), value_parser = mailpit_bool, hide = true))]
            pub allow_insecure: bool,
            /// Setting without a file: `none`, `plain`, `login` or `cram-md5`.
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_auth"), long = concat!("smtp-", $flag, "-auth"), env = concat!("MP_SMTP_", $env, "_AUTH"), hide = true, hide_env_values = true))]
            pub auth: Option<String>,
            /// Setting without a file: user name.
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_username"), long = concat!("smtp-", $flag, "-username"), env = concat!("MP_SMTP_", $env, "_USERNAME"), hide = true))]
            pub username: Option<String>,
            /// Setting without a file: password (plain, login).
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_password"), long = concat!("smtp-", $flag, "-password"), env = concat!("MP_SMTP_", $env, "_PASSWORD"), hide = true, hide_env_values = true))]
            pub password: Option<String>,
            /// Setting without a file: secret (cram-md5).
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_secret"), long = concat!("smtp-", $flag, "-secret"), env = concat!("MP_SMTP_", $env, "_SECRET"), hide = true, hide_env_values = true))]
            pub secret: Option<String>,
            /// Setting without a file: bounce address to use.
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_return_path"), long = concat!("smtp-", $flag, "-return-path"), env = concat!("MP_SMTP_", $env, "_RETURN_PATH"), hide = true))]
            pub return_path: Option<String>,
            /// Setting without a file: From address to use.
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_override_from"), long = concat!("smtp-", $flag, "-override-from"), env = concat!("MP_SMTP_", $env, "_OVERRIDE_FROM"), hide = true))]
            pub override_from: Option<String>,
            /// Setting without a file: pass the server's SMTP errors back to the client.
            #[cfg_attr(feature = "cli", arg(id = concat!("smtp_", $id, "_fwd_smtp_errors"), long = concat!("smtp-", $flag, "-fwd-smtp-errors"), env = concat!("MP_SMTP_", $env, "_FWD_SMTP_ERRORS"), value_parser = mailpit_bool, hide = true))]
            pub fwd_smtp_errors: bool,
            $($own)*
        }

        impl $name {
            /// The server's settings: the YAML file's, or the variables'
            /// (the shared ones, then the kind's own by `own`).
            fn settings(
                &self,
                own: impl FnOnce(&Self, crate::relay::Settings) -> crate::relay::Settings,
            ) -> Result<crate::relay::Settings, crate::Error> {
                if let Some(path) = &self.config {
                    return crate::relay::Settings::from_yaml_file(path).map_err(|e| {
                        crate::Error::Config(format!(concat!("MP_SMTP_", $env, "_CONFIG: {}"), e))
                    });
                }
                let shared = crate::relay::Settings {
                    host: self.host.clone().unwrap_or_default(),
                    port: self.port.unwrap_or(0),
                    starttls: self.starttls,
                    tls: self.tls,
                    allow_insecure: self.allow_insecure,
                    auth: self.auth.clone().unwrap_or_default(),
                    username: self.username.clone().unwrap_or_default(),
                    password: self.password.clone().unwrap_or_default(),
                    secret: self.secret.clone().unwrap_or_default(),
                    return_path: self.return_path.clone().unwrap_or_default(),
                    override_from: self.override_from.clone().unwrap_or_default(),
                    forward_smtp_errors: self.fwd_smtp_errors,
                    ..Default::default()
                };
                Ok(own(self, shared))
            }
        }
    };
}

smtp_server_options! {
    /// Mailpit's SMTP relay (message release): a config file or
    /// `MP_SMTP_RELAY_*` settings (env-only in Mailpit; hidden flags here).
    pub struct RelayOptions {
        kind: "relay", "relay", "RELAY";
        /// Auto-relay every new message through the relay server.
        #[cfg_attr(feature = "cli", arg(id = "smtp_relay_all", long = "smtp-relay-all", env = "MP_SMTP_RELAY_ALL", value_parser = mailpit_bool))]
        pub all: bool,
        /// Auto-relay new messages to recipients matching this regex.
        #[cfg_attr(feature = "cli", arg(id = "smtp_relay_matching", long = "smtp-relay-matching", env = "MP_SMTP_RELAY_MATCHING"))]
        pub matching: Option<String>,
        /// Relay setting without a file: regex recipients must match to be relayed.
        #[cfg_attr(feature = "cli", arg(id = "smtp_relay_allowed_recipients", long = "smtp-relay-allowed-recipients", env = "MP_SMTP_RELAY_ALLOWED_RECIPIENTS", hide = true))]
        pub allowed_recipients: Option<String>,
        /// Relay setting without a file: regex of recipients never relayed.
        #[cfg_attr(feature = "cli", arg(id = "smtp_relay_blocked_recipients", long = "smtp-relay-blocked-recipients", env = "MP_SMTP_RELAY_BLOCKED_RECIPIENTS", hide = true))]
        pub blocked_recipients: Option<String>,
        /// Relay setting without a file: keep the original Message-ID.
        #[cfg_attr(feature = "cli", arg(id = "smtp_relay_preserve_message_ids", long = "smtp-relay-preserve-message-ids", env = "MP_SMTP_RELAY_PRESERVE_MESSAGE_IDS", value_parser = mailpit_bool, hide = true))]
        pub preserve_message_ids: bool,
    }
}

smtp_server_options! {
    /// Mailpit's SMTP forwarding: a config file or `MP_SMTP_FORWARD_*`
    /// settings (env-only in Mailpit; hidden flags here).
    pub struct ForwardOptions {
        kind: "forward", "forward", "FORWARD";
        /// Forward setting without a file: comma-separated addresses every message is forwarded to.
        #[cfg_attr(feature = "cli", arg(id = "smtp_forward_to", long = "smtp-forward-to", env = "MP_SMTP_FORWARD_TO", hide = true))]
        pub to: Option<String>,
    }
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
        let p = self.pop3;
        let users = super::users_of("MP_POP3_AUTH", p.auth.as_deref(), p.auth_file.as_deref())?;
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
        let relay_settings = r.settings(|r, shared| crate::relay::Settings {
            allowed_recipients: r.allowed_recipients.clone().unwrap_or_default(),
            blocked_recipients: r.blocked_recipients.clone().unwrap_or_default(),
            preserve_message_ids: r.preserve_message_ids,
            ..shared
        })?;
        if r.all && r.matching.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(Error::Config(
                "set MP_SMTP_RELAY_ALL or MP_SMTP_RELAY_MATCHING, not both".into(),
            ));
        }
        config.relay =
            crate::relay::RelayConfig::new(&relay_settings, r.all, r.matching.as_deref())
                .map_err(|e| Error::Config(e.to_string()))?;

        let forward_settings = self.forward.settings(|f, shared| crate::relay::Settings {
            to: f.to.clone().unwrap_or_default(),
            ..shared
        })?;
        config.forward = crate::relay::ForwardConfig::new(&forward_settings)
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(())
    }
}
