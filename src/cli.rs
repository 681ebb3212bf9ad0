//! Command-line interface: the subcommands, their flags (each also read from a
//! `MAILSAFE_*` or Mailpit `MP_*` environment variable), and dispatch.
//!
//! This is binary code: it may use `anyhow` and add `.context()`; the library
//! modules it calls return typed errors (see `mailsafe::Error`).

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// Keeps a live SQLite database safe on S3, and runs a Mailpit-compatible mail
/// catcher.
#[derive(Debug, Parser)]
#[command(name = "mailsafe", version, about)]
pub struct Args {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "MAILSAFE_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// `2026-11-29T09:00:00Z INFO message key=value`.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the mail catcher (SMTP + HTTP API + web UI), optionally with
    /// restore-on-start and continuous backup to a replica.
    Serve(Box<ServeArgs>),
    /// Take one consistent, incremental snapshot of a database.
    Snapshot(SnapshotArgs),
    /// Restore the newest (or a chosen) snapshot, verified, to a path.
    Restore(RestoreArgs),
    /// List the snapshots in a replica.
    Snapshots(SnapshotsArgs),
    /// Check everything a restore would check, without installing anything.
    Verify(VerifyArgs),
    /// Watch a database and upload a snapshot within about a second of every
    /// change (the Kubernetes sidecar).
    Watch(WatchArgs),
    /// Scheduled snapshots with retention and garbage collection.
    Cron(CronArgs),
    /// Apply retention and garbage-collect unreferenced objects.
    Prune(PruneArgs),
}

/// Where the replica lives.
#[derive(Debug, Clone, ClapArgs)]
pub struct ReplicaArgs {
    /// Replica URL: `s3://bucket/prefix` or `file:///path`.
    #[arg(long, env = "MAILSAFE_REPLICA")]
    pub replica: String,
    /// S3 endpoint for S3-compatible stores (path-style addressing is used
    /// with a custom endpoint). Defaults to `AWS_ENDPOINT_URL_S3` /
    /// `AWS_ENDPOINT_URL`.
    #[arg(long, env = "MAILSAFE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// File holding the backup encryption key (32 raw bytes, 64 hex digits
    /// or base64). Without it, `MAILSAFE_ENCRYPTION_KEY` may hold the key
    /// itself; with neither, backups are not encrypted.
    #[arg(long, env = "MAILSAFE_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
}

impl ReplicaArgs {
    /// The configured encryption key, if any. Errors never contain the key.
    pub fn encryption_key(&self) -> anyhow::Result<Option<std::sync::Arc<mailsafe::crypto::Key>>> {
        Ok(
            mailsafe::crypto::Key::from_sources(self.encryption_key_file.as_deref())?
                .map(std::sync::Arc::new),
        )
    }
}

/// Flags of the commands that write a replica under its lease (`watch`,
/// `cron`, `serve --replica`).
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct WriterArgs {
    /// Write even to a store that ignores conditional writes (it accepts a
    /// create of an existing key with If-None-Match). Without this, such a
    /// store is refused (exit 5), since its lease cannot keep two writers
    /// apart. Only safe with a single writer.
    #[arg(long, env = "MAILSAFE_UNSAFE_NO_CONDITIONAL_WRITES")]
    pub unsafe_no_conditional_writes: bool,
}

/// Retention policy flags, shared by `cron` and `prune` (like restic's
/// `forget`).
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct RetentionArgs {
    /// Keep every snapshot taken within this long of the newest (e.g. `1h`,
    /// `7d`).
    #[arg(long, env = "MAILSAFE_KEEP_WITHIN", value_parser = humantime::parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Keep the N newest snapshots.
    #[arg(long, env = "MAILSAFE_KEEP_LAST")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours.
    #[arg(long, env = "MAILSAFE_KEEP_HOURLY")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days.
    #[arg(long, env = "MAILSAFE_KEEP_DAILY")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks.
    #[arg(long, env = "MAILSAFE_KEEP_WEEKLY")]
    pub keep_weekly: Option<u32>,
    /// Objects unreferenced by any kept snapshot are deleted only once older
    /// than this, so a snapshot being uploaded concurrently is never broken.
    #[arg(long, env = "MAILSAFE_GC_GRACE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub gc_grace: std::time::Duration,
}

