//! Reading a send request without holding it: the body goes to a spool while
//! [`Scanner`] copies the JSON minus its large strings, and those strings are
//! decoded later straight from the spool, a chunk at a time.
//!
//! A send request near `MP_MAX_MESSAGE_SIZE` is almost all one or two
//! strings: the base64 `Content` of attachments, or a long `Text`/`HTML`.
//! Decoding the body with serde held it about six times over (body, strings,
//! decoded attachments, built message, parsed and compressed copies): 170 MiB
//! of peak RSS for a 27 MB body (bench/hostile_http.sh, session 4). Here the
//! strings of `Text` and `HTML` (in the top object) and of `Content` (in an
//! attachment) that are longer than [`SPOOL_STRING`] stay in the spool; the
//! JSON keeps a placeholder naming their [`Span`], and serde decodes the rest
//! (at most [`MAX_FIELDS`] bytes) into the typed `SendRequest`.

use std::io::{self, Read, Seek, SeekFrom};

use base64::Engine;

/// Strings of `Text`, `HTML` and `Content` longer than this stay in the spool.
pub(super) const SPOOL_STRING: usize = 16 * 1024;
/// Most bytes of JSON left once those strings are out: every other field
/// (addresses, subject, headers, tags, file names). A larger request is a
/// 413; 4 MiB is room for every list at its cap with ordinary values.
pub(super) const MAX_FIELDS: usize = 4 * 1024 * 1024;
/// How the JSON names a spooled string: a string no client sends (it starts
/// with U+0000), followed by the span's index.
const PLACEHOLDER: &str = "\u{0}mailsafe-spool:";
/// Bytes read from the spool at a time.
const CHUNK: usize = 64 * 1024;

/// A string left in the spool: the bytes between its quotes, still
/// JSON-escaped.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    start: u64,
    len: u64,
    /// Where its bytes after the last `,` start (for data URLs), relative
    /// to `start`.
    after_comma: u64,
}

/// Whether a string `s` of the decoded request stands for a spooled one.
pub(super) fn spooled(s: &str, spans: &[Span]) -> Option<Span> {
    let n: usize = s.strip_prefix(PLACEHOLDER)?.parse().ok()?;
    spans.get(n).copied()
}

/// Where the scanner is in the JSON text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Between tokens.
    Outside,
    /// Inside a string copied to the output.
    Kept { escaped: bool },
    /// Inside a string that may be spooled: buffered while short.
    Spoolable { escaped: bool },
}

/// A push scanner over the request body: feed it every chunk, then
/// [`Scanner::finish`]. It only finds string boundaries and nesting; serde
/// checks everything else on what it outputs.
pub(super) struct Scanner {
    out: Vec<u8>,
    spans: Vec<Span>,
    state: State,
    /// Bytes seen so far (the spool position of the next byte).
    pos: u64,
    depth: u32,
    /// The last short string (lowercase), a candidate object key.
    last: Vec<u8>,
    last_long: bool,
    /// The key of the value that follows, set at `:`.
    key: Option<Vec<u8>>,
    /// A spoolable string while it is short, and where it started.
    buf: Vec<u8>,
    start: u64,
    after_comma: u64,
}

/// The JSON text is over [`MAX_FIELDS`] once large strings are out.
#[derive(Debug)]
pub(super) struct TooManyFields;

impl Scanner {
    /// A scanner at the start of a body.
    pub(super) fn new() -> Self {
        Scanner {
            out: Vec::new(),
            spans: Vec::new(),
            state: State::Outside,
            pos: 0,
            depth: 0,
            last: Vec::new(),
            last_long: false,
            key: None,
            buf: Vec::new(),
            start: 0,
            after_comma: 0,
        }
    }

