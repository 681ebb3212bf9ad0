//! A damaged replica never produces a damaged database: each kind of damage
//! (flipped bit, truncated or missing object, manifest of an unknown version,
//! not a manifest, wrong image digest) fails `restore` and `verify` with exit
//! 4 and a message naming the key, and leaves the target untouched with no
//! temp file behind. Also: restore into a full disk.

mod common;
mod restore_support;

use bytes::Bytes;
use mailsafe::format;
use restore_support::*;

/// A replica with a base and one incremental snapshot of a real db; returns
/// the writer and the incremental's id.
async fn replica(s3: &common::S3, prefix: &str, dir: &std::path::Path) -> (ReplicaWriter, String) {
    replica_of(s3, prefix, dir, 400).await
}

async fn replica_of(
    s3: &common::S3,
    prefix: &str,
    dir: &std::path::Path,
    rows: usize,
) -> (ReplicaWriter, String) {
    let (mut w, db, conn) = replica_with_base(s3, prefix, dir, rows, 500).await;
    insert_rows(&conn, 20, 500);
    let (_, img) = image(&conn, &db);
    let id = w.incremental(&img, at(1)).await;
    (w, id)
}

/// Restores over an existing db with `--force` and runs `verify`; both must
/// fail with exit 4 naming `key`, and the existing db must be untouched.
fn assert_refused(s3: &common::S3, prefix: &str, dir: &std::path::Path, key: &str, what: &str) {
    let target = path(dir, "live.db");
    if !target.exists() {
        let c = create_db(&target, 4096, "delete");
        insert_rows(&c, 7, 10);
    }
    let before = std::fs::read(&target).unwrap();
    let url = s3.url(prefix);
    let out = run(
        s3,
        &[
            "restore",
            "--db",
            target.to_str().unwrap(),
            "--replica",
            &url,
            "--force",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{what}: {}", stderr(&out));
    assert!(
        stderr(&out).contains(key),
        "{what}: message must name {key}: {}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        before,
        "{what}: target untouched"
    );
    let leftovers = restore_temp_files(dir);
    assert!(
        leftovers.is_empty(),
        "{what}: temp files left: {leftovers:?}"
    );
    let out = run(s3, &["verify", "--replica", &url]);
    assert_eq!(out.status.code(), Some(4), "{what}: {}", stderr(&out));
    assert!(
        stderr(&out).contains(key),
        "{what}: verify must name {key}: {}",
        stderr(&out)
    );
}

async fn tamper(w: &ReplicaWriter, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let mut body = w.store.get(key).await.unwrap().to_vec();
    f(&mut body);
    w.store.put(key, Bytes::from(body)).await.unwrap();
}

async fn a_chunk(w: &ReplicaWriter) -> String {
    let chunks = w.store.list(format::CHUNKS).await.unwrap();
    chunks.into_iter().max_by_key(|m| m.size).unwrap().key
}

#[tokio::test]
async fn flipped_bit_in_a_chunk() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = replica(&s3, "flip", dir.path()).await;
    let key = a_chunk(&w).await;
    tamper(&w, &key, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0x10;
    })
    .await;
    assert_refused(&s3, "flip", dir.path(), &key, "flipped bit");
}

#[tokio::test]
async fn truncated_chunk() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = replica(&s3, "trunc", dir.path()).await;
    let key = a_chunk(&w).await;
    tamper(&w, &key, |b| b.truncate(b.len() / 2)).await;
    assert_refused(&s3, "trunc", dir.path(), &key, "truncated");
}

#[tokio::test]
async fn missing_chunk() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = replica(&s3, "missing", dir.path()).await;
    let key = a_chunk(&w).await;
    w.store.delete(&key).await.unwrap();
    assert_refused(&s3, "missing", dir.path(), &key, "missing");
}

#[tokio::test]
async fn flipped_bit_in_a_delta() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (w, id) = replica(&s3, "delta", dir.path()).await;
    let key = format::delta_key(&id);
    tamper(&w, &key, |b| {
        let last = b.len() - 1;
        b[last] ^= 1;
    })
    .await;
    assert_refused(&s3, "delta", dir.path(), &key, "delta bit");
}

