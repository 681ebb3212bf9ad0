//! `mailsafe serve`: the one place the catcher and the backup engine are
//! joined. [`run`] has the shape of mini-redis's `server::run(listener,
//! shutdown)`: everything it needs comes in (the catcher's config, an opened
//! replica, a shutdown future), so a test drives it in-process; the binary
//! supplies the signal, the watchdog and the flags (`cli`, `shutdown`).

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use mailsafe::crypto::Key;
use mailsafe::store::DynStore;
use mailsafe::watch::metrics::Metrics;
use mailsafe_catcher::{Catcher, Config};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::shutdown::set_phase;

/// The replica `serve --replica` restores from on start and backs up to.
pub struct Replica {
    /// The replica's store, already metered into `metrics`.
    pub store: DynStore,
    /// The watch loop's metrics (also read by the shutdown watchdog).
    pub metrics: Arc<Metrics>,
    /// The replica's encryption key, if it is encrypted.
    pub key: Option<Arc<Key>>,
    /// `--unsafe-no-conditional-writes`.
    pub unsafe_no_conditional_writes: bool,
    /// The replica URL, for messages.
    pub url: String,
}

/// Runs the catcher (with `replica`, restore-on-start and continuous
/// backup) until `shutdown` resolves to the deadline the shutdown must keep.
/// Then SMTP stops, the catcher commits every acknowledged message and only
/// then is the final snapshot taken, by that deadline. The catcher's own
/// drain is bounded by `config.shutdown_timeout`. A shutdown during the
/// start-up restore ends it at once (the catcher never accepted mail).
pub async fn run(
    config: Config,
    replica: Option<Replica>,
    shutdown: impl Future<Output = Instant> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(replica) = replica else {
        let catcher = bind(config, None).await?;
        catcher
            .run(async move {
                shutdown.await;
            })
            .await?;
        return Ok(());
    };
    // The deadline of the whole shutdown, once it began.
    let (deadline_tx, deadline_rx) = watch::channel(None);
    tokio::spawn(async move {
        let deadline = shutdown.await;
        let _ = deadline_tx.send(Some(deadline));
    });
    let mut signalled = deadline_rx.clone();
    let unsafe_writes = replica.unsafe_no_conditional_writes;
    let started = tokio::select! {
        started = start(config, replica) => started?,
        _ = signalled.wait_for(|d| d.is_some()) => {
            tracing::info!("stopped during start-up; the catcher never accepted mail");
            return Ok(());
        }
    };
    run_replicated(started, deadline_rx, unsafe_writes).await
}

/// Binds the catcher and says where it listens.
async fn bind(config: Config, replica: Option<&str>) -> anyhow::Result<Catcher> {
    let db = config.database.clone();
    let catcher = Catcher::bind(config)
        .await
        .with_context(|| format!("cannot start the catcher on {}", db.display()))?;
    match replica {
        None => tracing::info!(
            smtp = %catcher.smtp_addr(),
            http = %catcher.http_addr(),
            db = %db.display(),
            "mailsafe catcher running"
        ),
        Some(replica) => tracing::info!(
            smtp = %catcher.smtp_addr(),
            http = %catcher.http_addr(),
            db = %db.display(),
            replica = %replica,
            "mailsafe catcher running, backed up continuously"
        ),
    }
    Ok(catcher)
}

/// What `serve --replica` has once started.
struct Started {
    catcher: Catcher,
    store: DynStore,
    metrics: Arc<Metrics>,
    /// The replica's encryption key, if it is encrypted.
    key: Option<Arc<Key>>,
}

/// The start of `serve --replica`: restore if the db is missing and the
/// replica has a snapshot, then bind the catcher.
async fn start(config: Config, replica: Replica) -> anyhow::Result<Started> {
    let db = config.database.clone();
    restore_on_start(&replica.store, &db, replica.key.clone(), &replica.url).await?;
    let catcher = bind(config, Some(&replica.store.describe())).await?;
    Ok(Started {
        catcher,
        store: replica.store,
        metrics: replica.metrics,
        key: replica.key,
    })
}

