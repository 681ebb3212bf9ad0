//! mailsafe's mail catcher: an SMTP server that stores every message in SQLite,
//! an HTTP API compatible with Mailpit's `/api/v1`, and a web UI with live
//! updates.
//!
//! Data flows `smtp` → `storage` → `api` / `ui`; the SMTP server sees the
//! store only as an [`smtp::Deliver`]. docs/ARCHITECTURE.md follows a
//! message file by file. [`Catcher`] binds everything and [`Catcher::run`] serves it;
//! [`run`] does both for `mailsafe serve`.

pub mod api;
pub mod auth;
pub mod checks;
pub mod config;
pub mod error;
mod lines;
pub mod listen;
pub mod mailtools;
pub mod options;
pub mod pop3;
pub mod relay;
pub mod smtp;
pub mod storage;
pub mod tls;
pub mod ui;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use config::Config;
pub use error::Error;

use smtp::{Limits, ServerOptions, SmtpServer};
use storage::{Store, StoreOptions};

/// Runs the catcher until `shutdown` completes, then stops accepting SMTP,
/// lets open sessions finish, and returns once every acknowledged message is
/// committed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    Catcher::bind(config).await?.run(shutdown).await
}

/// A catcher whose store is open and whose listeners are bound, so callers
/// (tests, `serve --replica`) can learn the real addresses before serving.
pub struct Catcher {
    store: Store,
    smtp: SmtpServer,
    /// Runs only when POP3 users are configured, as in Mailpit.
    pop3: Option<pop3::Pop3Server>,
    /// The relay server for releases, when configured.
    relay: Option<relay::RelayConfig>,
    /// Webhook target and its counters, when `MP_WEBHOOK_URL` is set.
    webhook: Option<(
        webhook::WebhookConfig,
        std::sync::Arc<webhook::WebhookStats>,
    )>,
    http: tokio::net::TcpListener,
    /// Serve HTTP over TLS with this configuration (`MP_UI_TLS_*`).
    http_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown_timeout: Duration,
    label: String,
    hide_delete_all_button: bool,
    block_remote_css_and_fonts: bool,
    ui_auth: Option<auth::BasicAuth>,
    data_budget: Option<std::sync::Arc<smtp::DataBudget>>,
    http_limits: api::HttpLimits,
    origins: api::OriginPolicy,
    max_message_size: usize,
    send_budget_wait: Duration,
    max_event_subscribers: usize,
    /// Chaos triggers, shared by SMTP sessions and `/api/v1/chaos`.
    chaos: smtp::chaos::Chaos,
    /// Path prefix of everything HTTP serves (`MP_WEBROOT`).
    webroot: String,
    /// Who may use the send API (`MP_SEND_API_AUTH*`).
    send_auth: api::SendAuth,
    /// The link check's settings.
    link_check: checks::link::LinkChecker,
    /// spamd for the spam check.
    spamassassin: Option<checks::spam::SpamAssassin>,
    /// `/metrics` on the UI listener (`MP_ENABLE_PROMETHEUS=true`).
    metrics_on_ui: bool,
    /// The metrics' own listener (`MP_ENABLE_PROMETHEUS=ip:port`).
    metrics: Option<tokio::net::TcpListener>,
}

