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

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::args::{MonitorArgs, ReplicaArgs, S3Keys, WatchArgs, WatchDbArgs};
use crate::heartbeat::HeartbeatUrl;

/// Everything `watch` runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The dbs, each watched by its own loops.
    pub dbs: Vec<DbPlan>,
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

    /// The entry of `db` (as the file writes its path), or a usage error
    /// listing the file's dbs.
    pub fn db(&self, db: &Path, file: &Path) -> Result<&DbPlan, mailsafe::Error> {
        self.dbs.iter().find(|d| d.path == db).ok_or_else(|| {
            let listed: Vec<String> = self
                .dbs
                .iter()
                .map(|d| d.path.display().to_string())
                .collect();
            mailsafe::Error::Usage(format!(
                "config file {}: no db {} (it lists {})",
                file.display(),
                db.display(),
                listed.join(", ")
            ))
        })
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
    let mut seen = std::collections::BTreeSet::new();
    let mut dbs = Vec::new();
    for (i, db) in doc.dbs.into_iter().enumerate() {
        if !seen.insert(db.path.clone()) {
            return Err(bad(format!(
                "dbs[{i}].path: {} is listed twice (each db is watched once; give it several replicas instead)",
                db.path.display()
            )));
        }
        dbs.push(db.into_plan(base, replica));
    }
    Ok(Plan {
        dbs,
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

/// One entry of `dbs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileDb {
    path: PathBuf,
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
        let mut s = base.clone();
        s.debounce = self.debounce.unwrap_or(s.debounce);
        s.max_delay = self.max_delay.unwrap_or(s.max_delay);
        s.lease_ttl = self.lease_ttl.unwrap_or(s.lease_ttl);
        s.poll_interval = self.poll_interval.or(s.poll_interval);
        s.writer.unsafe_no_conditional_writes = self
            .unsafe_no_conditional_writes
            .unwrap_or(s.writer.unsafe_no_conditional_writes);
        if let Some(r) = self.retention {
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
        let key = self
            .encryption_key_file
            .or(replica.encryption_key_file.clone());
        let replicas = self
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
            path: self.path,
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

/// The file's `dbs`: at least one.
fn dbs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<FileDb>, D::Error> {
    non_empty(d, "dbs")
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
