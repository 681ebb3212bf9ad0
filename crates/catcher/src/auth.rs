//! Credentials for SMTP AUTH (`MP_SMTP_AUTH`, `MP_SMTP_AUTH_FILE`) and for
//! HTTP basic auth on the API and UI (`MP_UI_AUTH`, `MP_UI_AUTH_FILE`), read
//! the way Mailpit reads them: space-separated `user:password` pairs, or a
//! file of `user:password` lines (htpasswd style: the password may be a
//! bcrypt hash such as `htpasswd -B` writes). One parser and one verifier
//! serve both protocols.
//!
//! Guessing is made slow and uninformative: bcrypt checks run off the async
//! workers in a bounded pool ([`Credentials::check`]), an unknown user costs
//! a bcrypt check like a known one, SMTP sessions are closed after a few
//! failures (`smtp::proto`), and HTTP clients that keep failing are
//! answered 429 for a while ([`Throttle`]).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// bcrypt checks that may run at once, process-wide (SMTP, POP3 and HTTP
/// share it): [`bcrypt_threads`] of `MAILSAFE_BCRYPT_THREADS`, by default
/// half the cores, at least one. A bcrypt check is ~50-250 ms of CPU by
/// design; unbounded, a burst of AUTH attempts would fill tokio's blocking
/// pool (which the store's reads use too) and every core, and mail would
/// stall behind password guesses.
static BCRYPT_POOL: OnceLock<Semaphore> = OnceLock::new();

/// The size of the bcrypt pool for a configured `threads` (0 = the
/// default, half the cores, at least one).
pub fn bcrypt_threads(threads: usize) -> usize {
    match threads {
        0 => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / 2).max(1)
        }
        n => n,
    }
}

/// Sizes the process-wide bcrypt pool (see [`bcrypt_threads`]); only the
/// first call before any check takes effect (a process runs one catcher;
/// tests that start several share the first one's pool). Returns whether
/// this call set it.
pub fn set_bcrypt_threads(threads: usize) -> bool {
    BCRYPT_POOL
        .set(Semaphore::new(bcrypt_threads(threads)))
        .is_ok()
}

fn bcrypt_pool() -> &'static Semaphore {
    BCRYPT_POOL.get_or_init(|| Semaphore::new(bcrypt_threads(0)))
}

/// Whether and how the SMTP server accepts AUTH.
#[derive(Debug, Clone, Default)]
pub enum AuthPolicy {
    /// AUTH is not offered; everyone may send.
    #[default]
    None,
    /// AUTH is offered and any username/password is accepted, for clients
    /// that insist on authenticating (Mailpit's `MP_SMTP_AUTH_ACCEPT_ANY`).
    AcceptAny,
    /// Only these users may send; MAIL before AUTH gets 530.
    Users(Arc<Credentials>),
}

impl AuthPolicy {
    /// Whether a client must authenticate before MAIL.
    pub fn required(&self) -> bool {
        matches!(self, AuthPolicy::Users(_))
    }
}

/// Problems reading credentials.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The credentials file could not be read.
    #[error("cannot read auth file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An entry is not `user:password`. Only its position is reported: a
    /// malformed entry may well be (part of) a password.
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

/// A stored password: plain text or a bcrypt hash.
#[derive(Clone)]
enum Secret {
    Plain(String),
    Bcrypt(String),
}

impl Secret {
    fn new(stored: &str) -> Self {
        if ["$2a$", "$2b$", "$2y$"]
            .iter()
            .any(|p| stored.starts_with(p))
        {
            Secret::Bcrypt(stored.to_owned())
        } else {
            Secret::Plain(stored.to_owned())
        }
    }
}

/// Usernames and their passwords (plain or bcrypt).
#[derive(Clone, Default)]
pub struct Credentials {
    users: HashMap<String, Secret>,
    /// A stored bcrypt hash (the costliest) that unknown users are checked
    /// against, so that the answer for a user who does not exist takes as
    /// long as for one who does and timing does not reveal user names.
    decoy: Option<String>,
    /// bcrypt checks run so far (a figure for tests and logs).
    bcrypt_checks: Arc<AtomicU64>,
}

impl std::fmt::Debug for Credentials {
    // Passwords must never reach a log line, not even as hashes, so only
    // the user count is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} users)", self.users.len())
    }
}

