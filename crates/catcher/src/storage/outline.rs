//! Reading a stored message in bounded memory: the raw bytes as a stream
//! (decompressed as they are read from a spool of the compressed copy),
//! and an *outline* of the message for the views that parse it.
//!
//! The outline is the message with every large body cut short: headers,
//! boundaries and MIME structure stay byte for byte, so mail-parser finds
//! the same parts, types, names and text bodies in it as in the whole
//! message; a body larger than [`KEEP`] is cut to a few lines (text bodies
//! to [`TEXT_KEEP`]), and its decoded size and checksums are computed as it
//! streams past, part path by part path (the same paths
//! [`super::parse`] gives). One part's decoded body can be copied into a
//! spool on the way (`/part/{PartID}`).
//!
//! Why: parsing a whole 50 MB message held the raw copy, mail-parser's
//! decoded parts, and the copies made of them (about 4x the message) for
//! one `GET`; the outline holds at most [`OUTLINE_MAX`] plus fixed buffers.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};

use md5::Digest;
use tempfile::SpooledTempFile;

use super::model::spool;
use super::parse::Checksums;

/// A body up to this many (encoded) bytes stays whole in the outline.
pub const KEEP: usize = 1024 * 1024;

/// A text body (`text/*`, the message's text or HTML) keeps up to this many
/// encoded bytes in the outline: the message view shows no more of it
/// (`/part/` and `/raw` give it whole).
pub const TEXT_KEEP: usize = 4 * 1024 * 1024;

/// The most the outline holds in all (headers, kept bodies): beyond it,
/// bodies are cut however small. mail-parser holds about twice its input
/// (decoded bodies beside it), so this bounds a view's parse.
pub const OUTLINE_MAX: usize = 8 * 1024 * 1024;

/// What a cut non-text body keeps: enough lines to decode as its type.
const CUT_KEEP: usize = 4 * 1024;

/// Headers of one part kept in the outline; longer header blocks lose
/// their tail (a hostile message's 40 MB of headers).
const HEADER_KEEP: usize = 1024 * 1024;

/// Preamble and epilogue of a multipart kept in the outline.
const PROLOGUE_KEEP: usize = 64 * 1024;

/// Bytes read as one segment: a longer line is read in pieces (a boundary
/// line is never that long, RFC 2046 caps boundaries at 70 characters).
const SEGMENT_MAX: usize = 8 * 1024;

/// Multiparts nested deeper than this are read as one opaque body.
const MAX_DEPTH: usize = 32;

/// The decompressed raw bytes of a stored message, read from a spool of
/// its compressed copy.
pub type RawReader = zstd::stream::read::Decoder<'static, io::BufReader<SpooledTempFile>>;

/// A large part's decoded size and checksums, as streamed past.
#[derive(Debug, Clone)]
pub struct PartStats {
    /// Decoded bytes.
    pub size: u64,
    /// MD5, SHA-1 and SHA-256 of the decoded bytes (hex).
    pub checksums: Checksums,
}

/// A message's outline; see the module docs.
#[derive(Debug)]
pub struct Outline {
    /// The message with large bodies cut short.
    pub text: Vec<u8>,
    /// Size and checksums of every part whose body was cut, by part path.
    pub cut: HashMap<String, PartStats>,
    /// The decoded body of the part asked for, when it was cut (a part
    /// kept whole is read from `text` like any other).
    pub extracted: Option<(SpooledTempFile, u64)>,
}

/// The message view of an outline ([`super::parse::detail`]): the parts
/// cut from it get the size and checksums measured while it was read.
pub fn detail(o: &Outline) -> super::parse::Detail {
    let mut d = super::parse::detail(&o.text);
    for a in d.attachments.iter_mut().chain(d.inline.iter_mut()) {
        if let Some(stats) = o.cut.get(&a.part_id) {
            a.size = stats.size;
            a.checksums = stats.checksums.clone();
        }
    }
    d
}

/// Reads `raw` into an [`Outline`], copying the decoded body of part
/// `extract` (a part path) into a spool when that part is cut.
pub fn outline(raw: impl Read, extract: Option<&str>) -> io::Result<Outline> {
    let mut s = Scanner {
        out: Vec::new(),
        cut: HashMap::new(),
        extract,
        extracted: None,
        stack: Vec::new(),
        state: State::Headers {
            path: String::new(),
            block: Vec::new(),
        },
    };
    let mut reader = io::BufReader::with_capacity(64 * 1024, raw);
    let mut seg = Vec::with_capacity(SEGMENT_MAX);
    let mut line_start = true;
    while next_segment(&mut reader, &mut seg)? {
        s.segment(&seg, line_start)?;
        line_start = seg.ends_with(b"\n");
    }
    s.finish_body(true)?;
    Ok(Outline {
        text: s.out,
        cut: s.cut,
        extracted: s.extracted,
    })
}

