//! Storage seam tests: group-committed inserts, events, pruning, tenants.

use std::time::Duration;

use mailsafe_catcher::storage::{NewMessage, Store, StoreOptions};

mod support;

fn msg(subject: &str, body: &str) -> NewMessage {
    let raw = format!(
        "From: Alice Example <alice@example.com>\r\nTo: Bob <bob@example.org>, carol@example.net\r\n\
         Subject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\nX-Tags: one, Two\r\n\r\n{body}\r\n"
    );
    NewMessage {
        raw: raw.into_bytes(),
        mail_from: "alice@example.com".into(),
        rcpt_to: vec!["bob@example.org".into()],
        username: None,
    }
}

#[tokio::test]
async fn concurrent_inserts_are_all_durable_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = Store::open(
        &path,
        StoreOptions {
            max_messages: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut events = store.subscribe();
    let mut handles = Vec::new();
    for i in 0..200 {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            s.insert(msg(&format!("s{i}"), "hello")).await
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap().unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    // A fresh connection (another process would see the same) has every row.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM mailbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 200);
    let page = store.list(0, 50).await.unwrap();
    assert_eq!(page.total, 200);
    assert_eq!(page.unread, 200);
    assert_eq!(page.count, 50);
    // Newest first: the page holds the 50 most recent IDs.
    let newest: Vec<String> = store
        .list(0, 200)
        .await
        .unwrap()
        .messages
        .iter()
        .map(|m| m.head.id.clone())
        .collect();
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.head.id.clone())
            .collect::<Vec<_>>(),
        newest[..50].to_vec()
    );
    assert_eq!(page.tags, vec!["one", "Two"]);
    let m = &page.messages[0];
    assert_eq!(m.head.from.address, "alice@example.com");
    assert_eq!(m.head.from.name, "Alice Example");
    assert_eq!(m.head.to.len(), 2);
    assert_eq!(m.head.tags, vec!["one", "Two"]);
    let e = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.kind(), "new");
    assert_eq!(serde_json::to_value(&e).unwrap()["Type"], "new");
}

/// Sequential inserts past `MP_MAX_MESSAGES` (each its own batch): the
/// mailbox may pass the limit by the slack under load, but once the writer
/// is idle it holds exactly the limit, the newest messages.
#[tokio::test]
async fn a_mailbox_over_its_limit_is_pruned_to_it_once_idle() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("m.db"),
        StoreOptions {
            max_messages: 30,
            ..Default::default()
        },
    )
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..32 {
        ids.push(store.insert(msg(&format!("p{i}"), "x")).await.unwrap());
    }
    // Never more than the limit and its slack (3 of 30).
    assert!(store.counts().await.unwrap().0 <= 33);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.counts().await.unwrap().0 != 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not pruned to the limit once idle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let newest: Vec<String> = ids[2..].iter().rev().cloned().collect();
    assert_eq!(support::ids(&store).await, newest);
}

fn plain(body: &str) -> NewMessage {
    NewMessage {
        raw: format!("Subject: \r\n\r\n{body}\r\n").into_bytes(),
        mail_from: String::new(),
        rcpt_to: vec![],
        username: None,
    }
}

async fn ids(store: &Store, q: &str) -> (Vec<String>, u64) {
    let page = store.search(q, "", 0, 5000).await.unwrap();
    let mut v: Vec<String> = page.messages.into_iter().map(|m| m.head.id).collect();
    v.sort();
    (v, page.messages_count)
}

/// Random texts over a tiny alphabet of words, symbols and spaces, searched
/// with random fragments: the word index (and its LIKE fallback for wide
/// expansions) must give exactly what a substring match over the cleaned
/// text gives, including counts.
#[tokio::test]
async fn search_equals_substring_matching_on_random_texts() {
    use mailsafe_catcher::storage::search::clean;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("m.db"),
        StoreOptions {
            max_messages: 0,
            ..Default::default()
        },
    )
    .unwrap();
    const PIECES: &[&str] = &[
        "q", "k", "qk", "kq", "-", "%", "_", " ", "  ", ".", "!", "1", "@", "qq",
    ];
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut docs: Vec<(String, String)> = Vec::new();
    for _ in 0..60 {
        let body: String = (0..1 + next(12))
            .map(|_| PIECES[next(PIECES.len())])
            .collect();
        let id = store.insert(plain(&body)).await.unwrap();
        docs.push((id, clean(&body)));
    }
    let mut checked = 0;
    for _ in 0..300 {
        let term: String = (0..1 + next(4))
            .map(|_| PIECES[next(PIECES.len())])
            .collect();
        let term = term.trim_start_matches(['-', '!']).to_string();
        let t = clean(&term);
        if t.is_empty() {
            continue;
        }
        let mut want: Vec<String> = docs
            .iter()
            .filter(|(_, text)| text.contains(&t))
            .map(|(id, _)| id.clone())
            .collect();
        want.sort();
        let (got, count) = ids(&store, &format!("\"{term}\"")).await;
        assert_eq!(got, want, "term {term:?} (cleaned {t:?})");
        assert_eq!(count, want.len() as u64, "count of {term:?}");
        checked += 1;
    }
    assert!(checked > 200);
}

