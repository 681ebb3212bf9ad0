//! Handlers of the Mailpit-compatible endpoints.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::request::{Delete, RenameTag, SetRead, SetTags};
use super::{ApiError, AppState};
use crate::storage::PartBody;
use serde::de::DeserializeOwned;

type Params = Query<HashMap<String, String>>;

/// `start`/`limit` as Mailpit reads them (defaults 0 and 50); a value that is
/// not an integer is a 400.
fn start_limit(q: &HashMap<String, String>) -> Result<(u64, u64), ApiError> {
    let num = |name: &str| -> Result<Option<i64>, ApiError> {
        match q.get(name).map(|s| s.trim()) {
            None | Some("") => Ok(None),
            Some(s) => s
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::Bad(format!("invalid {name}: {s:?} is not an integer"))),
        }
    };
    let start = num("start")?.unwrap_or(0).max(0) as u64;
    let limit = match num("limit")? {
        Some(n) if n >= 0 => n as u64,
        _ => 50,
    };
    Ok((start, limit))
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Turns a form body into the JSON object a Mailpit handler expects:
/// repeated `ids` keys collect into `IDs`, `true`/`false` become booleans.
/// The PyPI `mailpit-api-client` sends its delete and read-status requests
/// this way. The body is at most the 1 MiB body limit, so the tree is small.
fn form_to_json(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    let mut obj = serde_json::Map::new();
    let mut ids = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (form_decode(k), form_decode(v));
        if k.eq_ignore_ascii_case("ids") || k.eq_ignore_ascii_case("ids[]") {
            ids.push(Value::String(v));
        } else if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
            obj.insert(k, Value::Bool(v.eq_ignore_ascii_case("true")));
        } else {
            obj.insert(k, Value::String(v));
        }
    }
    if !ids.is_empty() {
        obj.insert("IDs".into(), Value::Array(ids));
    }
    Value::Object(obj)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// Parses a request body into its typed request: JSON (an empty body counts
/// as `{}`), or a form when the client says so.
fn body_of<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    if is_form(headers) {
        return serde_json::from_value(form_to_json(body))
            .map_err(|e| ApiError::Bad(format!("invalid form body: {e}")));
    }
    json_body(body)
}

/// Parses a JSON body into its typed request; an empty body counts as `{}`.
fn json_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::Bad(format!("invalid JSON body: {e}")))
}

fn ok_text() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response()
}

/// `GET /api/v1/messages`
pub async fn list(State(s): State<AppState>, Query(q): Params) -> Result<Response, ApiError> {
    let (start, limit) = start_limit(&q)?;
    Ok(Json(s.store.list(start, limit).await?).into_response())
}

/// `PUT /api/v1/messages`: set read status by IDs, by search, or for all.
pub async fn set_read(
    State(s): State<AppState>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: SetRead = body_of(&headers, &body)?;
    let (ids, read, search) = (req.ids.0, req.read, req.search.trim().to_string());
    if !ids.is_empty() && !search.is_empty() {
        return Err(ApiError::Bad(
            "You may specify either IDs or a search query, not both".into(),
        ));
    }
    if !ids.is_empty() {
        s.store.set_read(ids, read).await?;
    } else if !search.is_empty() {
        let tz = q.get("tz").cloned().unwrap_or_default();
        s.store.set_read_search(&search, &tz, read).await?;
    } else {
        s.store.set_read(Vec::new(), read).await?;
    }
    Ok(ok_text())
}

/// `DELETE /api/v1/messages`: by IDs, or everything when none are given.
pub async fn delete_messages(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ids = body_of::<Delete>(&headers, &body)?.ids.0;
    if ids.is_empty() {
        s.store.delete_all().await?;
    } else {
        s.store.delete(ids).await?;
    }
    Ok(ok_text())
}

fn query_of(q: &HashMap<String, String>) -> Result<String, ApiError> {
    let query = q.get("query").map(|s| s.trim()).unwrap_or_default();
    if query.is_empty() {
        return Err(ApiError::Bad("no search query".into()));
    }
    if query.len() > 4096 {
        return Err(ApiError::Bad(
            "search query too long (over 4096 bytes)".into(),
        ));
    }
    Ok(query.to_string())
}

