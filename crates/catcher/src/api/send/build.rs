//! Builds the RFC 5322 message of a send request into a spool, a chunk at a
//! time, and beside it the summary copy the store parses (same headers and
//! MIME structure, attachment bodies left out, text bodies cut at
//! [`SUMMARY_TEXT`]).

use std::io::{self, Read, Seek, Write};

use base64::Engine;

use super::json::{B64Decode, Span, Src, StringError};
use crate::api::ApiError;
use crate::api::request::{SendAddress, SendRequest};

/// Headers the request may not set through `Headers` (they come from the
/// structured fields).
const RESTRICTED: &[&str] = &[
    "To",
    "From",
    "Cc",
    "Bcc",
    "Reply-To",
    "Date",
    "Subject",
    "Content-Type",
    "Mime-Version",
    "X-Tags",
];

/// Bytes of each text body (base64 lines) the summary copy keeps: the
/// snippet and search of a sent message cover its first ~768 KiB of text
/// and HTML, so the summary never holds a 50 MB body.
pub(super) const SUMMARY_TEXT: usize = 1024 * 1024;

/// Bytes of an attachment looked at to guess its type, as Go's
/// `http.DetectContentType`.
const SNIFF: usize = 512;

struct Named {
    name: String,
    email: String,
}

/// An attachment, checked and typed, its content still in the request.
struct Part<'a> {
    src: Src<'a>,
    content_type: String,
    filename: String,
    content_id: String,
}

/// The typed addresses of one list (`To`, `Cc`, `ReplyTo`), checked.
fn named_list(list: &[SendAddress], key: &str) -> Result<Vec<Named>, ApiError> {
    list.iter().map(|a| named(a, key)).collect()
}

/// One typed address, checked.
fn named(a: &SendAddress, key: &str) -> Result<Named, ApiError> {
    let email = a.email.trim();
    if !valid_email(email) {
        return Err(ApiError::BadJson(format!("invalid {key} address: {email}")));
    }
    Ok(Named {
        name: a.name.clone(),
        email: email.to_string(),
    })
}

/// A plain `local@domain` check: what `net/mail.ParseAddress` accepts for a
/// bare address, minus exotic quoting.
fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
}

/// RFC 2047 encodes a header value when it is not plain ASCII.
fn encode_word(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        s.to_string()
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
        )
    }
}

fn fmt_addr(n: &Named) -> String {
    match display_name(&n.name) {
        None => n.email.clone(),
        Some(name) => format!("{name} <{}>", n.email),
    }
}

/// A display name as it may appear in an address header, or `None` when
/// nothing is left of it. Control characters are dropped (a CR or LF would
/// end the header and let the name add its own, e.g. `Bcc:`); an ASCII name
/// is quoted without the characters that could close the quotes, anything
/// else is RFC 2047 encoded.
fn display_name(name: &str) -> Option<String> {
    let clean: String = name.chars().filter(|c| !c.is_control()).collect();
    if clean.is_empty() {
        None
    } else if clean.is_ascii() {
        Some(format!("\"{}\"", clean.replace(['"', '\\'], "")))
    } else {
        Some(encode_word(&clean))
    }
}

/// Guesses a content type from the first [`SNIFF`] bytes, like Go's
/// `DetectContentType` for the common cases.
fn sniff(data: &[u8]) -> &'static str {
    let head = &data[..data.len().min(SNIFF)];
    // A UTF-8 sequence cut at the end of the window still counts as text.
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    match head {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xff, 0xd8, 0xff, ..] => "image/jpeg",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [b'%', b'P', b'D', b'F', ..] => "application/pdf",
        [b'P', b'K', 3, 4, ..] => "application/zip",
        _ if text => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn boundary() -> String {
    format!("mailsafe-{}", crate::storage::new_boundary())
}

/// Where the message goes: every byte to the spool (`full`), headers and
/// structure to the summary copy as well.
struct Out<W: Write> {
    full: io::BufWriter<W>,
    written: u64,
    limit: u64,
    summary: Vec<u8>,
}