    /// Scans the next chunk of the body.
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Result<(), TooManyFields> {
        let mut i = 0;
        while i < chunk.len() {
            match self.state {
                State::Outside => {
                    let b = chunk[i];
                    i += 1;
                    match b {
                        b' ' | b'\t' | b'\r' | b'\n' => continue,
                        b'"' => {
                            let key = self.key.take();
                            let spoolable = match key.as_deref() {
                                Some(b"text" | b"html") => self.depth == 1,
                                Some(b"content") => self.depth == 3,
                                _ => false,
                            };
                            self.last.clear();
                            self.last_long = false;
                            if spoolable {
                                self.state = State::Spoolable { escaped: false };
                                self.buf.clear();
                                self.start = self.pos + i as u64;
                                self.after_comma = 0;
                            } else {
                                self.state = State::Kept { escaped: false };
                                self.out.push(b'"');
                            }
                            continue;
                        }
                        b':' => {
                            self.key = (!self.last_long).then(|| self.last.clone());
                        }
                        b'{' | b'[' => {
                            self.depth += 1;
                            self.key = None;
                        }
                        b'}' | b']' => {
                            self.depth = self.depth.saturating_sub(1);
                            self.key = None;
                        }
                        _ => self.key = None,
                    }
                    self.out.push(b);
                }
                State::Kept { escaped } => {
                    // Copy up to the next quote or backslash in one go.
                    let rest = &chunk[i..];
                    let n = if escaped {
                        1
                    } else {
                        memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len())
                    };
                    let run = &rest[..n];
                    self.out.extend_from_slice(run);
                    if self.last.len() + run.len() <= 16 {
                        self.last.extend(run.iter().map(u8::to_ascii_lowercase));
                    } else {
                        self.last_long = true;
                    }
                    i += n;
                    if escaped {
                        self.state = State::Kept { escaped: false };
                    } else if i < chunk.len() {
                        let b = chunk[i];
                        i += 1;
                        self.out.push(b);
                        self.state = match b {
                            b'\\' => State::Kept { escaped: true },
                            _ => State::Outside,
                        };
                    }
                }
                State::Spoolable { escaped } => {
                    let rest = &chunk[i..];
                    let n = if escaped {
                        1
                    } else {
                        memchr::memchr3(b'"', b'\\', b',', rest).unwrap_or(rest.len())
                    };
                    if self.buf.len() <= SPOOL_STRING {
                        self.buf.extend_from_slice(&rest[..n]);
                    }
                    i += n;
                    if escaped {
                        self.state = State::Spoolable { escaped: false };
                        continue;
                    }
                    let Some(&b) = chunk.get(i) else { continue };
                    i += 1;
                    match b {
                        b'"' => {
                            self.end_spoolable(self.pos + i as u64 - 1);
                            self.state = State::Outside;
                        }
                        b'\\' => {
                            self.push_spoolable(b);
                            self.state = State::Spoolable { escaped: true };
                        }
                        _ => {
                            self.push_spoolable(b);
                            self.after_comma = self.pos + i as u64 - self.start;
                        }
                    }
                }
            }
            if self.out.len() > MAX_FIELDS {
                return Err(TooManyFields);
            }
        }
        self.pos += chunk.len() as u64;
        Ok(())
    }

    fn push_spoolable(&mut self, b: u8) {
        if self.buf.len() <= SPOOL_STRING {
            self.buf.push(b);
        }
    }

    /// A spoolable string ended at `end` (its closing quote): kept when
    /// short, else a placeholder.
    fn end_spoolable(&mut self, end: u64) {
        let len = end - self.start;
        self.out.push(b'"');
        if len as usize <= SPOOL_STRING {
            self.out.extend_from_slice(&self.buf);
        } else {
            self.out.extend_from_slice(b"\\u0000");
            let index = self.spans.len();
            self.out
                .extend_from_slice(format!("{}{index}", &PLACEHOLDER[1..]).as_bytes());
            self.spans.push(Span {
                start: self.start,
                len,
                after_comma: self.after_comma,
            });
        }
        self.out.push(b'"');
        self.buf.clear();
    }

    /// The JSON with large strings replaced, and those strings' spans.
    pub(super) fn finish(self) -> (Vec<u8>, Vec<Span>) {
        (self.out, self.spans)
    }
}

/// A string of the request: decoded in memory, or a [`Span`] of the spool.
#[derive(Debug, Clone, Copy)]
pub(super) enum Src<'a> {
    Mem(&'a str),
    Spool(Span),
}

