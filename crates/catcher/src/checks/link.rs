//! Mailpit's link check (`GET /api/v1/message/{ID}/link-check`): the links
//! of a message's HTML (`a[href]`, stylesheet `link[href]`, `img[src]`) and
//! text body, each tested with a `HEAD` request, answered in Mailpit's
//! `LinkCheckResponse` shape (`{"Errors", "Links": [{"URL", "StatusCode",
//! "Status"}]}`).
//!
//! A link check makes the catcher send requests to addresses taken from
//! mail, so it is bounded and guarded as Mailpit's is (`internal/linkcheck`):
//! - **SSRF:** a host that is, or resolves to, a loopback, private,
//!   link-local, CGNAT, multicast, unspecified or documentation address (or
//!   an IPv6 form embedding one) is refused with 451 "Blocked
//!   private/reserved address" unless `MP_ALLOW_INTERNAL_HTTP_REQUESTS`. The
//!   check runs in the resolver (every connection, redirects included) and
//!   on IP literals, which reqwest does not resolve.
//! - **Bounds:** at most 100 unique links per message, 10 s per request, at
//!   most 3 redirects (followed only with `?follow=true`), at most 8
//!   requests of one check at once and 2 per host, and per host a token
//!   bucket of 100 requests refilled at 1/s across all checks
//!   (`MP_DISABLE_LINK_CHECK_RATE_LIMIT` turns the bucket off). A link past
//!   an empty bucket waits its turn, as with Mailpit's `rate.Limiter.Wait`
//!   (a 101st link to one host waits 1 s), unless its turn is more than
//!   [`MAX_WAIT`] away: then it is answered with status 0 at once. At most
//!   10,000 hosts are tracked.
//!
//! Links are found with an HTML parser in the HTML body and with Mailpit's
//! regular expressions in the text body (see [`extract`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Serialize;
use tokio::sync::Semaphore;

/// Most unique links tested per message (Mailpit's `maxUniqueLinks`).
pub const MAX_LINKS: usize = 100;
/// Timeout of one request, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in one redirect chain, the first included, as Mailpit counts
/// them (so at most two redirects are followed).
const MAX_REDIRECTS: usize = 3;
/// Requests of one check in flight at once.
const CONCURRENCY: usize = 8;
/// Requests to one host in flight at once, across checks.
const PER_HOST: usize = 2;
/// Token bucket per host: burst and refill per second.
const BURST: f64 = 100.0;
const REFILL_PER_SEC: f64 = 1.0;
/// Hosts tracked at most; the least recently used is forgotten.
const MAX_HOSTS: usize = 10_000;
/// Longest a link waits for its host's bucket. Mailpit waits without a
/// bound (until the API client goes away); past this a link is answered
/// with status 0 at once, so one check cannot queue minutes of requests
/// behind another. A dropped API request stops its waits either way (its
/// tasks are aborted).
pub const MAX_WAIT: Duration = Duration::from_secs(120);

/// Mailpit's `LinkCheckResponse`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Response {
    /// Links whose status is 0 (no answer) or at least 400.
    #[serde(rename = "Errors")]
    pub errors: usize,
    /// Every link tested, in the order found.
    #[serde(rename = "Links")]
    pub links: Vec<Link>,
}

/// One tested link.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Link {
    /// The URL as found in the message.
    #[serde(rename = "URL")]
    pub url: String,
    /// The HTTP status, 0 when there was no answer, 451 when refused as
    /// internal.
    #[serde(rename = "StatusCode")]
    pub status_code: u16,
    /// The status text, or what went wrong.
    #[serde(rename = "Status")]
    pub status: String,
}

/// The link checker's settings and its per-host state, shared by all
/// checks of one catcher.
#[derive(Clone)]
pub struct LinkChecker {
    /// Allow requests to internal addresses (`MP_ALLOW_INTERNAL_HTTP_REQUESTS`).
    pub allow_internal: bool,
    /// No per-host token bucket (`MP_DISABLE_LINK_CHECK_RATE_LIMIT`).
    pub no_rate_limit: bool,
    /// Accept any TLS certificate (`MP_ALLOW_UNTRUSTED_TLS`).
    pub allow_untrusted_tls: bool,
    hosts: Arc<Mutex<HashMap<String, HostState>>>,
    /// The bucket's burst and refill per second ([`BURST`],
    /// [`REFILL_PER_SEC`]; tests make them small).
    burst: f64,
    refill_per_sec: f64,
}

