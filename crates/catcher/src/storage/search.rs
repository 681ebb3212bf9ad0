//! Mailpit's search syntax, translated to SQL over the summary table and the
//! trigram FTS5 index.
//!
//! Terms are separated by spaces; `"quoted phrases"` are one term; a leading
//! `-` or `!` excludes. Plain terms are case-insensitive substring matches on
//! subject, addresses, bodies and file names; `to: from: cc: bcc: reply-to:
//! addressed: subject: message-id:` narrow that to fields; `tag:`, `is:`,
//! `has:`, `larger: smaller:` and `before: after:` filter the summary row.
//! Like Mailpit, unknown or unparsable filter values are ignored rather than
//! rejected, so a query typed by a person never errors.

use chrono::{FixedOffset, NaiveDate, NaiveDateTime, TimeZone};
use rusqlite::types::Value;

/// A compiled search: SQL conditions (joined with AND) over `{p}mailbox m`
/// and their positional arguments.
#[derive(Debug, Default)]
pub struct Compiled {
    /// Conditions, each a parenthesised SQL boolean expression.
    pub conds: Vec<String>,
    /// Arguments for the `?` placeholders, in order.
    pub args: Vec<Value>,
}

impl Compiled {
    /// `WHERE ...` (or the empty string when there is nothing to filter).
    pub fn where_clause(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conds.join(" AND "))
        }
    }
}

