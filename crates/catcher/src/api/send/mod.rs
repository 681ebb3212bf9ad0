//! `POST /api/v1/send`: builds a MIME message from Mailpit's JSON send
//! request and stores it exactly as if it had arrived over SMTP.
//!
//! A request is never held whole: its body goes to a spool as it arrives
//! while `json` copies the JSON minus the large `Text`, `HTML` and attachment
//! `Content` strings; `build` writes the message into a second spool,
//! decoding those strings from the first a chunk at a time; the store
//! compresses it into a third and writes the row from there
//! (`Store::insert_spooled`). What stays in memory is the rest of the JSON
//! (at most 4 MiB), the summary copy the store parses (text bodies cut at
//! 1 MiB) and the spools' first MiB each. A 45 MB send raised peak RSS by
//! about 270 MiB before this and by ~20 MiB after (`tests/http_memory.rs`,
//! bench/RESULTS.md "Hostile HTTP").
//!
//! Each request reserves what it holds from the memory budget SMTP uses
//! ([`send_reservation`]). When the budget is full a request waits for it up
//! to `ApiOptions::send_budget_wait` (10 s), then gets 503 with
//! `Retry-After`: Mailpit's clients do not retry, so a short queue lets a
//! burst of large sends through one after another instead of failing them.

mod build;
mod json;

use std::io::Write;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tempfile::SpooledTempFile;

use super::request::SendRequest;
use super::{ApiError, AppState};
use crate::smtp::budget::Reservation;
use crate::storage::SpooledMessage;

/// Body bytes gathered before they are written to the spool (off the
/// runtime, in the blocking pool).
const SPOOL_WRITE: usize = 256 * 1024;

/// The handler: checks the request's size and type before reading it,
/// reserves memory for it, then spools, builds and stores the message.
pub async fn send(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    let limit = s.opts.max_message_size;
    let length = declared_length(&headers);
    if length.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    require_json(&headers)?;
    let _reservation = reserve(&s, length.unwrap_or(limit)).await?;
    let (spool, scanner) = receive(req.into_body(), limit).await?;
    // Decoding, base64 and writing the message: off the runtime.
    let built = tokio::task::spawn_blocking(move || {
        let (fields, spans) = scanner.finish();
        let v: SendRequest = serde_json::from_slice(&fields)
            .map_err(|e| ApiError::BadJson(format!("invalid JSON body: {e}")))?;
        drop(fields);
        let mut spool = spool;
        build::build(
            &v,
            &spans,
            &mut spool,
            crate::storage::spool(),
            limit as u64,
        )
    })
    .await
    .map_err(|e| ApiError::internal("building the message failed", e))??;
    let id = s
        .store
        .insert_spooled(SpooledMessage {
            summary: built.summary,
            raw: built.raw,
            raw_len: built.raw_len,
            mail_from: built.mail_from,
            rcpt_to: built.rcpt_to,
            username: super::auth::basic_user(&headers),
        })
        .await?;
    Ok(Json(serde_json::json!({ "ID": id })).into_response())
}

/// Reads the body into a spool (at most `limit` bytes) and through the
/// JSON scanner.
async fn receive(body: Body, limit: usize) -> Result<(SpooledTempFile, json::Scanner), ApiError> {
    let mut stream = body.into_data_stream();
    let mut scanner = json::Scanner::new();
    let mut spool = crate::storage::spool();
    let mut pending = Vec::with_capacity(SPOOL_WRITE);
    let mut total = 0;
    loop {
        let chunk = stream.next().await;
        if let Some(chunk) = &chunk {
            let chunk = chunk
                .as_ref()
                .map_err(|_| ApiError::Bad("reading the request body failed".into()))?;
            total += chunk.len();
            if total > limit {
                return Err(too_large(limit));
            }
            scanner.feed(chunk).map_err(|_| {
                ApiError::Status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the fields besides Text, HTML and attachment contents take more than {} bytes",
                        json::MAX_FIELDS
                    ),
                )
            })?;
            pending.extend_from_slice(chunk);
        }
        if pending.len() >= SPOOL_WRITE || (chunk.is_none() && !pending.is_empty()) {
            let buf = std::mem::take(&mut pending);
            spool = tokio::task::spawn_blocking(move || spool.write_all(&buf).map(|_| spool))
                .await
                .map_err(|e| ApiError::internal("spooling the request failed", e))?
                .map_err(|e| ApiError::internal("spooling the request failed", e))?;
        }
        if chunk.is_none() {
            return Ok((spool, scanner));
        }
    }
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

/// What a send request of `body` bytes holds at its peak, reserved from the
/// memory budget: six times what it keeps in memory (the old factor for a
/// request held whole: body, decoded request, built message, parsed and
/// compressed copies), that is the JSON fields and the summary copy's text,
/// plus the spools' and zstd's buffers. 40 MiB at most, whatever the body.
pub(crate) fn send_reservation(body: usize) -> usize {
    const BUFFERS: usize = 4 * 1024 * 1024;
    6 * body.min(json::MAX_FIELDS + 2 * build::SUMMARY_TEXT) + BUFFERS
}

/// Reserves [`send_reservation`] from the budget (capped at the whole
/// budget, so any request within the size limit can run once others are
/// done), waiting up to `send_budget_wait` for it; then 503 with
/// `Retry-After`, as SMTP answers 452.
async fn reserve(s: &AppState, body: usize) -> Result<Option<Reservation>, ApiError> {
    let Some(budget) = &s.opts.memory_budget else {
        return Ok(None);
    };
    let bytes = send_reservation(body).min(budget.limit());
    match budget.reserve_within(bytes, s.opts.send_budget_wait).await {
        Some(r) => Ok(Some(r)),
        None => {
            tracing::warn!(bytes, "no memory budget for a send request; answering 503");
            Err(ApiError::Busy(
                "too much message content in memory right now; retry later".into(),
            ))
        }
    }
}