impl std::fmt::Debug for LinkChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkChecker")
            .field("allow_internal", &self.allow_internal)
            .field("no_rate_limit", &self.no_rate_limit)
            .field("allow_untrusted_tls", &self.allow_untrusted_tls)
            .finish()
    }
}

/// One host's bucket and request slots.
struct HostState {
    tokens: f64,
    refilled: Instant,
    used: Instant,
    slots: Arc<Semaphore>,
}

impl Default for LinkChecker {
    fn default() -> Self {
        Self::new(false, false, false)
    }
}

/// What refused a request before it was sent.
const BLOCKED: &str = "Blocked private/reserved address";

impl LinkChecker {
    /// A checker with these settings.
    pub fn new(allow_internal: bool, no_rate_limit: bool, allow_untrusted_tls: bool) -> Self {
        Self {
            allow_internal,
            no_rate_limit,
            allow_untrusted_tls,
            hosts: Arc::default(),
            burst: BURST,
            refill_per_sec: REFILL_PER_SEC,
        }
    }

    /// Tests the links of a message's `html` and `text` bodies.
    pub async fn check(&self, html: &str, text: &str, follow: bool) -> Response {
        let links = extract(html, text);
        let client = match self.client(follow) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "link check: cannot build the HTTP client");
                return Response {
                    errors: links.len(),
                    links: links
                        .into_iter()
                        .map(|url| Link {
                            url,
                            status_code: 0,
                            status: "link check unavailable".into(),
                        })
                        .collect(),
                };
            }
        };
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, url) in links.iter().cloned().enumerate() {
            let (me, client, slots) = (self.clone(), client.clone(), slots.clone());
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await;
                (i, me.test(&client, url).await)
            });
        }
        let mut out: Vec<Option<Link>> = vec![None; links.len()];
        while let Some(done) = tasks.join_next().await {
            if let Ok((i, link)) = done {
                out[i] = Some(link);
            }
        }
        let links: Vec<Link> = out
            .into_iter()
            .zip(links)
            .map(|(l, url)| {
                l.unwrap_or(Link {
                    url,
                    status_code: 0,
                    status: "check failed".into(),
                })
            })
            .collect();
        Response {
            errors: links
                .iter()
                .filter(|l| l.status_code == 0 || l.status_code >= 400)
                .count(),
            links,
        }
    }

    /// The HTTP client of one check: the guarding resolver, the redirect
    /// policy, the timeout.
    fn client(&self, follow: bool) -> Result<reqwest::Client, reqwest::Error> {
        let allow_internal = self.allow_internal;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if !follow {
                attempt.stop()
            } else if !allow_internal && url_is_internal(attempt.url()) {
                attempt.error(BLOCKED)
            } else {
                attempt.follow()
            }
        });
        reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(redirects)
            .no_proxy()
            .user_agent(concat!("mailsafe/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver { allow_internal }))
            .danger_accept_invalid_certs(self.allow_untrusted_tls)
            .build()
    }

    /// One link: checked, rate-limited per host, requested.
    async fn test(&self, client: &reqwest::Client, url: String) -> Link {
        let link = |code: u16, status: &str| Link {
            url: url.clone(),
            status_code: code,
            status: status.to_string(),
        };
        let Ok(parsed) = reqwest::Url::parse(&url) else {
            return link(0, "invalid URL");
        };
        let Some(host) = parsed.host_str().map(str::to_ascii_lowercase) else {
            return link(0, "invalid URL");
        };
        if !self.allow_internal && url_is_internal(&parsed) {
            return link(451, BLOCKED);
        }
        let slots = match self.admit(&host) {
            Admission::Now(s) => s,
            Admission::After(wait, s) => {
                tokio::time::sleep(wait).await;
                s
            }
            Admission::Refused => return link(0, "rate limit exceeded for this host"),
        };
        let _slot = slots.acquire_owned().await;
        match client.head(parsed).send().await {
            Ok(res) => {
                let code = res.status();
                link(code.as_u16(), code.canonical_reason().unwrap_or(""))
            }
            Err(e) if format!("{e:?}").contains(BLOCKED) => link(451, BLOCKED),
            Err(e) => link(0, &summary(&e)),
        }
    }

    /// Takes a token of `host`'s bucket (unless rate limits are off) and
    /// returns its request slots, with how long to wait first when the
    /// bucket is empty. The token is taken at once (the bucket goes below
    /// zero, like a `rate.Limiter` reservation), so links queue in the
    /// order they were admitted.
    fn admit(&self, host: &str) -> Admission {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if !hosts.contains_key(host) && hosts.len() >= MAX_HOSTS {
            let oldest = hosts
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                hosts.remove(&k);
            }
        }
        let st = hosts.entry(host.to_string()).or_insert_with(|| HostState {
            tokens: self.burst,
            refilled: now,
            used: now,
            slots: Arc::new(Semaphore::new(PER_HOST)),
        });
        st.used = now;
        if self.no_rate_limit {
            return Admission::Now(st.slots.clone());
        }
        let refill = now.duration_since(st.refilled).as_secs_f64() * self.refill_per_sec;
        st.tokens = (st.tokens + refill).min(self.burst);
        st.refilled = now;
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            return Admission::Now(st.slots.clone());
        }
        let wait = Duration::from_secs_f64((1.0 - st.tokens) / self.refill_per_sec);
        if wait > MAX_WAIT {
            return Admission::Refused;
        }
        st.tokens -= 1.0;
        Admission::After(wait, st.slots.clone())
    }
}

