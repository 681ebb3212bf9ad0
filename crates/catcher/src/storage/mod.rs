//! The catcher's storage: where messages live.
//!
//! One SQLite file in WAL mode. A single writer thread owns the write
//! connection and commits whatever is queued in one transaction (group
//! commit), so many SMTP sessions share one fsync; each caller is answered
//! only once its batch is durable. Reads use a small pool of separate
//! connections and never wait for the writer.
//!
//! Raw messages are stored zstd-compressed next to a summary row, tags and a
//! word-level FTS5 index that still answers Mailpit's substring search
//! exactly (see `index.rs`). Every table name carries the tenant prefix.

//!
//! Modules, from the bottom up (none imports one above it):
//! - `error`, `model`: the error type and the types crossing the boundary.
//! - `parse`, `index`, `search`, `schema`: MIME, the word index, the search
//!   language, migrations.
//! - `rows`: row-level SQL shared by the writer and the API writes.
//! - `writer`: the batching writer thread (jobs, batches, group commit).
//! - `insert`: the one insert path; `store`: the [`Store`] handle.
//! - `read`: the API's queries; `mutate`: the API's changes.

mod error;
mod index;
mod insert;
mod model;
mod mutate;
mod parse;
mod read;
mod rows;
mod schema;
pub mod search;
mod store;
mod writer;

pub use error::StorageError;
pub use model::{
    Event, Head, ListUnsubscribe, MessageDetail, MessageSummary, MessagesPage, NewMessage,
    PartData, RuntimeStats, StoreOptions, new_boundary,
};
pub use parse::{
    Address, Attachment, Checksums, canonical_header_key, clean_tag, fuzz_mime, html_to_text,
};
pub use schema::tenant_prefix;
pub use store::Store;
