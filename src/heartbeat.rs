//! The push heartbeat (`--heartbeat-url`, `MAILSAFE_HEARTBEAT_URL`, a
//! config file's `heartbeat-url`): a GET of the URL after each successful
//! snapshot, in `watch`, `cron` and `serve --replica` alike, for a dead
//! man's switch such as healthchecks.io that alerts when the pings stop.
//!
//! It is fed by [`Metrics::next_success`], so it never sits in the
//! snapshot's path: a slow or dead receiver delays no snapshot, and pings
//! that cannot keep up coalesce into one. Each request is bounded by its
//! timeout; a failure (refused, timed out, not 2xx) is logged and counted
//! in `mailsafe_heartbeats_total{result="failed"}`, never retried (the
//! next snapshot pings again). The URL is shown by its scheme, host and
//! port only: its path and query usually hold the check's token.

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
}

impl Heartbeat {
    /// A sender to `url` whose requests give up after `timeout`.
    pub fn new(url: HeartbeatUrl, timeout: Duration) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Arc::new(Self { client, url }))
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

    /// Pings after every successful snapshot recorded in `metrics`, in the
    /// background, for the rest of the process.
    pub fn spawn(self: &Arc<Self>, metrics: Arc<Metrics>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                metrics.next_success().await;
                me.beat(&metrics).await;
            }
        });
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
