//! The catcher's options as `mailsafe serve` takes them: one flag and one
//! environment variable each, named after Mailpit's (`MP_*`) where Mailpit
//! has the setting, `MAILSAFE_*` where it is ours. [`Options::into_config`]
//! maps them onto [`Config`], which is what the library runs on.
//!
//! Every Mailpit option exists with Mailpit's flag, `MP_*` name, value
//! syntax (see [`value`]) and default; deprecated Mailpit names are
//! accepted with a warning. An option with no meaning here (the version
//! check) is a documented no-op; one not implemented yet stops the start
//! with [`Error::NotImplemented`] naming it, never silently ignored. The
//! README's "Mailpit options" table lists each one's status.
//!
//! The clap derive is behind the `cli` feature, so the library builds
//! without clap; the binary flattens [`Options`] into its `serve` flags.

pub mod integrations;
pub mod value;

use std::path::PathBuf;

use crate::Config;
use crate::auth::{AuthPolicy, Credentials};
use crate::error::Error;
pub use integrations::Integrations;
#[cfg(feature = "cli")]
use value::mailpit_bool;

/// The catcher's flags and `MP_*`/`MAILSAFE_*` variables.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Options {
    // ---- General (Mailpit) ----
    /// SQLite database file of the catcher (a directory gets `mailpit.db`
    /// inside it, as in Mailpit).
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "database",
            short = 'd',
            visible_alias = "db",
            env = "MP_DATABASE",
            default_value = "mailsafe.db"
        )
    )]
    pub db: PathBuf,
    /// Deprecated Mailpit name of `--database` (a warning says so).
    #[cfg_attr(
        feature = "cli",
        arg(long = "db-file", env = "MP_DATA_FILE", hide = true)
    )]
    pub db_file: Option<PathBuf>,
    /// SQLite's rollback journal (`DELETE`) instead of WAL, for network file
    /// systems whose locking WAL's shared memory cannot use (Mailpit's
    /// reason). Readers then wait while the writer commits. `serve
    /// --replica` (and `watch`) back the WAL up: the binary refuses it
    /// there.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_DISABLE_WAL", value_parser = mailpit_bool))]
    pub disable_wal: bool,
    /// No-op: there is no release check to disable.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_DISABLE_VERSION_CHECK", value_parser = mailpit_bool))]
    pub disable_version_check: bool,
    /// No-op: the catcher runs no periodic VACUUM to disable.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_DISABLE_AUTO_VACUUM", value_parser = mailpit_bool))]
    pub disable_auto_vacuum: bool,
    /// Raw-message compression: 0 none (stored as they are), 1 fastest
    /// (default), 2 standard, 3 best.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_COMPRESSION", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=3)))]
    pub compression: u8,
    /// Tenant ID: prefixes every table so several catchers can share a db.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_TENANT_ID", default_value = ""))]
    pub tenant_id: String,
    /// Label shown in the web UI.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_LABEL", default_value = ""))]
    pub label: String,
    /// Keep at most this many messages, pruning the oldest (0 = unlimited).
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "max",
            short = 'm',
            visible_alias = "max-messages",
            env = "MP_MAX_MESSAGES",
            default_value_t = 500
        )
    )]
    pub max_messages: u64,
    /// Prune messages older than this (`3d`, `12h`, or any humantime
    /// duration such as `36h 30m`).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_MAX_AGE", value_parser = humantime::parse_duration))]
    pub max_age: Option<std::time::Duration>,
    /// Largest accepted message, in MB (0 = unlimited, as in Mailpit).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_MAX_MESSAGE_SIZE", default_value_t = 50)
    )]
    pub max_message_size: u64,
    /// Use the message's Date header as its received time.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_USE_MESSAGE_DATES", value_parser = mailpit_bool))]
    pub use_message_dates: bool,
    /// Drop (answer 250, store nothing) messages whose Message-ID is
    /// already stored.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_IGNORE_DUPLICATE_IDS", value_parser = mailpit_bool))]
    pub ignore_duplicate_ids: bool,
    /// Append the logs to this file instead of writing them to stderr (see
    /// [`Logging`]).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_LOG_FILE"))]
    pub log_file: Option<PathBuf>,
    /// Log errors only (`MAILSAFE_LOG`, when set, wins).
    #[cfg_attr(feature = "cli", arg(long, short = 'q', env = "MP_QUIET", value_parser = mailpit_bool))]
    pub quiet: bool,
    /// Log at debug level (wins over `--quiet`, as in Mailpit;
    /// `MAILSAFE_LOG`, when set, wins over both).
    #[cfg_attr(feature = "cli", arg(long, short = 'v', env = "MP_VERBOSE", value_parser = mailpit_bool))]
    pub verbose: bool,
    /// Not implemented: Mailpit's demo restrictions.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_DEMO_MODE", value_parser = mailpit_bool))]
    pub demo_mode: bool,

    // ---- Web UI and API (Mailpit) ----
    /// HTTP (API and web UI) listen address.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            short = 'l',
            env = "MP_UI_BIND_ADDR",
            default_value = "0.0.0.0:8025"
        )
    )]
    pub listen: String,
    /// Serve the web UI, API and websocket under this path (`mail` and
    /// `/mail/` are both `/mail/`); `GET /mail` redirects to `/mail/`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_WEBROOT", default_value = "/", value_parser = value::webroot))]
    pub webroot: String,
    /// Basic auth for the web UI and API: space-separated `user:password`
    /// pairs.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_UI_AUTH", hide_env_values = true))]
    pub ui_auth: Option<String>,
    /// Basic auth users from an htpasswd file (bcrypt or plain).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_UI_AUTH_FILE"))]
    pub ui_auth_file: Option<PathBuf>,
    /// PEM certificate: serve the web UI and API over HTTPS (with
    /// --ui-tls-key).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_UI_TLS_CERT"))]
    pub ui_tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_UI_TLS_KEY"))]
    pub ui_tls_key: Option<PathBuf>,
    /// Deprecated Mailpit name of `--ui-tls-cert`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_UI_SSL_CERT", hide = true))]
    pub ui_ssl_cert: Option<PathBuf>,
    /// Deprecated Mailpit name of `--ui-tls-key`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_UI_SSL_KEY", hide = true))]
    pub ui_ssl_key: Option<PathBuf>,
    /// Browser origins allowed to call the API besides the UI's own,
    /// comma-separated (`*` for any), as Mailpit's `MP_API_CORS`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_API_CORS", default_value = ""))]
    pub api_cors: String,
    /// Block remote CSS and fonts in the message preview (the UI page's
    /// Content-Security-Policy allows neither from other origins).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_BLOCK_REMOTE_CSS_AND_FONTS", value_parser = mailpit_bool))]
    pub block_remote_css_and_fonts: bool,
    /// Let the link check request internal addresses (loopback, private,
    /// link-local), refused by default.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_ALLOW_INTERNAL_HTTP_REQUESTS", value_parser = mailpit_bool))]
    pub allow_internal_http_requests: bool,
    /// No per-host rate limit on the link check's requests.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_DISABLE_LINK_CHECK_RATE_LIMIT", value_parser = mailpit_bool))]
    pub disable_link_check_rate_limit: bool,
    /// spamd for the spam check: `host:port` or `unix:/path/to/socket`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_ENABLE_SPAMASSASSIN"))]
    pub enable_spamassassin: Option<String>,
    /// Accept untrusted TLS certificates in the link check.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_ALLOW_UNTRUSTED_TLS", value_parser = mailpit_bool))]
    pub allow_untrusted_tls: bool,
    /// No-op: responses are never compressed.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_DISABLE_HTTP_COMPRESSION", value_parser = mailpit_bool))]
    pub disable_http_compression: bool,
    /// Hide the "Delete all" button in the web UI.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_HIDE_DELETE_ALL_BUTTON", value_parser = mailpit_bool))]
    pub hide_delete_all_button: bool,
    /// Deprecated and unused in Mailpit too (a warning says so).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_DISABLE_HTML_CHECK", value_parser = mailpit_bool, hide = true))]
    pub disable_html_check: bool,
    /// Prometheus metrics: `true` (on `/metrics` of the UI listener) or an
    /// `ip:port` to serve them on by themselves.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_ENABLE_PROMETHEUS"))]
    pub enable_prometheus: Option<String>,

    // ---- Send API (Mailpit) ----
    /// Send API users, space-separated `user:password` pairs (bcrypt
    /// allowed): only they may send, the UI's users may not.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_SEND_API_AUTH", hide_env_values = true)
    )]
    pub send_api_auth: Option<String>,
    /// Send API users from an htpasswd file.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SEND_API_AUTH_FILE"))]
    pub send_api_auth_file: Option<PathBuf>,
    /// The Send API accepts any credentials, or none, even when the UI has
    /// basic auth.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SEND_API_AUTH_ACCEPT_ANY", value_parser = mailpit_bool))]
    pub send_api_auth_accept_any: bool,

    // ---- SMTP (Mailpit) ----
    /// SMTP listen address.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            short = 's',
            env = "MP_SMTP_BIND_ADDR",
            default_value = "0.0.0.0:1025"
        )
    )]
    pub smtp: String,
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
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_AUTH_ACCEPT_ANY", value_parser = mailpit_bool))]
    pub smtp_auth_accept_any: bool,
    /// Allow AUTH PLAIN/LOGIN on connections without TLS.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_AUTH_ALLOW_INSECURE", value_parser = mailpit_bool))]
    pub smtp_auth_allow_insecure: bool,
    /// PEM certificate for SMTP STARTTLS (or implicit TLS).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_TLS_CERT"))]
    pub smtp_tls_cert: Option<PathBuf>,
    /// PEM private key for SMTP TLS.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_TLS_KEY"))]
    pub smtp_tls_key: Option<PathBuf>,
    /// Deprecated Mailpit name of `--smtp-tls-cert`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_SSL_CERT", hide = true))]
    pub smtp_ssl_cert: Option<PathBuf>,
    /// Deprecated Mailpit name of `--smtp-tls-key`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_SSL_KEY", hide = true))]
    pub smtp_ssl_key: Option<PathBuf>,
    /// Refuse MAIL until the client has issued STARTTLS.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_REQUIRE_STARTTLS", value_parser = mailpit_bool))]
    pub smtp_require_starttls: bool,
    /// Deprecated Mailpit name of `--smtp-require-starttls`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_TLS_REQUIRED", value_parser = mailpit_bool, hide = true))]
    pub smtp_tls_required: bool,
    /// Implicit TLS (SMTPS): TLS from the first byte, as Mailpit's
    /// `MP_SMTP_REQUIRE_TLS`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_REQUIRE_TLS", value_parser = mailpit_bool))]
    pub smtp_require_tls: bool,
    /// Same as `--smtp-require-tls` (ours, not Mailpit's).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_TLS_IMPLICIT", value_parser = mailpit_bool))]
    pub smtp_tls_implicit: bool,
    /// Refuse (451) messages whose headers contain CR CR LF; by default
    /// they are repaired to CR LF, as in Mailpit.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_STRICT_RFC_HEADERS", value_parser = mailpit_bool))]
    pub smtp_strict_rfc_headers: bool,
    /// Deprecated Mailpit name of `--smtp-strict-rfc-headers`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_STRICT_RFC_HEADERS", value_parser = mailpit_bool, hide = true))]
    pub strict_rfc_headers: bool,
    /// Most recipients per message; more are refused with 452.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MP_SMTP_MAX_RECIPIENTS", default_value_t = 100)
    )]
    pub smtp_max_recipients: usize,
    /// Only recipients matching this regex are accepted (others get 550).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_ALLOWED_RECIPIENTS"))]
    pub smtp_allowed_recipients: Option<String>,
    /// Answer 250 to recipients refused by --smtp-allowed-recipients and
    /// drop them.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_IGNORE_REJECTED_RECIPIENTS", value_parser = mailpit_bool))]
    pub smtp_ignore_rejected_recipients: bool,
    /// No-op: the catcher never looks up clients' reverse DNS.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_SMTP_DISABLE_RDNS", value_parser = mailpit_bool))]
    pub smtp_disable_rdns: bool,

    // ---- Chaos, tags (Mailpit) ----
    /// Chaos: `/api/v1/chaos` sets SMTP errors to inject.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_ENABLE_CHAOS", value_parser = mailpit_bool))]
    pub enable_chaos: bool,
    /// Chaos triggers at start (enables chaos):
    /// `Sender|Recipient|Authentication:CODE:PROBABILITY`, comma-separated.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_CHAOS_TRIGGERS"))]
    pub chaos_triggers: Option<String>,
    /// Tag rules: space-separated `tag1,tag2=search query` items (quote an
    /// item with spaces).
    #[cfg_attr(feature = "cli", arg(long, short = 't', env = "MP_TAG"))]
    pub tag: Option<String>,
    /// Tag rules from a YAML file (`filters:` of `match:` and `tags:`).
    #[cfg_attr(feature = "cli", arg(long, env = "MP_TAGS_CONFIG"))]
    pub tags_config: Option<PathBuf>,
    /// Title-case tags from plus-addresses and `X-Tags`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_TAGS_TITLE_CASE", value_parser = mailpit_bool))]
    pub tags_title_case: bool,
    /// Turn off automatic tagging, comma-separated: `plus-addresses`,
    /// `x-tags`.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_TAGS_DISABLE"))]
    pub tags_disable: Option<String>,
    /// Tag messages with the SMTP AUTH user name.
    #[cfg_attr(feature = "cli", arg(long, env = "MP_TAGS_USERNAME", value_parser = mailpit_bool))]
    pub tags_username: bool,

    /// Relay, forwarding, POP3, webhooks.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub integrations: Integrations,

    // ---- mailsafe's own ----
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
    pub smtp_max_data_memory: u64,
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
    /// Failed HTTP basic-auth attempts one client IP (IPv6: /64) may make
    /// per `--http-auth-window` before it is answered 429.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MAILSAFE_HTTP_AUTH_MAX_FAILURES", default_value_t = 10)
    )]
    pub http_auth_max_failures: u32,
    /// The window of `--http-auth-max-failures`.
    #[cfg_attr(feature = "cli", arg(long, env = "MAILSAFE_HTTP_AUTH_WINDOW", default_value = "60s", value_parser = humantime::parse_duration))]
    pub http_auth_window: std::time::Duration,
    /// bcrypt password checks (SMTP, POP3 and HTTP auth) that may run at
    /// once; 0 = half the cores, at least one.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MAILSAFE_BCRYPT_THREADS", default_value_t = 0)
    )]
    pub bcrypt_threads: usize,
    /// Most `/api/events` websockets open at once (the UI opens one per
    /// tab); more get 503.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "MAILSAFE_HTTP_MAX_EVENT_SUBSCRIBERS",
            default_value_t = 256
        )
    )]
    pub http_max_event_subscribers: usize,
    /// How long a client may take over its TLS handshake (HTTPS, SMTP
    /// implicit TLS and STARTTLS, POP3) before it is dropped.
    #[cfg_attr(feature = "cli", arg(long, env = "MAILSAFE_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration))]
    pub tls_handshake_timeout: std::time::Duration,
    /// Host names accepted in the `Host` header besides localhost names and
    /// loopback IPs, comma-separated (`*` for any). A catcher bound to a
    /// loopback address refuses other hosts (DNS rebinding protection).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "MAILSAFE_HTTP_ALLOWED_HOSTS", value_delimiter = ',')
    )]
    pub http_allowed_hosts: Vec<String>,
}

