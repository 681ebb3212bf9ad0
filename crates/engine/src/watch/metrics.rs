//! What the watcher exposes on `--listen`: `/metrics` (Prometheus text format,
//! written by hand: a dozen counters do not justify a metrics framework) and
//! `/healthz`. `cron` rounds and `serve --replica` fill the same [`Metrics`],
//! so every mode that backs up serves the same names, and a heartbeat
//! sender waits on [`Metrics::next_success`].
//!
//! Object-store traffic is counted by [`MeteredStore`], a decorator around any
//! [`ObjectStore`], so that "idle means zero requests" is something the
//! watcher itself can show rather than something we only claim.

use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::store::{DynStore, ObjectMeta, ObjectStore, StoreError};

/// Object-store operations, as counted in `mailsafe_store_requests_total{op}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `put`, `put_if_absent` and `put_if_match`.
    Put,
    /// `get` and `get_range`.
    Get,
    /// `list` (one call, however many pages the store needed).
    List,
    /// `delete`.
    Delete,
    /// `head`.
    Head,
}

impl Op {
    const ALL: [Op; 5] = [Op::Put, Op::Get, Op::List, Op::Delete, Op::Head];

    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Head => "head",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one operation.
#[derive(Debug, Default)]
struct OpCounters {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// Mutable state that is not a plain counter.
#[derive(Debug, Default)]
struct State {
    /// When the oldest change not yet in the replica was seen; `None` when
    /// the replica is up to date.
    pending_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Wall-clock time of the last successful snapshot (uploaded or found
    /// unchanged).
    last_success: Option<chrono::DateTime<chrono::Utc>>,
    /// Id of the newest snapshot this process uploaded.
    last_snapshot_id: Option<String>,
    /// The last error, for `/healthz` and logs.
    last_error: Option<String>,
    /// Whether this process holds the replica's writer lease.
    lease_held: bool,
    /// Set while another process's lease keeps this one from writing: who
    /// holds it and until when at most we wait, for `/healthz`.
    lease_wait: Option<String>,
}

/// Everything `/metrics` and `/healthz` report. Shared between the watch
/// loop, the metered store and the HTTP server.
#[derive(Debug, Default)]
pub struct Metrics {
    ops: [OpCounters; 5],
    snapshots_uploaded: AtomicU64,
    snapshots_unchanged: AtomicU64,
    snapshot_errors: AtomicU64,
    snapshot_bytes: AtomicU64,
    change_events: AtomicU64,
    /// Snapshots that hashed every chunk of the db (O(db size)).
    full_scans: AtomicU64,
    /// Resets of the pinned WAL.
    wal_resets: AtomicU64,
    /// The longest the application's writers waited for a reset (µs).
    wal_reset_max_lock_us: AtomicU64,
    /// Microseconds the last snapshot took.
    last_duration_us: AtomicU64,
    /// Heartbeat requests that got a 2xx answer.
    heartbeats_sent: AtomicU64,
    /// Heartbeat requests that failed (no answer in time, refused, non-2xx).
    heartbeats_failed: AtomicU64,
    /// Woken by every successful snapshot; a heartbeat sender waits on it.
    /// `notify_one` keeps one permit, so snapshots faster than the pings
    /// coalesce into one ping instead of queueing, and a snapshot never
    /// waits for a ping.
    success: tokio::sync::Notify,
    state: Mutex<State>,
}

impl Metrics {
    /// New, all-zero metrics.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the plain data inside
        // half-updated in a way that matters for reporting.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one object-store request of `op` that moved `bytes` bytes.
    pub fn record_request(&self, op: Op, bytes: u64, ok: bool) {
        let c = &self.ops[op.index()];
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        if !ok {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Total object-store requests so far, all operations.
    pub fn total_requests(&self) -> u64 {
        self.ops
            .iter()
            .map(|c| c.requests.load(Ordering::Relaxed))
            .sum()
    }

    /// Object-store requests of one operation so far.
    pub fn requests(&self, op: Op) -> u64 {
        self.ops[op.index()].requests.load(Ordering::Relaxed)
    }

    /// Bytes moved by requests of one operation so far (sent for puts,
    /// received for gets).
    pub fn bytes(&self, op: Op) -> u64 {
        self.ops[op.index()].bytes.load(Ordering::Relaxed)
    }

    /// Records that a change of the database was seen at `at`. Only the
    /// oldest pending change matters for lag, so later ones keep it.
    pub fn record_change(&self, at: chrono::DateTime<chrono::Utc>) {
        self.change_events.fetch_add(1, Ordering::Relaxed);
        let mut s = self.state();
        if s.pending_since.is_none() {
            s.pending_since = Some(at);
        }
    }

    /// When the oldest change not yet uploaded was seen.
    pub fn pending_since(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.state().pending_since
    }

    /// Records a successful snapshot whose read transaction started at
    /// `started`: every change seen before that instant is now in the replica.
    pub fn record_success(
        &self,
        started: chrono::DateTime<chrono::Utc>,
        id: Option<&str>,
        bytes: u64,
        took: Duration,
    ) {
        match id {
            Some(_) => self.snapshots_uploaded.fetch_add(1, Ordering::Relaxed),
            None => self.snapshots_unchanged.fetch_add(1, Ordering::Relaxed),
        };
        self.snapshot_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_duration_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        let mut s = self.state();
        s.last_success = Some(chrono::Utc::now());
        if let Some(id) = id {
            s.last_snapshot_id = Some(id.to_string());
        }
        s.last_error = None;
        s.lease_wait = None;
        // Changes seen after the snapshot started may not be in it; the watch
        // loop records them again, so clearing here never hides one.
        if s.pending_since.is_some_and(|p| p <= started) {
            s.pending_since = None;
        }
        drop(s);
        self.success.notify_one();
    }

    /// Resolves after the next successful snapshot (at once if one happened
    /// since the last call): what a heartbeat sender waits on.
    pub async fn next_success(&self) {
        self.success.notified().await;
    }

    /// Whether the loop is healthy with nothing to do: it has checked the
    /// db at least once, every change seen is in the replica, the last
    /// attempt did not fail and no other writer's lease blocks it. What an
    /// idle heartbeat is sent on.
    pub fn is_current(&self) -> bool {
        let s = self.state();
        s.last_success.is_some()
            && s.pending_since.is_none()
            && s.last_error.is_none()
            && s.lease_wait.is_none()
    }

    /// Counts one heartbeat request, answered with a 2xx (`ok`) or not.
    pub fn record_heartbeat(&self, ok: bool) {
        match ok {
            true => self.heartbeats_sent.fetch_add(1, Ordering::Relaxed),
            false => self.heartbeats_failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Records how the engine did a successful snapshot: whether it read
    /// every page, and the WAL reset after it (see `snapshot::pin`).
    /// Records a successful snapshot from its report: the one call `watch`
    /// and `cron` make, so both count the same things
    /// ([`Metrics::record_success`] and [`Metrics::record_engine`]).
    pub fn record_snapshot(
        &self,
        started: chrono::DateTime<chrono::Utc>,
        report: &crate::snapshot::SnapshotReport,
        took: Duration,
    ) {
        self.record_success(started, report.id.as_deref(), report.uploaded_bytes, took);
        self.record_engine(report);
    }

    pub fn record_engine(&self, report: &crate::snapshot::SnapshotReport) {
        if report.full_scan {
            self.full_scans.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(r) = &report.wal_reset {
            self.wal_resets.fetch_add(1, Ordering::Relaxed);
            self.wal_reset_max_lock_us
                .fetch_max(r.write_lock_held.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// Snapshots so far that hashed every chunk of the db.
    pub fn full_scans(&self) -> u64 {
        self.full_scans.load(Ordering::Relaxed)
    }

    /// Forgets the pending change: the loop re-records any change it still
    /// has to upload right after.
    pub fn clear_pending(&self) {
        self.state().pending_since = None;
    }

    /// Records a failed snapshot attempt; `message` is shown by `/healthz`,
    /// so it must not carry keys, bucket names or endpoints.
    pub fn record_error(&self, message: &str) {
        self.snapshot_errors.fetch_add(1, Ordering::Relaxed);
        self.state().last_error = Some(message.to_string());
    }

    /// Records that another process's lease keeps us from writing
    /// (`Some(why)`), or no longer does (`None`).
    pub fn set_lease_wait(&self, why: Option<String>) {
        self.state().lease_wait = why;
    }

    /// Records whether the writer lease is held.
    pub fn set_lease_held(&self, held: bool) {
        self.state().lease_held = held;
    }

    /// Successful snapshots that uploaded something.
    pub fn snapshots_uploaded(&self) -> u64 {
        self.snapshots_uploaded.load(Ordering::Relaxed)
    }

    /// The newest snapshot id this process uploaded.
    pub fn last_snapshot_id(&self) -> Option<String> {
        self.state().last_snapshot_id.clone()
    }

    /// Wall-clock time of the last successful snapshot.
    pub fn last_success(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.state().last_success
    }

    /// Seconds the oldest pending change has waited (0 when up to date).
    pub fn lag_seconds(&self, now: chrono::DateTime<chrono::Utc>) -> f64 {
        self.pending_since()
            .map(|p| (now - p).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0)
    }

    /// Health verdict: `Err(reason)` when a change has waited longer than
    /// `max_lag`.
    pub fn health(&self, max_lag: Duration) -> Result<String, String> {
        let now = chrono::Utc::now();
        let lag = self.lag_seconds(now);
        let s = self.state();
        let waiting = s
            .lease_wait
            .as_deref()
            .map(|w| format!("waiting for the writer lease: {w}\n"))
            .unwrap_or_default();
        if lag > max_lag.as_secs_f64() {
            let err = s.last_error.as_deref().unwrap_or("none");
            return Err(format!(
                "changes waiting {lag:.1}s for upload (limit {}s); last error: {err}\n{waiting}",
                max_lag.as_secs_f64()
            ));
        }
        Ok(format!("ok lag={lag:.3}s\n{waiting}"))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render_families(&[("", self.families())])
    }

    /// Every metric as families of samples (labels, value), in exposition
    /// order; [`Registry::render`] merges those of several loops.
    fn families(&self) -> Vec<Family> {
        let now = chrono::Utc::now();
        let mut out = Vec::with_capacity(16);
        let mut metric = |name: &'static str,
                          kind: &'static str,
                          help: &'static str,
                          samples: Vec<(String, String)>| {
            out.push(Family {
                name,
                kind,
                help,
                samples,
            })
        };
        let (last_success, lease_held) = {
            let s = self.state();
            (s.last_success, s.lease_held)
        };
        metric(
            "mailsafe_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful snapshot (0 if none yet).",
            vec![(
                String::new(),
                last_success
                    .map(|t| format!("{:.3}", t.timestamp_millis() as f64 / 1000.0))
                    .unwrap_or_else(|| "0".into()),
            )],
        );
        metric(
            "mailsafe_replication_lag_seconds",
            "gauge",
            "Age of the oldest database change not yet in the replica (0 when up to date).",
            vec![(String::new(), format!("{:.3}", self.lag_seconds(now)))],
        );
        metric(
            "mailsafe_snapshots_total",
            "counter",
            "Snapshot attempts that succeeded, by whether anything was uploaded.",
            vec![
                (
                    "{result=\"uploaded\"}".into(),
                    self.snapshots_uploaded.load(Ordering::Relaxed).to_string(),
                ),
                (
                    "{result=\"unchanged\"}".into(),
                    self.snapshots_unchanged.load(Ordering::Relaxed).to_string(),
                ),
            ],
        );
        metric(
            "mailsafe_snapshot_errors_total",
            "counter",
            "Snapshot attempts that failed (each is retried).",
            vec![(
                String::new(),
                self.snapshot_errors.load(Ordering::Relaxed).to_string(),
            )],
        );
        metric(
            "mailsafe_snapshot_uploaded_bytes_total",
            "counter",
            "Bytes uploaded by snapshots, manifests included.",
            vec![(
                String::new(),
                self.snapshot_bytes.load(Ordering::Relaxed).to_string(),
            )],
        );
        metric(
            "mailsafe_last_snapshot_duration_seconds",
            "gauge",
            "How long the last successful snapshot took.",
            vec![(
                String::new(),
                format!(
                    "{:.6}",
                    self.last_duration_us.load(Ordering::Relaxed) as f64 / 1e6
                ),
            )],
        );
        metric(
            "mailsafe_full_scans_total",
            "counter",
            "Snapshots that read and hashed every page of the db (the first one, and whenever the WAL could not tell what changed).",
            vec![(
                String::new(),
                self.full_scans.load(Ordering::Relaxed).to_string(),
            )],
        );
        metric(
            "mailsafe_wal_resets_total",
            "counter",
            "Resets of the WAL pinned between snapshots (write lock, record the pages, PASSIVE checkpoint).",
            vec![(
                String::new(),
                self.wal_resets.load(Ordering::Relaxed).to_string(),
            )],
        );
        metric(
            "mailsafe_wal_reset_max_lock_seconds",
            "gauge",
            "Longest time a WAL reset held the database's write lock (application commits wait that long).",
            vec![(
                String::new(),
                format!(
                    "{:.6}",
                    self.wal_reset_max_lock_us.load(Ordering::Relaxed) as f64 / 1e6
                ),
            )],
        );
        metric(
            "mailsafe_change_events_total",
            "counter",
            "File-system change events seen on the database and its -wal/-journal.",
            vec![(
                String::new(),
                self.change_events.load(Ordering::Relaxed).to_string(),
            )],
        );
        let per_op = |f: fn(&OpCounters) -> u64| {
            Op::ALL
                .iter()
                .map(|op| {
                    (
                        format!("{{op=\"{}\"}}", op.name()),
                        f(&self.ops[op.index()]).to_string(),
                    )
                })
                .collect::<Vec<_>>()
        };
        metric(
            "mailsafe_store_requests_total",
            "counter",
            "Object-store requests, by operation.",
            per_op(|c| c.requests.load(Ordering::Relaxed)),
        );
        metric(
            "mailsafe_store_bytes_total",
            "counter",
            "Object-store payload bytes (sent for put, received for get), by operation.",
            per_op(|c| c.bytes.load(Ordering::Relaxed)),
        );
        metric(
            "mailsafe_store_errors_total",
            "counter",
            "Object-store requests that failed, by operation.",
            per_op(|c| c.errors.load(Ordering::Relaxed)),
        );
        metric(
            "mailsafe_heartbeats_total",
            "counter",
            "Heartbeat URL requests after successful snapshots, by result (failed: refused, timed out or not 2xx).",
            vec![
                (
                    "{result=\"sent\"}".into(),
                    self.heartbeats_sent.load(Ordering::Relaxed).to_string(),
                ),
                (
                    "{result=\"failed\"}".into(),
                    self.heartbeats_failed.load(Ordering::Relaxed).to_string(),
                ),
            ],
        );
        metric(
            "mailsafe_lease_held",
            "gauge",
            "1 while this process holds the replica's single-writer lease.",
            vec![(String::new(), u8::from(lease_held).to_string())],
        );
        out
    }
}

/// One metric: its name, type, help and samples (`{labels}` or empty, and
/// the value).
#[derive(Debug)]
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, String)>,
}

/// The metrics of every watch loop of a process (one per database and
/// replica), served on one `/metrics` and `/healthz`. Each loop's samples
/// carry its labels (`db="/data/a.db",replica="offsite"`); a registry of one
/// loop without labels is what a single `watch --db --replica` serves.
/// Clones share the list: `watch` adds the loops of dbs a config file's
/// `dir` entry finds while it runs, and removes those of dbs that are gone.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    loops: Arc<Mutex<Vec<Labelled>>>,
}

/// A loop's labels (`db="..",replica=".."`, or empty) and metrics.
pub type Labelled = (String, Arc<Metrics>);

impl Registry {
    /// One loop, unlabelled.
    pub fn single(metrics: Arc<Metrics>) -> Self {
        Self {
            loops: Arc::new(Mutex::new(vec![(String::new(), metrics)])),
        }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Labelled>> {
        // Plain data: a panic elsewhere cannot leave it half-updated.
        self.loops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the loop of `db` and the replica `replica`.
    pub fn add(&self, db: &str, replica: &str, metrics: Arc<Metrics>) {
        let labels = format!(
            "db=\"{}\",replica=\"{}\"",
            escape_label(db),
            escape_label(replica)
        );
        self.list().push((labels, metrics));
    }

    /// Removes the loop whose metrics are `metrics` (its series leave
    /// `/metrics`, its verdict `/healthz`).
    pub fn remove(&self, metrics: &Arc<Metrics>) {
        self.list().retain(|(_, m)| !Arc::ptr_eq(m, metrics));
    }

    /// The loops' labels and metrics, now.
    pub fn loops(&self) -> Vec<Labelled> {
        self.list().clone()
    }

    /// The Prometheus text of every loop: each metric's HELP and TYPE once,
    /// then its samples from every loop (the format wants a family's
    /// samples together).
    pub fn render(&self) -> String {
        let loops = self.loops();
        let all: Vec<(&str, Vec<Family>)> = loops
            .iter()
            .map(|(labels, m)| (labels.as_str(), m.families()))
            .collect();
        render_families(&all)
    }

    /// Health of every loop: failing when any loop fails. One unlabelled
    /// loop answers as it always did; several answer a line each.
    pub fn health(&self, max_lag: Duration) -> Result<String, String> {
        let loops = self.loops();
        if let [(labels, m)] = &loops[..] {
            if labels.is_empty() {
                return m.health(max_lag);
            }
        }
        let mut ok = true;
        let mut body = String::new();
        for (labels, m) in &loops {
            let verdict = m.health(max_lag);
            ok &= verdict.is_ok();
            let text = verdict.unwrap_or_else(|e| e);
            let _ = write!(body, "{labels}: {text}");
        }
        if ok { Ok(body) } else { Err(body) }
    }
}

/// The text exposition of the families of several loops, each loop's
/// labels (`db="..",replica=".."`, or empty) put first in its samples.
/// Every loop has the same families in the same order.
fn render_families(all: &[(&str, Vec<Family>)]) -> String {
    let mut out = String::with_capacity(2048 * all.len().max(1));
    let Some((_, first)) = all.first() else {
        return out;
    };
    for (i, family) in first.iter().enumerate() {
        let name = family.name;
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {}", family.kind);
        for (extra, families) in all {
            for (labels, value) in &families[i].samples {
                let labels = match (extra.is_empty(), labels.is_empty()) {
                    (true, _) => labels.clone(),
                    (false, true) => format!("{{{extra}}}"),
                    (false, false) => format!("{{{extra},{}", &labels[1..]),
                };
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
    }
    out
}

/// A label value as the text format wants it.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// An [`ObjectStore`] that counts every request into [`Metrics`] and
/// otherwise passes it through unchanged.
#[derive(Debug)]
pub struct MeteredStore {
    inner: DynStore,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Wraps `inner`, counting into `metrics`.
    pub fn wrap(inner: DynStore, metrics: Arc<Metrics>) -> DynStore {
        Arc::new(Self { inner, metrics })
    }

    fn count<T>(&self, op: Op, bytes: u64, r: &Result<T, StoreError>) {
        // A conditional write that finds the object there, or a read of a
        // missing key, is an answer, not a failure of the store.
        let ok = matches!(
            r,
            Ok(_)
                | Err(StoreError::NotFound { .. })
                | Err(StoreError::AlreadyExists { .. })
                | Err(StoreError::PreconditionFailed { .. })
        );
        self.metrics.record_request(op, bytes, ok);
    }
}

#[async_trait::async_trait]
impl ObjectStore for MeteredStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let n = body.len() as u64;
        let r = self.inner.put(key, body).await;
        self.count(Op::Put, n, &r);
        r
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let n = body.len() as u64;
        let r = self.inner.put_if_absent(key, body).await;
        self.count(Op::Put, n, &r);
        r
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let r = self.inner.get(key).await;
        let n = r.as_ref().map(|b| b.len() as u64).unwrap_or(0);
        self.count(Op::Get, n, &r);
        r
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let r = self.inner.get_range(key, range).await;
        let n = r.as_ref().map(|b| b.len() as u64).unwrap_or(0);
        self.count(Op::Get, n, &r);
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let r = self.inner.list(prefix).await;
        self.count(Op::List, 0, &r);
        r
    }

    async fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let r = self.inner.list_after(prefix, start_after).await;
        self.count(Op::List, 0, &r);
        r
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let r = self.inner.delete(key).await;
        self.count(Op::Delete, 0, &r);
        r
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let r = self.inner.head(key).await;
        self.count(Op::Head, 0, &r);
        r
    }

    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<String, StoreError> {
        let n = body.len() as u64;
        let r = self.inner.put_if_match(key, body, etag).await;
        self.count(Op::Put, n, &r);
        r
    }
}

/// The `/metrics` + `/healthz` router of every loop in `metrics`.
pub fn router(metrics: Registry, health_max_lag: Duration) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let m1 = metrics.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        m.render(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let m = metrics.clone();
                async move {
                    match m.health(health_max_lag) {
                        Ok(body) => (StatusCode::OK, body),
                        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several loops: each metric's HELP/TYPE once, every loop's samples
    /// under it with its db and replica first among the labels (escaped);
    /// health fails when one loop does and names it.
    #[test]
    fn registry_labels_each_loop_and_groups_families() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.record_request(Op::Put, 10, true);
        b.record_change(chrono::Utc::now() - chrono::Duration::seconds(100));
        b.record_error("connection refused");
        let reg = Registry::default();
        reg.add("/data/a.db", "replica1", a);
        reg.add("/data/\"b\".db", "offsite", b.clone());
        let text = reg.render();
        assert_eq!(
            text.matches("# TYPE mailsafe_store_requests_total counter")
                .count(),
            1,
            "{text}"
        );
        assert!(text.contains(
            "mailsafe_store_requests_total{db=\"/data/a.db\",replica=\"replica1\",op=\"put\"} 1\n"
        ));
        assert!(
            text.contains("mailsafe_lease_held{db=\"/data/\\\"b\\\".db\",replica=\"offsite\"} 0\n")
        );
        let lag = text
            .find("mailsafe_replication_lag_seconds{db=\"/data/a.db\"")
            .unwrap();
        let snaps = text.find("# HELP mailsafe_snapshots_total").unwrap();
        let lag_b = text
            .find("mailsafe_replication_lag_seconds{db=\"/data/\\\"b")
            .unwrap();
        assert!(lag < lag_b && lag_b < snaps, "{text}");
        let err = reg.health(Duration::from_secs(60)).unwrap_err();
        assert!(
            err.contains("replica=\"offsite\": changes waiting"),
            "{err}"
        );
        assert!(err.contains("replica=\"replica1\": ok"), "{err}");
        // A loop removed (its db is gone) leaves both, in every clone.
        reg.clone().remove(&b);
        assert!(reg.health(Duration::from_secs(60)).is_ok());
        assert!(!reg.render().contains("offsite"));
        // One loop without labels: as before.
        let single = Registry::single(Metrics::new());
        assert!(single.render().contains("mailsafe_lease_held 0\n"));
        assert!(
            single
                .health(Duration::from_secs(1))
                .unwrap()
                .starts_with("ok lag=")
        );
    }

    /// Current (what an idle heartbeat needs): checked once, nothing
    /// waiting, no failure since the last success, no lease wait.
    #[test]
    fn current_only_after_a_success_with_nothing_waiting() {
        let m = Metrics::new();
        assert!(!m.is_current(), "never checked");
        let t0 = chrono::Utc::now();
        m.record_success(t0, None, 0, Duration::ZERO);
        assert!(m.is_current());
        m.record_change(t0 + chrono::Duration::seconds(1));
        assert!(!m.is_current(), "a change waits");
        m.record_success(
            t0 + chrono::Duration::seconds(2),
            Some("id"),
            1,
            Duration::ZERO,
        );
        assert!(m.is_current());
        m.record_error("down");
        assert!(!m.is_current(), "failing");
        m.record_success(t0 + chrono::Duration::seconds(3), None, 0, Duration::ZERO);
        m.set_lease_wait(Some("held by another".into()));
        assert!(!m.is_current(), "blocked by another writer");
    }

    #[test]
    fn lag_clears_only_for_changes_before_the_snapshot_started() {
        let m = Metrics::new();
        let t0 = chrono::Utc::now();
        m.record_change(t0);
        // A snapshot that started before the change does not cover it.
        m.record_success(
            t0 - chrono::Duration::milliseconds(5),
            Some("a"),
            10,
            Duration::ZERO,
        );
        assert_eq!(m.pending_since(), Some(t0));
        m.record_success(
            t0 + chrono::Duration::milliseconds(5),
            Some("b"),
            10,
            Duration::ZERO,
        );
        assert_eq!(m.pending_since(), None);
        assert_eq!(m.snapshots_uploaded(), 2);
        assert_eq!(m.last_snapshot_id().as_deref(), Some("b"));
    }

    #[test]
    fn health_fails_past_max_lag_and_names_the_last_error() {
        let m = Metrics::new();
        assert!(m.health(Duration::from_secs(1)).is_ok());
        m.record_change(chrono::Utc::now() - chrono::Duration::seconds(10));
        m.record_error("put chunks/ab: connection refused");
        let err = m.health(Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("connection refused"), "{err}");
        assert!(m.health(Duration::from_secs(60)).is_ok());
        // A writer kept out by another's lease says so, healthy or not.
        m.set_lease_wait(Some("held by host b until 12:00:05".into()));
        let ok = m.health(Duration::from_secs(60)).unwrap();
        assert!(
            ok.contains("waiting for the writer lease: held by host b"),
            "{ok}"
        );
        let err = m.health(Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("waiting for the writer lease"), "{err}");
    }

    #[test]
    fn render_has_every_metric_and_per_op_counts() {
        let m = Metrics::new();
        m.record_request(Op::Put, 100, true);
        m.record_request(Op::Put, 50, false);
        m.record_request(Op::List, 0, true);
        let text = m.render();
        assert!(text.contains("mailsafe_store_requests_total{op=\"put\"} 2\n"));
        assert!(text.contains("mailsafe_store_bytes_total{op=\"put\"} 150\n"));
        assert!(text.contains("mailsafe_store_errors_total{op=\"put\"} 1\n"));
        assert!(text.contains("mailsafe_store_requests_total{op=\"list\"} 1\n"));
        assert!(text.contains("mailsafe_last_success_timestamp_seconds 0\n"));
        assert_eq!(m.total_requests(), 3);
        // Every sample line belongs to a declared metric.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
