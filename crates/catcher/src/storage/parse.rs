//! Turns raw RFC 5322 bytes into what the store keeps and what the API shows:
//! the summary row, the search text, the tags from `X-Tags`, and (on demand)
//! the full message view with bodies, parts and checksums.
//!
//! Parsing never fails: a message mail-parser cannot make sense of is still
//! stored, with empty fields, because a mail catcher must never lose mail.

use mail_parser::{Addr, Address as MpAddress, MessageParser, MimeHeaders, PartType};
use md5::Digest as _;
use serde::Serialize;

/// A name and address pair, shaped like Mailpit's `Address`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Address {
    /// Display name, may be empty.
    #[serde(rename = "Name")]
    pub name: String,
    /// The email address, may be empty.
    #[serde(rename = "Address")]
    pub address: String,
}

/// Everything the writer stores for one new message.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub message_id: String,
    pub subject: String,
    pub from: Address,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub reply_to: Vec<Address>,
    pub attachments: i64,
    pub inline: i64,
    pub snippet: String,
    pub tags: Vec<String>,
    /// Text searched by plain words: bodies (HTML stripped) and file names.
    pub body_text: String,
    /// The Date header as Unix milliseconds (`MP_USE_MESSAGE_DATES`).
    pub date_ms: Option<i64>,
}

/// One attachment or inline part, shaped like Mailpit's `Attachment`.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    /// MIME path of the part, e.g. `2` or `1.2`.
    #[serde(rename = "PartID")]
    pub part_id: String,
    /// File name from Content-Disposition or Content-Type.
    #[serde(rename = "FileName")]
    pub file_name: String,
    /// Content type, e.g. `image/png`.
    #[serde(rename = "ContentType")]
    pub content_type: String,
    /// Content-ID without angle brackets.
    #[serde(rename = "ContentID")]
    pub content_id: String,
    /// Decoded size in bytes.
    #[serde(rename = "Size")]
    pub size: u64,
    /// Hex digests of the decoded content.
    #[serde(rename = "Checksums")]
    pub checksums: Checksums,
}

/// Hex digests of an attachment's decoded bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Checksums {
    /// MD5, hex.
    #[serde(rename = "MD5")]
    pub md5: String,
    /// SHA-1, hex.
    #[serde(rename = "SHA1")]
    pub sha1: String,
    /// SHA-256, hex.
    #[serde(rename = "SHA256")]
    pub sha256: String,
}

/// Bodies, parts and headers of a stored message, computed from its raw bytes.
#[derive(Debug, Clone)]
pub struct Detail {
    pub text: String,
    pub html: String,
    pub attachments: Vec<Attachment>,
    pub inline: Vec<Attachment>,
    pub return_path: String,
    /// RFC 3339 `Date:` header, if present and valid.
    pub date: Option<chrono::DateTime<chrono::FixedOffset>>,
    pub list_unsubscribe: String,
    pub list_unsubscribe_post: String,
}

fn addr_of(a: &Addr<'_>) -> Address {
    Address {
        name: a.name().unwrap_or_default().trim().to_string(),
        address: a.address().unwrap_or_default().trim().to_string(),
    }
}

fn addr_list(a: Option<&MpAddress<'_>>) -> Vec<Address> {
    match a {
        Some(a) => a.iter().map(addr_of).collect(),
        None => Vec::new(),
    }
}

