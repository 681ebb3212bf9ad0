//! Turning a received message into rows: [`Prepared`] does the CPU work
//! (parse, Bcc from the envelope, compression, search texts) off the writer
//! thread, and [`insert`] writes the rows inside a writer batch.

use std::io::{Seek, Write};

use rusqlite::{Connection, params};

use super::error::StorageError;
use super::index;
use super::model::{
    Event, Head, MessageSummary, NewMessage, SpooledMessage, new_id, now_ms, rfc3339_ms, spool,
};
use super::parse::{self, Parsed};
use super::rows::add_tags;
use super::search::clean;
use super::store::Store;
use super::tagging::Tagging;
use super::writer::Ctx;

impl Store {
    /// Stores a message and returns its new ID once the row is durable.
    ///
    /// The one way in for a message (SMTP through `smtp::Deliver`, and the
    /// send API). The `/api/v1/info` counters are bumped by the writer when
    /// the batch commits, from what [`insert`] recorded in the batch, so no
    /// caller can store a message without counting it.
    pub async fn insert(&self, msg: NewMessage) -> Result<String, StorageError> {
        let level = self.options().compression_level;
        let tagging = self.options().tagging.clone();
        // Parsing and compression run outside the writer so they spread over
        // cores; large messages go to the blocking pool so they do not stall
        // the async runtime.
        let prepared = if msg.raw.len() > 256 * 1024 {
            tokio::task::spawn_blocking(move || Prepared::new(msg, level, &tagging))
                .await
                .map_err(|e| StorageError::Task(e.to_string()))??
        } else {
            Prepared::new(msg, level, &tagging)?
        };
        self.store_prepared(prepared).await
    }

    /// Stores a message whose raw bytes are spooled (the send API), holding
    /// only a chunk of them at a time: the summary is parsed from
    /// `msg.summary`, the raw bytes are compressed from spool to spool and
    /// written into the row in chunks. Otherwise the same path as
    /// [`Store::insert`].
    pub async fn insert_spooled(&self, msg: SpooledMessage) -> Result<String, StorageError> {
        let level = self.options().compression_level;
        let tagging = self.options().tagging.clone();
        let prepared = tokio::task::spawn_blocking(move || Prepared::spooled(msg, level, &tagging))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??;
        self.store_prepared(prepared).await
    }
}

impl Store {
    /// Writes a prepared message with the store's options (message dates,
    /// duplicates), then applies the tag rules; the new ID, or an empty one
    /// for a duplicate that was dropped.
    async fn store_prepared(&self, mut prepared: Prepared) -> Result<String, StorageError> {
        let opts = self.options();
        if opts.use_message_dates
            && let Some(date) = prepared.parsed.date_ms
        {
            prepared.created = date;
        }
        prepared.skip_duplicate = opts.ignore_duplicate_ids;
        // With tag rules the `new` event waits for them, so the websocket
        // (the UI, webhooks) sees the message with its rule tags: the rules'
        // searches need the message committed, and the writer publishes its
        // events at commit.
        let hold_event = !opts.tagging.rules.is_empty();
        let (id, held) = self
            .write(move |conn, ctx| {
                let id = insert(conn, ctx, prepared)?;
                let held = match ctx.events.last() {
                    Some(Event::New(m)) if hold_event && m.head.id == id => ctx.events.pop(),
                    _ => None,
                };
                Ok((id, held))
            })
            .await?;
        if id.is_empty() {
            self.note_ignored();
            return Ok(id);
        }
        let tagged = self.apply_tag_rules(&id).await;
        if let Some(Event::New(mut m)) = held {
            if let Ok(tags) = &tagged {
                for t in tags {
                    if !m.head.tags.iter().any(|x| x.eq_ignore_ascii_case(t)) {
                        m.head.tags.push(t.clone());
                    }
                }
                m.head.tags.sort_by_key(|t| t.to_lowercase());
            }
            self.publish(Event::New(m));
        }
        tagged?;
        Ok(id)
    }

