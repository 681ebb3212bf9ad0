//! The catcher's options as `mailsafe serve` takes them: one flag and one
//! environment variable each, named after Mailpit's (`MP_*`) where Mailpit
//! has the setting, `MAILSAFE_*` where it is ours. [`Options::into_config`]
//! maps them onto [`Config`], which is what the library runs on.
//!
//! The clap derive is behind the `cli` feature, so the library builds
//! without clap; the binary flattens [`Options`] into its `serve` flags.

use std::path::PathBuf;

use crate::Config;
use crate::auth::{AuthPolicy, Credentials};
use crate::error::Error;

/// The catcher's flags and `MP_*`/`MAILSAFE_*` variables.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Options {
    /// SQLite database file of the catcher.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_DATABASE", default_value = "mailsafe.db")
    )]
    pub db: PathBuf,
    /// SMTP listen address.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_SMTP_BIND_ADDR", default_value = "0.0.0.0:1025")
    )]
    pub smtp: String,
    /// HTTP (API and web UI) listen address.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_UI_BIND_ADDR", default_value = "0.0.0.0:8025")
    )]
    pub listen: String,
    /// Tenant ID: prefixes every table so several catchers can share a db.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_TENANT_ID", default_value = ""))]
    pub tenant_id: String,
    /// Keep at most this many messages, pruning the oldest (0 = unlimited).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_MAX_MESSAGES", default_value_t = 500)
    )]
    pub max_messages: u64,
    /// Prune messages older than this (e.g. `36h`, `7d`).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_MAX_AGE", value_parser = humantime::parse_duration))]
    pub max_age: Option<std::time::Duration>,
    /// Largest accepted message, in MB.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_MAX_MESSAGE_SIZE", default_value_t = 50)
    )]
    pub max_message_size: usize,
    /// Most recipients per message; more are refused with 452.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_SMTP_MAX_RECIPIENTS", default_value_t = 100)
    )]
    pub smtp_max_recipients: usize,
    /// SMTP AUTH users, space-separated `user:password` pairs (passwords may
    /// be bcrypt hashes). Makes authentication mandatory.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_SMTP_AUTH", hide_env_values = true)
    )]
    pub smtp_auth: Option<String>,
    /// File of `user:password` lines (htpasswd style, bcrypt allowed).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_AUTH_FILE"))]
    pub smtp_auth_file: Option<PathBuf>,
    /// Offer SMTP AUTH and accept any username and password.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_AUTH_ACCEPT_ANY"))]
    pub smtp_auth_accept_any: bool,
    /// Allow AUTH PLAIN/LOGIN on connections without TLS.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_AUTH_ALLOW_INSECURE"))]
    pub smtp_auth_allow_insecure: bool,
    /// PEM certificate for SMTP STARTTLS (or implicit TLS).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_TLS_CERT"))]
    pub smtp_tls_cert: Option<PathBuf>,
    /// PEM private key for SMTP TLS.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_TLS_KEY"))]
    pub smtp_tls_key: Option<PathBuf>,
    /// Refuse MAIL until the client has issued STARTTLS.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_REQUIRE_STARTTLS"))]
    pub smtp_require_starttls: bool,
    /// Implicit TLS (SMTPS): TLS from the first byte, as Mailpit's
    /// `MP_SMTP_REQUIRE_TLS`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_REQUIRE_TLS"))]
    pub smtp_require_tls: bool,
    /// Same as `--smtp-require-tls`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_TLS_IMPLICIT"))]
    pub smtp_tls_implicit: bool,
    /// Most concurrent SMTP connections; more are refused with 421.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MAILSAFE_SMTP_MAX_CONNECTIONS", default_value_t = 1000)
    )]
    pub smtp_max_connections: usize,
    /// Close SMTP connections that make no progress for this long.
    #[cfg_attr(feature = "cli", arg(long, env = "MAILSAFE_SMTP_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration))]
    pub smtp_idle_timeout: std::time::Duration,
    /// Message content (MB) all SMTP sessions may hold in memory at once;
    /// a message that would exceed it gets 452 4.3.1 (the client retries).
    /// At least --max-message-size; 0 = no cap.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MAILSAFE_SMTP_MAX_DATA_MEMORY", default_value_t = 256)
    )]
    pub smtp_max_data_memory: usize,
    /// PEM certificate: serve the web UI and API over HTTPS (with
    /// --ui-tls-key).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_UI_TLS_CERT", requires = "ui_tls_key")
    )]
    pub ui_tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_UI_TLS_KEY", requires = "ui_tls_cert")
    )]
    pub ui_tls_key: Option<PathBuf>,
    /// Label shown in the web UI.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_LABEL", default_value = ""))]
    pub label: String,
    /// Basic auth for the web UI and API: space-separated `user:password`
    /// pairs.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_UI_AUTH", hide_env_values = true))]
    pub ui_auth: Option<String>,
    /// Basic auth users from an htpasswd file (bcrypt or plain).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_UI_AUTH_FILE"))]
    pub ui_auth_file: Option<PathBuf>,
    /// Close HTTP connections that have not sent a complete request head
    /// this long after connecting or after their last response.
    #[cfg_attr(feature = "cli", arg(long, env = "MAILSAFE_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration))]
    pub http_header_timeout: std::time::Duration,
    /// Most open HTTP connections (websockets included); more get 503.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MAILSAFE_HTTP_MAX_CONNECTIONS", default_value_t = 1024)
    )]
    pub http_max_connections: usize,
    /// Most open HTTP connections from one IP address; more get 503.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "MAILSAFE_HTTP_MAX_CONNECTIONS_PER_IP",
            default_value_t = 256
        )
    )]
    pub http_max_connections_per_ip: usize,
    /// Browser origins allowed to call the API besides the UI's own,
    /// comma-separated (`*` for any), as Mailpit's `MP_API_CORS`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_API_CORS", default_value = ""))]
    pub api_cors: String,
    /// Host names accepted in the `Host` header besides localhost names and
    /// loopback IPs, comma-separated (`*` for any). A catcher bound to a
    /// loopback address refuses other hosts (DNS rebinding protection).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MAILSAFE_HTTP_ALLOWED_HOSTS", value_delimiter = ',')
    )]
    pub http_allowed_hosts: Vec<String>,
}

