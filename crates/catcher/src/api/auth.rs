//! HTTP basic auth for the API and UI (`MP_UI_AUTH`, `MP_UI_AUTH_FILE`): the
//! `Authorization` header and the middleware. Credentials and their
//! verification live in [`crate::auth`], shared with SMTP AUTH.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::auth::{BasicAuth, Verdict};

/// Who may use the send API (`POST /api/v1/send`), as Mailpit decides it.
#[derive(Debug, Clone, Default)]
pub enum SendAuth {
    /// The UI's basic auth, if any (neither `MP_SEND_API_AUTH*` set).
    #[default]
    Ui,
    /// Only these users (`MP_SEND_API_AUTH`, `MP_SEND_API_AUTH_FILE`); the
    /// UI's users are not accepted there, nor are these on the UI.
    Users(BasicAuth),
    /// Anyone, with any credentials or none, even when the UI has auth
    /// (`MP_SEND_API_AUTH_ACCEPT_ANY`).
    AcceptAny,
}

/// Decodes the `Authorization: Basic` header into (user, password).
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The basic-auth user of a request, if any (recorded as `Username`).
pub fn basic_user(headers: &HeaderMap) -> Option<String> {
    credentials(headers).map(|(u, _)| u)
}

/// Middleware: `401` with a Basic challenge unless the request carries valid
/// credentials. Browsers then resend them with every request of the page,
/// the websocket included. A client (by IP, from the server's
/// `ConnectInfo`) that failed too often lately gets `429` with
/// `Retry-After` instead, without its credentials being checked. Use as
/// `router.layer(axum::middleware::from_fn_with_state(auth, api::require_basic_auth))`.
pub async fn require_basic_auth(
    State(auth): State<BasicAuth>,
    req: Request,
    next: Next,
) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match auth.judge(client, credentials(req.headers())).await {
        Verdict::Allowed => return next.run(req).await,
        Verdict::Throttled(wait) => {
            let mut res = (
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins, try again later\n",
            )
                .into_response();
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
            return res;
        }
        Verdict::Denied => {}
    }
    let mut res = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"mailsafe\", charset=\"UTF-8\""),
    );
    res
}
