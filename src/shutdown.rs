//! How the long-lived modes (`serve`, `watch`, `cron`) stop: the termination
//! signal, the phase the process is in, the watchdog that bounds the whole
//! shutdown, the inner deadline handed to a mode's own steps, and what each
//! mode says is not done when the watchdog cuts it off.

/// The multi-threaded runtime every command runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Worker threads of `serve`'s runtime: one fewer than the cores (at least
/// one), leaving a core to the catcher's single writer thread, which every
/// message waits for (it commits them; see the catcher's storage/writer.rs).
///
/// Why: tokio's default (a worker per core) plus the writer oversubscribed
/// the cores. In the ingest benchmark on 2 cores (bench/ingest.sh, Postfix's
/// smtp-source with 10 sessions on the same machine) one worker instead of two
/// cut the server's CPU from ~0.30 to ~0.27 ms a message (fewer cross-thread
/// wake-ups and steals) and raised ingest from ~3,000 to ~3,300 msgs/s
/// (bench/RESULTS.md, smtp-ingest). `TOKIO_WORKER_THREADS`, when set, wins.
pub fn serve_workers() -> Option<usize> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(cores.saturating_sub(1).max(1))
}

/// The runtime `serve` runs on (see [`serve_workers`]).
pub fn serve_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = serve_workers() {
        b.worker_threads(n);
    }
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a long-lived mode (`serve`, `watch`) to its end on `rt`, a fresh
/// runtime. Dropping a runtime waits for every blocking task, however long
/// it takes (a snapshot reader in a SQLite busy wait, a slow query of the
/// API): after a shutdown that must finish in time, give them a moment and go.
pub fn run_until_shutdown<T>(
    rt: tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    let out = rt.block_on(fut);
    set_phase("stopping the runtime");
    rt.shutdown_timeout(std::time::Duration::from_millis(250));
    Ok(out)
}

/// What the process is doing since the termination signal, for the
/// watchdog's message.
static SHUTDOWN_PHASE: std::sync::Mutex<&str> = std::sync::Mutex::new("starting the shutdown");

/// Names the phase the process is in, for the watchdog's message.
pub fn set_phase(phase: &'static str) {
    if let Ok(mut p) = SHUTDOWN_PHASE.lock() {
        *p = phase;
    }
}

/// Part of the shutdown timeout kept back from the inner deadlines, so they
/// fire (with their precise messages) before the watchdog: a tenth, at most
/// one second.
pub fn shutdown_margin(timeout: std::time::Duration) -> std::time::Duration {
    (timeout / 10).min(std::time::Duration::from_secs(1))
}

/// The deadline handed to the watch loop: the timeout from now, less
/// [`shutdown_margin`].
pub fn inner_deadline(timeout: std::time::Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + timeout - shutdown_margin(timeout)
}

/// What a shutdown cut off by the watchdog leaves undone, in words, asked
/// at that moment (each mode knows its own: a catcher, a watch loop, a cron
/// round).
pub type Undone = Box<dyn Fn() -> String + Send>;

/// [`Undone`] of the watch loop (sidecar or `serve --replica`): which
/// committed changes are not in the replica, from its `metrics`.
pub fn replica_undone(metrics: std::sync::Arc<mailsafe::watch::metrics::Metrics>) -> Undone {
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
pub fn shutdown_deadline(
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

/// Resolves once SIGTERM or SIGINT arrives. The handlers are installed
/// here, before anything starts, so an early signal is not fatal.
pub fn termination_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
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

/// [`Undone`] of `cron`: the round in flight and the step it is in, from
/// its `progress`.
pub fn cron_undone(progress: std::sync::Arc<mailsafe::cron::Progress>) -> Undone {
    Box::new(move || {
        progress
            .unfinished()
            .unwrap_or_else(|| "no cron round was in progress".into())
    })
}

#[cfg(test)]
mod tests {
    /// `serve` leaves a core to the catcher's writer thread: a worker per
    /// core but one, never none.
    #[test]
    fn serve_runs_one_worker_fewer_than_the_cores() {
        if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
            return; // the operator's choice wins; nothing to check
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rt = super::serve_runtime().unwrap();
        assert_eq!(rt.metrics().num_workers(), cores.saturating_sub(1).max(1));
    }
}