impl Options {
    /// Maps the options onto the catcher's config: reads credential files,
    /// converts MB to bytes. `shutdown_timeout` stays at its default: the
    /// caller sets it from its own shutdown budget.
    pub fn into_config(self) -> Result<Config, Error> {
        let mut users = Credentials::default();
        if let Some(list) = &self.smtp_auth {
            users.extend(Credentials::from_pairs(list, "MP_SMTP_AUTH")?);
        }
        if let Some(path) = &self.smtp_auth_file {
            users.extend(Credentials::from_file(path)?);
        }
        let smtp_auth = if !users.is_empty() {
            AuthPolicy::Users(std::sync::Arc::new(users))
        } else if self.smtp_auth_accept_any {
            AuthPolicy::AcceptAny
        } else if self.smtp_auth.is_some() || self.smtp_auth_file.is_some() {
            return Err(Error::Config(
                "SMTP auth is configured but lists no users".into(),
            ));
        } else {
            AuthPolicy::None
        };
        let ui_auth = match (&self.ui_auth, &self.ui_auth_file) {
            (None, None) => None,
            (Some(pairs), None) => Some(Credentials::from_pairs(pairs, "MP_UI_AUTH")?),
            (None, Some(path)) => Some(Credentials::from_file(path)?),
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "set MP_UI_AUTH or MP_UI_AUTH_FILE, not both".into(),
                ));
            }
        };
        let max_message_size = self
            .max_message_size
            .checked_mul(1024 * 1024)
            .ok_or_else(|| Error::Config("--max-message-size is too large".into()))?;
        let smtp_max_data_memory = self
            .smtp_max_data_memory
            .checked_mul(1024 * 1024)
            .ok_or_else(|| Error::Config("--smtp-max-data-memory is too large".into()))?;
        Ok(Config {
            database: self.db,
            smtp_bind: self.smtp,
            http_bind: self.listen,
            tenant: self.tenant_id,
            max_messages: self.max_messages,
            max_age: self.max_age,
            max_message_size,
            smtp_max_recipients: self.smtp_max_recipients,
            smtp_auth,
            smtp_auth_allow_insecure: self.smtp_auth_allow_insecure,
            smtp_tls_cert: self.smtp_tls_cert,
            smtp_tls_key: self.smtp_tls_key,
            smtp_require_starttls: self.smtp_require_starttls,
            smtp_implicit_tls: self.smtp_require_tls || self.smtp_tls_implicit,
            smtp_max_connections: self.smtp_max_connections,
            smtp_idle_timeout: self.smtp_idle_timeout,
            smtp_max_data_memory,
            ui_tls_cert: self.ui_tls_cert,
            ui_tls_key: self.ui_tls_key,
            label: self.label,
            ui_auth: ui_auth.map(|c| c.into_basic_auth()),
            http_limits: crate::api::HttpLimits {
                header_read_timeout: self.http_header_timeout,
                max_connections: self.http_max_connections,
                max_connections_per_ip: self.http_max_connections_per_ip,
                ..Default::default()
            },
            origins: crate::api::OriginPolicy {
                cors: self.api_cors,
                allowed_hosts: self.http_allowed_hosts,
            },
            ..Config::default()
        })
    }
}
