//! What the API reads: listing, searching (the SQL plan over the word
//! index), fetching summaries, raw bytes, headers and parts. Everything here
//! runs on pooled read connections and never writes; the lookups at the top
//! (`resolve`, `search_rows`, ...) are shared with `mutate.rs`.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter, types::Value};

use super::error::StorageError;
use super::index::Vocab;
use super::model::{Head, MessageSummary, MessagesPage, PartBody, PartData, rfc3339_ms};
use super::outline::{self, RawReader};
use super::parse;
use super::rows::counts;
use super::search::{self, Compiled};
use super::store::Store;

/// Most messages one page may hold; bigger limits are clamped, so a huge
/// `limit` cannot make one request read the whole db into memory.
pub const MAX_PAGE: u64 = 5000;

/// The columns [`summary_row`] reads, from `{p}mailbox m`.
fn summary_cols(pre: &str) -> String {
    format!(
        "m.Seq, m.ID, m.MessageID, m.Subject, m.FromJSON, m.ToJSON, m.CcJSON, m.BccJSON, \
         m.ReplyToJSON, m.Size, m.Attachments, m.Snippet, m.Read, m.Created, m.Username, \
         (SELECT group_concat(Name, char(31)) FROM (SELECT t.Name AS Name FROM {pre}message_tags mt \
          JOIN {pre}tags t ON t.id = mt.tag WHERE mt.msg = m.Seq ORDER BY t.Name COLLATE NOCASE))"
    )
}

pub(super) fn summary_select(pre: &str) -> String {
    format!("SELECT {} FROM {pre}mailbox m", summary_cols(pre))
}

/// Below this many rows, the summary-row conditions of a search are
/// "selective": walking those rows and probing the index per row is cheaper
/// than evaluating a text term over the whole index.
const SELECTIVE_ROWS: i64 = 1000;

/// A search as SQL: `SELECT ... FROM {from} WHERE {filter} ORDER BY {order}`.
struct SearchSql {
    from: String,
    filter: String,
    args: Vec<Value>,
    order: String,
    /// Set when one FTS5 table alone decides the match (table, expression):
    /// counts then come from the index without touching the mailbox.
    index_only: Option<(String, String)>,
    /// Set when the search is one `tag:` term: counted from the tag index.
    tag_only: Option<String>,
}

fn search_sql(conn: &Connection, pre: &str, comp: &Compiled) -> Result<SearchSql, StorageError> {
    let selective = if comp.fts.is_empty() || comp.conds.is_empty() {
        false
    } else {
        let n: i64 = conn
            .prepare(&format!(
                "SELECT count(*) FROM (SELECT 1 FROM {pre}mailbox m WHERE {} LIMIT {})",
                comp.conds.join(" AND "),
                SELECTIVE_ROWS + 1
            ))?
            .query_row(params_from_iter(comp.args.iter()), |r| r.get(0))?;
        n <= SELECTIVE_ROWS
    };
    let plan = comp.plan(pre, selective);
    let mut conds = plan.conds;
    let mut args = plan.args;
    let (from, order, index_only) = match plan.driver {
        Some((table, expr)) => {
            let t = format!("{pre}{table}");
            conds.insert(0, format!("{t} MATCH ?"));
            args.insert(0, Value::Text(expr.clone()));
            let only = (conds.len() == 1).then(|| (t.clone(), expr));
            (
                // CROSS JOIN keeps FTS5 outside: it yields matches newest
                // first and the page stops at `limit`.
                format!("{t} CROSS JOIN {pre}mailbox m ON m.Seq = {t}.rowid"),
                format!("{t}.rowid DESC"),
                only,
            )
        }
        None => (format!("{pre}mailbox m"), "m.Seq DESC".to_string(), None),
    };
    let filter = if conds.is_empty() {
        "1".to_string()
    } else {
        conds.join(" AND ")
    };
    Ok(SearchSql {
        from,
        filter,
        args,
        order,
        index_only,
        tag_only: comp.tag_only().map(str::to_string),
    })
}

