//! Dispatch: runs each subcommand from its parsed flags ([`args`]), prints
//! through [`render`], and maps the outcome to an exit code. The long-lived
//! modes stop through `crate::shutdown`; `serve` itself is `crate::serve`.
//!
//! This is binary code: it may use `anyhow` and add `.context()`; the library
//! modules it calls return typed errors (see `mailsafe::Error`).

pub mod args;
mod config;
mod discover;
pub mod mailtools;
mod render;
mod watch;

use anyhow::Context;

use crate::shutdown::{
    Undone, cron_undone, replica_undone, run_until_shutdown, runtime, serve_runtime,
    shutdown_deadline, shutdown_margin, termination_signal,
};
use args::{
    Args, Command, CronArgs, LogFormat, PruneArgs, ReplicaArgs, RestoreArgs, RetentionArgs,
    ServeArgs, SnapshotArgs, SnapshotsArgs, VerifyArgs,
};

/// Runs the parsed command.
pub fn run(args: Args) -> anyhow::Result<()> {
    // `serve` takes Mailpit's -q/-v/--log-file; every other command logs
    // at INFO to stderr.
    let logging = match &args.command {
        Command::Serve(a) => a.catcher.logging(),
        _ => mailsafe_catcher::options::Logging::default(),
    };
    init_logging(args.log_format, &logging)?;
    match args.command {
        Command::Serve(a) => serve(*a),
        Command::Snapshot(a) => snapshot(a),
        Command::Restore(a) => restore(a),
        Command::Snapshots(a) => snapshots(a),
        Command::Verify(a) => verify(a),
        Command::Watch(a) => watch::run(a),
        Command::Cron(a) => cron(a),
        Command::Prune(a) => prune(a),
        Command::Sendmail { args } => mailtools::sendmail(&args),
        Command::Ingest(a) => mailtools::ingest(a),
        Command::Dump(a) => mailtools::dump(a),
    }
}

/// `serve`: the flags and the process's shutdown around [`crate::serve::run`].
/// With a replica, the catcher's drain may use half the shutdown timeout and
/// the final snapshot what is left; without, the drain ends just before the
/// watchdog.
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use mailsafe::watch::metrics::{MeteredStore, Metrics, Registry};
    let mut config = args.catcher.into_config()?;
    if config.disable_wal && args.replica.is_some() {
        // The backup reads the pages a commit changed from the WAL.
        anyhow::bail!(
            "MP_DISABLE_WAL (--disable-wal) cannot be used with --replica: \
             the backup follows the database's WAL"
        );
    }
    let timeout = args.shutdown_timeout;
    run_until_shutdown(serve_runtime()?, async move {
        // Installed before anything starts, so an early SIGTERM is not fatal.
        let signal = termination_signal()?;
        let Some(r) = args.replica else {
            config.shutdown_timeout = timeout - shutdown_margin(timeout);
            let undone = "every message answered 250 had been committed to the database";
            let undone: Undone = Box::new(|| undone.to_string());
            let phase = "draining SMTP sessions and HTTP connections";
            let shutdown = shutdown_deadline(signal, timeout, phase, undone);
            return crate::serve::run(config, None, shutdown).await;
        };
        let metrics = Metrics::new();
        let registry = Registry::single(metrics.clone());
        serve_monitor(&args.monitor, registry, Beats::AlsoIdle).await?;
        let shutdown = shutdown_deadline(
            signal,
            timeout,
            "draining SMTP sessions",
            replica_undone(metrics.clone()),
        );
        config.shutdown_timeout = timeout / 2;
        let replica = crate::serve::Replica {
            store: MeteredStore::wrap(open_replica(&r).await?, metrics.clone()),
            metrics,
            key: r.encryption_key()?,
            unsafe_no_conditional_writes: args.writer.unsafe_no_conditional_writes,
            url: r.url().to_string(),
        };
        crate::serve::run(config, Some(replica), shutdown).await
    })?
}

/// Which heartbeats [`serve_monitor`] sends itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Beats {
    /// None: the caller pings with the returned sender (`cron --once`,
    /// before it exits; `watch`, whose loops come and go).
    Caller,
    /// After each successful snapshot of each loop (`cron --schedule`).
    AfterSnapshots,
    /// Those, and every `--heartbeat-interval` while a loop is current
    /// (`serve --replica`, whose loop sees every change).
    AlsoIdle,
}

