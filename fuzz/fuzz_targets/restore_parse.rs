//! Fuzzes what restore reads from a possibly hostile bucket: manifests
//! (`manifest::parse`, the one manifest reader with its bounds), stored delta packs
//! (`decode_delta_stream`, raw and as a zstd frame) and encrypted objects
//! (`Key::open`). No input may panic, hang or make a page number escape
//! `1..=page_count`; every object key restore derives from an accepted
//! manifest must stay inside the replica (relative, only normal path
//! components, under its own prefix), so a malicious bucket cannot steer a
//! restore outside it.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use mailsafe::crypto::Key;
use mailsafe::format::{self, Manifest};
use mailsafe::manifest;
use mailsafe::restore::build::decode_delta_stream;

fn inside(key: &str, prefix: &str) {
    assert!(key.starts_with(prefix), "{key:?} outside {prefix}");
    assert!(!key.contains('\0') && !key.contains('\\'), "{key:?}");
    assert!(
        Path::new(key)
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{key:?} has a non-normal path component"
    );
}

fuzz_target!(|data: &[u8]| {
    // The reader checks that the id matches the key: read the id first and
    // store the input under its own key, so the fuzzer reaches the checks
    // behind that one; and once under a fixed key, for that check itself.
    let own = Manifest::from_json("fuzz", data).map(|m| format::manifest_key(&m.id));
    for key in [own.unwrap_or_default(), "manifests/fuzz.json".to_string()] {
        let key = key.as_str();
        if let Ok(m) = manifest::parse(key, data) {
            inside(&format::manifest_key(&m.base), format::MANIFESTS);
            if let Some(p) = &m.parent {
                inside(&format::manifest_key(p), format::MANIFESTS);
            }
            for c in &m.chunks {
                inside(&format::chunk_key(&c.sha256), format::CHUNKS);
            }
            for c in m.chunk_overrides.values() {
                let _ = format::parse_sha256(c);
            }
            for d in &m.deltas {
                inside(&d.key, format::DELTAS);
            }
            let _ = mailsafe::crypto::check_manifest(&m, key, None);
            let k = Key::from_bytes(&[7u8; 32]);
            let _ = mailsafe::crypto::check_manifest(&m, key, Some(&k));
        }
    }
    // A hostile "encrypted" object: refused, never a panic.
    let k = Key::from_bytes(&[7u8; 32]);
    assert!(k.open("chunks/fuzz", data).is_err() || data.starts_with(mailsafe::crypto::MAGIC));
    for page_size in [512u32, 4096] {
        let check = |bytes: &[u8]| {
            let mut max = 0u32;
            if let Ok(h) = decode_delta_stream(bytes, "deltas/fuzz", page_size, None, |p, page| {
                assert_eq!(page.len(), page_size as usize);
                max = max.max(p);
                Ok(())
            }) {
                assert!(max >= 1 || h.pages == 0);
                assert!(max <= h.page_count);
            }
        };
        check(data);
        // Most random inputs are not zstd; also feed them as a valid frame so
        // the pack parser behind the decompressor is reached.
        if let Ok(frame) = zstd::bulk::compress(data, 1) {
            check(&frame);
        }
    }
});
