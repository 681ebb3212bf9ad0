//! What `watch` backs up, as one model ([`Plan`]): a list of dbs, each with
//! its settings and one or more named replicas. It comes from the flags (one
//! db, one replica) or from a YAML file (`--config PATH`,
//! `MAILSAFE_CONFIG`); there is no second set of options. A file's entries
//! start from the flags' values (which come from the environment or the
//! documented defaults), so `MAILSAFE_DEBOUNCE=1s` applies to every db the
//! file does not give its own.
//!
//! YAML rather than TOML: Litestream's users already write `litestream.yml`,
//! Kubernetes ConfigMaps are YAML, and the catcher already reads YAML
//! (`MP_SMTP_RELAY_CONFIG`), so no new parser comes in.
//!
//! `$VAR` and `${VAR}` are replaced by the environment before the YAML is
//! read (as Litestream does; `$$` is a `$`; full-line comments are left
//! alone). An unset variable is an error, not an empty string: an empty
//! bucket or key path would only fail later and less clearly. Every error
//! names the file, the key (`dbs[1].replicas[0].url`) and the line, and comes
//! before anything starts (exit 2).
//!
//! An entry may also find its dbs itself ([`Discover`]): `dir` with a
//! `pattern` (and `recursive`), or a `path` with wildcards. Each db it finds
//! gets its own loops, with the entry's settings and replicas, each
//! replica's URL extended by the db's path below the entry's directory
//! (`s3://b/tenants` + `/acme/mail.db`); `watch` scans again every
//! `rescan-interval`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::args::{MonitorArgs, ReplicaArgs, S3Keys, WatchArgs, WatchDbArgs};
use super::discover::{Pattern, has_wildcard};
use crate::heartbeat::HeartbeatUrl;

/// Everything `watch` runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The dbs listed by path, each watched by its own loops.
    pub dbs: Vec<DbPlan>,
    /// The `dir` and glob entries, in the file's order.
    pub discover: Vec<Discover>,
    /// `/metrics`, `/healthz` and the heartbeat: the flags, where the file
    /// does not say (`listen`, `heartbeat-url`; a flag given wins).
    pub monitor: MonitorArgs,
    /// `--exec`, or the file's `exec`.
    pub exec: Option<String>,
}

/// One db and where it is backed up.
#[derive(Debug, Clone)]
pub struct DbPlan {
    /// The database file.
    pub path: PathBuf,
    /// Its watch settings (debounce, lease, retention, ...).
    pub settings: WatchDbArgs,
    /// Its replicas, in the file's order; each gets its own snapshotter,
    /// lease and history.
    pub replicas: Vec<NamedReplica>,
}

/// A `dir` or glob entry: the dbs it finds now and later.
#[derive(Debug, Clone)]
pub struct Discover {
    /// Which files are its dbs.
    pub pattern: Pattern,
    /// How often `watch` looks for new and removed dbs.
    pub rescan_interval: Duration,
    /// The entry's settings and replicas (their URLs are the bases each
    /// db's path is appended to); `path` is the root.
    template: DbPlan,
}

/// How often a `dir` or glob entry is scanned again unless it says
/// (`rescan-interval`): a new tenant's db is backed up within this (plus
/// the debounce) of its first commit, at the cost of one directory walk.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(10);

impl Discover {
    /// The entry's settings and replicas (`path` its directory, each URL
    /// the base of its dbs').
    pub fn template(&self) -> DbPlan {
        self.template.clone()
    }

    /// The plan of `db` if this entry's pattern names it (whether or not it
    /// exists: `restore` asks about lost dbs): the entry's settings, each
    /// replica's URL with `/` and the db's path below the root appended.
    pub fn db(&self, db: &Path) -> Option<DbPlan> {
        let rel = self.pattern.relative(db)?;
        let mut plan = self.template.clone();
        plan.path = db.to_path_buf();
        for r in &mut plan.replicas {
            r.args.replica = Some(join_url(r.args.url(), &rel));
        }
        Some(plan)
    }
}

/// `base` (a replica URL) with `/rel` appended, whatever slashes `base`
/// ends with.
fn join_url(base: &str, rel: &str) -> String {
    format!("{}/{rel}", base.trim_end_matches('/'))
}

/// Whether one replica URL is the other or below it (by `/`-separated
/// components): two such replicas would share objects, or one's
/// retention would see the other's.
fn nested(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    let below = |x: &str, y: &str| x.strip_prefix(y).is_some_and(|r| r.starts_with('/'));
    a == b || below(a, b) || below(b, a)
}

/// A replica with the name metrics, logs and `restore --replica` use.
#[derive(Debug, Clone)]
pub struct NamedReplica {
    /// `replica1`, `replica2`, ... unless the file names it.
    pub name: String,
    /// URL, endpoint and key, as the flags give them.
    pub args: ReplicaArgs,
}

/// The default name of the `i`-th (0-based) replica of a db.
pub fn default_name(i: usize) -> String {
    format!("replica{}", i + 1)
}

