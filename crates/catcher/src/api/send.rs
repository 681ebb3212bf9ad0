//! `POST /api/v1/send`: builds a MIME message from Mailpit's JSON send
//! request and stores it exactly as if it had arrived over SMTP.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::Value;

use super::handlers::{field, string_list};
use super::{ApiError, AppState};
use crate::storage::NewMessage;

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

struct Named {
    name: String,
    email: String,
}

struct Part {
    data: Vec<u8>,
    content_type: String,
    filename: String,
    content_id: String,
}

fn named_list(v: &Value, key: &str) -> Result<Vec<Named>, ApiError> {
    let Some(arr) = field(v, key) else {
        return Ok(Vec::new());
    };
    let arr = arr
        .as_array()
        .ok_or_else(|| ApiError::BadJson(format!("{key} must be an array")))?;
    arr.iter()
        .map(|a| {
            let email = field(a, "Email")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim();
            if !valid_email(email) {
                return Err(ApiError::BadJson(format!("invalid {key} address: {email}")));
            }
            Ok(Named {
                name: field(a, "Name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                email: email.to_string(),
            })
        })
        .collect()
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
    if n.name.is_empty() {
        n.email.clone()
    } else if n.name.is_ascii() {
        format!("\"{}\" <{}>", n.name.replace(['"', '\\'], ""), n.email)
    } else {
        format!("{} <{}>", encode_word(&n.name), n.email)
    }
}

/// Base64 body wrapped at 76 columns.
fn b64_lines(data: &[u8]) -> String {
    let enc = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(enc.len() + enc.len() / 76 * 2 + 2);
    for chunk in enc.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

fn boundary() -> String {
    format!("mailsafe-{}", crate::storage::new_boundary())
}

fn text_part(ctype: &str, body: &str) -> String {
    format!(
        "Content-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        b64_lines(body.as_bytes())
    )
}

fn multipart(kind: &str, parts: Vec<String>) -> String {
    let b = boundary();
    let mut s = format!("Content-Type: multipart/{kind}; boundary=\"{b}\"\r\n\r\n");
    for p in parts {
        s.push_str(&format!("--{b}\r\n{p}\r\n"));
    }
    s.push_str(&format!("--{b}--\r\n"));
    s
}

fn file_part(p: &Part, inline: bool) -> String {
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
    s.push_str(&b64_lines(&p.data));
    s
}

/// Guesses a content type from magic bytes, like Go's `DetectContentType`
/// for the common cases.
fn sniff(data: &[u8]) -> &'static str {
    match data {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xff, 0xd8, 0xff, ..] => "image/jpeg",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [b'%', b'P', b'D', b'F', ..] => "application/pdf",
        [b'P', b'K', 3, 4, ..] => "application/zip",
        d if std::str::from_utf8(d).is_ok() => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A built message: raw bytes, envelope sender, envelope recipients, tags.
type Built = (Vec<u8>, String, Vec<String>, Vec<String>);

/// Builds the raw message; returns it with the envelope recipients.
fn build(v: &Value) -> Result<Built, ApiError> {
    let from = field(v, "From").ok_or_else(|| ApiError::BadJson("From is required".into()))?;
    let from = Named {
        name: field(from, "Name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        email: field(from, "Email")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    if !valid_email(&from.email) {
        return Err(ApiError::BadJson(format!(
            "invalid From address: {}",
            from.email
        )));
    }
    let to = named_list(v, "To")?;
    let cc = named_list(v, "Cc")?;
    let reply_to = named_list(v, "ReplyTo")?;
    let bcc = string_list(v, "Bcc")
        .map_err(|_| ApiError::BadJson("Bcc must be an array of strings".into()))?;
    for b in &bcc {
        if !valid_email(b) {
            return Err(ApiError::BadJson(format!("invalid Bcc address: {b}")));
        }
    }
    let tags = string_list(v, "Tags")
        .map_err(|_| ApiError::BadJson("Tags must be an array of strings".into()))?;
    let str_field = |k: &str| {
        field(v, k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let subject = str_field("Subject");
    let text = str_field("Text");
    let html = str_field("HTML");

    let mut atts = Vec::new();
    let mut inl = Vec::new();
    if let Some(list) = field(v, "Attachments") {
        let list = list
            .as_array()
            .ok_or_else(|| ApiError::BadJson("Attachments must be an array".into()))?;
        for a in list {
            let filename = field(a, "Filename")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let content = field(a, "Content")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // Data URLs ("data:image/png;base64,....") are accepted too.
            let content = content.rsplit(',').next().unwrap_or_default();
            let data = base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .map_err(|e| {
                    ApiError::BadJson(format!(
                        "error decoding base64 attachment \"{filename}\": {e}"
                    ))
                })?;
            let ct = field(a, "ContentType")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let p = Part {
                content_type: if ct.is_empty() {
                    sniff(&data).to_string()
                } else {
                    ct.replace(['\r', '\n'], "")
                },
                data,
                filename,
                content_id: field(a, "ContentID")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .replace(['<', '>', '\r', '\n'], ""),
            };
            if p.content_id.is_empty() {
                atts.push(p);
            } else {
                inl.push(p);
            }
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
    head.push_str(&format!("Subject: {}\r\n", encode_word(&subject)));
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
    if let Some(h) = field(v, "Headers") {
        let h = h
            .as_object()
            .ok_or_else(|| ApiError::BadJson("Headers must be an object".into()))?;
        for (k, val) in h {
            if RESTRICTED.iter().any(|r| r.eq_ignore_ascii_case(k)) {
                return Err(ApiError::BadJson(format!(
                    "cannot overwrite header: \"{k}\""
                )));
            }
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(ApiError::BadJson(format!("invalid header name: \"{k}\"")));
            }
            let val = val
                .as_str()
                .ok_or_else(|| ApiError::BadJson(format!("header \"{k}\" must be a string")))?;
            head.push_str(&format!(
                "{k}: {}\r\n",
                encode_word(&val.replace(['\r', '\n'], " "))
            ));
        }
    }
    head.push_str("MIME-Version: 1.0\r\n");

    let mut body = if html.is_empty() {
        text_part("text/plain", &text)
    } else {
        multipart(
            "alternative",
            vec![
                text_part("text/plain", &text),
                text_part("text/html", &html),
            ],
        )
    };
    if !inl.is_empty() {
        let mut parts = vec![body];
        parts.extend(inl.iter().map(|p| file_part(p, true)));
        body = multipart("related", parts);
    }
    if !atts.is_empty() {
        let mut parts = vec![body];
        parts.extend(atts.iter().map(|p| file_part(p, false)));
        body = multipart("mixed", parts);
    }
    let raw = format!("{head}{body}").into_bytes();
    let rcpt: Vec<String> = to
        .iter()
        .chain(cc.iter())
        .map(|n| n.email.clone())
        .chain(bcc.iter().cloned())
        .collect();
    Ok((raw, from.email, rcpt, tags))
}

/// The handler.
pub async fn send(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadJson(format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::BadJson(
            "invalid JSON body: expected an object".into(),
        ));
    }
    let (raw, mail_from, rcpt_to, _tags) = build(&v)?;
    let username = super::auth::basic_user(&headers);
    let id = s
        .store
        .insert(NewMessage {
            raw,
            mail_from,
            rcpt_to,
            username,
        })
        .await?;
    Ok(Json(serde_json::json!({ "ID": id })).into_response())
}