/// The message's top header block (up to [`HEADER_KEEP`] bytes, with the
/// blank line that ends it), read from the front of `raw`.
pub fn header_block(raw: impl Read) -> io::Result<Vec<u8>> {
    let mut reader = io::BufReader::new(raw);
    let mut seg = Vec::with_capacity(SEGMENT_MAX);
    let mut out = Vec::new();
    let mut line_start = true;
    while next_segment(&mut reader, &mut seg)? {
        if line_start && (seg == b"\r\n" || seg == b"\n") {
            out.extend_from_slice(&seg);
            break;
        }
        if out.len() + seg.len() <= HEADER_KEEP {
            out.extend_from_slice(&seg);
        }
        line_start = seg.ends_with(b"\n");
    }
    Ok(out)
}

/// Reads the next line, or the next [`SEGMENT_MAX`] bytes of a longer one,
/// into `seg`; false at the end.
fn next_segment(r: &mut impl BufRead, seg: &mut Vec<u8>) -> io::Result<bool> {
    seg.clear();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(!seg.is_empty());
        }
        let room = SEGMENT_MAX - seg.len();
        let take = &buf[..buf.len().min(room)];
        if let Some(i) = memchr::memchr(b'\n', take) {
            seg.extend_from_slice(&take[..=i]);
            r.consume(i + 1);
            return Ok(true);
        }
        let n = take.len();
        seg.extend_from_slice(take);
        r.consume(n);
        if seg.len() >= SEGMENT_MAX {
            return Ok(true);
        }
    }
}

/// An open multipart.
struct Frame {
    boundary: Vec<u8>,
    /// Its path, the prefix of its children's (`""` at the top).
    path: String,
    children: usize,
}

enum State {
    /// Reading a part's header block.
    Headers { path: String, block: Vec<u8> },
    /// Reading a leaf part's body.
    Body(Leaf),
    /// Before the first boundary or after the closing one of a multipart:
    /// kept up to [`PROLOGUE_KEEP`] bytes.
    Between { kept: usize },
}

/// A leaf part's body being read.
struct Leaf {
    path: String,
    text: bool,
    encoding: Encoding,
    /// The body while it may still be kept whole.
    pending: Vec<u8>,
    /// Whole only up to this many bytes.
    keep: usize,
    /// Set once the body is known to be cut (boxed: the hashers are large).
    big: Option<Box<Big>>,
}

/// A cut body: what is kept, and the decoder the rest streams through.
struct Big {
    /// Bytes still to keep in the outline (whole segments only).
    room: usize,
    /// The kept part ends inside a line.
    mid_line: bool,
    decoder: Decoder,
    /// The last line ending, held back: before a boundary it belongs to
    /// the boundary, not the body.
    held: Vec<u8>,
    size: u64,
    md5: md5::Md5,
    sha1: sha1::Sha1,
    sha256: sha2::Sha256,
    spool: Option<SpooledTempFile>,
}

impl Big {
    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (body, ending) = if bytes.ends_with(b"\r\n") {
            bytes.split_at(bytes.len() - 2)
        } else if bytes.ends_with(b"\n") {
            bytes.split_at(bytes.len() - 1)
        } else {
            (bytes, &b""[..])
        };
        let held = std::mem::take(&mut self.held);
        self.decode(&held)?;
        self.decode(body)?;
        self.held = ending.to_vec();
        Ok(())
    }

    fn decode(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut decoder = std::mem::replace(&mut self.decoder, Decoder::Identity);
        let mut out = Vec::with_capacity(bytes.len());
        decoder.feed(bytes, &mut out);
        self.decoder = decoder;
        self.emit(&out)
    }

    fn emit(&mut self, out: &[u8]) -> io::Result<()> {
        self.size += out.len() as u64;
        self.md5.update(out);
        self.sha1.update(out);
        self.sha256.update(out);
        if let Some(s) = &mut self.spool {
            s.write_all(out)?;
        }
        Ok(())
    }
}

/// A streaming transfer decoder.
enum Decoder {
    Identity,
    /// Base64: the bits of a group not yet complete.
    Base64 {
        chunk: u32,
        count: u8,
    },
    /// Quoted-printable: an `=` escape cut by a segment end.
    Qp {
        carry: Vec<u8>,
    },
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Identity,
    Base64,
    Qp,
}

