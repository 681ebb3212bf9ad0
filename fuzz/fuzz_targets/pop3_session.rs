//! Fuzzes the sans-IO POP3 session: any byte stream, split into reads of
//! any size, with or without STLS, must never panic, hang or break the
//! session's invariants (see `pop3::proto::fuzz_session`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsafe_catcher::pop3::proto::fuzz_session(data);
});