impl Plan {
    /// The plan of `watch`'s flags: the file named by `--config` if given,
    /// else the one db and replica of `--db` and `--replica`.
    pub fn from_watch_args(args: &WatchArgs) -> Result<Plan, mailsafe::Error> {
        let Some(file) = &args.config else {
            let (Some(db), Some(_)) = (&args.db, &args.replica.replica) else {
                return Err(mailsafe::Error::Usage(
                    "watch needs --db and --replica, or --config FILE".into(),
                ));
            };
            return Ok(Plan {
                discover: Vec::new(),
                dbs: vec![DbPlan {
                    path: db.clone(),
                    settings: args.settings.clone(),
                    replicas: vec![NamedReplica {
                        name: default_name(0),
                        args: args.replica.clone(),
                    }],
                }],
                monitor: args.monitor.clone(),
                exec: args.exec.clone(),
            });
        };
        let mut plan = load(file, &args.settings, &args.replica)?;
        let (flags, file) = (&args.monitor, plan.monitor);
        plan.monitor = MonitorArgs {
            listen: flags.listen.clone().or(file.listen),
            heartbeat_url: flags.heartbeat_url.clone().or(file.heartbeat_url),
            ..flags.clone()
        };
        plan.exec = args.exec.clone().or(plan.exec);
        Ok(plan)
    }

    /// The entry of `db`: listed (as the file writes its path), else the
    /// first `dir` or glob entry whose pattern names it; or a usage error
    /// listing the file's entries.
    pub fn db(&self, db: &Path, file: &Path) -> Result<DbPlan, mailsafe::Error> {
        if let Some(d) = self.dbs.iter().find(|d| d.path == db) {
            return Ok(d.clone());
        }
        if let Some(d) = self.discover.iter().find_map(|e| e.db(db)) {
            return Ok(d);
        }
        let listed: Vec<String> = self
            .dbs
            .iter()
            .map(|d| d.path.display().to_string())
            .chain(self.discover.iter().map(|e| e.pattern.to_string()))
            .collect();
        Err(mailsafe::Error::Usage(format!(
            "config file {}: no db {} (it lists {})",
            file.display(),
            db.display(),
            listed.join(", ")
        )))
    }

    /// The dbs the `dir` and glob entries find now, each once: a db listed
    /// by path, or found by an earlier entry, is not found again. Files
    /// that match but are no dbs are passed to `skipped`.
    pub fn scan(&self, skipped: &mut dyn FnMut(&Path, &str)) -> Vec<DbPlan> {
        let mut seen: std::collections::BTreeSet<PathBuf> =
            self.dbs.iter().map(|d| d.path.clone()).collect();
        let mut found = Vec::new();
        for entry in &self.discover {
            let scan = entry.pattern.scan();
            for (path, why) in &scan.skipped {
                skipped(path, why);
            }
            for path in scan.dbs {
                if seen.insert(path.clone()) {
                    found.extend(entry.db(&path));
                }
            }
        }
        found
    }
}

/// Reads the config file `file` (see [`parse`]).
pub fn load(
    file: &Path,
    base: &WatchDbArgs,
    replica: &ReplicaArgs,
) -> Result<Plan, mailsafe::Error> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        mailsafe::Error::Usage(format!("cannot read config file {}: {e}", file.display()))
    })?;
    parse(&text, file, base, replica)
}

/// Reads a config file's `text` (named `file` in errors) into a plan whose
/// entries start from `base` settings and the `replica` flags' endpoint and
/// key.
pub fn parse(
    text: &str,
    file: &Path,
    base: &WatchDbArgs,
    replica: &ReplicaArgs,
) -> Result<Plan, mailsafe::Error> {
    let bad =
        |msg: String| mailsafe::Error::Usage(format!("config file {}: {msg}", file.display()));
    let text = expand(text, &|name| std::env::var(name).ok()).map_err(bad)?;
    let doc: FileDoc = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut dbs = Vec::new();
    let mut discover = Vec::new();
    for db in doc.dbs {
        let source = db.source.clone();
        let rescan_interval = db.raw.rescan_interval;
        let plan = db.into_plan(base, replica);
        match source {
            Source::Path(_) => dbs.push(plan),
            Source::Found(pattern) => discover.push(Discover {
                pattern,
                rescan_interval: rescan_interval.unwrap_or(DEFAULT_RESCAN_INTERVAL),
                template: plan,
            }),
        }
    }
    Ok(Plan {
        dbs,
        discover,
        monitor: MonitorArgs {
            listen: doc.listen,
            heartbeat_url: doc.heartbeat_url,
            ..MonitorArgs::default()
        },
        exec: doc.exec,
    })
}