/// `mailsafe serve`.
#[derive(Debug, ClapArgs)]
pub struct ServeArgs {
    /// The catcher's own options (`MP_*` and `MAILSAFE_*`).
    #[command(flatten)]
    pub catcher: mailsafe_catcher::options::Options,
    /// Replica URL: when set, restore on start if the db is missing, and back
    /// up continuously while running.
    #[arg(long, env = "MAILSAFE_REPLICA")]
    pub replica: Option<String>,
    /// S3 endpoint (see `snapshot --help`).
    #[arg(long, env = "MAILSAFE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// File holding the replica's encryption key (see `snapshot --help`);
    /// `MAILSAFE_ENCRYPTION_KEY` may hold the key itself.
    #[arg(long, env = "MAILSAFE_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// How long shutdown may take after SIGTERM, SMTP drain and final
    /// snapshot included. Past it the process exits 1 anyway, saying what is
    /// not in the replica.
    #[arg(long, env = "MAILSAFE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    #[command(flatten)]
    pub writer: WriterArgs,
}

/// `mailsafe snapshot`.
#[derive(Debug, ClapArgs)]
pub struct SnapshotArgs {
    /// The SQLite database to back up.
    #[arg(long, env = "MAILSAFE_DB")]
    pub db: PathBuf,
    #[command(flatten)]
    pub replica: ReplicaArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How thoroughly a restored image is checked by SQLite.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum IntegrityCheck {
    /// `PRAGMA quick_check`.
    Quick,
    /// `PRAGMA integrity_check`.
    Full,
    /// Skip SQLite's check (object and image hashes are still verified).
    None,
}

/// `mailsafe restore`.
#[derive(Debug, ClapArgs)]
pub struct RestoreArgs {
    /// The database path the backup belongs to; also the restore target
    /// unless `--output` is given.
    #[arg(long, env = "MAILSAFE_DB")]
    pub db: PathBuf,
    #[command(flatten)]
    pub replica: ReplicaArgs,
    /// Restore this snapshot id instead of the newest.
    #[arg(long, conflicts_with = "at")]
    pub snapshot: Option<String>,
    /// Restore the newest snapshot taken at or before this RFC 3339 time.
    #[arg(long)]
    pub at: Option<String>,
    /// Write the restored database here instead of `--db`.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Do nothing (exit 0) if the target database already exists.
    #[arg(long, env = "MAILSAFE_IF_DB_NOT_EXISTS")]
    pub if_db_not_exists: bool,
    /// Do nothing (exit 0) if the replica has no snapshot.
    #[arg(long, env = "MAILSAFE_IF_REPLICA_EXISTS")]
    pub if_replica_exists: bool,
    /// Replace an existing database at the target.
    #[arg(long)]
    pub force: bool,
    /// SQLite check run on the restored image before it is installed.
    #[arg(long, default_value = "quick")]
    pub integrity_check: IntegrityCheck,
    /// Concurrent downloads.
    #[arg(long, default_value_t = mailsafe::restore::DEFAULT_PARALLELISM)]
    pub parallelism: usize,
}

/// `mailsafe snapshots`.
#[derive(Debug, ClapArgs)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub replica: ReplicaArgs,
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `mailsafe verify`.
#[derive(Debug, ClapArgs)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub replica: ReplicaArgs,
    /// Verify this snapshot instead of the newest.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Verify every snapshot in the replica.
    #[arg(long, conflicts_with = "snapshot")]
    pub all: bool,
    /// SQLite check run on the rebuilt image.
    #[arg(long, default_value = "quick")]
    pub integrity_check: IntegrityCheck,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `mailsafe watch`.
#[derive(Debug, ClapArgs)]
pub struct WatchArgs {
    /// The SQLite database to watch (it may not exist yet).
    #[arg(long, env = "MAILSAFE_DB")]
    pub db: PathBuf,
    #[command(flatten)]
    pub replica: ReplicaArgs,
    /// Serve `/metrics` and `/healthz` on this address.
    #[arg(long, env = "MAILSAFE_LISTEN")]
    pub listen: Option<String>,
    /// Quiet time after the last change before a snapshot is taken.
    #[arg(long, env = "MAILSAFE_DEBOUNCE", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub debounce: std::time::Duration,
    /// Longest delay between a change and its snapshot, however busy the db.
    /// (750 ms leaves room for the upload itself within a one-second RPO.)
    #[arg(long, env = "MAILSAFE_MAX_DELAY", default_value = "750ms", value_parser = humantime::parse_duration)]
    pub max_delay: std::time::Duration,
    /// How long shutdown may take after SIGTERM, final snapshot and lease
    /// release included. Past it the process exits 1 anyway, saying what is
    /// not in the replica.
    #[arg(long, env = "MAILSAFE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    /// `/healthz` fails when a change has waited longer than this.
    #[arg(long, env = "MAILSAFE_HEALTH_MAX_LAG", default_value = "60s", value_parser = humantime::parse_duration)]
    pub health_max_lag: std::time::Duration,
    /// Lifetime of the replica's single-writer lease. It is renewed only
    /// before a write, so an idle watcher makes no request for it; a second
    /// writer waits until the lease is released or this long after its last
    /// renewal.
    #[arg(long, env = "MAILSAFE_LEASE_TTL", default_value = "2m", value_parser = humantime::parse_duration)]
    pub lease_ttl: std::time::Duration,
    /// Detect changes by polling the db files every this often instead of
    /// inotify (for file systems without inotify; used automatically when
    /// inotify fails).
    #[arg(long, env = "MAILSAFE_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<std::time::Duration>,
    /// Retention applied in process. Without any --keep-* flag, watch thins
    /// by default: every snapshot of the last hour, hourly for a day, daily
    /// for a week.
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// How often retention and GC run (after new snapshots only); 0 turns
    /// in-process retention off (then keep a `prune` job).
    #[arg(long, env = "MAILSAFE_RETENTION_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub retention_interval: std::time::Duration,
    #[command(flatten)]
    pub writer: WriterArgs,
}

/// `mailsafe cron`.
#[derive(Debug, ClapArgs)]
pub struct CronArgs {
    /// The SQLite database to back up.
    #[arg(long, env = "MAILSAFE_DB")]
    pub db: PathBuf,
    #[command(flatten)]
    pub replica: ReplicaArgs,
    /// Standard 5-field cron expression, evaluated in UTC.
    #[arg(long, env = "MAILSAFE_SCHEDULE", required_unless_present = "once")]
    pub schedule: Option<String>,
    /// Run one round (snapshot if changed, retention, GC) and exit.
    #[arg(long, conflicts_with = "schedule")]
    pub once: bool,
    /// How long shutdown may take after SIGTERM: a round in flight may
    /// finish its snapshot (retention waits for the next round). Past it the
    /// process exits 1 anyway, saying what was not done.
    #[arg(long, env = "MAILSAFE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub writer: WriterArgs,
}

/// `mailsafe prune`.
#[derive(Debug, ClapArgs)]
pub struct PruneArgs {
    #[command(flatten)]
    pub replica: ReplicaArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the parsed command.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging(args.log_format);
    match args.command {
        Command::Serve(a) => serve(*a),
        Command::Snapshot(a) => snapshot(a),
        Command::Restore(a) => restore(a),
        Command::Snapshots(a) => snapshots(a),
        Command::Verify(a) => verify(a),
        Command::Watch(a) => watch(a),
        Command::Cron(a) => cron(a),
        Command::Prune(a) => prune(a),
    }
}

/// Logs go to stderr so that `--json` output on stdout stays parseable.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILSAFE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(
            // The AWS SDK logs every retried connection at INFO; our own
            // retry loops already report each state change once.
            "info,aws_smithy_runtime=warn,aws_smithy_runtime_api=warn,aws_config=warn,hyper_util=warn",
        ));
    // Never TRACE from other crates, whatever MAILSAFE_LOG says: at TRACE
    // the AWS SDK prints canonical requests and request headers, which
    // carry the session token (also when it comes from IRSA/STS, so it
    // cannot be redacted by value). DEBUG and above carry no secrets
    // (tests/secrets.rs runs every command at trace to keep it so).
    let no_foreign_trace = tracing_subscriber::filter::filter_fn(|m| {
        *m.level() != tracing::Level::TRACE || m.target().starts_with("mailsafe")
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.finish().with(no_foreign_trace).init(),
        LogFormat::Json => builder.json().finish().with(no_foreign_trace).init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a long-lived mode (`serve`, `watch`) to its end on a fresh runtime.
/// Dropping a runtime waits for every blocking task, however long it takes
/// (a snapshot reader in a SQLite busy wait, a slow query of the API): after
/// a shutdown that must finish in time, give them a moment and go.
fn run_until_shutdown<T>(fut: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let rt = runtime()?;
    let out = rt.block_on(fut);
    set_phase("stopping the runtime");
    rt.shutdown_timeout(std::time::Duration::from_millis(250));
    Ok(out)
}

/// What the process is doing since the termination signal, for the
/// watchdog's message.
static SHUTDOWN_PHASE: std::sync::Mutex<&str> = std::sync::Mutex::new("starting the shutdown");

fn set_phase(phase: &'static str) {
    if let Ok(mut p) = SHUTDOWN_PHASE.lock() {
        *p = phase;
    }
}

/// Part of the shutdown timeout kept back from the inner deadlines, so they
/// fire (with their precise messages) before the watchdog: a tenth, at most
/// one second.
fn shutdown_margin(timeout: std::time::Duration) -> std::time::Duration {
    (timeout / 10).min(std::time::Duration::from_secs(1))
}

/// The deadline handed to the watch loop: the timeout from now, less
/// [`shutdown_margin`].
fn inner_deadline(timeout: std::time::Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + timeout - shutdown_margin(timeout)
}

/// What a shutdown cut off by the watchdog leaves undone, in words, asked
/// at that moment (each mode knows its own: a catcher, a watch loop, a cron
/// round).
type Undone = Box<dyn Fn() -> String + Send>;

/// [`Undone`] of the watch loop (sidecar or `serve --replica`): which
/// committed changes are not in the replica, from its `metrics`.
fn replica_undone(metrics: std::sync::Arc<mailsafe::watch::metrics::Metrics>) -> Undone {
    Box::new(move || {
        let newest = metrics.last_snapshot_id().map_or_else(
            || "this process uploaded no snapshot".to_string(),
            |id| format!("the newest snapshot from this process is {id}"),
        );
        match metrics.pending_since() {
            Some(t) => format!(
                "every change committed since {} is NOT in the replica ({newest})",
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
            None => format!("no change seen is missing from the replica ({newest})"),
        }
    })
}

/// The outer bound of a shutdown, which always wins: a plain OS thread (not
/// a task, so a blocked runtime cannot delay it) that ends the process with
/// exit code 1 once `timeout` has passed since the signal, saying where it
/// was stuck and what `undone` says is not done. The inner deadlines
/// normally end everything well before.
fn arm_shutdown_watchdog(timeout: std::time::Duration, undone: Undone) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(timeout);
            let phase = SHUTDOWN_PHASE.lock().map(|p| *p).unwrap_or("shutting down");
            eprintln!(
                "mailsafe: error: shutdown did not finish within {timeout:?} (still {phase}); \
                 exiting anyway: {}",
                undone()
            );
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the shutdown watchdog: {e}");
    }
}

/// The shutdown of a long-lived mode, shared by `serve`, `watch` and
/// `cron`: when `signal` comes, arms the watchdog (with `undone` for its
/// last word) and names the `phase` the process enters; the future returned
/// resolves to the deadline the mode's own steps must keep
/// ([`inner_deadline`]). The signal is acted on in a task of its own, so
/// the watchdog starts counting at the signal even while the mode is busy
/// elsewhere (opening the store, a step that does not poll this future).
fn shutdown_deadline(
    signal: impl std::future::Future<Output = ()> + Send + 'static,
    timeout: std::time::Duration,
    phase: &'static str,
    undone: Undone,
) -> impl std::future::Future<Output = tokio::time::Instant> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        signal.await;
        arm_shutdown_watchdog(timeout, undone);
        set_phase(phase);
        let _ = tx.send(inner_deadline(timeout));
    });
    async move {
        match rx.await {
            Ok(deadline) => deadline,
            // The runtime is going away without a signal: never.
            Err(_) => std::future::pending().await,
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut config = args.catcher.into_config()?;
    let db = config.database.display().to_string();
    let timeout = args.shutdown_timeout;
    if let Some(replica) = args.replica.clone() {
        let replica = ReplicaArgs {
            replica,
            endpoint: args.endpoint.clone(),
            encryption_key_file: args.encryption_key_file.clone(),
        };
        let writer = args.writer.clone();
        return run_until_shutdown(serve_replicated(config, replica, timeout, writer))?;
    }
    // The catcher's own drain ends before the watchdog does.
    config.shutdown_timeout = timeout - shutdown_margin(timeout);
    run_until_shutdown(async {
        // Installed before anything starts, so an early SIGTERM is not fatal.
        let signal = termination_signal()?;
        let catcher = mailsafe_catcher::Catcher::bind(config)
            .await
            .with_context(|| format!("cannot start the catcher on {db}"))?;
        tracing::info!(
            smtp = %catcher.smtp_addr(),
            http = %catcher.http_addr(),
            db = %db,
            "mailsafe catcher running"
        );
        catcher
            .run(async move {
                let undone = "every message answered 250 had been committed to the database";
                shutdown_deadline(
                    signal,
                    timeout,
                    "draining SMTP sessions and HTTP connections",
                    Box::new(|| undone.to_string()),
                )
                .await;
            })
            .await?;
        anyhow::Ok(())
    })??;
    Ok(())
}

/// `serve --replica`: restore if the db is missing and a backup exists, run
/// the catcher with the watch loop in-process, and on SIGTERM stop SMTP,
/// let the catcher commit every acknowledged message, then take the final
/// snapshot. The catcher and the snapshot share `shutdown_timeout`, counted
/// from the signal: the SMTP drain may use half of it, the final snapshot
/// what is left; a signal during the start-up restore ends it at once.
async fn serve_replicated(
    mut config: mailsafe_catcher::Config,
    replica: ReplicaArgs,
    shutdown_timeout: std::time::Duration,
    writer: WriterArgs,
) -> anyhow::Result<()> {
    let signal = termination_signal()?;
    let m = mailsafe::watch::metrics::Metrics::new();
    // The deadline of the whole shutdown, once the signal came.
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None);
    let metrics = m.clone();
    tokio::spawn(async move {
        let undone = replica_undone(metrics);
        let deadline =
            shutdown_deadline(signal, shutdown_timeout, "draining SMTP sessions", undone).await;
        let _ = deadline_tx.send(Some(deadline));
    });
    config.shutdown_timeout = shutdown_timeout / 2;
    let mut signalled = deadline_rx.clone();
    let start = start_replicated(config, &replica, m);
    let started = tokio::select! {
        started = start => started?,
        _ = signalled.wait_for(|d| d.is_some()) => {
            tracing::info!("stopped during start-up; the catcher never accepted mail");
            return Ok(());
        }
    };
    run_replicated(started, deadline_rx, writer).await
}

