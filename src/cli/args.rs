//! The command line: the subcommands and their flags (each also read from a
//! `MAILSAFE_*` or Mailpit `MP_*` environment variable). clap only: what the
//! flags do is in `cli` (dispatch), `serve` and the engine.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use mailsafe::restore::IntegrityCheck;

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
    /// Mailpit's sendmail: read a message on stdin and send it to the
    /// catcher over SMTP (`-S host:port`, `-f from`, `-bs` for SMTP on
    /// stdin/stdout; recipients as arguments or from the headers). Also
    /// what the binary does when called as `sendmail`.
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail's own flags and the recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Send .eml files, maildir folders or mbox files to a catcher over SMTP
    /// (Mailpit's `ingest`, which also reads mbox here).
    Ingest(IngestArgs),
    /// Write every message of a catcher database to `<ID>.eml` files
    /// (Mailpit's `dump`); read-only, safe beside a running catcher.
    Dump(DumpArgs),
}

/// `ingest`'s flags.
#[derive(Debug, ClapArgs)]
pub struct IngestArgs {
    /// Files or folders (walked; hidden files skipped) of messages.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The catcher's SMTP address.
    #[arg(
        short = 'S',
        long,
        env = "MP_SENDMAIL_SMTP_ADDR",
        default_value = "localhost:1025"
    )]
    pub smtp_addr: String,
    /// Only files modified in the last DAYS days (0: all).
    #[arg(short, long, value_name = "DAYS")]
    pub recent: Option<u64>,
}

/// `dump`'s flags.
#[derive(Debug, ClapArgs)]
pub struct DumpArgs {
    /// The catcher's database file.
    pub database: PathBuf,
    /// Folder for the `.eml` files (created if missing).
    pub output: PathBuf,
    /// The tenant whose messages to dump (Mailpit's `MP_TENANT_ID`).
    #[arg(long, env = "MP_TENANT_ID", default_value = "")]
    pub tenant_id: String,
}

/// Where the replica lives.
#[derive(Debug, Clone, ClapArgs)]
pub struct ReplicaArgs {
    /// Replica URL: `s3://bucket/prefix` or `file:///path`.
    // An `Option` only so that a config file can stand in for it (`watch
    // --config`); every command that has no file requires it.
    #[arg(long, env = "MAILSAFE_REPLICA", required = true)]
    pub replica: Option<String>,
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
    /// S3 addressing: `true` path-style (`endpoint/bucket/key`), `false`
    /// virtual-hosted (`bucket.endpoint/key`). Default: path-style with a
    /// custom endpoint, virtual-hosted on AWS.
    #[arg(long, env = "MAILSAFE_S3_PATH_STYLE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub s3_path_style: Option<bool>,
    /// Server-side encryption the S3 store applies to every object mailsafe
    /// writes: `AES256` (SSE-S3) or `aws:kms` (SSE-KMS). At rest on the
    /// store, besides (not instead of) `--encryption-key-file`.
    #[arg(long, env = "MAILSAFE_S3_SSE", value_name = "AES256|aws:kms")]
    pub s3_sse: Option<mailsafe::store::s3::Sse>,
    /// The KMS key (id or ARN) for `--s3-sse aws:kms` (which it implies);
    /// without it, the account's default key.
    #[arg(long, env = "MAILSAFE_S3_SSE_KMS_KEY_ID", value_name = "KEY")]
    pub s3_sse_kms_key_id: Option<String>,
    /// Storage class of every object written (`STANDARD_IA`, `GLACIER_IR`,
    /// ...; restores read every object, so keep to classes read directly).
    #[arg(long, env = "MAILSAFE_S3_STORAGE_CLASS", value_name = "CLASS")]
    pub s3_storage_class: Option<String>,
    /// The replica's own S3 keys (a config file's replica only; the flags
    /// use the AWS credential chain).
    #[arg(skip)]
    pub credentials: Option<S3Keys>,
}

/// An S3 access key id and secret; `Debug` never shows the secret.
#[derive(Clone)]
pub struct S3Keys {
    /// The access key id.
    pub id: String,
    /// The secret access key.
    pub secret: String,
}

impl std::fmt::Debug for S3Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Keys({}, <redacted>)", self.id)
    }
}

impl ReplicaArgs {
    /// These flags as defaults for a config file's replicas: the endpoint
    /// and key, without the URL.
    pub fn defaults(&self) -> Self {
        Self {
            replica: None,
            ..self.clone()
        }
    }

    /// The replica URL (`--replica`; empty only where a config file gives
    /// the replicas instead, which then never reads this).
    pub fn url(&self) -> &str {
        self.replica.as_deref().unwrap_or_default()
    }