/// Replaces `$NAME` and `${NAME}` by `var(NAME)`, `$$` by `$`; leaves
/// full-line comments and a `$` not followed by a name alone. An unset
/// variable is an error naming it and its line.
fn expand(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, used) = if let Some(braced) = after.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| format!("line {}: `${{` without a closing `}}`", n + 1))?;
                (&braced[..end], end + 2)
            } else if let Some(escaped) = after.strip_prefix('$') {
                out.push('$');
                rest = escaped;
                continue;
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            };
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                if after.starts_with('{') {
                    return Err(format!(
                        "line {}: `${{{name}}}` is not a variable name",
                        n + 1
                    ));
                }
                out.push('$');
                rest = after;
                continue;
            }
            let value = var(name)
                .ok_or_else(|| format!("line {}: environment variable {name} is not set", n + 1))?;
            out.push_str(&value);
            rest = &after[used..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// The file as written. Unknown keys are errors (a typo would otherwise
/// silently keep a default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileDoc {
    /// Address of `/metrics` and `/healthz` (unless `--listen` is given).
    #[serde(default)]
    listen: Option<String>,
    /// Requested after each successful snapshot (unless `--heartbeat-url`
    /// is given).
    #[serde(default, deserialize_with = "heartbeat_url")]
    heartbeat_url: Option<HeartbeatUrl>,
    /// The app to run (unless `--exec` is given).
    #[serde(default)]
    exec: Option<String>,
    #[serde(deserialize_with = "dbs")]
    dbs: Vec<FileDb>,
}

/// One entry of `dbs`, as written: a db by `path`, or the dbs found by a
/// `dir` and `pattern` or a `path` with wildcards; checked into a
/// [`FileDb`] while the file is read, so a mistake carries its key and line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDb {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    dir: Option<PathBuf>,
    /// A file name pattern (`*`, `?`) for `dir`; `*.db` if not given.
    #[serde(default)]
    pattern: Option<String>,
    /// With `dir`: match files in every directory below it too.
    #[serde(default)]
    recursive: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    rescan_interval: Option<Duration>,
    #[serde(deserialize_with = "replicas")]
    replicas: Vec<FileReplica>,
    #[serde(default)]
    encryption_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration")]
    debounce: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    max_delay: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    lease_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    poll_interval: Option<Duration>,
    #[serde(default)]
    retention: Option<FileRetention>,
    #[serde(default)]
    unsafe_no_conditional_writes: Option<bool>,
}

/// Where an entry's dbs are.
#[derive(Debug, Clone)]
enum Source {
    /// One db.
    Path(PathBuf),
    /// Every db a pattern finds.
    Found(Pattern),
}

/// One entry of `dbs`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawDb")]
struct FileDb {
    source: Source,
    raw: RawDb,
}

impl TryFrom<RawDb> for FileDb {
    type Error = String;

    /// `path` or `dir`, not both; `pattern` and `recursive` only with
    /// `dir`; `rescan-interval` only where there is something to scan.
    fn try_from(r: RawDb) -> Result<Self, String> {
        let source = match (&r.path, &r.dir) {
            (Some(_), Some(_)) => return Err("give `path` or `dir`, not both".into()),
            (None, None) => {
                return Err(
                    "give `path` (a db, or a glob such as /data/*/mail.db) or `dir` (with `pattern`)"
                        .into(),
                );
            }
            (Some(path), None) => {
                if r.pattern.is_some() || r.recursive.is_some() {
                    return Err("`pattern` and `recursive` go with `dir`, not `path`".into());
                }
                match has_wildcard(&path.to_string_lossy()) {
                    true => Source::Found(Pattern::glob(path)?),
                    false => Source::Path(path.clone()),
                }
            }
            (None, Some(dir)) => Source::Found(Pattern::dir(
                dir,
                r.pattern.as_deref().unwrap_or("*.db"),
                r.recursive.unwrap_or(false),
            )?),
        };
        if matches!(source, Source::Path(_)) && r.rescan_interval.is_some() {
            return Err("`rescan-interval` goes with `dir` or a glob `path`".into());
        }
        if r.rescan_interval.is_some_and(|d| d.is_zero()) {
            return Err("`rescan-interval` must be more than 0s".into());
        }
        Ok(FileDb { source, raw: r })
    }
}

/// A db's `retention`: keep rules (which, when any is given, replace the
/// flags' rules as a whole), GC grace and how often it runs (`0s`: off).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileRetention {
    #[serde(default, deserialize_with = "duration")]
    keep_within: Option<Duration>,
    #[serde(default)]
    keep_last: Option<u32>,
    #[serde(default)]
    keep_hourly: Option<u32>,
    #[serde(default)]
    keep_daily: Option<u32>,
    #[serde(default)]
    keep_weekly: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    gc_grace: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    interval: Option<Duration>,
}

/// One entry of a db's `replicas`, as written; checked into a
/// [`FileReplica`] (the keys read from their variables) while the file is
/// read, so a mistake carries its key and line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawReplica {
    #[serde(default, deserialize_with = "name")]
    name: Option<String>,
    #[serde(deserialize_with = "url")]
    url: String,
    #[serde(default)]
    endpoint: Option<String>,
    /// Overrides the db's key for this replica.
    #[serde(default)]
    encryption_key_file: Option<PathBuf>,
    #[serde(default)]
    path_style: Option<bool>,
    #[serde(default)]
    sse: Option<String>,
    #[serde(default)]
    sse_kms_key_id: Option<String>,
    #[serde(default)]
    storage_class: Option<String>,
    /// This replica's own keys, written in the file (usually as `$VAR`)...
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    secret_access_key: Option<String>,
    /// ... or named by the variables that hold them, read at start (the
    /// values never pass through the YAML text or its error messages).
    #[serde(default)]
    access_key_id_env: Option<String>,
    #[serde(default)]
    secret_access_key_env: Option<String>,
}

