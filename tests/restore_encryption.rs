//! Client-side encryption of backups, read side (against a real S3): an
//! encrypted replica restores with the right key only; a missing or wrong key
//! and a tampered manifest fail with exit 4; stored objects are not
//! plaintext; and the key never appears in any output.

mod common;
mod restore_support;

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
    let mut w = ReplicaWriter::new(store(s3, prefix).await);
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
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            target.to_str().unwrap(),
            "--replica",
            &url,
            "--encryption-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
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

    let out = run(&s3, &["restore", "--db", t, "--replica", &url]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("encrypted") && stderr(&out).contains("MAILSAFE_ENCRYPTION_KEY"),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());

    let wrong = path(dir.path(), "wrong.key");
    std::fs::write(&wrong, [9u8; 32]).unwrap();
    let w_arg = wrong.to_str().unwrap();
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            t,
            "--replica",
            &url,
            "--encryption-key-file",
            w_arg,
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrong encryption key"),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());
    let out = run(
        &s3,
        &["verify", "--replica", &url, "--encryption-key-file", w_arg],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    // A key file that is not a key: usage error that does not echo it.
    let bad = path(dir.path(), "bad.key");
    std::fs::write(&bad, "correct-horse-battery-staple").unwrap();
    let out = run(
        &s3,
        &[
            "verify",
            "--replica",
            &url,
            "--encryption-key-file",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
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
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            t,
            "--replica",
            &url,
            "--encryption-key-file",
            g,
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("authentication failed") && stderr(&out).contains(&key),
        "{}",
        stderr(&out)
    );
    // Stripping the encryption block does not make it pass either.
    v.as_object_mut().unwrap().remove("encryption");
    w.store
        .put(&key, Bytes::from(serde_json::to_vec(&v).unwrap()))
        .await
        .unwrap();
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            t,
            "--replica",
            &url,
            "--encryption-key-file",
            g,
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("not encrypted"), "{}", stderr(&out));
    assert!(!target.exists());

    w.store.put(&key, original).await.unwrap();
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            t,
            "--replica",
            &url,
            "--encryption-key-file",
            g,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_no_key(&out);
}
