//! Command-line interface: the subcommands, their flags (each also read from a
//! `MAILSAFE_*` or Mailpit `MP_*` environment variable), and dispatch.

use clap::{Parser, Subcommand};

/// Keeps a live SQLite database safe on S3, and runs a Mailpit-compatible mail
/// catcher.
#[derive(Debug, Parser)]
#[command(name = "mailsafe", version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the mail catcher (SMTP + HTTP API + web UI).
    Serve,
}

/// Runs the parsed command.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Serve => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(mailsafe_catcher::run(
                mailsafe_catcher::Config::default(),
                async {
                    let _ = tokio::signal::ctrl_c().await;
                },
            ))?;
            Ok(())
        }
    }
}

/// Maps an error to the documented exit code (README, "Exit codes").
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<mailsafe::Error>())
        .map(|e| e.exit_code())
        .unwrap_or(1)
}