/// How the binary sets up its logs for `serve` (Mailpit's `MP_QUIET`,
/// `MP_VERBOSE`, `MP_LOG_FILE`); the library only logs through `tracing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// The level when `MAILSAFE_LOG` is unset: `DEBUG` with `--verbose`,
    /// `ERROR` with `--quiet` (Mailpit's "errors only"), else `INFO`.
    pub level: tracing::Level,
    /// Append to this file (created if missing) instead of stderr, as
    /// Mailpit writes to its log file instead of stdout.
    pub file: Option<PathBuf>,
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            level: tracing::Level::INFO,
            file: None,
        }
    }
}

impl Options {
    /// The logging these options ask for.
    pub fn logging(&self) -> Logging {
        let level = if self.verbose {
            tracing::Level::DEBUG
        } else if self.quiet {
            tracing::Level::ERROR
        } else {
            tracing::Level::INFO
        };
        Logging {
            level,
            file: self.log_file.clone().filter(|p| !p.as_os_str().is_empty()),
        }
    }

    /// Maps the options onto the catcher's config: refuses options that are
    /// not implemented, warns about deprecated names, reads credential
    /// files, converts MB to bytes. `shutdown_timeout` stays at its
    /// default: the caller sets it from its own shutdown budget.
    pub fn into_config(self) -> Result<Config, Error> {
        self.refuse_unimplemented()?;
        // HTTP basic auth over some users, with the failure throttle of
        // `MAILSAFE_HTTP_AUTH_*`.
        let (max_failures, window) = (self.http_auth_max_failures, self.http_auth_window);
        let throttled = move |users: Credentials| {
            users
                .into_basic_auth()
                .with_throttle(crate::auth::Throttle::new(
                    max_failures,
                    window,
                    crate::auth::THROTTLE_CLIENTS,
                ))
        };
        let deprecated = |old: &str, new: &str| {
            tracing::warn!("{old} is deprecated (as in Mailpit); use {new}");
        };
        let mut db = self.db;
        if let Some(old) = self.db_file {
            deprecated("MP_DATA_FILE / --db-file", "MP_DATABASE / --database");
            db = old;
        }
        // Mailpit: a directory means a `mailpit.db` inside it.
        if db.is_dir() {
            db = db.join("mailpit.db");
        }
        // A deprecated path option counts only when the current one is unset.
        let renamed = |new: Option<PathBuf>, old: Option<PathBuf>, old_name, new_name| {
            if old.is_some() {
                deprecated(old_name, new_name);
            }
            new.or(old)
        };
        let ui_tls_cert = renamed(
            self.ui_tls_cert,
            self.ui_ssl_cert,
            "MP_UI_SSL_CERT / --ui-ssl-cert",
            "MP_UI_TLS_CERT",
        );
        let ui_tls_key = renamed(
            self.ui_tls_key,
            self.ui_ssl_key,
            "MP_UI_SSL_KEY / --ui-ssl-key",
            "MP_UI_TLS_KEY",
        );
        let smtp_tls_cert = renamed(
            self.smtp_tls_cert,
            self.smtp_ssl_cert,
            "MP_SMTP_SSL_CERT / --smtp-ssl-cert",
            "MP_SMTP_TLS_CERT",
        );
        let smtp_tls_key = renamed(
            self.smtp_tls_key,
            self.smtp_ssl_key,
            "MP_SMTP_SSL_KEY / --smtp-ssl-key",
            "MP_SMTP_TLS_KEY",
        );
        if self.smtp_tls_required {
            deprecated(
                "MP_SMTP_TLS_REQUIRED / --smtp-tls-required",
                "MP_SMTP_REQUIRE_STARTTLS",
            );
        }
        if self.disable_html_check {
            tracing::warn!("MP_DISABLE_HTML_CHECK is deprecated and unused (as in Mailpit)");
        }
        if (ui_tls_cert.is_some()) != (ui_tls_key.is_some()) {
            return Err(Error::Config(
                "MP_UI_TLS_CERT and MP_UI_TLS_KEY must be set together".into(),
            ));
        }
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
        let ui_auth = users_of(
            "MP_UI_AUTH",
            self.ui_auth.as_deref(),
            self.ui_auth_file.as_deref(),
        )?;
        let send_auth = match (
            users_of(
                "MP_SEND_API_AUTH",
                self.send_api_auth.as_deref(),
                self.send_api_auth_file.as_deref(),
            )?,
            self.send_api_auth_accept_any,
        ) {
            (Some(_), true) => {
                return Err(Error::Config(
                    "MP_SEND_API_AUTH* users and MP_SEND_API_AUTH_ACCEPT_ANY cannot be used together"
                        .into(),
                ));
            }
            (Some(users), false) => crate::api::SendAuth::Users(throttled(users)),
            (None, true) => crate::api::SendAuth::AcceptAny,
            (None, false) => crate::api::SendAuth::Ui,
        };
        let too_large = |name: &str, e: String| Error::Config(format!("{name}: {e}"));
        let max_message_size = value::megabytes(self.max_message_size)
            .map_err(|e| too_large("MP_MAX_MESSAGE_SIZE", e))?;
        if max_message_size.is_none() {
            tracing::warn!(
                "MP_MAX_MESSAGE_SIZE=0: no message size limit (as in Mailpit, not recommended \
                 on a reachable listener); MAILSAFE_SMTP_MAX_DATA_MEMORY still bounds one message"
            );
        }
        let smtp_max_data_memory = value::megabytes(self.smtp_max_data_memory)
            .map_err(|e| too_large("MAILSAFE_SMTP_MAX_DATA_MEMORY", e))?
            .unwrap_or(0);
        let mut rules =
            crate::storage::TagRule::parse_args(self.tag.as_deref().unwrap_or_default())
                .map_err(Error::Config)?;
        if let Some(path) = &self.tags_config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("MP_TAGS_CONFIG {}: {e}", path.display())))?;
            rules.extend(
                crate::storage::TagRule::from_yaml(&text).map_err(|e| {
                    Error::Config(format!("MP_TAGS_CONFIG {}: {e}", path.display()))
                })?,
            );
        }
        if self.strict_rfc_headers {
            deprecated(
                "MP_STRICT_RFC_HEADERS / --strict-rfc-headers",
                "MP_SMTP_STRICT_RFC_HEADERS",
            );
        }
        let smtp_allowed_recipients =
            match self.smtp_allowed_recipients.as_deref() {
                None | Some("") => None,
                Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                    Error::Config(format!("MP_SMTP_ALLOWED_RECIPIENTS {re:?}: {e}"))
                })?),
            };
        if self.smtp_ignore_rejected_recipients && smtp_allowed_recipients.is_none() {
            tracing::warn!(
                "MP_SMTP_IGNORE_REJECTED_RECIPIENTS has no effect without MP_SMTP_ALLOWED_RECIPIENTS"
            );
        }
        // Triggers enable chaos by themselves, as in Mailpit.
        let chaos = match self.chaos_triggers.as_deref() {
            Some(t) if !t.trim().is_empty() => Some(
                crate::smtp::chaos::Triggers::parse(t)
                    .map_err(|e| Error::Config(format!("MP_CHAOS_TRIGGERS: {e}")))?,
            ),
            _ => self
                .enable_chaos
                .then(crate::smtp::chaos::Triggers::default),
        };
        let mut tagging = crate::storage::Tagging {
            rules,
            title_case: self.tags_title_case,
            username: self.tags_username,
            ..Default::default()
        };
        for part in self.tags_disable.as_deref().unwrap_or_default().split(',') {
            match part.trim().to_ascii_lowercase().as_str() {
                "" => {}
                "x-tags" | "xtags" => tagging.x_tags = false,
                "plus-addresses" | "plus-addressing" => tagging.plus_addresses = false,
                other => {
                    return Err(Error::Config(format!(
                        "invalid MP_TAGS_DISABLE option {other:?}: expected plus-addresses or x-tags"
                    )));
                }
            }
        }
        let ui_auth = ui_auth.map(throttled);
        let mut config = Config {
            tagging,
            database: db,
            smtp_bind: self.smtp,
            http_bind: self.listen,
            tenant: self.tenant_id,
            max_messages: self.max_messages,
            max_age: self.max_age,
            max_message_size: max_message_size.unwrap_or(crate::config::UNLIMITED),
            compression_level: compression_level(self.compression),
            disable_wal: self.disable_wal,
            smtp_max_recipients: self.smtp_max_recipients,
            smtp_auth,
            smtp_auth_allow_insecure: self.smtp_auth_allow_insecure,
            smtp_tls_cert,
            smtp_tls_key,
            smtp_require_starttls: self.smtp_require_starttls || self.smtp_tls_required,
            smtp_implicit_tls: self.smtp_require_tls || self.smtp_tls_implicit,
            smtp_max_connections: self.smtp_max_connections,
            smtp_idle_timeout: self.smtp_idle_timeout,
            smtp_max_data_memory,
            ui_tls_cert,
            ui_tls_key,
            label: self.label,
            hide_delete_all_button: self.hide_delete_all_button,
            block_remote_css_and_fonts: self.block_remote_css_and_fonts,
            ui_auth,
            send_auth,
            spamassassin: self
                .enable_spamassassin
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| crate::checks::spam::SpamAssassin { addr: s.into() }),
            link_check: crate::checks::link::LinkChecker::new(
                self.allow_internal_http_requests,
                self.disable_link_check_rate_limit,
                self.allow_untrusted_tls,
            ),
            http_limits: crate::api::HttpLimits {
                header_read_timeout: self.http_header_timeout,
                max_connections: self.http_max_connections,
                max_connections_per_ip: self.http_max_connections_per_ip,
                tls_handshake_timeout: self.tls_handshake_timeout,
            },
            smtp_tls_handshake_timeout: self.tls_handshake_timeout,
            bcrypt_threads: self.bcrypt_threads,
            max_event_subscribers: self.http_max_event_subscribers,
            origins: crate::api::OriginPolicy {
                cors: self.api_cors,
                allowed_hosts: self.http_allowed_hosts,
            },
            smtp_allowed_recipients,
            smtp_ignore_rejected_recipients: self.smtp_ignore_rejected_recipients,
            smtp_strict_rfc_headers: self.smtp_strict_rfc_headers || self.strict_rfc_headers,
            ignore_duplicate_ids: self.ignore_duplicate_ids,
            use_message_dates: self.use_message_dates,
            chaos,
            webroot: self.webroot,
            prometheus: crate::api::metrics::Prometheus::parse(
                self.enable_prometheus.as_deref().unwrap_or_default(),
            )
            .map_err(Error::Config)?,
            ..Config::default()
        };
        self.integrations.apply(&mut config)?;
        Ok(config)
    }

    /// Stops the start on any option that is set (to a value other than
    /// its default) but not implemented, naming each one.
    fn refuse_unimplemented(&self) -> Result<(), Error> {
        let mut out = Vec::new();
        let mut refuse = |set: bool, name: &'static str| {
            if set {
                out.push(name);
            }
        };
        refuse(self.demo_mode, "MP_DEMO_MODE (--demo-mode)");
        refuse(
            self.enable_spamassassin
                .as_deref()
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("postmark")),
            "MP_ENABLE_SPAMASSASSIN=postmark (Postmark's web API; run spamd and give host:port)",
        );
        if out.is_empty() {
            return Ok(());
        }
        Err(Error::NotImplemented(out.join(", ")))
    }
}

/// Users from Mailpit's pair of options `{name}` (space-separated
/// `user:password` pairs) and `{name}_FILE` (htpasswd-style file): at most
/// one may be set; `None` when neither is.
pub(crate) fn users_of(
    name: &str,
    pairs: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<Credentials>, Error> {
    match (pairs, file) {
        (None, None) => Ok(None),
        (Some(pairs), None) => Ok(Some(Credentials::from_pairs(pairs, name)?)),
        (None, Some(path)) => Ok(Some(Credentials::from_file(path)?)),
        (Some(_), Some(_)) => Err(Error::Config(format!(
            "set {name} or {name}_FILE, not both"
        ))),
    }
}

/// Mailpit's compression levels 1-3 (fastest, standard, best) as zstd
/// levels, 0 (none) as the store's 0. Level 3 was the store's fixed level
/// before the option existed.
fn compression_level(mailpit: u8) -> i32 {
    match mailpit {
        0 => 0,
        1 => 1,
        2 => 3,
        _ => 9,
    }
}
