//! Fuzzes the sans-IO SMTP session: any byte stream, split into reads of
//! any size, under any configuration, must never panic, hang or break the
//! session's invariants (see `smtp::proto::fuzz_session`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsafe_catcher::smtp::proto::fuzz_session(data);
});
