//! Fuzzes what restore reads from a possibly hostile bucket: manifests
//! (`parse_manifest`, with the format's version check) and stored delta packs
//! (`decode_delta_stream`, raw and as a zstd frame). No input may panic, hang
//! or make a page number escape `1..=page_count`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsafe::restore::build::decode_delta_stream;
use mailsafe::restore::plan::parse_manifest;

fuzz_target!(|data: &[u8]| {
    let _ = parse_manifest(data, "manifests/fuzz.json");
    for page_size in [512u32, 4096] {
        let check = |bytes: &[u8]| {
            let mut max = 0u32;
            if let Ok(h) = decode_delta_stream(bytes, "deltas/fuzz", page_size, |p, page| {
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
