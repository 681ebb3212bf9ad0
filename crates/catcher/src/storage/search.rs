//! Mailpit's search syntax, translated to SQL over the summary table and the
//! word index (see [`super::index`]).
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

use super::index::{self, Fit, Tok, Vocab};

/// Most words one fragment may expand to before the search scans the text
/// instead: an FTS5 OR costs per term, and past a few dozen terms a scan of
/// the newest messages is cheaper for the page (counts then cost a full
/// scan, as every Mailpit search does).
const MAX_EXPANSION: usize = 40;

/// A term answered by one of the FTS5 tables.
#[derive(Debug, Clone, PartialEq)]
pub struct FtsCond {
    /// `words` (everything) or `fields` (per-field columns), unprefixed.
    pub table: &'static str,
    /// The FTS5 expression (with its column filter).
    pub expr: String,
    /// `-term`: messages *not* matching.
    pub exclude: bool,
}

/// A compiled search over `{p}mailbox m`.
#[derive(Debug, Default)]
pub struct Compiled {
    /// Conditions on the summary row, each a parenthesised SQL boolean
    /// expression (cheap: no text is read).
    pub conds: Vec<String>,
    /// Arguments for the `?` placeholders of `conds`, in order.
    pub args: Vec<Value>,
    /// Terms answered by the word index.
    pub fts: Vec<FtsCond>,
    /// Terms answered by scanning the stored text (SQL and arguments).
    pub scans: Vec<(String, Vec<Value>)>,
    /// Names of the `tag:` terms (not excluded ones).
    pub tags: Vec<String>,
}

/// How a search is run (see [`Compiled::driver`]).
pub struct Plan {
    /// The FTS5 table whose matches are walked newest first, with its
    /// expression; `None` walks `{p}mailbox` instead.
    pub driver: Option<(&'static str, String)>,
    /// Remaining conditions over `m` (`WHERE` without the keyword, or empty).
    pub conds: Vec<String>,
    /// Their arguments.
    pub args: Vec<Value>,
}

impl Compiled {
    /// The tag when the search is exactly one `tag:` term: its matches can
    /// be counted from the tag index alone.
    pub fn tag_only(&self) -> Option<&str> {
        (self.conds.len() == 1
            && self.tags.len() == 1
            && self.fts.is_empty()
            && self.scans.is_empty())
        .then(|| self.tags[0].as_str())
    }