/// Strips tags and collapses whitespace: good enough for snippets and search;
/// the exact rendering of HTML is the browser's business.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut in_tag = false;
    let mut skip_until: Option<&str> = None;
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    let bytes = html.as_bytes();
    while i < bytes.len() {
        if let Some(end) = skip_until {
            match lower[i..].find(end) {
                Some(p) => {
                    i += p + end.len();
                    skip_until = None;
                    continue;
                }
                None => break,
            }
        }
        let c = bytes[i];
        if in_tag {
            if c == b'>' {
                in_tag = false;
                out.push(' ');
            }
            i += 1;
            continue;
        }
        if c == b'<' {
            if lower[i..].starts_with("<style") {
                skip_until = Some("</style>");
            } else if lower[i..].starts_with("<script") {
                skip_until = Some("</script>");
            } else if lower[i..].starts_with("<!--") {
                skip_until = Some("-->");
            } else {
                in_tag = true;
            }
            i += 1;
            continue;
        }
        // Copy one whole UTF-8 character.
        let ch_len = utf8_len(c);
        let end = (i + ch_len).min(bytes.len());
        if let Some(s) = html.get(i..end) {
            out.push_str(s);
        }
        i = end;
    }
    decode_entities(&collapse_ws(&out))
}

fn utf8_len(b: u8) -> usize {
    match b {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Collapses runs of whitespace into one space and trims.
pub fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first 250 characters of `text` with whitespace collapsed: words are
/// joined only until there are enough (a long body is not collapsed whole).
fn snippet_of(text: &str) -> String {
    const CHARS: usize = 250;
    let mut c = String::new();
    let mut n = 0;
    for w in text.split_whitespace() {
        if n >= CHARS {
            break;
        }
        if n > 0 {
            c.push(' ');
            n += 1;
        }
        c.push_str(w);
        n += w.chars().count();
    }
    match c.char_indices().nth(CHARS) {
        Some((i, _)) => c[..i].to_string(),
        None => c,
    }
}

/// Splits an `X-Tags` value into clean tag names.
pub fn split_tags(v: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in v.split(',') {
        let t = clean_tag(t);
        if !t.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(&t)) {
            out.push(t);
        }
    }
    out
}

/// Mailpit's tag rule: letters, digits, space and `-_.:/` survive; anything
/// else is dropped; spaces collapse.
pub fn clean_tag(t: &str) -> String {
    let kept: String = t
        .chars()
        .filter(|c| c.is_alphanumeric() || " -_.:/".contains(*c))
        .collect();
    collapse_ws(&kept)
}

/// Runs mail-parser, treating a panic inside it as "unparseable". Hostile
/// mail reaches it straight from SMTP, on the store's writer thread, and it
/// has internal assertions that fuzzing trips (a broken multipart nested in
/// `message/rfc822`: see fuzz/seeds/mime/regress-*); one such message must
/// not take the writer, and with it every later message, down.
fn parse_message(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    guarded(|| MessageParser::default().parse(raw))
}

/// The sender (`From`) and the recipients (`To`, `Cc`, `Bcc`, each address
/// once, in that order) that a message's headers name: the envelope that
/// `sendmail -t` and `ingest` use when none is given.
pub fn header_envelope(raw: &[u8]) -> (Option<String>, Vec<String>) {
    let Some(m) = parse_headers_only(raw) else {
        return (None, Vec::new());
    };
    let from = addr_list(m.from())
        .into_iter()
        .map(|a| a.address)
        .find(|a| !a.is_empty());
    let mut to: Vec<String> = Vec::new();
    for a in [m.to(), m.cc(), m.bcc()]
        .into_iter()
        .flat_map(addr_list)
        .map(|a| a.address)
    {
        if !a.is_empty() && !to.contains(&a) {
            to.push(a);
        }
    }
    (from, to)
}

/// [`parse_message`] for the headers only.
fn parse_headers_only(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    guarded(|| MessageParser::default().parse_headers(raw))
}

fn guarded<T>(f: impl FnOnce() -> Option<T> + std::panic::UnwindSafe) -> Option<T> {
    std::panic::catch_unwind(f).unwrap_or_else(|_| {
        tracing::warn!("the MIME parser failed on a message; keeping it unparsed");
        None
    })
}

/// Parses `raw` into the summary the store indexes.
pub fn parse(raw: &[u8]) -> Parsed {
    let Some(m) = parse_message(raw) else {
        return Parsed {
            message_id: String::new(),
            subject: String::new(),
            from: Address::default(),
            to: vec![],
            cc: vec![],
            bcc: vec![],
            reply_to: vec![],
            attachments: 0,
            inline: 0,
            snippet: String::new(),
            tags: vec![],
            body_text: String::from_utf8_lossy(raw).into_owned(),
            date_ms: None,
        };
    };
    let text = match m.body_text(0) {
        Some(t) if m.text_body.first().is_some_and(|id| !is_html_part(&m, *id)) => t.into_owned(),
        _ => m.body_html(0).map(|h| html_to_text(&h)).unwrap_or_default(),
    };
    let (atts, inl) = classify_parts(&m);
    let mut body_text = text.clone();
    // Search matches the HTML's visible text too, when it differs from the text part.
    // The part is checked first: for a text-only message `body_html` renders
    // the text as HTML, only for it to be thrown away (~1% of ingest CPU).
    if m.html_body.first().is_some_and(|id| is_html_part(&m, *id))
        && let Some(h) = m.body_html(0)
    {
        let ht = html_to_text(&h);
        if ht != collapse_ws(&text) {
            body_text.push('\n');
            body_text.push_str(&ht);
        }
    }
    for (_, p) in atts.iter().chain(inl.iter()) {
        if let Some(n) = m.parts.get(*p).and_then(|p| p.attachment_name()) {
            body_text.push('\n');
            body_text.push_str(n);
        }
    }
    let tags = m
        .header_values("X-Tags")
        .filter_map(|v| v.as_text())
        .flat_map(split_tags)
        .collect::<Vec<_>>();
    Parsed {
        message_id: m.message_id().unwrap_or_default().to_string(),
        subject: m.subject().unwrap_or_default().to_string(),
        from: m
            .from()
            .and_then(|a| a.first())
            .map(addr_of)
            .unwrap_or_default(),
        to: addr_list(m.to()),
        cc: addr_list(m.cc()),
        bcc: addr_list(m.bcc()),
        reply_to: addr_list(m.reply_to()),
        attachments: atts.len() as i64,
        inline: inl.len() as i64,
        snippet: snippet_of(&text),
        tags,
        body_text,
        date_ms: m.date().map(|d| d.to_timestamp().saturating_mul(1000)),
    }
}

fn is_html_part(m: &mail_parser::Message<'_>, id: u32) -> bool {
    matches!(
        m.parts.get(id as usize).map(|p| &p.body),
        Some(PartType::Html(_))
    )
}

/// Computes MIME part paths (`1`, `2.1`, …) for every part, like enmime's
/// PartID which Mailpit exposes.
fn part_paths(m: &mail_parser::Message<'_>) -> Vec<String> {
    let mut paths = vec![String::new(); m.parts.len()];
    fn walk(m: &mail_parser::Message<'_>, idx: usize, prefix: &str, paths: &mut Vec<String>) {
        if let Some(PartType::Multipart(children)) = m.parts.get(idx).map(|p| &p.body) {
            for (n, c) in children.iter().enumerate() {
                let c = *c as usize;
                let path = if prefix.is_empty() {
                    format!("{}", n + 1)
                } else {
                    format!("{prefix}.{}", n + 1)
                };
                if c < paths.len() && paths[c].is_empty() {
                    paths[c] = path.clone();
                    walk(m, c, &path, paths);
                }
            }
        }
    }
    if !m.parts.is_empty() {
        if matches!(m.parts[0].body, PartType::Multipart(_)) {
            walk(m, 0, "", &mut paths);
        } else {
            paths[0] = "1".into();
        }
    }
    paths
}

/// A part as (MIME path, index into `Message::parts`).
type PartRef = (String, usize);

/// Splits non-body parts into (attachments, inline), each as
/// (part path, part index). A part is inline when its disposition says so, or
/// when it has a Content-ID and no disposition (a `multipart/related` image).
fn classify_parts(m: &mail_parser::Message<'_>) -> (Vec<PartRef>, Vec<PartRef>) {
    let paths = part_paths(m);
    let mut atts = Vec::new();
    let mut inl = Vec::new();
    for &id in &m.attachments {
        let idx = id as usize;
        let Some(p) = m.parts.get(idx) else { continue };
        let path = paths.get(idx).cloned().unwrap_or_default();
        let disp = p
            .content_disposition()
            .map(|d| d.ctype().to_ascii_lowercase());
        let is_inline = match disp.as_deref() {
            Some("attachment") => false,
            Some("inline") => p.attachment_name().is_none() || p.content_id().is_some(),
            _ => p.content_id().is_some(),
        };
        if is_inline {
            inl.push((path, idx));
        } else {
            atts.push((path, idx));
        }
    }
    (atts, inl)
}

fn part_bytes<'a>(p: &'a mail_parser::MessagePart<'_>) -> std::borrow::Cow<'a, [u8]> {
    match &p.body {
        PartType::Text(t) | PartType::Html(t) => std::borrow::Cow::Borrowed(t.as_bytes()),
        PartType::Binary(b) | PartType::InlineBinary(b) => std::borrow::Cow::Borrowed(b.as_ref()),
        PartType::Message(msg) => std::borrow::Cow::Borrowed(msg.raw_message.as_ref()),
        PartType::Multipart(_) => std::borrow::Cow::Borrowed(&[]),
    }
}

fn content_type_of(p: &mail_parser::MessagePart<'_>) -> String {
    match p.content_type() {
        Some(ct) => match ct.subtype() {
            Some(st) => format!("{}/{}", ct.ctype(), st).to_ascii_lowercase(),
            None => ct.ctype().to_ascii_lowercase(),
        },
        None => match &p.body {
            PartType::Text(_) => "text/plain".into(),
            PartType::Html(_) => "text/html".into(),
            PartType::Message(_) => "message/rfc822".into(),
            _ => "application/octet-stream".into(),
        },
    }
}

fn attachment_of(p: &mail_parser::MessagePart<'_>, path: String) -> Attachment {
    let data = part_bytes(p);
    Attachment {
        part_id: path,
        file_name: p.attachment_name().unwrap_or_default().to_string(),
        content_type: content_type_of(p),
        content_id: p
            .content_id()
            .unwrap_or_default()
            .trim_matches(|c| c == '<' || c == '>')
            .to_string(),
        size: data.len() as u64,
        checksums: Checksums {
            md5: hex::encode(md5::Md5::digest(&data)),
            sha1: hex::encode(sha1::Sha1::digest(&data)),
            sha256: hex::encode(sha2::Sha256::digest(&data)),
        },
    }
}

/// Parses `raw` fully for the message view.
pub fn detail(raw: &[u8]) -> Detail {
    let Some(m) = parse_message(raw) else {
        return Detail {
            text: String::from_utf8_lossy(raw).into_owned(),
            html: String::new(),
            attachments: vec![],
            inline: vec![],
            return_path: String::new(),
            date: None,
            list_unsubscribe: String::new(),
            list_unsubscribe_post: String::new(),
        };
    };
    let text = m
        .text_body
        .first()
        .filter(|id| !is_html_part(&m, **id))
        .and_then(|_| m.body_text(0))
        .map(|t| t.into_owned())
        .unwrap_or_default();
    let html = m
        .html_body
        .first()
        .filter(|id| is_html_part(&m, **id))
        .and_then(|_| m.body_html(0))
        .map(|t| t.into_owned())
        .unwrap_or_default();
    let (atts, inl) = classify_parts(&m);
    let conv = |v: Vec<(String, usize)>| -> Vec<Attachment> {
        v.into_iter()
            .filter_map(|(path, idx)| m.parts.get(idx).map(|p| attachment_of(p, path)))
            .collect()
    };
    let date = m
        .date()
        .and_then(|d| chrono::DateTime::parse_from_rfc3339(&d.to_rfc3339()).ok());
    let header_text = |name: &str| -> String {
        m.header_raw(name.to_string())
            .map(collapse_ws)
            .unwrap_or_default()
    };
    Detail {
        text,
        html,
        attachments: conv(atts),
        inline: conv(inl),
        return_path: m
            .return_address()
            .unwrap_or_default()
            .trim_matches(|c| c == '<' || c == '>')
            .to_string(),
        date,
        list_unsubscribe: header_text("List-Unsubscribe"),
        list_unsubscribe_post: header_text("List-Unsubscribe-Post"),
    }
}

/// What reading a message part by part needs of one header block (see
/// `outline`): the boundary of a multipart, the transfer encoding, and
/// whether the body is text (`text/*`, or no type: plain text).
pub(crate) struct PartHeader {
    /// The boundary, when the part is a multipart with one.
    pub boundary: Option<Vec<u8>>,
    /// `Content-Transfer-Encoding`, as written.
    pub encoding: Option<String>,
    /// The body is text.
    pub text: bool,
}

/// Reads a part's header block (ending with its blank line) as mail-parser
/// does, so the outline cuts the message where mail-parser would.
pub(crate) fn part_header(block: &[u8]) -> PartHeader {
    let Some(m) = parse_headers_only(block) else {
        return PartHeader {
            boundary: None,
            encoding: None,
            text: true,
        };
    };
    let ct = m.content_type();
    PartHeader {
        boundary: ct
            .filter(|c| c.ctype().eq_ignore_ascii_case("multipart"))
            .and_then(|c| c.attribute("boundary"))
            .map(|b| b.as_bytes().to_vec()),
        encoding: m.content_transfer_encoding().map(str::to_string),
        text: ct.is_none_or(|c| c.ctype().eq_ignore_ascii_case("text")),
    }
}

/// Finds the part with MIME path `part_id`: its decoded bytes, content type
/// and file name. `None` when no such part exists.
pub fn part(raw: &[u8], part_id: &str) -> Option<(Vec<u8>, String, String)> {
    let m = parse_message(raw)?;
    let paths = part_paths(&m);
    let idx = paths.iter().position(|p| p == part_id)?;
    let p = m.parts.get(idx)?;
    if matches!(p.body, PartType::Multipart(_)) {
        return None;
    }
    Some((
        part_bytes(p).into_owned(),
        content_type_of(p),
        p.attachment_name().unwrap_or_default().to_string(),
    ))
}

/// All headers in order, as (canonical name, unfolded raw value) pairs; the
/// same shape Go's `net/mail` gives Mailpit (values are not RFC 2047 decoded).
pub fn headers(raw: &[u8]) -> Vec<(String, String)> {
    match parse_headers_only(raw) {
        Some(m) => m
            .headers_raw()
            .map(|(k, v)| (canonical_header_key(k), unfold(v)))
            .collect(),
        None => Vec::new(),
    }
}

/// Joins continuation lines with one space, as Go's textproto does.
fn unfold(v: &str) -> String {
    v.split('\n')
        .map(|l| l.trim_matches(|c: char| c == '\r' || c == ' ' || c == '\t'))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Go's `CanonicalMIMEHeaderKey`: first letter and letters after `-` upper
/// case, the rest lower case (`message-id` -> `Message-Id`).
pub fn canonical_header_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    let mut upper = true;
    for c in k.trim().chars() {
        if upper {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        upper = c == '-';
    }
    out
}

/// Runs everything the catcher derives from a stored message over arbitrary
/// bytes and checks what the API relies on; shared by the cargo-fuzz target
/// `mime` (`fuzz/`) and a randomized unit test, so CI runs the same checks
/// on stable.
///
/// Covers the summary row (search text, snippet, tags, addresses), the full
/// message view and its JSON, every listed part fetched by its `PartID`, and
/// the headers. Panics on a broken invariant: a snippet over 250 characters,
/// a listed part that cannot be fetched or whose size differs, a part ID
/// that is not a dotted number path, or JSON that does not serialize.
#[doc(hidden)]
pub fn fuzz_mime(raw: &[u8]) {
    let parsed = parse(raw);
    assert!(parsed.snippet.chars().count() <= 250, "snippet too long");
    assert!(!parsed.snippet.starts_with(char::is_whitespace));
    for tag in &parsed.tags {
        assert_eq!(&clean_tag(tag), tag, "tags are stored clean");
    }
    assert!(parsed.attachments >= 0 && parsed.inline >= 0);
    let _ = html_to_text(&String::from_utf8_lossy(raw));

    let d = detail(raw);
    for a in d.attachments.iter().chain(&d.inline) {
        assert!(
            !a.part_id.is_empty()
                && a.part_id
                    .split('.')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            "part ID {:?} is not a MIME path",
            a.part_id
        );
        let (bytes, content_type, _) =
            part(raw, &a.part_id).unwrap_or_else(|| panic!("listed part {} missing", a.part_id));
        assert_eq!(bytes.len() as u64, a.size, "part {} size", a.part_id);
        assert_eq!(content_type, a.content_type, "part {} type", a.part_id);
        serde_json::to_string(a).expect("attachment JSON");
    }
    // Part IDs that are not paths, or that try to escape, find nothing.
    for bogus in [
        "",
        "0",
        "../1",
        "1/../1",
        "1.",
        ".1",
        "99999999999999999999",
    ] {
        assert!(part(raw, bogus).is_none(), "part {bogus:?} resolved");
    }
    for (k, v) in headers(raw) {
        // Names and values are unfolded; a bare CR inside a line stays (it
        // is JSON-escaped), as in Go's textproto, which Mailpit uses.
        assert!(
            !k.contains('\n') && !v.contains('\n'),
            "header {k:?}: {v:?}"
        );
    }
    serde_json::to_string(&parsed.from).expect("address JSON");
}

#[cfg(test)]
mod fuzz_tests {
    use rand::{Rng, SeedableRng};

    /// The cargo-fuzz target's seed messages (`fuzz/seeds/mime`).
    fn seeds() -> Vec<Vec<u8>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/mime");
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(out.len() >= 5, "seeds in {dir}");
        out.sort();
        out
    }

    /// The same checks as the fuzz target, on the seeds and on random
    /// mutations of them (truncation, byte flips, spliced fragments), so CI
    /// runs them on stable; regressions found by fuzzing go into the seeds.
    #[test]
    fn mime_derivations_hold_on_seeds_and_mutations() {
        let seeds = seeds();
        for s in &seeds {
            super::fuzz_mime(s);
        }
        let fragments: [&[u8]; 8] = [
            b"\r\n--",
            b"Content-Type: multipart/mixed; boundary=\"m\"\r\n",
            b"--m\r\n",
            b"Content-Disposition: attachment; filename=\"x\"\r\n",
            b"Content-ID: <c>\r\n",
            b"Content-Type: message/rfc822\r\n\r\n",
            b"=?UTF-8?B?w6Q=?=",
            b"\r\n\r\n",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(5322);
        for _ in 0..1500 {
            let mut m = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..=m.len());
                match rng.random_range(0..4) {
                    0 => m.truncate(at),
                    1 if at < m.len() => m[at] = rng.random(),
                    2 => {
                        let f = fragments[rng.random_range(0..fragments.len())];
                        m.splice(at..at, f.iter().copied());
                    }
                    _ => {
                        let other = &seeds[rng.random_range(0..seeds.len())];
                        let from = rng.random_range(0..other.len());
                        m.splice(at..at, other[from..].iter().copied());
                    }
                }
            }
            super::fuzz_mime(&m);
        }
    }
}