/// One entry of a db's `replicas`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawReplica")]
struct FileReplica {
    name: Option<String>,
    url: String,
    endpoint: Option<String>,
    encryption_key_file: Option<PathBuf>,
    path_style: Option<bool>,
    sse: Option<mailsafe::store::s3::Sse>,
    sse_kms_key_id: Option<String>,
    storage_class: Option<String>,
    keys: Option<S3Keys>,
}

impl TryFrom<RawReplica> for FileReplica {
    type Error = String;

    /// Keys come as a pair, written or from variables (not both); a
    /// variable must be set. Messages name keys and variables, never values.
    fn try_from(r: RawReplica) -> Result<Self, String> {
        let from_env = |key: &str, var: Option<String>| match var {
            None => Ok(None),
            Some(v) => std::env::var(&v)
                .map(Some)
                .map_err(|_| format!("`{key}`: environment variable {v} is not set")),
        };
        let id = match (r.access_key_id, r.access_key_id_env) {
            (Some(_), Some(_)) => {
                Err("give `access-key-id` or `access-key-id-env`, not both".to_string())
            }
            (lit, var) => from_env("access-key-id-env", var).map(|v| v.or(lit)),
        }?;
        let secret = match (r.secret_access_key, r.secret_access_key_env) {
            (Some(_), Some(_)) => {
                Err("give `secret-access-key` or `secret-access-key-env`, not both".to_string())
            }
            (lit, var) => from_env("secret-access-key-env", var).map(|v| v.or(lit)),
        }?;
        let keys = match (id, secret) {
            (Some(id), Some(secret)) => Some(S3Keys { id, secret }),
            (None, None) => None,
            _ => {
                return Err(
                    "an access key id needs its secret access key and the other way round".into(),
                );
            }
        };
        let sse = r.sse.as_deref().map(str::parse).transpose()?;
        if r.url.starts_with("file://")
            && (keys.is_some()
                || sse.is_some()
                || r.storage_class.is_some()
                || r.path_style.is_some())
        {
            return Err(format!("{}: S3 settings on a file:// replica", r.url));
        }
        Ok(FileReplica {
            name: r.name,
            url: r.url,
            endpoint: r.endpoint,
            encryption_key_file: r.encryption_key_file,
            path_style: r.path_style,
            sse,
            sse_kms_key_id: r.sse_kms_key_id,
            storage_class: r.storage_class,
            keys,
        })
    }
}

impl FileDb {
    /// The plan of this entry, on top of the flags' `base` settings and
    /// `replica` endpoint and key.
    fn into_plan(self, base: &WatchDbArgs, replica: &ReplicaArgs) -> DbPlan {
        let path = match &self.source {
            Source::Path(p) => p.clone(),
            Source::Found(pattern) => pattern.root().to_path_buf(),
        };
        let me = self.raw;
        let mut s = base.clone();
        s.debounce = me.debounce.unwrap_or(s.debounce);
        s.max_delay = me.max_delay.unwrap_or(s.max_delay);
        s.lease_ttl = me.lease_ttl.unwrap_or(s.lease_ttl);
        s.poll_interval = me.poll_interval.or(s.poll_interval);
        s.writer.unsafe_no_conditional_writes = me
            .unsafe_no_conditional_writes
            .unwrap_or(s.writer.unsafe_no_conditional_writes);
        if let Some(r) = me.retention {
            let rules = [r.keep_last, r.keep_hourly, r.keep_daily, r.keep_weekly];
            if r.keep_within.is_some() || rules.iter().any(Option::is_some) {
                s.retention.keep_within = r.keep_within;
                s.retention.keep_last = r.keep_last;
                s.retention.keep_hourly = r.keep_hourly;
                s.retention.keep_daily = r.keep_daily;
                s.retention.keep_weekly = r.keep_weekly;
            }
            s.retention.gc_grace = r.gc_grace.unwrap_or(s.retention.gc_grace);
            s.retention_interval = r.interval.unwrap_or(s.retention_interval);
        }
        let key = me
            .encryption_key_file
            .or(replica.encryption_key_file.clone());
        let replicas = me
            .replicas
            .into_iter()
            .enumerate()
            .map(|(i, r)| NamedReplica {
                name: r.name.unwrap_or_else(|| default_name(i)),
                args: ReplicaArgs {
                    replica: Some(r.url),
                    endpoint: r.endpoint.or(replica.endpoint.clone()),
                    encryption_key_file: r.encryption_key_file.or(key.clone()),
                    s3_path_style: r.path_style.or(replica.s3_path_style),
                    s3_sse: r.sse.or(replica.s3_sse.clone()),
                    s3_sse_kms_key_id: r.sse_kms_key_id.or(replica.s3_sse_kms_key_id.clone()),
                    s3_storage_class: r.storage_class.or(replica.s3_storage_class.clone()),
                    credentials: r.keys,
                },
            })
            .collect();
        DbPlan {
            path,
            settings: s,
            replicas,
        }
    }
}

