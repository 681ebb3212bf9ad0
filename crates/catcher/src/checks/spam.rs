//! Mailpit's spam check (`GET /api/v1/message/{ID}/sa-check` with
//! `MP_ENABLE_SPAMASSASSIN=host:port` or `unix:/path`): the raw message is
//! sent to SpamAssassin's `spamd` with the spamd protocol's `REPORT`
//! command (SPAMC/1.5) and its report is answered in Mailpit's
//! `SpamAssassinResponse` shape (`{"IsSpam", "Error", "Score", "Rules":
//! [{"Score", "Name", "Description"}]}`).
//!
//! As in Mailpit, a message is spam at a score of 5 or more, scores are cut
//! to one decimal, and a spamd that cannot be reached or answers nonsense
//! is reported in `Error` (HTTP 200), naming its address. The whole
//! exchange is bounded: 8 s (Mailpit's timeout), at most 1 MiB of report.
//! Mailpit's `postmark` service (a third-party web API) is not offered.

use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The whole exchange with spamd, connecting included.
const TIMEOUT: Duration = Duration::from_secs(8);
/// Most report bytes read.
const MAX_REPORT: u64 = 1024 * 1024;
/// The score from which a message is spam (Mailpit's `spamScore`).
const SPAM_SCORE: f64 = 5.0;

/// Mailpit's `SpamAssassinResponse`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Response {
    /// Score at least 5.
    #[serde(rename = "IsSpam")]
    pub is_spam: bool,
    /// What went wrong talking to spamd, or empty.
    #[serde(rename = "Error")]
    pub error: String,
    /// The total score, cut to one decimal.
    #[serde(rename = "Score")]
    pub score: f64,
    /// The rules that hit.
    #[serde(rename = "Rules")]
    pub rules: Vec<Rule>,
}

/// One SpamAssassin rule that hit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rule {
    /// Its points, cut to one decimal.
    #[serde(rename = "Score")]
    pub score: f64,
    /// Its name (`GTUBE`, `MISSING_DATE`).
    #[serde(rename = "Name")]
    pub name: String,
    /// What it means.
    #[serde(rename = "Description")]
    pub description: String,
}

/// Where spamd listens: `host:port`, or `unix:/path` for its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpamAssassin {
    /// The address as configured.
    pub addr: String,
}

impl SpamAssassin {
    /// Checks `raw` (the message as received); never fails: problems are
    /// in [`Response::error`].
    pub async fn check(&self, raw: &[u8]) -> Response {
        match tokio::time::timeout(TIMEOUT, self.report(raw)).await {
            Ok(Ok(text)) => parse(&text),
            Ok(Err(e)) => failed(format!("spamd at {}: {e}", self.addr)),
            Err(_) => failed(format!(
                "spamd at {}: no answer within {} s",
                self.addr,
                TIMEOUT.as_secs()
            )),
        }
    }

