//! The single writer: group commit of everything that changes the db.
//!
//! Jobs arrive on a channel. The writer takes the first, drains whatever else
//! is already queued, runs them all in one transaction (each inside its own
//! savepoint so one failure does not sink the batch), commits once, and only
//! then answers each caller and publishes their events. Pruning by count
//! happens in the same transaction as the inserts that made it necessary;
//! pruning by age runs on a timer.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio::sync::{broadcast, oneshot};

use std::sync::Arc;

use super::index::{self, Fresh, Vocab};
use super::parse::{self, Parsed};
use super::search::clean;
use super::{Event, NewMessage, StorageError, StoreOptions, new_id, now_ms};

/// Most jobs committed in one transaction; bounds the latency of a batch.
const MAX_BATCH: usize = 2000;
/// Longest a batch waits for more jobs after its first (see [`Writer::gather`]).
const MAX_LINGER: Duration = Duration::from_millis(3);
/// Mailpit sends at most four `stats` events a second.
const STATS_INTERVAL: Duration = Duration::from_millis(250);
/// How often messages past `max_age` are looked for.
const AGE_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
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

/// A message parsed and compressed, ready for the writer.
pub struct Prepared {
    parsed: Parsed,
    compressed: Vec<u8>,
    size: i64,
    username: String,
    created: i64,
    extra_tags: Vec<String>,
    search: index::Prepped,
}

impl Prepared {
    /// Parses and compresses `msg` (CPU work kept off the writer thread).
    pub fn new(mut msg: NewMessage, level: i32) -> Result<Prepared, StorageError> {
        let mut parsed = parse::parse(&msg.raw);
        // Like Mailpit: envelope recipients the headers do not name (e.g.
        // frameworks that leave Bcc out of the headers) are recorded as Bcc.
        let known: Vec<String> = parsed
            .to
            .iter()
            .chain(&parsed.cc)
            .chain(&parsed.bcc)
            .map(|a| a.address.to_lowercase())
            .collect();
        let mut missing: Vec<String> = Vec::new();
        for r in &msg.rcpt_to {
            let r = r.trim().trim_matches(|c| c == '<' || c == '>');
            let l = r.to_lowercase();
            if !r.is_empty()
                && !known.contains(&l)
                && !missing.iter().any(|m| m.to_lowercase() == l)
            {
                missing.push(r.to_string());
            }
        }
        if !missing.is_empty() {
            if parsed.bcc.is_empty() {
                let mut raw = format!("Bcc: {}\r\n", missing.join(", ")).into_bytes();
                raw.extend_from_slice(&msg.raw);
                msg.raw = raw;
            }
            parsed
                .bcc
                .extend(missing.into_iter().map(|address| parse::Address {
                    name: String::new(),
                    address,
                }));
        }
        let compressed = zstd::bulk::compress(&msg.raw, level)?;
        let search = search_texts(&parsed);
        Ok(Prepared {
            search,
            parsed,
            size: msg.raw.len() as i64,
            compressed,
            username: msg.username.unwrap_or_default(),
            created: now_ms(),
            extra_tags: Vec::new(),
        })
    }

    /// Raw size in bytes.
    pub fn size(&self) -> u64 {
        self.size as u64
    }

    /// Adds tags on top of those from `X-Tags` (e.g. from the send API).
    pub fn with_tags(mut self, tags: &[String]) -> Self {
        self.extra_tags.extend(tags.iter().cloned());
        self
    }
}

/// The cleaned and encoded search texts of a message (CPU work kept off
/// the writer thread, like parsing and compression).
fn search_texts(pp: &Parsed) -> index::Prepped {
    let from_text = addrs_text(std::slice::from_ref(&pp.from));
    let (to, cc, bcc, reply_to) = (
        addrs_text(&pp.to),
        addrs_text(&pp.cc),
        addrs_text(&pp.bcc),
        addrs_text(&pp.reply_to),
    );
    let all = clean(&format!(
        "{} {from_text} {to} {cc} {bcc} {reply_to} {} {}",
        pp.subject, pp.message_id, pp.body_text
    ));
    index::prepare([
        clean(&pp.subject),
        clean(&from_text),
        clean(&to),
        clean(&cc),
        clean(&bcc),
        clean(&reply_to),
        clean(&pp.message_id),
        all,
    ])
}

