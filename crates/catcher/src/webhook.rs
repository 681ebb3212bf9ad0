//! Webhooks (Mailpit's `MP_WEBHOOK_URL`, `MP_WEBHOOK_LIMIT`,
//! `MP_WEBHOOK_DELAY`): each new message's summary, the JSON Mailpit posts
//! (its `MessageSummary`, as `/api/v1/messages` lists it), is POSTed to one
//! configured URL.
//!
//! As in Mailpit, the rate limit drops rather than delays: after a request
//! is started, messages arriving within the next `MP_WEBHOOK_LIMIT` seconds
//! send nothing (`0` sends one request per message), and `MP_WEBHOOK_DELAY`
//! holds each request that long first. Each request times out after 5 s
//! and is not retried; failures are logged with the URL (its password
//! removed).
//!
//! A slow or dead receiver must not slow SMTP or grow memory. The webhook
//! task reads the store's event broadcast, which never waits for a reader
//! (a reader that falls behind loses events), and hands requests to a
//! bounded queue served by a bounded number of concurrent requests: what
//! does not fit is dropped and counted ([`WebhookStats`]). Memory is the
//! queue's summaries (a few KiB each) and the requests in flight.
//!
//! Only the configured URL is ever contacted: nothing in a message chooses
//! where a request goes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio::time::Instant;

use crate::storage::{Event, Store};

/// Where and how webhooks are sent.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The URL every request goes to (`MP_WEBHOOK_URL`); http or https.
    pub url: reqwest::Url,
    /// After a request, messages within this long send none
    /// (`MP_WEBHOOK_LIMIT`, seconds; Mailpit's default is 1 s, 0 = every
    /// message).
    pub interval: Duration,
    /// Wait this long before sending each request (`MP_WEBHOOK_DELAY`,
    /// seconds).
    pub delay: Duration,
    /// Give up on a request after this long (Mailpit: 5 s).
    pub timeout: Duration,
    /// Requests waiting to be sent; more are dropped.
    pub queue: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Sent as the `Mailpit-Label` header when not empty (`MP_LABEL`).
    pub label: String,
}

impl WebhookConfig {
    /// Mailpit's defaults for `url`: one request per second at most, no
    /// delay, a 5 s timeout; 128 queued and 4 in flight.
    pub fn new(url: reqwest::Url) -> Self {
        Self {
            url,
            interval: Duration::from_secs(1),
            delay: Duration::ZERO,
            timeout: Duration::from_secs(5),
            queue: 128,
            concurrency: 4,
            label: String::new(),
        }
    }

    /// Parses `MP_WEBHOOK_URL`: an absolute http or https URL.
    pub fn parse_url(url: &str) -> Result<reqwest::Url, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("MP_WEBHOOK_URL: {e}"))?;
        match parsed.scheme() {
            "http" | "https" if parsed.host().is_some() => Ok(parsed),
            _ => Err(format!(
                "MP_WEBHOOK_URL must be an http or https URL, not {}",
                redact(&parsed)
            )),
        }
    }
}

/// What the webhook task did, for tests and logs.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Requests answered 2xx.
    pub sent: AtomicU64,
    /// Requests that failed (connection, timeout, non-2xx answer).
    pub failed: AtomicU64,
    /// New messages that sent nothing because of the rate limit.
    pub rate_limited: AtomicU64,
    /// New messages dropped because the queue was full or the task fell
    /// behind the event broadcast.
    pub dropped: AtomicU64,
}

impl WebhookStats {
    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One request waiting to be sent.
struct Job {
    body: Vec<u8>,
    due: Instant,
}

/// The URL without its password, for log lines and errors.
fn redact(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("xxxxx"));
    }
    url.to_string()
}

/// Starts the webhook task for `store`'s new messages, counting into
/// `stats`; it runs until `stop` completes (requests in flight are then
/// abandoned).
pub fn spawn(
    store: &Store,
    config: WebhookConfig,
    stats: Arc<WebhookStats>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .user_agent(concat!("mailsafe/", env!("CARGO_PKG_VERSION")))
        // The configured URL is the only target: never follow a redirect
        // elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let events = store.subscribe();
    Ok(tokio::spawn(run(events, config, client, stats, stop)))
}

async fn run(
    mut events: broadcast::Receiver<Event>,
    config: WebhookConfig,
    client: reqwest::Client,
    stats: Arc<WebhookStats>,
    stop: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let (tx, rx) = mpsc::channel::<Job>(config.queue.max(1));
    let sender = tokio::spawn(send_all(rx, config.clone(), client, stats.clone()));
    let mut last: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = events.recv() => event,
        };
        let summary = match event {
            Ok(Event::New(summary)) => summary,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Counts every kind of event missed: an upper bound.
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    missed = n,
                    "webhook fell behind the new messages; skipped some"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let now = Instant::now();
        if last.is_some_and(|l| now.duration_since(l) < config.interval) {
            stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        last = Some(now);
        let body = match serde_json::to_vec(&summary) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "webhook: cannot encode a message summary");
                continue;
            }
        };
        let job = Job {
            body,
            due: now + config.delay,
        };
        if tx.try_send(job).is_err() {
            let dropped = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per 100 drops keeps a dead receiver from flooding
            // the log.
            if dropped % 100 == 1 {
                tracing::warn!(
                    url = %redact(&config.url),
                    dropped,
                    "webhook queue full (receiver too slow); dropping requests"
                );
            }
        }
    }
    sender.abort();
}

/// Sends queued requests in order, at most `concurrency` at once.
async fn send_all(
    mut rx: mpsc::Receiver<Job>,
    config: Arc<WebhookConfig>,
    client: reqwest::Client,
    stats: Arc<WebhookStats>,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(job) = rx.recv().await {
        tokio::time::sleep_until(job.due).await;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        while in_flight.try_join_next().is_some() {}
        let (client, config, stats) = (client.clone(), config.clone(), stats.clone());
        in_flight.spawn(async move {
            let _permit = permit;
            post(&client, &config, &stats, job.body).await;
        });
    }
}

async fn post(
    client: &reqwest::Client,
    config: &WebhookConfig,
    stats: &WebhookStats,
    body: Vec<u8>,
) {
    let mut request = client
        .post(config.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if !config.label.is_empty() {
        request = request.header("Mailpit-Label", &config.label);
    }
    match request.send().await {
        Ok(answer) if answer.status().is_success() => {
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(answer) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(url = %redact(&config.url), status = answer.status().as_u16(), "webhook answered with an error status");
        }
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            // reqwest's error text names the URL; print ours (redacted)
            // and only the kind of failure.
            let why = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            tracing::warn!(url = %redact(&config.url), "webhook {why}");
        }
    }
}
