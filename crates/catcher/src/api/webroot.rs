//! `MP_WEBROOT`: the whole HTTP side (UI, API, websocket, assets, swagger,
//! `/view`, probes) under a path prefix, for a catcher behind a shared
//! ingress path (`https://tools.example.com/mail/`).
//!
//! Rather than registering every route twice, [`mount`] wraps the finished
//! router: a request under the prefix has the prefix taken off its path
//! before the inner router sees it, so every route, and every middleware
//! that looks at paths (CORS on `/api/`, the sandbox policy on `/view/`),
//! works unchanged; an absolute `Location` the inner router answers with
//! (`/view/latest` -> `/?m=ID`, the `//` clean-up) gets the prefix put back.
//! As in Mailpit, the bare prefix without its trailing slash (`GET /mail`)
//! is a 302 to `/mail/`, and nothing outside the prefix is served (404).

use axum::Router;
use axum::extract::{Request, State};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Serves `app` under `webroot` (normalised: `/` or `/a/b/`, see
/// `options::value::webroot`). `/` returns `app` as it is.
pub fn mount(webroot: &str, app: Router) -> Router {
    if webroot == "/" || webroot.is_empty() {
        return app;
    }
    let root: &'static str = Box::leak(webroot.to_string().into_boxed_str());
    Router::new()
        .fallback_service(app)
        .layer(axum::middleware::from_fn_with_state(root, strip))
}

/// Takes the prefix off the request's path, or answers the bare prefix and
/// paths outside it.
async fn strip(State(root): State<&'static str>, mut req: Request, next: Next) -> Response {
    let bare = root.trim_end_matches('/');
    let path = req.uri().path();
    if path == bare {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            return (
                StatusCode::FOUND,
                [(header::LOCATION, HeaderValue::from_static(root))],
            )
                .into_response();
        }
        return ApiError::NotFound.into_response();
    }
    let Some(rest) = path.strip_prefix(root) else {
        return ApiError::NotFound.into_response();
    };
    let mut inner = String::with_capacity(rest.len() + 1);
    inner.push('/');
    inner.push_str(rest);
    if let Some(q) = req.uri().query() {
        inner.push('?');
        inner.push_str(q);
    }
    // Through PathAndQuery: `//x` (a client's doubled slash) is a path
    // there, where `Uri` would read an authority.
    let Ok(path_and_query) = inner.parse::<PathAndQuery>() else {
        return ApiError::NotFound.into_response();
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    match Uri::from_parts(parts) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return ApiError::NotFound.into_response(),
    }
    let mut res = next.run(req).await;
    // A redirect to a path of ours: put the prefix back.
    if let Some(loc) = res
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        && loc.starts_with('/')
        && !loc.starts_with("//")
        && let Ok(v) = HeaderValue::from_str(&format!("{bare}{loc}"))
    {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app() -> Router {
        let inner = Router::new()
            .route("/", get(|| async { "index" }))
            .route(
                "/api/v1/info",
                get(|uri: Uri| async move { uri.to_string() }),
            )
            .route(
                "/view/latest",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/?m=abc")]) }),
            );
        mount("/mail/", inner)
    }

    async fn fetch(path: &str) -> (StatusCode, Option<String>, String) {
        let res = app()
            .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let loc = res
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, loc, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn routes_live_under_the_prefix_only() {
        assert_eq!(fetch("/mail/").await.2, "index");
        let (status, _, body) = fetch("/mail/api/v1/info?x=1").await;
        assert_eq!(status, 200);
        assert_eq!(
            body, "/api/v1/info?x=1",
            "the inner router sees the path without the prefix"
        );
        assert_eq!(fetch("/api/v1/info").await.0, 404);
        assert_eq!(fetch("/").await.0, 404);
        assert_eq!(fetch("/mailx/").await.0, 404);
    }

    #[tokio::test]
    async fn the_bare_prefix_and_inner_redirects_keep_the_prefix() {
        assert_eq!(fetch("/mail").await.1.as_deref(), Some("/mail/"));
        let (status, loc, _) = fetch("/mail/view/latest").await;
        assert_eq!(status, 302);
        assert_eq!(loc.as_deref(), Some("/mail/?m=abc"));
    }
}
