//! `mailsafe watch`: every (db, replica) pair of the [`Plan`] gets a watch
//! loop of its own (`mailsafe::watch::run`: its own snapshotter, lease and
//! history), so a slow or failing store only delays its own replica. The
//! loops share one `/metrics` and `/healthz` (labelled by db and replica when
//! a config file is used), one shutdown and, per db, the volume lock.
//!
//! With `--exec` the app runs as a child ([`crate::exec`]): its exit is the
//! shutdown, and mailsafe exits with its code. Either way, a loop that ends
//! on its own (its lease was taken over, its store ignores conditional
//! writes) ends the others too, each with its final snapshot, and mailsafe
//! exits with that loop's error: half a backup that looks whole is worse
//! than a restart.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use mailsafe::store::DynStore;
use mailsafe::watch::metrics::{MeteredStore, Metrics, Registry};
use mailsafe::watch::{self, WatchConfig};
use tokio::time::Instant;

use super::args::{WatchArgs, WatchDbArgs};
use super::config::{DbPlan, Plan};
use super::{Beats, newest_replica, open_replica, retention_policy, serve_monitor};
use crate::exec::{App, AppExit, Forward};
use crate::shutdown::{
    Undone, inner_deadline, replica_undone, shutdown_deadline, termination_signal,
};

/// The watch loop's settings for `db` from its `settings`.
fn watch_config(
    db: &std::path::Path,
    s: &WatchDbArgs,
    key: Option<Arc<mailsafe::crypto::Key>>,
) -> WatchConfig {
    let mut config = WatchConfig::new(db);
    config.encryption = key;
    config.debounce = s.debounce;
    config.max_delay = s.max_delay;
    config.lease_ttl = s.lease_ttl;
    config.retention = (!s.retention_interval.is_zero()).then(|| {
        let policy = retention_policy(&s.retention);
        watch::Retention {
            policy: if policy.is_empty() {
                mailsafe::retention::Policy::default_thinning()
            } else {
                policy
            },
            gc_grace: s.retention.gc_grace,
            interval: s.retention_interval,
        }
    });
    config.unsafe_no_conditional_writes = s.writer.unsafe_no_conditional_writes;
    if let Some(p) = s.poll_interval {
        config.poll_interval = p;
        config.force_poll = true;
    }
    config
}

/// One (db, replica) pair, ready to run.
struct Pair {
    /// `db="..",replica=".."` words for messages (empty for a lone pair
    /// from the flags, whose messages stay as they were).
    label: String,
    /// The db's index in the plan.
    db: usize,
    name: String,
    url: String,
    config: WatchConfig,
    store: DynStore,
    metrics: Arc<Metrics>,
}

/// `watch`: the plan from the flags or the file (every error before
/// anything starts), then the loops until the shutdown.
pub fn run(args: WatchArgs) -> anyhow::Result<()> {
    let plan = Plan::from_watch_args(&args)?;
    if let Some(command) = &plan.exec {
        // A bad command line is a usage error before anything starts.
        crate::exec::split(command)?;
    }
    // Keys are read now, so a missing key file stops nothing midway.
    let mut keys = Vec::new();
    for db in &plan.dbs {
        for r in &db.replicas {
            let key = r
                .args
                .encryption_key()
                .with_context(|| format!("replica {} of {}", r.name, db.path.display()))?;
            keys.push(key);
        }
    }
    if args.check_config {
        print_plan(&plan);
        return Ok(());
    }
    crate::shutdown::run_until_shutdown(run_loops(args, plan, keys))?
}

/// `--check-config`: what would be watched, one line per (db, replica).
fn print_plan(plan: &Plan) {
    for db in &plan.dbs {
        for r in &db.replicas {
            println!("{}\t{}\t{}", db.path.display(), r.name, r.args.url());
        }
    }
}

/// What starts the shutdown: SIGTERM/SIGINT, or with `--exec` the app's
/// exit (the signals are then the app's).
enum Trigger {
    Signal(Pin<Box<dyn Future<Output = ()> + Send>>),
    App(Forward),
}

impl Trigger {
    /// Resolves on a signal (used before the app starts).
    async fn signalled(&mut self) {
        match self {
            Trigger::Signal(s) => s.as_mut().await,
            Trigger::App(f) => {
                let name = f.before_start().await;
                tracing::info!("{name} received; the app was not started");
            }
        }
    }
}