    /// The S3 settings of this replica (whatever they leave unset comes
    /// from the AWS chain). A KMS key id with SSE-S3 is a usage error.
    pub fn s3_options(&self) -> Result<mailsafe::store::s3::S3Options, mailsafe::Error> {
        use mailsafe::store::s3::Sse;
        let sse = match (&self.s3_sse, &self.s3_sse_kms_key_id) {
            (Some(Sse::S3), Some(_)) => {
                return Err(mailsafe::Error::Usage(
                    "--s3-sse-kms-key-id needs --s3-sse aws:kms, not AES256".into(),
                ));
            }
            (None | Some(Sse::Kms(_)), Some(id)) => Some(Sse::Kms(Some(id.clone()))),
            (sse, None) => sse.clone(),
        };
        Ok(mailsafe::store::s3::S3Options {
            endpoint: self.endpoint.clone(),
            credentials: self.credentials.clone().map(|k| (k.id, k.secret)),
            path_style: self.s3_path_style,
            sse,
            storage_class: self.s3_storage_class.clone(),
            ..Default::default()
        })
    }

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

/// Observability of the commands that back up (`watch`, `cron`, `serve
/// --replica`): the same `/metrics` and `/healthz` and the same heartbeat in
/// each. (`serve` calls `--listen` `--metrics-listen`: the catcher's
/// `--listen` is its web UI.)
// `Default` only for a config file's part (listen, heartbeat URL), which
// the flags then complete.
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct MonitorArgs {
    /// Serve `/metrics` and `/healthz` on this address.
    #[arg(id = "metrics_listen", long = "listen", env = "MAILSAFE_LISTEN")]
    pub listen: Option<String>,
    /// `/healthz` fails when a change has waited longer than this.
    #[arg(long, env = "MAILSAFE_HEALTH_MAX_LAG", default_value = "60s", value_parser = humantime::parse_duration)]
    pub health_max_lag: std::time::Duration,
    /// URL requested (GET) after each successful snapshot, for a dead man's
    /// switch (healthchecks.io, Uptime Kuma push, Better Stack). It never
    /// delays a snapshot; failures are logged (by host only: the path and
    /// query often hold the check's token) and counted in
    /// `mailsafe_heartbeats_total{result="failed"}`.
    #[arg(long, env = "MAILSAFE_HEARTBEAT_URL", value_name = "URL", value_parser = crate::heartbeat::ParseHeartbeatUrl)]
    pub heartbeat_url: Option<crate::heartbeat::HeartbeatUrl>,
    /// How long one heartbeat request may take before it counts as failed.
    #[arg(long, env = "MAILSAFE_HEARTBEAT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: std::time::Duration,
    /// `watch` and `serve --replica`: also send the heartbeat this long
    /// after the last one while the db is idle and its replica current
    /// (nothing waiting, last attempt good), so an idle db does not look
    /// dead; a failing or lagging loop stays silent. 0 turns it off.
    #[arg(long, env = "MAILSAFE_HEARTBEAT_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: std::time::Duration,
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
// `--replica` is required in `ReplicaArgs`; here the whole group is
// optional, and clap still requires it once any replica flag is given.
#[command(
    mut_arg("replica", |a| a.required(false)),
    mut_arg("metrics_listen", |a| a.long("metrics-listen").requires("replica")),
    mut_arg("heartbeat_url", |a| a.requires("replica")),
)]
pub struct ServeArgs {
    /// The catcher's own options (`MP_*` and `MAILSAFE_*`).
    #[command(flatten)]
    pub catcher: mailsafe_catcher::options::Options,
    /// The replica: when set, restore on start if the db is missing, and
    /// back up continuously while running.
    #[command(flatten)]
    pub replica: Option<ReplicaArgs>,
    /// How long shutdown may take after SIGTERM, SMTP drain and final
    /// snapshot included. Past it the process exits 1 anyway, saying what is
    /// not in the replica.
    #[arg(long, env = "MAILSAFE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    #[command(flatten)]
    pub writer: WriterArgs,
    /// With `--replica`: the backup's `/metrics` and `/healthz` (on
    /// `--metrics-listen`) and heartbeat, as `watch` has them.
    #[command(flatten)]
    pub monitor: MonitorArgs,
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

/// `mailsafe restore`.
#[derive(Debug, ClapArgs)]
// With `--config`, `--replica` is optional and names one of the db's
// replicas.
#[command(mut_arg("replica", |a| a.required(false).required_unless_present("config")))]
pub struct RestoreArgs {
    /// The database path the backup belongs to; also the restore target
    /// unless `--output` is given.
    #[arg(long, env = "MAILSAFE_DB")]
    pub db: PathBuf,
    #[command(flatten)]
    pub replica: ReplicaArgs,
    /// The `watch` config file: restore `--db` from its replicas, the one
    /// `--replica NAME` names or else the first that has the newest
    /// snapshot.
    #[arg(long, env = "MAILSAFE_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// Say which snapshot would be restored, from how many objects and
    /// bytes, to which path (and whether it would replace a database), then
    /// stop: nothing is downloaded or written.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result (or, with `--dry-run`, the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Keep running and install each new snapshot as it appears (a
    /// read-only copy: verified, swapped in atomically, so readers that open
    /// the file see whole snapshots). Stops on SIGTERM/SIGINT with exit 0.
    #[arg(long, conflicts_with_all = ["snapshot", "at", "dry_run", "if_db_not_exists", "json"])]
    pub follow: bool,
    /// How often `--follow` asks the replica for a newer snapshot.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, requires = "follow")]
    pub follow_interval: std::time::Duration,
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
// `--replica` may come from a config file instead (with --config it is
// refused: the file names the replicas).
#[command(mut_arg("replica", |a| a
    .required(false)
    .required_unless_present("config")
    .conflicts_with("config")))]
