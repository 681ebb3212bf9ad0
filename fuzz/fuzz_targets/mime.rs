//! Fuzzes what the catcher derives from stored mail: search text, snippet,
//! tags, the message view and its JSON, every part by its ID, and the
//! headers. Any bytes a client sent as DATA end up here, so no input may
//! panic, hang or make a listed part unreachable (see
//! `storage::parse::fuzz_mime`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsafe_catcher::storage::fuzz_mime(data);
});
