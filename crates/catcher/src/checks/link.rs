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
//!   (`MP_DISABLE_LINK_CHECK_RATE_LIMIT` turns the bucket off; a link past
//!   an empty bucket is answered with status 0 instead of waiting as
//!   Mailpit's does); at most 10,000 hosts are tracked.
//!
//! Links are found with regular expressions, not an HTML parser: enough for
//! the attribute forms mail uses (quoted or bare values, `&amp;` decoded).

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
#[derive(Clone, Default)]
pub struct LinkChecker {
    /// Allow requests to internal addresses (`MP_ALLOW_INTERNAL_HTTP_REQUESTS`).
    pub allow_internal: bool,
    /// No per-host token bucket (`MP_DISABLE_LINK_CHECK_RATE_LIMIT`).
    pub no_rate_limit: bool,
    /// Accept any TLS certificate (`MP_ALLOW_UNTRUSTED_TLS`).
    pub allow_untrusted_tls: bool,
    hosts: Arc<Mutex<HashMap<String, HostState>>>,
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
            Some(s) => s,
            None => return link(0, "rate limit exceeded for this host"),
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
    /// returns its request slots; `None` when the bucket is empty.
    fn admit(&self, host: &str) -> Option<Arc<Semaphore>> {
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
            tokens: BURST,
            refilled: now,
            used: now,
            slots: Arc::new(Semaphore::new(PER_HOST)),
        });
        st.used = now;
        if !self.no_rate_limit {
            let refill = now.duration_since(st.refilled).as_secs_f64() * REFILL_PER_SEC;
            st.tokens = (st.tokens + refill).min(BURST);
            st.refilled = now;
            if st.tokens < 1.0 {
                return None;
            }
            st.tokens -= 1.0;
        }
        Some(st.slots.clone())
    }
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

/// The unique links of a message, HTML first, at most [`MAX_LINKS`].
pub fn extract(html: &str, text: &str) -> Vec<String> {
    static ATTR: OnceLock<Regex> = OnceLock::new();
    static STYLESHEET: OnceLock<Regex> = OnceLock::new();
    static HTTP: OnceLock<Regex> = OnceLock::new();
    static TEXT: OnceLock<Regex> = OnceLock::new();
    static BRACKETED: OnceLock<Regex> = OnceLock::new();
    // `<a ... href=...>`, `<img ... src=...>`; stylesheet links below.
    let attr = ATTR.get_or_init(|| {
        Regex::new(r#"(?is)<(a|img)\b[^>]*?\s(href|src)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))"#)
            .expect("valid regex")
    });
    let stylesheet =
        STYLESHEET.get_or_init(|| Regex::new(r#"(?is)<link\b[^>]*>"#).expect("valid regex"));
    let http = HTTP.get_or_init(|| {
        Regex::new(r#"(?i)\b(http|https)://([\-\w@:%_\+'!.~#?,&/=;]+)"#).expect("valid regex")
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
    let decode = |v: &str| {
        v.trim()
            .replace("&amp;", "&")
            .replace("&#38;", "&")
            .replace("&quot;", "\"")
    };
    let value_of = |c: &regex::Captures, from: usize| {
        (from..from + 3)
            .find_map(|i| c.get(i))
            .map(|m| m.as_str())
            .unwrap_or("")
            .to_string()
    };
    // Mailpit's order: anchors, stylesheets, images, each in document order.
    let (mut anchors, mut sheets, mut images) = (Vec::new(), Vec::new(), Vec::new());
    for c in attr.captures_iter(html) {
        let (tag, name) = (c[1].to_ascii_lowercase(), c[2].to_ascii_lowercase());
        if tag == "a" && name == "href" {
            anchors.push(decode(&value_of(&c, 3)));
        } else if tag == "img" && name == "src" {
            images.push(decode(&value_of(&c, 3)));
        }
    }
    static HREF: OnceLock<Regex> = OnceLock::new();
    let href = HREF.get_or_init(|| {
        Regex::new(r#"(?is)\s(rel|href)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))"#)
            .expect("valid regex")
    });
    for tag in stylesheet.find_iter(html) {
        let (mut rel, mut target) = (String::new(), String::new());
        for c in href.captures_iter(tag.as_str()) {
            let v = value_of(&c, 2);
            if c[1].eq_ignore_ascii_case("rel") {
                rel = v.to_ascii_lowercase();
            } else {
                target = decode(&v);
            }
        }
        if rel.split_whitespace().any(|r| r == "stylesheet") {
            sheets.push(target);
        }
    }
    for l in anchors.into_iter().chain(sheets).chain(images) {
        if http.find(&l).is_some_and(|m| m.start() == 0) {
            add(l);
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

    #[test]
    fn links_come_from_anchors_images_stylesheets_and_text() {
        let html = r#"<a href="https://a.example/x?p=1&amp;q=2">a</a>
            <img alt=x src='http://b.example/i.png'>
            <link rel="stylesheet" href="https://c.example/s.css">
            <link rel="icon" href="https://d.example/favicon.ico">
            <a href="mailto:x@example.com">m</a> <a href=/relative>r</a>
            <a href="https://a.example/x?p=1&amp;q=2">again</a>"#;
        let text = "see http://e.example/page and <https://f.example/long\npath>\n";
        assert_eq!(
            extract(html, text),
            [
                "https://a.example/x?p=1&q=2",
                "https://c.example/s.css",
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