pub struct WatchArgs {
    /// YAML file listing the databases to watch, each with its replicas and
    /// settings (README, "Config file"); the flags below are the defaults
    /// of its entries.
    #[arg(long, env = "MAILSAFE_CONFIG", conflicts_with = "db")]
    pub config: Option<PathBuf>,
    /// The SQLite database to watch (it may not exist yet).
    #[arg(long, env = "MAILSAFE_DB", required_unless_present = "config")]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub replica: ReplicaArgs,
    #[command(flatten)]
    pub monitor: MonitorArgs,
    /// How long shutdown may take after SIGTERM, final snapshot and lease
    /// release included. Past it the process exits 1 anyway, saying what is
    /// not in the replica.
    #[arg(long, env = "MAILSAFE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    #[command(flatten)]
    pub settings: WatchDbArgs,
    /// Run this app as a child (split like a shell word list, no shell):
    /// SIGTERM/SIGINT are passed on to it, the final snapshot is taken
    /// after it exits, and mailsafe exits with its code. The shutdown
    /// timeout counts from the app's exit.
    #[arg(long, env = "MAILSAFE_EXEC", value_name = "COMMAND")]
    pub exec: Option<String>,
    /// Before watching (and before `--exec` starts the app), restore the
    /// newest snapshot if the database does not exist; an empty replica is
    /// not an error (as `restore --if-db-not-exists --if-replica-exists`).
    #[arg(long, env = "MAILSAFE_RESTORE_IF_DB_NOT_EXISTS")]
    pub restore_if_db_not_exists: bool,
    /// Read the config file (or the flags), print each database and its
    /// replicas, and exit: nothing is contacted or started.
    #[arg(long)]
    pub check_config: bool,
}

/// `watch`'s settings of each database (a config file's entries may set
/// their own).
#[derive(Debug, Clone, ClapArgs)]
pub struct WatchDbArgs {
    /// Quiet time after the last change before a snapshot is taken.
    #[arg(long, env = "MAILSAFE_DEBOUNCE", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub debounce: std::time::Duration,
    /// Longest delay between a change and its snapshot, however busy the db.
    /// (750 ms leaves room for the upload itself within a one-second RPO.)
    #[arg(long, env = "MAILSAFE_MAX_DELAY", default_value = "750ms", value_parser = humantime::parse_duration)]
    pub max_delay: std::time::Duration,
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

impl WatchDbArgs {
    /// The documented defaults (and `MAILSAFE_*` values) of these flags, for
    /// commands that read a config file without taking them (`restore`).
    pub fn defaults() -> anyhow::Result<Self> {
        use clap::{Args as _, FromArgMatches as _};
        let cmd = Self::augment_args(clap::Command::new("mailsafe"));
        Ok(Self::from_arg_matches(
            &cmd.try_get_matches_from(["mailsafe"])?,
        )?)
    }
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
    /// With `--once`: print what the round did as JSON on stdout.
    #[arg(long, requires = "once")]
    pub json: bool,
    /// How long shutdown may take after SIGTERM: a round in flight may
    /// finish its snapshot (retention waits for the next round). Past it the
    /// process exits 1 anyway, saying what was not done.
    #[arg(long, env = "MAILSAFE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub writer: WriterArgs,
    #[command(flatten)]
    pub monitor: MonitorArgs,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn serve(argv: &[&str]) -> ServeArgs {
        let args = Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        match args.command {
            Command::Serve(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    /// `serve`'s replica flags are `ReplicaArgs` itself: absent, no replica;
    /// given, the same fields `restore` and `watch` read.
    #[test]
    fn serve_flattens_the_replica_flags() {
        assert!(serve(&["mailsafe", "serve"]).replica.is_none());
        let r = serve(&[
            "mailsafe",
            "serve",
            "--replica",
            "file:///tmp/r",
            "--endpoint",
            "http://127.0.0.1:1",
        ])
        .replica
        .expect("a replica");
        assert_eq!(r.url(), "file:///tmp/r");
        assert_eq!(r.endpoint.as_deref(), Some("http://127.0.0.1:1"));
    }

    /// `--integrity-check` takes the engine's own enum.
    #[test]
    fn integrity_check_values_are_the_engines() {
        let args = Args::try_parse_from([
            "mailsafe",
            "verify",
            "--replica",
            "file:///tmp/r",
            "--integrity-check",
            "full",
        ])
        .unwrap();
        let Command::Verify(v) = args.command else {
            panic!("not verify")
        };
        assert_eq!(v.integrity_check, IntegrityCheck::Full);
    }
}