/// Matches and unread matches of a search.
fn search_counts(
    conn: &Connection,
    pre: &str,
    q: &SearchSql,
    unread_all: u64,
    total: u64,
) -> Result<(u64, u64), StorageError> {
    // (matched count SQL, per-row probe SQL for `m`), both taking ?1.
    let (count_sql, probe_in, probe_row, arg) = if let Some((t, expr)) = &q.index_only {
        (
            format!("SELECT count(*) FROM {t} WHERE {t} MATCH ?1"),
            format!("m.Seq IN (SELECT rowid FROM {t} WHERE {t} MATCH ?1)"),
            format!("EXISTS (SELECT 1 FROM {t} WHERE {t} MATCH ?1 AND rowid = m.Seq)"),
            expr.clone(),
        )
    } else if let Some(tag) = &q.tag_only {
        let sub = format!(
            "SELECT mt.msg FROM {pre}message_tags mt JOIN {pre}tags t ON t.id = mt.tag WHERE t.Name = ?1"
        );
        (
            format!("SELECT count(*) FROM ({sub})"),
            format!("m.Seq IN ({sub})"),
            format!(
                "EXISTS (SELECT 1 FROM {pre}message_tags mt JOIN {pre}tags t ON t.id = mt.tag \
                 WHERE mt.msg = m.Seq AND t.Name = ?1)"
            ),
            tag.clone(),
        )
    } else {
        (String::new(), String::new(), String::new(), String::new())
    };
    if !count_sql.is_empty() {
        let matched: i64 = conn
            .prepare_cached(&count_sql)?
            .query_row(params![arg], |r| r.get(0))?;
        // Count matches on whichever side of the read flag is smaller (the
        // read-flag index walks it); the other side follows by subtraction.
        // A small side probes row by row instead of listing every match.
        let read_all = total.saturating_sub(unread_all);
        let (side, size) = if unread_all <= read_all {
            (0, unread_all)
        } else {
            (1, read_all)
        };
        let probe = if size <= SELECTIVE_ROWS as u64 {
            probe_row
        } else {
            probe_in
        };
        let n: i64 = conn
            .prepare_cached(&format!(
                "SELECT count(*) FROM {pre}mailbox m INDEXED BY {pre}mailbox_read \
                 WHERE m.Read = ?2 AND {probe}"
            ))?
            .query_row(params![arg, side], |r| r.get(0))?;
        let unread = if side == 0 { n } else { matched - n };
        return Ok((matched.max(0) as u64, unread.max(0) as u64));
    }
    let (matched, unread): (i64, Option<i64>) = conn
        .prepare(&format!(
            "SELECT count(*), sum(m.Read = 0) FROM {} WHERE {}",
            q.from, q.filter
        ))?
        .query_row(params_from_iter(q.args.iter()), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok((matched.max(0) as u64, unread.unwrap_or(0).max(0) as u64))
}

fn from_json<T: serde::de::DeserializeOwned + Default>(s: &str) -> T {
    serde_json::from_str(s).unwrap_or_default()
}

pub(super) fn summary_row(r: &Row<'_>) -> rusqlite::Result<MessageSummary> {
    let tags: Option<String> = r.get(15)?;
    Ok(MessageSummary {
        head: Head {
            id: r.get(1)?,
            message_id: r.get(2)?,
            subject: r.get(3)?,
            from: from_json(&r.get::<_, String>(4)?),
            to: from_json(&r.get::<_, String>(5)?),
            cc: from_json(&r.get::<_, String>(6)?),
            bcc: from_json(&r.get::<_, String>(7)?),
            reply_to: from_json(&r.get::<_, String>(8)?),
            size: r.get::<_, i64>(9)?.max(0) as u64,
            read: r.get::<_, i64>(12)? != 0,
            username: r.get(14)?,
            tags: tags
                .map(|t| t.split('\u{1f}').map(str::to_string).collect())
                .unwrap_or_default(),
        },
        attachments: r.get(10)?,
        snippet: r.get(11)?,
        created: rfc3339_ms(r.get(13)?),
    })
}

/// The page of `messages` from `start`, with the mailbox's (total, unread)
/// and those of what the page was chosen from (the same for a plain
/// listing, the matches for a search), as Mailpit's list and search answer.
fn page(
    c: &Connection,
    pre: &str,
    (total, unread): (u64, u64),
    (matched, matched_unread): (u64, u64),
    start: u64,
    messages: Vec<MessageSummary>,
) -> Result<MessagesPage, StorageError> {
    Ok(MessagesPage {
        total,
        unread,
        count: messages.len() as u64,
        messages_count: matched,
        messages_unread: matched_unread,
        start,
        tags: all_tags(c, pre)?,
        messages,
    })
}

pub(super) fn all_tags(conn: &Connection, pre: &str) -> Result<Vec<String>, StorageError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT Name FROM {pre}tags ORDER BY Name COLLATE NOCASE"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Finds the row id of message `id` (`latest` = newest).
pub(super) fn resolve(
    conn: &Connection,
    pre: &str,
    id: &str,
) -> Result<(i64, String), StorageError> {
    let r = if id == "latest" {
        conn.prepare_cached(&format!(
            "SELECT Seq, ID FROM {pre}mailbox ORDER BY Seq DESC LIMIT 1"
        ))?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
    } else {
        conn.prepare_cached(&format!("SELECT Seq, ID FROM {pre}mailbox WHERE ID = ?1"))?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
    };
    r.ok_or_else(|| StorageError::NotFound(id.to_string()))
}

pub(super) fn raw_of(
    conn: &Connection,
    pre: &str,
    rowid: i64,
    id: &str,
) -> Result<Vec<u8>, StorageError> {
    let blob: Vec<u8> = conn
        .prepare_cached(&format!("SELECT Raw FROM {pre}mailbox_data WHERE id = ?1"))?
        .query_row(params![rowid], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StorageError::NotFound(id.to_string()))?;
    Ok(zstd::stream::decode_all(&blob[..])?)
}

/// Copies message `rowid`'s compressed copy into a spool, a page at a time
/// (SQLite's incremental blob I/O): the read connection is free again as
/// soon as the copy is made, however slowly the caller then reads, and
/// nothing holds the whole blob.
pub(super) fn compressed_of(
    conn: &Connection,
    pre: &str,
    rowid: i64,
    id: &str,
) -> Result<tempfile::SpooledTempFile, StorageError> {
    let exists = conn
        .prepare_cached(&format!("SELECT 1 FROM {pre}mailbox_data WHERE id = ?1"))?
        .query_row(params![rowid], |_| Ok(()))
        .optional()?;
    if exists.is_none() {
        return Err(StorageError::NotFound(id.to_string()));
    }
    let table = format!("{pre}mailbox_data");
    let mut blob = conn.blob_open(rusqlite::MAIN_DB, table.as_str(), "Raw", rowid, true)?;
    let mut spooled = super::model::spool();
    std::io::copy(&mut blob, &mut spooled)?;
    std::io::Seek::rewind(&mut spooled)?;
    Ok(spooled)
}

/// The raw bytes behind a spool of their compressed copy.
pub(super) fn decompressing(
    compressed: tempfile::SpooledTempFile,
) -> Result<RawReader, StorageError> {
    Ok(zstd::stream::read::Decoder::new(compressed)?)
}

pub(super) fn rows_for_ids(
    conn: &Connection,
    pre: &str,
    ids: &[String],
) -> Result<Vec<i64>, StorageError> {
    let mut rows = Vec::with_capacity(ids.len());
    let mut st = conn.prepare_cached(&format!("SELECT Seq FROM {pre}mailbox WHERE ID = ?1"))?;
    for id in ids {
        if let Some(r) = st.query_row(params![id], |r| r.get(0)).optional()? {
            rows.push(r);
        }
    }
    Ok(rows)
}

pub(super) fn search_rows(
    conn: &Connection,
    pre: &str,
    query: &str,
    tz: &str,
    vocab: &Vocab,
) -> Result<Vec<i64>, StorageError> {
    let c = search::compile(query, tz, pre, vocab);
    let q = search_sql(conn, pre, &c)?;
    let sql = format!("SELECT m.Seq FROM {} WHERE {}", q.from, q.filter);
    Ok(conn
        .prepare(&sql)?
        .query_map(params_from_iter(q.args.iter()), |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Whether the Mailpit search `query` matches message `rowid` (tag rules).
pub(super) fn matches(
    conn: &Connection,
    pre: &str,
    query: &str,
    vocab: &Vocab,
    rowid: i64,
) -> Result<bool, StorageError> {
    let c = search::compile(query, "", pre, vocab);
    let q = search_sql(conn, pre, &c)?;
    let sql = format!(
        "SELECT 1 FROM {} WHERE ({}) AND m.Seq = ? LIMIT 1",
        q.from, q.filter
    );
    let mut args = q.args;
    args.push(Value::Integer(rowid));
    Ok(conn.prepare(&sql)?.exists(params_from_iter(args.iter()))?)
}

pub(super) fn tags_of(
    conn: &Connection,
    pre: &str,
    rowid: i64,
) -> Result<Vec<String>, StorageError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT t.Name FROM {pre}message_tags mt JOIN {pre}tags t ON t.id = mt.tag \
             WHERE mt.msg = ?1 ORDER BY t.Name COLLATE NOCASE"
        ))?
        .query_map(params![rowid], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Extracts up to one mailto: and one http(s) link from a List-Unsubscribe
/// header, as Mailpit does.
pub(super) fn unsubscribe_links(h: &str) -> (Vec<String>, String) {
    let mut links = Vec::new();
    let (mut mail, mut web) = (false, false);
    let mut errors = Vec::new();
    for part in h.split(',') {
        let p = part.trim();
        let Some(inner) = p.strip_prefix('<').and_then(|p| p.strip_suffix('>')) else {
            if !p.is_empty() {
                errors.push(format!("\"{p}\" is not enclosed in <>"));
            }
            continue;
        };
        let l = inner.trim().to_string();
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("mailto:") && !mail {
            mail = true;
            links.push(l);
        } else if (lower.starts_with("https://") || lower.starts_with("http://")) && !web {
            web = true;
            links.push(l);
        }
    }
    (links, errors.join(", "))
}

impl Store {
    /// Totals of the mailbox: (total, unread).
    pub async fn counts(&self) -> Result<(u64, u64), StorageError> {
        self.read(counts).await
    }

    /// Every tag, sorted.
    pub async fn tags(&self) -> Result<Vec<String>, StorageError> {
        self.read(all_tags).await
    }

    /// Every tag with the number of messages carrying it.
    pub async fn tag_counts(&self) -> Result<BTreeMap<String, i64>, StorageError> {
        self.read(|c, pre| {
            let mut st = c.prepare(&format!(
                "SELECT t.Name, count(mt.msg) FROM {pre}tags t LEFT JOIN {pre}message_tags mt \
                 ON mt.tag = t.id GROUP BY t.id"
            ))?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// One page of messages, newest first.
    pub async fn list(&self, start: u64, limit: u64) -> Result<MessagesPage, StorageError> {
        let limit = limit.min(MAX_PAGE);
        self.read(move |c, pre| {
            let (total, unread) = counts(c, pre)?;
            let messages = c
                .prepare_cached(&format!(
                    "{} ORDER BY m.Seq DESC LIMIT ?1 OFFSET ?2",
                    summary_select(pre)
                ))?
                .query_map(
                    params![limit as i64, start.min(i64::MAX as u64) as i64],
                    summary_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            page(c, pre, (total, unread), (total, unread), start, messages)
        })
        .await
    }

    /// One page of messages matching a Mailpit search, newest first.
    pub async fn search(
        &self,
        query: &str,
        tz: &str,
        start: u64,
        limit: u64,
    ) -> Result<MessagesPage, StorageError> {
        let limit = limit.min(MAX_PAGE);
        let query = query.to_string();
        let tz = tz.to_string();
        let vocab = self.vocab();
        self.read(move |c, pre| {
            let (total, unread) = counts(c, pre)?;
            let comp = search::compile(&query, &tz, pre, &vocab);
            let q = search_sql(c, pre, &comp)?;
            let (matched, matched_unread) = search_counts(c, pre, &q, unread, total)?;
            let mut args = q.args.clone();
            args.push(Value::Integer(limit as i64));
            args.push(Value::Integer(start.min(i64::MAX as u64) as i64));
            let messages = c
                .prepare(&format!(
                    "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT ? OFFSET ?",
                    summary_cols(pre),
                    q.from,
                    q.filter,
                    q.order
                ))?
                .query_map(params_from_iter(args.iter()), summary_row)?
                .collect::<Result<Vec<_>, _>>()?;
            page(
                c,
                pre,
                (total, unread),
                (matched, matched_unread),
                start,
                messages,
            )
        })
        .await
    }

    /// The ID `id` stands for (`latest` = newest message).
    pub async fn resolve_id(&self, id: &str) -> Result<String, StorageError> {
        let id = id.to_string();
        self.read(move |c, pre| Ok(resolve(c, pre, &id)?.1)).await
    }

    /// The summary of one message.
    pub async fn summary(&self, id: &str) -> Result<MessageSummary, StorageError> {
        let id = id.to_string();
        self.read(move |c, pre| {
            let (rowid, _) = resolve(c, pre, &id)?;
            Ok(
                c.prepare_cached(&format!("{} WHERE m.Seq = ?1", summary_select(pre)))?
                    .query_row(params![rowid], summary_row)?,
            )
        })
        .await
    }

    /// The raw bytes of one message.
    pub async fn raw(&self, id: &str) -> Result<Vec<u8>, StorageError> {
        let id = id.to_string();
        self.read(move |c, pre| {
            let (rowid, real) = resolve(c, pre, &id)?;
            raw_of(c, pre, rowid, &real)
        })
        .await
    }

    /// The raw bytes of one message as a reader that decompresses as it is
    /// read (memory stays flat however large the message), with the ID it
    /// resolved to (`latest`).
    pub async fn raw_reader(&self, id: &str) -> Result<(String, RawReader), StorageError> {
        let id = id.to_string();
        self.read(move |c, pre| {
            let (rowid, real) = resolve(c, pre, &id)?;
            let compressed = compressed_of(c, pre, rowid, &real)?;
            Ok((real, decompressing(compressed)?))
        })
        .await
    }

    /// Headers of one message: canonical name → values, names sorted. Only
    /// the header block is decompressed.
    pub async fn headers(&self, id: &str) -> Result<BTreeMap<String, Vec<String>>, StorageError> {
        let (_, raw) = self.raw_reader(id).await?;
        let block = tokio::task::spawn_blocking(move || outline::header_block(raw))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??;
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in parse::headers(&block) {
            map.entry(k).or_default().push(v);
        }
        Ok(map)
    }

    /// One MIME part of a message by its part path (e.g. `2` or `1.2`).
    /// The message is read as an outline: a part larger than the outline
    /// keeps comes back in a spool, decoded as it streamed past.
    pub async fn part(&self, id: &str, part_id: &str) -> Result<PartData, StorageError> {
        let (id, raw) = self.raw_reader(id).await?;
        let pid = part_id.to_string();
        tokio::task::spawn_blocking(move || {
            let o = outline::outline(raw, Some(&pid))?;
            let (data, content_type, file_name) = parse::part(&o.text, &pid)
                .ok_or_else(|| StorageError::NotFound(format!("{id} part {pid}")))?;
            let data = match o.extracted {
                Some((mut file, len)) => {
                    std::io::Seek::rewind(&mut file)?;
                    PartBody::Spooled { file, len }
                }
                None => PartBody::Memory(data),
            };
            Ok(PartData {
                data,
                content_type,
                file_name,
            })
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
    }
}
