//! `POST /api/v1/send`: builds a MIME message from Mailpit's JSON send
//! request and stores it exactly as if it had arrived over SMTP.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::request::{SendAddress, SendRequest};
use super::{ApiError, AppState};
use crate::smtp::DataBudget;
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
fn build(v: &SendRequest) -> Result<Built, ApiError> {
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
    let tags = v.tags.0.clone();
    let (subject, text, html) = (&v.subject, &v.text, &v.html);

    let mut atts = Vec::new();
    let mut inl = Vec::new();
    for a in &v.attachments.0 {
        let filename = a.filename.clone();
        // Data URLs ("data:image/png;base64,....") are accepted too.
        let content = a.content.rsplit(',').next().unwrap_or_default();
        let data = base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|e| {
                ApiError::BadJson(format!(
                    "error decoding base64 attachment \"{filename}\": {e}"
                ))
            })?;
        let ct = &a.content_type;
        let p = Part {
            content_type: if ct.is_empty() {
                sniff(&data).to_string()
            } else {
                ct.replace(['\r', '\n'], "")
            },
            data,
            filename,
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
    head.push_str(&format!("Subject: {}\r\n", encode_word(subject)));
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

    let mut body = if html.is_empty() {
        text_part("text/plain", text)
    } else {
        multipart(
            "alternative",
            vec![text_part("text/plain", text), text_part("text/html", html)],
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

/// The handler: checks the request's size and type before reading it,
/// reserves memory for it, then builds and stores the message.
pub async fn send(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    let limit = s.opts.max_message_size;
    let length = declared_length(&headers);
    if length.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    require_json(&headers)?;
    let _reservation = reserve(&s, length.unwrap_or(limit))?;
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large(limit))?;
    // Building decodes and re-encodes every attachment: off the runtime.
    let built = tokio::task::spawn_blocking(move || {
        let v: SendRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadJson(format!("invalid JSON body: {e}")))?;
        drop(body);
        build(&v)
    })
    .await
    .map_err(|e| ApiError::internal("building the message failed", e))??;
    let (raw, mail_from, rcpt_to, _tags) = built;
    if raw.len() > limit {
        return Err(too_large(limit));
    }
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

/// The body length the client announced, if any.
fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn too_large(limit: usize) -> ApiError {
    ApiError::Status(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body too large: the limit is {limit} bytes (MP_MAX_MESSAGE_SIZE)"),
    )
}

/// Only JSON is accepted: a cross-site HTML form can post `text/plain`,
/// `multipart/form-data` or a urlencoded body without a CORS preflight, so
/// taking those would let any web page a developer visits inject mail.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = ct.split(';').next().unwrap_or_default().trim();
    if mime.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::Status(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("the send API takes JSON: Content-Type must be application/json, not {ct:?}"),
    ))
}

/// Memory of a send request reserved from the SMTP data budget, given back
/// when the request is done.
struct Reservation {
    budget: Arc<DataBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Reserves what a send request of `body` bytes holds at its peak: the
/// body, the parsed request, the decoded attachments, their base64 lines,
/// the built message, and the store's parsed and compressed copies while
/// it is inserted. bench/hostile_http.sh measured about 170 MiB of peak RSS
/// per 20 MB attachment (27 MB body), so `6 x body`, capped at the whole
/// budget so a request within the size limit can always run once others
/// are done. A full budget is a 503 the client may retry, as SMTP answers
/// 452.
fn reserve(s: &AppState, body: usize) -> Result<Option<Reservation>, ApiError> {
    let Some(budget) = &s.opts.memory_budget else {
        return Ok(None);
    };
    let bytes = body.saturating_mul(6).min(budget.limit());
    if !budget.try_reserve(bytes) {
        return Err(ApiError::Status(
            StatusCode::SERVICE_UNAVAILABLE,
            "too much message content in memory right now; retry later".into(),
        ));
    }
    Ok(Some(Reservation {
        budget: budget.clone(),
        bytes,
    }))
}