impl<W: Write> Out<W> {
    /// Bytes of both copies.
    fn both(&mut self, b: &[u8]) -> Result<(), StringError> {
        self.summary.extend_from_slice(b);
        self.full_only(b)
    }

    /// Bytes of the message only (bodies).
    fn full_only(&mut self, b: &[u8]) -> Result<(), StringError> {
        self.written += b.len() as u64;
        if self.written > self.limit {
            return Err(StringError::TooLarge);
        }
        Ok(self.full.write_all(b)?)
    }

    /// A base64 body of 76-column lines from `data`'s chunks; the summary
    /// gets its first `summary` bytes of lines.
    fn b64_body(
        &mut self,
        summary: usize,
        data: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<(), StringError>) -> Result<(), StringError>,
    ) -> Result<(), StringError> {
        let mut carry: Vec<u8> = Vec::with_capacity(57);
        let mut room = summary;
        let mut line = String::with_capacity(80);
        let mut emit = |out: &mut Self, bytes: &[u8]| -> Result<(), StringError> {
            line.clear();
            base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut line);
            line.push_str("\r\n");
            if room >= line.len() {
                room -= line.len();
                out.both(line.as_bytes())
            } else {
                room = 0;
                out.full_only(line.as_bytes())
            }
        };
        data(&mut |mut d: &[u8]| {
            if !carry.is_empty() {
                let take = (57 - carry.len()).min(d.len());
                carry.extend_from_slice(&d[..take]);
                d = &d[take..];
                if carry.len() < 57 {
                    return Ok(());
                }
                emit(self, &carry)?;
                carry.clear();
            }
            let mut lines = d.chunks_exact(57);
            for l in &mut lines {
                emit(self, l)?;
            }
            carry.extend_from_slice(lines.remainder());
            Ok(())
        })?;
        if !carry.is_empty() {
            emit(self, &carry)?;
        }
        Ok(())
    }
}

/// A built message: the summary copy, the spooled raw message and its
/// length, the envelope sender and recipients.
pub(super) struct Built<W> {
    pub summary: Vec<u8>,
    pub raw: W,
    pub raw_len: u64,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
}

