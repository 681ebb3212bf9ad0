//! The terminal side of the engine's [`mailsafe::progress::Progress`]: a
//! restore's download bar on stderr, drawn only when stderr is a terminal
//! (never into a log file or a pipe).

use std::io::IsTerminal;
use std::sync::Arc;

use mailsafe::progress::Progress;

/// An indicatif bar counting bytes.
#[derive(Debug)]
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A byte bar on stderr if it is a terminal, else nothing.
pub fn stderr_bytes() -> Arc<dyn Progress> {
    if !std::io::stderr().is_terminal() {
        return mailsafe::progress::none();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    Arc::new(Bar(bar))
}
