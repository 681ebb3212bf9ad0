//! The types that cross the storage boundary: options in, messages in, the
//! Mailpit views out (`Head`, summary, detail, page, part), live events, the
//! runtime counters, and the clock and ID helpers every module shares.
//!
//! Nothing here touches SQLite; every other storage module may use it.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::parse::{Address, Attachment};

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Tenant (`MP_TENANT_ID`); its sanitised form prefixes every table.
    pub tenant: String,
    /// Keep at most this many messages, pruning the oldest (`MP_MAX_MESSAGES`;
    /// 0 = unlimited).
    pub max_messages: u64,
    /// Delete messages older than this (`MP_MAX_AGE`).
    pub max_age: Option<Duration>,
    /// Number of read connections kept open.
    pub read_connections: usize,
    /// zstd level for raw messages; 0 stores them uncompressed (see
    /// `storage::compress`).
    pub compression_level: i32,
    /// SQLite's rollback journal (`DELETE`) instead of WAL
    /// (`MP_DISABLE_WAL`): for file systems without the shared memory WAL
    /// needs; readers then wait while the writer commits (the 10 s busy
    /// timeout covers it).
    pub disable_wal: bool,
    /// Which automatic tags new messages get.
    pub tagging: super::tagging::Tagging,
    /// Drop a new message whose Message-ID is already stored
    /// (`MP_IGNORE_DUPLICATE_IDS`; counted as `SMTPIgnored`).
    pub ignore_duplicate_ids: bool,
    /// A new message's received time is its Date header, when it has one
    /// (`MP_USE_MESSAGE_DATES`).
    pub use_message_dates: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            tenant: String::new(),
            max_messages: 500,
            max_age: None,
            read_connections: 4,
            compression_level: 3,
            disable_wal: false,
            tagging: super::tagging::Tagging::default(),
            ignore_duplicate_ids: false,
            use_message_dates: false,
        }
    }
}

/// A message as received, before it is stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The raw RFC 5322 bytes (after SMTP dot-unstuffing).
    pub raw: Vec<u8>,
    /// SMTP envelope sender.
    pub mail_from: String,
    /// SMTP envelope recipients.
    pub rcpt_to: Vec<String>,
    /// SMTP AUTH user name, if the client authenticated.
    pub username: Option<String>,
}

/// Bytes a [`spool`] keeps in memory before it moves to a temporary file.
pub const SPOOL_MEMORY: usize = 1024 * 1024;

/// A buffer for message bytes that must not all be held in memory (the send
/// API's body, the message it builds, its compressed copy): the first
/// [`SPOOL_MEMORY`] bytes stay in memory, the rest go to an unnamed file in
/// the system's temporary directory (`TMPDIR`), removed when it is dropped.
pub fn spool() -> tempfile::SpooledTempFile {
    tempfile::spooled_tempfile(SPOOL_MEMORY)
}

/// A message whose raw bytes are already in a [`spool`] (the send API),
/// stored without ever holding them whole: the store parses `summary` for the
/// summary row and search text, and streams `raw` through zstd into the row.
#[derive(Debug)]
pub struct SpooledMessage {
    /// The same message as `raw` with large bodies cut short: headers and
    /// MIME structure alike, attachment bodies empty, text bodies cut to
    /// their first MiB. What the summary, the tags and search are made from.
    pub summary: Vec<u8>,
    /// The raw RFC 5322 bytes, from position 0.
    pub raw: tempfile::SpooledTempFile,
    /// Length of `raw` in bytes.
    pub raw_len: u64,
    /// Envelope sender.
    pub mail_from: String,
    /// Envelope recipients.
    pub rcpt_to: Vec<String>,
    /// The authenticated user, if any.
    pub username: Option<String>,
}

