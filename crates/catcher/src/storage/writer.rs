//! The single writer: group commit of everything that changes the db.
//! Batching only: what a job does lives with its caller (`insert.rs`,
//! `mutate.rs`), the row-level SQL the writer itself runs in `rows.rs`.
//!
//! Jobs arrive on a channel. The writer takes the first, drains whatever else
//! is already queued, runs them all in one transaction (each inside its own
//! savepoint so one failure does not sink the batch), commits once, and only
//! then answers each caller and publishes their events. Pruning by count
//! happens in the same transaction as the inserts that made it necessary,
//! once they pass the limit by a slack (see [`prune_slack`]), and down to the
//! limit once the writer is idle; pruning by age runs on a timer.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio::sync::{broadcast, oneshot};

use std::sync::Arc;

use super::error::StorageError;
use super::index::{self, Fresh, Vocab};
use super::model::{Counters, Event, StoreOptions, now_ms};
use super::rows::{counts, prune_age, prune_count};

/// Most jobs committed in one transaction; bounds the latency of a batch.
const MAX_BATCH: usize = 2000;
/// Longest a batch waits for more jobs after its first (see [`Writer::gather`]).
const MAX_LINGER: Duration = Duration::from_millis(3);
/// Mailpit sends at most four `stats` events a second.
const STATS_INTERVAL: Duration = Duration::from_millis(250);
/// How often messages past `max_age` are looked for.
const AGE_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How long the writer must have been idle before it prunes a mailbox that
/// is over `max_messages` but within [`prune_slack`] of it.
const IDLE_PRUNE: Duration = Duration::from_millis(500);
/// Most messages a batch lets the mailbox hold past `max_messages` (bounds
/// how long the batch that prunes them takes).
const MAX_PRUNE_SLACK: u64 = 1000;

/// How many messages past `max` the mailbox may hold before a batch prunes:
/// a tenth of `max` (none below 10), at most [`MAX_PRUNE_SLACK`].
///
/// Why not prune in every batch: deleting the oldest few messages at each
/// commit dirtied the same pages (the old end of the mailbox, its indexes,
/// the raw and search tables, FTS5 tombstones) over and over, and the writer
/// must be the last to finish every message. Pruned 50 at a time (the default
/// 500 kept) the writer's pruning time fell from 0.14-0.17 to 0.04-0.08 ms a
/// batch and bytes written per message by ~20% (bench/RESULTS.md, smtp-ingest).
/// Mailpit itself prunes once a minute, so its mailbox grows past the limit
/// for up to a minute; here it is at most the slack, and exactly `max` again
/// [`IDLE_PRUNE`] after the last batch.
fn prune_slack(max: u64) -> u64 {
    (max / 10).min(MAX_PRUNE_SLACK)
}
/// How often the writer's stage timers are logged (at debug level, and only
/// after batches ran), so an ingest benchmark can say where the time goes.
const STATS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Time spent per stage of the writer's batches since the last report.
#[derive(Debug, Default)]
struct StageTimes {
    batches: u64,
    jobs: u64,
    largest: usize,
    /// Batches that waited for jobs that did not come.
    short: u64,
    apply: Duration,
    prune: Duration,
    commit: Duration,
}

/// What a job may touch while it runs inside the batch transaction.
pub struct Ctx {
    /// Table-name prefix of the tenant.
    pub prefix: String,
    /// Events to publish once the batch commits.
    pub events: Vec<Event>,
    /// Whether totals changed (a `stats` event is due).
    pub counts_changed: bool,
    /// Number of messages inserted in this batch (count pruning is due).
    pub inserted: usize,
    /// Raw bytes of the messages inserted in this batch.
    pub inserted_bytes: u64,
    /// Number of messages deleted in this batch.
    pub deleted: usize,
    /// The tenant's search vocabulary (read-only until the batch commits).
    pub vocab: Arc<Vocab>,
    /// Words first indexed in this batch.
    pub fresh: Fresh,
    /// The mailbox was emptied: the vocabulary starts over.
    pub vocab_reset: bool,
    /// Messages inserted in this batch whose words are indexed once every
    /// job has run (see [`Writer::index_batch`]).
    pub unindexed: Vec<(i64, index::Prepped)>,
}

