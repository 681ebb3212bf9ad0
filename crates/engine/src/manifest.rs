//! The one manifest reader. Snapshot (the previous manifest it continues
//! from), restore and its plan, verify, `snapshots`, retention and GC all
//! read manifests through [`read`] (or [`parse`] + [`authenticate`] when they
//! must look at a manifest before judging its key), so every reader applies
//! the same checks before it trusts a single field:
//!
//! - format name and version ([`Manifest::from_json`]), and the id in the
//!   JSON is the id in its key;
//! - every key a manifest makes a reader derive (base, parent, delta, pack)
//!   is one a writer could have made, so a hostile bucket cannot steer reads
//!   (or, through a `file://` replica, anything else) outside the replica;
//! - bounds, before anything is allocated from them: page size a power of
//!   two in 512..=65536, `chunk_pages` exactly [`format::chunk_pages`] of it
//!   (so one chunk is at most [`format::CHUNK_BYTES`] or 4 pages, whatever
//!   the manifest says), page count within SQLite's limit, a base's chunk
//!   list exactly as long as its page count needs, chunk overrides only for
//!   chunks that exist, pack offsets inside their packs;
//! - with an encryption key, the manifest's MAC ([`crypto::check_manifest`]);
//!   without one, an encrypted manifest is refused.
//!
//! Every failure is [`Error::Verification`] (exit 4) naming the key; store
//! failures come back as [`Error::Store`] unchanged (a caller may treat a
//! manifest deleted since its listing as gone).

use bytes::Bytes;

use crate::Error;
use crate::crypto::{self, Key};
use crate::format::{self, Manifest};
use crate::store::ObjectStore;

/// Largest page count SQLite allows (`2^32 - 2`).
pub const MAX_PAGE_COUNT: u32 = u32::MAX - 1;
/// Largest manifest object a reader downloads whole. A base manifest's JSON
/// is about 300 bytes per 256 KiB chunk (1/870 of the db), so this allows
/// a db of about 200 GiB, far beyond a mail catcher's; a larger object is
/// refused rather than read into memory.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// Reads the JSON part of the manifest object at `key` without downloading
/// an embedded delta pack: a ranged GET of [`format::MANIFEST_PEEK`] bytes,
/// and the whole object (at most [`MAX_MANIFEST_BYTES`]) only when the JSON
/// is longer than that.
pub async fn fetch(store: &dyn ObjectStore, key: &str) -> Result<Bytes, Error> {
    fetch_capped(store, key, MAX_MANIFEST_BYTES).await
}

async fn fetch_capped(store: &dyn ObjectStore, key: &str, cap: u64) -> Result<Bytes, Error> {
    let head = store.get_range(key, 0..format::MANIFEST_PEEK).await?;
    let whole = if (head.len() as u64) < format::MANIFEST_PEEK {
        head
    } else {
        match format::json_len(&head) {
            Some(n) => return Ok(head.slice(..n)),
            None => fetch_whole(store, key, cap).await?,
        }
    };
    Ok(match format::json_len(&whole) {
        Some(n) => whole.slice(..n),
        // Not JSON: the parser reports it, naming the key.
        None => whole,
    })
}

/// The whole object at `key`, refused past `cap` bytes: one ranged GET of
/// `cap + 1` bytes, so even a hostile object costs at most that much memory.
async fn fetch_whole(store: &dyn ObjectStore, key: &str, cap: u64) -> Result<Bytes, Error> {
    let body = store.get_range(key, 0..cap + 1).await?;
    if body.len() as u64 > cap {
        return Err(Error::Verification(format!(
            "{key}: manifest object is larger than {cap} bytes; refusing to read it"
        )));
    }
    Ok(body)
}

/// Parses the manifest stored at `key` (`manifests/<id>.json`; the bytes may
/// carry an embedded delta pack after the JSON) and checks it (see
/// [`check`]). Does not authenticate: see [`authenticate`].
pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest, Error> {
    let m = Manifest::from_json(key, bytes)?;
    check(&m, key)?;
    Ok(m)
}

