//! Client-side encryption of backups against a real S3. Read side (replicas
//! built by the independent writer in `restore_support`): an encrypted
//! replica restores with the right key only; a missing or wrong key and a
//! tampered manifest asked for by id fail with exit 4 (a tampered newest one
//! is skipped, never restored); the key never appears in any output.
//! Write side (the binary itself): `snapshot`, `cron`, `watch` and `serve --replica`
//! with a key round-trip through `restore`; the bucket holds no plaintext of
//! a marker row and no plain content hash; mixing keys on one prefix is
//! refused; a tampered object fails `verify`.

mod common;
mod restore_support;
mod watch_support;

use bytes::Bytes;
use mailsafe::crypto::Key;
use mailsafe::format;
use restore_support::*;

const RAW_KEY: [u8; 32] = *b"0123456789abcdefFEDCBA9876543210";

fn secrets() -> Vec<String> {
    use base64::Engine;
    vec![
        String::from_utf8(RAW_KEY.to_vec()).unwrap(),
        hex::encode(RAW_KEY),
        base64::engine::general_purpose::STANDARD.encode(RAW_KEY),
    ]
}

fn assert_no_key(out: &std::process::Output) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for s in secrets() {
        assert!(!text.contains(&s), "key material in output: {text}");
    }
}

/// Runs `mailsafe ARGS`, with `--encryption-key-file KEY` when `key` is
/// given, asserts exit code `code` and that no key material is in the
/// output, and returns the output for the message checks.
fn keyed(s3: &common::S3, args: &[&str], key: Option<&str>, code: i32) -> std::process::Output {
    let mut all = args.to_vec();
    if let Some(k) = key {
        all.extend(["--encryption-key-file", k]);
    }
    let out = run(s3, &all);
    assert_eq!(out.status.code(), Some(code), "{all:?}: {}", stderr(&out));
    assert_no_key(&out);
    out
}

/// An encrypted replica (base + incremental) of a real db.
async fn encrypted(
    s3: &common::S3,
    prefix: &str,
    dir: &std::path::Path,
) -> (ReplicaWriter, (i64, String)) {
    let db = path(dir, "src.db");
    let conn = create_db(&db, 4096, "wal");
    insert_rows(&conn, 300, 400);
    let (ps, img) = image(&conn, &db);
    let mut w = ReplicaWriter::new(s3.store(prefix).await);
    w.key = Some(Key::from_bytes(&RAW_KEY));
    w.base(ps, &img, at(0)).await;
    conn.execute(
        "INSERT INTO mail(body) VALUES ('needle-in-the-haystack')",
        [],
    )
    .unwrap();
    let (_, img) = image(&conn, &db);
    w.incremental(&img, at(1)).await;
    (w, content(&db))
}

#[tokio::test]
async fn encrypted_round_trip_with_key_file_and_env() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (w, want) = encrypted(&s3, "enc", dir.path()).await;
    let url = s3.url("enc");

    // Stored objects are ciphertext: no row text, no zstd frame.
    for meta in w.store.list(format::DELTAS).await.unwrap() {
        let body = w.store.get(&meta.key).await.unwrap();
        assert!(body.starts_with(mailsafe::crypto::MAGIC));
        assert!(zstd::stream::decode_all(&body[..]).is_err());
    }
    let manifest = w
        .store
        .list(format::MANIFESTS)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let text = String::from_utf8(w.store.get(&manifest.key).await.unwrap().to_vec()).unwrap();
    let key_id = Key::from_bytes(&RAW_KEY).id().to_string();
    assert!(
        text.contains("aes-256-gcm") && text.contains(&key_id),
        "{text}"
    );

    let key_file = path(dir.path(), "backup.key");
    std::fs::write(&key_file, format!("{}\n", hex::encode(RAW_KEY))).unwrap();
    let target = path(dir.path(), "a.db");
    let out = keyed(
        &s3,
        &[
            "restore",
            "--db",
            target.to_str().unwrap(),
            "--replica",
            &url,
        ],
        Some(key_file.to_str().unwrap()),
        0,
    );
    assert_eq!(content(&target), want);
    assert_no_key(&out);

    let target = path(dir.path(), "b.db");
    use base64::Engine;
    let out = s3
        .mailsafe()
        .args([
            "restore",
            "--db",
            target.to_str().unwrap(),
            "--replica",
            &url,
        ])
        .env(
            "MAILSAFE_ENCRYPTION_KEY",
            base64::engine::general_purpose::STANDARD.encode(RAW_KEY),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(content(&target), want);
    assert_no_key(&out);

    for args in [
        vec!["verify", "--replica", &url, "--all", "--json"],
        vec!["snapshots", "--replica", &url, "--json"],
        vec!["verify", "--replica", &url, "--json"],
    ] {
        let out = s3
            .mailsafe()
            .args(&args)
            .env("MAILSAFE_ENCRYPTION_KEY", hex::encode(RAW_KEY))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_no_key(&out);
    }
}

