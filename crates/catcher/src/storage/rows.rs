//! SQL over whole message rows, shared by the writer (pruning, `stats`
//! totals) and the API writes (deletes, tags): deleting a message from every
//! table, attaching and pruning tags, pruning by count and age, and the O(1)
//! totals.

use rusqlite::{Connection, params};

use super::error::StorageError;

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
pub fn prune_count(conn: &Connection, pre: &str, max: u64) -> Result<usize, StorageError> {
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
pub fn prune_age(conn: &Connection, pre: &str, cutoff_ms: i64) -> Result<usize, StorageError> {
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