/// Splits a query into terms: spaces separate, double quotes group (the
/// quotes are removed, a leading `-`/`!` before the quote is kept).
pub fn split_args(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    for c in q.chars() {
        match c {
            '"' => in_q = !in_q,
            c if c.is_whitespace() && !in_q => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Mailpit's `cleanString`: line breaks, tabs and `<>",;()` become spaces,
/// whitespace collapses, everything lower case. Applied to indexed text and
/// to queries alike so that both sides agree.
pub fn clean(s: &str) -> String {
    let replaced: String = s
        .chars()
        .map(|c| match c {
            '\r' | '\n' | '\t' | '>' | '<' | '"' | ',' | ';' | '(' | ')' | '\u{feff}' => ' ',
            c => c,
        })
        .collect();
    replaced
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Mailpit's size syntax: `2kb`, `4MB`, `1.5m`, plain bytes.
fn size_to_bytes(v: &str) -> Option<i64> {
    let v = v.trim().to_lowercase();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" => 1.0,
        "k" | "kb" => 1024.0,
        "m" | "mb" => 1024.0 * 1024.0,
        _ => return None,
    };
    let b = (n * mult) as i64;
    (b > 0).then_some(b)
}

/// Parses a date for `before:`/`after:` in the given offset: RFC 3339, or
/// `YYYY-MM-DD[ HH:MM[:SS]]`, `YYYY/MM/DD`, `DD-Mon-YYYY`, or Unix seconds.
fn parse_date(v: &str, tz: FixedOffset) -> Option<i64> {
    let v = v.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(v) {
        return Some(d.timestamp_millis());
    }
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(v, f) {
            return tz
                .from_local_datetime(&d)
                .single()
                .map(|d| d.timestamp_millis());
        }
    }
    for f in [
        "%Y-%m-%d", "%Y/%m/%d", "%d-%b-%Y", "%d %b %Y", "%b %d %Y", "%Y%m%d",
    ] {
        if let Ok(d) = NaiveDate::parse_from_str(v, f) {
            let d = d.and_hms_opt(0, 0, 0)?;
            return tz
                .from_local_datetime(&d)
                .single()
                .map(|d| d.timestamp_millis());
        }
    }
    if v.len() >= 9 && v.chars().all(|c| c.is_ascii_digit()) {
        let n: i64 = v.parse().ok()?;
        return Some(if n > 100_000_000_000 { n } else { n * 1000 });
    }
    None
}

/// Parses the `tz` parameter: `UTC`, `Z`, or an offset like `+02:00`/`-0530`.
/// Named zones other than UTC are not known here and fall back to UTC.
pub fn parse_tz(tz: &str) -> FixedOffset {
    let utc = FixedOffset::east_opt(0).expect("zero offset is valid");
    let t = tz.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("utc") || t == "Z" {
        return utc;
    }
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return utc,
    };
    let digits: String = rest.chars().filter(|c| c.is_ascii_digit()).collect();
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().unwrap_or(0), 0),
        4 => (
            digits[..2].parse::<i32>().unwrap_or(0),
            digits[2..].parse::<i32>().unwrap_or(0),
        ),
        _ => return utc,
    };
    FixedOffset::east_opt(sign * (h * 3600 + m * 60)).unwrap_or(utc)
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
fn like_pattern(s: &str) -> String {
    let mut p = String::with_capacity(s.len() + 2);
    p.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

const ALL_COLS: &[&str] = &[
    "Subject",
    "FromText",
    "ToText",
    "CcText",
    "BccText",
    "ReplyToText",
    "MessageID",
    "Body",
];
const ADDR_COLS: &[&str] = &["FromText", "ToText", "CcText", "BccText", "ReplyToText"];

/// Compiles a Mailpit search string. `pre` is the tenant prefix.
pub fn compile(query: &str, tz: &str, pre: &str) -> Compiled {
    let tz = parse_tz(tz);
    let mut c = Compiled::default();
    for raw in split_args(query) {
        if clean(&raw).is_empty() {
            continue;
        }
        let mut w = raw.as_str();
        let mut exclude = false;
        if w.chars().count() > 1 && (w.starts_with('-') || w.starts_with('!')) {
            exclude = true;
            w = &w[1..];
        }
        let lw = w.to_lowercase();
        let field = |prefix: &str| -> Option<String> {
            if lw.starts_with(prefix) {
                Some(w[prefix.len()..].to_string())
            } else {
                None
            }
        };
        let not = if exclude { "NOT " } else { "" };
        if let Some(v) = field("to:") {
            text_cond(&mut c, pre, &["ToText"], &v, exclude);
        } else if let Some(v) = field("from:") {
            text_cond(&mut c, pre, &["FromText"], &v, exclude);
        } else if let Some(v) = field("cc:") {
            text_cond(&mut c, pre, &["CcText"], &v, exclude);
        } else if let Some(v) = field("bcc:") {
            text_cond(&mut c, pre, &["BccText"], &v, exclude);
        } else if let Some(v) = field("reply-to:") {
            text_cond(&mut c, pre, &["ReplyToText"], &v, exclude);
        } else if let Some(v) = field("addressed:") {
            text_cond(&mut c, pre, ADDR_COLS, &v, exclude);
        } else if let Some(v) = field("subject:") {
            text_cond(&mut c, pre, &["Subject"], &v, exclude);
        } else if let Some(v) = field("message-id:") {
            text_cond(&mut c, pre, &["MessageID"], &v, exclude);
        } else if let Some(v) = field("tag:") {
            let v = v.trim().to_string();
            if !v.is_empty() {
                c.conds.push(format!(
                    "m.Seq {not}IN (SELECT mt.msg FROM {pre}message_tags mt JOIN {pre}tags t ON t.id = mt.tag WHERE t.Name = ?)"
                ));
                c.args.push(Value::Text(v));
            }
        } else if lw == "is:read" {
            c.conds
                .push(format!("m.Read = {}", if exclude { 0 } else { 1 }));
        } else if lw == "is:unread" {
            c.conds
                .push(format!("m.Read = {}", if exclude { 1 } else { 0 }));
        } else if lw == "is:tagged" {
            c.conds.push(format!(
                "{}EXISTS (SELECT 1 FROM {pre}message_tags mt WHERE mt.msg = m.Seq)",
                if exclude { "NOT " } else { "" }
            ));
        } else if lw == "has:attachment" || lw == "has:attachments" {
            c.conds.push(
                if exclude {
                    "m.Attachments = 0"
                } else {
                    "m.Attachments > 0"
                }
                .into(),
            );
        } else if lw == "has:inline" || lw == "has:inlines" {
            c.conds.push(
                if exclude {
                    "m.Inline = 0"
                } else {
                    "m.Inline > 0"
                }
                .into(),
            );
        } else if let Some(v) = field("after:") {
            if let Some(ts) = parse_date(&v, tz) {
                c.conds.push(
                    if exclude {
                        "m.Created <= ?"
                    } else {
                        "m.Created >= ?"
                    }
                    .into(),
                );
                c.args.push(Value::Integer(ts));
            }
        } else if let Some(v) = field("before:") {
            if let Some(ts) = parse_date(&v, tz) {
                c.conds.push(
                    if exclude {
                        "m.Created >= ?"
                    } else {
                        "m.Created <= ?"
                    }
                    .into(),
                );
                c.args.push(Value::Integer(ts));
            }
        } else if let Some(size) = field("larger:").and_then(|v| size_to_bytes(&v)) {
            c.conds
                .push(if exclude { "m.Size < ?" } else { "m.Size > ?" }.into());
            c.args.push(Value::Integer(size));
        } else if let Some(size) = field("smaller:").and_then(|v| size_to_bytes(&v)) {
            c.conds
                .push(if exclude { "m.Size > ?" } else { "m.Size < ?" }.into());
            c.args.push(Value::Integer(size));
        } else {
            text_cond(&mut c, pre, ALL_COLS, w, exclude);
        }
    }
    c
}

/// Substring condition over FTS columns. `col LIKE '%term%'` on the
/// trigram table is answered from the index for terms of three or more
/// characters (and scans for shorter ones); either way the match is exact.
/// Plain terms use `Body`, which also carries subject and addresses.
fn text_cond(c: &mut Compiled, pre: &str, cols: &[&str], term: &str, exclude: bool) {
    let term = clean(term);
    if term.is_empty() {
        return;
    }
    let not = if exclude { "NOT " } else { "" };
    let cols: &[&str] = if cols.len() == ALL_COLS.len() {
        &["Body"]
    } else {
        cols
    };
    // FTS5 only uses the index for LIKE without ESCAPE, so add one only
    // when the term needs it.
    let (pattern, escape) = if term.contains(['%', '_', '\\']) {
        (like_pattern(&term), " ESCAPE '\\'")
    } else {
        (format!("%{term}%"), "")
    };
    let ors = cols
        .iter()
        .map(|col| format!("{col} LIKE ?{escape}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    c.conds.push(format!(
        "m.Seq {not}IN (SELECT rowid FROM {pre}search WHERE {ors})"
    ));
    for _ in cols {
        c.args.push(Value::Text(pattern.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_phrases_and_keeps_exclusion() {
        assert_eq!(
            split_args(r#"hello "big world" -"not this" to:a@b"#),
            vec!["hello", "big world", "-not this", "to:a@b"]
        );
    }

    #[test]
    fn sizes_follow_mailpit_units() {
        assert_eq!(size_to_bytes("2kb"), Some(2048));
        assert_eq!(size_to_bytes("1.5M"), Some(1572864));
        assert_eq!(size_to_bytes("100"), Some(100));
        assert_eq!(size_to_bytes("2gb"), None);
        assert_eq!(size_to_bytes("x"), None);
    }

    #[test]
    fn dates_parse_in_the_given_offset() {
        let utc = parse_tz("UTC");
        assert_eq!(parse_date("2024-01-02", utc), Some(1704153600000));
        let plus2 = parse_tz("+02:00");
        assert_eq!(
            parse_date("2024-01-02", plus2),
            Some(1704153600000 - 7_200_000)
        );
        assert_eq!(parse_date("nonsense", utc), None);
    }

    #[test]
    fn terms_become_like_patterns_escaped_only_when_needed() {
        let c = compile("hello 5%_off", "", "");
        assert_eq!(c.args[0], Value::Text("%hello%".into()));
        assert!(!c.conds[0].contains("ESCAPE"));
        assert_eq!(c.args[1], Value::Text("%5\\%\\_off%".into()));
        assert!(c.conds[1].contains("ESCAPE"));
    }
}