/// `/metrics` and `/healthz` of `registry` on `--listen` (in the
/// background) and the heartbeat: the one way every backing-up mode
/// (`watch`, `cron`, `serve --replica`) is observed. Unless `beats` is
/// [`Beats::Caller`], each loop of `registry` pings in the background (one
/// sender per loop, counted in its own metrics).
async fn serve_monitor(
    monitor: &args::MonitorArgs,
    registry: mailsafe::watch::metrics::Registry,
    beats: Beats,
) -> anyhow::Result<Option<std::sync::Arc<crate::heartbeat::Heartbeat>>> {
    if let Some(listen) = &monitor.listen {
        mailsafe::watch::serve_http(listen, registry.clone(), monitor.health_max_lag).await?;
    }
    let heartbeat = match &monitor.heartbeat_url {
        Some(url) => {
            tracing::info!(heartbeat = %url, "heartbeat after each successful snapshot");
            Some(crate::heartbeat::Heartbeat::new(
                url.clone(),
                monitor.heartbeat_timeout,
                Some(monitor.heartbeat_interval),
            )?)
        }
        None => None,
    };
    if let (Some(h), false) = (&heartbeat, beats == Beats::Caller) {
        for (_, m) in registry.loops() {
            h.spawn(m, beats == Beats::AlsoIdle);
        }
    }
    Ok(heartbeat)
}

/// Logs go to stderr so that `--json` output on stdout stays parseable, or
/// to `serve`'s `MP_LOG_FILE` (appended; an error names a file that cannot
/// be opened). `MAILSAFE_LOG`, when set, wins over `logging.level`.
fn init_logging(
    format: LogFormat,
    logging: &mailsafe_catcher::options::Logging,
) -> anyhow::Result<()> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let level = logging.level.as_str().to_ascii_lowercase();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILSAFE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            // The AWS SDK logs every retried connection at INFO; our own
            // retry loops already report each state change once.
            "{level},aws_smithy_runtime=warn,aws_smithy_runtime_api=warn,aws_config=warn,hyper_util=warn"
        ))
    });
    let writer = match &logging.file {
        None => BoxMakeWriter::new(std::io::stderr),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| {
                    format!("MP_LOG_FILE {}: cannot open for appending", path.display())
                })?;
            BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
    };
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
        .with_writer(writer);
    // No colour codes in a file (stderr keeps tracing's default).
    let builder = if logging.file.is_some() {
        builder.with_ansi(false)
    } else {
        builder
    };
    match format {
        LogFormat::Text => builder.finish().with(no_foreign_trace).init(),
        LogFormat::Json => builder.json().finish().with(no_foreign_trace).init(),
    }
    Ok(())
}

fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let key = args.replica.encryption_key()?;
    let report = runtime()?.block_on(async {
        let store = open_replica(&args.replica).await?;
        let mut snapshotter = mailsafe::snapshot::Snapshotter::new(&args.db, store).with_key(key);
        snapshotter
            .snapshot()
            .await
            .with_context(|| format!("snapshot of {} failed", args.db.display()))
    })?;
    render::snapshot(&report, args.json)
}

/// Opens the replica of every command. Its errors keep their exit code
/// (a malformed URL is a usage error, 2) through [`exit_code`].
async fn open_replica(r: &ReplicaArgs) -> anyhow::Result<mailsafe::store::DynStore> {
    mailsafe::store::open_with(r.url(), r.s3_options()?)
        .await
        .map_err(mailsafe::Error::from)
        .with_context(|| format!("cannot open replica {}", r.url()))
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    use mailsafe::restore::Pick;
    // Before any runtime (the --config path starts one to pick a replica).
    mailsafe::restore::tune_malloc_for_restore();
    let pick = Pick::from_flags(args.snapshot.as_deref(), args.at.as_deref())?;
    let target = args.output.clone().unwrap_or_else(|| args.db.clone());
    let Some(file) = &args.config else {
        return restore_from(&args, &args.replica, pick, target);
    };
    // The config file's replicas of `--db`: the named one, else the first
    // that has the snapshot asked for (the newest: the first with the
    // newest of all).
    let plan = config::load(
        file,
        &args::WatchDbArgs::defaults()?,
        &args.replica.defaults(),
    )?;
    let db = plan.db(&args.db, file)?;
    let replica = match &args.replica.replica {
        Some(name) => db
            .replicas
            .iter()
            .find(|r| r.name == *name)
            .ok_or_else(|| {
                let names: Vec<&str> = db.replicas.iter().map(|r| r.name.as_str()).collect();
                mailsafe::Error::Usage(format!(
                    "config file {}: {} has no replica named {name} (it has {})",
                    file.display(),
                    args.db.display(),
                    names.join(", ")
                ))
            })?,
        // `--snapshot` / `--at`: the first replica, in the file's order,
        // that has that snapshot (or one at or before that time); the
        // newest replica may not (a second replica added later, or one
        // that was down for a while).
        None if !matches!(pick, Pick::Latest) => {
            let rt = runtime()?;
            let mut found = None;
            for r in &db.replicas {
                let store = rt.block_on(open_replica(&r.args))?;
                let key = r.args.encryption_key()?;
                let has = mailsafe::restore::plan::pick_id(&*store, &pick, key.as_deref());
                match rt.block_on(has) {
                    Ok(_) => {
                        found = Some(r);
                        break;
                    }
                    Err(e) => tracing::info!(replica = %r.name, "not in this replica: {e}"),
                }
            }
            // None has it: the first says why (or exits 0 with
            // --if-replica-exists).
            found.unwrap_or(&db.replicas[0])
        }
        None => {
            let mut candidates = Vec::new();
            let rt = runtime()?;
            for r in &db.replicas {
                let store = rt.block_on(open_replica(&r.args))?;
                candidates.push((r.name.clone(), store, r.args.encryption_key()?));
            }
            match rt.block_on(newest_replica(&candidates))? {
                Some(i) => &db.replicas[i],
                // Each is empty: the first says so (or exits 0 with
                // --if-replica-exists).
                None => &db.replicas[0],
            }
        }
    };
    tracing::info!(replica = %replica.name, "restoring from the config file's replica");
    restore_from(&args, &replica.args, pick, target)
}

