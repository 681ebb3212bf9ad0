//! Dispatch: runs each subcommand from its parsed flags ([`args`]), prints
//! through [`render`], and maps the outcome to an exit code. The long-lived
//! modes stop through `crate::shutdown`; `serve` itself is `crate::serve`.
//!
//! This is binary code: it may use `anyhow` and add `.context()`; the library
//! modules it calls return typed errors (see `mailsafe::Error`).

pub mod args;
mod render;

use anyhow::Context;

use crate::shutdown::{
    Undone, cron_undone, replica_undone, run_until_shutdown, runtime, shutdown_deadline,
    shutdown_margin, termination_signal,
};
use args::{
    Args, Command, CronArgs, LogFormat, PruneArgs, ReplicaArgs, RestoreArgs, RetentionArgs,
    ServeArgs, SnapshotArgs, SnapshotsArgs, VerifyArgs, WatchArgs,
};

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

/// `serve`: the flags and the process's shutdown around [`crate::serve::run`].
/// With a replica, the catcher's drain may use half the shutdown timeout and
/// the final snapshot what is left; without, the drain ends just before the
/// watchdog.
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use mailsafe::watch::metrics::{MeteredStore, Metrics};
    let mut config = args.catcher.into_config()?;
    let timeout = args.shutdown_timeout;
    run_until_shutdown(async move {
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
            url: r.replica,
        };
        crate::serve::run(config, Some(replica), shutdown).await
    })?
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
    mailsafe::store::open(&r.replica, r.endpoint.as_deref())
        .await
        .map_err(mailsafe::Error::from)
        .with_context(|| format!("cannot open replica {}", r.replica))
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    use mailsafe::restore::{Pick, RestoreOptions};
    let pick = Pick::from_flags(args.snapshot.as_deref(), args.at.as_deref())?;
    let target = args.output.clone().unwrap_or_else(|| args.db.clone());
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
        key: args.replica.encryption_key()?,
        dry_run: args.dry_run,
    };
    if args.follow {
        return follow(&args, opts);
    }
    runtime()?.block_on(async {
        let store = open_replica(&args.replica).await?;
        let outcome = mailsafe::restore::restore(&*store, &opts)
            .await
            .with_context(|| {
                format!(
                    "restore from {} to {} failed",
                    args.replica.replica,
                    target.display()
                )
            })?;
        render::restored(&outcome, args.json)
    })
}

/// `restore --follow`: restores each new snapshot until SIGTERM/SIGINT.
fn follow(args: &RestoreArgs, restore: mailsafe::restore::RestoreOptions) -> anyhow::Result<()> {
    use mailsafe::restore::follow::{FollowOptions, follow};
    let opts = FollowOptions {
        restore: mailsafe::restore::RestoreOptions {
            // A daemon's log, not a terminal's bar.
            progress: mailsafe::progress::none(),
            ..restore
        },
        interval: args.follow_interval,
    };
    run_until_shutdown(async move {
        let signal = termination_signal()?;
        let store = open_replica(&args.replica).await?;
        follow(&*store, &opts, |_| {}, signal)
            .await
            .with_context(|| {
                format!(
                    "following {} into {} failed",
                    args.replica.replica,
                    opts.restore.target.display()
                )
            })?;
        Ok(())
    })?
}

fn snapshots(args: SnapshotsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = open_replica(&args.replica).await?;
        let key = args.replica.encryption_key()?;
        let list = mailsafe::restore::list_snapshots(&*store, 16, key.as_deref())
            .await
            .with_context(|| format!("cannot list snapshots of {}", args.replica.replica))?;
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
        let what = &args.replica.replica;
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

/// The watch loop's settings from `watch`'s flags.
fn watch_config(args: &WatchArgs) -> anyhow::Result<mailsafe::watch::WatchConfig> {
    let mut config = mailsafe::watch::WatchConfig::new(&args.db);
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
    Ok(config)
}

/// `watch`: the sidecar, or with `--exec` the app's parent ([`watch_exec`]).
fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let config = watch_config(&args)?;
    if let Some(command) = &args.exec {
        // A bad command line is a usage error before anything starts.
        crate::exec::split(command)?;
    }
    run_until_shutdown(async move {
        match args.exec.clone() {
            Some(command) => watch_exec(args, config, &command).await,
            None => watch_alone(args, config).await,
        }
    })?
}

