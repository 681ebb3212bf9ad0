//! `mailsafe restore`, `snapshots` and `verify` against a real S3
//! (SeaweedFS): round trips over journal modes and page sizes, point-in-time
//! picks, and the rules that protect an existing database.

mod common;
mod restore_support;

use restore_support::*;

/// Builds a db, snapshots it (base, then two incrementals with more rows),
/// and checks that each snapshot restores to exactly its content.
async fn round_trip(page_size: u32, mode: &str) {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db = path(dir.path(), "app.db");
    let conn = create_db(&db, page_size, mode);
    let mut w = ReplicaWriter::new(s3.store("rt").await);
    let mut expected = Vec::new();
    for (i, rows) in [200usize, 1, 500].into_iter().enumerate() {
        insert_rows(&conn, rows, 300);
        let (ps, img) = image(&conn, &db);
        assert_eq!(ps, page_size);
        let id = if i == 0 {
            w.base(ps, &img, at(i as i64)).await
        } else {
            w.incremental(&img, at(i as i64)).await
        };
        expected.push((id, content(&db), img));
    }
    for (id, want, img) in &expected {
        let out_path = path(dir.path(), &format!("restored-{id}.db"));
        let out = run(
            &s3,
            &[
                "restore",
                "--db",
                &arg(dir.path(), "app.db"),
                "--replica",
                &s3.url("rt"),
                "--snapshot",
                id,
                "-o",
                out_path.to_str().unwrap(),
                "--integrity-check",
                "full",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(&std::fs::read(&out_path).unwrap(), img, "image of {id}");
        assert_eq!(&content(&out_path), want, "content of {id}");
        assert_eq!(integrity(&out_path), "ok");
    }
    // Nothing but the restored dbs (and the source) is left in the dir.
    let mut want: Vec<String> = expected
        .iter()
        .map(|(id, _, _)| format!("restored-{id}.db"))
        .collect();
    want.extend(["app.db".to_string()]);
    want.sort();
    let mut got: Vec<String> = files_in(dir.path())
        .into_iter()
        .filter(|f| !f.starts_with("app.db-"))
        .collect();
    got.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn round_trip_wal_4k() {
    round_trip(4096, "wal").await;
}

#[tokio::test]
async fn round_trip_rollback_1k() {
    round_trip(1024, "delete").await;
}

#[tokio::test]
async fn round_trip_wal_64k() {
    round_trip(65536, "wal").await;
}

#[tokio::test]
async fn empty_db_round_trip() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let mut w = ReplicaWriter::new(s3.store("").await);
    w.base(4096, &[], at(0)).await;
    let target = path(dir.path(), "empty.db");
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            target.to_str().unwrap(),
            "--replica",
            &s3.url(""),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 0);
}

#[tokio::test]
async fn point_in_time_picks_newest_at_or_before() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db = path(dir.path(), "src.db");
    let conn = create_db(&db, 4096, "wal");
    let mut w = ReplicaWriter::new(s3.store("pitr").await);
    let mut states = Vec::new();
    for i in 0..3 {
        insert_rows(&conn, 10 * (i + 1), 100);
        let (ps, img) = image(&conn, &db);
        let t = at(i as i64 * 60);
        let id = if i == 0 {
            w.base(ps, &img, t).await
        } else {
            w.incremental(&img, t).await
        };
        states.push((id, content(&db)));
    }
    let restore_at = |when: &str, name: &str| {
        let target = path(dir.path(), name);
        let out = run(
            &s3,
            &[
                "restore",
                "--db",
                target.to_str().unwrap(),
                "--replica",
                &s3.url("pitr"),
                "--at",
                when,
            ],
        );
        (out, target)
    };
    // Exactly at the second snapshot's time, and between the second and third.
    for (when, name) in [
        ("2026-11-29T10:01:00Z", "a.db"),
        ("2026-11-29T11:01:59+01:00", "b.db"),
    ] {
        let (out, target) = restore_at(when, name);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(content(&target), states[1].1, "--at {when}");
    }
    let (out, target) = restore_at("2026-11-29T10:05:00Z", "c.db");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(content(&target), states[2].1);
    // Before the first snapshot: nothing to restore, exit 3, no file.
    let (out, target) = restore_at("2026-11-29T09:59:59Z", "d.db");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!target.exists());
    // A malformed time is a usage error.
    let (out, _) = restore_at("yesterday", "e.db");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("yesterday"));
    // An unknown id: exit 3, named.
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            &arg(dir.path(), "f.db"),
            "--replica",
            &s3.url("pitr"),
            "--snapshot",
            "20990101T000000.000Z-00000000",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("20990101T000000.000Z-00000000"));
}