/// What `serve --replica` has once started.
struct Started {
    catcher: mailsafe_catcher::Catcher,
    store: mailsafe::store::DynStore,
    metrics: std::sync::Arc<mailsafe::watch::metrics::Metrics>,
    /// The replica's encryption key, if it is encrypted.
    key: Option<std::sync::Arc<mailsafe::crypto::Key>>,
}

/// The start of `serve --replica`: restore if asked for, open the replica,
/// bind the catcher.
async fn start_replicated(
    config: mailsafe_catcher::Config,
    replica: &ReplicaArgs,
    m: std::sync::Arc<mailsafe::watch::metrics::Metrics>,
) -> anyhow::Result<Started> {
    use anyhow::Context;
    use mailsafe::watch::metrics;
    let db = config.database.clone();
    let store = metrics::MeteredStore::wrap(open_store(replica).await?, m.clone());
    let key = replica.encryption_key()?;
    let opts = mailsafe::restore::RestoreOptions {
        pick: mailsafe::restore::Pick::Latest,
        target: db.clone(),
        if_db_not_exists: true,
        if_replica_exists: true,
        force: false,
        integrity_check: mailsafe::restore::IntegrityCheck::Quick,
        parallelism: mailsafe::restore::DEFAULT_PARALLELISM,
        progress: mailsafe::progress::none(),
        key: key.clone(),
    };
    mailsafe::restore::restore(&*store, &opts)
        .await
        .with_context(|| {
            format!(
                "restore on start of {} from {}",
                db.display(),
                replica.replica
            )
        })?;

    let catcher = mailsafe_catcher::Catcher::bind(config)
        .await
        .with_context(|| format!("cannot start the catcher on {}", db.display()))?;
    tracing::info!(
        smtp = %catcher.smtp_addr(),
        http = %catcher.http_addr(),
        db = %db.display(),
        replica = %store.describe(),
        "mailsafe catcher running, backed up continuously"
    );
    Ok(Started {
        catcher,
        store,
        metrics: m,
        key,
    })
}