/// A list that must not be empty (`what` names it in the error).
fn non_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    what: &str,
) -> Result<Vec<T>, D::Error> {
    let v = Vec::<T>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom(format!(
            "`{what}` must list at least one entry"
        )));
    }
    Ok(v)
}

/// The file's `dbs`: at least one; each db path listed once; a `dir` or
/// glob entry's replica URLs neither the same as nor inside or around any
/// other replica's (its dbs' replicas are below it, so two entries could
/// otherwise derive one URL for two dbs). These errors are about two
/// entries: the message names both keys (serde_yaml gives no line here).
fn dbs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<FileDb>, D::Error> {
    let v: Vec<FileDb> = non_empty(d, "dbs")?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, db) in v.iter().enumerate() {
        if let Source::Path(p) = &db.source {
            if !seen.insert(p.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "dbs[{i}].path: {} is listed twice (each db is watched once; give it several replicas instead)",
                    p.display()
                )));
            }
        }
    }
    let urls: Vec<(String, bool, &str)> =
        v.iter()
            .enumerate()
            .flat_map(|(i, db)| {
                let found = matches!(db.source, Source::Found(_));
                db.raw.replicas.iter().enumerate().map(move |(j, r)| {
                    (format!("dbs[{i}].replicas[{j}].url"), found, r.url.as_str())
                })
            })
            .collect();
    for (key, found, url) in &urls {
        for (other, _, other_url) in urls.iter().filter(|_| *found) {
            if other != key && nested(url, other_url) {
                return Err(serde::de::Error::custom(format!(
                    "{key}: {url} and {other} ({other_url}) overlap; the dbs of a `dir` or glob entry are stored below its URL, so give it a URL of its own"
                )));
            }
        }
    }
    Ok(v)
}

/// A db's replicas: at least one, names unique (default names included).
/// (Errors about the list as a whole carry the db's line; the message names
/// the key.)
fn replicas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<FileReplica>, D::Error> {
    let v: Vec<FileReplica> = non_empty(d, "replicas")?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, r) in v.iter().enumerate() {
        let name = r.name.clone().unwrap_or_else(|| default_name(i));
        if !seen.insert(name.clone()) {
            return Err(serde::de::Error::custom(format!(
                "`replicas`: two are named `{name}` (names pick a replica in `restore --replica` and label its metrics)"
            )));
        }
    }
    Ok(v)
}

/// A string value read through `parse`. The error is raised inside the
/// deserializer, so it carries the value's own key and line.
fn parsed<'de, D: serde::Deserializer<'de>, T>(
    d: D,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct Parse<T>(fn(&str) -> Result<T, String>);
    impl<T> serde::de::Visitor<'_> for Parse<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(Parse(parse))
}

/// A replica name: letters, digits, `-`, `_`, `.` (it is a metrics label
/// value and a flag value).
fn name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parsed(d, |s| {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        match ok {
            true => Ok(Some(s.to_string())),
            false => Err(format!(
                "replica name {s:?}: use 1 to 64 letters, digits, `-`, `_` or `.`"
            )),
        }
    })
}

/// A replica URL the store can open (checked without contacting it).
fn url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parsed(d, |s| {
        mailsafe::store::check_url(s)
            .map(|()| s.to_string())
            .map_err(|e| e.to_string())
    })
}

/// A heartbeat URL (the error does not repeat it: it may hold a token).
fn heartbeat_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<HeartbeatUrl>, D::Error> {
    parsed(d, |s| s.parse().map(Some))
}