#[tokio::test]
async fn existing_db_is_replaced_only_with_force_and_if_flags_skip() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (_w, db, _conn) = replica_with_base(&s3, "p", dir.path(), 50, 100).await;
    let want = content(&db);

    // The target holds another db, with a stale -wal and -shm beside it.
    let target = path(dir.path(), "live.db");
    let other = create_db(&target, 4096, "delete");
    insert_rows(&other, 3, 10);
    drop(other);
    let before = std::fs::read(&target).unwrap();
    let wal = path(dir.path(), "live.db-wal");
    let shm = path(dir.path(), "live.db-shm");
    std::fs::write(&wal, b"stale wal").unwrap();
    std::fs::write(&shm, b"stale shm").unwrap();
    let t = target.to_str().unwrap();
    let url = s3.url("p");

    let out = run(&s3, &["restore", "--db", t, "--replica", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--force") && stderr(&out).contains(t),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&target).unwrap(), before, "target untouched");

    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            t,
            "--replica",
            &url,
            "--if-db-not-exists",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("skipping"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&target).unwrap(), before);

    let out = run(&s3, &["restore", "--db", t, "--replica", &url, "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(content(&target), want);
    assert!(!wal.exists() && !shm.exists(), "stale -wal/-shm removed");

    // An empty replica: exit 3, or 0 with --if-replica-exists; nothing created.
    let fresh = path(dir.path(), "fresh.db");
    let f = fresh.to_str().unwrap();
    let empty = s3.url("nothing-here");
    let out = run(&s3, &["restore", "--db", f, "--replica", &empty]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            f,
            "--replica",
            &empty,
            "--if-replica-exists",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!fresh.exists());

    // Env vars work like the flags (the initContainer form).
    let out = s3
        .mailsafe()
        .args(["restore"])
        .env("MAILSAFE_DB", f)
        .env("MAILSAFE_REPLICA", &empty)
        .env("MAILSAFE_IF_REPLICA_EXISTS", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test]
async fn missing_dir_and_non_sqlite_target_are_refused() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    replica_with_base(&s3, "m", dir.path(), 5, 10).await;
    let url = s3.url("m");

    let missing = path(dir.path(), "no/such/dir/app.db");
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            missing.to_str().unwrap(),
            "--replica",
            &url,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&arg(dir.path(), "no/such/dir")),
        "{}",
        stderr(&out)
    );

    let notes = path(dir.path(), "notes.txt");
    std::fs::write(&notes, b"my precious notes, not a database").unwrap();
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            notes.to_str().unwrap(),
            "--replica",
            &url,
            "--force",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not an SQLite database"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&notes).unwrap(),
        b"my precious notes, not a database"
    );
    assert_eq!(restore_temp_files(dir.path()), Vec::<String>::new());
}