/// Checks everything a reader relies on in manifest `m` stored at `key`,
/// except authenticity (the module doc lists what).
pub fn check(m: &Manifest, key: &str) -> Result<(), Error> {
    let bad = |why: String| Err(Error::Verification(format!("{key}: {why}")));
    if format::manifest_id(key) != Some(m.id.as_str()) {
        return bad(format!("its id {:?} does not match its key", m.id));
    }
    let id_ok = |id: &str| format::snapshot_id_time(id).is_some();
    if !id_ok(&m.id) {
        return bad(format!("id {:?} is not a snapshot id", m.id));
    }
    let ps = m.db.page_size;
    if !(512..=65536).contains(&ps) || !ps.is_power_of_two() {
        return bad(format!("invalid page size {ps}"));
    }
    if m.chunk_pages != format::chunk_pages(ps) {
        return bad(format!(
            "chunk_pages {} does not match page size {ps} (must be {})",
            m.chunk_pages,
            format::chunk_pages(ps)
        ));
    }
    if m.db.page_count > MAX_PAGE_COUNT {
        return bad(format!(
            "page count {} is beyond SQLite's limit",
            m.db.page_count
        ));
    }
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex64(&m.db.image_sha256) {
        return bad("image_sha256 is not a sha256".into());
    }
    for c in &m.chunks {
        if !hex64(&c.sha256) || !hex64(&c.stored_sha256) {
            return bad(format!("chunk {:?} has a malformed hash", c.sha256));
        }
        // A pack location must be one the writer makes, complete, and
        // inside the pack's recorded size.
        let located = match (&c.pack, c.offset) {
            (None, None) => c.pack_size.is_none(),
            (Some(p), Some(o)) => {
                format::is_pack_key(p)
                    && o.checked_add(c.stored_size)
                        .is_some_and(|end| c.pack_size.is_none_or(|size| end <= size))
            }
            _ => false,
        };
        if !located {
            return bad(format!(
                "chunk {:?} has a malformed pack location {:?} offset {:?} size {:?}",
                c.sha256, c.pack, c.offset, c.pack_size
            ));
        }
    }
    if !id_ok(&m.base) || m.parent.as_deref().is_some_and(|p| !id_ok(p)) {
        return bad(format!(
            "base {:?} / parent {:?} is not a snapshot id",
            m.base, m.parent
        ));
    }
    for d in &m.deltas {
        let from_id = d.key.strip_prefix(format::DELTAS).is_some_and(id_ok);
        if !hex64(&d.sha256) || !from_id {
            return bad(format!("delta {:?} is malformed", d.key));
        }
    }
    let chunks = format::chunk_count(ps, m.db.page_count);
    if m.is_base() {
        if m.chunks.len() as u64 != u64::from(chunks)
            || !m.deltas.is_empty()
            || !m.chunk_overrides.is_empty()
        {
            return bad(format!(
                "base manifest lists {} chunks, {} deltas and {} chunk overrides for {} pages of {} per chunk",
                m.chunks.len(),
                m.deltas.len(),
                m.chunk_overrides.len(),
                m.db.page_count,
                m.chunk_pages
            ));
        }
    } else {
        if !m.chunks.is_empty() {
            return bad("incremental manifest lists chunks".into());
        }
        if let Some((&i, _)) = m
            .chunk_overrides
            .iter()
            .find(|(i, h)| **i >= chunks || !hex64(h))
        {
            return bad(format!(
                "chunk override {i} is malformed or beyond the image's {chunks} chunks"
            ));
        }
    }
    Ok(())
}

/// Checks manifest `m` (stored at `key`) against the configured encryption
/// key: see [`crypto::check_manifest`].
pub fn authenticate(m: &Manifest, key: &str, enc: Option<&Key>) -> Result<(), Error> {
    crypto::check_manifest(m, key, enc)
}

/// Reads, checks and authenticates the manifest at `key`, fetching its JSON
/// only (not an embedded delta pack, see [`fetch`]).
pub async fn read(
    store: &dyn ObjectStore,
    key: &str,
    enc: Option<&Key>,
) -> Result<Manifest, Error> {
    let bytes = fetch(store, key).await?;
    let m = parse(key, &bytes)?;
    authenticate(&m, key, enc)?;
    Ok(m)
}

