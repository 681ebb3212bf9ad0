//! What the API asks of the store: listing, searching, fetching and changing
//! messages and tags. Reads run on pooled read connections; changes go through
//! the writer so they share its batches and publish their events.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter, types::Value};
use serde::{Deserialize, Serialize};

use super::index::Vocab;
use super::parse::{self, Address, Attachment};
use super::search::Compiled;
use super::writer::{self, counts};
use super::{Event, NewMessage, StorageError, Store};

/// The fields Mailpit's `MessageSummary` and `Message` share, mapped from a
/// mailbox row in one place ([`summary_row`]) and flattened into both.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Head {
    /// Database ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Message-ID header (without angle brackets).
    #[serde(rename = "MessageID")]
    pub message_id: String,
    /// Read status (a fetched [`MessageDetail`] is always read).
    #[serde(rename = "Read")]
    pub read: bool,
    /// From address.
    #[serde(rename = "From")]
    pub from: Address,
    /// To addresses.
    #[serde(rename = "To")]
    pub to: Vec<Address>,
    /// Cc addresses.
    #[serde(rename = "Cc")]
    pub cc: Vec<Address>,
    /// Bcc addresses.
    #[serde(rename = "Bcc")]
    pub bcc: Vec<Address>,
    /// Reply-To addresses.
    #[serde(rename = "ReplyTo")]
    pub reply_to: Vec<Address>,
    /// Subject.
    #[serde(rename = "Subject")]
    pub subject: String,
    /// SMTP AUTH user, if any.
    #[serde(rename = "Username")]
    pub username: String,
    /// Tags.
    #[serde(rename = "Tags")]
    pub tags: Vec<String>,
    /// Raw size in bytes.
    #[serde(rename = "Size")]
    pub size: u64,
}

/// Mailpit's `MessageSummary`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageSummary {
    /// The fields shared with [`MessageDetail`].
    #[serde(flatten)]
    pub head: Head,
    /// Received time, RFC 3339 with milliseconds.
    #[serde(rename = "Created")]
    pub created: String,
    /// Number of attachments.
    #[serde(rename = "Attachments")]
    pub attachments: i64,
    /// Up to 250 characters of the body.
    #[serde(rename = "Snippet")]
    pub snippet: String,
}

/// Mailpit's `MessagesSummary`: one page of a list or search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessagesPage {
    /// Messages in the mailbox.
    pub total: u64,
    /// Unread messages in the mailbox.
    pub unread: u64,
    /// Messages on this page (legacy field, still read by clients).
    pub count: u64,
    /// Messages matching the query.
    pub messages_count: u64,
    /// Unread messages matching the query.
    pub messages_unread: u64,
    /// Offset of this page.
    pub start: u64,
    /// Every tag in the mailbox.
    pub tags: Vec<String>,
    /// The page.
    pub messages: Vec<MessageSummary>,
}

/// Mailpit's `ListUnsubscribe`.
#[derive(Debug, Clone, Serialize)]
pub struct ListUnsubscribe {
    /// The header value.
    #[serde(rename = "Header")]
    pub header: String,
    /// Links found in it.
    #[serde(rename = "Links")]
    pub links: Vec<String>,
    /// Problems found, if any.
    #[serde(rename = "Errors")]
    pub errors: String,
    /// `List-Unsubscribe-Post` value.
    #[serde(rename = "HeaderPost")]
    pub header_post: String,
}

/// Mailpit's `Message`: the full view of one message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageDetail {
    /// The fields shared with [`MessageSummary`]; `Read` is always true,
    /// since fetching the message marks it read (older Mailpit versions
    /// sent it and some clients still expect it).
    #[serde(flatten)]
    pub head: Head,
    /// Return-Path.
    #[serde(rename = "ReturnPath")]
    pub return_path: String,
    /// List-Unsubscribe information.
    #[serde(rename = "ListUnsubscribe")]
    pub list_unsubscribe: ListUnsubscribe,
    /// Date header, or the received time.
    #[serde(rename = "Date")]
    pub date: String,
    /// Text body.
    #[serde(rename = "Text")]
    pub text: String,
    /// HTML body.
    #[serde(rename = "HTML")]
    pub html: String,
    /// Inline parts.
    #[serde(rename = "Inline")]
    pub inline: Vec<Attachment>,
    /// Attachments.
    #[serde(rename = "Attachments")]
    pub attachments: Vec<Attachment>,
}