#[tokio::test]
async fn missing_or_wrong_key_and_tampering_fail_with_exit_4() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = encrypted(&s3, "enc", dir.path()).await;
    let url = s3.url("enc");
    let target = path(dir.path(), "out.db");
    let t = target.to_str().unwrap();

    let out = keyed(&s3, &["restore", "--db", t, "--replica", &url], None, 4);
    assert!(
        stderr(&out).contains("encrypted") && stderr(&out).contains("MAILSAFE_ENCRYPTION_KEY"),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());

    let wrong = path(dir.path(), "wrong.key");
    std::fs::write(&wrong, [9u8; 32]).unwrap();
    let w_arg = wrong.to_str().unwrap();
    let out = keyed(
        &s3,
        &["restore", "--db", t, "--replica", &url],
        Some(w_arg),
        4,
    );
    assert!(
        stderr(&out).contains("wrong encryption key"),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());
    keyed(&s3, &["verify", "--replica", &url], Some(w_arg), 4);

    // A key file that is not a key: usage error that does not echo it.
    let bad = path(dir.path(), "bad.key");
    std::fs::write(&bad, "correct-horse-battery-staple").unwrap();
    let out = keyed(
        &s3,
        &["verify", "--replica", &url],
        Some(bad.to_str().unwrap()),
        2,
    );
    assert!(!stderr(&out).contains("correct-horse"), "{}", stderr(&out));

    // Tampering with an authenticated field of the manifest (still valid
    // JSON, hashes untouched) is detected with the right key.
    let good = path(dir.path(), "good.key");
    std::fs::write(&good, RAW_KEY).unwrap();
    let g = good.to_str().unwrap();
    let key = w
        .store
        .list(format::MANIFESTS)
        .await
        .unwrap()
        .pop()
        .unwrap()
        .key;
    let original = w.store.get(&key).await.unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
    v["created"] = "2020-01-01T00:00:00Z".into();
    w.store
        .put(&key, Bytes::from(serde_json::to_vec(&v).unwrap()))
        .await
        .unwrap();
    let id = format::manifest_id(&key).unwrap().to_string();
    // Asked for by id, it fails with exit 4 naming the key.
    let by_id = ["restore", "--db", t, "--replica", &url, "--snapshot", &id];
    let out = keyed(&s3, &by_id, Some(g), 4);
    assert!(
        stderr(&out).contains("authentication failed") && stderr(&out).contains(&key),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());
    // As the newest, it is skipped with a warning naming it (a manifest
    // planted by someone without the key must not stop restores): the
    // snapshot before it is restored, never the tampered one.
    let older = path(dir.path(), "older.db");
    let o = older.to_str().unwrap();
    let out = keyed(&s3, &["restore", "--db", o, "--replica", &url], Some(g), 0);
    assert!(
        stderr(&out).contains("authentication failed") && stderr(&out).contains(&key),
        "{}",
        stderr(&out)
    );
    let rows: i64 = rusqlite::Connection::open(&older)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM mail WHERE body = 'needle-in-the-haystack'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0, "the tampered snapshot's row must not be restored");
    // Stripping the encryption block does not make it pass either.
    v.as_object_mut().unwrap().remove("encryption");
    w.store
        .put(&key, Bytes::from(serde_json::to_vec(&v).unwrap()))
        .await
        .unwrap();
    let out = keyed(&s3, &by_id, Some(g), 4);
    assert!(stderr(&out).contains("not encrypted"), "{}", stderr(&out));
    assert!(!target.exists());

    w.store.put(&key, original).await.unwrap();
    keyed(&s3, &["restore", "--db", t, "--replica", &url], Some(g), 0);
}

