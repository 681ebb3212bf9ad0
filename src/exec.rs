//! `watch --exec`: the app runs as mailsafe's child, so one container (or
//! one systemd unit) holds both and the last snapshot is taken after the app
//! has written its last row (Litestream's `replicate -exec`).
//!
//! The command line is split like a shell word list (`shlex`: quotes and
//! backslashes, no variables, globs or pipes) and run directly, without a
//! shell, so the app is mailsafe's own child and receives the signals it
//! forwards. SIGTERM and SIGINT sent to mailsafe are passed on to the app
//! (every one of them: a second Ctrl-C means what the app says it means);
//! mailsafe itself does not stop on them, it waits for the app to exit. The
//! app keeps mailsafe's process group, stdin, stdout and stderr.

use std::process::ExitStatus;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The app's exit, as mailsafe's own outcome: mailsafe exits with
/// [`AppExit::code`] (README, "Exit codes").
#[derive(Debug)]
pub struct AppExit {
    /// The app's exit code, or 128 + the signal number that ended it (as a
    /// shell reports it).
    pub code: u8,
    /// The command, for the message.
    pub command: String,
    /// How it ended, in words.
    pub status: String,
}

impl std::fmt::Display for AppExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the app `{}` {}; exiting with its code {} (everything it committed is in the replica)",
            self.command, self.status, self.code
        )
    }
}

impl std::error::Error for AppExit {}

impl AppExit {
    /// The outcome of `status`: `None` for exit 0.
    pub fn from_status(command: &str, status: ExitStatus) -> Option<AppExit> {
        use std::os::unix::process::ExitStatusExt;
        let (code, words) = match (status.code(), status.signal()) {
            (Some(0), _) => return None,
            (Some(c), _) => (c.clamp(0, 255) as u8, format!("exited with code {c}")),
            (None, Some(s)) => (
                (128 + s).clamp(0, 255) as u8,
                format!("was killed by signal {s}"),
            ),
            (None, None) => (1, format!("ended ({status})")),
        };
        Some(AppExit {
            code,
            command: command.to_string(),
            status: words,
        })
    }
}

/// The termination signals mailsafe forwards to the app. Installed before
/// anything starts (as `shutdown::termination_signal` is), so a signal that
/// comes early is not fatal to mailsafe; one during the restore on start
/// ends mailsafe before the app is started.
pub struct Forward {
    term: Signal,
    int: Signal,
}

impl Forward {
    /// Installs the SIGTERM and SIGINT handlers.
    pub fn install() -> anyhow::Result<Forward> {
        Ok(Forward {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
        })
    }

    /// The next termination signal (its number and name).
    async fn next(&mut self) -> (i32, &'static str) {
        tokio::select! {
            _ = self.term.recv() => (libc::SIGTERM, "SIGTERM"),
            _ = self.int.recv() => (libc::SIGINT, "SIGINT"),
        }
    }

    /// Resolves once a signal arrives (for the time before the app runs:
    /// a restore on start).
    pub async fn before_start(&mut self) -> &'static str {
        self.next().await.1
    }
}

/// Splits `command` into the program and its arguments, like a shell word
/// list; a usage error (exit 2) names what is wrong.
pub fn split(command: &str) -> Result<Vec<String>, mailsafe::Error> {
    let words = shlex::split(command).ok_or_else(|| {
        mailsafe::Error::Usage(format!(
            "--exec {command:?}: unbalanced quotes or a trailing backslash"
        ))
    })?;
    if words.is_empty() {
        return Err(mailsafe::Error::Usage(
            "--exec: the command is empty".into(),
        ));
    }
    Ok(words)
}

/// The running app.
pub struct App {
    child: tokio::process::Child,
    /// The command line as given, for messages.
    pub command: String,
}

impl App {
    /// Starts `command` (see [`split`]) as a child.
    pub fn spawn(command: &str) -> anyhow::Result<App> {
        let words = split(command)?;
        let child = tokio::process::Command::new(&words[0])
            .args(&words[1..])
            // Never left behind: if mailsafe itself dies, the app is killed
            // with the runtime rather than writing unwatched.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the app `{command}` (--exec)"))?;
        tracing::info!(command, pid = child.id(), "started the app (--exec)");
        Ok(App {
            child,
            command: command.to_string(),
        })
    }

    /// Waits for the app to exit, passing every termination signal on to
    /// it meanwhile.
    pub async fn wait_forwarding(&mut self, signals: &mut Forward) -> anyhow::Result<ExitStatus> {
        loop {
            tokio::select! {
                status = self.child.wait() => {
                    let status = status
                        .with_context(|| format!("cannot wait for the app `{}`", self.command))?;
                    tracing::info!(command = %self.command, %status, "the app exited; taking the final snapshot");
                    return Ok(status);
                }
                (sig, name) = signals.next() => {
                    tracing::info!(command = %self.command, "{name} received; passing it on to the app");
                    self.kill(sig);
                }
            }
        }
    }

    /// Stops the app when mailsafe must end first (its replica refused it):
    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: std::time::Duration) {
        self.kill(libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(command = %self.command, "the app did not exit within {grace:?} of SIGTERM; killing it");
            let _ = self.child.kill().await;
        }
    }

    /// Sends `sig` to the app (if it still runs).
    fn kill(&self, sig: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) has no memory effects; the pid is our own
            // child's, not yet reaped (tokio reaps it only in `wait`).
            let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
            if rc != 0 {
                tracing::warn!(
                    command = %self.command,
                    "cannot signal the app: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words are split like a shell's, quotes kept together, no shell.
    #[test]
    fn splits_like_a_shell_word_list() {
        assert_eq!(
            split(r#"python3 -c 'print("a b")' "two words" x\ y"#).unwrap(),
            ["python3", "-c", r#"print("a b")"#, "two words", "x y"]
        );
        // `$HOME` and `;` are not the shell's here: passed as they are.
        assert_eq!(split("echo $HOME ;").unwrap(), ["echo", "$HOME", ";"]);
        for bad in ["", "   ", "app 'unclosed", "app \\"] {
            let e = split(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    /// Exit 0 is success; a code passes through; a signal becomes 128+N.
    #[test]
    fn exit_codes_pass_through() {
        use std::os::unix::process::ExitStatusExt;
        assert!(AppExit::from_status("app", ExitStatus::from_raw(0)).is_none());
        let e = AppExit::from_status("app", ExitStatus::from_raw(7 << 8)).unwrap();
        assert_eq!(e.code, 7);
        let e = AppExit::from_status("app", ExitStatus::from_raw(libc::SIGKILL)).unwrap();
        assert_eq!(e.code, 128 + 9);
        assert!(e.to_string().contains("signal 9"), "{e}");
    }
}