/// A live notification for the websocket (`/api/events`), serialised
/// exactly like Mailpit's messages: `{"Type": "new", "Data": {...}}` (see
/// [`Event::kind`] for each variant's `Type`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `new`: a message was stored; `Data` is its summary (boxed: it is
    /// ten times the size of the other variants).
    New(Box<MessageSummary>),
    /// `stats`: the totals changed; `Data` is `{"Total", "Unread", "Version"}`.
    Stats {
        /// Messages in the mailbox.
        total: u64,
        /// Unread messages in the mailbox.
        unread: u64,
    },
    /// `update`: a message's read flag changed; `Data` is `{"ID", "Read"}`.
    Read {
        /// The message.
        id: String,
        /// Its read flag now.
        read: bool,
    },
    /// `update`: a message's tags changed; `Data` is `{"ID", "Tags"}`.
    Tags {
        /// The message.
        id: String,
        /// Its tags now.
        tags: Vec<String>,
    },
    /// `delete`: a message was deleted; `Data` is `{"ID"}`.
    Delete {
        /// The message.
        id: String,
    },
    /// `prune`: messages were pruned, or a tag renamed or deleted; `Data`
    /// is `null` (the UI reloads).
    Prune,
    /// `truncate`: every message was deleted; `Data` is `null`.
    Truncate,
}

impl Event {
    /// Mailpit's `Type` of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::New(_) => "new",
            Event::Stats { .. } => "stats",
            Event::Read { .. } | Event::Tags { .. } => "update",
            Event::Delete { .. } => "delete",
            Event::Prune => "prune",
            Event::Truncate => "truncate",
        }
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // The `Data` payloads, field names as Mailpit sends them.
        #[derive(Serialize)]
        struct Stats {
            #[serde(rename = "Total")]
            total: u64,
            #[serde(rename = "Unread")]
            unread: u64,
            #[serde(rename = "Version")]
            version: &'static str,
        }
        #[derive(Serialize)]
        struct Read<'a> {
            #[serde(rename = "ID")]
            id: &'a str,
            #[serde(rename = "Read")]
            read: bool,
        }
        #[derive(Serialize)]
        struct Tags<'a> {
            #[serde(rename = "ID")]
            id: &'a str,
            #[serde(rename = "Tags")]
            tags: &'a [String],
        }
        #[derive(Serialize)]
        struct Id<'a> {
            #[serde(rename = "ID")]
            id: &'a str,
        }
        let mut m = s.serialize_struct("Event", 2)?;
        m.serialize_field("Type", self.kind())?;
        match self {
            Event::New(summary) => m.serialize_field("Data", summary)?,
            Event::Stats { total, unread } => m.serialize_field(
                "Data",
                &Stats {
                    total: *total,
                    unread: *unread,
                    version: env!("CARGO_PKG_VERSION"),
                },
            )?,
            Event::Read { id, read } => m.serialize_field("Data", &Read { id, read: *read })?,
            Event::Tags { id, tags } => m.serialize_field("Data", &Tags { id, tags })?,
            Event::Delete { id } => m.serialize_field("Data", &Id { id })?,
            Event::Prune | Event::Truncate => m.serialize_field("Data", &())?,
        }
        m.end()
    }
}

/// Largest input [`compress`] runs through its thread's reused context:
/// what the async runtime's threads compress (bigger messages go to the
/// blocking pool, whose threads come and go, and get a context of their own).
const REUSED_CONTEXT_MAX: usize = 256 * 1024;

/// zstd-compresses `bytes` at `level` (the raw message, the search text).
///
/// Why not `zstd::bulk::compress`: it creates and frees a compression
/// context per call, and setting one up (allocating and clearing its tables)
/// cost more than compressing a 4 KiB message: `ZSTD_createCCtx` and its
/// `memset` were ~5% of the server's CPU per message in the ingest benchmark
/// (`perf record`, release build, bench/RESULTS.md smtp-ingest). Each thread
/// keeps one context for inputs up to [`REUSED_CONTEXT_MAX`]; zstd sizes its
/// tables for the input, and frees a context that stayed oversized for long.
pub(crate) fn compress(bytes: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    use std::cell::RefCell;
    thread_local! {
        static CONTEXT: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    if bytes.len() > REUSED_CONTEXT_MAX {
        return zstd::bulk::compress(bytes, level);
    }
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_mut() {
            Some((l, z)) if *l == level => z.compress(bytes),
            Some((l, z)) => {
                z.set_compression_level(level)?;
                *l = level;
                z.compress(bytes)
            }
            None => {
                let mut z = zstd::bulk::Compressor::new(level)?;
                let out = z.compress(bytes);
                *c = Some((level, z));
                out
            }
        }
    })
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Generates a Mailpit-style ID: 22 random base62 characters.
pub(crate) fn new_id() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(22)
        .map(char::from)
        .collect()
}