/// A duration written as `250ms`, `10s`, `2m`, `1h` (humantime).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(d, |s| {
        humantime::parse_duration(s)
            .map(Some)
            .map_err(|e| format!("invalid duration {s:?}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::{Args, Command};

    /// The flags' values for `argv` (a `watch` command line).
    fn watch_args(argv: &[&str]) -> WatchArgs {
        match Args::try_parse_from(argv).unwrap().command {
            Command::Watch(w) => w,
            other => panic!("{other:?}"),
        }
    }

    fn parse_str(text: &str) -> Result<Plan, String> {
        let a = watch_args(&["mailsafe", "watch", "--config", "/etc/m.yml"]);
        parse(text, Path::new("/etc/m.yml"), &a.settings, &a.replica).map_err(|e| {
            assert_eq!(e.exit_code(), 2, "{e}");
            e.to_string()
        })
    }

    const TWO: &str = "\
listen: 127.0.0.1:9090
heartbeat-url: https://hc.example:8443/ping/uuid?token=t
dbs:
  - path: /data/a.db
    debounce: 1s
    encryption-key-file: /keys/a
    retention:
      keep-last: 5
      interval: 0s
    replicas:
      - url: s3://bucket/a
      - name: offsite
        url: file:///backup/a
        encryption-key-file: /keys/offsite
  - path: /data/b.db
    replicas:
      - url: s3://bucket/b
        endpoint: http://127.0.0.1:8333
";

    /// Two dbs, three replicas: per-db settings, defaults from the flags
    /// elsewhere, default names, per-replica key overrides.
    #[test]
    fn reads_dbs_replicas_and_per_db_settings() {
        let plan = parse_str(TWO).unwrap();
        assert_eq!(plan.monitor.listen.as_deref(), Some("127.0.0.1:9090"));
        assert_eq!(
            plan.monitor.heartbeat_url.unwrap().to_string(),
            "https://hc.example:8443/…"
        );
        let [a, b] = &plan.dbs[..] else { panic!() };
        assert_eq!(a.path, Path::new("/data/a.db"));
        assert_eq!(a.settings.debounce, Duration::from_secs(1));
        assert_eq!(a.settings.retention.keep_last, Some(5));
        assert_eq!(a.settings.retention_interval, Duration::ZERO);
        let names: Vec<&str> = a.replicas.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["replica1", "offsite"]);
        let key = |r: &NamedReplica| r.args.encryption_key_file.clone().unwrap();
        assert_eq!(key(&a.replicas[0]), Path::new("/keys/a"));
        assert_eq!(key(&a.replicas[1]), Path::new("/keys/offsite"));
        // b: the flags' defaults.
        assert_eq!(b.settings.debounce, Duration::from_millis(250));
        assert_eq!(b.settings.retention_interval, Duration::from_secs(600));
        assert_eq!(
            b.replicas[0].args.endpoint.as_deref(),
            Some("http://127.0.0.1:8333")
        );
        assert!(b.replicas[0].args.encryption_key_file.is_none());
    }

    /// A replica's own keys (written, or from a named variable), SSE and
    /// storage class; the flags' S3 settings for the others; `Debug` of the
    /// plan never shows a secret.
    #[test]
    fn replicas_carry_their_own_keys_and_s3_settings() {
        let a = watch_args(&[
            "mailsafe",
            "watch",
            "--config",
            "/m.yml",
            "--s3-storage-class",
            "STANDARD_IA",
        ]);
        let text = "dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/a\n        access-key-id-env: HOME\n        secret-access-key: s3cr3t\n        sse: aws:kms\n        sse-kms-key-id: k1\n        path-style: false\n      - url: s3://c/a\n";
        let plan = parse(text, Path::new("/m.yml"), &a.settings, &a.replica).unwrap();
        let [own, other] = &plan.dbs[0].replicas[..] else {
            panic!()
        };
        let o = own.args.s3_options().unwrap();
        let home = std::env::var("HOME").unwrap();
        assert_eq!(o.credentials, Some((home, "s3cr3t".to_string())));
        assert_eq!(
            o.sse,
            Some(mailsafe::store::s3::Sse::Kms(Some("k1".into())))
        );
        assert_eq!(o.path_style, Some(false));
        assert_eq!(o.storage_class.as_deref(), Some("STANDARD_IA"));
        let o = other.args.s3_options().unwrap();
        assert_eq!((o.credentials, o.sse, o.path_style), (None, None, None));
        assert_eq!(o.storage_class.as_deref(), Some("STANDARD_IA"));
        assert!(!format!("{plan:?}").contains("s3cr3t"));
    }

    /// Flags given beside the file are the entries' defaults.
    #[test]
    fn flags_are_the_defaults_of_the_files_entries() {
        let a = watch_args(&[
            "mailsafe",
            "watch",
            "--config",
            "/m.yml",
            "--debounce",
            "2s",
            "--keep-daily",
            "3",
        ]);
        let plan = parse(TWO, Path::new("/m.yml"), &a.settings, &a.replica).unwrap();
        assert_eq!(plan.dbs[0].settings.debounce, Duration::from_secs(1));
        assert_eq!(plan.dbs[1].settings.debounce, Duration::from_secs(2));
        // A's own rules replace the flags' as a whole; b keeps the flags'.
        assert_eq!(plan.dbs[0].settings.retention.keep_daily, None);
        assert_eq!(plan.dbs[1].settings.retention.keep_daily, Some(3));
    }

    /// `$VAR` and `${VAR}` from the environment, `$$` a dollar, comments
    /// untouched; an unset variable names itself and its line.
    #[test]
    fn expands_variables() {
        let env = |n: &str| match n {
            "BUCKET" => Some("b1".to_string()),
            "P" => Some("x".to_string()),
            _ => None,
        };
        let text = "# $NOT_SET in a comment\nurl: s3://$BUCKET/${P}_y/$$z/$ /$1\n";
        assert_eq!(
            expand(text, &env).unwrap(),
            "# $NOT_SET in a comment\nurl: s3://b1/x_y/$z/$ /$1\n"
        );
        let e = expand("a: 1\nb: ${NOPE}\n", &env).unwrap_err();
        assert!(e.contains("line 2") && e.contains("NOPE"), "{e}");
        let e = expand("a: ${OPEN\n", &env).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    /// Every kind of mistake is refused with the file, the key and the line.
    #[test]
    fn bad_configs_name_file_key_and_line() {
        let cases: &[(&str, &[&str])] = &[
            // An unknown key (a typo).
            (
                "dbs:\n  - path: /a.db\n    replicas:\n      - urll: s3://b/a\n",
                &["dbs[0].replicas[0]", "unknown field `urll`", "line 4"],
            ),
            // A bad duration.
            (
                "dbs:\n  - path: /a.db\n    debounce: 5 parsecs\n    replicas:\n      - url: s3://b/a\n",
                &["dbs[0].debounce", "invalid duration", "line 3"],
            ),
            // A URL no store opens.
            (
                "dbs:\n  - path: /a.db\n    replicas:\n      - url: gs://b/a\n",
                &["dbs[0].replicas[0].url", "gs://b/a", "line 4"],
            ),
            // No replica.
            (
                "dbs:\n  - path: /a.db\n    replicas: []\n",
                &["dbs[0]", "`replicas` must list at least one", "line 2"],
            ),
            // Two replicas with one name.
            (
                "dbs:\n  - path: /a.db\n    replicas:\n      - {name: x, url: s3://b/a}\n      - {name: x, url: s3://b/c}\n",
                &["dbs[0]", "`replicas`: two are named `x`", "line 2"],
            ),
            // Half a key pair; a key variable that is not set.
            (
                "dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/a\n        access-key-id: AKIA\n",
                &["dbs[0].replicas", "needs its secret", "line 4"],
            ),
            (
                "dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/a\n        access-key-id-env: MAILSAFE_TEST_UNSET_VAR\n        secret-access-key: x\n",
                &[
                    "dbs[0].replicas",
                    "MAILSAFE_TEST_UNSET_VAR is not set",
                    "line 4",
                ],
            ),
            (
                "dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/a\n        sse: rot13\n",
                &["dbs[0].replicas", "AES256", "line 4"],
            ),
            // A name that cannot be a label.
            (
                "dbs:\n  - path: /a.db\n    replicas:\n      - {name: \"a b\", url: s3://b/a}\n",
                &["dbs[0].replicas[0].name", "letters, digits", "line 4"],
            ),
            // A negative count.
            (
                "dbs:\n  - path: /a.db\n    retention:\n      keep-last: -1\n    replicas:\n      - url: s3://b/a\n",
                &["dbs[0].retention.keep-last", "line 4"],
            ),
            // No db.
            ("listen: :9090\n", &["missing field `dbs`"]),
            // A heartbeat URL that is no http(s) URL (not echoed: it may
            // hold a token).
            (
                "heartbeat-url: ftp://u:secret@h/x\ndbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/a\n",
                &["heartbeat-url", "http or https", "line 1"],
            ),
            // Not YAML.
            ("dbs: [\n", &["line"]),
        ];
        for (text, wants) in cases {
            let e = parse_str(text).expect_err(text);
            assert!(e.contains("config file /etc/m.yml"), "{e}");
            for want in *wants {
                assert!(e.contains(want), "{text}\n-> {e}\n(wanted {want:?})");
            }
        }
        let e = parse_str("heartbeat-url: ftp://u:secret@h/x\ndbs: []\n").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        // The same db twice.
        let e = parse_str(
            "dbs:\n  - {path: /a.db, replicas: [{url: s3://b/a}]}\n  - {path: /a.db, replicas: [{url: s3://b/c}]}\n",
        )
        .unwrap_err();
        assert!(e.contains("dbs[1].path") && e.contains("twice"), "{e}");
    }

    /// A `dir` entry and a glob entry: each found db's replicas are the
    /// entry's with its path below the root appended (same names and
    /// settings); `Plan::db` finds listed dbs, then found ones (existing or
    /// not), and names the entries otherwise; a scan finds each db once.
    #[test]
    fn dir_and_glob_entries_derive_a_replica_per_db() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let text = format!(
            "dbs:
  - path: {root}/t/listed.db
    replicas: [{{url: s3://b/listed}}]
  - dir: {root}/t
    recursive: true
    debounce: 2s
    replicas:
      - url: s3://b/tenants/
      - {{name: offsite, url: 'file:///backup/tenants'}}
  - path: {root}/shards/*/mail.db
    rescan-interval: 1s
    replicas: [{{url: s3://b/shards}}]
",
            root = root.display()
        );
        let plan = parse_str(&text).unwrap();
        let [dir, glob] = &plan.discover[..] else {
            panic!("{:?}", plan.discover)
        };
        assert_eq!(dir.rescan_interval, DEFAULT_RESCAN_INTERVAL);
        assert_eq!(glob.rescan_interval, Duration::from_secs(1));
        let acme = root.join("t/acme/x.db");
        let found = dir.db(&acme).unwrap();
        let urls: Vec<(&str, &str)> = found
            .replicas
            .iter()
            .map(|r| (r.name.as_str(), r.args.url()))
            .collect();
        assert_eq!(
            urls,
            [
                ("replica1", "s3://b/tenants/acme/x.db"),
                ("offsite", "file:///backup/tenants/acme/x.db")
            ]
        );
        assert_eq!(found.settings.debounce, Duration::from_secs(2));
        assert_eq!(
            glob.db(&root.join("shards/s1/mail.db")).unwrap().replicas[0]
                .args
                .url(),
            "s3://b/shards/s1/mail.db"
        );
        assert!(glob.db(&root.join("shards/s1/other.db")).is_none());
        let file = Path::new("/etc/m.yml");
        assert_eq!(
            plan.db(&root.join("t/listed.db"), file).unwrap().replicas[0]
                .args
                .url(),
            "s3://b/listed"
        );
        assert_eq!(plan.db(&acme, file).unwrap().path, acme);
        let e = plan.db(Path::new("/elsewhere.db"), file).unwrap_err();
        assert!(e.to_string().contains("/t/**/*.db"), "{e}");
        // On disk: the listed db is not found again by the dir entry.
        std::fs::create_dir_all(root.join("t/acme")).unwrap();
        for db in ["t/listed.db", "t/acme/x.db"] {
            rusqlite::Connection::open(root.join(db))
                .unwrap()
                .execute_batch("CREATE TABLE t(x)")
                .unwrap();
        }
        let found: Vec<PathBuf> = plan
            .scan(&mut |_, _| {})
            .into_iter()
            .map(|d| d.path)
            .collect();
        assert_eq!(found, [acme]);
    }

    /// Mistakes in `dir` and glob entries, with file, key and line.
    #[test]
    fn bad_dir_entries_name_file_key_and_line() {
        let cases: &[(&str, &[&str])] = &[
            (
                "dbs:\n  - path: /a.db\n    dir: /data\n    replicas: [{url: s3://b/a}]\n",
                &["dbs: ", "`path` or `dir`, not both", "line 2"],
            ),
            (
                "dbs:\n  - pattern: '*.db'\n    replicas: [{url: s3://b/a}]\n",
                &["dbs: ", "give `path`", "line 2"],
            ),
            (
                "dbs:\n  - path: /a.db\n    recursive: true\n    replicas: [{url: s3://b/a}]\n",
                &["dbs: ", "go with `dir`", "line 2"],
            ),
            (
                "dbs:\n  - dir: data\n    replicas: [{url: s3://b/a}]\n",
                &["dbs: ", "absolute path", "line 2"],
            ),
            (
                "dbs:\n  - dir: /data\n    pattern: 'x/*.db'\n    replicas: [{url: s3://b/a}]\n",
                &["dbs: ", "no `/`", "line 2"],
            ),
            (
                "dbs:\n  - path: /a.db\n    rescan-interval: 1s\n    replicas: [{url: s3://b/a}]\n",
                &["dbs: ", "`rescan-interval` goes with", "line 2"],
            ),
            (
                "dbs:\n  - dir: /data\n    rescan-interval: soon\n    replicas: [{url: s3://b/a}]\n",
                &["dbs[0].rescan-interval", "invalid duration", "line 3"],
            ),
            // Two entries whose dbs could get one URL; a listed db's
            // replica inside a dir entry's.
            (
                "dbs:\n  - dir: /d1\n    replicas: [{url: s3://b/t}]\n  - dir: /d2\n    replicas: [{url: s3://b/t/}]\n",
                &[
                    "dbs[0].replicas[0].url",
                    "dbs[1].replicas[0].url",
                    "overlap",
                ],
            ),
            (
                "dbs:\n  - path: /a.db\n    replicas: [{url: s3://b/t/a.db}]\n  - dir: /d\n    replicas: [{url: s3://b/t}]\n",
                &[
                    "dbs[0].replicas[0].url",
                    "dbs[1].replicas[0].url",
                    "overlap",
                ],
            ),
        ];
        for (text, wants) in cases {
            let e = parse_str(text).expect_err(text);
            assert!(e.contains("config file /etc/m.yml"), "{e}");
            for want in *wants {
                assert!(e.contains(want), "{text}\n-> {e}\n(wanted {want:?})");
            }
        }
        // Not overlapping: a sibling whose name starts the same.
        parse_str(
            "dbs:\n  - dir: /d1\n    replicas: [{url: s3://b/t}]\n  - dir: /d2\n    replicas: [{url: s3://b/t2}]\n",
        )
        .unwrap();
    }

    /// Without a file, the flags are one db with one replica; with neither,
    /// the error says what is missing.
    #[test]
    fn flags_alone_are_a_plan_of_one() {
        let a = watch_args(&[
            "mailsafe",
            "watch",
            "--db",
            "/a.db",
            "--replica",
            "s3://b/a",
        ]);
        let plan = Plan::from_watch_args(&a).unwrap();
        assert_eq!(plan.dbs.len(), 1);
        assert_eq!(plan.dbs[0].replicas[0].name, "replica1");
        assert_eq!(
            plan.dbs[0].replicas[0].args.replica.as_deref(),
            Some("s3://b/a")
        );
        assert!(Args::try_parse_from(["mailsafe", "watch", "--db", "/a.db"]).is_err());
        assert!(
            Args::try_parse_from([
                "mailsafe",
                "watch",
                "--config",
                "/m.yml",
                "--replica",
                "s3://b/a"
            ])
            .is_err()
        );
    }
}
