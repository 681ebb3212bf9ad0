//! Storage seam tests: group-committed inserts, events, pruning, tenants.

use std::time::Duration;

use mailsafe_catcher::storage::{NewMessage, Store, StoreOptions};

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
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.id.clone())
            .collect::<Vec<_>>(),
        newest[..50].to_vec()
    );
    assert_eq!(page.tags, vec!["one", "Two"]);
    let m = &page.messages[0];
    assert_eq!(m.from.address, "alice@example.com");
    assert_eq!(m.from.name, "Alice Example");
    assert_eq!(m.to.len(), 2);
    assert_eq!(m.tags, vec!["one", "Two"]);
    let e = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.kind, "new");
    assert_eq!(serde_json::to_value(&e).unwrap()["Type"], "new");
}