/// The catcher and the watch loop of `serve --replica`, until the signal
/// puts a deadline in `deadline_rx`.
async fn run_replicated(
    started: Started,
    deadline_rx: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
    writer: WriterArgs,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use mailsafe::watch::{self, WatchConfig};
    let Started {
        catcher,
        store,
        metrics: m,
        key,
    } = started;
    let db = catcher.store().path().to_path_buf();
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let mut stop_rx = deadline_rx.clone();
    let catcher_run = async move {
        let r = catcher
            .run(async move {
                let _ = stop_rx.wait_for(|d| d.is_some()).await;
            })
            .await;
        // Only once every acknowledged message is committed may the final
        // snapshot start.
        let _ = done_tx.send(true);
        r
    };
    let mut wc = WatchConfig::new(&db);
    wc.encryption = key;
    wc.unsafe_no_conditional_writes = writer.unsafe_no_conditional_writes;
    let watch_run = watch::run(wc, store, m, async move {
        let _ = done_rx.wait_for(|d| *d).await;
        set_phase("taking the final snapshot");
        let deadline = *deadline_rx.borrow();
        deadline.unwrap_or_else(tokio::time::Instant::now)
    });
    let (caught, watched) = tokio::join!(catcher_run, watch_run);
    caught.context("catcher failed")?;
    watched?;
    Ok(())
}

fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let key = args.replica.encryption_key()?;
    let report = runtime()?.block_on(async {
        let store = mailsafe::store::open(&args.replica.replica, args.replica.endpoint.as_deref())
            .await
            .with_context(|| format!("cannot open replica {}", args.replica.replica))?;
        let mut snapshotter = mailsafe::snapshot::Snapshotter::new(&args.db, store).with_key(key);
        snapshotter
            .snapshot()
            .await
            .with_context(|| format!("snapshot of {} failed", args.db.display()))
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else if let Some(id) = &report.id {
        println!(
            "snapshot {id}: uploaded {} objects, {} bytes ({}; db {} bytes)",
            report.uploaded_objects,
            report.uploaded_bytes,
            if report.base {
                "base".to_string()
            } else {
                format!("delta of {} pages", report.delta_pages)
            },
            report.db_size
        );
    } else {
        println!("unchanged: nothing uploaded (db {} bytes)", report.db_size);
    }
    Ok(())
}

/// Opens the replica of `restore`, `snapshots` and `verify`.
async fn open_replica(r: &ReplicaArgs) -> anyhow::Result<mailsafe::store::DynStore> {
    use anyhow::Context;
    mailsafe::store::open(&r.replica, r.endpoint.as_deref())
        .await
        .map_err(mailsafe::Error::from)
        .with_context(|| format!("cannot open replica {}", r.replica))
}

fn integrity(check: IntegrityCheck) -> mailsafe::restore::IntegrityCheck {
    match check {
        IntegrityCheck::Quick => mailsafe::restore::IntegrityCheck::Quick,
        IntegrityCheck::Full => mailsafe::restore::IntegrityCheck::Full,
        IntegrityCheck::None => mailsafe::restore::IntegrityCheck::None,
    }
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use mailsafe::restore::{Pick, RestoreOptions};
    let pick = Pick::from_flags(args.snapshot.as_deref(), args.at.as_deref())?;
    let target = args.output.clone().unwrap_or_else(|| args.db.clone());
    let opts = RestoreOptions {
        pick,
        target: target.clone(),
        if_db_not_exists: args.if_db_not_exists,
        if_replica_exists: args.if_replica_exists,
        force: args.force,
        integrity_check: integrity(args.integrity_check),
        parallelism: args.parallelism.max(1),
        progress: crate::progress::stderr_bytes(),
        key: args.replica.encryption_key()?,
    };
    runtime()?.block_on(async {
        let store = open_replica(&args.replica).await?;
        mailsafe::restore::restore(&*store, &opts)
            .await
            .with_context(|| {
                format!(
                    "restore from {} to {} failed",
                    args.replica.replica,
                    target.display()
                )
            })?;
        Ok(())
    })
}

fn snapshots(args: SnapshotsArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    runtime()?.block_on(async {
        let store = open_replica(&args.replica).await?;
        let key = args.replica.encryption_key()?;
        let list = mailsafe::restore::list_snapshots(&*store, 16, key.as_deref())
            .await
            .with_context(|| format!("cannot list snapshots of {}", args.replica.replica))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&list)?);
            return Ok(());
        }
        let bytes = |b: Option<u64>| {
            b.map(|b| indicatif::HumanBytes(b).to_string())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<30} {:<24} {:<11} {:>11} {:>11} {:>11}",
            "ID", "TIME", "KIND", "DB SIZE", "STORED", "NEW"
        );
        for s in &list {
            let time = s
                .created
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default();
            println!(
                "{:<30} {:<24} {:<11} {:>11} {:>11} {:>11}",
                s.id,
                time,
                s.kind.unwrap_or("unreadable"),
                bytes(s.db_size),
                bytes(s.stored_bytes),
                bytes(s.new_bytes)
            );
            if let Some(e) = &s.error {
                println!("  error: {e}");
            }
        }
        Ok(())
    })
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use mailsafe::restore::Pick;
    let opts = mailsafe::restore::VerifyOptions {
        integrity_check: integrity(args.integrity_check),
        parallelism: mailsafe::restore::DEFAULT_PARALLELISM,
        key: args.replica.encryption_key()?,
    };
    runtime()?.block_on(async {
        let store = open_replica(&args.replica).await?;
        let what = &args.replica.replica;
        if !args.all {
            let pick = Pick::from_flags(args.snapshot.as_deref(), None)?;
            let report = mailsafe::restore::verify(&*store, &pick, &opts)
                .await
                .with_context(|| format!("verify of {what} failed"))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "ok {} ({} objects, {} downloaded, image {})",
                    report.snapshot,
                    report.stats.objects,
                    indicatif::HumanBytes(report.stats.bytes),
                    indicatif::HumanBytes(report.stats.db_size)
                );
            }
            return Ok(());
        }
        let results = mailsafe::restore::verify_all(&*store, &opts)
            .await
            .with_context(|| format!("verify of {what} failed"))?;
        let failed: Vec<&str> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(id, _)| id.as_str())
            .collect();
        if args.json {
            let rows: Vec<serde_json::Value> = results
                .iter()
                .map(|(id, r)| match r {
                    Ok(rep) => serde_json::json!({"snapshot": id, "ok": true, "report": rep}),
                    Err(e) => {
                        serde_json::json!({"snapshot": id, "ok": false, "error": e.to_string()})
                    }
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            for (id, r) in &results {
                match r {
                    Ok(rep) => println!(
                        "ok     {id} (image {})",
                        indicatif::HumanBytes(rep.stats.db_size)
                    ),
                    Err(e) => println!("FAILED {id}: {e}"),
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(mailsafe::Error::Verification(format!(
                "{} of {} snapshots in {what} failed: {}",
                failed.len(),
                results.len(),
                failed.join(", ")
            ))
            .into())
        }
    })
}

/// Resolves once SIGTERM or SIGINT arrives. The handlers are installed
/// here, before anything starts, so an early signal is not fatal.
fn termination_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name} received; shutting down");
    })
}