/// A random 24-character token for MIME boundaries and Message-IDs.
pub fn new_boundary() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Counters since the store was opened (for `/api/v1/info`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RuntimeStats {
    /// Messages stored.
    pub accepted: u64,
    /// Bytes of messages stored.
    pub accepted_size: u64,
    /// Messages and recipients the SMTP server refused (reported via
    /// [`Store::note_rejected`](super::Store::note_rejected)).
    pub rejected: u64,
    /// Messages deleted or pruned.
    pub deleted: u64,
    /// Messages dropped as duplicates (`MP_IGNORE_DUPLICATE_IDS`).
    pub ignored: u64,
}

/// The live form of [`RuntimeStats`], shared by the store and its writer.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) accepted_size: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) deleted: AtomicU64,
    pub(crate) ignored: AtomicU64,
}

/// The fields Mailpit's `MessageSummary` and `Message` share, mapped from a
/// mailbox row in one place ([`summary_row`]) and flattened into both.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Head {
    /// Database ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Message-ID header (without angle brackets).
    #[serde(rename = "MessageID")]
    pub message_id: String,
    /// Read status (a fetched [`MessageDetail`] is always read).
    #[serde(rename = "Read")]
    pub read: bool,
    /// From address.
    #[serde(rename = "From")]
    pub from: Address,
    /// To addresses.
    #[serde(rename = "To")]
    pub to: Vec<Address>,
    /// Cc addresses.
    #[serde(rename = "Cc")]
    pub cc: Vec<Address>,
    /// Bcc addresses.
    #[serde(rename = "Bcc")]
    pub bcc: Vec<Address>,
    /// Reply-To addresses.
    #[serde(rename = "ReplyTo")]
    pub reply_to: Vec<Address>,
    /// Subject.
    #[serde(rename = "Subject")]
    pub subject: String,
    /// SMTP AUTH user, if any.
    #[serde(rename = "Username")]
    pub username: String,
    /// Tags.
    #[serde(rename = "Tags")]
    pub tags: Vec<String>,
    /// Raw size in bytes.
    #[serde(rename = "Size")]
    pub size: u64,
}

/// Mailpit's `MessageSummary`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageSummary {
    /// The fields shared with [`MessageDetail`].
    #[serde(flatten)]
    pub head: Head,
    /// Received time, RFC 3339 with milliseconds.
    #[serde(rename = "Created")]
    pub created: String,
    /// Number of attachments.
    #[serde(rename = "Attachments")]
    pub attachments: i64,
    /// Up to 250 characters of the body.
    #[serde(rename = "Snippet")]
    pub snippet: String,
}

/// Mailpit's `MessagesSummary`: one page of a list or search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessagesPage {
    /// Messages in the mailbox.
    pub total: u64,
    /// Unread messages in the mailbox.
    pub unread: u64,
    /// Messages on this page (legacy field, still read by clients).
    pub count: u64,
    /// Messages matching the query.
    pub messages_count: u64,
    /// Unread messages matching the query.
    pub messages_unread: u64,
    /// Offset of this page.
    pub start: u64,
    /// Every tag in the mailbox.
    pub tags: Vec<String>,
    /// The page.
    pub messages: Vec<MessageSummary>,
}

/// Mailpit's `ListUnsubscribe`.
#[derive(Debug, Clone, Serialize)]
pub struct ListUnsubscribe {
    /// The header value.
    #[serde(rename = "Header")]
    pub header: String,
    /// Links found in it.
    #[serde(rename = "Links")]
    pub links: Vec<String>,
    /// Problems found, if any.
    #[serde(rename = "Errors")]
    pub errors: String,
    /// `List-Unsubscribe-Post` value.
    #[serde(rename = "HeaderPost")]
    pub header_post: String,
}