    /// Tags a new message with every rule (`MP_TAG`, `MP_TAGS_CONFIG`)
    /// whose search matches it. Runs once the message is committed, so
    /// the search sees it exactly as the API would (its words are indexed
    /// at commit).
    /// Returns the rules' tags as stored.
    async fn apply_tag_rules(&self, id: &str) -> Result<Vec<String>, StorageError> {
        let rules = self.options().tagging.rules.clone();
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        let vocab = self.vocab();
        let id = id.to_string();
        let (rowid, tags) = self
            .read(move |c, pre| {
                let (rowid, _) = super::read::resolve(c, pre, &id)?;
                let mut tags = Vec::new();
                for r in &rules {
                    if super::read::matches(c, pre, &r.query, &vocab, rowid)? {
                        tags.extend(r.tags.iter().cloned());
                    }
                }
                Ok((rowid, tags))
            })
            .await?;
        if tags.is_empty() {
            return Ok(tags);
        }
        self.write(move |c, ctx| add_tags(c, &ctx.prefix, rowid, &tags))
            .await
    }
}

/// The compressed raw message of a [`Prepared`].
enum Compressed {
    /// In memory (SMTP, where the raw copy is in memory anyway).
    Bytes(Vec<u8>),
    /// In a spool (the send API), with its length.
    Spooled(tempfile::SpooledTempFile, u64),
}

/// A message parsed and compressed, ready for the writer.
pub struct Prepared {
    parsed: Parsed,
    compressed: Compressed,
    size: i64,
    username: String,
    created: i64,
    search: index::Prepped,
    /// Drop the message if its Message-ID is stored already.
    skip_duplicate: bool,
}

impl Prepared {
    /// Parses and compresses `msg` (CPU work kept off the writer thread);
    /// its automatic tags follow `tagging`.
    pub fn new(
        mut msg: NewMessage,
        level: i32,
        tagging: &Tagging,
    ) -> Result<Prepared, StorageError> {
        let mut parsed = parse::parse(&msg.raw);
        parsed.tags = tagging.tags(&parsed, msg.username.as_deref());
        if let Some(bcc) = envelope_bcc(&mut parsed, &msg.rcpt_to) {
            let mut raw = bcc;
            raw.extend_from_slice(&msg.raw);
            msg.raw = raw;
        }
        let compressed = super::compress::compress(&msg.raw, level)?;
        let search = search_texts(&parsed);
        Ok(Prepared {
            search,
            parsed,
            size: msg.raw.len() as i64,
            compressed: Compressed::Bytes(compressed),
            username: msg.username.unwrap_or_default(),
            created: now_ms(),
            skip_duplicate: false,
        })
    }

    /// Parses `msg.summary` and compresses the spooled raw bytes into
    /// another spool, a chunk at a time (the zstd stream keeps its window,
    /// 8 MiB at most at the levels used here, not the message).
    pub fn spooled(
        mut msg: SpooledMessage,
        level: i32,
        tagging: &Tagging,
    ) -> Result<Prepared, StorageError> {
        let mut parsed = parse::parse(&msg.summary);
        parsed.tags = tagging.tags(&parsed, msg.username.as_deref());
        drop(std::mem::take(&mut msg.summary));
        let bcc = envelope_bcc(&mut parsed, &msg.rcpt_to).unwrap_or_default();
        let mut enc = super::compress::Encoder::new(spool(), level)?;
        enc.write_all(&bcc)?;
        msg.raw.rewind()?;
        std::io::copy(&mut msg.raw, &mut enc)?;
        drop(msg.raw);
        let mut out = enc.finish()?;
        let len = out.stream_position()?;
        out.rewind()?;
        let search = search_texts(&parsed);
        Ok(Prepared {
            search,
            parsed,
            size: (bcc.len() as u64 + msg.raw_len) as i64,
            compressed: Compressed::Spooled(out, len),
            username: msg.username.unwrap_or_default(),
            created: now_ms(),
            skip_duplicate: false,
        })
    }
}