    /// Plans the query. When the summary-row conditions are known to select
    /// few messages (`selective`), the mailbox is walked and each remaining
    /// row is checked against the index (`EXISTS ... rowid = m.Seq`), which
    /// never evaluates a common term over the whole index. Otherwise the
    /// positive index terms of one table drive: FTS5 yields their matches
    /// newest first, so a page stops after `limit` rows.
    pub fn plan(&self, pre: &str, selective: bool) -> Plan {
        let mut driver = None;
        let mut used = vec![false; self.fts.len()];
        if !selective {
            for table in ["words", "fields"] {
                let pos: Vec<usize> = (0..self.fts.len())
                    .filter(|&i| self.fts[i].table == table && !self.fts[i].exclude)
                    .collect();
                if pos.is_empty() {
                    continue;
                }
                let neg: Vec<usize> = (0..self.fts.len())
                    .filter(|&i| self.fts[i].table == table && self.fts[i].exclude)
                    .collect();
                let mut expr = pos
                    .iter()
                    .map(|&i| format!("({})", self.fts[i].expr))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                if !neg.is_empty() {
                    expr = format!(
                        "({expr}) NOT ({})",
                        neg.iter()
                            .map(|&i| format!("({})", self.fts[i].expr))
                            .collect::<Vec<_>>()
                            .join(" OR ")
                    );
                }
                for i in pos.into_iter().chain(neg) {
                    used[i] = true;
                }
                driver = Some((table, expr));
                break;
            }
        }
        let mut conds = self.conds.clone();
        let mut args = self.args.clone();
        for (i, f) in self.fts.iter().enumerate() {
            if used[i] {
                continue;
            }
            let t = format!("{pre}{}", f.table);
            let not = if f.exclude { "NOT " } else { "" };
            conds.push(if selective {
                format!("{not}EXISTS (SELECT 1 FROM {t} WHERE {t} MATCH ? AND rowid = m.Seq)")
            } else {
                format!("m.Seq {not}IN (SELECT rowid FROM {t} WHERE {t} MATCH ?)")
            });
            args.push(Value::Text(f.expr.clone()));
        }
        for (sql, a) in &self.scans {
            conds.push(sql.clone());
            args.extend(a.iter().cloned());
        }
        Plan {
            driver,
            conds,
            args,
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
    if s.is_ascii() {
        return clean_ascii(s);
    }
    clean_unicode(s)
}

/// [`clean`] in one pass over bytes, for ASCII text (most mail): the general
/// path's three passes and their allocations were ~3% of ingest CPU.
fn clean_ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for &b in s.as_bytes() {
        // `char::is_whitespace` in ASCII is 0x09..=0x0d and ' '.
        if matches!(
            b,
            b'\t'..=b'\r' | b' ' | b'>' | b'<' | b'"' | b',' | b';' | b'(' | b')'
        ) {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(char::from(b.to_ascii_lowercase()));
    }
    out
}

/// [`clean`] for any text (Unicode whitespace, `str::to_lowercase`).
fn clean_unicode(s: &str) -> String {
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

/// Compiles a Mailpit search string. `pre` is the tenant prefix; `vocab` the
/// tenant's indexed words.
pub fn compile(query: &str, tz: &str, pre: &str, vocab: &Vocab) -> Compiled {
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
            text_cond(&mut c, pre, vocab, &["ToText"], &v, exclude);
        } else if let Some(v) = field("from:") {
            text_cond(&mut c, pre, vocab, &["FromText"], &v, exclude);
        } else if let Some(v) = field("cc:") {
            text_cond(&mut c, pre, vocab, &["CcText"], &v, exclude);
        } else if let Some(v) = field("bcc:") {
            text_cond(&mut c, pre, vocab, &["BccText"], &v, exclude);
        } else if let Some(v) = field("reply-to:") {
            text_cond(&mut c, pre, vocab, &["ReplyToText"], &v, exclude);
        } else if let Some(v) = field("addressed:") {
            text_cond(&mut c, pre, vocab, ADDR_COLS, &v, exclude);
        } else if let Some(v) = field("subject:") {
            text_cond(&mut c, pre, vocab, &["Subject"], &v, exclude);
        } else if let Some(v) = field("message-id:") {
            text_cond(&mut c, pre, vocab, &["MessageID"], &v, exclude);
        } else if let Some(v) = field("tag:") {
            let v = v.trim().to_string();
            if !v.is_empty() {
                if !exclude {
                    c.tags.push(v.clone());
                }
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
            text_cond(&mut c, pre, vocab, ALL_COLS, w, exclude);
        }
    }
    c
}

/// How one text term is answered.
#[derive(Debug, PartialEq)]
enum TextPlan {
    /// No indexed word can contain it: nothing matches.
    Never,
    /// An FTS5 expression that matches exactly the messages containing it.
    Match(String),
    /// The expansion is too wide: scan the stored text with `LIKE`.
    Scan,
}

/// Quotes one FTS5 string (the tokens never contain `"`: cleaning removes
/// it, but double it anyway).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Plans the FTS5 expression for a cleaned term (see the module doc of
/// [`super::index`] for why it is exact).
fn plan(term: &str, vocab: &Vocab) -> TextPlan {
    let toks = index::tokens(term);
    match toks.as_slice() {
        [] => TextPlan::Never,
        [Tok::Word(w)] => match vocab.expand(w, Fit::Contains, MAX_EXPANSION) {
            None => TextPlan::Scan,
            Some(words) if words.is_empty() => TextPlan::Never,
            Some(words) => TextPlan::Match(
                words
                    .iter()
                    .map(|w| quoted(w))
                    .collect::<Vec<_>>()
                    .join(" OR "),
            ),
        },
        [single] => TextPlan::Match(quoted(single.text())),
        [first, mid @ .., last] => {
            let firsts = match first {
                Tok::Word(w) => match vocab.expand(w, Fit::Suffix, MAX_EXPANSION) {
                    None => return TextPlan::Scan,
                    Some(v) => v,
                },
                t => vec![t.text().to_string()],
            };
            if firsts.is_empty() {
                return TextPlan::Never;
            }
            let mid: Vec<&str> = mid.iter().map(Tok::text).collect();
            let mid = mid.join(" ");
            let phrase = |f: &str, l: &str, star: &str| {
                let p = [f, &mid, l]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{}{star}", quoted(&p))
            };
            let mut out = Vec::new();
            match last {
                Tok::Word(w) => match vocab.expand(w, Fit::Prefix, MAX_EXPANSION * 4) {
                    None => return TextPlan::Scan,
                    Some(v) if v.is_empty() => return TextPlan::Never,
                    // Spelled out, a phrase is driven by its rarest token;
                    // FTS5's own prefix query would first merge every
                    // matching word's list.
                    Some(v) if firsts.len() * v.len() <= MAX_EXPANSION => {
                        for f in &firsts {
                            for l in &v {
                                out.push(phrase(f, l, ""));
                            }
                        }
                    }
                    Some(_) if firsts.len() <= 4 => {
                        for f in &firsts {
                            out.push(phrase(f, w, "*"));
                        }
                    }
                    Some(_) => return TextPlan::Scan,
                },
                t => {
                    for f in &firsts {
                        out.push(phrase(f, t.text(), ""));
                    }
                }
            }
            TextPlan::Match(out.join(" OR "))
        }
    }
}

/// Substring condition over the given columns: answered by the word index
/// when the term's expansion is narrow enough, else by `LIKE` over the
/// stored cleaned text. Plain terms use `Body`, which also carries subject,
/// addresses and Message-ID.
fn text_cond(c: &mut Compiled, pre: &str, vocab: &Vocab, cols: &[&str], term: &str, exclude: bool) {
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
    match plan(&term, vocab) {
        TextPlan::Never => {
            if !exclude {
                c.conds.push("0".into());
            }
        }
        TextPlan::Match(expr) => {
            // Plain terms go to the single-column table: no column filter,
            // so FTS5 never decodes positions for a one-word term.
            let (table, expr) = if cols == ["Body"] {
                ("words", expr)
            } else {
                ("fields", format!("{{{}}} : ({expr})", cols.join(" ")))
            };
            c.fts.push(FtsCond {
                table,
                expr,
                exclude,
            });
        }
        TextPlan::Scan => {
            let ors = cols
                .iter()
                .map(|&col| {
                    if col == "Body" {
                        format!("{} LIKE ? ESCAPE '\\'", index::SEARCH_BODY_SQL)
                    } else {
                        format!("st.{col} LIKE ? ESCAPE '\\'")
                    }
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            c.scans.push((
                format!(
                    "{not}EXISTS (SELECT 1 FROM {pre}search_text st WHERE st.id = m.Seq AND ({ors}))"
                ),
                cols.iter()
                    .map(|_| Value::Text(like_pattern(&term)))
                    .collect(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ASCII fast path cleans exactly as the general one: every
    /// separator, each ASCII whitespace (vertical tab and form feed too),
    /// runs, leading and trailing ones, capitals.
    #[test]
    fn ascii_cleaning_matches_the_general_path() {
        let samples = [
            "",
            "   ",
            "Hello, World (again);  <a@B.c>\r\n\t\"Quoted\"",
            " lead\x0bvt\x0cff\rcr\nlf\ttab trail \t",
            "a,,b;;c((d))e<<f>>g\"\"h",
            "MiXeD CaSe 123 _-+=@./:?!#$%&'*[]^`{|}~",
            "\x01ctrl\x7fdel",
        ];
        for s in samples {
            assert!(s.is_ascii());
            assert_eq!(clean(s), clean_unicode(s), "{s:?}");
        }
        // Non-ASCII text takes the general path (Unicode spaces, BOM).
        assert_eq!(clean("A\u{a0}Straße\u{feff}X"), "a straße x");
    }

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

    fn vocab(words: &[&str]) -> Vocab {
        let v = Vocab::default();
        v.extend(words.iter().map(|w| w.to_string()));
        v
    }

    #[test]
    fn words_expand_to_every_indexed_word_containing_them() {
        let v = vocab(&[
            "database",
            "databases",
            "mydatabase",
            "base",
            "user42",
            "com",
        ]);
        assert_eq!(
            plan("database", &v),
            TextPlan::Match(r#""database" OR "databases" OR "mydatabase""#.into())
        );
        assert_eq!(plan("nothing", &v), TextPlan::Never);
        // First word: any word ending with it; last: any word starting with it.
        assert_eq!(
            plan("user42@example.com", &v),
            TextPlan::Match(r#""user42 @ example . com""#.into())
        );
        assert_eq!(
            plan("base c", &v),
            TextPlan::Match(r#""database com" OR "mydatabase com" OR "base com""#.into())
        );
        assert_eq!(plan("@", &v), TextPlan::Match(r#""@""#.into()));
        assert_eq!(plan("zzz c", &v), TextPlan::Never);
    }

    #[test]
    fn wide_expansions_fall_back_to_a_scan_with_escaped_patterns() {
        let many: Vec<String> = (0..100).map(|i| format!("w{i}x")).collect();
        let v = vocab(&many.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(plan("w", &v), TextPlan::Scan);
        let c = compile("w 5%_off", "", "", &v);
        assert!(c.scans[0].0.contains("LIKE ? ESCAPE"));
        assert_eq!(c.scans[0].1, vec![Value::Text("%w%".into())]);
        // Never in the vocabulary: matches nothing without touching text.
        assert_eq!(c.conds[0], "0");
        let c = compile("-5%_off", "", "", &v);
        assert!(c.conds.is_empty() && c.scans.is_empty() && c.fts.is_empty());
    }
}
