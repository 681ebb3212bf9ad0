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
    let args = <cli::args::Args as clap::Parser>::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailsafe: error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
