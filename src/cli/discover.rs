//! Directory and glob entries of the config file: which files are dbs to
//! watch, found by a pattern instead of listed one by one (a db per tenant,
//! created while the app runs), as Litestream's directory replication does.
//!
//! `dir: /data` with `pattern: "*.db"` (the default) and optionally
//! `recursive: true`, or a `path` with wildcards (`/data/tenants/*/mail.db`),
//! are one [`Pattern`]: a root directory and wildcard components below it
//! (`*`, `?`; `recursive` lets the last one match at any depth). A file
//! counts once it holds a SQLite header, so a db being created is picked
//! up at the next scan after its first commit; `-wal`, `-shm`, `-journal`,
//! mailsafe's lock and restore temp files never count, nor do hidden files
//! unless the pattern itself starts with `.` (as in a shell). Each db's
//! replicas are the entry's with the db's path below the root appended to
//! the URL (`config::Discover::db`), so every db has a history of its own
//! and `restore --config --db` finds a db that no longer exists by the same
//! rule.

use std::path::{Component, Path, PathBuf};

/// Where an entry's dbs are and which files they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The directory every match is below (the part without wildcards).
    root: PathBuf,
    /// Wildcard components below `root`, matched one per directory level.
    components: Vec<String>,
    /// Whether the last component matches at any depth below the others.
    recursive: bool,
}

/// Whether `s` has a wildcard this module understands.
pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

impl Pattern {
    /// `dir` and a file-name `pattern` (no `/`), at any depth when
    /// `recursive`.
    pub fn dir(dir: &Path, pattern: &str, recursive: bool) -> Result<Self, String> {
        if pattern.is_empty() || pattern.contains('/') {
            return Err(format!(
                "pattern {pattern:?}: a file name pattern such as \"*.db\" (no `/`)"
            ));
        }
        absolute(dir)?;
        Ok(Self {
            root: dir.to_path_buf(),
            components: vec![pattern.to_string()],
            recursive,
        })
    }