impl<'a> Src<'a> {
    /// `s`, or the spooled string it stands for.
    pub(super) fn of(s: &'a str, spans: &[Span]) -> Self {
        match spooled(s, spans) {
            Some(span) => Src::Spool(span),
            None => Src::Mem(s),
        }
    }

    /// Calls `f` with the string's bytes, a chunk at a time (from its last
    /// `,` on when `after_comma`). Spooled bytes are JSON-unescaped here;
    /// their UTF-8 is checked when `utf8` (serde checks the others).
    pub(super) fn each_chunk<F, R>(
        &self,
        spool: &mut R,
        after_comma: bool,
        utf8: bool,
        mut f: F,
    ) -> Result<(), StringError>
    where
        R: Read + Seek,
        F: FnMut(&[u8]) -> Result<(), StringError>,
    {
        match *self {
            Src::Mem(s) => {
                let s = match after_comma {
                    true => s.rsplit(',').next().unwrap_or_default(),
                    false => s,
                };
                for c in s.as_bytes().chunks(CHUNK) {
                    f(c)?;
                }
                Ok(())
            }
            Src::Spool(span) => {
                let from = if after_comma { span.after_comma } else { 0 };
                spool.seek(SeekFrom::Start(span.start + from))?;
                let mut left = span.len - from;
                let mut raw = vec![0; CHUNK];
                let mut un = Unescape::default();
                let mut out = Vec::with_capacity(CHUNK);
                let mut check = Utf8::default();
                while left > 0 {
                    let n = (left as usize).min(CHUNK);
                    spool.read_exact(&mut raw[..n])?;
                    left -= n as u64;
                    out.clear();
                    un.push(&raw[..n], &mut out)?;
                    if utf8 {
                        check.push(&out)?;
                    }
                    f(&out)?;
                }
                un.finish()?;
                if utf8 {
                    check.finish()?;
                }
                Ok(())
            }
        }
    }
}

/// Why a string could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(super) enum StringError {
    /// Not valid JSON string content.
    #[error("invalid JSON string: {0}")]
    Json(&'static str),
    /// Not valid base64.
    #[error("{0}")]
    Base64(String),
    /// The spool could not be read or written.
    #[error("spool: {0}")]
    Io(#[from] io::Error),
    /// The message grew over the size limit.
    #[error("the message is too large")]
    TooLarge,
}

/// A streaming JSON string unescaper, carried across chunks.
#[derive(Debug, Default)]
struct Unescape {
    esc: bool,
    /// Hex digits of a `\u` escape so far.
    hex: Option<(u8, u16)>,
    /// A high surrogate waiting for its low half.
    high: Option<u16>,
}

impl Unescape {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), StringError> {
        let mut i = 0;
        while i < input.len() {
            if let Some((n, acc)) = self.hex {
                let d = (input[i] as char)
                    .to_digit(16)
                    .ok_or(StringError::Json("bad \\u escape"))?;
                let acc = acc << 4 | d as u16;
                i += 1;
                if n < 3 {
                    self.hex = Some((n + 1, acc));
                    continue;
                }
                self.hex = None;
                self.unit(acc, out)?;
                continue;
            }
            if self.esc {
                self.esc = false;
                let b = input[i];
                i += 1;
                if self.high.is_some() && b != b'u' {
                    return Err(StringError::Json("lone surrogate"));
                }
                let c = match b {
                    b'"' | b'\\' | b'/' => b,
                    b'b' => 8,
                    b'f' => 12,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.hex = Some((0, 0));
                        continue;
                    }
                    _ => return Err(StringError::Json("bad escape")),
                };
                out.push(c);
                continue;
            }
            if self.high.is_some() && input[i] != b'\\' {
                return Err(StringError::Json("lone surrogate"));
            }
            let rest = &input[i..];
            let n = memchr::memchr(b'\\', rest).unwrap_or(rest.len());
            if rest[..n].iter().any(|&b| b < 0x20) {
                return Err(StringError::Json("control character in a string"));
            }
            out.extend_from_slice(&rest[..n]);
            i += n;
            if i < input.len() {
                self.esc = true;
                i += 1;
            }
        }
        Ok(())
    }

    /// One UTF-16 code unit of a `\u` escape.
    fn unit(&mut self, u: u16, out: &mut Vec<u8>) -> Result<(), StringError> {
        let c = match (self.high.take(), u) {
            (None, 0xD800..=0xDBFF) => {
                self.high = Some(u);
                return Ok(());
            }
            (Some(h), 0xDC00..=0xDFFF) => {
                char::from_u32(0x10000 + ((h as u32 - 0xD800) << 10) + (u as u32 - 0xDC00))
            }
            (None, _) => char::from_u32(u as u32),
            (Some(_), _) => None,
        }
        .ok_or(StringError::Json("lone surrogate"))?;
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        Ok(())
    }

    fn finish(&self) -> Result<(), StringError> {
        if self.esc || self.hex.is_some() || self.high.is_some() {
            return Err(StringError::Json("unfinished escape"));
        }
        Ok(())
    }
}