/// What a link's host bucket said.
enum Admission {
    /// Go ahead (then take one of the host's request slots).
    Now(Arc<Semaphore>),
    /// Go ahead after this wait.
    After(Duration, Arc<Semaphore>),
    /// The turn is more than [`MAX_WAIT`] away.
    Refused,
}

/// The last part of an error chain (`connection refused`, `dns error`),
/// as Mailpit's `httpErrorSummary` keeps the end of Go's message.
fn summary(e: &reqwest::Error) -> String {
    let mut last = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        return "timeout".into();
    }
    last
}

/// Resolves host names for the link check, refusing internal addresses.
struct GuardedResolver {
    allow_internal: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_internal = self.allow_internal;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow_internal && addrs.iter().any(|a| is_internal(a.ip())) {
                tracing::warn!(%host, "link check: blocked a host with a private/reserved address");
                return Err(Box::<dyn std::error::Error + Send + Sync>::from(BLOCKED));
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether `url`'s host is an internal IP literal (or `localhost`).
fn url_is_internal(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => is_internal(ip),
        Err(_) => {
            let d = bare.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    }
}

/// Mailpit's `IsInternalIP`: loopback, private, link-local, multicast,
/// unspecified, CGNAT (100.64/10), site-local and documentation IPv6, and
/// IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4,
/// Teredo, ISATAP) judged by that address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let s = v6.segments();
            let b = v6.octets();
            let direct = v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8); // documentation
            if direct {
                return true;
            }
            match embedded_v4(v6, &b) {
                Some(v4) => internal_v4(v4),
                None => false,
            }
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
}

/// The IPv4 address an IPv6 transition form carries.
fn embedded_v4(v6: Ipv6Addr, b: &[u8; 16]) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let last = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    // NAT64 64:ff9b::/96 and 64:ff9b:1::/48, IPv4-compatible ::/96.
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0, 0, 0, 0] || s[2] == 1);
    if nat64 || s[..6] == [0, 0, 0, 0, 0, 0] {
        return Some(last);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(b[2], b[3], b[4], b[5]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(Ipv4Addr::new(!b[12], !b[13], !b[14], !b[15]));
    }
    if b[10] == 0x5e && b[11] == 0xfe {
        return Some(last);
    }
    None
}

