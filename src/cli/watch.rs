//! `mailsafe watch`: every (db, replica) pair of the [`Plan`] gets a watch
//! loop of its own (`mailsafe::watch::run`: its own snapshotter, lease and
//! history), so a slow or failing store only delays its own replica. The
//! loops share one `/metrics` and `/healthz` (labelled by db and replica when
//! a config file is used), one shutdown and, per db, the volume lock.
//!
//! A config file's `dir` and glob entries ([`super::config::Discover`]) are
//! scanned at start and every `rescan-interval`: a new db gets its loops
//! (and metrics labels, heartbeat) at once; a db that is gone is reported
//! and its loops stopped, each after a last snapshot attempt bounded by the
//! shutdown timeout, without stopping the others.
//!
//! With `--exec` the app runs as a child ([`crate::exec`]): its exit is the
//! shutdown, and mailsafe exits with its code. Either way, a loop that ends
//! on its own (its lease was taken over, its store ignores conditional
//! writes) ends the others too, each with its final snapshot, and mailsafe
//! exits with that loop's error: half a backup that looks whole is worse
//! than a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
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
use crate::heartbeat::Heartbeat;
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
    /// The db.
    db: PathBuf,
    name: String,
    url: String,
    config: WatchConfig,
    store: DynStore,
    metrics: Arc<Metrics>,
}

/// The pairs of `db` (its replicas' stores opened, their metrics in
/// `registry` when `labelled`), given each replica's key in order.
async fn pairs_of(
    db: &DbPlan,
    keys: Vec<Option<Arc<mailsafe::crypto::Key>>>,
    labelled: bool,
    registry: &mut Registry,
) -> anyhow::Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    for (r, key) in db.replicas.iter().zip(keys) {
        let metrics = Metrics::new();
        let store = MeteredStore::wrap(open_replica(&r.args).await?, metrics.clone());
        let db_name = db.path.display().to_string();
        let label = if labelled {
            registry.add(&db_name, &r.name, metrics.clone());
            format!("db {db_name} replica {}", r.name)
        } else {
            *registry = Registry::single(metrics.clone());
            String::new()
        };
        pairs.push(Pair {
            label,
            db: db.path.clone(),
            name: r.name.clone(),
            url: r.args.url().to_string(),
            config: watch_config(&db.path, &db.settings, key),
            store,
            metrics,
        });
    }
    Ok(pairs)
}

/// Each replica's key of `db`, in order (read now, so a missing key file
/// stops nothing midway).
fn keys_of(db: &DbPlan) -> anyhow::Result<Vec<Option<Arc<mailsafe::crypto::Key>>>> {
    db.replicas
        .iter()
        .map(|r| {
            r.args
                .encryption_key()
                .with_context(|| format!("replica {} of {}", r.name, db.path.display()))
        })
        .collect()
}

/// `watch`: the plan from the flags or the file (every error before
/// anything starts), then the loops until the shutdown.
pub fn run(args: WatchArgs) -> anyhow::Result<()> {
    let plan = Plan::from_watch_args(&args)?;
    if let Some(command) = &plan.exec {
        // A bad command line is a usage error before anything starts.
        crate::exec::split(command)?;
    }
    let mut keys = Vec::new();
    for db in &plan.dbs {
        keys.push(keys_of(db)?);
    }
    // A `dir` entry's keys are its dbs' keys: checked now too.
    for entry in &plan.discover {
        keys_of(&entry.template())?;
    }
    if args.check_config {
        print_plan(&plan);
        return Ok(());
    }
    crate::shutdown::run_until_shutdown(crate::shutdown::runtime()?, run_loops(args, plan, keys))?
}