/// Opens the replica's store.
async fn open_store(replica: &ReplicaArgs) -> anyhow::Result<mailsafe::store::DynStore> {
    use anyhow::Context;
    mailsafe::store::open(&replica.replica, replica.endpoint.as_deref())
        .await
        .with_context(|| format!("cannot open replica {}", replica.replica))
}

fn retention_policy(r: &RetentionArgs) -> mailsafe::retention::Policy {
    mailsafe::retention::Policy {
        keep_within: r.keep_within,
        keep_last: r.keep_last,
        keep_hourly: r.keep_hourly,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
    }
}

fn watch(args: WatchArgs) -> anyhow::Result<()> {
    use mailsafe::watch::{self, WatchConfig, metrics};
    run_until_shutdown(async move {
        let signal = termination_signal()?;
        let m = metrics::Metrics::new();
        let shutdown = shutdown_deadline(
            signal,
            args.shutdown_timeout,
            "taking the final snapshot",
            replica_undone(m.clone()),
        );
        let store = metrics::MeteredStore::wrap(open_store(&args.replica).await?, m.clone());
        if let Some(listen) = &args.listen {
            watch::serve_http(listen, m.clone(), args.health_max_lag).await?;
        }
        let mut config = WatchConfig::new(&args.db);
        config.encryption = args.replica.encryption_key()?;
        config.debounce = args.debounce;
        config.max_delay = args.max_delay;
        config.lease_ttl = args.lease_ttl;
        config.retention = (!args.retention_interval.is_zero()).then(|| {
            let policy = retention_policy(&args.retention);
            mailsafe::watch::Retention {
                policy: if policy.is_empty() {
                    mailsafe::retention::Policy::default_thinning()
                } else {
                    policy
                },
                gc_grace: args.retention.gc_grace,
                interval: args.retention_interval,
            }
        });
        config.unsafe_no_conditional_writes = args.writer.unsafe_no_conditional_writes;
        if let Some(p) = args.poll_interval {
            config.poll_interval = p;
            config.force_poll = true;
        }
        watch::run(config, store, m, shutdown).await?;
        anyhow::Ok(())
    })?
}