impl Credentials {
    /// Parses `user:password` entries separated by spaces or newlines
    /// (blank entries and `#` comment lines are skipped); `origin` names
    /// where they came from (`MP_SMTP_AUTH`, a file) in errors.
    pub fn from_pairs(text: &str, origin: &str) -> Result<Self, AuthError> {
        Self::from_entries(text.split_whitespace(), origin)
    }

    /// Reads a file of `user:password` lines (htpasswd style; blank lines
    /// and `#` comments are skipped).
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_entries(text.lines(), &path.display().to_string())
    }

    fn from_entries<'a>(
        entries: impl Iterator<Item = &'a str>,
        origin: &str,
    ) -> Result<Self, AuthError> {
        let mut users = HashMap::new();
        for (n, e) in entries.enumerate() {
            let e = e.trim();
            if e.is_empty() || e.starts_with('#') {
                continue;
            }
            match e.split_once(':') {
                Some((user, pass)) if !user.is_empty() => {
                    users.insert(user.to_owned(), Secret::new(pass));
                }
                _ => {
                    return Err(AuthError::Entry {
                        entry: n + 1,
                        origin: origin.to_owned(),
                    });
                }
            }
        }
        if users.is_empty() {
            return Err(AuthError::Empty(origin.to_owned()));
        }
        let mut creds = Self {
            users,
            ..Self::default()
        };
        creds.pick_decoy();
        Ok(creds)
    }

    /// Adds the entries of `other` (its users win).
    pub fn extend(&mut self, other: Credentials) {
        self.users.extend(other.users);
        self.pick_decoy();
    }

    fn pick_decoy(&mut self) {
        // `$2b$12$...`: the cost is the two digits after the second `$`.
        let cost = |h: &str| h.get(4..6).and_then(|c| c.parse::<u32>().ok()).unwrap_or(0);
        self.decoy = self
            .users
            .values()
            .filter_map(|s| match s {
                Secret::Bcrypt(h) => Some(h),
                Secret::Plain(_) => None,
            })
            .max_by_key(|h| (cost(h), h.as_str()))
            .cloned();
    }

    /// bcrypt checks run so far, for known and unknown users alike.
    pub fn bcrypt_checks(&self) -> u64 {
        self.bcrypt_checks.load(Ordering::Relaxed)
    }

    fn bcrypt(&self, password: &str, hash: &str) -> bool {
        self.bcrypt_checks.fetch_add(1, Ordering::Relaxed);
        bcrypt::verify(password, hash).unwrap_or(false)
    }

    /// Whether checking `user` runs bcrypt (for a known user with a hash,
    /// or for an unknown one when any user has a hash: see `decoy`).
    fn needs_bcrypt(&self, user: &str) -> bool {
        match self.users.get(user) {
            Some(Secret::Bcrypt(_)) => true,
            Some(Secret::Plain(_)) => false,
            None => self.decoy.is_some(),
        }
    }

    /// [`verify`](Self::verify) for async callers: plain passwords are
    /// compared in place, bcrypt runs in the blocking pool under a
    /// process-wide bound on concurrent checks.
    pub async fn check(self: &Arc<Self>, user: String, password: String) -> bool {
        if !self.needs_bcrypt(&user) {
            return self.verify(&user, &password);
        }
        // The semaphore is never closed, so acquiring only waits.
        let Ok(_permit) = bcrypt_pool().acquire().await else {
            return false;
        };
        let creds = self.clone();
        tokio::task::spawn_blocking(move || creds.verify(&user, &password))
            .await
            .unwrap_or(false)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no user is configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is right for `user`. Blocks for a bcrypt check;
    /// async code uses [`check`](Self::check).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match (self.users.get(user), &self.decoy) {
            (Some(Secret::Plain(p)), _) => constant_time_eq(p.as_bytes(), password.as_bytes()),
            (Some(Secret::Bcrypt(h)), _) => self.bcrypt(password, h),
            (None, Some(decoy)) => {
                // Same work as for a real user; the verdict is no regardless.
                let _ = self.bcrypt(password, decoy);
                false
            }
            (None, None) => {
                let _ = constant_time_eq(password.as_bytes(), password.as_bytes());
                false
            }
        }
    }

    /// The HTTP basic-auth state checking against these users, with the
    /// default per-client [`Throttle`].
    pub fn into_basic_auth(self) -> BasicAuth {
        BasicAuth {
            creds: Arc::new(self),
            passed: Arc::default(),
            throttle: Arc::new(Throttle::default()),
        }
    }
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed password was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How many verified credential digests are remembered; past that the cache
/// starts over (only successes are cached, so guessing cannot grow it).
const AUTH_CACHE_MAX: usize = 256;