fn addrs_text(a: &[parse::Address]) -> String {
    a.iter()
        .map(|a| {
            if a.name.is_empty() {
                format!("<{}>", a.address)
            } else {
                format!("{} <{}>", a.name, a.address)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts one prepared message; returns its ID.
pub fn insert(conn: &Connection, ctx: &mut Ctx, p: Prepared) -> Result<String, StorageError> {
    let pre = &ctx.prefix;
    let id = new_id();
    let pp = &p.parsed;
    conn.prepare_cached(&format!(
        "INSERT INTO {pre}mailbox (ID, MessageID, Subject, FromJSON, ToJSON, CcJSON, BccJSON, ReplyToJSON, \
         Size, Attachments, Inline, Snippet, Read, Created, Username) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, ?13, ?14)"
    ))?
    .execute(params![
        id,
        pp.message_id,
        pp.subject,
        j(&pp.from),
        j(&pp.to),
        j(&pp.cc),
        j(&pp.bcc),
        j(&pp.reply_to),
        p.size,
        pp.attachments,
        pp.inline,
        pp.snippet,
        p.created,
        p.username,
    ])?;
    let rowid = conn.last_insert_rowid();
    conn.prepare_cached(&format!(
        "INSERT INTO {pre}mailbox_data (id, Raw) VALUES (?1, ?2)"
    ))?
    .execute(params![rowid, p.compressed])?;
    index::store_text(conn, pre, rowid, &p.search)?;
    ctx.unindexed.push((rowid, p.search));
    let mut tags: Vec<String> = Vec::new();
    for t in pp.tags.iter().chain(p.extra_tags.iter()) {
        let t = parse::clean_tag(t);
        if !t.is_empty() && !tags.iter().any(|x| x.eq_ignore_ascii_case(&t)) {
            tags.push(t);
        }
    }
    let tags = add_tags(conn, pre, rowid, &tags)?;
    ctx.inserted += 1;
    ctx.counts_changed = true;
    let summary = super::query::MessageSummary {
        head: super::query::Head {
            id: id.clone(),
            message_id: pp.message_id.clone(),
            read: false,
            from: pp.from.clone(),
            to: pp.to.clone(),
            cc: pp.cc.clone(),
            bcc: pp.bcc.clone(),
            reply_to: pp.reply_to.clone(),
            subject: pp.subject.clone(),
            username: p.username.clone(),
            tags,
            size: p.size as u64,
        },
        created: super::query::rfc3339_ms(p.created),
        attachments: pp.attachments,
        snippet: pp.snippet.clone(),
    };
    ctx.events.push(Event {
        kind: "new",
        data: serde_json::to_value(&summary).unwrap_or(serde_json::Value::Null),
    });
    Ok(id)
}

/// JSON for an address column (serialising plain structs cannot fail).
fn j<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Attaches tags (created if new) to message row `rowid`; returns the tag
/// names as stored (existing tags keep their original capitalisation).
pub fn add_tags(
    conn: &Connection,
    pre: &str,
    rowid: i64,
    tags: &[String],
) -> Result<Vec<String>, StorageError> {
    let mut names = Vec::with_capacity(tags.len());
    for t in tags {
        conn.prepare_cached(&format!(
            "INSERT OR IGNORE INTO {pre}tags (Name) VALUES (?1)"
        ))?
        .execute(params![t])?;
        let (tid, name): (i64, String) = conn
            .prepare_cached(&format!("SELECT id, Name FROM {pre}tags WHERE Name = ?1"))?
            .query_row(params![t], |r| Ok((r.get(0)?, r.get(1)?)))?;
        conn.prepare_cached(&format!(
            "INSERT OR IGNORE INTO {pre}message_tags (msg, tag) VALUES (?1, ?2)"
        ))?
        .execute(params![rowid, tid])?;
        names.push(name);
    }
    Ok(names)
}

/// Deletes the messages with these row ids from every table; returns their
/// IDs. Unused tags are removed too.
pub fn delete_rows(
    conn: &Connection,
    pre: &str,
    rows: &[i64],
) -> Result<Vec<String>, StorageError> {
    let mut ids = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(500) {
        let ph = vec!["?"; chunk.len()].join(",");
        let args = rusqlite::params_from_iter(chunk.iter());
        let mut st = conn.prepare(&format!(
            "DELETE FROM {pre}mailbox WHERE Seq IN ({ph}) RETURNING ID"
        ))?;
        let got = st
            .query_map(args, |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        ids.extend(got);
        for table in ["mailbox_data", "search_text", "words", "fields"] {
            let col = if matches!(table, "words" | "fields") {
                "rowid"
            } else {
                "id"
            };
            conn.execute(
                &format!("DELETE FROM {pre}{table} WHERE {col} IN ({ph})"),
                rusqlite::params_from_iter(chunk.iter()),
            )?;
        }
        conn.execute(
            &format!("DELETE FROM {pre}message_tags WHERE msg IN ({ph})"),
            rusqlite::params_from_iter(chunk.iter()),
        )?;
    }
    if !rows.is_empty() {
        prune_unused_tags(conn, pre)?;
    }
    Ok(ids)
}

/// Removes tags no message uses any more.
pub fn prune_unused_tags(conn: &Connection, pre: &str) -> Result<(), StorageError> {
    conn.execute(
        &format!(
            "DELETE FROM {pre}tags WHERE NOT EXISTS \
             (SELECT 1 FROM {pre}message_tags mt WHERE mt.tag = {pre}tags.id)"
        ),
        [],
    )?;
    Ok(())
}

/// Deletes the oldest messages beyond `max`; returns how many went.
///
/// This runs in every batch once the mailbox is full (Mailpit's default
/// keeps 500), so it deletes by row-id range with cached statements instead
/// of building an `IN (...)` list per table; only the FTS5 tables, which
/// have no cheap range delete, are cleared row by row.
fn prune_count(conn: &Connection, pre: &str, max: u64) -> Result<usize, StorageError> {
    let cutoff: Option<i64> = conn
        .prepare_cached(&format!(
            "SELECT Seq FROM {pre}mailbox ORDER BY Seq DESC LIMIT 1 OFFSET ?1"
        ))?
        .query_row(params![max as i64 - 1], |r| r.get(0))
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let Some(cutoff) = cutoff else { return Ok(0) };
    let rows: Vec<i64> = conn
        .prepare_cached(&format!("SELECT Seq FROM {pre}mailbox WHERE Seq < ?1"))?
        .query_map(params![cutoff], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        return Ok(0);
    }
    let gone = conn
        .prepare_cached(&format!("DELETE FROM {pre}mailbox WHERE Seq < ?1"))?
        .execute(params![cutoff])?;
    for table in ["mailbox_data", "search_text"] {
        conn.prepare_cached(&format!("DELETE FROM {pre}{table} WHERE id < ?1"))?
            .execute(params![cutoff])?;
    }
    for table in ["words", "fields"] {
        let mut st = conn.prepare_cached(&format!("DELETE FROM {pre}{table} WHERE rowid = ?1"))?;
        for r in &rows {
            st.execute(params![r])?;
        }
    }
    let untagged = conn
        .prepare_cached(&format!("DELETE FROM {pre}message_tags WHERE msg < ?1"))?
        .execute(params![cutoff])?;
    // Only a message that had tags can leave a tag unused.
    if untagged > 0 {
        prune_unused_tags(conn, pre)?;
    }
    Ok(gone)
}

/// Deletes messages received before `cutoff_ms`; returns how many went.
fn prune_age(conn: &Connection, pre: &str, cutoff_ms: i64) -> Result<usize, StorageError> {
    let rows: Vec<i64> = conn
        .prepare_cached(&format!("SELECT Seq FROM {pre}mailbox WHERE Created < ?1"))?
        .query_map(params![cutoff_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(delete_rows(conn, pre, &rows)?.len())
}

/// Reads the O(1) totals kept by triggers: (total, unread).
pub fn counts(conn: &Connection, pre: &str) -> Result<(u64, u64), StorageError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT Total, Unread FROM {pre}counts WHERE k = 0"
        ))?
        .query_row([], |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        })?)
}

/// The writer thread's state.
pub struct Writer {
    conn: Connection,
    path: PathBuf,
    prefix: String,
    opts: StoreOptions,
    events: broadcast::Sender<Event>,
    counters: std::sync::Arc<super::Counters>,
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
}

impl Writer {
    /// Wraps the write connection.
    pub fn new(
        conn: Connection,
        path: PathBuf,
        prefix: String,
        opts: StoreOptions,
        events: broadcast::Sender<Event>,
        counters: std::sync::Arc<super::Counters>,
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
                    self.publish(Event {
                        kind: "prune",
                        data: serde_json::Value::Null,
                    });
                    self.stats_due = true;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "age pruning failed"),
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
            self.publish(Event {
                kind: "stats",
                data: serde_json::json!({
                    "Total": total,
                    "Unread": unread,
                    "Version": env!("CARGO_PKG_VERSION"),
                }),
            });
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
            let (ins, changed, reset) = (ctx.inserted, ctx.counts_changed, ctx.vocab_reset);
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
            match prune_count(&self.conn, &self.prefix, self.opts.max_messages) {
                Ok(n) => pruned = n,
                Err(e) => tracing::warn!(error = %e, "count pruning failed"),
            }
        }
        let t_commit = Instant::now();
        self.stages.prune += t_commit - t_prune;
        let committed = self.conn.execute_batch("COMMIT");
        self.last_commit = t_commit.elapsed();
        self.stages.commit += self.last_commit;
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
        self.counters.deleted.fetch_add(
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
            self.publish(Event {
                kind: "prune",
                data: serde_json::Value::Null,
            });
        }
        if ctx.counts_changed || pruned > 0 {
            self.stats_due = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &std::path::Path) -> Writer {
        let path = dir.join("w.db");
        let mut conn = super::super::open_conn(&path).unwrap();
        super::super::schema::migrate(&mut conn, "").unwrap();
        let (events, _) = broadcast::channel(16);
        Writer::new(
            conn,
            path,
            String::new(),
            StoreOptions {
                max_messages: 0,
                ..StoreOptions::default()
            },
            events,
            Arc::default(),
            Arc::default(),
        )
    }

    fn insert_job(subject: &str, body: &str) -> Box<dyn Job> {
        let raw = format!("From: a@example.com\r\nSubject: {subject}\r\n\r\n{body}\r\n");
        let p = Prepared::new(
            NewMessage {
                raw: raw.into_bytes(),
                mail_from: "a@example.com".into(),
                rcpt_to: vec![],
                username: None,
            },
            3,
        )
        .unwrap();
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
}