/// The replica `watch` writes, metered into `m`, with `/metrics` served
/// when asked.
async fn watch_store(
    args: &WatchArgs,
    m: &std::sync::Arc<mailsafe::watch::metrics::Metrics>,
) -> anyhow::Result<mailsafe::store::DynStore> {
    use mailsafe::watch::{self, metrics};
    let store = metrics::MeteredStore::wrap(open_replica(&args.replica).await?, m.clone());
    if let Some(listen) = &args.listen {
        watch::serve_http(listen, m.clone(), args.health_max_lag).await?;
    }
    Ok(store)
}

/// `watch` without `--exec`: until SIGTERM/SIGINT.
async fn watch_alone(
    args: WatchArgs,
    config: mailsafe::watch::WatchConfig,
) -> anyhow::Result<()> {
    use mailsafe::watch::{self, metrics};
    let signal = termination_signal()?;
    let m = metrics::Metrics::new();
    let shutdown = shutdown_deadline(
        signal,
        args.shutdown_timeout,
        "taking the final snapshot",
        replica_undone(m.clone()),
    );
    tokio::pin!(shutdown);
    let store = watch_store(&args, &m).await?;
    if args.restore_if_db_not_exists {
        let key = config.encryption.clone();
        tokio::select! {
            r = crate::serve::restore_on_start(&store, &args.db, key, &args.replica.replica) => r?,
            _ = &mut shutdown => {
                tracing::info!("stopped during the restore on start");
                return Ok(());
            }
        }
    }
    watch::run(config, store, m, shutdown).await?;
    Ok(())
}

/// `watch --exec`: restore if asked, start the app, pass SIGTERM/SIGINT on
/// to it, and once it exits take the final snapshot (the shutdown timeout
/// counts from there) and exit with its code. If the watch loop fails first
/// (its lease was taken over, its store refused), the app is stopped and
/// mailsafe exits with the loop's error.
async fn watch_exec(
    args: WatchArgs,
    config: mailsafe::watch::WatchConfig,
    command: &str,
) -> anyhow::Result<()> {
    use mailsafe::watch::{self, metrics};
    let mut signals = crate::exec::Forward::install()?;
    let m = metrics::Metrics::new();
    let store = watch_store(&args, &m).await?;
    if args.restore_if_db_not_exists {
        let key = config.encryption.clone();
        tokio::select! {
            r = crate::serve::restore_on_start(&store, &args.db, key, &args.replica.replica) => r?,
            name = signals.before_start() => {
                tracing::info!("{name} received during the restore on start; the app was not started");
                return Ok(());
            }
        }
    }
    let mut app = crate::exec::App::spawn(command)?;
    let (exited_tx, exited_rx) = tokio::sync::oneshot::channel::<()>();
    let exited = async move {
        // Dropped unsent (mailsafe is failing): never a shutdown.
        if exited_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let shutdown = shutdown_deadline(
        exited,
        args.shutdown_timeout,
        "taking the final snapshot after the app exited",
        replica_undone(m.clone()),
    );
    let run = watch::run(config, store, m, shutdown);
    tokio::pin!(run);
    let first = {
        let waited = app.wait_forwarding(&mut signals);
        tokio::pin!(waited);
        tokio::select! {
            status = &mut waited => Ok(status),
            ended = &mut run => Err(ended),
        }
    };
    let status = match first {
        Ok(status) => status?,
        Err(ended) => {
            tracing::error!(command = %app.command, "the watch loop ended before the app; stopping the app");
            app.stop(args.shutdown_timeout).await;
            ended?;
            anyhow::bail!("the watch loop of {} ended before the app", args.db.display());
        }
    };
    let _ = exited_tx.send(());
    run.await?;
    match crate::exec::AppExit::from_status(&app.command, status) {
        None => Ok(()),
        Some(exit) => Err(exit.into()),
    }
}

fn cron(args: CronArgs) -> anyhow::Result<()> {
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
        let store = open_replica(&args.replica).await?;
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
            // A store error reached us without being wrapped: a malformed
            // replica URL is a usage error like any other bad flag value.
            e.downcast_ref::<mailsafe::store::StoreError>()
                .map(|e| e.exit_code())
                .filter(|c| *c != 1)
        })
        .unwrap_or(1)
}
