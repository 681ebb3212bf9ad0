//! Header edits a relayed message gets, on its raw bytes (Mailpit's
//! `tools.RemoveMessageHeaders`, `SetMessageHeader`, `OverrideFromHeader`):
//! the body and every other header stay byte for byte.

/// Where the header block ends: just after its blank line, or the end.
fn header_end(raw: &[u8]) -> usize {
    let mut pos = 0;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        pos += line.len();
        if line == b"\r\n" || line == b"\n" {
            return pos;
        }
    }
    raw.len()
}

/// Each header field's byte range (continuation lines included) and name.
fn fields(raw: &[u8]) -> Vec<(usize, usize, String)> {
    let end = header_end(raw);
    let mut out: Vec<(usize, usize, String)> = Vec::new();
    let mut pos = 0;
    for line in raw[..end].split_inclusive(|&b| b == b'\n') {
        let start = pos;
        pos += line.len();
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        match (line.first(), out.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => last.1 = pos,
            _ => {
                let name = line
                    .iter()
                    .position(|&b| b == b':')
                    .map(|i| String::from_utf8_lossy(&line[..i]).trim().to_owned())
                    .unwrap_or_default();
                out.push((start, pos, name));
            }
        }
    }
    out
}

/// The message without any `name` header field.
pub fn remove(raw: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut pos = 0;
    for (start, end, n) in fields(raw) {
        if n.eq_ignore_ascii_case(name) {
            out.extend_from_slice(&raw[pos..start]);
            pos = end;
        }
    }
    out.extend_from_slice(&raw[pos..]);
    out
}

/// The message with `name: value` first.
pub fn prepend(raw: &[u8], name: &str, value: &str) -> Vec<u8> {
    let mut out = format!("{name}: {}\r\n", clean(value)).into_bytes();
    out.extend_from_slice(raw);
    out
}

/// The message with its first `name` field replaced by `name: value`, or
/// with one added first when it has none.
pub fn set(raw: &[u8], name: &str, value: &str) -> Vec<u8> {
    match fields(raw)
        .into_iter()
        .find(|(_, _, n)| n.eq_ignore_ascii_case(name))
    {
        Some((start, end, _)) => {
            let mut out = raw[..start].to_vec();
            out.extend_from_slice(format!("{name}: {}\r\n", clean(value)).as_bytes());
            out.extend_from_slice(&raw[end..]);
            out
        }
        None => prepend(raw, name, value),
    }
}

/// A header value cannot carry a line break (it would add headers).
fn clean(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).collect()
}

/// From becomes `address`, keeping the display name; the original address
/// is kept in `X-Original-From`.
pub fn override_from(raw: &[u8], address: &str) -> Vec<u8> {
    let headers = Headers::of(raw);
    let Some(original) = headers.value("From") else {
        return raw.to_vec();
    };
    let (new, original) = match parse_address(&original) {
        Some((name, addr)) if !name.is_empty() => (format!("\"{name}\" <{address}>"), addr),
        Some((_, addr)) => (format!("<{address}>"), addr),
        None => (address.to_owned(), original),
    };
    prepend(&set(raw, "From", &new), "X-Original-From", &original)
}

/// Parses one address as a client gives it (`a@b`, `<a@b>`, `Name <a@b>`,
/// `"Name" <a@b>`): the display name (maybe empty) and the address.
pub fn parse_address(s: &str) -> Option<(String, String)> {
    let s = s.trim();
    let (name, addr) = match (s.rfind('<'), s.ends_with('>')) {
        (Some(i), true) => (
            s[..i].trim().trim_matches('"').trim(),
            &s[i + 1..s.len() - 1],
        ),
        _ => ("", s),
    };
    let addr = addr.trim();
    let (local, domain) = addr.rsplit_once('@')?;
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| !c.is_control() && !c.is_whitespace() && !"<>()[],;:\\\"".contains(c))
    };
    (ok(local) && ok(domain)).then(|| (name.to_owned(), addr.to_owned()))
}

/// Unfolded header values of a raw message.
pub struct Headers {
    fields: Vec<(String, String)>,
}

impl Headers {
    /// Reads the header block of `raw`.
    pub fn of(raw: &[u8]) -> Headers {
        let fields = fields(raw)
            .into_iter()
            .map(|(start, end, name)| {
                let line = String::from_utf8_lossy(&raw[start..end]);
                let value = line
                    .split_once(':')
                    .map(|(_, v)| v)
                    .unwrap_or("")
                    .split(['\r', '\n'])
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                (name, value)
            })
            .collect();
        Headers { fields }
    }

    /// The first `name` field's value.
    pub fn value(&self, name: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// The (first) address in the first `name` field.
    pub fn address(&self, name: &str) -> Option<String> {
        let v = self.value(name)?;
        let first = v.split(',').next()?;
        parse_address(first).map(|(_, a)| a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: \"Ann\" <ann@x>\r\nTo: b@y\r\nBcc: hidden@z,\r\n other@z\r\nMessage-ID: <1@x>\r\n\r\nBcc: body line\r\n";

    #[test]
    fn header_edits_leave_everything_else_byte_for_byte() {
        assert_eq!(
            remove(MSG, "bcc"),
            b"From: \"Ann\" <ann@x>\r\nTo: b@y\r\nMessage-ID: <1@x>\r\n\r\nBcc: body line\r\n"
        );
        let s = set(MSG, "Message-ID", "<2@y>\r\nX-Evil: 1");
        assert!(s.windows(23).any(|w| w == b"Message-ID: <2@y>X-Evil"));
        assert!(set(b"A: b\r\n\r\nx", "Date", "now").starts_with(b"Date: now\r\nA: b\r\n"));
        let o = override_from(MSG, "relay@me");
        assert!(o.starts_with(b"X-Original-From: ann@x\r\nFrom: \"Ann\" <relay@me>\r\nTo: b@y"));
        let h = Headers::of(MSG);
        assert_eq!(h.address("From").unwrap(), "ann@x");
        assert_eq!(h.value("Bcc").unwrap(), "hidden@z, other@z");
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("a@b").unwrap(), ("".into(), "a@b".into()));
        assert_eq!(
            parse_address("\"X Y\" <a@b>").unwrap(),
            ("X Y".into(), "a@b".into())
        );
        for bad in ["", "ab", "a b@c", "@b", "a@", "<a@b"] {
            assert!(parse_address(bad).is_none(), "{bad}");
        }
    }
}
