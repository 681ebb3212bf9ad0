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
//! Modules, from the bottom up (none imports one above it; the test at the
//! end of this file checks that there is no import cycle):
//! - `error`, `model`: the error type and the types crossing the boundary.
//! - `parse`, `index`, `search`, `schema`: MIME, the word index, the search
//!   language, migrations.
//! - `compress`: how raw messages are compressed (level 0: stored as they
//!   are, still as zstd frames).
//! - `rows`: row-level SQL shared by the writer and the API writes.
//! - `writer`: the batching writer thread (jobs, batches, group commit).
//! - `insert`: the one insert path; `store`: the [`Store`] handle.
//! - `read`: the API's queries; `mutate`: the API's changes.

mod compress;
mod error;
mod export;
mod index;
mod insert;
mod model;
mod mutate;
mod outline;
mod parse;
mod read;
mod rows;
mod schema;
pub mod search;
mod store;
mod tagging;
mod writer;

pub use error::StorageError;
pub use export::each_raw;
pub use model::{
    Event, Head, ListUnsubscribe, MessageDetail, MessageSummary, MessagesPage, NewMessage,
    PartBody, PartData, RuntimeStats, SPOOL_MEMORY, SpooledMessage, StoreOptions, new_boundary,
    spool,
};
pub use outline::RawReader;
pub use parse::{
    Address, Attachment, Checksums, canonical_header_key, clean_tag, fuzz_mime, header_envelope,
    html_to_text,
};
pub use schema::tenant_prefix;
pub use store::Store;
pub use tagging::{TagRule, Tagging};

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// The `use` graph between the storage modules, read from the sources:
    /// module → the sibling modules it names. A child naming `super::X` or
    /// `crate::storage::X` uses sibling `X` when `X` is a module, else this
    /// file (`mod`); this file uses the modules it re-exports from. Comment
    /// lines and everything from a file's `#[cfg(test)]` on are skipped
    /// (tests may reach anywhere). This stands in for `cargo modules
    /// dependencies --acyclic`, which is not installed on the team's machines
    /// and is slow to build.
    fn use_graph() -> BTreeMap<String, BTreeSet<String>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage");
        let mut sources = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                sources.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
        let modules: BTreeSet<String> = sources.keys().cloned().collect();
        let mut graph = BTreeMap::new();
        for (name, text) in &sources {
            let mut uses = BTreeSet::new();
            for line in text.lines() {
                let line = line.trim();
                if line.starts_with("#[cfg(test)]") {
                    break;
                }
                if line.starts_with("//") {
                    continue;
                }
                if name == "mod" {
                    let rest = line.strip_prefix("pub ").unwrap_or(line);
                    if let Some(path) = rest.strip_prefix("use ") {
                        let first = path.split("::").next().unwrap_or("");
                        if modules.contains(first) {
                            uses.insert(first.to_string());
                        }
                    }
                    continue;
                }
                for prefix in ["super::", "crate::storage::"] {
                    for (i, _) in line.match_indices(prefix) {
                        for target in path_heads(&line[i + prefix.len()..]) {
                            if modules.contains(&target) && target != "mod" {
                                uses.insert(target);
                            } else {
                                uses.insert("mod".to_string());
                            }
                        }
                    }
                }
            }
            uses.remove(name);
            graph.insert(name.clone(), uses);
        }
        graph
    }

    /// The first segment of each path after `super::`: one for `a::b`,
    /// several for `{a::b, c}`.
    fn path_heads(rest: &str) -> Vec<String> {
        let ident = |s: &str| -> String {
            s.trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        match rest.strip_prefix('{') {
            Some(group) => group
                .split(['}', ','])
                .map(ident)
                .filter(|s| !s.is_empty())
                .collect(),
            None => vec![ident(rest)],
        }
    }

    /// A cycle in `graph`, if there is one (depth-first search).
    fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(
            n: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|p| p == n) {
                let mut cycle = path[at..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            if done.contains(n) {
                return None;
            }
            path.push(n.to_string());
            for next in graph.get(n).into_iter().flatten() {
                if let Some(c) = visit(next, graph, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            done.insert(n.to_string());
            None
        }
        let mut done = BTreeSet::new();
        graph
            .keys()
            .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
    }

    #[test]
    fn storage_modules_import_each_other_without_cycles() {
        let graph = use_graph();
        // The check sees real edges (a regression guard for the parser).
        assert!(graph["mutate"].contains("read"), "{graph:?}");
        assert!(graph["writer"].contains("rows"), "{graph:?}");
        assert!(graph["mod"].contains("store"), "{graph:?}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "import cycle between storage modules: {}",
                cycle.join(" -> ")
            );
        }
        // And it finds one when there is one.
        let mut bad = graph.clone();
        bad.get_mut("rows").unwrap().insert("mutate".into());
        assert!(find_cycle(&bad).is_some());
    }
}
