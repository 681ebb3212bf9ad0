//! Mailpit's command-line mail tools: `sendmail` (also when the binary is
//! called as `sendmail`), `ingest` and `dump`. What each does to mail lives
//! in the catcher (`mailsafe_catcher::mailtools`, `storage::each_raw`); this
//! is their command line and files.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use mailsafe_catcher::mailtools::{self, MailToolError};
use mailsafe_catcher::smtp::proto::{Event, Limits, Session};
use mailsafe_catcher::storage::{each_raw, header_envelope};

use super::args::{DumpArgs, IngestArgs};
use crate::shutdown::runtime;

/// Mailpit's `sendmail` command line, parsed by hand: sendmail's flags are
/// not clap's (`-bs`, `-oi`, `-fFROM` glued to its value), and scripts call
/// it with whatever their MTA took. Unknown `-` flags are refused by name,
/// not ignored.
#[derive(Debug, Default, PartialEq)]
pub struct Sendmail {
    /// `-S host:port` (else `MP_SENDMAIL_SMTP_ADDR`, else localhost:1025).
    pub smtp_addr: Option<String>,
    /// `-f` / `-r` envelope sender (else `MP_SENDMAIL_FROM`, else user@host).
    pub from: Option<String>,
    /// `-bs`: speak SMTP on stdin/stdout.
    pub smtp_on_stdio: bool,
    /// Recipients; none means those of the To, Cc and Bcc headers (`-t`).
    pub recipients: Vec<String>,
}

impl Sendmail {
    /// Parses sendmail's arguments (after the program or subcommand name).
    pub fn parse(args: &[String]) -> Result<Sendmail, MailToolError> {
        let mut out = Sendmail::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |flag: &str| -> Result<String, MailToolError> {
                match a.strip_prefix(flag).filter(|v| !v.is_empty()) {
                    Some(v) => Ok(v.to_owned()),
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| MailToolError::Usage(format!("{flag} needs a value"))),
                }
            };
            match a.as_str() {
                "-bs" => out.smtp_on_stdio = true,
                // Deliver mode (the default), read recipients from the
                // headers (done whenever none are given), don't stop at a
                // lone dot, verbose: accepted for compatibility.
                "-bm" | "-t" | "-i" | "-v" => {}
                "--" => out.recipients.extend(it.by_ref().cloned()),
                s if s.starts_with("-S") => out.smtp_addr = Some(value("-S")?),
                s if s.starts_with("-f") => out.from = Some(value("-f")?),
                s if s.starts_with("-r") => out.from = Some(value("-r")?),
                // Full name and sendmail -o options: no meaning here.
                s if s.starts_with("-F") => drop(value("-F")?),
                s if s.starts_with("-o") => {
                    if a.len() == 2 {
                        drop(value("-o")?);
                    }
                }
                s if s.starts_with('-') => {
                    return Err(MailToolError::Usage(format!(
                        "unsupported sendmail flag {s} (supported: -S -f -r -bs -t -i -o -F -v -bm)"
                    )));
                }
                _ => out.recipients.push(a.clone()),
            }
        }
        Ok(out)
    }
}

/// The SMTP address and sender a `sendmail` run uses, Mailpit's defaults
/// and environment variables included.
fn sendmail_defaults(s: &Sendmail) -> (String, String) {
    let addr = s
        .smtp_addr
        .clone()
        .or_else(|| std::env::var("MP_SENDMAIL_SMTP_ADDR").ok())
        .unwrap_or_else(|| mailtools::DEFAULT_SMTP_ADDR.to_owned());
    let from = s
        .from
        .clone()
        .or_else(|| std::env::var("MP_SENDMAIL_FROM").ok())
        .unwrap_or_else(|| {
            let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into());
            format!("{user}@{host}")
        });
    (addr, from)
}

/// `sendmail`: one message from stdin to the catcher, or (`-bs`) an SMTP
/// session on stdin/stdout whose messages are passed on.
pub fn sendmail(args: &[String]) -> anyhow::Result<()> {
    let s = Sendmail::parse(args)?;
    let (addr, from) = sendmail_defaults(&s);
    let rt = runtime()?;
    if s.smtp_on_stdio {
        return rt.block_on(smtp_on_stdio(&addr));
    }
    let mut raw = Vec::new();
    std::io::stdin()
        .read_to_end(&mut raw)
        .context("cannot read the message from stdin")?;
    let to = if s.recipients.is_empty() {
        header_envelope(&raw).1
    } else {
        s.recipients.clone()
    };
    rt.block_on(mailtools::submit(&addr, &from, &to, &raw))
        .with_context(|| format!("sendmail to {addr}"))?;
    Ok(())
}