fn cron(args: CronArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use mailsafe::cron::{self, RoundConfig, Schedule};
    let schedule = args.schedule.as_deref().map(Schedule::parse).transpose()?;
    let config = RoundConfig {
        policy: retention_policy(&args.retention),
        gc_grace: args.retention.gc_grace,
        lease_ttl: std::time::Duration::from_secs(120),
        encryption: args.replica.encryption_key()?,
        unsafe_no_conditional_writes: args.writer.unsafe_no_conditional_writes,
    };
    run_until_shutdown(async move {
        let signal = termination_signal()?;
        let store = open_store(&args.replica).await?;
        let progress = cron::Progress::new(&args.db, &store);
        let p = progress.clone();
        let undone: Undone = Box::new(move || {
            p.unfinished()
                .unwrap_or_else(|| "no cron round was in progress".into())
        });
        let shutdown = shutdown_deadline(
            signal,
            args.shutdown_timeout,
            "finishing the cron round",
            undone,
        );
        match schedule {
            Some(s) => cron::scheduled(&args.db, store, &s, &config, &progress, shutdown).await?,
            None => {
                if !args.db.exists() {
                    return Err(anyhow::anyhow!(
                        "database {} does not exist; nothing to back up",
                        args.db.display()
                    ));
                }
                cron::once(&args.db, store, &config, &progress, shutdown)
                    .await
                    .with_context(|| format!("cron round for {}", args.db.display()))?;
            }
        }
        Ok(())
    })?
}

fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let policy = retention_policy(&args.retention);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let store = open_store(&args.replica).await?;
        let key = args.replica.encryption_key()?;
        if policy.is_empty() {
            tracing::warn!("no --keep-* rule given: every snapshot is kept; only unreferenced objects are collected");
        }
        anyhow::Ok(
            mailsafe::retention::prune(
                store.as_ref(),
                &policy,
                args.retention.gc_grace,
                args.dry_run,
                key.as_deref(),
            )
            .await?,
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verb = if report.dry_run {
        "would forget"
    } else {
        "forgot"
    };
    for d in &report.snapshots {
        let what = if d.keep {
            format!("keep    ({})", d.reasons.join(", "))
        } else if report.kept_as_base.contains(&d.id) {
            "keep    (base of a kept snapshot)".to_string()
        } else {
            "forget".to_string()
        };
        println!(
            "{}  {}  {what}",
            d.id,
            d.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    println!(
        "{verb} {} snapshot(s); {} {} unreferenced object(s), {} bytes; {} unreferenced object(s) younger than the grace period kept",
        report.forgotten.len(),
        if report.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        report.deleted_objects.len(),
        report.deleted_bytes,
        report.young_unreferenced
    );
    Ok(())
}

/// Maps an error to the documented exit code (README, "Exit codes"): usage
/// errors exit 2 through clap before we get here.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| {
            if let Some(e) = e.downcast_ref::<mailsafe::Error>() {
                return Some(e.exit_code());
            }
            // A store error reached us without being wrapped: a malformed
            // replica URL is a usage error like any other bad flag value.
            e.downcast_ref::<mailsafe::store::StoreError>()
                .map(|e| e.exit_code())
                .filter(|c| *c != 1)
        })
        .unwrap_or(1)
}
