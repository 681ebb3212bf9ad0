//! Prometheus metrics as Mailpit exposes them (`MP_ENABLE_PROMETHEUS`):
//! the same eleven metric names, help texts and types (Mailpit's
//! `internal/prometheus`), in the text exposition format, on `/metrics` of
//! the UI listener (`true`: under the webroot and behind the UI's basic
//! auth, as Mailpit's) or on a listener of its own (`ip:port`: `/metrics`
//! only, no auth, as Mailpit's separate server).
//!
//! Mailpit refreshes its values every 15 s; here each scrape reads them
//! (two counts and a tag count over the indexed tables), so a scrape never
//! shows a stale mailbox.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiError;
use crate::storage::Store;

/// Where the metrics are served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Prometheus {
    /// Not at all (`false` or unset).
    #[default]
    Off,
    /// On `/metrics` of the UI listener (`true`).
    Ui,
    /// On `/metrics` of a listener of its own at this address (`ip:port`).
    Listen(String),
}

impl Prometheus {
    /// Mailpit's values: `true` (any case) = the UI listener, `false` or
    /// empty = off, anything else an address. An address needs a port
    /// (`1` or `yes` would be one in Mailpit, which then fails to listen).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "" | "false" => Ok(Prometheus::Off),
            "true" => Ok(Prometheus::Ui),
            _ if s.contains(':') => Ok(Prometheus::Listen(s.to_string())),
            _ => Err(format!(
                "MP_ENABLE_PROMETHEUS={s:?}: expected true, false or an ip:port to listen on"
            )),
        }
    }
}

/// The exposition of `store`'s figures: Mailpit's metrics, sorted by name.
pub async fn render(store: &Store) -> Result<String, crate::storage::StorageError> {
    let (total, unread) = store.counts().await?;
    let tags = store.tag_counts().await?;
    let st = store.runtime_stats();
    let plain: [(&str, &str, &str, u64); 10] = [
        (
            "mailpit_database_size_bytes",
            "Size of the database in bytes",
            "gauge",
            store.db_size(),
        ),
        (
            "mailpit_memory_usage_bytes",
            "Memory usage in bytes",
            "gauge",
            super::handlers::memory(),
        ),
        (
            "mailpit_messages",
            "Total number of messages in the database",
            "gauge",
            total,
        ),
        (
            "mailpit_messages_deleted_total",
            "Total number of messages deleted",
            "counter",
            st.deleted,
        ),
        (
            "mailpit_messages_unread",
            "Number of unread messages in the database",
            "gauge",
            unread,
        ),
        (
            "mailpit_smtp_accepted_size_bytes_total",
            "Total size of accepted SMTP messages in bytes",
            "counter",
            st.accepted_size,
        ),
        (
            "mailpit_smtp_accepted_total",
            "Total number of SMTP messages accepted",
            "counter",
            st.accepted,
        ),
        (
            "mailpit_smtp_ignored_total",
            "Total number of SMTP messages ignored (duplicates)",
            "counter",
            st.ignored,
        ),
        (
            "mailpit_smtp_rejected_total",
            "Total number of SMTP messages rejected",
            "counter",
            st.rejected,
        ),
        (
            "mailpit_uptime_seconds",
            "Uptime of Mailpit in seconds",
            "gauge",
            store.uptime().as_secs(),
        ),
    ];
    let mut out = String::with_capacity(2048);
    let head = |out: &mut String, name: &str, help: &str, typ: &str| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {typ}\n");
    };
    // Mailpit writes them sorted by name; the tag gauge sorts between
    // smtp_rejected and uptime.
    for (name, help, typ, value) in plain {
        if name == "mailpit_uptime_seconds" {
            head(
                &mut out,
                "mailpit_tag_messages",
                "Number of messages per tag",
                "gauge",
            );
            for (tag, n) in &tags {
                let _ = writeln!(
                    out,
                    "mailpit_tag_messages{{tag=\"{}\"}} {n}",
                    escape_label(tag)
                );
            }
        }
        head(&mut out, name, help, typ);
        let _ = writeln!(out, "{name} {value}");
    }
    Ok(out)
}

/// A label value as the exposition format escapes it.
fn escape_label(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('\n', r"\n")
        .replace('"', "\\\"")
}

/// `GET /metrics` over `store`.
pub(crate) async fn metrics(State(store): State<Store>) -> Result<Response, ApiError> {
    let body = render(&store).await?;
    let mut res = body.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}

/// The separate listener's router: `/metrics` only.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(store)
}