#[tokio::test]
async fn manifest_of_unknown_version_and_not_a_manifest() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (w, id) = replica(&s3, "ver", dir.path()).await;
    let key = format::manifest_key(&id);
    let original = w.store.get(&key).await.unwrap();
    tamper(&w, &key, |b| {
        let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
        v["version"] = 99.into();
        *b = serde_json::to_vec(&v).unwrap();
    })
    .await;
    assert_refused(&s3, "ver", dir.path(), &key, "unknown version");
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            &arg(dir.path(), "x.db"),
            "--replica",
            &s3.url("ver"),
        ],
    );
    assert!(stderr(&out).contains("version 99"), "{}", stderr(&out));

    w.store
        .put(&key, Bytes::from_static(b"\x89PNG not json at all"))
        .await
        .unwrap();
    assert_refused(&s3, "ver", dir.path(), &key, "not a manifest");

    // The listing shows the broken manifest instead of hiding it.
    let out = run(&s3, &["snapshots", "--replica", &s3.url("ver"), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list[1]["error"].as_str().unwrap().contains(&key));

    // Restored to its original bytes, the replica restores again.
    w.store.put(&key, original).await.unwrap();
    let out = run(&s3, &["verify", "--replica", &s3.url("ver")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test]
async fn wrong_image_digest() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (w, id) = replica(&s3, "digest", dir.path()).await;
    let key = format::manifest_key(&id);
    tamper(&w, &key, |b| {
        let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
        v["db"]["image_sha256"] = "ab".repeat(32).into();
        *b = serde_json::to_vec(&v).unwrap();
    })
    .await;
    assert_refused(&s3, "digest", dir.path(), &key, "image digest");
}

#[tokio::test]
async fn missing_base_manifest() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = replica(&s3, "nobase", dir.path()).await;
    let base_key = w.store.list(format::MANIFESTS).await.unwrap()[0]
        .key
        .clone();
    w.store.delete(&base_key).await.unwrap();
    assert_refused(&s3, "nobase", dir.path(), &base_key, "missing base");
}

/// Restoring a db bigger than the free space of the target's filesystem (a
/// 1 MiB tmpfs) fails clearly, leaves the existing db as it was and removes
/// the temp file.
#[tokio::test]
async fn disk_full_leaves_target_untouched() {
    let s3 = common::s3();
    let src = tempfile::tempdir().unwrap();
    // About 2.5 MiB of random text: more than the 1 MiB tmpfs holds.
    let (_w, _) = replica_of(&s3, "full", src.path(), 5000).await;
    let mnt = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mnt.path())
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIP disk_full_leaves_target_untouched: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIP disk_full_leaves_target_untouched: cannot run mount: {e}");
            return;
        }
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());
    let target = path(mnt.path(), "live.db");
    let c = create_db(&target, 4096, "delete");
    insert_rows(&c, 3, 10);
    drop(c);
    let before = std::fs::read(&target).unwrap();
    let out = run(
        &s3,
        &[
            "restore",
            "--db",
            target.to_str().unwrap(),
            "--replica",
            &s3.url("full"),
            "--force",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(mnt.path().to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&target).unwrap(), before);
    assert_eq!(files_in(mnt.path()), ["live.db"]);
}

/// A version-2 replica written by the real snapshot writer, with chunks in
/// several small packs; returns its base manifest.
async fn packed_replica(s3: &common::S3, prefix: &str, dir: &std::path::Path) -> format::Manifest {
    let db = path(dir, "packed.db");
    let conn = create_db(&db, 4096, "wal");
    insert_rows(&conn, 3000, 1000);
    let st = s3.store(prefix).await;
    let mut snap = mailsafe::snapshot::Snapshotter::new(&db, st.clone()).with_pack_bytes(400 << 10);
    let r = snap.snapshot().await.unwrap();
    let id = r.id.unwrap();
    let key = format::manifest_key(&id);
    let m = format::Manifest::from_json(&key, &st.get(&key).await.unwrap()).unwrap();
    let packs: std::collections::BTreeSet<_> =
        m.chunks.iter().filter_map(|c| c.pack.clone()).collect();
    assert!(
        m.is_base() && m.chunks.len() >= 8,
        "{} chunks",
        m.chunks.len()
    );
    assert_eq!(m.version, format::FORMAT_VERSION);
    assert!(packs.len() >= 3, "chunks spread over {packs:?}");
    assert!(
        m.chunks.iter().all(|c| c.pack.is_some()),
        "every chunk in a pack"
    );
    m
}

#[tokio::test]
async fn flipped_bit_in_one_chunk_of_a_pack() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let m = packed_replica(&s3, "packflip", dir.path()).await;
    // A chunk in the middle of a pack (not its first), named by its index.
    let (i, c) = m
        .chunks
        .iter()
        .enumerate()
        .find(|(_, c)| c.offset.unwrap() > 0)
        .unwrap();
    let (pack, range) = c.location();
    let st = s3.store("packflip").await;
    let mut body = st.get(&pack).await.unwrap().to_vec();
    let mid = (range.start + range.end) / 2;
    body[mid as usize] ^= 0x04;
    st.put(&pack, Bytes::from(body)).await.unwrap();
    let named = format!(
        "{pack} (chunk {i} of the image, bytes {}..{})",
        range.start, range.end
    );
    assert_refused(
        &s3,
        "packflip",
        dir.path(),
        &named,
        "flipped bit in a packed chunk",
    );
}

#[tokio::test]
async fn truncated_pack() {
    let s3 = common::s3();
    let dir = tempfile::tempdir().unwrap();
    let m = packed_replica(&s3, "packtrunc", dir.path()).await;
    let pack = m.chunks[0].pack.clone().unwrap();
    let st = s3.store("packtrunc").await;
    let mut body = st.get(&pack).await.unwrap().to_vec();
    body.truncate(body.len() / 2);
    st.put(&pack, Bytes::from(body)).await.unwrap();
    assert_refused(&s3, "packtrunc", dir.path(), &pack, "truncated pack");
}
