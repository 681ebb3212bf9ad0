//! The push heartbeat (`--heartbeat-url`, `MAILSAFE_HEARTBEAT_URL`, a
//! config file's `heartbeat-url`): a GET of the URL after each successful
//! snapshot, in `watch`, `cron` and `serve --replica` alike, for a dead
//! man's switch such as healthchecks.io that alerts when the pings stop.
//! An idle db takes no snapshot, so in `watch` and `serve --replica` (whose
//! loops see every change) a loop also pings every `--heartbeat-interval`
//! while it is current: it has checked the db, every change is in the
//! replica and its last attempt did not fail ([`Metrics::is_current`]). A
//! loop that fails, or has changes waiting, does not ping until a snapshot
//! succeeds, which is what makes the switch fire. `cron` does not look at
//! the db between rounds, so it pings after rounds only.
//!
//! It is fed by [`Metrics::next_success`], so it never sits in the
//! snapshot's path: a slow or dead receiver delays no snapshot, and pings
//! that cannot keep up coalesce into one (one request in flight per loop).
//! Each request is bounded by its timeout; a failure (refused, timed out,
//! not 2xx) is logged and counted in
//! `mailsafe_heartbeats_total{result="failed"}`, never retried (the next
//! snapshot or interval pings again). The URL is shown by its scheme, host
//! and port only: its path and query usually hold the check's token.

use std::sync::Arc;
use std::time::Duration;

use mailsafe::watch::metrics::Metrics;

/// An http(s) URL whose `Display` and `Debug` hide everything after the
/// port (user info, path, query).
#[derive(Clone)]
pub struct HeartbeatUrl(reqwest::Url);

impl std::str::FromStr for HeartbeatUrl {
    type Err = String;

    /// Parses an http or https URL; the error never repeats the value.
    fn from_str(s: &str) -> Result<Self, String> {
        let url =
            reqwest::Url::parse(s).map_err(|e| format!("heartbeat-url is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("heartbeat-url must be an http or https URL with a host".into());
        }
        Ok(Self(url))
    }
}

/// `--heartbeat-url`'s parser: clap's own errors repeat the value, which
/// may hold a token, so this one says only what is wrong.
#[derive(Clone, Copy)]
pub struct ParseHeartbeatUrl;

impl clap::builder::TypedValueParser for ParseHeartbeatUrl {
    type Value = HeartbeatUrl;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<HeartbeatUrl, clap::Error> {
        let invalid = |msg: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --heartbeat-url / MAILSAFE_HEARTBEAT_URL: {msg}\n"),
            )
        };
        value
            .to_str()
            .ok_or_else(|| invalid("not UTF-8".into()))?
            .parse()
            .map_err(invalid)
    }
}

impl std::fmt::Display for HeartbeatUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.0.host_str().unwrap_or_default();
        match self.0.port() {
            Some(p) => write!(f, "{}://{host}:{p}/…", self.0.scheme()),
            None => write!(f, "{}://{host}/…", self.0.scheme()),
        }
    }
}

impl std::fmt::Debug for HeartbeatUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeartbeatUrl({self})")
    }
}

/// A heartbeat sender.
pub struct Heartbeat {
    client: reqwest::Client,
    url: HeartbeatUrl,
    /// Longest time without a ping while a loop is current (`None`: only
    /// after snapshots).
    idle: Option<Duration>,
}

impl Heartbeat {
    /// A sender to `url` whose requests give up after `timeout`; with
    /// `idle` (not zero), a loop spawned with idle pings also pings that
    /// long after its last ping while it is current.
    pub fn new(
        url: HeartbeatUrl,
        timeout: Duration,
        idle: Option<Duration>,
    ) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        let idle = idle.filter(|d| !d.is_zero());
        Ok(Arc::new(Self { client, url, idle }))
    }

    /// One request; counted into `metrics`, a failure logged. Returns
    /// whether it got a 2xx.
    pub async fn beat(&self, metrics: &Metrics) -> bool {
        let outcome = match self.client.get(self.url.0.clone()).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status())),
            // Without the URL: reqwest's message would carry it whole.
            Err(e) => Err(e.without_url().to_string()),
        };
        metrics.record_heartbeat(outcome.is_ok());
        match outcome {
            Ok(()) => {
                tracing::debug!(heartbeat = %self.url, "heartbeat sent");
                true
            }
            Err(why) => {
                tracing::warn!(heartbeat = %self.url, "heartbeat request failed: {why}");
                false
            }
        }
    }

    /// Pings after every successful snapshot recorded in `metrics`, and
    /// with `idle` every idle interval while the loop is current, in the
    /// background until the returned handle aborts it (a loop that
    /// stopped).
    pub fn spawn(self: &Arc<Self>, metrics: Arc<Metrics>, idle: bool) -> tokio::task::AbortHandle {
        let me = self.clone();
        let idle = me.idle.filter(|_| idle);
        tokio::spawn(async move {
            let mut last = tokio::time::Instant::now();
            loop {
                let due = idle.map(|i| last + i);
                tokio::select! {
                    _ = metrics.next_success() => {}
                    _ = tokio::time::sleep_until(due.unwrap_or(last)), if due.is_some() => {
                        if !metrics.is_current() {
                            // Failing or behind: silence is the alarm.
                            last = tokio::time::Instant::now();
                            continue;
                        }
                    }
                }
                me.beat(&metrics).await;
                last = tokio::time::Instant::now();
            }
        })
        .abort_handle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shown by scheme, host and port only; anything but http(s) with a
    /// host is refused without repeating the value.
    #[test]
    fn urls_are_shown_without_credentials_path_or_query() {
        let u: HeartbeatUrl = "https://user:pw@hc-ping.com/3f2a?key=secret"
            .parse()
            .unwrap();
        assert_eq!(u.to_string(), "https://hc-ping.com/…");
        assert_eq!(format!("{u:?}"), "HeartbeatUrl(https://hc-ping.com/…)");
        let u: HeartbeatUrl = "http://127.0.0.1:9/x".parse().unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9/…");
        for bad in ["ftp://h/secret", "not a url secret", "unix:/secret"] {
            let e = bad.parse::<HeartbeatUrl>().unwrap_err();
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
