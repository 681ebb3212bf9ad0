//! Browser-origin safety: which web pages may talk to the catcher.
//!
//! - **CORS as Mailpit's `MP_API_CORS`** (server/cors.go): a request to
//!   `/api/…` or `/view/*.html` carrying an `Origin` is refused with 403
//!   `Blocked due to CORS violation` unless the origin's `host[:port]` equals
//!   the request's `Host` (the UI's own pages), is listed in `MP_API_CORS`
//!   (comma- or space-separated, port-exact), or the list is `*`. Allowed
//!   requests get `Access-Control-Allow-Origin: <origin>` and Mailpit's
//!   method and header lists; `OPTIONS /api/v1/…` preflights get a blank 200.
//!   Requests without `Origin` (curl, API clients, same-origin GETs) pass,
//!   and so do plain GETs from opaque origins (`Origin: null`: the UI's
//!   sandboxed message preview loading inline images), without CORS headers.
//!   This is also what keeps a foreign page off the `/api/events` websocket,
//!   which browsers open with an `Origin` and without CORS preflight.
//! - **DNS rebinding**: a page on `evil.example` whose DNS flips to 127.0.0.1
//!   becomes "same origin" with a catcher on loopback, and its requests carry
//!   `Host: evil.example`. When the HTTP listener is bound to a loopback
//!   address (or [`OriginPolicy::allowed_hosts`] is set), requests whose
//!   `Host` is not `localhost`, `*.localhost`, a loopback IP or a listed name
//!   are refused with 403. A catcher bound to all interfaces is reachable
//!   under names it cannot know, so there the check is opt-in.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Which origins and hosts the HTTP side answers.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// `MP_API_CORS` as given: origins (`https://app.example:8443`,
    /// `app.example`) separated by commas or spaces, or `*`.
    pub cors: String,
    /// `MAILSAFE_HTTP_ALLOWED_HOSTS`: host names (no port) accepted in the
    /// `Host` header besides loopback ones, or `*` for any. When empty, the
    /// check applies only to a loopback listener.
    pub allowed_hosts: Vec<String>,
}

/// The CORS allow-list, parsed once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cors {
    any: bool,
    /// Lower-case `host[:port]` of each allowed origin.
    origins: Vec<String>,
}

impl Cors {
    /// Parses `MP_API_CORS` as Mailpit does: entries split on commas and
    /// spaces, `http://` assumed when no scheme is given, matched on
    /// `host[:port]`; a `*` entry allows every origin; entries with a `*`
    /// elsewhere or no host are ignored (with a warning).
    pub(crate) fn parse(list: &str) -> Self {
        let mut cors = Cors::default();
        for entry in list
            .split([',', ' '])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            if entry == "*" {
                return Cors {
                    any: true,
                    origins: Vec::new(),
                };
            }
            match origin_host(entry) {
                Some(host) if !entry.contains('*') => cors.origins.push(host),
                _ => tracing::warn!(
                    origin = entry,
                    "invalid CORS origin in MP_API_CORS, ignored"
                ),
            }
        }
        cors.origins.sort();
        cors.origins.dedup();
        cors
    }

    pub(crate) fn is_configured(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    fn allows(&self, origin_host: &str, request_host: &str) -> bool {
        self.any
            || origin_host.eq_ignore_ascii_case(request_host)
            || self.origins.iter().any(|o| o == origin_host)
    }
}