/// One MIME part's decoded content.
#[derive(Debug, Clone)]
pub struct PartData {
    /// Decoded bytes.
    pub data: Vec<u8>,
    /// Content type.
    pub content_type: String,
    /// File name, may be empty.
    pub file_name: String,
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

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

fn summary_select(pre: &str) -> String {
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

fn summary_row(r: &Row<'_>) -> rusqlite::Result<MessageSummary> {
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

fn all_tags(conn: &Connection, pre: &str) -> Result<Vec<String>, StorageError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT Name FROM {pre}tags ORDER BY Name COLLATE NOCASE"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Finds the row id of message `id` (`latest` = newest).
fn resolve(conn: &Connection, pre: &str, id: &str) -> Result<(i64, String), StorageError> {
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

fn raw_of(conn: &Connection, pre: &str, rowid: i64, id: &str) -> Result<Vec<u8>, StorageError> {
    let blob: Vec<u8> = conn
        .prepare_cached(&format!("SELECT Raw FROM {pre}mailbox_data WHERE id = ?1"))?
        .query_row(params![rowid], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StorageError::NotFound(id.to_string()))?;
    Ok(zstd::stream::decode_all(&blob[..])?)
}

fn rows_for_ids(conn: &Connection, pre: &str, ids: &[String]) -> Result<Vec<i64>, StorageError> {
    let mut rows = Vec::with_capacity(ids.len());
    let mut st = conn.prepare_cached(&format!("SELECT Seq FROM {pre}mailbox WHERE ID = ?1"))?;
    for id in ids {
        if let Some(r) = st.query_row(params![id], |r| r.get(0)).optional()? {
            rows.push(r);
        }
    }
    Ok(rows)
}

fn search_rows(
    conn: &Connection,
    pre: &str,
    query: &str,
    tz: &str,
    vocab: &Vocab,
) -> Result<Vec<i64>, StorageError> {
    let c = super::search::compile(query, tz, pre, vocab);
    let q = search_sql(conn, pre, &c)?;
    let sql = format!("SELECT m.Seq FROM {} WHERE {}", q.from, q.filter);
    Ok(conn
        .prepare(&sql)?
        .query_map(params_from_iter(q.args.iter()), |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

fn tags_of(conn: &Connection, pre: &str, rowid: i64) -> Result<Vec<String>, StorageError> {
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
fn unsubscribe_links(h: &str) -> (Vec<String>, String) {
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
            Ok(MessagesPage {
                total,
                unread,
                count: messages.len() as u64,
                messages_count: total,
                messages_unread: unread,
                start,
                tags: all_tags(c, pre)?,
                messages,
            })
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
            let comp = super::search::compile(&query, &tz, pre, &vocab);
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

    /// The full view of one message; marks it read, as Mailpit does.
    pub async fn message(&self, id: &str) -> Result<MessageDetail, StorageError> {
        let id = id.to_string();
        let (summary, raw) = self
            .read(move |c, pre| {
                let (rowid, real) = resolve(c, pre, &id)?;
                let s = c
                    .prepare_cached(&format!("{} WHERE m.Seq = ?1", summary_select(pre)))?
                    .query_row(params![rowid], summary_row)?;
                Ok((s, raw_of(c, pre, rowid, &real)?))
            })
            .await?;
        if !summary.head.read {
            self.set_read(vec![summary.head.id.clone()], true).await?;
        }
        let d = tokio::task::spawn_blocking(move || parse::detail(&raw))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?;
        let (links, errors) = unsubscribe_links(&d.list_unsubscribe);
        Ok(MessageDetail {
            date: d
                .date
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                .unwrap_or_else(|| summary.created.clone()),
            head: Head {
                read: true,
                ..summary.head
            },
            return_path: d.return_path,
            list_unsubscribe: ListUnsubscribe {
                header: d.list_unsubscribe,
                links,
                errors,
                header_post: d.list_unsubscribe_post,
            },
            text: d.text,
            html: d.html,
            inline: d.inline,
            attachments: d.attachments,
        })
    }

    /// Headers of one message: canonical name → values, names sorted.
    pub async fn headers(&self, id: &str) -> Result<BTreeMap<String, Vec<String>>, StorageError> {
        let raw = self.raw(id).await?;
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in parse::headers(&raw) {
            map.entry(k).or_default().push(v);
        }
        Ok(map)
    }

    /// One MIME part of a message by its part path (e.g. `2` or `1.2`).
    pub async fn part(&self, id: &str, part_id: &str) -> Result<PartData, StorageError> {
        let raw = self.raw(id).await?;
        let pid = part_id.to_string();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            parse::part(&raw, &pid)
                .map(|(data, content_type, file_name)| PartData {
                    data,
                    content_type,
                    file_name,
                })
                .ok_or_else(|| StorageError::NotFound(format!("{id} part {pid}")))
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// Stores a message with extra tags (the send API).
    pub async fn insert_with_tags(
        &self,
        msg: NewMessage,
        tags: Vec<String>,
    ) -> Result<String, StorageError> {
        let level = self.options().compression_level;
        let p = tokio::task::spawn_blocking(move || writer::Prepared::new(msg, level))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??
            .with_tags(&tags);
        self.write(move |conn, ctx| writer::insert(conn, ctx, p))
            .await
    }

    /// Sets the read flag of the given messages (all messages when `ids` is
    /// empty). Unknown IDs are ignored.
    pub async fn set_read(&self, ids: Vec<String>, read: bool) -> Result<(), StorageError> {
        self.write(move |c, ctx| {
            let pre = ctx.prefix.clone();
            let flag = read as i64;
            let changed: Vec<String> = if ids.is_empty() {
                c.prepare(&format!(
                    "UPDATE {pre}mailbox SET Read = ?1 WHERE Read != ?1 RETURNING ID"
                ))?
                .query_map(params![flag], |r| r.get(0))?
                .collect::<Result<_, _>>()?
            } else {
                let mut out = Vec::new();
                let mut st = c.prepare_cached(&format!(
                    "UPDATE {pre}mailbox SET Read = ?1 WHERE ID = ?2 AND Read != ?1 RETURNING ID"
                ))?;
                for id in &ids {
                    if let Some(x) = st.query_row(params![flag, id], |r| r.get(0)).optional()? {
                        out.push(x);
                    }
                }
                out
            };
            push_read_events(ctx, &changed, read);
            Ok(())
        })
        .await
    }

    /// Sets the read flag of every message matching a search.
    pub async fn set_read_search(
        &self,
        query: &str,
        tz: &str,
        read: bool,
    ) -> Result<(), StorageError> {
        let (q, tz) = (query.to_string(), tz.to_string());
        self.write(move |c, ctx| {
            let pre = ctx.prefix.clone();
            let rows = search_rows(c, &pre, &q, &tz, &ctx.vocab)?;
            let mut st = c.prepare_cached(&format!(
                "UPDATE {pre}mailbox SET Read = ?1 WHERE Seq = ?2 AND Read != ?1 RETURNING ID"
            ))?;
            let mut changed = Vec::new();
            for r in rows {
                if let Some(x) = st
                    .query_row(params![read as i64, r], |r| r.get(0))
                    .optional()?
                {
                    changed.push(x);
                }
            }
            push_read_events(ctx, &changed, read);
            Ok(())
        })
        .await
    }

    /// Deletes the given messages; unknown IDs are ignored. Returns how many
    /// were deleted.
    pub async fn delete(&self, ids: Vec<String>) -> Result<usize, StorageError> {
        self.write(move |c, ctx| {
            let pre = ctx.prefix.clone();
            let rows = rows_for_ids(c, &pre, &ids)?;
            let gone = writer::delete_rows(c, &pre, &rows)?;
            push_delete_events(ctx, &gone);
            Ok(gone.len())
        })
        .await
    }

    /// Deletes every message matching a search. Returns how many.
    pub async fn delete_search(&self, query: &str, tz: &str) -> Result<usize, StorageError> {
        let (q, tz) = (query.to_string(), tz.to_string());
        self.write(move |c, ctx| {
            let pre = ctx.prefix.clone();
            let rows = search_rows(c, &pre, &q, &tz, &ctx.vocab)?;
            let gone = writer::delete_rows(c, &pre, &rows)?;
            push_delete_events(ctx, &gone);
            Ok(gone.len())
        })
        .await
    }

    /// Deletes every message of this tenant.
    pub async fn delete_all(&self) -> Result<(), StorageError> {
        self.write(move |c, ctx| {
            let pre = ctx.prefix.clone();
            ctx.deleted += counts(c, &pre)?.0 as usize;
            c.execute_batch(&format!(
                "DELETE FROM {pre}mailbox; DELETE FROM {pre}mailbox_data; DELETE FROM {pre}search_text; \
                 INSERT INTO {pre}words ({pre}words) VALUES ('delete-all'); \
                 INSERT INTO {pre}fields ({pre}fields) VALUES ('delete-all'); DELETE FROM {pre}vocab; \
                 DELETE FROM {pre}message_tags; DELETE FROM {pre}tags; \
                 UPDATE {pre}counts SET Total = 0, Unread = 0 WHERE k = 0;"
            ))?;
            ctx.counts_changed = true;
            // Nothing is left, so the vocabulary can start over (words
            // indexed earlier in this batch went with their messages).
            ctx.vocab_reset = true;
            ctx.fresh.take();
            ctx.events.push(Event {
                kind: "truncate",
                data: serde_json::Value::Null,
            });
            Ok(())
        })
        .await
    }

    /// Replaces the tags of the given messages with `tags` (an empty list
    /// removes all their tags).
    pub async fn set_tags(&self, ids: Vec<String>, tags: Vec<String>) -> Result<(), StorageError> {
        let mut clean: Vec<String> = Vec::new();
        for t in &tags {
            let t = parse::clean_tag(t);
            if !t.is_empty() && !clean.iter().any(|x| x.eq_ignore_ascii_case(&t)) {
                clean.push(t);
            }
        }
        self.write(move |c, ctx| {
            let pre = ctx.prefix.clone();
            for id in &ids {
                let (rowid, real) = resolve(c, &pre, id)?;
                c.execute(
                    &format!("DELETE FROM {pre}message_tags WHERE msg = ?1"),
                    params![rowid],
                )?;
                writer::add_tags(c, &pre, rowid, &clean)?;
                let now = tags_of(c, &pre, rowid)?;
                ctx.events.push(Event {
                    kind: "update",
                    data: serde_json::json!({ "ID": real, "Tags": now }),
                });
            }
            writer::prune_unused_tags(c, &pre)?;
            Ok(())
        })
        .await
    }

    /// Renames a tag (merging into an existing tag of the new name).
    pub async fn rename_tag(&self, old: &str, new: &str) -> Result<(), StorageError> {
        let old = old.to_string();
        let new = parse::clean_tag(new);
        if new.is_empty() {
            return Err(StorageError::Invalid("tag name is empty".into()));
        }
        self.write(move |c, ctx| {
            let pre = ctx.prefix.clone();
            let Some(oid): Option<i64> = c
                .query_row(
                    &format!("SELECT id FROM {pre}tags WHERE Name = ?1"),
                    params![old],
                    |r| r.get(0),
                )
                .optional()?
            else {
                return Err(StorageError::NotFound(format!("tag {old}")));
            };
            let existing: Option<i64> = c
                .query_row(
                    &format!("SELECT id FROM {pre}tags WHERE Name = ?1 AND id != ?2"),
                    params![new, oid],
                    |r| r.get(0),
                )
                .optional()?;
            match existing {
                Some(nid) => {
                    c.execute(
                        &format!(
                            "INSERT OR IGNORE INTO {pre}message_tags (msg, tag) \
                             SELECT msg, ?1 FROM {pre}message_tags WHERE tag = ?2"
                        ),
                        params![nid, oid],
                    )?;
                    c.execute(
                        &format!("DELETE FROM {pre}message_tags WHERE tag = ?1"),
                        params![oid],
                    )?;
                    c.execute(
                        &format!("DELETE FROM {pre}tags WHERE id = ?1"),
                        params![oid],
                    )?;
                }
                None => {
                    c.execute(
                        &format!("UPDATE {pre}tags SET Name = ?1 WHERE id = ?2"),
                        params![new, oid],
                    )?;
                }
            }
            ctx.events.push(Event {
                kind: "prune",
                data: serde_json::Value::Null,
            });
            Ok(())
        })
        .await
    }

    /// Removes a tag from every message.
    pub async fn delete_tag(&self, name: &str) -> Result<(), StorageError> {
        let name = name.to_string();
        self.write(move |c, ctx| {
            let pre = ctx.prefix.clone();
            let Some(tid): Option<i64> = c
                .query_row(
                    &format!("SELECT id FROM {pre}tags WHERE Name = ?1"),
                    params![name],
                    |r| r.get(0),
                )
                .optional()?
            else {
                return Err(StorageError::NotFound(format!("tag {name}")));
            };
            c.execute(
                &format!("DELETE FROM {pre}message_tags WHERE tag = ?1"),
                params![tid],
            )?;
            c.execute(
                &format!("DELETE FROM {pre}tags WHERE id = ?1"),
                params![tid],
            )?;
            ctx.events.push(Event {
                kind: "prune",
                data: serde_json::Value::Null,
            });
            Ok(())
        })
        .await
    }

    /// Size of the database file (and its WAL) in bytes.
    pub fn db_size(&self) -> u64 {
        let p = self.path();
        let main = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = p.as_os_str().to_owned();
        wal.push("-wal");
        main + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }
}

fn push_read_events(ctx: &mut writer::Ctx, ids: &[String], read: bool) {
    if ids.is_empty() {
        return;
    }
    ctx.counts_changed = true;
    for id in ids {
        ctx.events.push(Event {
            kind: "update",
            data: serde_json::json!({ "ID": id, "Read": read }),
        });
    }
}

fn push_delete_events(ctx: &mut writer::Ctx, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    ctx.deleted += ids.len();
    ctx.counts_changed = true;
    for id in ids {
        ctx.events.push(Event {
            kind: "delete",
            data: serde_json::json!({ "ID": id }),
        });
    }
}