/// `--check-config`: what would be watched, one line per (db, replica):
/// path, replica name, URL. A `dir` or glob entry has a line per replica
/// (its pattern, the name, the URL each db's path below its directory is
/// appended to) and then those of the dbs it finds now.
fn print_plan(plan: &Plan) {
    for db in &plan.dbs {
        for r in &db.replicas {
            println!("{}\t{}\t{}", db.path.display(), r.name, r.args.url());
        }
    }
    for entry in &plan.discover {
        let template = entry.template();
        for r in &template.replicas {
            println!(
                "{}\t{}\t{}/<path below {}>",
                entry.pattern,
                r.name,
                r.args.url().trim_end_matches('/'),
                template.path.display()
            );
        }
    }
    for db in plan.scan(&mut |_, _| {}) {
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

/// The end of one loop: its label, its db if a `dir` or glob entry found
/// it, and how it ended.
type Ended = (
    String,
    Option<PathBuf>,
    Result<watch::WatchOutcome, mailsafe::Error>,
);

/// The loops of a db a `dir` or glob entry found.
struct Found {
    /// Stops its loops (the deadline of their last snapshot attempt).
    stop: tokio::sync::watch::Sender<Option<Instant>>,
    metrics: Vec<Arc<Metrics>>,
    beats: Vec<tokio::task::AbortHandle>,
    /// Loops still running.
    running: usize,
    /// Whether the db is gone and its loops were told to stop.
    gone: bool,
}

/// Everything `watch` runs, for starting and stopping loops while it does.
struct Loops {
    registry: Registry,
    heartbeat: Option<Arc<Heartbeat>>,
    /// The shutdown's deadline, for every loop.
    deadline: tokio::sync::watch::Receiver<Option<Instant>>,
    running: futures::stream::FuturesUnordered<Pin<Box<dyn Future<Output = Ended>>>>,
    found: BTreeMap<PathBuf, Found>,
    /// Files already said (at debug) not to be dbs.
    skipped: BTreeSet<PathBuf>,
    shutdown_timeout: std::time::Duration,
}

impl Loops {
    /// Starts the loop of `p`; `stop` (a found db's) ends it early.
    fn start(&mut self, p: Pair, stop: Option<tokio::sync::watch::Receiver<Option<Instant>>>) {
        let mut all = self.deadline.clone();
        let found = stop.as_ref().map(|_| p.db.clone());
        let shutdown = async move {
            let all = async { all.wait_for(Option::is_some).await.ok().and_then(|d| *d) };
            let d = match stop {
                None => all.await,
                Some(mut mine) => tokio::select! {
                    d = all => d,
                    d = mine.wait_for(Option::is_some) => d.ok().and_then(|d| *d),
                },
            };
            d.unwrap_or_else(Instant::now)
        };
        let label = p.label.clone();
        self.running.push(Box::pin(async move {
            (
                label,
                found,
                watch::run(p.config, p.store, p.metrics, shutdown).await,
            )
        }));
    }

    /// Scans the `dir` and glob entries: starts the loops of new dbs, stops
    /// those of dbs that are gone. A db whose replicas cannot be opened is
    /// logged and tried again at the next scan.
    async fn rescan(&mut self, plan: &Plan) {
        // On a blocking thread: a large tree must not hold up the loops
        // polled in this task.
        let mine = plan.clone();
        let scan = tokio::task::spawn_blocking(move || {
            let mut skipped = Vec::new();
            let dbs =
                mine.scan(&mut |path, why| skipped.push((path.to_path_buf(), why.to_string())));
            (dbs, skipped)
        });
        let (dbs, skipped) = match scan.await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!("scanning for databases failed: {e}");
                return;
            }
        };
        for (path, why) in skipped {
            if !self.skipped.contains(&path) {
                tracing::debug!(file = %path.display(), "not backed up: {why}");
                self.skipped.insert(path);
            }
        }
        let now: BTreeSet<&Path> = dbs.iter().map(|d| d.path.as_path()).collect();
        for (path, f) in &mut self.found {
            // Gone means the file is gone: a directory that could not be
            // read this time (logged by the scan) stops nothing.
            if !f.gone && !now.contains(path.as_path()) && !path.exists() {
                tracing::warn!(
                    db = %path.display(),
                    "database is gone; stopping its backup after a last snapshot attempt"
                );
                f.gone = true;
                let _ = f
                    .stop
                    .send(Some(crate::shutdown::inner_deadline(self.shutdown_timeout)));
            }
        }
        for db in dbs {
            // A db still stopping after it was gone waits for the next scan.
            if self.found.contains_key(&db.path) {
                continue;
            }
            if let Err(e) = self.start_found(&db).await {
                tracing::error!(db = %db.path.display(), "cannot back up a database found: {e:#}");
            }
        }
    }

    /// Starts the loops of a db found by a scan.
    async fn start_found(&mut self, db: &DbPlan) -> anyhow::Result<()> {
        let keys = keys_of(db)?;
        let pairs = pairs_of(db, keys, true, &mut self.registry).await?;
        tracing::info!(db = %db.path.display(), replicas = pairs.len(), "found a database; backing it up");
        let (stop, rx) = tokio::sync::watch::channel(None);
        let mut f = Found {
            stop,
            metrics: pairs.iter().map(|p| p.metrics.clone()).collect(),
            beats: Vec::new(),
            running: pairs.len(),
            gone: false,
        };
        if let Some(h) = &self.heartbeat {
            f.beats = f.metrics.iter().map(|m| h.spawn(m.clone(), true)).collect();
        }
        for p in pairs {
            self.start(p, Some(rx.clone()));
        }
        self.found.insert(db.path.clone(), f);
        Ok(())
    }

    /// Takes a loop's end: `None` if that is as it should be (a gone db's
    /// loop, whatever its last attempt did: logged), else the error that
    /// ends `watch` (a loop that ended by itself, or failed).
    fn ended(
        &mut self,
        (label, found, ended): Ended,
        shutting_down: bool,
    ) -> Option<anyhow::Error> {
        if let Some(f) = found.as_ref().and_then(|p| self.found.get_mut(p)) {
            f.running -= 1;
            let gone = f.gone;
            if gone {
                match &ended {
                    Ok(_) => tracing::info!("{label}: stopped (the database is gone)"),
                    Err(e) => tracing::warn!("{label}: stopped (the database is gone); {e}"),
                }
            }
            if f.running == 0 && gone {
                if let Some(f) = found.and_then(|p| self.found.remove(&p)) {
                    for m in &f.metrics {
                        self.registry.remove(m);
                    }
                    f.beats.iter().for_each(tokio::task::AbortHandle::abort);
                }
            }
            if gone {
                return None;
            }
        }
        match ended {
            Ok(_) if shutting_down => None,
            Ok(_) => Some(anyhow::anyhow!("a watch loop ended before the shutdown")),
            Err(e) if label.is_empty() => Some(e.into()),
            Err(e) => Some(anyhow::Error::new(e).context(label)),
        }
    }
}