/// A streaming UTF-8 check: a sequence cut by a chunk boundary is carried.
#[derive(Debug, Default)]
struct Utf8 {
    carry: Vec<u8>,
}

impl Utf8 {
    fn push(&mut self, data: &[u8]) -> Result<(), StringError> {
        let mut data = data;
        // Complete a carried sequence a byte at a time (at most 3 bytes).
        while !self.carry.is_empty() {
            let Some((&b, rest)) = data.split_first() else {
                return Ok(());
            };
            data = rest;
            self.carry.push(b);
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(e) if e.error_len().is_some() => {
                    return Err(StringError::Json("invalid UTF-8"));
                }
                Err(_) => {}
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(StringError::Json("invalid UTF-8")),
            Err(e) => {
                self.carry = data[e.valid_up_to()..].to_vec();
                Ok(())
            }
        }
    }

    fn finish(&self) -> Result<(), StringError> {
        match self.carry.is_empty() {
            true => Ok(()),
            false => Err(StringError::Json("invalid UTF-8")),
        }
    }
}

/// A streaming base64 decoder (standard alphabet, padded, as the whole
/// string would be decoded): whitespace at either end is ignored, inside it
/// is an error, and padding only ends the input.
#[derive(Debug, Default)]
pub(super) struct B64Decode {
    buf: Vec<u8>,
    started: bool,
    out: Vec<u8>,
}