/// The restore on start of `serve --replica` and `watch
/// --restore-if-db-not-exists`: the newest snapshot of `store` (the replica
/// `url`) to `db` if `db` does not exist and the replica has one.
pub async fn restore_on_start(
    store: &DynStore,
    db: &std::path::Path,
    key: Option<Arc<Key>>,
    url: &str,
) -> anyhow::Result<()> {
    let mut opts = mailsafe::restore::RestoreOptions::new(db);
    opts.if_db_not_exists = true;
    opts.if_replica_exists = true;
    opts.key = key;
    mailsafe::restore::restore(&**store, &opts)
        .await
        .with_context(|| format!("restore on start of {} from {url}", db.display()))?;
    Ok(())
}

/// The catcher and the watch loop of `serve --replica`, until the shutdown
/// puts a deadline in `deadline_rx`.
async fn run_replicated(
    started: Started,
    deadline_rx: watch::Receiver<Option<Instant>>,
    unsafe_no_conditional_writes: bool,
) -> anyhow::Result<()> {
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
    wc.unsafe_no_conditional_writes = unsafe_no_conditional_writes;
    let watch_run = watch::run(wc, store, m, async move {
        let _ = done_rx.wait_for(|d| *d).await;
        set_phase("taking the final snapshot");
        let deadline = *deadline_rx.borrow();
        deadline.unwrap_or_else(Instant::now)
    });
    let (caught, watched) = tokio::join!(catcher_run, watch_run);
    caught.context("catcher failed")?;
    watched?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mailsafe::watch::metrics::MeteredStore;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    /// A loopback port nobody listens on right now.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// One SMTP transaction, each reply checked by its code.
    async fn send_mail(port: u16, subject: &str) {
        let mut conn = None;
        // Bounded wait for the listener (the catcher binds after the
        // start-up restore).
        for _ in 0..400 {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let (r, mut w) = conn.expect("the catcher listens within 20 s").into_split();
        let mut r = BufReader::new(r);
        async fn expect(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, code: &str) {
            loop {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                assert!(line.starts_with(code), "expected {code}, got {line:?}");
                if line.as_bytes().get(3) == Some(&b' ') {
                    return;
                }
            }
        }
        expect(&mut r, "220").await;
        let data = format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n");
        for (line, code) in [
            ("EHLO test\r\n", "250"),
            ("MAIL FROM:<a@example.com>\r\n", "250"),
            ("RCPT TO:<b@example.com>\r\n", "250"),
            ("DATA\r\n", "354"),
            (data.as_str(), "250"),
            ("QUIT\r\n", "221"),
        ] {
            w.write_all(line.as_bytes()).await.unwrap();
            expect(&mut r, code).await;
        }
    }

    /// In process: `serve` with a file replica takes a message over SMTP,
    /// and after the shutdown the replica restores to a db holding it (the
    /// final snapshot came after the catcher's commit).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_backs_up_an_acknowledged_message_by_the_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("replica").display());
        let port = free_port();
        let config = Config {
            database: dir.path().join("mail.db"),
            smtp_bind: format!("127.0.0.1:{port}"),
            http_bind: "127.0.0.1:0".into(),
            ..Config::default()
        };
        let metrics = Metrics::new();
        let store = mailsafe::store::open(&url, None).await.unwrap();
        let replica = Replica {
            store: MeteredStore::wrap(store.clone(), metrics.clone()),
            metrics,
            key: None,
            unsafe_no_conditional_writes: false,
            url,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Driven in this task, not spawned: like the binary's block_on, run's
        // future need not be Send.
        let served = run(config, Some(replica), async move {
            let _ = stop_rx.await;
            Instant::now() + Duration::from_secs(30)
        });
        let client = async move {
            send_mail(port, "kept by the final snapshot").await;
            stop_tx.send(()).unwrap();
        };
        let (served, ()) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(served, client)
        })
        .await
        .expect("serve stops by its deadline");
        served.unwrap();

        assert!(!store.list("manifests/").await.unwrap().is_empty());
        let restored = dir.path().join("restored.db");
        mailsafe::restore::restore(&*store, &mailsafe::restore::RestoreOptions::new(&restored))
            .await
            .unwrap();
        let db = rusqlite::Connection::open(&restored).unwrap();
        let subjects: Vec<String> = db
            .prepare("SELECT Subject FROM mailbox")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(subjects, ["kept by the final snapshot"]);
    }
}
