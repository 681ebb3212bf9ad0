//! Fuzzes what the catcher derives from stored mail: search text, snippet,
//! tags, the message view and its JSON, every part by its ID, and the
//! headers. Any bytes a client sent as DATA end up here, so no input may
//! panic, hang or make a listed part unreachable (see
//! `storage::parse::fuzz_mime`).
#![no_main]

use std::sync::Once;

/// Fuzz builds have debug assertions on, and mail-parser has one that
/// hostile MIME trips (a broken multipart inside message/rfc822). The
/// catcher contains any panic inside mail-parser (`parse_message` catches
/// it and keeps the message unparsed; tested on stable), but libFuzzer's
/// panic hook would abort before that. So panics raised inside mail-parser
/// are left to the catcher's guard; every other panic still goes to
/// libFuzzer's hook and is a crash.
fn leave_mail_parser_panics_to_the_guard() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_parser = info
                .location()
                .is_some_and(|l| l.file().contains("/mail-parser-"));
            if !in_parser {
                fuzzer_hook(info);
            }
        }));
    });
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    leave_mail_parser_panics_to_the_guard();
    mailsafe_catcher::storage::fuzz_mime(data);
});