/// A row whose text must never be readable in the bucket.
const MARKER: &str = "ZEBRA-MARKER-ROW-31337-the-quick-brown-fox-mailsafe";

/// Every object under the replica prefix of `store`, with its bytes.
async fn all_objects(store: &mailsafe::store::DynStore) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    for meta in store.list("").await.unwrap() {
        let body = store.get(&meta.key).await.unwrap();
        out.push((meta.key, body));
    }
    out
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether a stored object reveals `marker`: in its bytes, or once
/// decompressed (zstd Huffman-codes literals, so plaintext objects hide it
/// from a byte search alone).
fn reveals(body: &[u8], marker: &str) -> bool {
    holds(body, marker.as_bytes())
        || zstd::stream::decode_all(body).is_ok_and(|plain| holds(&plain, marker.as_bytes()))
}

/// A WAL db with random rows and one marker row.
fn marker_db(dir: &std::path::Path) -> (std::path::PathBuf, rusqlite::Connection) {
    let db = path(dir, "src.db");
    let conn = create_db(&db, 4096, "wal");
    insert_rows(&conn, 200, 300);
    conn.execute("INSERT INTO mail(body) VALUES (?1)", [MARKER])
        .unwrap();
    insert_rows(&conn, 50, 300);
    (db, conn)
}

/// A key file holding [`RAW_KEY`] as hex.
fn key_file(dir: &std::path::Path) -> String {
    let p = path(dir, "backup.key");
    std::fs::write(&p, format!("{}\n", hex::encode(RAW_KEY))).unwrap();
    p.to_string_lossy().into_owned()
}