/// [`read`] with one GET of the whole object (at most
/// [`MAX_MANIFEST_BYTES`]): for a base manifest, which carries no delta pack
/// and whose chunk list often outgrows [`format::MANIFEST_PEEK`] (saves a
/// round trip).
pub async fn read_whole(
    store: &dyn ObjectStore,
    key: &str,
    enc: Option<&Key>,
) -> Result<Manifest, Error> {
    let bytes = fetch_whole(store, key, MAX_MANIFEST_BYTES).await?;
    let m = parse(key, &bytes)?;
    authenticate(&m, key, enc)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "20261129T100000.000Z-0000abcd";
    const BASE: &str = "20261129T090000.000Z-0000abcd";

    /// A valid incremental manifest of `ID` on `BASE`, as JSON to tamper with.
    fn incremental() -> serde_json::Value {
        let sha = "ab".repeat(32);
        serde_json::json!({
            "format": "mailsafe-manifest", "version": 2, "id": ID,
            "created": "2026-11-29T10:00:00Z", "parent": BASE,
            "db": {"page_size": 4096, "page_count": 100, "image_sha256": sha},
            "chunk_pages": 64, "base": BASE, "chunks": [],
            "deltas": [{"key": format!("deltas/{ID}"), "sha256": sha, "size": 1}],
            "chunk_overrides": {"1": sha}, "source": {"change_counter": 0},
            "stats": {"new_objects": 1, "new_bytes": 1, "stored_bytes": 1}
        })
    }

    /// A valid base manifest of `ID` with `n` chunks for `pages` pages.
    fn base(pages: u32, n: usize) -> serde_json::Value {
        let sha = "cd".repeat(32);
        let chunk = serde_json::json!({
            "sha256": sha, "stored_sha256": sha, "stored_size": 10,
            "pack": format!("packs/{ID}-0000"), "offset": 0, "pack_size": 10
        });
        let mut v = incremental();
        v["base"] = ID.into();
        v["parent"] = serde_json::Value::Null;
        v["deltas"] = serde_json::json!([]);
        v["chunk_overrides"] = serde_json::json!({});
        v["db"]["page_count"] = pages.into();
        v["chunks"] = serde_json::Value::Array(vec![chunk; n]);
        v
    }

    fn parse_v(v: &serde_json::Value) -> Result<Manifest, Error> {
        parse(&format::manifest_key(ID), v.to_string().as_bytes())
    }

    fn refused(v: &serde_json::Value, want: &str) {
        let err = parse_v(v).unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format::manifest_key(ID)) && msg.contains(want),
            "{msg} (wanted {want:?})"
        );
    }

    #[test]
    fn valid_manifests_parse() {
        parse_v(&incremental()).unwrap();
        parse_v(&base(100, 2)).unwrap();
        parse_v(&base(0, 0)).unwrap();
    }

    #[test]
    fn wrong_versions_and_ids_are_refused_naming_the_key() {
        let mut v = incremental();
        v["version"] = 99.into();
        refused(&v, "version 99");
        let mut v = incremental();
        v["format"] = "other".into();
        refused(&v, "unsupported manifest format");
        // An id that does not match its key (a manifest copied elsewhere).
        let mut v = incremental();
        v["id"] = BASE.into();
        refused(&v, "does not match");
        let err = parse("manifests/other.json", incremental().to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        // chunk_pages not tied to the page size: a chunk of 2^32 pages
        // would make restore reserve terabytes for one decompression.
        let mut v = base(100, 2);
        v["chunk_pages"] = u32::MAX.into();
        refused(&v, "chunk_pages");
        let mut v = base(100, 2);
        v["chunk_pages"] = 1.into();
        refused(&v, "chunk_pages");
        let mut v = base(100, 2);
        v["db"]["page_size"] = 1000.into();
        refused(&v, "page size");
        let mut v = base(100, 2);
        v["db"]["page_count"] = u32::MAX.into();
        refused(&v, "page count");
        // A chunk list that does not match the page count.
        refused(&base(100, 3), "lists 3 chunks");
        refused(&base(200, 2), "lists 2 chunks");
        // A chunk override beyond the image (or malformed).
        let mut v = incremental();
        v["chunk_overrides"] = serde_json::json!({"2": "ab".repeat(32)});
        refused(&v, "chunk override 2");
        let mut v = incremental();
        v["chunk_overrides"] = serde_json::json!({"0": "xyz"});
        refused(&v, "chunk override 0");
        // A pack range that overflows or leaves its pack.
        let mut v = base(100, 2);
        v["chunks"][1]["offset"] = u64::MAX.into();
        refused(&v, "pack location");
        let mut v = base(100, 2);
        v["chunks"][1]["stored_size"] = 11.into();
        refused(&v, "pack location");
    }

    #[test]
    fn keys_that_leave_the_replica_are_refused() {
        for (field, value) in [
            ("base", "../../etc/passwd"),
            ("parent", "../x"),
            ("delta", "deltas/../../../etc/passwd"),
            ("delta", "deltas/a/b"),
            ("delta", "/etc/passwd"),
        ] {
            let mut v = incremental();
            match field {
                "delta" => v["deltas"][0]["key"] = value.into(),
                f => v[f] = value.into(),
            }
            let err = parse_v(&v).unwrap_err();
            assert_eq!(err.exit_code(), 4, "{field} {value}: {err}");
        }
        let mut v = base(100, 2);
        v["chunks"][0]["pack"] = "../../etc/passwd".into();
        refused(&v, "pack location");
    }

    #[test]
    fn authentication_needs_the_right_key_and_an_intact_mac() {
        let k = Key::from_bytes(&[3u8; 32]);
        let key = format::manifest_key(ID);
        let mut m = parse_v(&incremental()).unwrap();
        k.sign_manifest(&mut m);
        authenticate(&m, &key, Some(&k)).unwrap();
        // Unauthenticated (plaintext) manifest in an encrypted replica.
        let plain = parse_v(&incremental()).unwrap();
        assert_eq!(
            authenticate(&plain, &key, Some(&k))
                .unwrap_err()
                .exit_code(),
            4
        );
        // Tampered after signing.
        let mut forged = m.clone();
        forged.created += chrono::Duration::days(365 * 900);
        assert_eq!(
            authenticate(&forged, &key, Some(&k))
                .unwrap_err()
                .exit_code(),
            4
        );
        // Encrypted, no key given.
        assert_eq!(authenticate(&m, &key, None).unwrap_err().exit_code(), 4);
    }

    /// A manifest object past the cap is refused after reading at most
    /// cap + 1 bytes; one within it reads as usual, embedded delta or not.
    #[tokio::test]
    async fn manifest_objects_are_read_up_to_a_cap() {
        let store = crate::store::memory::MemoryStore::new("cap");
        let key = format::manifest_key(ID);
        let json = incremental().to_string();
        let mut big = json.clone().into_bytes();
        big.push(format::EMBED_SEPARATOR);
        big.extend(vec![0u8; 100_000]);
        store.put(&key, Bytes::from(big)).await.unwrap();
        let got = fetch(&store, &key).await.unwrap();
        assert_eq!(got, json.as_bytes());
        // A JSON longer than the peek, past the cap: refused, naming the key.
        let long = format!("[{}\"{}\"]", " ".repeat(100_000), "x");
        store.put(&key, Bytes::from(long.clone())).await.unwrap();
        let err = fetch_capped(&store, &key, 80_000).await.unwrap_err();
        assert_eq!(err.exit_code(), 4);
        assert!(err.to_string().contains(&key), "{err}");
        assert_eq!(
            fetch_capped(&store, &key, 200_000).await.unwrap(),
            long.as_bytes()
        );
        let err = read_whole(&store, &key, None).await.unwrap_err();
        assert_eq!(err.exit_code(), 4, "not a manifest: {err}");
    }
}
