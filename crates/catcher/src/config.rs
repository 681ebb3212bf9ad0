//! Catcher configuration, named after Mailpit's settings so that the same
//! `MP_*` environment works for both (the binary maps flags and env vars
//! onto this struct; the library never reads the environment itself).

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::AuthPolicy;

/// `max_message_size` meaning no limit; defined by the SMTP limits that
/// interpret it, so that `smtp` does not import the config.
pub use crate::smtp::UNLIMITED;

/// Everything the catcher needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// SQLite database file (`MP_DATABASE`).
    pub database: PathBuf,
    /// SMTP listen address (`MP_SMTP_BIND_ADDR`).
    pub smtp_bind: String,
    /// HTTP listen address (`MP_UI_BIND_ADDR`).
    pub http_bind: String,
    /// Tenant whose tables this instance uses (`MP_TENANT_ID`).
    pub tenant: String,
    /// Keep at most this many messages, 0 = unlimited (`MP_MAX_MESSAGES`).
    pub max_messages: u64,
    /// Prune messages older than this (`MP_MAX_AGE`).
    pub max_age: Option<Duration>,
    /// Largest accepted message in bytes (`MP_MAX_MESSAGE_SIZE` is in MB);
    /// [`UNLIMITED`] for none.
    pub max_message_size: usize,
    /// Automatic tags of new messages (`MP_TAGS_DISABLE`,
    /// `MP_TAGS_TITLE_CASE`, `MP_TAGS_USERNAME`).
    pub tagging: crate::storage::Tagging,
    /// zstd level of stored raw messages (`MP_COMPRESSION` 1-3 maps onto
    /// it; 0 stores them uncompressed).
    pub compression_level: i32,
    /// SQLite's rollback journal instead of WAL (`MP_DISABLE_WAL`).
    pub disable_wal: bool,
    /// Most recipients per message (`MP_SMTP_MAX_RECIPIENTS`).
    pub smtp_max_recipients: usize,
    /// SMTP AUTH: off, accept anything, or a set of users (`MP_SMTP_AUTH`,
    /// `MP_SMTP_AUTH_FILE`, `MP_SMTP_AUTH_ACCEPT_ANY`).
    pub smtp_auth: AuthPolicy,
    /// Allow AUTH PLAIN/LOGIN without TLS (`MP_SMTP_AUTH_ALLOW_INSECURE`).
    pub smtp_auth_allow_insecure: bool,
    /// PEM certificate for STARTTLS / implicit TLS (`MP_SMTP_TLS_CERT`).
    pub smtp_tls_cert: Option<PathBuf>,
    /// PEM private key (`MP_SMTP_TLS_KEY`).
    pub smtp_tls_key: Option<PathBuf>,
    /// Refuse MAIL until the client has done STARTTLS
    /// (`MP_SMTP_REQUIRE_STARTTLS`).
    pub smtp_require_starttls: bool,
    /// Speak TLS from the first byte, SMTPS style (`MP_SMTP_REQUIRE_TLS`,
    /// as in Mailpit, or `MP_SMTP_TLS_IMPLICIT`).
    pub smtp_implicit_tls: bool,
    /// Most concurrent SMTP connections; more get 421.
    pub smtp_max_connections: usize,
    /// Message content all SMTP sessions may hold in memory at once, in
    /// bytes (`MAILSAFE_SMTP_MAX_DATA_MEMORY` is in MB); a message that would
    /// exceed it is answered `452 4.3.1`. Never below `max_message_size`, so
    /// a message within the limit always fits once others are done; 0 means
    /// no cap.
    pub smtp_max_data_memory: usize,
    /// How long a send API request waits for that memory budget before it
    /// is answered 503 with `Retry-After`.
    pub send_budget_wait: Duration,
    /// Close SMTP connections idle this long.
    pub smtp_idle_timeout: Duration,
    /// Close SMTP and POP3 connections whose TLS handshake (implicit TLS or
    /// STARTTLS) takes longer than this (`MAILSAFE_TLS_HANDSHAKE_TIMEOUT`,
    /// which sets the HTTPS one in `http_limits` too).
    pub smtp_tls_handshake_timeout: Duration,
    /// bcrypt checks that may run at once, process-wide
    /// (`MAILSAFE_BCRYPT_THREADS`; 0 = half the cores, at least one; see
    /// [`crate::auth::set_bcrypt_threads`]).
    pub bcrypt_threads: usize,
    /// Most `/api/events` websockets at once
    /// (`MAILSAFE_HTTP_MAX_EVENT_SUBSCRIBERS`); more get 503.
    pub max_event_subscribers: usize,
    /// How long shutdown waits for SMTP transactions in flight.
    pub shutdown_timeout: Duration,
    /// PEM certificate: serve the API and web UI over HTTPS
    /// (`MP_UI_TLS_CERT`, with `MP_UI_TLS_KEY`).
    pub ui_tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (`MP_UI_TLS_KEY`).
    pub ui_tls_key: Option<PathBuf>,
    /// Label shown by the web UI (`MP_LABEL`).
    pub label: String,
    /// Hide the UI's "Delete all" button (`MP_HIDE_DELETE_ALL_BUTTON`,
    /// served by `/api/v1/webui`).
    pub hide_delete_all_button: bool,
    /// Keep remote stylesheets and fonts out of the message preview, even
    /// when the user loads remote images (`MP_BLOCK_REMOTE_CSS_AND_FONTS`;
    /// see `ui::csp`).
    pub block_remote_css_and_fonts: bool,
    /// HTTP basic auth guarding the API and UI (`MP_UI_AUTH`,
    /// `MP_UI_AUTH_FILE`); the health probes stay open.
    pub ui_auth: Option<crate::auth::BasicAuth>,
    /// Timeouts and connection caps of the HTTP listener.
    pub http_limits: crate::api::HttpLimits,
    /// Browser origins allowed to use the API (`MP_API_CORS`) and the `Host`
    /// allow-list against DNS rebinding (`MAILSAFE_HTTP_ALLOWED_HOSTS`).
    pub origins: crate::api::OriginPolicy,
    /// POP3 listen address (`MP_POP3_BIND_ADDR`).
    pub pop3_bind: String,
    /// POP3 users (`MP_POP3_AUTH`, `MP_POP3_AUTH_FILE`); as in Mailpit, the
    /// POP3 server runs only when some are configured.
    pub pop3_auth: Option<std::sync::Arc<crate::auth::Credentials>>,
    /// PEM certificate for POP3 (`MP_POP3_TLS_CERT`).
    pub pop3_tls_cert: Option<PathBuf>,
    /// PEM private key for POP3 (`MP_POP3_TLS_KEY`).
    pub pop3_tls_key: Option<PathBuf>,
    /// With a POP3 certificate, offer STLS on a plain listener
    /// (`MAILSAFE_POP3_STLS`) instead of Mailpit's implicit TLS (POP3S).
    pub pop3_stls: bool,
    /// Most concurrent POP3 connections; more get `-ERR` and are closed.
    pub pop3_max_connections: usize,
    /// Close POP3 connections that send no complete line this long (RFC
    /// 1939: at least 10 minutes).
    pub pop3_idle_timeout: Duration,
    /// POST each new message's summary here (`MP_WEBHOOK_URL`,
    /// `MP_WEBHOOK_LIMIT`, `MP_WEBHOOK_DELAY`); `None` sends nothing.
    pub webhook: Option<crate::webhook::WebhookConfig>,
    /// Relay server for releases and auto-relay (`MP_SMTP_RELAY_*`);
    /// `None` turns release off.
    pub relay: Option<crate::relay::RelayConfig>,
    /// Forward a copy of every new message (`MP_SMTP_FORWARD_*`).
    pub forward: Option<crate::relay::ForwardConfig>,
    /// Only recipients matching this are accepted (`MP_SMTP_ALLOWED_RECIPIENTS`).
    pub smtp_allowed_recipients: Option<regex::Regex>,
    /// Answer refused recipients 250 and drop them
    /// (`MP_SMTP_IGNORE_REJECTED_RECIPIENTS`).
    pub smtp_ignore_rejected_recipients: bool,
    /// Refuse messages whose headers contain CR CR LF instead of repairing
    /// them (`MP_SMTP_STRICT_RFC_HEADERS`).
    pub smtp_strict_rfc_headers: bool,
    /// Drop a message whose Message-ID is already stored
    /// (`MP_IGNORE_DUPLICATE_IDS`).
    pub ignore_duplicate_ids: bool,
    /// A message's received time is its Date header (`MP_USE_MESSAGE_DATES`).
    pub use_message_dates: bool,
    /// Chaos enabled, with these triggers (`MP_ENABLE_CHAOS`,
    /// `MP_CHAOS_TRIGGERS`); `None` = off.
    pub chaos: Option<crate::smtp::chaos::Triggers>,
    /// Path prefix of the UI, API and websocket (`MP_WEBROOT`): `/` or
    /// `/a/b/` (normalised by `options::value::webroot`).
    pub webroot: String,
    /// Who may use the send API (`MP_SEND_API_AUTH*`).
    pub send_auth: crate::api::SendAuth,
    /// The link check's settings (`MP_ALLOW_INTERNAL_HTTP_REQUESTS`,
    /// `MP_DISABLE_LINK_CHECK_RATE_LIMIT`, `MP_ALLOW_UNTRUSTED_TLS`).
    pub link_check: crate::checks::link::LinkChecker,
    /// spamd for the spam check (`MP_ENABLE_SPAMASSASSIN`).
    pub spamassassin: Option<crate::checks::spam::SpamAssassin>,
    /// Mailpit's Prometheus metrics (`MP_ENABLE_PROMETHEUS`).
    pub prometheus: crate::api::metrics::Prometheus,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database: PathBuf::from("mailsafe.db"),
            smtp_bind: "0.0.0.0:1025".into(),
            http_bind: "0.0.0.0:8025".into(),
            tenant: String::new(),
            max_messages: 500,
            max_age: None,
            max_message_size: 50 * 1024 * 1024,
            compression_level: crate::storage::StoreOptions::default().compression_level,
            disable_wal: false,
            tagging: crate::storage::Tagging::default(),
            smtp_max_recipients: 100,
            smtp_auth: AuthPolicy::None,
            smtp_auth_allow_insecure: false,
            smtp_tls_cert: None,
            smtp_tls_key: None,
            smtp_require_starttls: false,
            smtp_implicit_tls: false,
            smtp_max_connections: 1000,
            smtp_max_data_memory: 256 * 1024 * 1024,
            send_budget_wait: Duration::from_secs(10),
            smtp_idle_timeout: Duration::from_secs(300),
            smtp_tls_handshake_timeout: Duration::from_secs(10),
            bcrypt_threads: 0,
            max_event_subscribers: 256,
            shutdown_timeout: Duration::from_secs(10),
            ui_tls_cert: None,
            ui_tls_key: None,
            label: String::new(),
            hide_delete_all_button: false,
            block_remote_css_and_fonts: false,
            ui_auth: None,
            http_limits: crate::api::HttpLimits::default(),
            origins: crate::api::OriginPolicy::default(),
            pop3_bind: "0.0.0.0:1110".into(),
            pop3_auth: None,
            pop3_tls_cert: None,
            pop3_tls_key: None,
            pop3_stls: false,
            pop3_max_connections: 100,
            pop3_idle_timeout: Duration::from_secs(600),
            webhook: None,
            relay: None,
            forward: None,
            smtp_allowed_recipients: None,
            smtp_ignore_rejected_recipients: false,
            smtp_strict_rfc_headers: false,
            ignore_duplicate_ids: false,
            use_message_dates: false,
            chaos: None,
            webroot: "/".into(),
            prometheus: crate::api::metrics::Prometheus::Off,
            send_auth: crate::api::SendAuth::Ui,
            link_check: Default::default(),
            spamassassin: None,
        }
    }
}
