//! Schema migrations for the catcher's tables.
//!
//! Every table and index name carries the tenant prefix so several tenants can
//! share one db file. Applied versions are recorded in `{prefix}schemas`, so a
//! newer binary upgrades an older db in place and never re-runs a step.

use rusqlite::{Connection, params};

use super::error::StorageError;

/// A migration step done in Rust (after its SQL, same transaction).
type PostStep = fn(&Connection, &str) -> Result<(), StorageError>;

/// One migration step: a version label and the SQL that brings the schema to
/// it. `{p}` in the SQL is replaced by the tenant prefix.
struct Migration {
    version: &'static str,
    sql: &'static str,
    /// Work SQL cannot do (runs after `sql`, in the same transaction).
    post: Option<PostStep>,
}

/// The ordered list of migrations. Append only: never edit a released step.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: "1.0.0",
        sql: r#"
CREATE TABLE IF NOT EXISTS {p}mailbox (
    Seq         INTEGER PRIMARY KEY,
    ID          TEXT    NOT NULL UNIQUE,
    MessageID   TEXT    NOT NULL DEFAULT '',
    Subject     TEXT    NOT NULL DEFAULT '',
    FromJSON    TEXT    NOT NULL DEFAULT '{}',
    ToJSON      TEXT    NOT NULL DEFAULT '[]',
    CcJSON      TEXT    NOT NULL DEFAULT '[]',
    BccJSON     TEXT    NOT NULL DEFAULT '[]',
    ReplyToJSON TEXT    NOT NULL DEFAULT '[]',
    Size        INTEGER NOT NULL DEFAULT 0,
    Attachments INTEGER NOT NULL DEFAULT 0,
    Inline      INTEGER NOT NULL DEFAULT 0,
    Snippet     TEXT    NOT NULL DEFAULT '',
    Read        INTEGER NOT NULL DEFAULT 0,
    Created     INTEGER NOT NULL,
    Username    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS {p}mailbox_created ON {p}mailbox (Created);
CREATE INDEX IF NOT EXISTS {p}mailbox_read ON {p}mailbox (Read, Seq);
CREATE INDEX IF NOT EXISTS {p}mailbox_messageid ON {p}mailbox (MessageID);
CREATE INDEX IF NOT EXISTS {p}mailbox_size ON {p}mailbox (Size);
CREATE TABLE IF NOT EXISTS {p}mailbox_data (
    id  INTEGER PRIMARY KEY,
    Raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS {p}tags (
    id   INTEGER PRIMARY KEY,
    Name TEXT NOT NULL UNIQUE COLLATE NOCASE
);
CREATE TABLE IF NOT EXISTS {p}message_tags (
    msg INTEGER NOT NULL,
    tag INTEGER NOT NULL,
    PRIMARY KEY (msg, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {p}message_tags_tag ON {p}message_tags (tag, msg);
CREATE VIRTUAL TABLE IF NOT EXISTS {p}search USING fts5 (
    Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID, Body,
    tokenize = 'trigram'
);
CREATE TABLE IF NOT EXISTS {p}counts (
    k      INTEGER PRIMARY KEY CHECK (k = 0),
    Total  INTEGER NOT NULL,
    Unread INTEGER NOT NULL
);
INSERT OR IGNORE INTO {p}counts (k, Total, Unread) VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS {p}mailbox_ai AFTER INSERT ON {p}mailbox BEGIN
    UPDATE {p}counts SET Total = Total + 1, Unread = Unread + (NEW.Read = 0) WHERE k = 0;
END;
CREATE TRIGGER IF NOT EXISTS {p}mailbox_ad AFTER DELETE ON {p}mailbox BEGIN
    UPDATE {p}counts SET Total = Total - 1, Unread = Unread - (OLD.Read = 0) WHERE k = 0;
END;
CREATE TRIGGER IF NOT EXISTS {p}mailbox_au AFTER UPDATE OF Read ON {p}mailbox
WHEN OLD.Read != NEW.Read BEGIN
    UPDATE {p}counts SET Unread = Unread + (NEW.Read = 0) - (OLD.Read = 0) WHERE k = 0;
END;
"#,
        post: None,
    },
    // Trigram index without positions (detail=none): about 1.6x cheaper to
    // build. Substring search runs as `col LIKE '%term%'`, which FTS5 answers
    // from the trigram index and then verifies, so results stay exact. Body
    // now also carries subject, addresses and Message-ID, so a plain term is
    // one indexed LIKE instead of an OR over columns.
    Migration {
        version: "1.1.0",
        sql: r#"
CREATE VIRTUAL TABLE {p}search_v2 USING fts5 (
    Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID, Body,
    tokenize = 'trigram', detail = 'none'
);
INSERT INTO {p}search_v2 (rowid, Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID, Body)
SELECT rowid, Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID,
       Subject || ' ' || FromText || ' ' || ToText || ' ' || CcText || ' ' || BccText || ' ' ||
       ReplyToText || ' ' || MessageID || ' ' || Body
FROM {p}search;
DROP TABLE {p}search;
ALTER TABLE {p}search_v2 RENAME TO {p}search;
"#,
        post: None,
    },
    // Word-level index instead of trigrams (see storage/index.rs): about 3x
    // cheaper to maintain, and exact answers from the index alone, so a term
    // found in every message is counted without reading any text. The cleaned
    // text stays in a plain table for the rare LIKE fallback.
    Migration {
        version: "1.2.0",
        sql: r#"
CREATE TABLE {p}search_text (
    id          INTEGER PRIMARY KEY,
    Subject     TEXT NOT NULL DEFAULT '',
    FromText    TEXT NOT NULL DEFAULT '',
    ToText      TEXT NOT NULL DEFAULT '',
    CcText      TEXT NOT NULL DEFAULT '',
    BccText     TEXT NOT NULL DEFAULT '',
    ReplyToText TEXT NOT NULL DEFAULT '',
    MessageID   TEXT NOT NULL DEFAULT '',
    Body        TEXT NOT NULL DEFAULT ''
);
INSERT INTO {p}search_text (id, Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID, Body)
SELECT rowid, Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID, Body FROM {p}search;
DROP TABLE {p}search;
CREATE VIRTUAL TABLE {p}words USING fts5 (
    Body, content = '', contentless_delete = 1, tokenize = '{tokenize}'
);
CREATE VIRTUAL TABLE {p}fields USING fts5 (
    Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID,
    content = '', contentless_delete = 1, tokenize = '{tokenize}'
);
CREATE TABLE {p}vocab (term TEXT PRIMARY KEY) WITHOUT ROWID;
"#,
        post: Some(super::index::rebuild),
    },
    // The everything-text of `search_text` (read only by the LIKE fallback)
    // is stored zstd-compressed in `BodyZst`; `Body` stays for rows written
    // before, and `search_body(Body, BodyZst)` reads either (index.rs). Plain,
    // it was two of the ~13 pages each 4 KiB message wrote (bench/RESULTS.md,
    // smtp-ingest). Adding a column rewrites no row, so upgrading is instant.
    Migration {
        version: "1.3.0",
        sql: "ALTER TABLE {p}search_text ADD COLUMN BodyZst BLOB;",
        post: None,
    },
];

/// Creates or drops `{p}mailbox_messageid` so that it exists exactly while
/// `MP_IGNORE_DUPLICATE_IDS` is on (`wanted`), at every open.
///
/// Why not always: its one reader is that option's duplicate check (the
/// insert looks the new Message-ID up; no search or API query uses the index,
/// `message-id:` searches go through the word index). Message-IDs are random,
/// so each insert dirties a random leaf of it: ~2.8 of the ~38 pages a commit
/// wrote in the ingest benchmark (4 KiB mail, 500 kept; WAL frames decoded,
/// bench/RESULTS.md smtp-ingest). Without the option nothing reads it; with
/// it, the check must not scan the mailbox per message, so it is built (once)
/// when the option is turned on.
pub fn duplicate_index(conn: &Connection, prefix: &str, wanted: bool) -> Result<(), StorageError> {
    conn.execute_batch(&if wanted {
        format!(
            "CREATE INDEX IF NOT EXISTS {prefix}mailbox_messageid ON {prefix}mailbox (MessageID)"
        )
    } else {
        format!("DROP INDEX IF EXISTS {prefix}mailbox_messageid")
    })?;
    Ok(())
}

/// Turns `MP_TENANT_ID` into a table-name prefix: characters outside
/// `[A-Za-z0-9_]` become `_`, and a non-empty result gets a trailing `_`.
pub fn tenant_prefix(tenant: &str) -> String {
    let t = tenant.trim();
    if t.is_empty() {
        return String::new();
    }
    let mut p: String = t
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    p.push('_');
    p
}

/// Applies every migration not yet recorded for this tenant.
pub fn migrate(conn: &mut Connection, prefix: &str) -> Result<(), StorageError> {
    let tx = conn.transaction()?;
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {prefix}schemas (Version TEXT PRIMARY KEY, Created INTEGER NOT NULL)"
    ))?;
    for m in MIGRATIONS {
        let done: bool = tx.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {prefix}schemas WHERE Version = ?1)"),
            params![m.version],
            |r| r.get(0),
        )?;
        if done {
            continue;
        }
        tx.execute_batch(
            &m.sql
                .replace("{p}", prefix)
                .replace("{tokenize}", super::index::TOKENIZE),
        )
        .map_err(|e| StorageError::Migration {
            version: m.version.to_string(),
            source: e,
        })?;
        if let Some(post) = m.post {
            post(&tx, prefix)?;
        }
        tx.execute(
            &format!("INSERT INTO {prefix}schemas (Version, Created) VALUES (?1, ?2)"),
            params![m.version, super::model::now_ms()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A db indexed by the trigram schema (1.1.0) is upgraded in place: its
    /// text moves to `search_text` and is indexed word by word.
    #[test]
    fn upgrade_from_the_trigram_index_reindexes_existing_mail() {
        let mut conn = Connection::open_in_memory().unwrap();
        let pre = "t_";
        conn.execute_batch(&format!(
            "CREATE TABLE {pre}schemas (Version TEXT PRIMARY KEY, Created INTEGER NOT NULL)"
        ))
        .unwrap();
        for m in &MIGRATIONS[..2] {
            conn.execute_batch(&m.sql.replace("{p}", pre)).unwrap();
            conn.execute(
                &format!("INSERT INTO {pre}schemas VALUES (?1, 0)"),
                params![m.version],
            )
            .unwrap();
        }
        conn.execute(
            &format!(
                "INSERT INTO {pre}search (rowid, Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID, Body) \
                 VALUES (7, 'hello', 'a@b.c', '', '', '', '', 'id@x', 'hello a@b.c id@x the databases')"
            ),
            [],
        )
        .unwrap();
        migrate(&mut conn, pre).unwrap();
        let hit: i64 = conn
            .query_row(
                &format!("SELECT rowid FROM {pre}fields WHERE {pre}fields MATCH ?1"),
                params![r#"{FromText} : ("a @ b . c")"#],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(hit, 7);
        let vocab = super::super::index::Vocab::load(&conn, pre).unwrap();
        assert!(vocab.contains("databases"));
        let body: String = conn
            .query_row(
                &format!("SELECT Body FROM {pre}search_text WHERE id = 7"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(body.ends_with("databases"));
        // Running it again changes nothing.
        migrate(&mut conn, pre).unwrap();
    }

    /// The Message-ID index of a db made before it became optional is dropped
    /// when the store opens without `MP_IGNORE_DUPLICATE_IDS`, and built again
    /// (the duplicate check then looks it up instead of scanning) with it.
    #[tokio::test]
    async fn message_id_index_exists_only_while_duplicates_are_ignored() {
        use super::super::model::StoreOptions;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let has_index = || {
            Connection::open(&path)
                .unwrap()
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE name = 'mailbox_messageid'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                == 1
        };
        {
            // What every schema up to 1.3.0 made: the index, always.
            let mut conn = Connection::open(&path).unwrap();
            migrate(&mut conn, "").unwrap();
            conn.execute(
                "INSERT INTO mailbox (Seq, ID, MessageID, Created) VALUES (1, 'old1', 'a@x', 1)",
                [],
            )
            .unwrap();
        }
        assert!(has_index());
        let open = |ignore_duplicate_ids| {
            crate::storage::Store::open(
                &path,
                StoreOptions {
                    max_messages: 0,
                    ignore_duplicate_ids,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        drop(open(false));
        assert!(!has_index(), "nothing reads it without the option");
        let store = open(true);
        assert!(has_index());
        let plan: String = Connection::open(&path)
            .unwrap()
            .query_row(
                "EXPLAIN QUERY PLAN SELECT 1 FROM mailbox WHERE MessageID = ?1 LIMIT 1",
                params!["a@x"],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("mailbox_messageid"), "{plan}");
        let dup = store
            .insert(crate::storage::NewMessage {
                raw: b"Message-ID: <a@x>\r\nSubject: again\r\n\r\nx\r\n".to_vec(),
                mail_from: String::new(),
                rcpt_to: vec![],
                username: None,
            })
            .await
            .unwrap();
        assert_eq!(dup, "", "the duplicate was dropped");
    }

    /// A db written by schema 1.2.0 (everything-text plain in `Body`) opens
    /// without rewriting its rows, and the LIKE fallback finds its old
    /// messages and new ones (stored compressed in `BodyZst`) alike.
    #[tokio::test]
    async fn plain_search_text_of_a_1_2_0_db_is_still_scanned() {
        use super::super::index;
        use super::super::model::{NewMessage, StoreOptions};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        // More than MAX_EXPANSION (40) words contain "zq", so a search for it
        // scans `search_text` instead of expanding into the word index.
        let old_words: Vec<String> = (0..45).map(|i| format!("zq{i:02}")).collect();
        let old_body = format!("oldmarker {}", old_words.join(" "));
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE schemas (Version TEXT PRIMARY KEY, Created INTEGER NOT NULL)",
            )
            .unwrap();
            for m in &MIGRATIONS[..3] {
                conn.execute_batch(
                    &m.sql
                        .replace("{p}", "")
                        .replace("{tokenize}", index::TOKENIZE),
                )
                .unwrap();
                if let Some(post) = m.post {
                    post(&conn, "").unwrap();
                }
                conn.execute("INSERT INTO schemas VALUES (?1, 0)", params![m.version])
                    .unwrap();
            }
            conn.execute(
                "INSERT INTO mailbox (Seq, ID, Created) VALUES (1, 'old1', 1)",
                [],
            )
            .unwrap();
            conn.execute("INSERT INTO mailbox_data (id, Raw) VALUES (1, x'')", [])
                .unwrap();
            // What 1.2.0 wrote: the everything-text plain in Body.
            conn.execute(
                "INSERT INTO search_text (id, Body) VALUES (1, ?1)",
                params![old_body],
            )
            .unwrap();
            let mut cols: [String; 8] = Default::default();
            cols[7] = old_body.clone();
            index::index_words(
                &conn,
                "",
                1,
                &index::prepare(cols),
                &index::Vocab::default(),
                &mut index::Fresh::default(),
            )
            .unwrap();
        }
        let store = crate::storage::Store::open(
            &path,
            StoreOptions {
                max_messages: 0,
                ..Default::default()
            },
        )
        .unwrap();
        let new_id = store
            .insert(NewMessage {
                raw: b"Subject: new\r\n\r\nnewmarker zq99\r\n".to_vec(),
                mail_from: String::new(),
                rcpt_to: vec![],
                username: None,
            })
            .await
            .unwrap();
        let found = |q: &'static str| {
            let store = store.clone();
            async move {
                let mut ids: Vec<String> = store
                    .search(q, "", 0, 50)
                    .await
                    .unwrap()
                    .messages
                    .into_iter()
                    .map(|m| m.head.id)
                    .collect();
                ids.sort();
                ids
            }
        };
        let mut both = vec!["old1".to_string(), new_id.clone()];
        both.sort();
        assert_eq!(found("zq").await, both, "the LIKE fallback over both rows");
        assert_eq!(found("q9").await, vec![new_id.clone()]);
        assert_eq!(found("q4").await, vec!["old1".to_string()]);
        assert_eq!(found("newmarker").await, vec![new_id]);
        // The old row was not rewritten; the new one is stored compressed.
        let conn = Connection::open(&path).unwrap();
        let rows: Vec<(String, bool)> = conn
            .prepare("SELECT Body, BodyZst IS NOT NULL FROM search_text ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![(old_body, false), (String::new(), true)]);
    }
}
