//! The HTTP API, compatible with Mailpit's `/api/v1` (same paths, methods,
//! parameters and JSON field names), plus `/view/{ID}.html|.txt`, `/livez`,
//! `/readyz` and the `/api/events` websocket.
//!
//! Every handler reads or changes the store and nothing else; errors map to
//! Mailpit's answers: 404 `404 page not found` for unknown IDs, 400 with a
//! plain-text message for malformed input.

mod auth;
mod events;
mod handlers;
pub mod metrics;
mod origin;
mod request;
mod send;
mod serve;
mod swagger;
mod thumb;
pub mod webroot;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::auth::BasicAuth;
use crate::storage::{StorageError, Store};

pub use auth::{SendAuth, require_basic_auth};
pub use origin::{HostCheck, OriginPolicy, check_host};
pub use serve::{HttpLimits, serve};

/// Settings of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Largest request body accepted, in bytes (413 above it), on every
    /// route but the send API: the others take IDs, tags and flags.
    pub max_body: usize,
    /// Largest message the send API builds, and largest body it reads
    /// (`MP_MAX_MESSAGE_SIZE`, as in Mailpit).
    pub max_message_size: usize,
    /// The memory budget the send API reserves from, shared with SMTP
    /// sessions (`MAILSAFE_SMTP_MAX_DATA_MEMORY`); `None` = no cap.
    pub memory_budget: Option<Arc<crate::smtp::DataBudget>>,
    /// Optional label shown by the web UI (`MP_LABEL`).
    pub label: String,
    /// Hide the UI's "Delete all" button (`MP_HIDE_DELETE_ALL_BUTTON`).
    pub hide_delete_all_button: bool,
    /// No remote stylesheets or fonts in the UI's message preview
    /// (`MP_BLOCK_REMOTE_CSS_AND_FONTS`): the UI router's page policy.
    pub block_remote_css_and_fonts: bool,
    /// Basic auth for the API (`MP_UI_AUTH` / `MP_UI_AUTH_FILE`); `/livez`
    /// and `/readyz` stay open for Kubernetes probes. Layer the same value
    /// over the UI router with [`require_basic_auth`].
    pub auth: Option<BasicAuth>,
    /// Origins allowed to call the API from a browser besides the UI's own
    /// (`MP_API_CORS`, see [`OriginPolicy::cors`]).
    pub cors: String,
    /// Most `/api/events` websockets open at once; more get 503 (the UI
    /// opens one per tab).
    pub max_event_subscribers: usize,
    /// How long a send request waits for the memory budget before it is
    /// answered 503 with `Retry-After`.
    pub send_budget_wait: std::time::Duration,
    /// The relay server `POST /api/v1/message/{ID}/release` sends through
    /// (`MP_SMTP_RELAY_*`); `None` refuses releases.
    pub relay: Option<Arc<crate::relay::RelayConfig>>,
    /// Chaos triggers shared with the SMTP sessions (`MP_ENABLE_CHAOS`);
    /// `None` answers `/api/v1/chaos` 400, as Mailpit does.
    pub chaos: crate::smtp::chaos::Chaos,
    /// The path prefix everything is served under (`MP_WEBROOT`, `/` or
    /// `/a/b/`); the swagger document carries it as its `basePath`.
    pub webroot: String,
    /// Who may use the send API (`MP_SEND_API_AUTH*`); by default the
    /// UI's auth.
    pub send_auth: SendAuth,
    /// The link check's settings and per-host state
    /// (`MP_ALLOW_INTERNAL_HTTP_REQUESTS`, `MP_DISABLE_LINK_CHECK_RATE_LIMIT`,
    /// `MP_ALLOW_UNTRUSTED_TLS`).
    pub link_check: crate::checks::link::LinkChecker,
    /// spamd for the spam check (`MP_ENABLE_SPAMASSASSIN`); `None`: the
    /// check's route answers 404, as in Mailpit.
    pub spamassassin: Option<crate::checks::spam::SpamAssassin>,
    /// Serve Mailpit's Prometheus metrics on `/metrics` here
    /// (`MP_ENABLE_PROMETHEUS=true`).
    pub metrics: bool,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            max_body: 1024 * 1024,
            max_message_size: 50 * 1024 * 1024,
            memory_budget: None,
            label: String::new(),
            hide_delete_all_button: false,
            block_remote_css_and_fonts: false,
            auth: None,
            cors: String::new(),
            max_event_subscribers: 256,
            send_budget_wait: std::time::Duration::from_secs(10),
            relay: None,
            chaos: None,
            webroot: "/".into(),
            metrics: false,
            send_auth: SendAuth::Ui,
            link_check: Default::default(),
            spamassassin: None,
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Store,
    pub opts: Arc<ApiOptions>,
    /// Places for `/api/events` subscribers.
    pub subscribers: Arc<tokio::sync::Semaphore>,
}