/// Restores `args.db`'s snapshot `pick` from `replica` to `target` (or
/// follows it with `--follow`).
fn restore_from(
    args: &RestoreArgs,
    replica: &ReplicaArgs,
    pick: mailsafe::restore::Pick,
    target: std::path::PathBuf,
) -> anyhow::Result<()> {
    use mailsafe::restore::RestoreOptions;
    let opts = RestoreOptions {
        pick,
        target: target.clone(),
        if_db_not_exists: args.if_db_not_exists,
        if_replica_exists: args.if_replica_exists,
        force: args.force,
        integrity_check: args.integrity_check,
        parallelism: args.parallelism.max(1),
        progress: if args.dry_run {
            mailsafe::progress::none()
        } else {
            render::download_bar()
        },
        key: replica.encryption_key()?,
        dry_run: args.dry_run,
    };
    if args.follow {
        return follow(args, replica, opts);
    }
    runtime()?.block_on(async {
        let store = open_replica(replica).await?;
        let outcome = mailsafe::restore::restore(&*store, &opts)
            .await
            .with_context(|| {
                format!(
                    "restore from {} to {} failed",
                    replica.url(),
                    target.display()
                )
            })?;
        render::restored(&outcome, args.json)
    })
}

/// `restore --follow`: restores each new snapshot until SIGTERM/SIGINT.
fn follow(
    args: &RestoreArgs,
    replica: &ReplicaArgs,
    restore: mailsafe::restore::RestoreOptions,
) -> anyhow::Result<()> {
    use mailsafe::restore::follow::{FollowOptions, follow};
    let opts = FollowOptions {
        restore: mailsafe::restore::RestoreOptions {
            // A daemon's log, not a terminal's bar.
            progress: mailsafe::progress::none(),
            ..restore
        },
        interval: args.follow_interval,
    };
    run_until_shutdown(runtime()?, async move {
        let signal = termination_signal()?;
        let store = open_replica(replica).await?;
        follow(&*store, &opts, |_| {}, signal)
            .await
            .with_context(|| {
                format!(
                    "following {} into {} failed",
                    replica.url(),
                    opts.restore.target.display()
                )
            })?;
        Ok(())
    })?
}

/// Of `candidates` (name, store, key), the index of the first that has the
/// newest snapshot, read concurrently; `None` when every one is empty. A
/// replica that cannot be read is skipped with a warning while another
/// answers (one dead store must not stop a restore from the others); if
/// none answers, the first error is returned.
pub(crate) async fn newest_replica(
    candidates: &[(
        String,
        mailsafe::store::DynStore,
        Option<std::sync::Arc<mailsafe::crypto::Key>>,
    )],
) -> anyhow::Result<Option<usize>> {
    // Read together, in this task (the engine's future is not provably
    // `Send` for every lifetime, so it is not spawned).
    let reads = candidates.iter().map(|(_, store, key)| async move {
        mailsafe::history::newest_unfenced(&**store, key.as_deref())
            .await
            .map(|m| m.map(|m| m.id))
    });
    let mut ids: Vec<Option<String>> = vec![None; candidates.len()];
    let mut errors = Vec::new();
    for (i, read) in futures::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        match read {
            Ok(id) => ids[i] = id,
            Err(e) => {
                tracing::warn!(replica = %candidates[i].0, "cannot read the replica's newest snapshot: {e}");
                errors.push((i, e));
            }
        }
    }
    if errors.len() == candidates.len() {
        if let Some((i, e)) = errors.into_iter().next() {
            return Err(anyhow::Error::new(e).context(format!(
                "no replica could be read (replica {})",
                candidates[i].0
            )));
        }
    }
    let newest = ids.iter().flatten().max();
    Ok(newest.and_then(|n| ids.iter().position(|id| id.as_ref() == Some(n))))
}