async fn run_loops(
    args: WatchArgs,
    plan: Plan,
    keys: Vec<Option<Arc<mailsafe::crypto::Key>>>,
) -> anyhow::Result<()> {
    // Installed before anything starts, so an early signal is not fatal.
    let mut trigger = match plan.exec {
        Some(_) => Trigger::App(Forward::install()?),
        None => Trigger::Signal(Box::pin(termination_signal()?)),
    };
    let labelled = args.config.is_some();
    let mut registry = Registry::default();
    let mut pairs = Vec::new();
    let mut keys = keys.into_iter();
    for (i, db) in plan.dbs.iter().enumerate() {
        for r in &db.replicas {
            let metrics = Metrics::new();
            let store = MeteredStore::wrap(open_replica(&r.args).await?, metrics.clone());
            let db_name = db.path.display().to_string();
            let label = if labelled {
                registry.add(&db_name, &r.name, metrics.clone());
                format!("db {db_name} replica {}", r.name)
            } else {
                registry = Registry::single(metrics.clone());
                String::new()
            };
            pairs.push(Pair {
                label,
                db: i,
                name: r.name.clone(),
                url: r.args.url().to_string(),
                config: watch_config(&db.path, &db.settings, keys.next().flatten()),
                store,
                metrics,
            });
        }
    }
    serve_monitor(&plan.monitor, registry.clone(), Beats::AlsoIdle).await?;
    if args.restore_if_db_not_exists {
        tokio::select! {
            r = restore_missing(&plan.dbs, &pairs) => r?,
            _ = trigger.signalled() => {
                tracing::info!("stopped during the restore on start");
                return Ok(());
            }
        }
    }
    let mut app = match &plan.exec {
        Some(command) => Some(App::spawn(command)?),
        None => None,
    };

    // The shutdown: the trigger arms the watchdog and the deadline goes to
    // every loop.
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let go = async move {
        // Dropped unsent (a loop failed and set the deadline itself): never.
        if go_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let phase = if app.is_some() {
        "taking the final snapshot after the app exited"
    } else {
        "taking the final snapshot"
    };
    let shutdown = shutdown_deadline(go, args.shutdown_timeout, phase, undone(&pairs));
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None::<Instant>);
    let tx = deadline_tx.clone();
    tokio::spawn(async move {
        let d = shutdown.await;
        let _ = tx.send(Some(d));
    });
    // Polled together in this task, not spawned: the engine's loop future
    // is not provably `Send` for every lifetime (a rustc limitation), and
    // each loop does its heavy work on blocking threads anyway.
    let mut loops = futures::stream::FuturesUnordered::new();
    for p in pairs {
        let mut rx = deadline_rx.clone();
        let label = p.label.clone();
        let shutdown = async move {
            let d = rx.wait_for(Option::is_some).await.ok().and_then(|d| *d);
            d.unwrap_or_else(Instant::now)
        };
        loops.push(async move {
            (
                label,
                watch::run(p.config, p.store, p.metrics, shutdown).await,
            )
        });
    }

    // Until the trigger, or a loop that ends by itself.
    let mut failed: Option<anyhow::Error> = None;
    let mut status = None;
    tokio::select! {
        s = wait_trigger(&mut trigger, app.as_mut()) => status = s?,
        Some(joined) = loops.next() => {
            failed = Some(loop_error(joined).unwrap_or_else(|| {
                anyhow::anyhow!("a watch loop ended before the shutdown")
            }));
        }
    }
    if failed.is_some() {
        if let Some(app) = &mut app {
            tracing::error!(command = %app.command, "a watch loop failed; stopping the app");
            app.stop(args.shutdown_timeout).await;
        }
        let _ = deadline_tx.send(Some(inner_deadline(args.shutdown_timeout)));
    } else {
        let _ = go_tx.send(());
    }
    while let Some(joined) = loops.next().await {
        if let Some(e) = loop_error(joined) {
            if failed.is_some() {
                tracing::error!("{e:#}");
            } else {
                failed = Some(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    match (app, status) {
        (Some(app), Some(status)) => match AppExit::from_status(&app.command, status) {
            None => Ok(()),
            Some(exit) => Err(exit.into()),
        },
        _ => Ok(()),
    }
}

/// Waits for the trigger: the signal, or the app's exit (passing signals
/// on to it meanwhile), whose status it returns.
async fn wait_trigger(
    trigger: &mut Trigger,
    app: Option<&mut App>,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    match (trigger, app) {
        (Trigger::App(forward), Some(app)) => Ok(Some(app.wait_forwarding(forward).await?)),
        (trigger, _) => {
            trigger.signalled().await;
            Ok(None)
        }
    }
}

/// The error of a loop that ended, if it failed, named by its labels.
fn loop_error(
    (label, ended): (String, Result<watch::WatchOutcome, mailsafe::Error>),
) -> Option<anyhow::Error> {
    match ended {
        Ok(_) => None,
        Err(e) if label.is_empty() => Some(e.into()),
        Err(e) => Some(anyhow::Error::new(e).context(label)),
    }
}

/// What a shutdown cut off by the watchdog leaves undone: each loop's
/// missing changes.
fn undone(pairs: &[Pair]) -> Undone {
    let each: Vec<(String, Undone)> = pairs
        .iter()
        .map(|p| (p.label.clone(), replica_undone(p.metrics.clone())))
        .collect();
    Box::new(move || {
        each.iter()
            .map(|(label, u)| match label.is_empty() {
                true => u(),
                false => format!("{label}: {}", u()),
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// `--restore-if-db-not-exists`: each missing db restored from the replica
/// that has its newest snapshot (an empty replica is not an error).
async fn restore_missing(dbs: &[DbPlan], pairs: &[Pair]) -> anyhow::Result<()> {
    for (i, db) in dbs.iter().enumerate() {
        if db.path.exists() {
            continue;
        }
        let mine: Vec<&Pair> = pairs.iter().filter(|p| p.db == i).collect();
        let candidates: Vec<(String, DynStore, Option<Arc<mailsafe::crypto::Key>>)> = mine
            .iter()
            .map(|p| (p.name.clone(), p.store.clone(), p.config.encryption.clone()))
            .collect();
        let Some(k) = newest_replica(&candidates).await? else {
            tracing::info!(db = %db.path.display(), "no replica has a snapshot yet; starting empty");
            continue;
        };
        let p = mine[k];
        tracing::info!(db = %db.path.display(), replica = %p.name, "restoring on start");
        crate::serve::restore_on_start(&p.store, &db.path, p.config.encryption.clone(), &p.url)
            .await?;
    }
    Ok(())
}