async fn run_loops(
    args: WatchArgs,
    plan: Plan,
    keys: Vec<Vec<Option<Arc<mailsafe::crypto::Key>>>>,
) -> anyhow::Result<()> {
    // Installed before anything starts, so an early signal is not fatal.
    let mut trigger = match plan.exec {
        Some(_) => Trigger::App(Forward::install()?),
        None => Trigger::Signal(Box::pin(termination_signal()?)),
    };
    let labelled = args.config.is_some();
    let mut registry = Registry::default();
    let mut pairs = Vec::new();
    for (db, keys) in plan.dbs.iter().zip(keys) {
        pairs.extend(pairs_of(db, keys, labelled, &mut registry).await?);
    }
    // Pings are spawned here, per loop: a found db's stop with it.
    let heartbeat = serve_monitor(&plan.monitor, registry.clone(), Beats::Caller).await?;
    if let Some(h) = &heartbeat {
        for p in &pairs {
            h.spawn(p.metrics.clone(), true);
        }
    }
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
    let shutdown = shutdown_deadline(go, args.shutdown_timeout, phase, undone(&registry));
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None::<Instant>);
    let tx = deadline_tx.clone();
    tokio::spawn(async move {
        let d = shutdown.await;
        let _ = tx.send(Some(d));
    });
    // Polled together in this task, not spawned: the engine's loop future
    // is not provably `Send` for every lifetime (a rustc limitation), and
    // each loop does its heavy work on blocking threads anyway.
    let mut loops = Loops {
        registry,
        heartbeat,
        deadline: deadline_rx,
        running: futures::stream::FuturesUnordered::new(),
        found: BTreeMap::new(),
        skipped: BTreeSet::new(),
        shutdown_timeout: args.shutdown_timeout,
    };
    for p in pairs {
        loops.start(p, None);
    }
    let rescan = plan.discover.iter().map(|d| d.rescan_interval).min();
    if rescan.is_some() {
        loops.rescan(&plan).await;
        if loops.found.is_empty() {
            for entry in &plan.discover {
                tracing::info!(pattern = %entry.pattern, "no database found yet; scanning every {:?}", entry.rescan_interval);
            }
        }
    }
    let mut tick = rescan.map(|d| tokio::time::interval_at(Instant::now() + d, d));

    // Until the trigger, or a loop that ends by itself.
    let mut failed: Option<anyhow::Error> = None;
    let mut status = None;
    {
        let trig = wait_trigger(&mut trigger, app.as_mut());
        tokio::pin!(trig);
        loop {
            tokio::select! {
                s = &mut trig => {
                    status = s?;
                    break;
                }
                Some(ended) = loops.running.next() => {
                    if let Some(e) = loops.ended(ended, false) {
                        failed = Some(e);
                        break;
                    }
                }
                _ = async { tick.as_mut().unwrap().tick().await }, if tick.is_some() => {
                    loops.rescan(&plan).await;
                }
            }
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
    while let Some(ended) = loops.running.next().await {
        if let Some(e) = loops.ended(ended, true) {
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

/// What a shutdown cut off by the watchdog leaves undone: each loop's
/// missing changes (the loops of that moment: found dbs come and go).
fn undone(registry: &Registry) -> Undone {
    let registry = registry.clone();
    Box::new(move || {
        registry
            .loops()
            .into_iter()
            .map(|(labels, m)| {
                let u = replica_undone(m)();
                match labels.is_empty() {
                    true => u,
                    false => format!("{labels}: {u}"),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// `--restore-if-db-not-exists`: each missing db restored from the replica
/// that has its newest snapshot (an empty replica is not an error).
async fn restore_missing(dbs: &[DbPlan], pairs: &[Pair]) -> anyhow::Result<()> {
    for db in dbs {
        if db.path.exists() {
            continue;
        }
        let mine: Vec<&Pair> = pairs.iter().filter(|p| p.db == db.path).collect();
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
