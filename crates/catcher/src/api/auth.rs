//! HTTP basic auth for the API and UI (`MP_UI_AUTH`, `MP_UI_AUTH_FILE`).
//!
//! Credentials are plain pairs (`MP_UI_AUTH="user:pass user2:pass2"`) or an
//! htpasswd file with bcrypt hashes. bcrypt is slow on purpose, so a
//! successful check is remembered as a SHA-256 of the credentials (never the
//! password itself) and later requests with the same header skip it; the
//! check itself runs off the async workers.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// Problems reading auth configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The htpasswd file could not be read.
    #[error("cannot read auth file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A credential entry is not `user:secret`. Only its position is
    /// reported: a malformed entry may well be (part of) a password.
    #[error("invalid auth entry #{entry} in {origin}: expected user:password")]
    Entry {
        /// 1-based position of the entry (line number in a file).
        entry: usize,
        /// Where it came from (env var or file).
        origin: String,
    },
    /// No credentials were given.
    #[error("no credentials in {0}")]
    Empty(String),
}

#[derive(Clone)]
enum Secret {
    Plain(String),
    Bcrypt(String),
}

/// A set of accepted users and their passwords or bcrypt hashes.
#[derive(Clone)]
pub struct Credentials {
    users: Vec<(String, Secret)>,
}

impl std::fmt::Debug for Credentials {
    // Never print secrets, not even hashes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} users)", self.users.len())
    }
}

impl Credentials {
    fn from_entries<'a>(
        entries: impl Iterator<Item = &'a str>,
        origin: &str,
    ) -> Result<Self, AuthError> {
        let mut users = Vec::new();
        for (n, e) in entries.enumerate() {
            let e = e.trim();
            if e.is_empty() || e.starts_with('#') {
                continue;
            }
            let bad = || AuthError::Entry {
                entry: n + 1,
                origin: origin.into(),
            };
            let Some((u, p)) = e.split_once(':') else {
                return Err(bad());
            };
            if u.is_empty() {
                return Err(bad());
            }
            let secret = if p.starts_with("$2a$") || p.starts_with("$2b$") || p.starts_with("$2y$")
            {
                Secret::Bcrypt(p.to_string())
            } else {
                Secret::Plain(p.to_string())
            };
            users.push((u.to_string(), secret));
        }
        if users.is_empty() {
            return Err(AuthError::Empty(origin.into()));
        }
        Ok(Credentials { users })
    }

    /// Parses `MP_UI_AUTH`: space-separated `user:password` pairs.
    pub fn from_pairs(s: &str) -> Result<Self, AuthError> {
        Self::from_entries(s.split_whitespace(), "MP_UI_AUTH")
    }

    /// Reads an htpasswd file (`user:$2y$...` bcrypt lines, or plain).
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_entries(text.lines(), &path.display().to_string())
    }

    /// The middleware state checking against these users.
    pub fn into_basic_auth(self) -> BasicAuth {
        BasicAuth {
            creds: Arc::new(self),
            passed: Arc::default(),
        }
    }

    /// Checks a user name and password.
    pub fn check(&self, user: &str, pass: &str) -> bool {
        self.users.iter().any(|(u, s)| {
            u == user
                && match s {
                    Secret::Plain(p) => constant_eq(p.as_bytes(), pass.as_bytes()),
                    Secret::Bcrypt(h) => bcrypt::verify(pass, h).unwrap_or(false),
                }
        })
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// How many verified credential digests are remembered; past that the cache
/// starts over (only successes are cached, so guessing cannot grow it).
const AUTH_CACHE_MAX: usize = 256;

/// State of the basic-auth middleware: the credentials and a cache of
/// digests of credentials that already passed.
#[derive(Clone)]
pub struct BasicAuth {
    creds: Arc<Credentials>,
    passed: Arc<Mutex<HashSet<[u8; 32]>>>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicAuth({:?})", self.creds)
    }
}

impl BasicAuth {
    async fn allows(&self, headers: &HeaderMap) -> bool {
        let Some((u, p)) = credentials(headers) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(format!("{u}\0{p}").as_bytes()).into();
        if self.passed.lock().is_ok_and(|s| s.contains(&digest)) {
            return true;
        }
        let creds = self.creds.clone();
        let ok = tokio::task::spawn_blocking(move || creds.check(&u, &p))
            .await
            .unwrap_or(false);
        if ok && let Ok(mut s) = self.passed.lock() {
            if s.len() >= AUTH_CACHE_MAX {
                s.clear();
            }
            s.insert(digest);
        }
        ok
    }
}

/// Middleware: `401` with a Basic challenge unless the request carries valid
/// credentials. Browsers then resend them with every request of the page,
/// the websocket included. Use as
/// `router.layer(axum::middleware::from_fn_with_state(auth, api::require_basic_auth))`.
pub async fn require_basic_auth(
    State(auth): State<BasicAuth>,
    req: Request,
    next: Next,
) -> Response {
    if auth.allows(req.headers()).await {
        return next.run(req).await;
    }
    let mut res = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"mailsafe\", charset=\"UTF-8\""),
    );
    res
}