/// The API's routes over `store`. Merge the UI router into it (or it into
/// the UI's); basic auth, when configured, guards every API route but the
/// probes.
pub fn router(store: Store, opts: ApiOptions) -> Router {
    let auth = opts.auth.clone();
    let cors = origin::CorsState {
        cors: origin::Cors::parse(&opts.cors),
        auth: auth.is_some(),
    };
    let max_body = opts.max_body;
    let metrics = opts.metrics.then(|| metrics::router(store.clone()));
    let send_auth = match &opts.send_auth {
        SendAuth::Ui => auth.clone(),
        SendAuth::Users(users) => Some(users.clone()),
        SendAuth::AcceptAny => None,
    };
    let state = AppState {
        subscribers: events::subscriber_slots(opts.max_event_subscribers),
        store,
        opts: Arc::new(opts),
    };
    use handlers as h;
    let r = Router::new()
        .route(
            "/api/v1/messages",
            get(h::list).put(h::set_read).delete(h::delete_messages),
        )
        .route("/api/v1/search", get(h::search).delete(h::delete_search))
        .route("/api/v1/message/{id}", get(h::message))
        .route("/api/v1/message/{id}/headers", get(h::headers))
        .route("/api/v1/message/{id}/raw", get(h::raw))
        .route("/api/v1/message/{id}/part/{part}", get(h::part))
        .route("/api/v1/message/{id}/part/{part}/thumb", get(h::part_thumb))
        .route("/api/v1/message/{id}/release", post(h::release))
        .route("/api/v1/message/{id}/html-check", get(h::html_check))
        .route("/api/v1/message/{id}/link-check", get(h::link_check))
        .route("/api/v1/message/{id}/sa-check", get(h::sa_check))
        .route("/api/v1/tags", get(h::tags).put(h::set_tags))
        .route(
            "/api/v1/tags/{tag}",
            put(h::rename_tag).delete(h::delete_tag),
        )
        .route("/api/v1/info", get(h::info))
        .route("/api/v1/webui", get(h::webui))
        .route("/api/v1/chaos", get(h::chaos).put(h::set_chaos))
        .route("/api/v1/swagger.json", get(swagger::swagger))
        .route("/view/{file}", get(h::view))
        .route("/api/events", get(events::websocket))
        .fallback(unmatched)
        .with_state(state.clone());
    // Behind the UI's auth, as Mailpit's integrated `/metrics`.
    let r = match metrics {
        Some(m) => r.merge(m),
        None => r,
    }
    .layer(DefaultBodyLimit::max(max_body));
    // The send API has its own credentials when `MP_SEND_API_AUTH*` is set,
    // as in Mailpit, so it sits outside the UI's auth layer.
    let send = Router::new()
        .route("/api/v1/send", post(send::send))
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(max_body));
    let r = with_auth(r, auth).merge(with_auth(send, send_auth));
    // Outside basic auth: a foreign origin is refused before credentials are
    // looked at, and preflights (sent without credentials) are answered.
    let r = r.layer(axum::middleware::from_fn_with_state(cors, origin::cors));
    let probes = Router::new()
        .route("/livez", get(h::live))
        .route("/readyz", get(h::ready))
        .with_state(state);
    r.merge(probes)
}

/// `router` behind basic auth, when there is any.
fn with_auth(router: Router, auth: Option<BasicAuth>) -> Router {
    match auth {
        Some(a) => router.layer(axum::middleware::from_fn_with_state(
            a,
            auth::require_basic_auth,
        )),
        None => router,
    }
}

/// Requests no route matched. Mailpit's Go router answers a path with
/// repeated slashes (`//view/ID.html`, which clients such as cypress-mailpit
/// build by joining a base URL and a path) with a 301 to the cleaned path, and
/// HTTP clients follow it; do the same so those clients work unchanged.
async fn unmatched(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if !path.contains("//") {
        return ApiError::NotFound.into_response();
    }
    let mut clean = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && clean.ends_with('/')) {
            clean.push(c);
        }
    }
    if let Some(q) = uri.query() {
        clean.push('?');
        clean.push_str(q);
    }
    match HeaderValue::from_str(&clean) {
        Ok(location) => (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, location)],
        )
            .into_response(),
        Err(_) => ApiError::NotFound.into_response(),
    }
}

/// An API failure, rendered the way Mailpit renders it.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 404 `404 page not found`.
    NotFound,
    /// 400 with a plain-text message.
    Bad(String),
    /// 400 with `{"Error": message}` (the send API's error shape).
    BadJson(String),
    /// 500 saying what failed in words any client may see; the details
    /// (file paths, table names, SQLite's message) only go to the log, see
    /// [`ApiError::internal`].
    Internal(&'static str),
    /// Another status with `{"Error": message}` (the send API's 413 and
    /// 415).
    Status(StatusCode, String),
    /// 503 with `{"Error": message}` and `Retry-After` (the send API while
    /// the memory budget is full).
    Busy(String),
}

/// Seconds a client told to come back (503) waits: about what storing one
/// large message takes.
const RETRY_AFTER_SECS: &str = "5";

impl ApiError {
    /// A 500 answered with `what` (client-visible, fixed text) after
    /// logging `detail`, which may name paths and tables.
    pub(crate) fn internal(what: &'static str, detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "{what}");
        ApiError::Internal(what)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound(_) => ApiError::NotFound,
            StorageError::Invalid(m) => ApiError::Bad(m),
            e => ApiError::internal("the message store failed", e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body, json) = match self {
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "404 page not found".to_string(),
                false,
            ),
            ApiError::Bad(m) => (StatusCode::BAD_REQUEST, m, false),
            ApiError::BadJson(m) => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "Error": m }).to_string(),
                true,
            ),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{m}\n"), false),
            ApiError::Status(status, m) => {
                (status, serde_json::json!({ "Error": m }).to_string(), true)
            }
            ApiError::Busy(m) => {
                let mut res = ApiError::Status(StatusCode::SERVICE_UNAVAILABLE, m).into_response();
                res.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
                return res;
            }
        };
        let mut res = (status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            }),
        );
        res
    }
}