/// Infix, suffix and prefix matches through the vocabulary, symbols that
/// must match exactly, and the vocabulary surviving a restart and a
/// delete-all.
#[tokio::test]
async fn word_index_edge_cases_and_vocabulary_persistence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let opts = StoreOptions {
        max_messages: 0,
        ..Default::default()
    };
    let store = Store::open(&path, opts.clone()).unwrap();
    let a = store
        .insert(plain("the database backup of user42@example.com"))
        .await
        .unwrap();
    let b = store
        .insert(plain("weekly summary, 5% off; Grüße aus Köln"))
        .await
        .unwrap();
    let c = store
        .insert(plain("weekly.summary 15% user42 @example.com"))
        .await
        .unwrap();
    let one = |x: &String| (vec![x.clone()], 1);
    let none = (Vec::<String>::new(), 0);
    assert_eq!(ids(&store, "atabas").await, one(&a));
    assert_eq!(ids(&store, "\"ly summary\"").await, one(&b));
    assert_eq!(ids(&store, "\"weekly summ\"").await, one(&b));
    assert_eq!(ids(&store, "y.s").await, one(&c));
    assert_eq!(ids(&store, "42@exam").await, one(&a));
    assert_eq!(ids(&store, "\"42 @exam\"").await, one(&c));
    assert_eq!(ids(&store, "5%").await.1, 2);
    assert_eq!(ids(&store, "\"5% off\"").await, one(&b));
    assert_eq!(ids(&store, "üße").await, one(&b));
    assert_eq!(ids(&store, "KÖLN").await, one(&b));
    assert_eq!(ids(&store, "summary,").await.1, 2);
    assert_eq!(ids(&store, "nowhere").await, none);
    assert_eq!(ids(&store, "-nowhere").await.1, 3);
    // A fragment inside more words than an FTS5 OR should hold is answered
    // by scanning the text, with the same result.
    for i in 0..45 {
        store.insert(plain(&format!("zq{i}x"))).await.unwrap();
    }
    assert_eq!(ids(&store, "zq").await.1, 45);
    assert_eq!(ids(&store, "q1").await.1, 11);
    assert_eq!(ids(&store, "-zq").await.1, 3);
    for i in 0..45 {
        store.delete_search(&format!("zq{i}x"), "").await.unwrap();
    }
    drop(store);

    // The vocabulary is read back from the db: infix matches still work.
    let store = Store::open(&path, opts.clone()).unwrap();
    assert_eq!(ids(&store, "atabas").await, one(&a));
    store.delete(vec![a.clone()]).await.unwrap();
    assert_eq!(ids(&store, "atabas").await, none);
    store.delete_all().await.unwrap();
    assert_eq!(ids(&store, "weekly").await, none);
    let d = store.insert(plain("databases again")).await.unwrap();
    assert_eq!(ids(&store, "atabas").await, one(&d));
    drop(store);
    let store = Store::open(&path, opts).unwrap();
    assert_eq!(ids(&store, "atabase").await, one(&d));
}

/// `MP_DISABLE_WAL` and `MP_COMPRESSION=0`: the db is in rollback-journal
/// mode (no `-wal` file), and a message is stored as it came (its bytes
/// readable in the `Raw` blob) yet read back like any other; a compressed
/// one beside it in the same db too.
#[tokio::test]
async fn rollback_journal_and_uncompressed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let open = |level: i32| {
        Store::open(
            &path,
            StoreOptions {
                disable_wal: true,
                compression_level: level,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let store = open(0);
    let body = "stored as it came ".repeat(1000);
    let stored = store.insert(msg("plain", &body)).await.unwrap();
    drop(store);
    let store = open(3);
    let zstd = store.insert(msg("small", &body)).await.unwrap();
    for id in [&stored, &zstd] {
        let raw = String::from_utf8(store.raw(id).await.unwrap()).unwrap();
        assert!(raw.contains(&body), "{id}");
    }
    let db = rusqlite::Connection::open(&path).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    assert!(!dir.path().join("m.db-wal").exists());
    let sizes: Vec<(i64, bool)> = db
        .prepare(
            "SELECT length(Raw), instr(Raw, CAST(?1 AS BLOB)) > 0 FROM mailbox_data ORDER BY id",
        )
        .unwrap()
        .query_map([&body], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(sizes[0].1 && sizes[0].0 > body.len() as i64, "{sizes:?}");
    assert!(!sizes[1].1 && sizes[1].0 < 1000, "{sizes:?}");
}
