//! The `mailsafe` binary: parse the command line, run, map the outcome to an
//! exit code. Everything else lives in `cli` and the library.

mod cli;
mod progress;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = <cli::Args as clap::Parser>::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailsafe: error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