impl Decoder {
    fn new(e: Encoding) -> Self {
        match e {
            Encoding::Identity => Decoder::Identity,
            Encoding::Base64 => Decoder::Base64 { chunk: 0, count: 0 },
            Encoding::Qp => Decoder::Qp { carry: Vec::new() },
        }
    }

    /// Decodes `input` onto `out`, as leniently as mail-parser: base64
    /// skips white space and stray characters, `=` ends a group.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match self {
            Decoder::Identity => out.extend_from_slice(input),
            Decoder::Base64 { chunk, count } => {
                for &c in input {
                    let v = match c {
                        b'A'..=b'Z' => c - b'A',
                        b'a'..=b'z' => c - b'a' + 26,
                        b'0'..=b'9' => c - b'0' + 52,
                        b'+' => 62,
                        b'/' => 63,
                        b'=' => {
                            match *count {
                                2 => out.push((*chunk >> 4) as u8),
                                3 => out.extend_from_slice(&[
                                    (*chunk >> 10) as u8,
                                    (*chunk >> 2) as u8,
                                ]),
                                _ => {}
                            }
                            *count = 0;
                            *chunk = 0;
                            continue;
                        }
                        _ => continue,
                    };
                    *chunk = (*chunk << 6) | u32::from(v);
                    *count = (*count + 1) & 3;
                    if *count == 0 {
                        out.extend_from_slice(&chunk.to_be_bytes()[1..]);
                        *chunk = 0;
                    }
                }
            }
            Decoder::Qp { carry } => {
                let mut buf = std::mem::take(carry);
                buf.extend_from_slice(input);
                let mut i = 0;
                while i < buf.len() {
                    let c = buf[i];
                    if c != b'=' {
                        out.push(c);
                        i += 1;
                        continue;
                    }
                    let rest = &buf[i + 1..];
                    if rest.len() < 2 {
                        // `=` or `=X` at the end: wait for more (a soft
                        // break's line ending arrives with the next line).
                        carry.extend_from_slice(&buf[i..]);
                        break;
                    }
                    if rest.starts_with(b"\r\n") {
                        i += 3;
                    } else if rest[0] == b'\n' {
                        i += 2;
                    } else if let (Some(h), Some(l)) = (hex(rest[0]), hex(rest[1])) {
                        out.push(h << 4 | l);
                        i += 3;
                    } else {
                        out.push(b'=');
                        i += 1;
                    }
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Decoder::Identity => {}
            Decoder::Base64 { chunk, count } => {
                match *count {
                    2 => out.push((*chunk >> 4) as u8),
                    3 => out.extend_from_slice(&[(*chunk >> 10) as u8, (*chunk >> 2) as u8]),
                    _ => {}
                }
                *count = 0;
            }
            Decoder::Qp { carry } => {
                // A trailing `=` is a soft break; `=X` is kept as it is.
                if carry.len() > 1 {
                    out.extend_from_slice(carry);
                }
                carry.clear();
            }
        }
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

struct Scanner<'a> {
    out: Vec<u8>,
    cut: HashMap<String, PartStats>,
    extract: Option<&'a str>,
    extracted: Option<(SpooledTempFile, u64)>,
    stack: Vec<Frame>,
    state: State,
}

/// What a line at a line start means to the open multiparts.
enum Delimiter {
    /// The next part of the multipart at this depth.
    Next(usize),
    /// The end of the multipart at this depth.
    Close(usize),
}

impl Scanner<'_> {
    fn room(&self) -> usize {
        OUTLINE_MAX.saturating_sub(self.out.len())
    }

    fn delimiter(&self, line: &[u8]) -> Option<Delimiter> {
        let line = line.strip_prefix(b"--")?;
        let line = line.trim_ascii_end();
        for (depth, f) in self.stack.iter().enumerate().rev() {
            if let Some(rest) = line.strip_prefix(f.boundary.as_slice()) {
                if rest.is_empty() {
                    return Some(Delimiter::Next(depth));
                }
                if rest == b"--" {
                    return Some(Delimiter::Close(depth));
                }
            }
        }
        None
    }