/// A unit of work for the writer.
pub trait Job: Send {
    /// Runs inside the batch transaction.
    fn apply(&mut self, conn: &Connection, ctx: &mut Ctx) -> Result<(), StorageError>;
    /// Delivers the outcome once the batch has committed (or failed).
    fn finish(self: Box<Self>, result: Result<(), StorageError>);
}

struct FnJob<T, F> {
    f: Option<F>,
    out: Option<T>,
    reply: oneshot::Sender<Result<T, StorageError>>,
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &mut Ctx) -> Result<T, StorageError> + Send + 'static,
{
    fn apply(&mut self, conn: &Connection, ctx: &mut Ctx) -> Result<(), StorageError> {
        let f = self.f.take().ok_or(StorageError::Closed)?;
        self.out = Some(f(conn, ctx)?);
        Ok(())
    }

    fn finish(self: Box<Self>, result: Result<(), StorageError>) {
        let this = *self;
        let msg = match (result, this.out) {
            (Ok(()), Some(out)) => Ok(out),
            (Ok(()), None) => Err(StorageError::Closed),
            (Err(e), _) => Err(e),
        };
        // The caller may have gone away (client disconnected): nothing to do.
        let _ = this.reply.send(msg);
    }
}

/// Wraps a closure as a writer job answering on `reply`.
pub fn fn_job<T, F>(f: F, reply: oneshot::Sender<Result<T, StorageError>>) -> Box<dyn Job>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &mut Ctx) -> Result<T, StorageError> + Send + 'static,
{
    Box::new(FnJob {
        f: Some(f),
        out: None,
        reply,
    })
}

/// The writer thread's state.
pub struct Writer {
    conn: Connection,
    path: PathBuf,
    prefix: String,
    opts: StoreOptions,
    events: broadcast::Sender<Event>,
    counters: std::sync::Arc<Counters>,
    vocab: Arc<Vocab>,
    last_stats: Option<Instant>,
    stats_due: bool,
    next_age_prune: Instant,
    stages: StageTimes,
    stages_logged: Instant,
    /// Jobs expected per batch: the largest recent batch (see [`Writer::gather`]).
    concurrency: usize,
    /// How long the last commit took (bounds how long a batch waits).
    last_commit: Duration,
    /// The mailbox may hold more than `max_messages` (within the slack):
    /// prune once the writer is idle.
    prune_due: bool,
    /// When the last batch finished.
    last_batch: Instant,
}

impl Writer {
    /// Wraps the write connection.
    pub fn new(
        conn: Connection,
        path: PathBuf,
        prefix: String,
        opts: StoreOptions,
        events: broadcast::Sender<Event>,
        counters: std::sync::Arc<Counters>,
        vocab: Arc<Vocab>,
    ) -> Self {
        Writer {
            conn,
            path,
            prefix,
            opts,
            events,
            counters,
            vocab,
            last_stats: None,
            stats_due: false,
            next_age_prune: Instant::now(),
            stages: StageTimes::default(),
            stages_logged: Instant::now(),
            concurrency: 1,
            last_commit: Duration::ZERO,
            // A db opened over its limit (the limit was lowered) is pruned
            // once the writer is idle, not only at the next insert.
            prune_due: true,
            last_batch: Instant::now(),
        }
    }

    /// Serves jobs until every sender is gone.
    pub fn run(mut self, rx: Receiver<Box<dyn Job>>) {
        loop {
            self.housekeeping();
            let wait = self
                .next_deadline()
                .saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let batch = self.gather(first, &rx);
            self.run_batch(batch);
            self.log_stages(false);
        }
        self.log_stages(true);
        // Leave a tidy WAL behind for whoever opens the file next.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }

    /// Collects the batch that starts with `first`: whatever is queued, and,
    /// when recent batches show that more callers are active than have sent
    /// a job yet, waits briefly for them.
    ///
    /// Why wait: a commit costs about the same for one message as for ten
    /// (the fsync and the FTS5 segment flush dominate). Without waiting, N
    /// concurrent senders settle into two convoys that alternate, each
    /// committing N/2 messages while the other is answered and sends its next
    /// message; one batch of N a little later halves the commits. The wait
    /// ends as soon as the batch is as large as the concurrency seen, at
    /// [`MAX_LINGER`], or at the last commit's duration, whichever is first.
    /// A lone sequential client (batches of one) never waits, and a wait that
    /// times out lowers the expectation to what actually came, so callers
    /// that went away cost one short wait at most.
    fn gather(&mut self, first: Box<dyn Job>, rx: &Receiver<Box<dyn Job>>) -> Vec<Box<dyn Job>> {
        let mut batch = vec![first];
        let drain = |batch: &mut Vec<Box<dyn Job>>| {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
        };
        drain(&mut batch);
        let want = self.concurrency.min(MAX_BATCH);
        if batch.len() < want {
            let until = Instant::now() + self.last_commit.min(MAX_LINGER);
            while batch.len() < want {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(j) => {
                        batch.push(j);
                        drain(&mut batch);
                    }
                    Err(_) => break,
                }
            }
            if batch.len() < want {
                self.concurrency = batch.len();
                self.stages.short += 1;
            }
        }
        self.concurrency = self.concurrency.max(batch.len());
        batch
    }