/// `sendmail -bs`: our own SMTP session (the catcher's sans-IO `Session`)
/// over stdin/stdout; each message it accepts is submitted to `addr` before
/// it is answered, so a 250 here means the catcher has it.
async fn smtp_on_stdio(addr: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut session = Session::new(
        std::sync::Arc::new(Limits {
            hostname: "sendmail".into(),
            ..Limits::default()
        }),
        false,
    );
    let (mut stdin, mut stdout) = (tokio::io::stdin(), tokio::io::stdout());
    stdout.write_all(&session.greeting().to_bytes()).await?;
    stdout.flush().await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(event) = session.next_event() {
            match event {
                Event::Reply(r) => stdout.write_all(&r.to_bytes()).await?,
                Event::Close(r) => {
                    stdout.write_all(&r.to_bytes()).await?;
                    stdout.flush().await?;
                    return Ok(());
                }
                Event::Deliver(env) => {
                    let outcome = mailtools::submit(addr, &env.mail_from, &env.rcpt_to, &env.data)
                        .await
                        .map(|()| "sent".to_owned())
                        .map_err(|e| e.to_string());
                    if let Err(e) = &outcome {
                        tracing::warn!(server = %addr, error = %e, "sendmail -bs: submit failed");
                    }
                    session.delivered(outcome);
                }
                // Neither is offered (no certificate, no users).
                Event::StartTls(_) | Event::Authenticate(_) => {
                    anyhow::bail!("sendmail -bs: unexpected TLS or AUTH request")
                }
            }
        }
        stdout.flush().await?;
        let n = stdin.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        session.feed(&buf[..n]);
    }
}

/// `ingest`: every file given (directories walked), each one message or an
/// mbox of many, submitted over SMTP with the envelope its headers name.
pub fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for p in &args.paths {
        collect(p, &mut files).with_context(|| format!("cannot read {}", p.display()))?;
    }
    let cutoff = args
        .recent
        .filter(|d| *d > 0)
        .map(|d| std::time::SystemTime::now() - std::time::Duration::from_secs(d * 86_400));
    let fallback_from = sendmail_defaults(&Sendmail::default()).1;
    let addr = args.smtp_addr;
    let rt = runtime()?;
    let (mut sent, mut failed) = (0u64, 0u64);
    for file in files {
        if let Some(cutoff) = cutoff {
            let modified = std::fs::metadata(&file).and_then(|m| m.modified());
            if modified.is_ok_and(|m| m < cutoff) {
                continue;
            }
        }
        let data =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        for (i, raw) in mailtools::split_mbox(&data).into_iter().enumerate() {
            let (from, to) = header_envelope(&raw);
            let from = from.unwrap_or_else(|| fallback_from.clone());
            match rt.block_on(mailtools::submit(&addr, &from, &to, &raw)) {
                Ok(()) => sent += 1,
                // One bad message must not stop the rest; each is named.
                Err(e) => {
                    failed += 1;
                    tracing::error!(file = %file.display(), message = i + 1, error = %e, "not ingested");
                }
            }
        }
    }
    tracing::info!(sent, failed, server = %addr, "ingest done");
    println!("ingested {sent} messages to {addr}, {failed} failed");
    anyhow::ensure!(
        failed == 0,
        "{failed} messages were not ingested (see the log)"
    );
    Ok(())
}

/// Files under `path` (itself if a file), sorted, hidden ones skipped.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        std::fs::metadata(path)?;
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        collect(&p, out)?;
    }
    Ok(())
}

/// `dump`: every message of a catcher database to `<ID>.eml` files, read
/// through a read-only connection (safe beside a running catcher).
pub fn dump(args: DumpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let n = each_raw(&args.database, &args.tenant_id, |id, raw| {
        // IDs are the store's own (URL-safe); never a path.
        let name = format!("{}.eml", id.replace(['/', '\\'], "_"));
        let path = args.output.join(name);
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&raw)?;
        f.sync_all()
    })
    .with_context(|| {
        format!(
            "cannot dump {} to {}",
            args.database.display(),
            args.output.display()
        )
    })?;
    println!("dumped {n} messages to {}", args.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Sendmail, MailToolError> {
        Sendmail::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn sendmail_flags_as_scripts_pass_them() {
        assert_eq!(
            parse(&[
                "-t",
                "-i",
                "-oi",
                "-fbounce@x.test",
                "-S",
                "127.0.0.1:2525",
                "a@b",
                "c@d"
            ])
            .unwrap(),
            Sendmail {
                smtp_addr: Some("127.0.0.1:2525".into()),
                from: Some("bounce@x.test".into()),
                smtp_on_stdio: false,
                recipients: vec!["a@b".into(), "c@d".into()],
            }
        );
        assert!(parse(&["-bs"]).unwrap().smtp_on_stdio);
        assert_eq!(parse(&["-r", "r@x"]).unwrap().from.as_deref(), Some("r@x"));
        assert_eq!(
            parse(&["-F", "Full Name", "-o", "X", "--", "-odd@x"])
                .unwrap()
                .recipients,
            ["-odd@x"]
        );
        let err = parse(&["-Q"]).unwrap_err().to_string();
        assert!(err.contains("unsupported sendmail flag -Q"), "{err}");
        let err = parse(&["-f"]).unwrap_err().to_string();
        assert!(err.contains("-f needs a value"), "{err}");
    }
}