/// The default `--integrity-check quick` checks every b-tree but not whether
/// an FTS5 index agrees with its text (FTS5 runs that costly check even for
/// quick_check, and mail catcher dbs carry big FTS indexes); `full` runs it.
/// The source here has a consistent b-tree and an FTS index that disagrees
/// with its content, so the two levels must give different answers.
#[tokio::test]
async fn quick_check_is_structural_and_full_check_covers_fts5() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db = path(dir.path(), "fts.db");
    let conn = create_db(&db, 4096, "wal");
    conn.execute_batch(
        "CREATE VIRTUAL TABLE f USING fts5(body);
         INSERT INTO f(body) VALUES ('alpha beta'), ('gamma delta');
         UPDATE f_content SET c0 = 'zeta' WHERE id = 1;",
    )
    .unwrap();
    assert_ne!(integrity(&db), "ok", "the FTS index should disagree");
    let url = s3.url("fts");
    let out = run(
        &s3,
        &["snapshot", "--db", db.to_str().unwrap(), "--replica", &url],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let quick = path(dir.path(), "quick.db");
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            quick.to_str().unwrap(),
            "--replica",
            &url,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let restored = rusqlite::Connection::open(&quick).unwrap();
    let bodies: Vec<String> = restored
        .prepare("SELECT c0 FROM f_content ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(bodies, ["zeta", "gamma delta"]);

    let full = path(dir.path(), "full.db");
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            full.to_str().unwrap(),
            "--replica",
            &url,
            "--integrity-check",
            "full",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("integrity_check"), "{}", stderr(&out));
    assert!(!full.exists());
    assert_eq!(restore_temp_files(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn snapshots_lists_and_verify_checks_every_snapshot() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let db = path(dir.path(), "src.db");
    let conn = create_db(&db, 4096, "wal");
    let mut w = ReplicaWriter::new(s3.store("l").await);
    let mut ids = Vec::new();
    for i in 0..3 {
        insert_rows(&conn, 100, 200);
        let (ps, img) = image(&conn, &db);
        ids.push(if i == 0 {
            w.base(ps, &img, at(i)).await
        } else {
            w.incremental(&img, at(i)).await
        });
    }
    let size = std::fs::metadata(&db).unwrap().len();
    let url = s3.url("l");
    let out = run(&s3, &["snapshots", "--replica", &url, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    for (row, id) in list.iter().zip(&ids) {
        assert_eq!(row["id"], id.as_str());
        assert!(row["stored_bytes"].as_u64().unwrap() > 0);
        assert!(row["new_bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(list[2]["db_size"].as_u64(), Some(size));
    assert_eq!(list[0]["kind"], "base");
    assert_eq!(list[2]["kind"], "incremental");
    let out = run(&s3, &["snapshots", "--replica", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(ids.iter().all(|id| text.contains(id.as_str())), "{text}");

    let out = run(&s3, &["verify", "--replica", &url, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["snapshot"], ids[2].as_str());
    assert_eq!(rep["db_size"].as_u64(), Some(size));
    let out = run(&s3, &["verify", "--replica", &url, "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("ok ").count(),
        3
    );
    // verify installs nothing next to anything.
    assert_eq!(
        files_in(dir.path())
            .iter()
            .filter(|f| f.contains("mailsafe"))
            .count(),
        0
    );
}

/// A version-1 replica (one object per chunk, as the session-2 build wrote
/// it) still lists, verifies and restores; the current writer continues it,
/// and its re-base mixes the v1 chunk objects it reuses with new packs; a
/// prune keeps what that base needs, and it restores.
#[tokio::test]
async fn v1_replica_still_restores_and_is_continued_in_packs() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (mut w, db, conn) = replica_with_base(&s3, "v1", dir.path(), 2500, 500).await;
    insert_rows(&conn, 10, 500);
    let (_, img) = image(&conn, &db);
    let v1_id = w.incremental(&img, at(1)).await;
    let url = s3.url("v1");
    let st = s3.store("v1").await;
    let key = mailsafe::format::manifest_key(&v1_id);
    let raw: serde_json::Value = serde_json::from_slice(&st.get(&key).await.unwrap()).unwrap();
    assert_eq!(raw["version"], 1);

    let out = run(&s3, &["snapshots", "--replica", &url, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&v1_id));
    let out = run(&s3, &["verify", "--replica", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let restored = path(dir.path(), "from-v1.db");
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            restored.to_str().unwrap(),
            "--replica",
            &url,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(content(&restored), content(&db));

    // The current writer continues the history; enough new rows force a
    // re-base that reuses the unchanged v1 chunks where they are.
    insert_rows(&conn, 2000, 500);
    let out = run(
        &s3,
        &[
            "snapshot",
            "--db",
            db.to_str().unwrap(),
            "--replica",
            &url,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["base"], true, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let key = mailsafe::format::manifest_key(&id);
    let m = mailsafe::format::Manifest::from_json(&key, &st.get(&key).await.unwrap()).unwrap();
    assert_eq!(m.version, mailsafe::format::FORMAT_VERSION);
    assert!(
        m.chunks.iter().any(|c| c.pack.is_none()),
        "no v1 chunk reused"
    );
    assert!(m.chunks.iter().any(|c| c.pack.is_some()), "nothing packed");

    let out = run(
        &s3,
        &[
            "prune",
            "--replica",
            &url,
            "--keep-last",
            "1",
            "--gc-grace",
            "0s",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let restored = path(dir.path(), "mixed.db");
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            restored.to_str().unwrap(),
            "--replica",
            &url,
            "--integrity-check",
            "full",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(content(&restored), content(&db));
    let out = run(&s3, &["verify", "--replica", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// `--dry-run` says what a restore would do and writes nothing, refusing
/// what the restore would refuse; `--json` reports every outcome.
#[tokio::test]
async fn dry_run_plans_without_writing_and_json_reports_each_outcome() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (mut w, db, conn) = replica_with_base(&s3, "p", dir.path(), 50, 100).await;
    insert_rows(&conn, 5, 100);
    let (_, img) = image(&conn, &db);
    let newest = w.incremental(&img, at(60)).await;
    let url = s3.url("p");
    let target = path(dir.path(), "new.db");
    let t = target.to_str().unwrap();
    let json = |out: &std::process::Output| -> serde_json::Value {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
        serde_json::from_slice(&out.stdout).expect("one JSON document on stdout")
    };

    let before = files_in(dir.path());
    let plan = json(&run(
        &s3,
        &[
            "restore",
            "--db",
            t,
            "--replica",
            &url,
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(plan["outcome"], "dry-run", "{plan}");
    assert_eq!(plan["snapshot"], newest.as_str(), "{plan}");
    assert_eq!(plan["deltas"], 1, "{plan}");
    assert_eq!(plan["replaces"], false, "{plan}");
    assert_eq!(plan["target"], t, "{plan}");
    assert_eq!(plan["db_size"], img.len(), "{plan}");
    assert!(plan["objects"].as_u64().unwrap() >= 2, "{plan}");
    assert!(plan["download_bytes"].as_u64().unwrap() > 0, "{plan}");
    let out = run(&s3, &["restore", "--db", t, "--replica", &url, "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("would restore snapshot {newest} ")),
        "{text}"
    );
    assert_eq!(files_in(dir.path()), before, "a dry run writes nothing");

    let done = json(&run(
        &s3,
        &["restore", "--db", t, "--replica", &url, "--json"],
    ));
    assert_eq!(done["outcome"], "restored", "{done}");
    assert_eq!(done["snapshot"], newest.as_str(), "{done}");
    assert_eq!(done["db_size"], img.len(), "{done}");
    assert_eq!(done["target"], t, "{done}");
    assert_eq!(std::fs::read(&target).unwrap(), img);

    // The target exists now: a dry run refuses it as the restore would,
    // and with --force says it would replace it, and leaves it alone.
    let out = run(&s3, &["restore", "--db", t, "--replica", &url, "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    let plan = json(&run(
        &s3,
        &[
            "restore",
            "--db",
            t,
            "--replica",
            &url,
            "--dry-run",
            "--force",
            "--json",
        ],
    ));
    assert_eq!(plan["replaces"], true, "{plan}");
    let skipped = json(&run(
        &s3,
        &[
            "restore",
            "--db",
            t,
            "--replica",
            &url,
            "--if-db-not-exists",
            "--json",
        ],
    ));
    assert_eq!(skipped["outcome"], "skipped", "{skipped}");
    assert_eq!(skipped["reason"], "db-exists", "{skipped}");
    assert_eq!(std::fs::read(&target).unwrap(), img, "left alone");
}