    /// Logs the stage timers every [`STATS_LOG_INTERVAL`] (or now, when
    /// `last`), then starts counting afresh.
    fn log_stages(&mut self, last: bool) {
        if self.stages.batches == 0 || !last && self.stages_logged.elapsed() < STATS_LOG_INTERVAL {
            return;
        }
        let s = std::mem::take(&mut self.stages);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            batches = s.batches,
            jobs = s.jobs,
            mean_batch = format!("{:.1}", s.jobs as f64 / s.batches as f64),
            largest_batch = s.largest,
            short_waits = s.short,
            apply_ms = format!("{:.0}", ms(s.apply)),
            prune_ms = format!("{:.0}", ms(s.prune)),
            commit_ms = format!("{:.0}", ms(s.commit)),
            over_s = format!("{:.1}", self.stages_logged.elapsed().as_secs_f64()),
            "writer stages"
        );
        self.stages_logged = Instant::now();
    }

    fn next_deadline(&self) -> Instant {
        let mut d = if self.opts.max_age.is_some() {
            self.next_age_prune
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        if self.prune_due && self.opts.max_messages > 0 {
            d = d.min(self.last_batch + IDLE_PRUNE);
        }
        if self.stats_due {
            let s = self
                .last_stats
                .map(|t| t + STATS_INTERVAL)
                .unwrap_or_else(Instant::now);
            d = d.min(s);
        }
        d
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if let Some(age) = self.opts.max_age
            && now >= self.next_age_prune
        {
            self.next_age_prune = now + AGE_PRUNE_INTERVAL;
            let cutoff = now_ms() - age.as_millis() as i64;
            let pre = self.prefix.clone();
            let r = self.in_tx(|conn| prune_age(conn, &pre, cutoff));
            match r {
                Ok(n) if n > 0 => {
                    self.counters
                        .deleted
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(pruned = n, "pruned messages older than max age");
                    self.publish(Event::Prune);
                    self.stats_due = true;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "age pruning failed"),
            }
        }
        if self.prune_due && now >= self.last_batch + IDLE_PRUNE {
            self.prune_due = false;
            let (pre, max) = (self.prefix.clone(), self.opts.max_messages);
            let over = max > 0 && counts(&self.conn, &pre).is_ok_and(|(total, _)| total > max);
            if over {
                match self.in_tx(|conn| prune_count(conn, &pre, max)) {
                    Ok(n) if n > 0 => {
                        self.counters
                            .deleted
                            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        self.publish(Event::Prune);
                        self.stats_due = true;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "count pruning failed"),
                }
            }
        }
        if self.stats_due
            && self
                .last_stats
                .is_none_or(|t| now.duration_since(t) >= STATS_INTERVAL)
        {
            self.send_stats();
        }
    }

    fn in_tx<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&self.conn) {
            Ok(v) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(v),
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn send_stats(&mut self) {
        self.stats_due = false;
        self.last_stats = Some(Instant::now());
        if self.events.receiver_count() == 0 {
            return;
        }
        if let Ok((total, unread)) = counts(&self.conn, &self.prefix) {
            self.publish(Event::Stats { total, unread });
        }
    }

    fn publish(&self, e: Event) {
        // No subscribers is normal (no browser open).
        let _ = self.events.send(e);
    }

    /// Indexes the words of every message the batch inserted, outside any
    /// job's savepoint.
    ///
    /// Why here and not in each job: FTS5 writes its pending terms out as a
    /// new segment at every SAVEPOINT and RELEASE, so indexing inside each
    /// job's savepoint made one segment per message per FTS table (and the
    /// merges to match), about three quarters of the pages a batch wrote.
    /// Indexed together, a batch makes one segment per table. A message that
    /// a later job of the same batch deleted again is skipped.
    fn index_batch(&self, ctx: &mut Ctx) -> Result<(), StorageError> {
        if ctx.unindexed.is_empty() {
            return Ok(());
        }
        let pre = &ctx.prefix;
        // After a delete-all in this batch the old vocabulary is void: every
        // word must be recorded afresh.
        let empty = index::Vocab::default();
        let vocab: &index::Vocab = if ctx.vocab_reset { &empty } else { &ctx.vocab };
        let mut exists = self
            .conn
            .prepare_cached(&format!("SELECT 1 FROM {pre}mailbox WHERE Seq = ?1"))?;
        for (rowid, p) in std::mem::take(&mut ctx.unindexed) {
            if exists.exists(params![rowid])? {
                index::index_words(&self.conn, pre, rowid, &p, vocab, &mut ctx.fresh)?;
            }
        }
        Ok(())
    }

    /// Answers every job of a batch that did not commit with the reason.
    fn fail_batch(&self, batch: Vec<Box<dyn Job>>, reason: String) {
        for j in batch {
            j.finish(Err(StorageError::Commit {
                path: self.path.clone(),
                reason: reason.clone(),
            }));
        }
    }

    fn run_batch(&mut self, mut batch: Vec<Box<dyn Job>>) {
        let mut ctx = Ctx {
            prefix: self.prefix.clone(),
            events: Vec::new(),
            counts_changed: false,
            inserted: 0,
            inserted_bytes: 0,
            deleted: 0,
            vocab: self.vocab.clone(),
            fresh: Fresh::default(),
            vocab_reset: false,
            unindexed: Vec::new(),
        };
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            self.fail_batch(batch, e.to_string());
            return;
        }
        let t_apply = Instant::now();
        self.stages.batches += 1;
        self.stages.jobs += batch.len() as u64;
        self.stages.largest = self.stages.largest.max(batch.len());
        let mut results: Vec<Result<(), StorageError>> = Vec::with_capacity(batch.len());
        for job in batch.iter_mut() {
            let mark = ctx.events.len();
            let fresh_mark = ctx.fresh.mark();
            let unindexed_mark = ctx.unindexed.len();
            let (ins, bytes, del) = (ctx.inserted, ctx.inserted_bytes, ctx.deleted);
            let (changed, reset) = (ctx.counts_changed, ctx.vocab_reset);
            if let Err(e) = self
                .conn
                .prepare_cached("SAVEPOINT job")
                .and_then(|mut st| st.execute([]))
            {
                results.push(Err(e.into()));
                continue;
            }
            match job.apply(&self.conn, &mut ctx) {
                Ok(()) => {
                    let _ = self
                        .conn
                        .prepare_cached("RELEASE job")
                        .and_then(|mut st| st.execute([]));
                    results.push(Ok(()));
                }
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK TO job; RELEASE job");
                    ctx.events.truncate(mark);
                    ctx.inserted = ins;
                    ctx.inserted_bytes = bytes;
                    ctx.deleted = del;
                    ctx.counts_changed = changed;
                    ctx.vocab_reset = reset;
                    ctx.fresh.truncate(fresh_mark);
                    ctx.unindexed.truncate(unindexed_mark);
                    results.push(Err(e));
                }
            }
        }
        if let Err(e) = self.index_batch(&mut ctx) {
            // Without its words a stored message could not be found, so the
            // whole batch goes back and every caller hears of it (the SMTP
            // clients retry).
            let _ = self.conn.execute_batch("ROLLBACK");
            let reason = e.to_string();
            tracing::error!(db = %self.path.display(), error = %reason, "indexing a batch failed");
            self.fail_batch(batch, reason);
            return;
        }
        let t_prune = Instant::now();
        self.stages.apply += t_prune - t_apply;
        let mut pruned = 0;
        if ctx.inserted > 0 && self.opts.max_messages > 0 {
            // The totals row is O(1); the cutoff search in `prune_count`
            // walks `max` rows, so it runs only when pruning is due.
            let max = self.opts.max_messages;
            match counts(&self.conn, &self.prefix) {
                Ok((total, _)) if total > max + prune_slack(max) => {
                    match prune_count(&self.conn, &self.prefix, max) {
                        Ok(n) => {
                            pruned = n;
                            self.prune_due = false;
                        }
                        Err(e) => tracing::warn!(error = %e, "count pruning failed"),
                    }
                }
                Ok((total, _)) => self.prune_due |= total > max,
                Err(e) => tracing::warn!(error = %e, "count pruning failed"),
            }
        }
        let t_commit = Instant::now();
        self.stages.prune += t_commit - t_prune;
        let committed = self.conn.execute_batch("COMMIT");
        self.last_commit = t_commit.elapsed();
        self.stages.commit += self.last_commit;
        self.last_batch = Instant::now();
        if let Err(e) = committed {
            let _ = self.conn.execute_batch("ROLLBACK");
            let reason = e.to_string();
            tracing::error!(db = %self.path.display(), error = %reason, "batch commit failed");
            self.fail_batch(batch, reason);
            return;
        }
        // Readers may now see the new rows: make their words findable before
        // anyone is told the messages are stored.
        if ctx.vocab_reset {
            self.vocab.clear();
        }
        self.vocab.extend(ctx.fresh.take());
        // The counters follow what committed, whichever job wrote it; they
        // are bumped before any caller hears back, so `/api/v1/info` never
        // lags an acknowledged message.
        let c = &self.counters;
        c.accepted
            .fetch_add(ctx.inserted as u64, std::sync::atomic::Ordering::Relaxed);
        c.accepted_size
            .fetch_add(ctx.inserted_bytes, std::sync::atomic::Ordering::Relaxed);
        c.deleted.fetch_add(
            (ctx.deleted + pruned) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        for (j, r) in batch.into_iter().zip(results) {
            j.finish(r);
        }
        for e in ctx.events.drain(..) {
            self.publish(e);
        }
        if pruned > 0 {
            self.publish(Event::Prune);
        }
        if ctx.counts_changed || pruned > 0 {
            self.stats_due = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::insert::{Prepared, insert};
    use crate::storage::model::NewMessage;
    use crate::storage::rows::delete_rows;

    fn writer(dir: &std::path::Path) -> Writer {
        writer_keeping(dir, 0)
    }

    /// A writer whose store keeps at most `max_messages`.
    fn writer_keeping(dir: &std::path::Path, max_messages: u64) -> Writer {
        let path = dir.join("w.db");
        let mut conn = crate::storage::store::open_conn(&path, true).unwrap();
        crate::storage::schema::migrate(&mut conn, "").unwrap();
        let (events, _) = broadcast::channel(16);
        Writer::new(
            conn,
            path,
            String::new(),
            StoreOptions {
                max_messages,
                ..StoreOptions::default()
            },
            events,
            Arc::default(),
            Arc::default(),
        )
    }

    fn raw(subject: &str, body: &str) -> String {
        format!("From: a@example.com\r\nSubject: {subject}\r\n\r\n{body}\r\n")
    }

    fn prepared(subject: &str, body: &str) -> Prepared {
        Prepared::new(
            NewMessage {
                raw: raw(subject, body).into_bytes(),
                mail_from: "a@example.com".into(),
                rcpt_to: vec![],
                username: None,
            },
            3,
            &crate::storage::Tagging::default(),
        )
        .unwrap()
    }

    fn insert_job(subject: &str, body: &str) -> Box<dyn Job> {
        let p = prepared(subject, body);
        let (tx, _rx) = oneshot::channel();
        fn_job(move |c, ctx| insert(c, ctx, p), tx)
    }

    /// Deletes every message, as `Store::delete_all` does (words and
    /// vocabulary included), inside the batch.
    fn delete_all_job() -> Box<dyn Job> {
        let (tx, _rx) = oneshot::channel();
        fn_job(
            |c: &Connection, ctx: &mut Ctx| {
                let rows: Vec<i64> = c
                    .prepare("SELECT Seq FROM mailbox")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                delete_rows(c, "", &rows)?;
                c.execute("DELETE FROM vocab", [])?;
                ctx.vocab_reset = true;
                ctx.fresh.take();
                Ok(())
            },
            tx,
        )
    }

    fn matches(w: &Writer, word: &str) -> i64 {
        w.conn
            .query_row(
                "SELECT count(*) FROM words WHERE words MATCH ?1",
                params![word],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn subjects(w: &Writer) -> Vec<String> {
        w.conn
            .prepare("SELECT Subject FROM mailbox ORDER BY Seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Count pruning waits for the slack: keeping 20 (slack 2), the mailbox
    /// grows to 22; the batch that would make it 24 prunes it to 20, oldest
    /// first, words and counters included; a mailbox left over the limit is
    /// pruned to it once the writer has been idle.
    #[test]
    fn count_pruning_waits_for_the_slack_and_finishes_when_idle() {
        assert_eq!(
            (prune_slack(5), prune_slack(20), prune_slack(500)),
            (0, 2, 50)
        );
        assert_eq!(prune_slack(1_000_000), MAX_PRUNE_SLACK);
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer_keeping(dir.path(), 20);
        for i in 0..22 {
            w.run_batch(vec![insert_job(&format!("m{i}"), &format!("word{i}x"))]);
        }
        assert_eq!(subjects(&w).len(), 22, "within the slack: nothing pruned");
        w.run_batch(vec![
            insert_job("m22", "word22x"),
            insert_job("m23", "word23x"),
        ]);
        let want: Vec<String> = (4..24).map(|i| format!("m{i}")).collect();
        assert_eq!(subjects(&w), want);
        assert_eq!(
            matches(&w, "word3x"),
            0,
            "a pruned message's words went too"
        );
        assert_eq!(matches(&w, "word4x"), 1);
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        assert_eq!(w.counters.deleted.load(relaxed), 4);
        assert_eq!(counts(&w.conn, "").unwrap().0, 20);

        w.run_batch(vec![insert_job("m24", "word24x")]);
        assert_eq!(subjects(&w).len(), 21);
        // Idle since the last batch: housekeeping prunes to the limit.
        w.last_batch = Instant::now() - IDLE_PRUNE;
        assert!(w.next_deadline() <= Instant::now());
        w.housekeeping();
        let want: Vec<String> = (5..25).map(|i| format!("m{i}")).collect();
        assert_eq!(subjects(&w), want);
        assert_eq!(w.counters.deleted.load(relaxed), 5);
        assert!(!w.prune_due);
    }

    /// Words are indexed after every job of the batch has run: a message a
    /// later job deleted leaves nothing in the index, and after a delete-all
    /// the words of messages inserted in the same batch are remembered again
    /// (the old vocabulary no longer vouches for them).
    #[test]
    fn batch_indexing_skips_deleted_rows_and_relearns_words_after_delete_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.run_batch(vec![
            insert_job("first", "alphaword"),
            insert_job("second", "betaword"),
        ]);
        assert_eq!(matches(&w, "alphaword"), 1);
        assert!(w.vocab.contains("betaword"));

        w.run_batch(vec![
            insert_job("third", "gammaword"),
            delete_all_job(),
            insert_job("fourth", "betaword again"),
        ]);
        // The third message went with the delete-all: no index entry left.
        assert_eq!(matches(&w, "gammaword"), 0);
        assert_eq!(matches(&w, "alphaword"), 0);
        assert_eq!(matches(&w, "betaword"), 1);
        // "betaword" was known before the delete-all; it must be known (in
        // memory and in the table) after it too, since a message holds it.
        assert!(w.vocab.contains("betaword"));
        assert!(!w.vocab.contains("alphaword"));
        let persisted: i64 = w
            .conn
            .query_row(
                "SELECT count(*) FROM vocab WHERE term = 'betaword'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(persisted, 1);
        let total: i64 = w
            .conn
            .query_row("SELECT count(*) FROM mailbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 1);
    }

    /// The runtime counters (`/api/v1/info`) follow what committed, whatever
    /// job wrote it: two inserts count with their raw sizes; an insert whose
    /// job failed afterwards (rolled back to its savepoint) counts nothing.
    #[test]
    fn counters_follow_committed_inserts_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let doomed = prepared("doomed", "rolled back");
        let (tx, _rx) = oneshot::channel();
        let failing = fn_job(
            move |c, ctx: &mut Ctx| {
                insert(c, ctx, doomed)?;
                Err::<String, _>(StorageError::Invalid("fails after inserting".into()))
            },
            tx,
        );
        w.run_batch(vec![
            insert_job("a", "one"),
            failing,
            insert_job("b", "three"),
        ]);
        let total: i64 = w
            .conn
            .query_row("SELECT count(*) FROM mailbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 2);
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        assert_eq!(w.counters.accepted.load(relaxed), 2);
        assert_eq!(
            w.counters.accepted_size.load(relaxed),
            (raw("a", "one").len() + raw("b", "three").len()) as u64
        );
        assert_eq!(w.counters.deleted.load(relaxed), 0);
    }
}