/// Like Mailpit: envelope recipients the headers do not name (e.g.
/// frameworks that leave Bcc out of the headers) are recorded as Bcc, in
/// `parsed` and, when the message has no Bcc header, in a `Bcc:` header
/// line returned to put in front of the raw message.
fn envelope_bcc(parsed: &mut Parsed, rcpt_to: &[String]) -> Option<Vec<u8>> {
    let known: Vec<String> = parsed
        .to
        .iter()
        .chain(&parsed.cc)
        .chain(&parsed.bcc)
        .map(|a| a.address.to_lowercase())
        .collect();
    let mut missing: Vec<String> = Vec::new();
    for r in rcpt_to {
        let r = r.trim().trim_matches(|c| c == '<' || c == '>');
        let l = r.to_lowercase();
        if !r.is_empty() && !known.contains(&l) && !missing.iter().any(|m| m.to_lowercase() == l) {
            missing.push(r.to_string());
        }
    }
    if missing.is_empty() {
        return None;
    }
    let header = parsed
        .bcc
        .is_empty()
        .then(|| format!("Bcc: {}\r\n", missing.join(", ")).into_bytes());
    parsed
        .bcc
        .extend(missing.into_iter().map(|address| parse::Address {
            name: String::new(),
            address,
        }));
    header
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

/// Inserts one prepared message inside a writer batch; returns its ID.
pub fn insert(conn: &Connection, ctx: &mut Ctx, p: Prepared) -> Result<String, StorageError> {
    let pre = &ctx.prefix;
    let pp = &p.parsed;
    if p.skip_duplicate && !pp.message_id.is_empty() {
        let stored = conn
            .prepare_cached(&format!(
                "SELECT 1 FROM {pre}mailbox WHERE MessageID = ?1 LIMIT 1"
            ))?
            .exists(params![pp.message_id])?;
        if stored {
            tracing::debug!(message_id = %pp.message_id, "duplicate Message-ID: message dropped");
            return Ok(String::new());
        }
    }
    let id = new_id();
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
    match p.compressed {
        Compressed::Bytes(bytes) => {
            conn.prepare_cached(&format!(
                "INSERT INTO {pre}mailbox_data (id, Raw) VALUES (?1, ?2)"
            ))?
            .execute(params![rowid, bytes])?;
        }
        Compressed::Spooled(mut file, len) => {
            // A zeroblob row, then written in place: binding the whole blob
            // would make SQLite copy it (twice, with the record it builds).
            conn.prepare_cached(&format!(
                "INSERT INTO {pre}mailbox_data (id, Raw) VALUES (?1, zeroblob(?2))"
            ))?
            .execute(params![rowid, len as i64])?;
            let table = format!("{pre}mailbox_data");
            let mut blob =
                conn.blob_open(rusqlite::MAIN_DB, table.as_str(), "Raw", rowid, false)?;
            std::io::copy(&mut file, &mut blob)?;
        }
    }
    index::store_text(conn, pre, rowid, &p.search)?;
    ctx.unindexed.push((rowid, p.search));
    let mut tags: Vec<String> = Vec::new();
    for t in &pp.tags {
        let t = parse::clean_tag(t);
        if !t.is_empty() && !tags.iter().any(|x| x.eq_ignore_ascii_case(&t)) {
            tags.push(t);
        }
    }
    let tags = add_tags(conn, pre, rowid, &tags)?;
    ctx.inserted += 1;
    ctx.inserted_bytes += p.size as u64;
    ctx.counts_changed = true;
    let summary = MessageSummary {
        head: Head {
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
        created: rfc3339_ms(p.created),
        attachments: pp.attachments,
        snippet: pp.snippet.clone(),
    };
    ctx.events.push(Event::New(Box::new(summary)));
    Ok(id)
}

/// JSON for an address column (serialising plain structs cannot fail).
fn j<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}