/// The lower-case `host[:port]` of an origin (`scheme://host[:port][/…]`,
/// `http://` assumed without a scheme); `None` if it names no host.
fn origin_host(origin: &str) -> Option<String> {
    let rest = match origin.split_once("://") {
        Some((_, rest)) => rest,
        None => origin,
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Drop any userinfo, as a URL parser would.
    let host = host.rsplit('@').next().unwrap_or_default();
    let name = host_name(host);
    if name.is_empty() {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// The name part of `host[:port]` (`[::1]:8025` gives `::1`).
fn host_name(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Whether Mailpit's CORS rules apply to `path`.
fn cors_applies(path: &str) -> bool {
    path.starts_with("/api/")
        || path
            .strip_prefix("/view/")
            .is_some_and(|f| f.ends_with(".html") && !f.contains('/'))
}

/// What the CORS middleware needs: the parsed allow-list and whether basic
/// auth guards the API (preflights skip it only when CORS is configured, as
/// in Mailpit: browsers send preflights without credentials).
#[derive(Debug, Clone)]
pub(crate) struct CorsState {
    pub cors: Cors,
    pub auth: bool,
}

/// Middleware: Mailpit's CORS check and headers (see the module docs).
pub(crate) async fn cors(State(state): State<CorsState>, req: Request, next: Next) -> Response {
    if !cors_applies(req.uri().path()) {
        return next.run(req).await;
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    if let Some(origin) = &origin {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let allowed = origin
            .to_str()
            .ok()
            .and_then(origin_host)
            .is_some_and(|o| state.cors.allows(&o, host));
        // `Origin: null` comes from opaque origins, among them the UI's own
        // sandboxed message preview loading its inline (cid) images. Let
        // such plain GETs through as if they carried no Origin: without
        // CORS headers the page cannot read the answer, and a websocket
        // upgrade (not covered by CORS) is still refused.
        let opaque_read = origin.as_bytes().eq_ignore_ascii_case(b"null")
            && matches!(*req.method(), Method::GET | Method::HEAD)
            && !req.headers().contains_key(header::UPGRADE);
        if !allowed && opaque_read {
            return next.run(req).await;
        }
        if !allowed {
            tracing::warn!(origin = ?origin, "blocking request from unauthorized origin");
            return (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Blocked due to CORS violation\n",
            )
                .into_response();
        }
    }
    let preflight = req.method() == Method::OPTIONS
        && req.uri().path().starts_with("/api/v1/")
        && (state.cors.is_configured() || !state.auth);
    let mut res = if preflight {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = origin {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, PUT, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("*"),
        );
    }
    res
}

/// The `Host` allow-list against DNS rebinding, resolved for one listener.
#[derive(Debug, Clone)]
pub struct HostCheck {
    /// Lower-case names accepted besides loopback ones.
    names: Vec<String>,
}

impl HostCheck {
    /// The check for a listener bound to `bound`, or `None` when every
    /// `Host` is accepted (all interfaces and no list, or a `*` entry).
    pub fn for_listener(policy: &OriginPolicy, bound: std::net::IpAddr) -> Option<Self> {
        if policy.allowed_hosts.iter().any(|h| h.trim() == "*") {
            return None;
        }
        if policy.allowed_hosts.is_empty() && !bound.is_loopback() {
            return None;
        }
        Some(HostCheck {
            names: policy
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        })
    }

    /// Whether a request with this `Host` header value may be answered.
    fn allows(&self, host: &str) -> bool {
        let name = host_name(host.trim())
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        {
            return true;
        }
        self.names.contains(&name)
    }
}

/// Middleware: refuses requests whose `Host` the [`HostCheck`] does not
/// allow. Requests without `Host` (HTTP/1.0 tools) pass: browsers always
/// send one.
pub async fn check_host(State(check): State<HostCheck>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).map(|h| h.to_str());
    match host {
        None => next.run(req).await,
        Some(Ok(h)) if check.allows(h) => next.run(req).await,
        Some(h) => {
            let h = h.unwrap_or("(not text)").to_string();
            tracing::warn!(host = %h, "request refused: Host not allowed (DNS rebinding protection)");
            (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!(
                    "Host {h:?} is not allowed: this catcher listens on loopback and answers \
                     localhost names only (set MAILSAFE_HTTP_ALLOWED_HOSTS to add names)\n"
                ),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_list_parses_like_mailpit() {
        let c = Cors::parse("example.com, https://App.Example:8443/x  ,bad*.com");
        assert_eq!(c.origins, vec!["app.example:8443", "example.com"]);
        assert!(c.allows("example.com", "127.0.0.1:8025"));
        assert!(!c.allows("example.com:8080", "127.0.0.1:8025"));
        assert!(c.allows("127.0.0.1:8025", "127.0.0.1:8025"));
        assert!(Cors::parse("a.com,*").any);
        assert!(!Cors::parse("").is_configured());
    }

    #[test]
    fn host_check_accepts_loopback_names_and_the_list() {
        let policy = OriginPolicy {
            allowed_hosts: vec!["Mail.Internal".into()],
            ..Default::default()
        };
        let check = HostCheck::for_listener(&policy, "0.0.0.0".parse().unwrap()).unwrap();
        for ok in [
            "localhost:8025",
            "app.localhost",
            "127.0.0.1:8025",
            "127.5.6.7",
            "[::1]:8025",
            "mail.internal:8025",
        ] {
            assert!(check.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8025",
            "10.0.0.1",
            "localhost.evil",
        ] {
            assert!(!check.allows(bad), "{bad}");
        }
        let open = OriginPolicy::default();
        assert!(HostCheck::for_listener(&open, "0.0.0.0".parse().unwrap()).is_none());
        assert!(HostCheck::for_listener(&open, "127.0.0.1".parse().unwrap()).is_some());
    }
}