/// HTTP basic auth: the credentials, a per-client [`Throttle`] and a cache
/// of digests of credentials that already passed. bcrypt is slow on purpose and browsers send the
/// header with every request, so a successful check is remembered as a
/// SHA-256 of the credentials (never the password itself) and later
/// requests with the same header skip it.
#[derive(Clone)]
pub struct BasicAuth {
    creds: Arc<Credentials>,
    passed: Arc<Mutex<HashSet<[u8; 32]>>>,
    throttle: Arc<Throttle>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicAuth({:?})", self.creds)
    }
}

/// What [`BasicAuth::judge`] decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The credentials are right.
    Allowed,
    /// No or wrong credentials: answer 401 with a challenge.
    Denied,
    /// This client failed too often lately; answer 429 and let it retry
    /// after this long. Its credentials were not even checked.
    Throttled(Duration),
}

impl BasicAuth {
    /// Replaces the per-client throttle (`MAILSAFE_HTTP_AUTH_MAX_FAILURES`,
    /// `MAILSAFE_HTTP_AUTH_WINDOW`; tests use a short window).
    pub fn with_throttle(mut self, throttle: Throttle) -> Self {
        self.throttle = Arc::new(throttle);
        self
    }

    /// The throttle's failures allowed per window, and the window.
    pub fn throttle_limits(&self) -> (u32, Duration) {
        (self.throttle.max_failures, self.throttle.window)
    }

    /// Judges a request from `client` carrying `credentials` (user,
    /// password), if any; bcrypt runs off the async workers.
    pub async fn judge(
        &self,
        client: Option<IpAddr>,
        credentials: Option<(String, String)>,
    ) -> Verdict {
        if let Some(wait) = self.throttle.blocked(client) {
            return Verdict::Throttled(wait);
        }
        let Some((user, pass)) = credentials else {
            // A browser's first request carries no credentials: that is
            // the challenge round trip, not a failed guess.
            return Verdict::Denied;
        };
        let digest: [u8; 32] = Sha256::digest(format!("{user}\0{pass}").as_bytes()).into();
        if self.passed.lock().is_ok_and(|s| s.contains(&digest)) {
            return Verdict::Allowed;
        }
        if !self.creds.check(user, pass).await {
            self.throttle.failed(client);
            return Verdict::Denied;
        }
        if let Ok(mut s) = self.passed.lock() {
            if s.len() >= AUTH_CACHE_MAX {
                s.clear();
            }
            s.insert(digest);
        }
        Verdict::Allowed
    }
}

/// Per-client limit on failed HTTP basic-auth attempts: after
/// `max_failures` failures within `window`, a client's requests are
/// answered 429 without checking credentials until its window ends.
/// Clients are keyed by IP address (IPv6 by /64, what one host usually
/// gets); the table holds at most `max_clients` entries, dropping expired
/// ones first and then the oldest, so a flood of addresses cannot grow it.
#[derive(Debug)]
pub struct Throttle {
    max_failures: u32,
    window: Duration,
    max_clients: usize,
    clients: Mutex<HashMap<Option<IpAddr>, (u32, Instant)>>,
}

/// Clients a [`Throttle`] tracks at most by default.
pub const THROTTLE_CLIENTS: usize = 4096;

impl Default for Throttle {
    /// 10 failures a minute: room for a person mistyping a password, far
    /// too few for guessing.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(60), THROTTLE_CLIENTS)
    }
}