/// The message `id` names: itself, or for `latest` the newest message, or
/// with a non-empty `query` parameter the newest message matching it (as
/// Mailpit's `LatestID`: parallel test runs each read their own mail).
/// 404 when nothing matches.
async fn message_id(
    s: &AppState,
    id: String,
    q: &HashMap<String, String>,
) -> Result<String, ApiError> {
    if id != "latest" || q.get("query").is_none_or(|v| v.trim().is_empty()) {
        return Ok(id);
    }
    let query = query_of(q)?;
    let tz = q.get("tz").cloned().unwrap_or_default();
    let page = s.store.search(&query, &tz, 0, 1).await?;
    page.messages
        .into_iter()
        .next()
        .map(|m| m.head.id)
        .ok_or(ApiError::NotFound)
}

/// `GET /api/v1/search`
pub async fn search(State(s): State<AppState>, Query(q): Params) -> Result<Response, ApiError> {
    let query = query_of(&q)?;
    let (start, limit) = start_limit(&q)?;
    let tz = q.get("tz").cloned().unwrap_or_default();
    Ok(Json(s.store.search(&query, &tz, start, limit).await?).into_response())
}

/// `DELETE /api/v1/search`
pub async fn delete_search(
    State(s): State<AppState>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let query = query_of(&q)?;
    let tz = q.get("tz").cloned().unwrap_or_default();
    s.store.delete_search(&query, &tz).await?;
    Ok(ok_text())
}

/// `GET /api/v1/message/{ID}` (marks the message read).
pub async fn message(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let id = message_id(&s, id, &q).await?;
    Ok(Json(s.store.message(&id).await?).into_response())
}

/// `GET /api/v1/message/{ID}/headers`
pub async fn headers(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let id = message_id(&s, id, &q).await?;
    Ok(Json(s.store.headers(&id).await?).into_response())
}

/// `GET /api/v1/message/{ID}/raw`; `?dl=1` makes it a download named
/// `{ID}.eml`, as in Mailpit.
pub async fn raw(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let (id, raw) = s.store.raw_reader(&message_id(&s, id, &q).await?).await?;
    let mut res = (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        streamed(raw),
    )
        .into_response();
    if q.get("dl").is_some_and(|v| v == "1") {
        set_filename(res.headers_mut(), "attachment", &format!("{id}.eml"));
    }
    Ok(res)
}

/// Largest image part a thumbnail is drawn from (bytes): it is read whole.
const THUMB_MAX_INPUT: u64 = 16 * 1024 * 1024;

/// Bytes read from a stored message per chunk of a streamed response.
const STREAM_CHUNK: usize = 64 * 1024;

