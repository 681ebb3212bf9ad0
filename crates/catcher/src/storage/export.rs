//! Every stored message read straight from a database file, without opening
//! a [`Store`](super::Store): `mailsafe dump`. The connection is read-only
//! (opened `SQLITE_OPEN_READ_ONLY`, `query_only`), so a dump can run beside
//! a live catcher (a WAL reader never blocks its writer) and can never
//! migrate, prune or otherwise change the file it reads.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::error::StorageError;
use super::read::raw_of;
use super::schema::tenant_prefix;

/// Calls `each(id, raw)` for every message of `tenant` in `path`, oldest
/// first, and returns how many there were. Stops at the first error `each`
/// returns (passed on as [`StorageError::Codec`]).
pub fn each_raw(
    path: &Path,
    tenant: &str,
    mut each: impl FnMut(&str, Vec<u8>) -> std::io::Result<()>,
) -> Result<u64, StorageError> {
    let open = |path: &Path| {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    };
    let conn = open(path).map_err(|source| StorageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let pre = tenant_prefix(tenant);
    // The IDs first (small), then one message at a time: memory follows the
    // largest message, not the mailbox.
    let ids: Vec<(i64, String)> = conn
        .prepare(&format!("SELECT Seq, ID FROM {pre}mailbox ORDER BY Seq"))
        .map_err(|e| {
            StorageError::Invalid(format!(
                "{} has no {pre}mailbox table (not a catcher database, or another tenant): {e}",
                path.display()
            ))
        })?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (seq, id) in &ids {
        match raw_of(&conn, &pre, *seq, id) {
            Ok(raw) => each(id, raw)?,
            // Deleted between the listing and the read (a live catcher).
            Err(StorageError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(ids.len() as u64)
}
