//! `GET /api/v1/swagger.json`: an OpenAPI 2.0 description of this server's
//! API, generated from the route table below so it cannot drift from what
//! the router serves.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// (method, path, summary, parameters as (name, in, type, description)).
type Op = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str, &'static str, &'static str)],
);

const ID: (&str, &str, &str, &str) = ("ID", "path", "string", "Message database ID or \"latest\"");
const TZ: (&str, &str, &str, &str) = (
    "tz",
    "query",
    "string",
    "Offset for before:/after: (UTC, +02:00)",
);
const BODY: (&str, &str, &str, &str) = ("Body", "body", "object", "JSON request body");

const OPS: &[Op] = &[
    (
        "get",
        "/api/v1/messages",
        "List messages, newest first",
        &[
            ("start", "query", "integer", "Pagination offset"),
            ("limit", "query", "integer", "Page size (default 50)"),
        ],
    ),
    (
        "put",
        "/api/v1/messages",
        "Set read status by IDs, search, or all",
        &[BODY, TZ],
    ),
    (
        "delete",
        "/api/v1/messages",
        "Delete messages by IDs, or all",
        &[BODY],
    ),
    (
        "get",
        "/api/v1/search",
        "Search messages (Mailpit syntax)",
        &[
            ("query", "query", "string", "Search query"),
            ("start", "query", "integer", "Pagination offset"),
            ("limit", "query", "integer", "Page size"),
            TZ,
        ],
    ),
    (
        "delete",
        "/api/v1/search",
        "Delete messages matching a search",
        &[("query", "query", "string", "Search query"), TZ],
    ),
    (
        "get",
        "/api/v1/message/{ID}",
        "Message summary, bodies and parts (marks it read)",
        &[ID],
    ),
    (
        "get",
        "/api/v1/message/{ID}/headers",
        "Message headers",
        &[ID],
    ),
    (
        "get",
        "/api/v1/message/{ID}/raw",
        "Raw message source",
        &[ID],
    ),
    (
        "get",
        "/api/v1/message/{ID}/part/{PartID}",
        "Attachment or inline part",
        &[ID, ("PartID", "path", "string", "MIME part ID")],
    ),
    (
        "get",
        "/api/v1/message/{ID}/part/{PartID}/thumb",
        "Image part (not resized)",
        &[ID, ("PartID", "path", "string", "MIME part ID")],
    ),
    (
        "post",
        "/api/v1/message/{ID}/release",
        "Relay a message (relaying is disabled: 400)",
        &[ID, BODY],
    ),
    ("get", "/api/v1/tags", "All tags", &[]),
    ("put", "/api/v1/tags", "Set the tags of messages", &[BODY]),
    (
        "put",
        "/api/v1/tags/{Tag}",
        "Rename a tag",
        &[("Tag", "path", "string", "Tag name"), BODY],
    ),
    (
        "delete",
        "/api/v1/tags/{Tag}",
        "Delete a tag",
        &[("Tag", "path", "string", "Tag name")],
    ),
    ("get", "/api/v1/info", "Application information", &[]),
    ("get", "/api/v1/webui", "Web UI configuration", &[]),
    (
        "post",
        "/api/v1/send",
        "Store a message built from JSON, as if received",
        &[BODY],
    ),
    ("get", "/api/v1/swagger.json", "This document", &[]),
    (
        "get",
        "/view/{ID}.html",
        "Message HTML part",
        &[
            ID,
            ("embed", "query", "string", "1 to prepare for an iframe"),
        ],
    ),
    ("get", "/view/{ID}.txt", "Message text part", &[ID]),
    ("get", "/api/events", "Websocket of live events", &[]),
    ("get", "/livez", "Liveness", &[]),
    ("get", "/readyz", "Readiness (database answers)", &[]),
];

fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, params) in OPS {
        let params: Vec<Value> = params
            .iter()
            .map(|(name, loc, ty, desc)| {
                if *loc == "body" {
                    json!({"name": name, "in": loc, "description": desc, "schema": {"type": ty}})
                } else {
                    json!({"name": name, "in": loc, "type": ty, "description": desc, "required": *loc == "path"})
                }
            })
            .collect();
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "OK"},
                "400": {"description": "Bad request (plain-text message)"},
                "404": {"description": "Not found"},
            },
        });
    }
    json!({
        "swagger": "2.0",
        "info": {
            "title": "mailsafe catcher API",
            "description": "Mailpit-compatible API v1 of the mailsafe mail catcher.",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "schemes": ["http", "https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": paths,
    })
}

/// Serves the document; under a webroot it gets a `basePath`, as Mailpit's.
pub async fn swagger(axum::extract::State(s): axum::extract::State<super::AppState>) -> Response {
    let mut doc = document();
    if s.opts.webroot != "/" {
        doc["basePath"] = json!(s.opts.webroot.trim_end_matches('/'));
    }
    Json(doc).into_response()
}