/// A response body read from `reader` one chunk at a time on the blocking
/// pool, only when the client has taken the previous one: a large message
/// costs one chunk of memory, and a slow client holds no thread.
fn streamed(reader: impl std::io::Read + Send + 'static) -> axum::body::Body {
    let chunks = futures::stream::try_unfold(reader, |mut reader| async move {
        let (reader, chunk) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; STREAM_CHUNK];
            let mut n = 0;
            while n < buf.len() {
                match reader.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(n);
            Ok((reader, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        if chunk.is_empty() {
            return Ok::<_, std::io::Error>(None);
        }
        Ok(Some((Bytes::from(chunk), reader)))
    });
    axum::body::Body::from_stream(chunks)
}

/// Part IDs are dotted numbers (`2`, `1.2.3`); anything else cannot name a
/// part, so it is a 404 before the message is even read.
fn valid_part_id(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.split('.')
            .all(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A `filename` for Content-Disposition that cannot break out of the header.
fn safe_filename(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\' && *c != '/')
        .collect()
}

async fn part_response(s: &AppState, id: &str, part: &str) -> Result<Response, ApiError> {
    if !valid_part_id(part) {
        return Err(ApiError::NotFound);
    }
    let p = s.store.part(id, part).await?;
    let name = p.file_name.clone();
    let mut res = match p.data {
        PartBody::Memory(bytes) => bytes.into_response(),
        PartBody::Spooled { file, len } => {
            let mut res = streamed(file).into_response();
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            res
        }
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&p.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    set_filename(h, "inline", &name);
    Ok(res)
}

/// Names the file in `Content-Disposition` (`inline` or `attachment`) as
/// Mailpit does, with the name made safe (no quotes, slashes or control
/// characters; ASCII only) so a hostile attachment name cannot inject
/// headers or steer where a browser saves it.
fn set_filename(h: &mut axum::http::HeaderMap, disposition: &str, file_name: &str) {
    let name = safe_filename(file_name);
    if name.is_empty() {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("inline"),
        );
        return;
    }
    let v = format!(
        "{disposition}; filename=\"{}\"",
        name.chars()
            .map(|c| if c.is_ascii() { c } else { '_' })
            .collect::<String>()
    );
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
}

/// `GET /api/v1/message/{ID}/part/{PartID}`
pub async fn part(
    State(s): State<AppState>,
    Path((id, part)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let id = message_id(&s, id, &q).await?;
    part_response(&s, &id, &part).await
}

/// `GET /api/v1/message/{ID}/part/{PartID}/thumb`: a 180x120 JPEG of an
/// image part (blank for anything else), drawn off the async runtime.
pub async fn part_thumb(
    State(s): State<AppState>,
    Path((id, part)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    if !valid_part_id(&part) {
        return Err(ApiError::NotFound);
    }
    let id = message_id(&s, id, &q).await?;
    let p = s.store.part(&id, &part).await?;
    let name = p.file_name.clone();
    let content_type = p.content_type;
    let data = p.data;
    let jpeg = tokio::task::spawn_blocking(move || {
        // An image too large to read whole gets a blank thumbnail.
        let data = data
            .into_vec(THUMB_MAX_INPUT)
            .ok()
            .flatten()
            .unwrap_or_default();
        super::thumb::thumbnail(&data, &content_type)
    })
    .await
    .map_err(|e| ApiError::internal("making the thumbnail failed", e))?;
    let mut res = jpeg.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    set_filename(h, "inline", &name);
    Ok(res)
}

/// `POST /api/v1/message/{ID}/release` with `{"To": [...]}`: sends the
/// message through the relay server (see `relay::release`); `ok`, or 400
/// with why (a refused address, the relay server's error).
pub async fn release(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize, Default)]
    struct Release {
        #[serde(rename = "To", default)]
        to: Vec<String>,
    }
    let raw = s.store.raw(&id).await?;
    let Some(relay) = s.opts.relay.clone() else {
        return Err(ApiError::Bad("SMTP relay is disabled".into()));
    };
    let req: Release = json_body(&body)?;
    if req.to.len() > 1000 {
        return Err(ApiError::Bad("too many addresses".into()));
    }
    match crate::relay::release(&relay, &raw, &req.to).await {
        Ok(()) => {
            tracing::info!(id = %id, to = %req.to.join(", "), "message released");
            Ok(([(header::CONTENT_TYPE, "text/plain")], "ok").into_response())
        }
        Err(e) => {
            tracing::error!(id = %id, error = %e, "release failed");
            Err(ApiError::Bad(e.to_string()))
        }
    }
}

/// `GET /api/v1/message/{ID}/link-check[?follow=true]`: Mailpit's
/// `LinkCheckResponse` for the message's links (see `checks::link`).
pub async fn link_check(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let id = message_id(&s, id, &q).await?;
    let m = s.store.message(&id).await?;
    let follow = matches!(q.get("follow").map(String::as_str), Some("true" | "1"));
    let report = s.opts.link_check.check(&m.html, &m.text, follow).await;
    Ok(Json(report).into_response())
}

/// `GET /api/v1/message/{ID}/sa-check`: Mailpit's `SpamAssassinResponse`
/// from spamd (`MP_ENABLE_SPAMASSASSIN`; without it the route does not
/// exist, as in Mailpit).
pub async fn sa_check(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let Some(spamd) = &s.opts.spamassassin else {
        return Err(ApiError::NotFound);
    };
    let id = message_id(&s, id, &q).await?;
    let raw = s.store.raw(&id).await?;
    Ok(Json(spamd.check(&raw).await).into_response())
}

/// `GET /api/v1/message/{ID}/html-check`: Mailpit's `HTMLCheckResponse`
/// for the message's HTML (see `checks::html`); 400 "message does not
/// contain HTML" without an HTML part, as in Mailpit.
pub async fn html_check(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    use crate::checks::html;
    let id = message_id(&s, id, &q).await?;
    let m = s.store.message(&id).await?;
    // Parsing a large HTML part is CPU work: off the async workers.
    let report = tokio::task::spawn_blocking(move || html::check(&m.html))
        .await
        .map_err(|e| ApiError::internal("the HTML check failed", e))?;
    match report {
        Ok(r) => Ok(Json(r).into_response()),
        Err(e @ html::Error::NoHtml) => Err(ApiError::Bad(e.to_string())),
        Err(e) => Err(ApiError::internal("the HTML check failed", e)),
    }
}

/// `GET /api/v1/chaos`: the chaos triggers (400 when chaos is not
/// enabled, as in Mailpit).
pub async fn chaos(State(s): State<AppState>) -> Result<Response, ApiError> {
    let t = crate::smtp::chaos::current(&s.opts.chaos)
        .ok_or_else(|| ApiError::Bad("Chaos is not enabled".into()))?;
    Ok(Json(t).into_response())
}

/// `PUT /api/v1/chaos`: replaces every trigger (one left out is off; an
/// `ErrorCode` of 0 takes its default), answering the triggers now.
pub async fn set_chaos(State(s): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let Some(live) = &s.opts.chaos else {
        return Err(ApiError::Bad("Chaos is not enabled".into()));
    };
    let asked: crate::smtp::chaos::Triggers =
        serde_json::from_slice(&body).map_err(|e| ApiError::Bad(e.to_string()))?;
    let t = asked.checked().map_err(|e| ApiError::Bad(e.to_string()))?;
    *live.write().unwrap_or_else(|e| e.into_inner()) = t;
    tracing::info!(?t, "chaos triggers set through the API");
    Ok(Json(t).into_response())
}

/// `GET /api/v1/tags`
pub async fn tags(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(s.store.tags().await?).into_response())
}

/// `PUT /api/v1/tags`: replace the tags of the given messages.
pub async fn set_tags(State(s): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: SetTags = json_body(&body)?;
    let (ids, tags) = (req.ids.0, req.tags.0);
    if ids.is_empty() {
        return Err(ApiError::Bad("no IDs provided".into()));
    }
    s.store.set_tags(ids, tags).await?;
    Ok(ok_text())
}

/// `PUT /api/v1/tags/{Tag}`: rename.
pub async fn rename_tag(
    State(s): State<AppState>,
    Path(tag): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = json_body::<RenameTag>(&body)?.name;
    if name.trim().is_empty() {
        return Err(ApiError::Bad("no new tag name provided".into()));
    }
    match s.store.rename_tag(&tag, &name).await {
        Err(crate::storage::StorageError::NotFound(_)) => {
            Err(ApiError::Bad(format!("tag not found: {tag}")))
        }
        r => {
            r?;
            Ok(ok_text())
        }
    }
}

/// `DELETE /api/v1/tags/{Tag}`
pub async fn delete_tag(
    State(s): State<AppState>,
    Path(tag): Path<String>,
) -> Result<Response, ApiError> {
    match s.store.delete_tag(&tag).await {
        Err(crate::storage::StorageError::NotFound(_)) => {
            Err(ApiError::Bad(format!("tag not found: {tag}")))
        }
        r => {
            r?;
            Ok(ok_text())
        }
    }
}

/// Resident memory of this process in bytes (Linux), 0 if unknown.
pub(super) fn memory() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// `GET /api/v1/info`
pub async fn info(State(s): State<AppState>) -> Result<Response, ApiError> {
    let (total, unread) = s.store.counts().await?;
    let tags = s.store.tag_counts().await?;
    let st = s.store.runtime_stats();
    Ok(Json(serde_json::json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "LatestVersion": "",
        "Database": s.store.path().display().to_string(),
        "DatabaseSize": s.store.db_size(),
        "Messages": total,
        "Unread": unread,
        "Tags": tags,
        "RuntimeStats": {
            "Uptime": s.store.uptime().as_secs(),
            "Memory": memory(),
            "MessagesDeleted": st.deleted,
            "SMTPAccepted": st.accepted,
            "SMTPAcceptedSize": st.accepted_size,
            "SMTPRejected": st.rejected,
            "SMTPIgnored": st.ignored,
        },
    }))
    .into_response())
}

/// `GET /api/v1/webui`
pub async fn webui(State(s): State<AppState>) -> Response {
    Json(serde_json::json!({
        "Label": s.opts.label,
        "MessageRelay": match &s.opts.relay {
            None => serde_json::json!({
                "Enabled": false,
                "SMTPServer": "",
                "ReturnPath": "",
                "AllowedRecipients": "",
                "BlockedRecipients": "",
                "OverrideFrom": "",
                "PreserveMessageIDs": false,
            }),
            Some(r) => serde_json::json!({
                "Enabled": true,
                "SMTPServer": format!("{}:{}", r.target.host, r.target.port),
                "ReturnPath": r.return_path.clone().unwrap_or_default(),
                "AllowedRecipients": r.allowed.as_ref().map(|re| re.as_str()).unwrap_or(""),
                "BlockedRecipients": r.blocked.as_ref().map(|re| re.as_str()).unwrap_or(""),
                "OverrideFrom": r.override_from.clone().unwrap_or_default(),
                "PreserveMessageIDs": r.preserve_message_ids,
            }),
        },
        "SpamAssassin": s.opts.spamassassin.is_some(),
        "ChaosEnabled": s.opts.chaos.is_some(),
        "DuplicatesIgnored": s.store.options().ignore_duplicate_ids,
        "HideDeleteAllButton": s.opts.hide_delete_all_button,
    }))
    .into_response()
}

/// Escapes text for an HTML attribute value.
fn attr_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

/// Inline parts whose `cid:` references are rewritten; a message with more
/// keeps the rest as they are (its HTML still renders, minus those images).
pub(crate) const MAX_LINKED_INLINE: usize = 1000;

/// Points `cid:ID` references in `html` at the API's part URLs, as Mailpit
/// does, in one pass over the HTML: one replace per part was O(parts x
/// HTML size), and a part whose ID is a prefix of another's (`a`, `a@b`)
/// corrupted the longer reference. A reference runs from `cid:` to the next
/// quote, bracket, parenthesis or whitespace.
fn link_inline_parts(html: &str, id: &str, inline: &[crate::storage::Attachment]) -> String {
    let targets: HashMap<&str, &str> = inline
        .iter()
        .filter(|p| !p.content_id.is_empty())
        .take(MAX_LINKED_INLINE)
        .map(|p| (p.content_id.as_str(), p.part_id.as_str()))
        .collect();
    if targets.is_empty() {
        return html.to_owned();
    }
    let id = attr_escape(id);
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(at) = rest.find("cid:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        let end = after
            .find(|c: char| c.is_whitespace() || "\"'<>()".contains(c))
            .unwrap_or(after.len());
        match targets.get(&after[..end]) {
            Some(part) => out.push_str(&format!("/api/v1/message/{id}/part/{part}")),
            None => out.push_str(&rest[at..at + 4 + end]),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `GET /view/{ID}.html` and `GET /view/{ID}.txt` (`latest` with an
/// optional `query`, as for the API), and the web UI's deep links:
/// `/view/latest[?query=…]` redirects to the newest (matching) message's
/// `/view/{ID}` (to `/` when there is none), which redirects to the UI with
/// that message open (404 for an unknown ID).
pub async fn view(
    State(s): State<AppState>,
    Path(file): Path<String>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    if file == "latest" {
        let to = match message_id(&s, file, &q).await {
            Ok(id) if id != "latest" => format!("/view/{id}"),
            Ok(_) => match s.store.resolve_id("latest").await {
                Ok(id) => format!("/view/{id}"),
                Err(_) => "/".into(),
            },
            Err(ApiError::NotFound) => "/".into(),
            Err(e) => return Err(e),
        };
        return Ok(found(&to));
    }
    if !file.contains('.') {
        // A message ID (no extension): the UI opens it. Only ID characters
        // go into the redirect.
        if file.is_empty()
            || file.len() > 64
            || !file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ApiError::NotFound);
        }
        // An unknown ID is a 404 here, not a UI showing nothing.
        let id = s.store.resolve_id(&file).await?;
        return Ok(found(&format!("/?m={id}")));
    }
    if let Some(id) = file.strip_suffix(".html") {
        let id = message_id(&s, id.to_string(), &q).await?;
        let m = s.store.message(&id).await?;
        if m.html.is_empty() {
            return Err(ApiError::NotFound);
        }
        let embed = q.get("embed").is_some_and(|v| v == "1");
        // A hostile message can carry megabytes of HTML and thousands of
        // inline parts: rewrite it on the blocking pool, not on a worker.
        let html = tokio::task::spawn_blocking(move || {
            let mut html = link_inline_parts(&m.html, &m.head.id, &m.inline);
            if embed {
                html = html.replace("<a ", "<a target=\"_blank\" rel=\"noreferrer noopener\" ");
                if !html.to_ascii_lowercase().contains("<html") {
                    html = format!(
                        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>{html}</body></html>"
                    );
                }
            }
            html
        })
        .await
        .map_err(|e| ApiError::internal("rendering the message failed", e))?;
        Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
    } else if let Some(id) = file.strip_suffix(".txt") {
        let id = message_id(&s, id.to_string(), &q).await?;
        let m = s.store.message(&id).await?;
        Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            m.text,
        )
            .into_response())
    } else {
        Err(ApiError::NotFound)
    }
}

/// A `302 Found` to `to` (a path on this server).
fn found(to: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

/// `GET /livez`: the process is up.
pub async fn live() -> Response {
    (StatusCode::OK, "ok").into_response()
}

/// `GET /readyz`: the database answers. The reason for a failure (paths,
/// SQLite's message) goes to the log, not to whoever can reach the probe.
pub async fn ready(State(s): State<AppState>) -> Response {
    match s.store.counts().await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "database not ready\n").into_response()
        }
    }
}
