//! No import cycle between the top-level modules of any crate (the binary,
//! `crates/engine`, `crates/catcher`): the layering docs/ARCHITECTURE.md
//! describes, checked the way `cargo modules dependencies --acyclic` would
//! (crates.io `cargo-modules` is not installed here). Each module's edges
//! are the `crate::<module>` paths in its files (including `use crate::{a,
//! b}` groups and the root's re-exports such as `crate::Error`), outside
//! `#[cfg(test)]` code. Cycles inside a module are each module's own
//! business (the catcher's storage has its own check).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module name -> the modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's text without its `#[cfg(test)]` code (by convention the test
/// module closes each file) and without comment lines.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The leading identifier of `s`.
fn ident(s: &str) -> &str {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of each path after a `crate::`: one for `a::b`, one
/// per item of a `{a::b, c::{d, e}}` group.
fn heads(rest: &str) -> Vec<&str> {
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.push(ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

/// The top-level module graph of the crate whose root is `src/<root>`.
fn graph(src: &Path, root: &str) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let module_of = |f: &Path| -> String {
        let rel = f.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str();
        first.to_string_lossy().trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f))
        .filter(|m| m != root)
        .collect();
    // `pub use error::Error;` in the root: `crate::Error` is `error`.
    let mut aliases = BTreeMap::new();
    for line in code(&src.join(format!("{root}.rs"))).lines() {
        if let Some(rest) = line.trim().strip_prefix("pub use ") {
            let module = ident(rest);
            if modules.contains(module) {
                let after = &rest[module.len()..];
                for item in heads(after.trim_start_matches("::")) {
                    aliases.insert(item.to_string(), module.to_string());
                }
            }
        }
    }
    let mut g = Graph::new();
    for f in &files {
        let from = module_of(f);
        if from == root {
            continue;
        }
        let edges = g.entry(from.clone()).or_default();
        let text = code(f);
        for (i, _) in text.match_indices("crate::") {
            for head in heads(&text[i + "crate::".len()..]) {
                let to = aliases.get(head).map_or(head, |m| m.as_str());
                if modules.contains(to) && to != from {
                    edges.insert(to.to_string());
                }
            }
        }
    }
    g
}

/// A cycle in `g`, if there is one (depth-first search).
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if !done.insert(n.to_string()) {
            return None;
        }
        path.push(n.to_string());
        for next in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let crates = [
        ("src", "main"),
        ("crates/engine/src", "lib"),
        ("crates/catcher/src", "lib"),
    ];
    for (dir, root) in crates {
        let g = graph(&repo.join(dir), root);
        if let Some(cycle) = find_cycle(&g) {
            panic!("import cycle in {dir}: {}", cycle.join(" -> "));
        }
        // The check sees real edges (a guard for the parser): in each crate
        // something uses something.
        assert!(g.values().any(|e| !e.is_empty()), "{dir}: no edges: {g:?}");
    }
    // Known edges, one per way of writing a path.
    let engine = graph(&repo.join("crates/engine/src"), "lib");
    assert!(engine["restore"].contains("manifest"), "{engine:?}");
    assert!(
        engine["snapshot"].contains("error"),
        "crate::Error: {engine:?}"
    );
    let bin = graph(&repo.join("src"), "main");
    assert!(bin["cli"].contains("shutdown"), "{bin:?}");
    // And it finds a cycle when there is one.
    let mut bad = engine.clone();
    bad.get_mut("store").unwrap().insert("snapshot".into());
    assert!(find_cycle(&bad).is_some());
}

#[test]
fn group_paths_yield_each_head() {
    assert_eq!(heads("a::b;"), ["a"]);
    assert_eq!(heads("{a::b, c::{d, e}, f};"), ["a", "c", "f"]);
}