    fn segment(&mut self, seg: &[u8], line_start: bool) -> io::Result<()> {
        if let State::Headers { block, .. } = &mut self.state {
            if line_start && (seg == b"\r\n" || seg == b"\n") {
                block.extend_from_slice(seg);
                return self.end_headers();
            }
            if block.len() + seg.len() <= HEADER_KEEP {
                block.extend_from_slice(seg);
            }
            return Ok(());
        }
        if line_start
            && seg.len() < SEGMENT_MAX
            && !self.stack.is_empty()
            && let Some(d) = self.delimiter(seg)
        {
            self.finish_body(false)?;
            let depth = match d {
                Delimiter::Next(d) | Delimiter::Close(d) => d,
            };
            self.stack.truncate(depth + 1);
            self.out.extend_from_slice(seg);
            if !seg.ends_with(b"\n") {
                self.out.extend_from_slice(b"\r\n");
            }
            self.state = match d {
                Delimiter::Next(_) => {
                    let f = &mut self.stack[depth];
                    f.children += 1;
                    let path = if f.path.is_empty() {
                        f.children.to_string()
                    } else {
                        format!("{}.{}", f.path, f.children)
                    };
                    State::Headers {
                        path,
                        block: Vec::new(),
                    }
                }
                Delimiter::Close(_) => {
                    self.stack.pop();
                    State::Between { kept: 0 }
                }
            };
            return Ok(());
        }
        let room = self.room();
        match &mut self.state {
            State::Headers { .. } => unreachable!("handled above"),
            State::Between { kept } => {
                if *kept + seg.len() <= PROLOGUE_KEEP.min(room) {
                    *kept += seg.len();
                    self.out.extend_from_slice(seg);
                }
            }
            State::Body(leaf) => {
                if leaf.big.is_none() {
                    if leaf.pending.len() + seg.len() <= leaf.keep {
                        leaf.pending.extend_from_slice(seg);
                        return Ok(());
                    }
                    let spool = (self.extract == Some(leaf.path.as_str())).then(spool);
                    let limit = if leaf.text { TEXT_KEEP } else { CUT_KEEP };
                    let mut big = Box::new(Big {
                        room: limit.min(room),
                        mid_line: false,
                        decoder: Decoder::new(leaf.encoding),
                        held: Vec::new(),
                        size: 0,
                        md5: md5::Md5::new(),
                        sha1: sha1::Sha1::new(),
                        sha256: sha2::Sha256::new(),
                        spool,
                    });
                    let pending = std::mem::take(&mut leaf.pending);
                    for line in pending.split_inclusive(|&b| b == b'\n') {
                        keep(&mut self.out, &mut big, line);
                        big.feed(line)?;
                    }
                    leaf.big = Some(big);
                }
                let big = leaf.big.as_mut().expect("set above");
                keep(&mut self.out, big, seg);
                big.feed(seg)?;
            }
        }
        Ok(())
    }

    /// The header block of the part being read is complete: decide what
    /// its body is.
    fn end_headers(&mut self) -> io::Result<()> {
        let State::Headers { path, block } =
            std::mem::replace(&mut self.state, State::Between { kept: 0 })
        else {
            unreachable!("called in the header state")
        };
        self.out.extend_from_slice(&block);
        let parsed = super::parse::part_header(&block);
        if let Some(boundary) = parsed.boundary
            && self.stack.len() < MAX_DEPTH
        {
            self.stack.push(Frame {
                boundary,
                path,
                children: 0,
            });
            self.state = State::Between { kept: 0 };
            return Ok(());
        }
        let path = if path.is_empty() { "1".into() } else { path };
        let encoding = match parsed.encoding.as_deref() {
            Some(e) if e.eq_ignore_ascii_case("base64") => Encoding::Base64,
            Some(e) if e.eq_ignore_ascii_case("quoted-printable") => Encoding::Qp,
            _ => Encoding::Identity,
        };
        self.state = State::Body(Leaf {
            path,
            text: parsed.text,
            encoding,
            pending: Vec::new(),
            keep: KEEP.min(self.room()),
            big: None,
        });
        Ok(())
    }

    /// Ends the body being read (at a delimiter, or at the end of the
    /// message when `at_end`).
    fn finish_body(&mut self, at_end: bool) -> io::Result<()> {
        match std::mem::replace(&mut self.state, State::Between { kept: 0 }) {
            State::Headers { block, .. } => {
                // Headers without a body (or cut by a delimiter).
                self.out.extend_from_slice(&block);
            }
            State::Between { .. } => {}
            State::Body(leaf) => match leaf.big {
                None => self.out.extend_from_slice(&leaf.pending),
                Some(mut big) => {
                    if at_end {
                        // No delimiter follows: the last line ending is
                        // the body's.
                        let held = std::mem::take(&mut big.held);
                        big.decode(&held)?;
                    }
                    let mut tail = Vec::new();
                    big.decoder.finish(&mut tail);
                    big.emit(&tail)?;
                    if big.mid_line {
                        self.out.extend_from_slice(b"\r\n");
                    }
                    if let Some(mut s) = big.spool.take() {
                        s.flush()?;
                        self.extracted = Some((s, big.size));
                    }
                    self.cut.insert(
                        leaf.path,
                        PartStats {
                            size: big.size,
                            checksums: Checksums {
                                md5: hex::encode(big.md5.finalize()),
                                sha1: hex::encode(big.sha1.finalize()),
                                sha256: hex::encode(big.sha256.finalize()),
                            },
                        },
                    );
                }
            },
        }
        Ok(())
    }
}