/// Checks `v` and builds its message into `out` (at most `limit` bytes),
/// reading spooled strings from `spool`.
pub(super) fn build<R: Read + Seek, W: Write>(
    v: &SendRequest,
    spans: &[Span],
    spool: &mut R,
    out: W,
    limit: u64,
) -> Result<Built<W>, ApiError> {
    let from = v
        .from
        .as_ref()
        .ok_or_else(|| ApiError::BadJson("From is required".into()))?;
    let from = named(from, "From")?;
    let to = named_list(&v.to.0, "To")?;
    let cc = named_list(&v.cc.0, "Cc")?;
    let reply_to = named_list(&v.reply_to.0, "ReplyTo")?;
    let bcc = &v.bcc.0;
    for b in bcc {
        if !valid_email(b) {
            return Err(ApiError::BadJson(format!("invalid Bcc address: {b}")));
        }
    }
    let tags = &v.tags.0;
    let text = Src::of(&v.text, spans);
    let html = Src::of(&v.html, spans);

    // Every attachment is decoded once here, to check it and guess its
    // type, before anything is written; a second time when it is written.
    let mut atts = Vec::new();
    let mut inl = Vec::new();
    for a in &v.attachments.0 {
        let src = Src::of(&a.content, spans);
        let mut head = Vec::new();
        decode(src, spool, &mut |d| {
            if head.len() < SNIFF {
                head.extend_from_slice(&d[..d.len().min(SNIFF - head.len())]);
            }
            Ok(())
        })
        .map_err(|e| attachment_error(e, &a.filename))?;
        let ct = &a.content_type;
        let p = Part {
            src,
            content_type: if ct.is_empty() {
                sniff(&head).to_string()
            } else {
                ct.replace(['\r', '\n'], "")
            },
            filename: a.filename.clone(),
            content_id: a.content_id.replace(['<', '>', '\r', '\n'], ""),
        };
        if p.content_id.is_empty() {
            atts.push(p);
        } else {
            inl.push(p);
        }
    }

    let mut head = String::new();
    head.push_str(&format!("From: {}\r\n", fmt_addr(&from)));
    let join = |l: &[Named]| l.iter().map(fmt_addr).collect::<Vec<_>>().join(", ");
    if !to.is_empty() {
        head.push_str(&format!("To: {}\r\n", join(&to)));
    }
    if !cc.is_empty() {
        head.push_str(&format!("Cc: {}\r\n", join(&cc)));
    }
    if !reply_to.is_empty() {
        head.push_str(&format!("Reply-To: {}\r\n", join(&reply_to)));
    }
    head.push_str(&format!("Subject: {}\r\n", encode_word(&v.subject)));
    head.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
    let domain = from
        .email
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("localhost");
    head.push_str(&format!(
        "Message-ID: <{}@{}>\r\n",
        crate::storage::new_boundary(),
        domain
    ));
    if !tags.is_empty() {
        head.push_str(&format!("X-Tags: {}\r\n", encode_word(&tags.join(", "))));
    }
    for (k, val) in &v.headers.0 {
        if RESTRICTED.iter().any(|r| r.eq_ignore_ascii_case(k)) {
            return Err(ApiError::BadJson(format!(
                "cannot overwrite header: \"{k}\""
            )));
        }
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(ApiError::BadJson(format!("invalid header name: \"{k}\"")));
        }
        head.push_str(&format!(
            "{k}: {}\r\n",
            encode_word(&val.replace(['\r', '\n'], " "))
        ));
    }
    head.push_str("MIME-Version: 1.0\r\n");

    let mut out = Out {
        full: io::BufWriter::with_capacity(64 * 1024, out),
        written: 0,
        limit,
        summary: Vec::new(),
    };
    let body = Body {
        text,
        html,
        inline: &inl,
        attachments: &atts,
    };
    let written = out
        .both(head.as_bytes())
        .and_then(|_| body.mixed(&mut out, spool));
    let raw = match written {
        Err(StringError::Base64(e)) => return Err(ApiError::BadJson(e)),
        Err(e) => return Err(string_error(e, limit)),
        Ok(()) => out
            .full
            .into_inner()
            .map_err(|e| ApiError::internal("spooling the message failed", e.into_error()))?,
    };
    let rcpt_to: Vec<String> = to
        .iter()
        .chain(cc.iter())
        .map(|n| n.email.clone())
        .chain(bcc.iter().cloned())
        .collect();
    Ok(Built {
        summary: out.summary,
        raw,
        raw_len: out.written,
        mail_from: from.email,
        rcpt_to,
    })
}

/// Decodes an attachment's base64 (after a data URL's last `,`).
fn decode<R: Read + Seek>(
    src: Src,
    spool: &mut R,
    f: &mut dyn FnMut(&[u8]) -> Result<(), StringError>,
) -> Result<(), StringError> {
    let mut dec = B64Decode::default();
    let mut f = f;
    src.each_chunk(spool, true, false, |c| dec.push(c, &mut f))?;
    dec.finish(&mut f)
}

fn attachment_error(e: StringError, filename: &str) -> ApiError {
    match e {
        StringError::Base64(e) => ApiError::BadJson(format!(
            "error decoding base64 attachment \"{filename}\": {e}"
        )),
        StringError::Json(e) => ApiError::BadJson(format!(
            "error decoding base64 attachment \"{filename}\": invalid JSON string: {e}"
        )),
        e => string_error(e, 0),
    }
}

/// The API's answer to a failed spooled string.
pub(super) fn string_error(e: StringError, limit: u64) -> ApiError {
    match e {
        StringError::Json(m) => ApiError::BadJson(format!("invalid JSON body: {m}")),
        StringError::Base64(m) => ApiError::BadJson(m),
        StringError::TooLarge => super::too_large(limit as usize),
        StringError::Io(e) => ApiError::internal("spooling the message failed", e),
    }
}

