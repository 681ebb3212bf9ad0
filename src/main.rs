//! The `mailsafe` binary: parse the command line, run, map the outcome to an
//! exit code. `cli` holds the flags, dispatch and output; `serve` joins the
//! catcher and the engine; `shutdown` bounds how the long-lived modes stop;
//! `exec` runs `watch --exec`'s app; `heartbeat` pings after snapshots.

mod cli;
mod exec;
mod heartbeat;
mod serve;
mod shutdown;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Installed as (or linked to) `sendmail`, it is Mailpit's sendmail, as
    // PHP's `sendmail_path` and cron expect: its arguments are sendmail's.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let outcome = if std::path::Path::new(&argv0).file_name() == Some("sendmail".as_ref()) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        cli::mailtools::sendmail(&args)
    } else {
        cli::run(<cli::args::Args as clap::Parser>::parse())
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailsafe: error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