fn snapshots(args: SnapshotsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = open_replica(&args.replica).await?;
        let key = args.replica.encryption_key()?;
        let list = mailsafe::restore::list_snapshots(&*store, 16, key.as_deref())
            .await
            .with_context(|| format!("cannot list snapshots of {}", args.replica.url()))?;
        render::snapshots(&list, args.json)
    })
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use mailsafe::restore::Pick;
    let opts = mailsafe::restore::VerifyOptions {
        integrity_check: args.integrity_check,
        parallelism: mailsafe::restore::DEFAULT_PARALLELISM,
        key: args.replica.encryption_key()?,
    };
    runtime()?.block_on(async {
        let store = open_replica(&args.replica).await?;
        let what = &args.replica.url();
        if !args.all {
            let pick = Pick::from_flags(args.snapshot.as_deref(), None)?;
            let report = mailsafe::restore::verify(&*store, &pick, &opts)
                .await
                .with_context(|| format!("verify of {what} failed"))?;
            return render::verified(&report, args.json);
        }
        let results = mailsafe::restore::verify_all(&*store, &opts)
            .await
            .with_context(|| format!("verify of {what} failed"))?;
        render::verified_all(&results, args.json)?;
        let failed: Vec<&str> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(id, _)| id.as_str())
            .collect();
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

fn retention_policy(r: &RetentionArgs) -> mailsafe::retention::Policy {
    mailsafe::retention::Policy {
        keep_within: r.keep_within,
        keep_last: r.keep_last,
        keep_hourly: r.keep_hourly,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
    }
}

fn cron(args: CronArgs) -> anyhow::Result<()> {
    use mailsafe::cron::{self, RoundConfig, Schedule};
    let schedule = args.schedule.as_deref().map(Schedule::parse).transpose()?;
    use mailsafe::watch::metrics::{MeteredStore, Metrics, Registry};
    let metrics = Metrics::new();
    let config = RoundConfig {
        policy: retention_policy(&args.retention),
        gc_grace: args.retention.gc_grace,
        lease_ttl: std::time::Duration::from_secs(120),
        encryption: args.replica.encryption_key()?,
        unsafe_no_conditional_writes: args.writer.unsafe_no_conditional_writes,
        metrics: metrics.clone(),
    };
    run_until_shutdown(runtime()?, async move {
        let signal = termination_signal()?;
        let store = MeteredStore::wrap(open_replica(&args.replica).await?, metrics.clone());
        // `--once` pings itself before it exits; a scheduled run pings in
        // the background like `watch`.
        let registry = Registry::single(metrics.clone());
        let beats = match schedule {
            Some(_) => Beats::AfterSnapshots,
            None => Beats::Caller,
        };
        let heartbeat = serve_monitor(&args.monitor, registry, beats).await?;
        let progress = cron::Progress::new(&args.db, &store);
        let shutdown = shutdown_deadline(
            signal,
            args.shutdown_timeout,
            "finishing the cron round",
            cron_undone(progress.clone()),
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
                let round = cron::once(&args.db, store, &config, &progress, shutdown)
                    .await
                    .with_context(|| format!("cron round for {}", args.db.display()))?;
                if let Some(h) = heartbeat {
                    h.beat(&metrics).await;
                }
                if args.json {
                    println!("{}", serde_json::to_string(&round)?);
                }
            }
        }
        Ok(())
    })?
}

fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let policy = retention_policy(&args.retention);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let store = open_replica(&args.replica).await?;
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
    render::pruned(&report, args.json)
}

/// Maps an error to the documented exit code (README, "Exit codes"): usage
/// errors exit 2 through clap before we get here; `watch --exec` exits with
/// its app's code.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| {
            if let Some(e) = e.downcast_ref::<crate::exec::AppExit>() {
                return Some(e.code);
            }
            if let Some(e) = e.downcast_ref::<mailsafe::Error>() {
                return Some(e.exit_code());
            }
            // The mail tools: a bad command line is a usage error.
            if let Some(e) = e.downcast_ref::<mailsafe_catcher::mailtools::MailToolError>() {
                use mailsafe_catcher::mailtools::MailToolError as M;
                return Some(match e {
                    M::Usage(_) | M::Address(_) | M::NoRecipients => 2,
                    M::Smtp(_) => 1,
                });
            }
            // A store error reached us without being wrapped: a malformed
            // replica URL is a usage error like any other bad flag value.
            e.downcast_ref::<mailsafe::store::StoreError>()
                .map(|e| e.exit_code())
                .filter(|c| *c != 1)
        })
        .unwrap_or(1)
}