/// The MIME body: `multipart/mixed` (attachments) around
/// `multipart/related` (inline parts) around `multipart/alternative`
/// (text and HTML), each level only when it has parts.
struct Body<'a, 'b> {
    text: Src<'a>,
    html: Src<'a>,
    inline: &'b [Part<'a>],
    attachments: &'b [Part<'a>],
}

impl Body<'_, '_> {
    fn mixed<W: Write, R: Read + Seek>(
        &self,
        out: &mut Out<W>,
        spool: &mut R,
    ) -> Result<(), StringError> {
        multipart(
            out,
            spool,
            "mixed",
            self.attachments,
            false,
            |out, spool| self.related(out, spool),
        )
    }

    fn related<W: Write, R: Read + Seek>(
        &self,
        out: &mut Out<W>,
        spool: &mut R,
    ) -> Result<(), StringError> {
        multipart(out, spool, "related", self.inline, true, |out, spool| {
            self.alternative(out, spool)
        })
    }

    fn alternative<W: Write, R: Read + Seek>(
        &self,
        out: &mut Out<W>,
        spool: &mut R,
    ) -> Result<(), StringError> {
        if matches!(self.html, Src::Mem("")) {
            return text_part(out, spool, "text/plain", self.text);
        }
        let b = boundary();
        out.both(
            format!("Content-Type: multipart/alternative; boundary=\"{b}\"\r\n\r\n").as_bytes(),
        )?;
        out.both(format!("--{b}\r\n").as_bytes())?;
        text_part(out, spool, "text/plain", self.text)?;
        out.both(format!("\r\n--{b}\r\n").as_bytes())?;
        text_part(out, spool, "text/html", self.html)?;
        out.both(format!("\r\n--{b}--\r\n").as_bytes())
    }
}

/// A `multipart/{kind}` of `first` and then `parts`, or `first` alone when
/// there are no parts.
fn multipart<W: Write, R: Read + Seek>(
    out: &mut Out<W>,
    spool: &mut R,
    kind: &str,
    parts: &[Part],
    inline: bool,
    first: impl FnOnce(&mut Out<W>, &mut R) -> Result<(), StringError>,
) -> Result<(), StringError> {
    if parts.is_empty() {
        return first(out, spool);
    }
    let b = boundary();
    out.both(
        format!("Content-Type: multipart/{kind}; boundary=\"{b}\"\r\n\r\n--{b}\r\n").as_bytes(),
    )?;
    first(out, spool)?;
    for p in parts {
        out.both(format!("\r\n--{b}\r\n").as_bytes())?;
        file_part(out, spool, p, inline)?;
    }
    out.both(format!("\r\n--{b}--\r\n").as_bytes())
}

fn text_part<W: Write, R: Read + Seek>(
    out: &mut Out<W>,
    spool: &mut R,
    ctype: &str,
    src: Src,
) -> Result<(), StringError> {
    out.both(
        format!(
            "Content-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        )
        .as_bytes(),
    )?;
    out.b64_body(SUMMARY_TEXT, |f| src.each_chunk(spool, false, true, f))
}

fn file_part<W: Write, R: Read + Seek>(
    out: &mut Out<W>,
    spool: &mut R,
    p: &Part,
    inline: bool,
) -> Result<(), StringError> {
    let name = p.filename.replace(['"', '\\', '\r', '\n'], "");
    let name = encode_word(&name);
    let mut s = format!(
        "Content-Type: {}; name=\"{name}\"\r\nContent-Disposition: {}; filename=\"{name}\"\r\n",
        p.content_type,
        if inline { "inline" } else { "attachment" }
    );
    if inline {
        s.push_str(&format!("Content-ID: <{}>\r\n", p.content_id));
    }
    s.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
    out.both(s.as_bytes())?;
    out.b64_body(0, |f| decode(p.src, spool, f))
}