#[tokio::test]
async fn snapshot_with_key_round_trips_and_leaks_no_plaintext() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (db, conn) = marker_db(dir.path());
    let db_arg = db.to_str().unwrap();
    let keyf = key_file(dir.path());
    let url = s3.url("enc");

    // Control: the same db without a key does show the marker in the bucket,
    // so the check below can fail.
    let plain_url = s3.url("plain");
    keyed(
        &s3,
        &["snapshot", "--db", db_arg, "--replica", &plain_url],
        None,
        0,
    );
    let plain = all_objects(&s3.store("plain").await).await;
    assert!(
        plain.iter().any(|(_, b)| reveals(b, MARKER)),
        "control: the plaintext replica should contain the marker"
    );

    for round in 0..2 {
        let out = keyed(
            &s3,
            &["snapshot", "--db", db_arg, "--replica", &url, "--json"],
            Some(&keyf),
            0,
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(report["id"].is_string(), "{report}");
        assert_eq!(report["base"], round == 0, "{report}");
        // A second snapshot continues the encrypted history incrementally.
        conn.execute(
            "INSERT INTO mail(body) VALUES (?1)",
            [format!("{MARKER}-second")],
        )
        .unwrap();
    }
    // The WAL still holds the last row: snapshot once more to include it.
    keyed(
        &s3,
        &["snapshot", "--db", db_arg, "--replica", &url],
        Some(&keyf),
        0,
    );

    // The bucket: no marker anywhere; chunks and deltas sealed; manifests
    // signed with the key id; no chunk named by (or listing) the plain
    // sha256 of the db's chunk contents.
    let st = s3.store("enc").await;
    let objects = all_objects(&st).await;
    let (ps, img) = image(&conn, &db);
    let plain_hashes: Vec<String> = img
        .chunks(format::chunk_pages(ps) as usize * ps as usize)
        .map(format::sha256_hex)
        .collect();
    let key_id = Key::from_bytes(&RAW_KEY).id().to_string();
    let mut manifests = 0;
    for (k, body) in &objects {
        assert!(
            !reveals(body, MARKER),
            "{k} holds the marker row in plaintext"
        );
        for h in &plain_hashes {
            assert!(
                !k.contains(h.as_str()),
                "{k} is named by a plain content hash"
            );
            assert!(!holds(body, h.as_bytes()), "{k} lists a plain content hash");
        }
        if k.starts_with(format::CHUNKS)
            || k.starts_with(format::PACKS)
            || k.starts_with(format::DELTAS)
        {
            assert!(
                body.starts_with(mailsafe::crypto::MAGIC),
                "{k} is not sealed"
            );
        } else if k.starts_with(format::MANIFESTS) {
            let m = format::Manifest::from_json(k, body).unwrap();
            let e = m.encryption.expect("encrypted manifest");
            assert_eq!(e.key_id, key_id);
            manifests += 1;
        }
    }
    assert_eq!(manifests, 3);

    // Round trip through restore; verify checks authenticity.
    let target = path(dir.path(), "restored.db");
    let t = target.to_str().unwrap();
    keyed(
        &s3,
        &["restore", "--db", t, "--replica", &url],
        Some(&keyf),
        0,
    );
    assert_eq!(content(&target), content(&db));
    assert_eq!(integrity(&target), "ok");
    keyed(&s3, &["verify", "--all", "--replica", &url], Some(&keyf), 0);

    // No key / wrong key: exit 4, the message names the key id, not the key.
    let out = keyed(&s3, &["verify", "--replica", &url], None, 4);
    assert!(stderr(&out).contains(&key_id), "{}", stderr(&out));
    let wrong = path(dir.path(), "wrong.key");
    std::fs::write(&wrong, hex::encode([9u8; 32])).unwrap();
    let w = wrong.to_str().unwrap();
    let out = keyed(&s3, &["verify", "--replica", &url], Some(w), 4);
    assert!(
        stderr(&out).contains("wrong encryption key"),
        "{}",
        stderr(&out)
    );
    assert_no_key(&out);

    // Mixing keys on one prefix is refused before anything is uploaded,
    // naming both key ids; so is writing without the key.
    conn.execute("INSERT INTO mail(body) VALUES ('more')", [])
        .unwrap();
    let before = st.list("").await.unwrap().len();
    let out = keyed(
        &s3,
        &["snapshot", "--db", db_arg, "--replica", &url],
        Some(w),
        2,
    );
    let wrong_id = Key::from_bytes(&[9u8; 32]).id().to_string();
    assert!(
        stderr(&out).contains(&key_id) && stderr(&out).contains(&wrong_id),
        "{}",
        stderr(&out)
    );
    let out = keyed(
        &s3,
        &["snapshot", "--db", db_arg, "--replica", &url],
        None,
        2,
    );
    assert!(
        stderr(&out).contains("no encryption key"),
        "{}",
        stderr(&out)
    );
    // And a plaintext replica refuses an encrypted writer.
    let out = keyed(
        &s3,
        &["snapshot", "--db", db_arg, "--replica", &plain_url],
        Some(&keyf),
        2,
    );
    assert!(stderr(&out).contains("not encrypted"), "{}", stderr(&out));
    assert_eq!(st.list("").await.unwrap().len(), before, "nothing uploaded");

    // cron continues the same encrypted history with the right key.
    keyed(
        &s3,
        &["cron", "--once", "--db", db_arg, "--replica", &url],
        Some(&keyf),
        0,
    );
    keyed(
        &s3,
        &["restore", "--db", t, "--force", "--replica", &url],
        Some(&keyf),
        0,
    );
    assert_eq!(content(&target), content(&db));

    // A tampered chunk (same size, one bit flipped) fails verification.
    let (k, body) = objects
        .iter()
        .find(|(k, _)| k.starts_with(format::CHUNKS) || k.starts_with(format::PACKS))
        .unwrap();
    let mut bad = body.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    st.put(k, Bytes::from(bad)).await.unwrap();
    let out = run(
        &s3,
        &[
            "verify",
            "--all",
            "--replica",
            &url,
            "--encryption-key-file",
            &keyf,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(k.as_str()),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_key_round_trips() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (db, conn) = marker_db(dir.path());
    let keyf = key_file(dir.path());
    let url = s3.url("watched");
    let mut w = watch_support::Watcher::start(
        &s3,
        &s3.server.endpoint,
        &db,
        &url,
        &["--encryption-key-file", &keyf],
    );
    w.wait_caught_up(std::time::Duration::from_secs(30)).await;
    for i in 0..20 {
        conn.execute(
            "INSERT INTO mail(body) VALUES (?1)",
            [format!("{MARKER} {i}")],
        )
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    w.term();
    assert!(
        w.wait(std::time::Duration::from_secs(30)).success(),
        "{}",
        w.logs()
    );
    assert!(!w.logs().contains(&hex::encode(RAW_KEY)));

    let objects = all_objects(&s3.store("watched").await).await;
    // Format v2: each incremental snapshot's delta pack is inside its
    // manifest object, sealed like a `deltas/<id>` object would be.
    let embedded: Vec<Bytes> = objects
        .iter()
        .filter(|(k, _)| k.starts_with(format::MANIFESTS))
        .filter_map(|(k, body)| {
            let m = format::Manifest::from_json(k, body).unwrap();
            let (mkey, r) = m.deltas.last()?.embedded()?;
            (&mkey == k).then(|| body.slice(r.start as usize..r.end as usize))
        })
        .collect();
    assert!(!embedded.is_empty(), "no incremental snapshot");
    for d in &embedded {
        assert!(
            d.starts_with(mailsafe::crypto::MAGIC),
            "embedded delta not sealed"
        );
    }
    for (k, body) in &objects {
        assert!(!reveals(body, MARKER), "{k} holds the marker row");
    }
    let target = path(dir.path(), "restored.db");
    let out = s3
        .mailsafe()
        .args([
            "restore",
            "--db",
            target.to_str().unwrap(),
            "--replica",
            &url,
        ])
        .env("MAILSAFE_ENCRYPTION_KEY", hex::encode(RAW_KEY))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(content(&target), content(&db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replica_with_key_round_trips() {
    use std::time::{Duration, Instant};
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let keyf = key_file(dir.path());
    let url = s3.url("served");
    let key_id = Key::from_bytes(&RAW_KEY).id().to_string();

    // Two pods in turn: the second restores the first's (encrypted) mail on
    // start, adds its own, and both flush on SIGTERM.
    for (pod, sent) in [(1, 3), (2, 6)] {
        let db = path(dir.path(), &format!("pod{pod}.db"));
        let (smtp, http) = (common::free_port(), common::free_port());
        let log = path(dir.path(), &format!("pod{pod}.log"));
        let mut child = s3
            .mailsafe()
            .args(["serve", "--db", db.to_str().unwrap()])
            .args(["--smtp", &format!("127.0.0.1:{smtp}")])
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--replica", &url, "--encryption-key-file", &keyf])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let logs = || std::fs::read_to_string(&log).unwrap_or_default();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", smtp)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "{}", logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        let script = format!(
            "import smtplib\n\
             s = smtplib.SMTP('127.0.0.1', {smtp}, timeout=30)\n\
             for i in range(3):\n\
             \x20   s.sendmail('a@example.test', ['b@example.test'], 'Subject: {MARKER} %d\\r\\n\\r\\nbody\\r\\n' % i)\n\
             s.quit()\n"
        );
        let ok = std::process::Command::new("python3")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(ok.success());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{}", logs());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(st.success(), "{}", logs());
        let restored = path(dir.path(), &format!("restored{pod}.db"));
        keyed(
            &s3,
            &[
                "restore",
                "--db",
                restored.to_str().unwrap(),
                "--replica",
                &url,
            ],
            Some(&keyf),
            0,
        );
        let n: i64 = rusqlite::Connection::open(&restored)
            .unwrap()
            .query_row("SELECT count(*) FROM mailbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, sent, "pod {pod}");
    }
    let objects = all_objects(&s3.store("served").await).await;
    for (k, body) in &objects {
        assert!(!reveals(body, MARKER), "{k} holds the marker subject");
        if k.starts_with(format::MANIFESTS) {
            assert!(String::from_utf8_lossy(body).contains(&key_id), "{k}");
        }
    }
    // Without the key, a new pod refuses to start rather than starting empty.
    let db = path(dir.path(), "pod3.db");
    let out = s3
        .mailsafe()
        .args(["serve", "--db", db.to_str().unwrap()])
        .args(["--smtp", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--replica", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!db.exists());
}