    /// A path with wildcards in one or more components.
    pub fn glob(path: &Path) -> Result<Self, String> {
        absolute(path)?;
        let mut root = PathBuf::new();
        let mut components = Vec::new();
        for c in path.components() {
            let Component::Normal(name) = c else {
                if components.is_empty() && !matches!(c, Component::ParentDir) {
                    root.push(c);
                    continue;
                }
                return Err(format!("{}: no `.` or `..` in a glob", path.display()));
            };
            let name = name.to_string_lossy().to_string();
            if components.is_empty() && !has_wildcard(&name) {
                root.push(name);
            } else {
                components.push(name);
            }
        }
        if components.is_empty() {
            return Err(format!("{}: no wildcard", path.display()));
        }
        Ok(Self {
            root,
            components,
            recursive: false,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` below the root with `/` separators, if `path` is a name this
    /// pattern matches and not a companion file (its db or not: `restore`
    /// asks about a db that may be gone).
    pub fn relative(&self, path: &Path) -> Option<String> {
        let names = self.below(path)?;
        let last = names.last()?;
        (self.names_match(path) && !is_companion(last)).then(|| names.join("/"))
    }

    /// The components of `path` below the root (none may be `.` or `..`).
    fn below(&self, path: &Path) -> Option<Vec<String>> {
        path.strip_prefix(&self.root)
            .ok()?
            .components()
            .map(|c| match c {
                Component::Normal(n) => Some(n.to_string_lossy().to_string()),
                _ => None,
            })
            .collect()
    }

    /// Whether the names of `path` below the root match the components.
    fn names_match(&self, path: &Path) -> bool {
        let Some(names) = self.below(path) else {
            return false;
        };
        let (fixed, last) = self.components.split_at(self.components.len() - 1);
        match self.recursive {
            false => {
                names.len() == self.components.len()
                    && names
                        .iter()
                        .zip(&self.components)
                        .all(|(n, p)| matches(p, n))
            }
            true => {
                names.len() > fixed.len()
                    && names.iter().zip(fixed).all(|(n, p)| matches(p, n))
                    && names[fixed.len()..names.len() - 1]
                        .iter()
                        .all(|n| !n.starts_with('.'))
                    && matches(&last[0], &names[names.len() - 1])
            }
        }
    }

    /// The dbs that match now, sorted: files with a SQLite header; and the
    /// files whose names match but that are no dbs, with why. An
    /// unreadable directory is skipped (logged), not an error: the next
    /// scan looks again.
    pub fn scan(&self) -> Scan {
        let mut scan = Scan::default();
        self.walk(&self.root, 0, &mut scan);
        scan.dbs.sort();
        scan.skipped.sort();
        scan
    }

    fn walk(&self, dir: &Path, depth: usize, scan: &mut Scan) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), "cannot scan for dbs: {e}");
                }
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Symbolic links are not followed (a link to a parent would
            // loop; a db is a file the app opens where it is).
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().to_string();
            if kind.is_dir() {
                let below =
                    depth + 1 < self.components.len() && matches(&self.components[depth], &name);
                if below
                    || (self.recursive
                        && depth + 1 >= self.components.len()
                        && !name.starts_with('.'))
                {
                    self.walk(&path, depth + 1, scan);
                }
            } else if kind.is_file() && self.names_match(&path) {
                if is_companion(&name) {
                    scan.skipped
                        .push((path, "a WAL, journal, lock or temp file"));
                } else if !is_sqlite(&path) {
                    scan.skipped
                        .push((path, "not a SQLite database (or not yet committed to)"));
                } else {
                    scan.dbs.push(path);
                }
            }
        }
    }
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The dbs, sorted.
    pub dbs: Vec<PathBuf>,
    /// Files whose names match but that are no dbs, with the reason.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

impl std::fmt::Display for Pattern {
    /// `/data/tenants/*/mail.db`, or `/data/**/*.db` when recursive.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (fixed, last) = self.components.split_at(self.components.len() - 1);
        let mut p = self.root.clone();
        p.extend(fixed);
        if self.recursive {
            p.push("**");
        }
        p.push(&last[0]);
        write!(f, "{}", p.display())
    }
}

/// A discovery entry needs an absolute root: a relative one would depend on
/// the directory mailsafe happens to start in.
fn absolute(p: &Path) -> Result<(), String> {
    match p.is_absolute() {
        true => Ok(()),
        false => Err(format!("{}: use an absolute path", p.display())),
    }
}

/// SQLite's and mailsafe's files beside a db, which are never dbs.
fn is_companion(name: &str) -> bool {
    ["-wal", "-shm", "-journal", "-mailsafe.lock"]
        .iter()
        .any(|s| name.ends_with(s))
        || name.contains(".mailsafe-restore-")
}

/// A shell-like match of one name: [`wildcard`], and a hidden name (`.x`)
/// only when the pattern starts with `.` too.
fn matches(pattern: &str, name: &str) -> bool {
    (!name.starts_with('.') || pattern.starts_with('.')) && wildcard(pattern, name)
}

/// Whether the file starts with SQLite's header: the magic string and a
/// valid page size (a power of two from 512 to 32768, or 1 for 65536), so
/// a db that has had its first commit.
fn is_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 100];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    read.is_ok()
        && matches!(
            mailsafe::format::sqlite_header(&head),
            mailsafe::format::SqliteHeader::Database { page_size: Some(_) }
        )
}

/// `*` (any run of characters) and `?` (one character) against `name`.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match with one backtrack point.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_whole_names() {
        assert!(wildcard("*.db", "a.db"));
        assert!(wildcard("*.db", ".db"));
        assert!(!wildcard("*.db", "a.db-wal"));
        assert!(wildcard("t?n*", "tenant"));
        assert!(!wildcard("t?n", "tn"));
        assert!(wildcard("*a*b*", "xxaxxbxx"));
        assert!(!wildcard("a", "ab"));
    }

    #[test]
    fn globs_split_into_root_and_components() {
        let p = Pattern::glob(Path::new("/data/tenants/*/mail.db")).unwrap();
        assert_eq!(p.root(), Path::new("/data/tenants"));
        assert_eq!(
            p.relative(Path::new("/data/tenants/acme/mail.db"))
                .as_deref(),
            Some("acme/mail.db")
        );
        assert_eq!(p.relative(Path::new("/data/tenants/acme/x.db")), None);
        assert_eq!(p.relative(Path::new("/data/tenants/mail.db")), None);
        assert_eq!(
            p.relative(Path::new("/data/tenants/acme/mail.db-wal")),
            None
        );
        assert!(Pattern::glob(Path::new("/data/a.db")).is_err());
        assert!(Pattern::glob(Path::new("data/*.db")).is_err());
        let d = Pattern::dir(Path::new("/data"), "*.db", true).unwrap();
        assert_eq!(
            d.relative(Path::new("/data/x/y/z.db")).as_deref(),
            Some("x/y/z.db")
        );
        assert_eq!(d.relative(Path::new("/data/z.db")).as_deref(), Some("z.db"));
        let flat = Pattern::dir(Path::new("/data"), "*.db", false).unwrap();
        assert_eq!(flat.relative(Path::new("/data/x/z.db")), None);
        assert!(Pattern::dir(Path::new("/data"), "a/*.db", false).is_err());
        assert_eq!(d.relative(Path::new("/data/.x/z.db")), None);
        assert_eq!(d.relative(Path::new("/data/z.db-journal")), None);
        assert_eq!(d.relative(Path::new("/data/../etc/z.db")), None);
    }

    /// A scan finds the files with a SQLite header only, at the depths
    /// asked for, never the WAL or lock files beside them.
    #[test]
    fn scans_find_sqlite_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("t/acme")).unwrap();
        let db = |p: &Path| {
            rusqlite_free_db(p);
        };
        db(&root.join("a.db"));
        db(&root.join("t/acme/b.db"));
        std::fs::write(root.join("empty.db"), b"").unwrap();
        std::fs::write(root.join("a.db-wal"), b"SQLite format 3\0").unwrap();
        std::fs::write(root.join("notes.txt"), b"SQLite format 3\0").unwrap();
        db(&root.join(".hidden.db"));
        std::fs::write(root.join(".a.db.mailsafe-restore-x1"), b"SQLite format 3\0").unwrap();
        let flat = Pattern::dir(root, "*.db", false).unwrap();
        let scan = flat.scan();
        assert_eq!(scan.dbs, [root.join("a.db")]);
        let skipped: Vec<&Path> = scan.skipped.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(skipped, [root.join("empty.db")]);
        let deep = Pattern::dir(root, "*.db", true).unwrap();
        assert_eq!(
            deep.scan().dbs,
            [root.join("a.db"), root.join("t/acme/b.db")]
        );
        let glob = Pattern::glob(&root.join("t/*/*.db")).unwrap();
        assert_eq!(glob.scan().dbs, [root.join("t/acme/b.db")]);
        // `*` also names the WAL and text files: skipped, said why.
        let all = Pattern::dir(root, "*", false).unwrap().scan();
        assert_eq!(all.dbs, [root.join("a.db")]);
        let why = |name: &str| {
            all.skipped
                .iter()
                .find(|(p, _)| p.ends_with(name))
                .map(|(_, why)| *why)
        };
        assert!(why("a.db-wal").unwrap().contains("WAL"));
        assert!(why("notes.txt").unwrap().contains("not a SQLite"));
        assert_eq!(why(".hidden.db"), None);
        // A pattern that starts with `.` names hidden files.
        let hidden = Pattern::dir(root, ".*.db", false).unwrap().scan();
        assert_eq!(hidden.dbs, [root.join(".hidden.db")]);
    }

    /// A file that starts like a SQLite db (all a scan reads): the magic
    /// string and a 4096-byte page size.
    fn rusqlite_free_db(p: &Path) {
        let mut bytes = b"SQLite format 3\0\x10\x00".to_vec();
        bytes.resize(4096, 0);
        std::fs::write(p, bytes).unwrap();
    }
}