/// Mailpit's `Message`: the full view of one message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageDetail {
    /// The fields shared with [`MessageSummary`]; `Read` is always true,
    /// since fetching the message marks it read (older Mailpit versions
    /// sent it and some clients still expect it).
    #[serde(flatten)]
    pub head: Head,
    /// Return-Path.
    #[serde(rename = "ReturnPath")]
    pub return_path: String,
    /// List-Unsubscribe information.
    #[serde(rename = "ListUnsubscribe")]
    pub list_unsubscribe: ListUnsubscribe,
    /// Date header, or the received time.
    #[serde(rename = "Date")]
    pub date: String,
    /// Text body.
    #[serde(rename = "Text")]
    pub text: String,
    /// HTML body.
    #[serde(rename = "HTML")]
    pub html: String,
    /// Inline parts.
    #[serde(rename = "Inline")]
    pub inline: Vec<Attachment>,
    /// Attachments.
    #[serde(rename = "Attachments")]
    pub attachments: Vec<Attachment>,
}

/// One MIME part's decoded content.
#[derive(Debug)]
pub struct PartData {
    /// Decoded bytes.
    pub data: PartBody,
    /// Content type.
    pub content_type: String,
    /// File name, may be empty.
    pub file_name: String,
}

/// A part's decoded bytes: in memory when the part is small, in a spool
/// when it is larger than the store reads whole (see `outline::KEEP`).
#[derive(Debug)]
pub enum PartBody {
    /// The bytes.
    Memory(Vec<u8>),
    /// The bytes in a spool, from position 0.
    Spooled {
        /// The spool.
        file: tempfile::SpooledTempFile,
        /// Its length.
        len: u64,
    },
}

impl PartBody {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            PartBody::Memory(v) => v.len() as u64,
            PartBody::Spooled { len, .. } => *len,
        }
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes in memory if there are at most `max`, else `None`.
    pub fn into_vec(self, max: u64) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            PartBody::Memory(v) => Ok((v.len() as u64 <= max).then_some(v)),
            PartBody::Spooled { mut file, len } => {
                if len > max {
                    return Ok(None);
                }
                let mut v = Vec::with_capacity(len as usize);
                std::io::Read::read_to_end(&mut file, &mut v)?;
                Ok(Some(v))
            }
        }
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Each event's JSON equals what the untyped events sent (`Type` plus
    /// a `json!` payload), so the websocket clients see no change.
    #[test]
    fn events_serialise_as_mailpit_websocket_messages() {
        let wire = |e: &Event| serde_json::to_value(e).unwrap();
        let summary = MessageSummary {
            head: Head {
                id: "abc".into(),
                message_id: "m@x".into(),
                read: false,
                from: Address {
                    name: "A".into(),
                    address: "a@x".into(),
                },
                to: vec![],
                cc: vec![],
                bcc: vec![],
                reply_to: vec![],
                subject: "hi".into(),
                username: String::new(),
                tags: vec!["t".into()],
                size: 12,
            },
            created: rfc3339_ms(0),
            attachments: 0,
            snippet: "s".into(),
        };
        let cases: Vec<(Event, Value)> = vec![
            (
                Event::New(Box::new(summary.clone())),
                json!({"Type": "new", "Data": serde_json::to_value(&summary).unwrap()}),
            ),
            (
                Event::Stats {
                    total: 3,
                    unread: 1,
                },
                json!({"Type": "stats", "Data": {"Total": 3, "Unread": 1,
                    "Version": env!("CARGO_PKG_VERSION")}}),
            ),
            (
                Event::Read {
                    id: "abc".into(),
                    read: true,
                },
                json!({"Type": "update", "Data": {"ID": "abc", "Read": true}}),
            ),
            (
                Event::Tags {
                    id: "abc".into(),
                    tags: vec!["a".into(), "b".into()],
                },
                json!({"Type": "update", "Data": {"ID": "abc", "Tags": ["a", "b"]}}),
            ),
            (
                Event::Delete { id: "abc".into() },
                json!({"Type": "delete", "Data": {"ID": "abc"}}),
            ),
            (Event::Prune, json!({"Type": "prune", "Data": null})),
            (Event::Truncate, json!({"Type": "truncate", "Data": null})),
        ];
        for (event, expected) in cases {
            assert_eq!(wire(&event), expected, "{event:?}");
        }
        // `new` carries the summary's own fields, exactly.
        assert_eq!(
            wire(&Event::New(Box::new(summary)))["Data"]["Subject"],
            "hi"
        );
    }
}