    /// Sends `REPORT` and reads the whole answer.
    async fn report(&self, raw: &[u8]) -> std::io::Result<String> {
        let head = format!("REPORT SPAMC/1.5\r\nContent-length: {}\r\n\r\n", raw.len());
        let mut answer = Vec::new();
        if let Some(path) = self.addr.strip_prefix("unix:") {
            let mut s = tokio::net::UnixStream::connect(path).await?;
            s.write_all(head.as_bytes()).await?;
            s.write_all(raw).await?;
            s.shutdown().await?;
            s.take(MAX_REPORT).read_to_end(&mut answer).await?;
        } else {
            let mut s = tokio::net::TcpStream::connect(&self.addr).await?;
            s.write_all(head.as_bytes()).await?;
            s.write_all(raw).await?;
            // spamd reads until the client closes its side.
            s.shutdown().await?;
            s.take(MAX_REPORT).read_to_end(&mut answer).await?;
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }
}

fn failed(error: String) -> Response {
    tracing::warn!("{error}");
    Response {
        is_spam: false,
        error,
        score: 0.0,
        rules: Vec::new(),
    }
}

/// Mailpit's rounding: down to one decimal.
fn cut(n: f64) -> f64 {
    (n * 10.0).floor() / 10.0
}

/// Reads spamd's answer: the status line, `Spam: True ; 15.0 / 5.0`, and
/// the rule table after "Content analysis details" (descriptions may wrap
/// onto lines indented by 28 spaces).
pub fn parse(answer: &str) -> Response {
    static STATUS: OnceLock<Regex> = OnceLock::new();
    static MAIN: OnceLock<Regex> = OnceLock::new();
    static RULE: OnceLock<Regex> = OnceLock::new();
    let status = STATUS.get_or_init(|| Regex::new(r"^SPAMD/(\S+) (\d+) (.*)$").expect("regex"));
    let main = MAIN.get_or_init(|| Regex::new(r"^Spam: (.+) ; (.+) / (.+)$").expect("regex"));
    let rule = RULE
        .get_or_init(|| Regex::new(r"^\s?(-?[0-9.]+)\s([a-zA-Z0-9_]*)(\W*)(.*)").expect("regex"));
    let joined = answer
        .lines()
        .map(|l| l.trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .replace(&format!("\n{}", " ".repeat(28)), " ");
    let mut out = Response {
        is_spam: false,
        error: String::new(),
        score: 0.0,
        rules: Vec::new(),
    };
    let mut seen_status = false;
    let mut in_rules = false;
    for line in joined.lines() {
        if let Some(c) = status.captures(line) {
            seen_status = true;
            if &c[2] != "0" {
                out.error = format!("spamd: {} {}", &c[2], &c[3]);
            }
            continue;
        }
        if let Some(c) = main.captures(line) {
            if let Ok(score) = c[2].trim().parse::<f64>() {
                out.score = cut(score);
                out.is_spam = score >= SPAM_SCORE;
            }
            continue;
        }
        if line.starts_with("Content analysis details") {
            in_rules = true;
            continue;
        }
        if in_rules && let Some(c) = rule.captures(line) {
            out.rules.push(Rule {
                score: c[1].parse::<f64>().map(cut).unwrap_or(0.0),
                name: c[2].to_string(),
                description: c[4].to_string(),
            });
        }
    }
    if !seen_status && out.error.is_empty() {
        out.error = "spamd gave no SPAMD status line".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_parses_like_mailpit_reads_it() {
        let answer = "SPAMD/1.1 0 EX_OK\r\nContent-length: 600\r\nSpam: True ; 1002.6 / 5.0\r\n\r\n\
            Spam detection software, running on the system \"x\",\n\
            has identified this incoming email as possible spam.\n\n\
            Content analysis details:   (1002.6 points, 5.0 required)\n\n \
            pts rule name              description\n\
            ---- ---------------------- --------------------------------------------------\n\
            1000 GTUBE                  BODY: Generic Test for Unsolicited Bulk Email\n \
            1.4 MISSING_DATE           Missing Date: header\n \
            -0.0 NO_RELAYS              Informational: message was not relayed via SMTP\n \
            1.2 LONG_ONE               A description that is long enough that spamd\n                            \
            wraps it onto a second line\n";
        let r = parse(answer);
        assert!(r.is_spam);
        assert_eq!(r.error, "");
        assert_eq!(r.score, 1002.6);
        let names: Vec<_> = r.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["GTUBE", "MISSING_DATE", "NO_RELAYS", "LONG_ONE"]);
        assert_eq!(r.rules[0].score, 1000.0);
        assert_eq!(r.rules[1].score, 1.4);
        assert_eq!(
            r.rules[3].description,
            "A description that is long enough that spamd wraps it onto a second line"
        );
        let bad = parse("SPAMD/1.0 76 Bad header line: x\r\n");
        assert_eq!(bad.error, "spamd: 76 Bad header line: x");
        assert!(parse("").error.contains("no SPAMD status"));
    }
}