/// Keeps `seg` of a cut body in the outline while there is room, whole
/// segments only, and none after the first that did not fit.
fn keep(out: &mut Vec<u8>, big: &mut Big, seg: &[u8]) {
    if seg.len() <= big.room {
        big.room -= seg.len();
        out.extend_from_slice(seg);
        big.mid_line = !seg.ends_with(b"\n");
    } else {
        big.room = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64_lines(data: &[u8]) -> String {
        use base64::Engine;
        let s = base64::engine::general_purpose::STANDARD.encode(data);
        s.as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
            .collect()
    }

    fn message(att: &[u8], text: &str) -> Vec<u8> {
        format!(
            "From: a@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n--XX\r\n\
             Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.bin\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}--XX--\r\n",
            b64_lines(att)
        )
        .into_bytes()
    }

    /// Bytes that do not repeat in any way base64 or a line cut would hide.
    fn noise(n: usize) -> Vec<u8> {
        (0..n as u64)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
            .collect()
    }

    #[test]
    fn a_small_message_is_its_own_outline() {
        let raw = message(b"tiny", "hello");
        let o = outline(&raw[..], None).unwrap();
        assert_eq!(o.text, raw);
        assert!(o.cut.is_empty());
    }

    #[test]
    fn a_large_attachment_is_cut_but_measured_and_extracted() {
        let att = noise(3 * KEEP);
        let raw = message(&att, "hello");
        let o = outline(&raw[..], Some("2")).unwrap();
        assert!(o.text.len() < 32 * 1024, "{}", o.text.len());
        let stats = &o.cut["2"];
        assert_eq!(stats.size, att.len() as u64);
        assert_eq!(
            stats.checksums.sha256,
            hex::encode(sha2::Sha256::digest(&att))
        );
        let (mut spool, len) = o.extracted.unwrap();
        assert_eq!(len, att.len() as u64);
        use std::io::Seek;
        spool.rewind().unwrap();
        let mut back = Vec::new();
        spool.read_to_end(&mut back).unwrap();
        assert_eq!(back, att);
        // The cut outline still parses to the same parts.
        let d = super::super::parse::detail(&o.text);
        assert_eq!(d.text.trim(), "hello");
        assert_eq!(d.attachments.len(), 1);
        assert_eq!(d.attachments[0].part_id, "2");
        assert_eq!(d.attachments[0].file_name, "a.bin");
    }

    #[test]
    fn a_long_text_body_is_cut_at_text_keep() {
        let line = "x".repeat(99);
        let text: String = (0..(TEXT_KEEP / 100 + 1000))
            .map(|_| format!("{line}\r\n"))
            .collect();
        let raw = message(b"a", text.trim_end());
        let o = outline(&raw[..], None).unwrap();
        assert!(o.text.len() <= TEXT_KEEP + 4096);
        let d = super::super::parse::detail(&o.text);
        assert!(d.text.len() >= TEXT_KEEP - 200, "{}", d.text.len());
        assert_eq!(d.attachments.len(), 1);
        assert_eq!(o.cut["1"].size, text.trim_end().len() as u64);
    }

    #[test]
    fn quoted_printable_and_identity_bodies_decode_like_mail_parser() {
        let mut body = String::new();
        for i in 0..40_000 {
            body.push_str(&format!("line {i} caf=C3=A9 soft=\r\nbreak\r\n"));
        }
        let raw = format!(
            "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{body}"
        );
        let o = outline(raw.as_bytes(), Some("1")).unwrap();
        let full = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        let want = full.parts[0].contents();
        assert_eq!(o.cut["1"].size, want.len() as u64);
        assert_eq!(
            o.cut["1"].checksums.sha256,
            hex::encode(sha2::Sha256::digest(want))
        );
    }

    #[test]
    fn the_header_block_is_read_alone() {
        let raw = message(&noise(100), "hello");
        let h = header_block(&raw[..]).unwrap();
        assert!(h.ends_with(b"boundary=\"XX\"\r\n\r\n"));
    }
}
