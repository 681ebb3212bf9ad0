//! Mailpit's command-line mail tools, the parts that are not the command
//! line: submitting a message to a catcher over SMTP (`sendmail`,
//! `ingest`), the envelope a message's headers imply, and splitting an mbox
//! file into messages (`ingest`). The SMTP client is the relay's
//! (`relay::client`), so dot-stuffing, line endings and reply handling exist
//! once.

use std::time::Duration;

use crate::relay::client::{self, Auth, RelayError, Target};

/// Where Mailpit's `sendmail` delivers by default (`-S`,
/// `MP_SENDMAIL_SMTP_ADDR`).
pub const DEFAULT_SMTP_ADDR: &str = "localhost:1025";

/// A tool could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum MailToolError {
    /// `-S` / `MP_SENDMAIL_SMTP_ADDR` is not `host:port`.
    #[error("SMTP address {0:?} is not host:port")]
    Address(String),
    /// A command line the tool cannot use.
    #[error("{0}")]
    Usage(String),
    /// No recipient on the command line and none in the headers.
    #[error("no recipients: give them as arguments or in To/Cc/Bcc headers")]
    NoRecipients,
    /// The SMTP server refused the message or could not be reached.
    #[error(transparent)]
    Smtp(#[from] RelayError),
}

/// Sends `raw` from `from` to `to` over plain SMTP to `addr` (`host:port`).
/// Every recipient must be accepted: a tool's caller is told of any
/// refusal rather than losing a recipient quietly.
pub async fn submit(
    addr: &str,
    from: &str,
    to: &[String],
    raw: &[u8],
) -> Result<(), MailToolError> {
    if to.is_empty() {
        return Err(MailToolError::NoRecipients);
    }
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| MailToolError::Address(addr.to_owned()))?;
    let target = Target {
        host: host.to_owned(),
        port,
        starttls: false,
        tls: false,
        allow_insecure: false,
        auth: Auth::None,
        timeout: Duration::from_secs(30),
    };
    client::send(&target, "localhost", from, to, raw, true).await?;
    Ok(())
}

/// The messages of an mbox file (mboxo/mboxrd: each starts with a `From `
/// line, which is dropped; `>From ` quoting is undone one level). A file
/// that does not start with `From ` is one message.
pub fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    if !is_mbox(data) {
        return vec![data.to_vec()];
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            out.extend(current.take());
            current = Some(Vec::new());
            continue;
        }
        let Some(msg) = current.as_mut() else {
            continue;
        };
        let quoted = line.iter().take_while(|&&b| b == b'>').count();
        if quoted > 0 && line[quoted..].starts_with(b"From ") {
            msg.extend_from_slice(&line[1..]);
        } else {
            msg.extend_from_slice(line);
        }
    }
    out.extend(current);
    // The blank line that separates messages belongs to the format.
    for m in &mut out {
        if m.ends_with(b"\r\n\r\n") {
            m.truncate(m.len() - 2);
        } else if m.ends_with(b"\n\n") {
            m.truncate(m.len() - 1);
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// Whether `data` is an mbox file rather than one message.
pub fn is_mbox(data: &[u8]) -> bool {
    data.starts_with(b"From ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_splits_on_from_lines_and_unquotes_one_level() {
        let mbox = b"From a@b Mon Jan  1 00:00:00 2024\nSubject: one\n\n>From the start\n>>From deeper\nbody\n\n\
From c@d Mon Jan  1 00:00:01 2024\nSubject: two\n\nsecond\n";
        let msgs = split_mbox(mbox);
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            msgs[0],
            b"Subject: one\n\nFrom the start\n>From deeper\nbody\n".to_vec()
        );
        assert_eq!(msgs[1], b"Subject: two\n\nsecond\n".to_vec());
        // Not an mbox: one message, as it is.
        assert_eq!(
            split_mbox(b"Subject: x\n\nFrom here\n"),
            vec![b"Subject: x\n\nFrom here\n".to_vec()]
        );
    }

    #[tokio::test]
    async fn submit_refuses_a_bad_address_and_no_recipients() {
        let to = vec!["a@b".to_string()];
        assert!(matches!(
            submit("nohost", "x@y", &to, b"").await,
            Err(MailToolError::Address(_))
        ));
        assert!(matches!(
            submit("localhost:1025", "x@y", &[], b"").await,
            Err(MailToolError::NoRecipients)
        ));
    }
}
