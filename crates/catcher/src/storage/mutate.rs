//! What the API changes: read flags, deletes, tags, tag renames, and the
//! full message view (it lives here because fetching a message marks it
//! read, as Mailpit does; `read.rs` stays free of writes). Each change runs
//! as a job in the writer's next batch and queues its events there.

use rusqlite::{OptionalExtension, params};

use super::error::StorageError;
use super::model::{Event, Head, ListUnsubscribe, MessageDetail};
use super::outline;
use super::parse;
use super::read::{
    compressed_of, decompressing, resolve, rows_for_ids, search_rows, summary_row, summary_select,
    tags_of, unsubscribe_links,
};
use super::rows::{self, counts};
use super::store::Store;
use super::writer::Ctx;

impl Store {
    /// The full view of one message; marks it read, as Mailpit does.
    pub async fn message(&self, id: &str) -> Result<MessageDetail, StorageError> {
        let id = id.to_string();
        let (summary, compressed) = self
            .read(move |c, pre| {
                let (rowid, real) = resolve(c, pre, &id)?;
                let s = c
                    .prepare_cached(&format!("{} WHERE m.Seq = ?1", summary_select(pre)))?
                    .query_row(params![rowid], summary_row)?;
                Ok((s, compressed_of(c, pre, rowid, &real)?))
            })
            .await?;
        if !summary.head.read {
            self.set_read(vec![summary.head.id.clone()], true).await?;
        }
        // Parsed from the outline: large bodies are measured as they stream
        // past, never held (see `outline`).
        let d = tokio::task::spawn_blocking(move || {
            let o = outline::outline(decompressing(compressed)?, None)?;
            Ok::<_, StorageError>(outline::detail(&o))
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))??;
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
            let gone = rows::delete_rows(c, &pre, &rows)?;
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
            let gone = rows::delete_rows(c, &pre, &rows)?;
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
            ctx.events.push(Event::Truncate);
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
                rows::add_tags(c, &pre, rowid, &clean)?;
                let now = tags_of(c, &pre, rowid)?;
                ctx.events.push(Event::Tags {
                    id: real,
                    tags: now,
                });
            }
            rows::prune_unused_tags(c, &pre)?;
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
            let oid = tag_id(c, &pre, &old)?;
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
                    drop_tag(c, &pre, oid)?;
                }
                None => {
                    c.execute(
                        &format!("UPDATE {pre}tags SET Name = ?1 WHERE id = ?2"),
                        params![new, oid],
                    )?;
                }
            }
            ctx.events.push(Event::Prune);
            Ok(())
        })
        .await
    }

    /// Removes a tag from every message.
    pub async fn delete_tag(&self, name: &str) -> Result<(), StorageError> {
        let name = name.to_string();
        self.write(move |c, ctx| {
            let pre = ctx.prefix.clone();
            drop_tag(c, &pre, tag_id(c, &pre, &name)?)?;
            ctx.events.push(Event::Prune);
            Ok(())
        })
        .await
    }
}

/// The row id of tag `name`; `NotFound` names the tag.
fn tag_id(c: &rusqlite::Connection, pre: &str, name: &str) -> Result<i64, StorageError> {
    c.query_row(
        &format!("SELECT id FROM {pre}tags WHERE Name = ?1"),
        params![name],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| StorageError::NotFound(format!("tag {name}")))
}

/// Removes tag `id` from every message and deletes it.
fn drop_tag(c: &rusqlite::Connection, pre: &str, id: i64) -> Result<(), StorageError> {
    c.execute(
        &format!("DELETE FROM {pre}message_tags WHERE tag = ?1"),
        params![id],
    )?;
    c.execute(&format!("DELETE FROM {pre}tags WHERE id = ?1"), params![id])?;
    Ok(())
}

fn push_read_events(ctx: &mut Ctx, ids: &[String], read: bool) {
    if ids.is_empty() {
        return;
    }
    ctx.counts_changed = true;
    for id in ids {
        ctx.events.push(Event::Read {
            id: id.clone(),
            read,
        });
    }
}

fn push_delete_events(ctx: &mut Ctx, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    ctx.deleted += ids.len();
    ctx.counts_changed = true;
    for id in ids {
        ctx.events.push(Event::Delete { id: id.clone() });
    }
}