impl B64Decode {
    /// Decodes what it can of `data`; calls `f` with decoded bytes.
    pub(super) fn push(
        &mut self,
        mut data: &[u8],
        f: &mut impl FnMut(&[u8]) -> Result<(), StringError>,
    ) -> Result<(), StringError> {
        if !self.started {
            let skip = data.iter().take_while(|b| b.is_ascii_whitespace()).count();
            data = &data[skip..];
            self.started = !data.is_empty();
        }
        self.buf.extend_from_slice(data);
        // Keep the last group and any trailing whitespace for `finish`.
        let end = self
            .buf
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |p| p + 1);
        if end < CHUNK {
            return Ok(());
        }
        let n = (end - 1) / 4 * 4;
        if self.buf[..n].contains(&b'=') {
            return Err(StringError::Base64("padding before the end".into()));
        }
        self.decode(n, f)
    }

    fn decode(
        &mut self,
        n: usize,
        f: &mut impl FnMut(&[u8]) -> Result<(), StringError>,
    ) -> Result<(), StringError> {
        self.out.clear();
        base64::engine::general_purpose::STANDARD
            .decode_vec(&self.buf[..n], &mut self.out)
            .map_err(|e| StringError::Base64(e.to_string()))?;
        self.buf.drain(..n);
        f(&self.out)
    }

    /// Decodes the rest.
    pub(super) fn finish(
        mut self,
        f: &mut impl FnMut(&[u8]) -> Result<(), StringError>,
    ) -> Result<(), StringError> {
        let end = self
            .buf
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |p| p + 1);
        self.buf.truncate(end);
        self.decode(end, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(json: &str, chunk: usize) -> (String, Vec<Span>) {
        let mut s = Scanner::new();
        for c in json.as_bytes().chunks(chunk) {
            s.feed(c).unwrap();
        }
        let (out, spans) = s.finish();
        (String::from_utf8(out).unwrap(), spans)
    }

    fn read_span(json: &str, span: Span, after_comma: bool) -> Vec<u8> {
        let mut got = Vec::new();
        let mut c = io::Cursor::new(json.as_bytes());
        Src::Spool(span)
            .each_chunk(&mut c, after_comma, true, |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        got
    }

    #[test]
    fn large_strings_of_text_html_and_content_are_spooled_others_kept() {
        let big = "a\\\"b\\u00e9\\ud83d\\ude00,".repeat(2000);
        let json = format!(
            r#"{{ "Subject": "{big}", "text": "{big}", "Headers": {{"Text": "{big}"}},
               "Attachments": [ {{"Content" : "data:x;base64,{big}QUJD", "Filename": "f"}} ],
               "HTML": "short" }}"#
        );
        for chunk in [1, 7, 4096, json.len()] {
            let (out, spans) = scan(&json, chunk);
            assert_eq!(spans.len(), 2, "chunk {chunk}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["Subject"].as_str().unwrap().len(), 2000 * 10);
            assert_eq!(v["Headers"]["Text"].as_str().unwrap().len(), 2000 * 10);
            assert_eq!(v["HTML"], "short");
            let t = v["text"].as_str().unwrap();
            let text = spooled(t, &spans).unwrap();
            let want = "a\"bé😀,".repeat(2000);
            assert_eq!(read_span(&json, text, false), want.as_bytes());
            let c = v["Attachments"][0]["Content"].as_str().unwrap();
            let content = spooled(c, &spans).unwrap();
            assert_eq!(read_span(&json, content, true), b"QUJD");
            assert!(
                out.len() < json.len() * 2 / 3,
                "two of four large strings left"
            );
        }
    }

    #[test]
    fn bad_strings_and_fields_over_the_cap_are_refused() {
        for bad in [r"\x", r"\ud800x", r"\u12", "\u{1}"] {
            let json = format!(r#"{{"Text": "{}{bad}"}}"#, "a".repeat(SPOOL_STRING + 1));
            let (_, spans) = scan(&json, 100);
            let mut c = io::Cursor::new(json.as_bytes());
            let r = Src::Spool(spans[0]).each_chunk(&mut c, false, true, |_| Ok(()));
            assert!(r.is_err(), "{bad}");
        }
        let mut s = Scanner::new();
        let fields = format!(r#"{{"Subject": "{}"}}"#, "a".repeat(MAX_FIELDS));
        assert!(s.feed(fields.as_bytes()).is_err());
    }

    #[test]
    fn utf8_is_checked_across_chunks() {
        let s = "é😀x".repeat(1000);
        for n in 1..6 {
            let mut u = Utf8::default();
            for c in s.as_bytes().chunks(n) {
                u.push(c).unwrap();
            }
            u.finish().unwrap();
        }
        let mut u = Utf8::default();
        u.push(&[0xf0, 0x9f]).unwrap();
        assert!(u.push(b"a").is_err() || u.finish().is_err());
        let mut u = Utf8::default();
        u.push(&[0xc3]).unwrap();
        assert!(u.finish().is_err());
    }

    #[test]
    fn base64_decodes_in_chunks_like_at_once() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let enc = base64::engine::general_purpose::STANDARD.encode(&data);
        let text = format!("  \n{enc}\r\n ");
        for n in [1, 3, 1000, 70_000, text.len()] {
            let mut d = B64Decode::default();
            let mut got = Vec::new();
            let mut f = |b: &[u8]| {
                got.extend_from_slice(b);
                Ok(())
            };
            for c in text.as_bytes().chunks(n) {
                d.push(c, &mut f).unwrap();
            }
            d.finish(&mut f).unwrap();
            assert_eq!(got, data, "chunk {n}");
        }
        let bad = format!("QQ=={enc}");
        let mut d = B64Decode::default();
        let mut f = |_: &[u8]| Ok(());
        let r = d
            .push(bad.as_bytes(), &mut f)
            .and_then(|_| d.finish(&mut f));
        assert!(r.is_err());
        let mut d = B64Decode::default();
        let r = d.push(b"QU JD", &mut f).and_then(|_| d.finish(&mut f));
        assert!(r.is_err());
    }
}
