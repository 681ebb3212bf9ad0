//! The web UI: a single page (plain HTML, CSS and JavaScript, no build step)
//! that talks to the `/api/v1` endpoints and the `/api/events` websocket.
//!
//! The assets are compiled into the binary with `include_str!`, so building
//! needs neither npm nor the network, and a running catcher never reads its UI
//! from disk. [`router`] serves the page at `/` and the assets under `/ui/`.
//!
//! Security: mail is hostile input. The page itself is served with a strict
//! Content-Security-Policy (scripts only from our own origin, no inline
//! script), and the JavaScript renders every message field with
//! `textContent`, never as markup. A message's HTML body is shown in an
//! `<iframe sandbox>` without `allow-scripts` or `allow-same-origin`, built
//! from `srcdoc` with its own CSP that blocks scripts, and remote content
//! unless the user asks for it.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The page's Content-Security-Policy.
///
/// - `script-src 'self'`: no inline script, no `eval`, nothing remote, so even
///   markup that slipped into the DOM could not run code.
/// - `img-src` allows remote images because the message preview inherits this
///   policy (srcdoc frames do) and the user may opt in to remote images there;
///   the preview's own, stricter policy blocks them by default.
/// - `style-src 'unsafe-inline'` for the same reason: mail HTML is styled
///   inline, and the preview inherits this policy. Remote stylesheets and
///   fonts likewise, unless `block_remote_css_and_fonts`
///   (`MP_BLOCK_REMOTE_CSS_AND_FONTS`): then only our own origin, as Mailpit
///   restricts its page policy, and since both policies apply to the
///   preview, no remote stylesheet or font loads even after the user opts
///   in to remote content.
/// - `frame-ancestors 'none'`: the UI cannot be framed (clickjacking).
pub fn csp(block_remote_css_and_fonts: bool) -> String {
    let remote = if block_remote_css_and_fonts {
        ""
    } else {
        " http: https:"
    };
    format!(
        "default-src 'self'; script-src 'self'; \
         style-src 'self' 'unsafe-inline'{remote}; \
         img-src 'self' data: blob: http: https:; font-src 'self' data:{remote}; \
         connect-src 'self' ws: wss:; frame-src 'self'; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The policy put on every response that carries a message's own content
/// (`/view/{ID}.html`, `/view/{ID}.txt`, `/api/v1/message/{ID}/part/…`,
/// `/api/v1/message/{ID}/raw`).
///
/// Those are served from the UI's origin, so a browser that opens one (a
/// middle-click on an attachment, a test tool visiting `/view/latest.html`)
/// would otherwise run the mail's scripts with access to the API. `sandbox`
/// without `allow-scripts` and `allow-same-origin` runs no script and gives
/// the document an opaque origin; the fetch directives keep it from loading
/// anything but the message's own parts and inline data.
pub const UNTRUSTED_CSP: &str = "sandbox allow-popups allow-popups-to-escape-sandbox; \
    default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; font-src data:; \
    media-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'self'";

/// Whether `path` serves content taken from a message (see [`UNTRUSTED_CSP`]).
fn is_untrusted(path: &str) -> bool {
    if path.starts_with("/view/") {
        return true;
    }
    match path.strip_prefix("/api/v1/message/") {
        Some(rest) => match rest.split_once('/') {
            Some((_id, tail)) => tail == "raw" || tail.starts_with("part/"),
            None => false,
        },
        None => false,
    }
}

/// Middleware for the whole HTTP router (UI and API): puts
/// [`UNTRUSTED_CSP`] and `nosniff` on every response that carries message
/// content, so no route serves mail HTML that can run script in our origin.
///
/// Use as `router.layer(axum::middleware::from_fn(ui::protect_message_content))`.
pub async fn protect_message_content(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let untrusted = is_untrusted(req.uri().path());
    let mut res = next.run(req).await;
    if untrusted {
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(UNTRUSTED_CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    res
}

/// One embedded file: URL name, media type, content.
#[derive(Clone, Copy)]
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file the UI needs. `index.html` is served at `/`, the others under
/// `/ui/{name}`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("assets/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset {
        name: "theme.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/theme.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("assets/favicon.svg"),
    },
];

/// The routes of the web UI: the page at `/` and `/ui/{file}` (its
/// assets), for a catcher served under `webroot` (`/` or `/a/b/`,
/// `MP_WEBROOT`), the page under [`csp`]`(block_remote_css_and_fonts)`.
///
/// Merge it with the API router; it needs no state because everything it
/// shows comes from the API at run time. Under a webroot the page's own
/// links and asset paths carry the prefix, and `data-webroot` on `<html>`
/// tells the script where the API and the websocket are (the prefix itself
/// is taken off by `api::webroot::mount` before routing).
pub fn router(webroot: &str, block_remote_css_and_fonts: bool) -> Router {
    let index = &*Box::leak(Box::new(index_page(webroot, block_remote_css_and_fonts)));
    let tag = &*Box::leak(body_etag(index.body).into_boxed_str());
    let policy = &*Box::leak(csp(block_remote_css_and_fonts).into_boxed_str());
    Router::new()
        .route(
            "/",
            get(move |headers: HeaderMap| async move { serve(index, tag, &headers, policy) }),
        )
        .route(
            "/ui/{file}",
            get(move |file: Path<String>, headers: HeaderMap| asset(file, headers, policy)),
        )
}

/// `index.html` with its absolute paths under `webroot`; with
/// `block_remote_css_and_fonts`, `data-block-remote-css` on `<html>` tells
/// the script (which says so next to the remote-content toggle).
fn index_page(webroot: &str, block_remote_css_and_fonts: bool) -> Asset {
    let page = &ASSETS[0];
    let block = if block_remote_css_and_fonts {
        " data-block-remote-css=\"1\""
    } else {
        ""
    };
    let body = page
        .body
        .replace("=\"/", &format!("=\"{webroot}"))
        .replacen(
            "<html lang=\"en\">",
            &format!("<html lang=\"en\" data-webroot=\"{webroot}\"{block}>"),
            1,
        );
    Asset {
        body: Box::leak(body.into_boxed_str()),
        ..*page
    }
}

/// `GET /ui/{file}`: an embedded asset, 404 for anything else.
async fn asset(Path(file): Path<String>, headers: HeaderMap, policy: &'static str) -> Response {
    match ASSETS.iter().position(|a| a.name == file) {
        Some(i) => serve(&ASSETS[i], etag(i), &headers, policy),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// Answers with the asset, or `304 Not Modified` when the browser already has
/// this version. `no-cache` makes the browser revalidate each time, so a new
/// binary's UI shows up on the next load while unchanged files cost a 304.
/// The page gets `policy` (see [`csp`]).
fn serve(asset: &Asset, etag: &str, headers: &HeaderMap, policy: &'static str) -> Response {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if asset.name == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(policy),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    res
}

/// A strong ETag of the embedded asset `i`, computed once.
fn etag(i: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    &TAGS.get_or_init(|| ASSETS.iter().map(|a| body_etag(a.body)).collect())[i]
}

/// A strong ETag: a hash of the content.
fn body_etag(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    format!("\"{}\"", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves the UI router on a free loopback port, as the catcher does.
    async fn start() -> String {
        start_with(router("/", false)).await
    }

    async fn start_with(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    #[tokio::test]
    async fn index_is_served_with_a_strict_csp() {
        let base = start().await;
        let res = client().get(format!("{base}/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let h = res.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe-eval"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        let body = res.text().await.unwrap();
        assert!(body.contains(r#"<script src="/ui/app.js""#));
        // No inline script: the CSP would block it, and it would be a hole.
        assert!(!body.contains("<script>"), "inline script in index.html");
    }

    #[tokio::test]
    async fn blocking_remote_css_and_fonts_narrows_the_page_policy() {
        let base = start_with(router("/", true)).await;
        let res = client().get(format!("{base}/")).send().await.unwrap();
        let policy = res.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            policy.contains("style-src 'self' 'unsafe-inline';"),
            "{policy}"
        );
        assert!(policy.contains("font-src 'self' data:;"), "{policy}");
        // Remote images stay possible (the user opts in per message).
        assert!(
            policy.contains("img-src 'self' data: blob: http: https:;"),
            "{policy}"
        );
        let body = res.text().await.unwrap();
        assert!(
            body.contains("data-block-remote-css=\"1\""),
            "the page is not told"
        );
        // The default lets the user load remote stylesheets and fonts too.
        let open = csp(false);
        assert!(
            open.contains("style-src 'self' 'unsafe-inline' http: https:;"),
            "{open}"
        );
        assert!(
            open.contains("font-src 'self' data: http: https:;"),
            "{open}"
        );
    }

    #[tokio::test]
    async fn assets_have_their_media_types() {
        let base = start().await;
        for (path, ty) in [
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/theme.js", "text/javascript; charset=utf-8"),
            ("/ui/app.css", "text/css; charset=utf-8"),
            ("/ui/favicon.svg", "image/svg+xml"),
        ] {
            let res = client().get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(res.status(), 200, "{path}");
            assert_eq!(res.headers()[header::CONTENT_TYPE], ty, "{path}");
            assert_eq!(res.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(!res.bytes().await.unwrap().is_empty(), "{path} is empty");
        }
    }

    #[tokio::test]
    async fn unknown_assets_and_traversal_are_404() {
        let base = start().await;
        for path in ["/ui/nope.js", "/ui/..%2Fmod.rs", "/ui/index.htm"] {
            let res = client().get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(res.status(), 404, "{path}");
        }
    }

    #[test]
    fn message_content_paths_are_recognised() {
        for p in [
            "/view/abc.html",
            "/view/latest.txt",
            "/api/v1/message/abc/part/2",
            "/api/v1/message/abc/part/2/thumb",
            "/api/v1/message/abc/raw",
        ] {
            assert!(is_untrusted(p), "{p}");
        }
        for p in [
            "/",
            "/ui/app.js",
            "/api/v1/messages",
            "/api/v1/message/abc",
            "/api/v1/message/abc/headers",
            "/api/events",
        ] {
            assert!(!is_untrusted(p), "{p}");
        }
    }

    #[tokio::test]
    async fn message_content_gets_the_sandbox_policy() {
        // A stand-in for the API's routes: the middleware only looks at paths.
        let app = Router::new()
            .route(
                "/view/{file}",
                get(|| async { "<script>alert(1)</script>" }),
            )
            .route("/api/v1/messages", get(|| async { "{}" }))
            .merge(router("/", false))
            .layer(axum::middleware::from_fn(protect_message_content));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let res = client()
            .get(format!("{base}/view/x.html"))
            .send()
            .await
            .unwrap();
        let csp = res.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.starts_with("sandbox "), "{csp}");
        assert!(!csp.contains("allow-scripts") && !csp.contains("allow-same-origin"));
        assert_eq!(res.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

        let api = client()
            .get(format!("{base}/api/v1/messages"))
            .send()
            .await
            .unwrap();
        assert!(api.headers().get(header::CONTENT_SECURITY_POLICY).is_none());
        // The page keeps its own policy, not the sandbox.
        let page = client().get(format!("{base}/")).send().await.unwrap();
        assert_eq!(
            page.headers()[header::CONTENT_SECURITY_POLICY],
            super::csp(false)
        );
    }

    #[tokio::test]
    async fn etag_revalidation_answers_304() {
        let base = start().await;
        let url = format!("{base}/ui/app.js");
        let first = client().get(&url).send().await.unwrap();
        let tag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = client()
            .get(&url)
            .header(header::IF_NONE_MATCH, &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
        assert!(again.bytes().await.unwrap().is_empty());
        let other = client()
            .get(&url)
            .header(header::IF_NONE_MATCH, "\"stale\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200);
    }
}