impl Throttle {
    /// A throttle allowing `max_failures` per `window` for each of at most
    /// `max_clients` tracked clients.
    pub fn new(max_failures: u32, window: Duration, max_clients: usize) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            max_clients: max_clients.max(1),
            clients: Mutex::default(),
        }
    }

    fn key(client: Option<IpAddr>) -> Option<IpAddr> {
        client.map(|ip| match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        })
    }

    /// How long `client` must wait before its credentials are checked
    /// again, if it is throttled now.
    pub fn blocked(&self, client: Option<IpAddr>) -> Option<Duration> {
        let clients = self.clients.lock().ok()?;
        let (failures, since) = clients.get(&Self::key(client))?;
        let left = self.window.checked_sub(since.elapsed())?;
        (*failures >= self.max_failures).then_some(left.max(Duration::from_secs(1)))
    }

    /// Records a failed attempt by `client`.
    pub fn failed(&self, client: Option<IpAddr>) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        let key = Self::key(client);
        let now = Instant::now();
        if !clients.contains_key(&key) && clients.len() >= self.max_clients {
            clients.retain(|_, (_, since)| now.duration_since(*since) < self.window);
            if clients.len() >= self.max_clients
                && let Some(oldest) = clients.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| *k)
            {
                clients.remove(&oldest);
            }
        }
        let entry = clients.entry(key).or_insert((0, now));
        if now.duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
        if entry.0 == self.max_failures {
            tracing::warn!(client = ?client, window_s = self.window.as_secs(), "HTTP basic auth: too many failures, throttling this client");
        }
    }

    /// Clients tracked right now.
    pub fn tracked(&self) -> usize {
        self.clients.lock().map_or(0, |c| c.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_bcrypt_passwords() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let mut creds = Credentials::from_pairs("alice:pw bob:other", "MP_SMTP_AUTH").unwrap();
        creds.extend(Credentials::from_pairs(&format!("carol:{hash}"), "test").unwrap());
        assert!(creds.verify("alice", "pw"));
        assert!(!creds.verify("alice", "pw2"));
        assert!(!creds.verify("nobody", "pw"));
        assert!(creds.verify("carol", "s3cret"));
        assert!(!creds.verify("carol", "wrong"));
        assert_eq!(format!("{creds:?}"), "Credentials(3 users)");
    }

    #[test]
    fn bad_entry_is_reported_without_its_text() {
        let err =
            Credentials::from_pairs("alice:pw secretwithoutcolon", "MP_SMTP_AUTH").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("#2") && msg.contains("MP_SMTP_AUTH"), "{msg}");
        assert!(!msg.contains("secretwithoutcolon"), "{msg}");
        assert!(Credentials::from_pairs(" ", "MP_UI_AUTH").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bcrypt_runs_off_the_async_workers_and_unknown_users_cost_the_same() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let creds =
            Arc::new(Credentials::from_pairs(&format!("alice:{hash} bob:plain"), "test").unwrap());
        // On a single-threaded runtime another task only runs while the
        // check is parked off the runtime; inline bcrypt would starve it.
        let ticks = Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                t.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        assert!(creds.check("alice".into(), "pw".into()).await);
        assert!(ticks.load(Ordering::Relaxed) > 0);
        assert!(!creds.check("alice".into(), "nope".into()).await);
        assert!(!creds.check("mallory".into(), "pw".into()).await);
        assert_eq!(
            creds.bcrypt_checks(),
            3,
            "an unknown user costs a bcrypt run"
        );
        assert!(creds.check("bob".into(), "plain".into()).await);
        assert_eq!(creds.bcrypt_checks(), 3);
        ticker.abort();
    }

    #[test]
    fn the_bcrypt_pool_is_half_the_cores_unless_configured() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(bcrypt_threads(0), (cores / 2).max(1));
        assert_eq!(bcrypt_threads(3), 3);
    }

    #[test]
    fn throttle_blocks_after_the_failures_per_client_and_stays_bounded() {
        let t = Throttle::new(2, Duration::from_secs(600), 3);
        let ip = |n: u8| Some(IpAddr::from([10, 0, 0, n]));
        t.failed(ip(1));
        assert!(t.blocked(ip(1)).is_none());
        t.failed(ip(1));
        assert!(t.blocked(ip(1)).is_some());
        assert!(t.blocked(ip(2)).is_none());
        // IPv6 clients are keyed by /64.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        t.failed(Some(a));
        t.failed(Some(b));
        assert!(t.blocked(Some(a)).is_some());
        for n in 10..200 {
            t.failed(ip(n));
        }
        assert!(t.tracked() <= 3);
        // A window that has passed forgets the failures.
        let t = Throttle::new(1, Duration::ZERO, 3);
        t.failed(ip(1));
        assert!(t.blocked(ip(1)).is_none());
    }
}