impl Catcher {
    /// Opens the database and binds the SMTP and HTTP addresses.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let store_options = StoreOptions {
            tenant: config.tenant.clone(),
            max_messages: config.max_messages,
            max_age: config.max_age,
            compression_level: config.compression_level,
            disable_wal: config.disable_wal,
            tagging: config.tagging.clone(),
            ignore_duplicate_ids: config.ignore_duplicate_ids,
            use_message_dates: config.use_message_dates,
            ..StoreOptions::default()
        };
        let store = Store::open(&config.database, store_options)?;
        auth::set_bcrypt_threads(config.bcrypt_threads);
        let tls = tls_pair(&config.smtp_tls_cert, &config.smtp_tls_key, "MP_SMTP_TLS")?;
        if tls.is_none() && (config.smtp_implicit_tls || config.smtp_require_starttls) {
            return Err(Error::Config(
                "SMTP TLS is required but MP_SMTP_TLS_CERT/MP_SMTP_TLS_KEY are not set".into(),
            ));
        }
        let http_tls = tls_pair(&config.ui_tls_cert, &config.ui_tls_key, "MP_UI_TLS")?;
        let data_budget = (config.smtp_max_data_memory > 0).then(|| {
            // Room for one message of the largest size, so it always fits
            // once others are done; without a size limit the budget alone
            // bounds one message.
            let cap = if config.max_message_size == config::UNLIMITED {
                config.smtp_max_data_memory
            } else {
                config.smtp_max_data_memory.max(config.max_message_size)
            };
            std::sync::Arc::new(smtp::DataBudget::new(cap))
        });
        let chaos: smtp::chaos::Chaos = config
            .chaos
            .map(|t| std::sync::Arc::new(std::sync::RwLock::new(t)));
        let options = ServerOptions {
            limits: Limits {
                max_message_size: config.max_message_size,
                max_recipients: config.smtp_max_recipients,
                require_tls: config.smtp_require_starttls,
                auth: config.smtp_auth.clone(),
                auth_allow_insecure: config.smtp_auth_allow_insecure,
                data_budget: data_budget.clone(),
                allowed_recipients: config.smtp_allowed_recipients.clone(),
                ignore_rejected_recipients: config.smtp_ignore_rejected_recipients,
                chaos: chaos.clone(),
                strict_rfc_headers: config.smtp_strict_rfc_headers,
                ..Limits::default()
            },
            tls,
            implicit_tls: config.smtp_implicit_tls,
            max_connections: config.smtp_max_connections,
            idle_timeout: config.smtp_idle_timeout,
            tls_handshake_timeout: config.smtp_tls_handshake_timeout,
            drain_timeout: config.shutdown_timeout,
        };
        // With auto-relay or forwarding, SMTP delivers through the outbound
        // queue (store first, relay after); otherwise straight to the store.
        let sink: std::sync::Arc<dyn smtp::Deliver> = match (&config.relay, &config.forward) {
            (Some(r), _) if r.all || r.matching.is_some() => {
                relay::Outbound::start(store.clone(), config.relay.clone(), config.forward.clone())
            }
            (_, Some(_)) => {
                relay::Outbound::start(store.clone(), config.relay.clone(), config.forward.clone())
            }
            _ => std::sync::Arc::new(store.clone()),
        };
        let smtp = SmtpServer::bind(&config.smtp_bind, options, sink).await?;
        let pop3 = match &config.pop3_auth {
            None => None,
            Some(users) => {
                let options = pop3::Pop3Options {
                    limits: pop3::proto::Limits {
                        name: pop3_name(&config.label),
                        ..pop3::proto::Limits::default()
                    },
                    users: users.clone(),
                    tls: tls_pair(&config.pop3_tls_cert, &config.pop3_tls_key, "MP_POP3_TLS")?,
                    implicit_tls: !config.pop3_stls,
                    max_connections: config.pop3_max_connections,
                    idle_timeout: config.pop3_idle_timeout,
                    tls_handshake_timeout: config.smtp_tls_handshake_timeout,
                    drain_timeout: config.shutdown_timeout,
                    data_budget: data_budget.clone(),
                };
                Some(pop3::Pop3Server::bind(&config.pop3_bind, options, store.clone()).await?)
            }
        };
        let http = tokio::net::TcpListener::bind(&config.http_bind)
            .await
            .map_err(|source| Error::Bind {
                addr: config.http_bind.clone(),
                source,
            })?;
        let metrics = match &config.prometheus {
            api::metrics::Prometheus::Listen(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Bind {
                        addr: format!("{addr} (MP_ENABLE_PROMETHEUS)"),
                        source,
                    })?,
            ),
            _ => None,
        };
        Ok(Self {
            relay: config.relay.clone(),
            webhook: config.webhook.clone().map(|mut w| {
                if w.label.is_empty() {
                    w.label = config.label.clone();
                }
                (w, std::sync::Arc::default())
            }),
            store,
            smtp,
            pop3,
            http,
            http_tls,
            shutdown_timeout: config.shutdown_timeout,
            label: config.label,
            hide_delete_all_button: config.hide_delete_all_button,
            block_remote_css_and_fonts: config.block_remote_css_and_fonts,
            ui_auth: config.ui_auth,
            data_budget,
            http_limits: config.http_limits,
            origins: config.origins,
            max_message_size: config.max_message_size,
            send_budget_wait: config.send_budget_wait,
            max_event_subscribers: config.max_event_subscribers,
            chaos,
            webroot: config.webroot,
            send_auth: config.send_auth,
            link_check: config.link_check,
            spamassassin: config.spamassassin,
            metrics_on_ui: config.prometheus == api::metrics::Prometheus::Ui,
            metrics,
        })
    }

    /// The SMTP address actually bound.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The POP3 address actually bound, when POP3 runs.
    pub fn pop3_addr(&self) -> Option<SocketAddr> {
        self.pop3
            .as_ref()
            .map(|p| p.local_addr().expect("a bound listener has an address"))
    }

    /// What the webhook task has done, when webhooks are configured.
    pub fn webhook_stats(&self) -> Option<std::sync::Arc<webhook::WebhookStats>> {
        self.webhook.as_ref().map(|(_, stats)| stats.clone())
    }

    /// Whether the API and UI are served over HTTPS.
    pub fn http_is_tls(&self) -> bool {
        self.http_tls.is_some()
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address of the metrics' own listener
    /// (`MP_ENABLE_PROMETHEUS=ip:port`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// The memory cap over message content held by SMTP sessions, if any
    /// (lets callers watch how much is in use).
    pub fn data_budget(&self) -> Option<&std::sync::Arc<smtp::DataBudget>> {
        self.data_budget.as_ref()
    }

    /// The message store (shared with the API).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves SMTP and HTTP until `shutdown` completes. SMTP stops first
    /// (sessions in a transaction may finish it), then HTTP; the store is
    /// dropped last, after every acknowledged message was committed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        // DNS-rebinding protection for a loopback listener (see api::origin).
        let host_check = api::HostCheck::for_listener(&self.origins, self.http_addr().ip());
        let options = api::ApiOptions {
            label: self.label,
            hide_delete_all_button: self.hide_delete_all_button,
            block_remote_css_and_fonts: self.block_remote_css_and_fonts,
            relay: self.relay.map(std::sync::Arc::new),
            auth: self.ui_auth,
            cors: self.origins.cors,
            max_message_size: self.max_message_size,
            memory_budget: self.data_budget.clone(),
            send_budget_wait: self.send_budget_wait,
            max_event_subscribers: self.max_event_subscribers,
            chaos: self.chaos,
            webroot: self.webroot.clone(),
            metrics: self.metrics_on_ui,
            send_auth: self.send_auth,
            link_check: self.link_check,
            spamassassin: self.spamassassin,
            ..api::ApiOptions::default()
        };
        let router = api::webroot::mount(&self.webroot, http_router(&self.store, options));
        let router = match host_check {
            Some(check) => {
                router.layer(axum::middleware::from_fn_with_state(check, api::check_host))
            }
            None => router,
        };
        let http_stop = stopped(stop_rx.clone());
        let http = tokio::spawn(api::serve(
            self.http,
            router,
            self.http_tls,
            self.http_limits,
            http_stop,
        ));
        // Mailpit's separate metrics server: `/metrics` only, no auth.
        let metrics = self.metrics.map(|listener| {
            tokio::spawn(api::serve(
                listener,
                api::metrics::router(self.store.clone()),
                None,
                api::HttpLimits::default(),
                stopped(stop_rx.clone()),
            ))
        });
        if let Some((config, stats)) = self.webhook {
            webhook::spawn(&self.store, config, stats, stopped(stop_rx.clone()))
                .map_err(|e| Error::Config(format!("webhook client: {e}")))?;
        }
        let pop3 = self
            .pop3
            .map(|p| tokio::spawn(p.run(stopped(stop_rx.clone()))));
        let smtp = tokio::spawn(self.smtp.run(stopped(stop_rx)));
        shutdown.await;
        tracing::info!("shutting down: SMTP and POP3 first, then HTTP");
        // One deadline for both: the drain of SMTP sessions and of HTTP
        // connections (keep-alive, websockets) together stay within the
        // shutdown timeout.
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let _ = stop_tx.send(true);
        let smtp_abort = smtp.abort_handle();
        if tokio::time::timeout_at(deadline, smtp).await.is_err() {
            tracing::warn!("SMTP sessions still open at the shutdown deadline; closing them");
            smtp_abort.abort();
        }
        if let Some(pop3) = pop3 {
            let pop3_abort = pop3.abort_handle();
            if tokio::time::timeout_at(deadline, pop3).await.is_err() {
                tracing::warn!("POP3 sessions still open at the shutdown deadline; closing them");
                pop3_abort.abort();
            }
        }
        if let Some(metrics) = metrics {
            let abort = metrics.abort_handle();
            if tokio::time::timeout_at(deadline, metrics).await.is_err() {
                abort.abort();
            }
        }
        let http_abort = http.abort_handle();
        match tokio::time::timeout_at(deadline, http).await {
            Ok(Ok(Err(source))) => Err(Error::Http(source)),
            Err(_) => {
                tracing::warn!(
                    "HTTP connections still open at the shutdown deadline; closing them"
                );
                http_abort.abort();
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Loads a TLS certificate and key given as a pair (`{what}_CERT` and
/// `{what}_KEY`): both or neither.
fn tls_pair(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
    what: &str,
) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, Error> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(tls::load(cert, key)?)),
        (None, None) => Ok(None),
        _ => Err(Error::Config(format!(
            "{what}_CERT and {what}_KEY must be set together"
        ))),
    }
}

/// The name the POP3 greeting gives, as Mailpit's (`mailsafe (label)`).
fn pop3_name(label: &str) -> String {
    if label.is_empty() {
        "mailsafe".into()
    } else {
        let label: String = label.chars().filter(|c| !c.is_control()).collect();
        format!("mailsafe ({label})")
    }
}

/// The HTTP side: Mailpit's `/api/v1` and the web UI on one router, both
/// behind basic auth when it is configured (the API keeps its probes open).
fn http_router(store: &Store, options: api::ApiOptions) -> axum::Router {
    let ui = ui::router(&options.webroot, options.block_remote_css_and_fonts);
    let ui = match options.auth.clone() {
        Some(auth) => ui.layer(axum::middleware::from_fn_with_state(
            auth,
            api::require_basic_auth,
        )),
        None => ui,
    };
    api::router(store.clone(), options)
        .merge(ui)
        // Message content (views, parts, raw) gets a sandboxing CSP.
        .layer(axum::middleware::from_fn(ui::protect_message_content))
}