/// The unique links of a message, at most [`MAX_LINKS`], in Mailpit's
/// order: the HTML's `a[href]`, then stylesheet `link[href]`, then
/// `img[src]` (each in document order, http/https only), then the text
/// body's URLs and `<URL>`s.
///
/// The HTML is read with the HTML check's parser (html5ever through
/// scraper): attribute values come entity-decoded and quoted or not, and
/// markup inside comments, `<script>` or attribute values is not taken for
/// a link, as it was by the regular expressions this replaced. The text
/// body has no markup, so Mailpit's regular expressions find its URLs.
pub fn extract(html: &str, text: &str) -> Vec<String> {
    static HTTP: OnceLock<Regex> = OnceLock::new();
    static TEXT: OnceLock<Regex> = OnceLock::new();
    static BRACKETED: OnceLock<Regex> = OnceLock::new();
    let http = HTTP.get_or_init(|| {
        Regex::new(r#"(?i)^(http|https)://[\-\w@:%_\+'!.~#?,&/=;]+"#).expect("valid regex")
    });
    // Mailpit's text patterns.
    let text_re = TEXT.get_or_init(|| {
        Regex::new(r#"(?im)([^<]\b)((http|https)://([\-\w@:%_\+'!.~#?,&/=;]+))"#)
            .expect("valid regex")
    });
    let bracketed = BRACKETED.get_or_init(|| {
        Regex::new(r#"(?im)<((http|https)://([\-\w@:%_\+'!.~#?,&/=;][^>]+))>"#)
            .expect("valid regex")
    });
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |l: String| {
        if out.len() < MAX_LINKS && seen.insert(l.clone()) {
            out.push(l);
        }
    };
    if !html.is_empty() {
        let doc = scraper::Html::parse_document(html);
        for (sel, attr) in [
            ("a[href]", "href"),
            ("link[rel~=stylesheet][href]", "href"),
            ("img[src]", "src"),
        ] {
            let sel = scraper::Selector::parse(sel).expect("valid selector");
            for el in doc.select(&sel) {
                let link = el.value().attr(attr).unwrap_or_default().trim();
                if http.is_match(link) {
                    add(link.to_string());
                }
            }
        }
    }
    for c in text_re.captures_iter(text).take(MAX_LINKS * 3) {
        add(c[2].to_string());
    }
    for c in bracketed.captures_iter(text).take(MAX_LINKS * 3) {
        add(c[1].replace('\n', ""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised_as_mailpit_does() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "::a00:1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_internal_addresses() {
        use reqwest::dns::Resolve;
        let name = || "localhost".parse::<reqwest::dns::Name>().unwrap();
        let guarded = GuardedResolver {
            allow_internal: false,
        };
        let err = guarded.resolve(name()).await.err().expect("refused");
        assert_eq!(err.to_string(), BLOCKED);
        let open = GuardedResolver {
            allow_internal: true,
        };
        assert!(open.resolve(name()).await.is_ok());
    }

    /// A link past an empty bucket waits for its token instead of getting
    /// status 0 (Mailpit's `rate.Limiter.Wait`). Burst 1, refill 1/s: of
    /// four links to one host the last waits about 3 s; all get answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_past_an_empty_bucket_waits_its_turn() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new().route(
            "/{n}",
            axum::routing::any(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let mut checker = LinkChecker::new(true, false, false);
        checker.burst = 1.0;
        checker.refill_per_sec = 1.0;
        let html: String = (0..4)
            .map(|i| format!("<a href=\"{base}/{i}\">l</a>"))
            .collect();
        let started = Instant::now();
        let r = checker.check(&html, "", false).await;
        let statuses: Vec<u16> = r.links.iter().map(|l| l.status_code).collect();
        assert_eq!(statuses, [200; 4], "{r:?}");
        assert_eq!(r.errors, 0);
        assert_eq!(hits.load(Ordering::SeqCst), 4);
        // The waits are sleeps of about 1, 2 and 3 s: the check cannot be
        // quicker than the longest (a slow machine only makes it longer).
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // A turn further away than MAX_WAIT is refused at once.
        checker.refill_per_sec = 1.0 / (MAX_WAIT.as_secs_f64() * 2.0);
        let far = checker
            .check(&format!("<a href=\"{base}/x\">x</a>"), "", false)
            .await;
        assert_eq!(far.links[0].status_code, 0, "{far:?}");
        assert_eq!(far.links[0].status, "rate limit exceeded for this host");
        assert_eq!(hits.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn links_come_from_anchors_images_stylesheets_and_text() {
        let html = r#"<a href="https://a.example/x?p=1&amp;q=2">a</a>
            <img alt=x src='http://b.example/i.png'>
            <link rel="stylesheet" href="https://c.example/s.css">
            <link rel="icon" href="https://d.example/favicon.ico">
            <a href="mailto:x@example.com">m</a> <a href=/relative>r</a>
            <a href="https://a.example/x?p=1&amp;q=2">again</a>
            <!-- <a href="https://hidden.example/comment">c</a> -->
            <script>var s = '<a href="https://hidden.example/script">';</script>
            <p title='<a href="https://hidden.example/attr">'>t</p>
            <LINK HREF="https://g.example/upper.css" REL="alternate stylesheet">"#;
        let text = "see http://e.example/page and <https://f.example/long\npath>\n";
        assert_eq!(
            extract(html, text),
            [
                "https://a.example/x?p=1&q=2",
                "https://c.example/s.css",
                "https://g.example/upper.css",
                "http://b.example/i.png",
                "http://e.example/page",
                "https://f.example/longpath",
            ]
        );
        let many: String = (0..150)
            .map(|i| format!("<a href=\"http://x.example/{i}\">l</a>"))
            .collect();
        assert_eq!(extract(&many, "").len(), MAX_LINKS);
    }
}
