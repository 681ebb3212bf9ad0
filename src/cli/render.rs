//! What the one-shot commands print: `snapshot`, `snapshots`, `restore`,
//! `verify` and `prune` on stdout (as text or, with `--json`, JSON), and
//! `restore`'s download bar on stderr. Logs go elsewhere (stderr, see `cli`), so stdout
//! stays parseable.

use std::io::IsTerminal;
use std::sync::Arc;

use mailsafe::Error;
use mailsafe::progress::Progress;
use mailsafe::restore::{RestoreOutcome, RestoreReport, SnapshotInfo};
use mailsafe::retention::PruneReport;
use mailsafe::snapshot::SnapshotReport;

/// `snapshot`'s result.
pub fn snapshot(report: &SnapshotReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else if let Some(id) = &report.id {
        println!(
            "snapshot {id}: uploaded {} objects, {} bytes ({}; db {} bytes)",
            report.uploaded_objects,
            report.uploaded_bytes,
            if report.base {
                "base".to_string()
            } else {
                format!("delta of {} pages", report.delta_pages)
            },
            report.db_size
        );
    } else {
        println!("unchanged: nothing uploaded (db {} bytes)", report.db_size);
    }
    Ok(())
}

/// `snapshots`' table.
pub fn snapshots(list: &[SnapshotInfo], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let bytes = |b: Option<u64>| {
        b.map(|b| indicatif::HumanBytes(b).to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<30} {:<24} {:<11} {:>11} {:>11} {:>11}  WRITER",
        "ID", "TIME", "KIND", "DB SIZE", "STORED", "NEW"
    );
    for s in list {
        let time = s
            .created
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        // `host#epoch`: which process (and lease term) wrote it.
        let writer = match (&s.host, s.epoch) {
            (Some(h), Some(e)) => format!("{h}#{e}"),
            (None, Some(e)) => format!("#{e}"),
            (Some(h), None) => h.clone(),
            (None, None) => "-".into(),
        };
        println!(
            "{:<30} {:<24} {:<11} {:>11} {:>11} {:>11}  {writer}",
            s.id,
            time,
            s.kind.unwrap_or("unreadable"),
            bytes(s.db_size),
            bytes(s.stored_bytes),
            bytes(s.new_bytes)
        );
        if let Some(e) = &s.error {
            println!("  error: {e}");
        }
    }
    Ok(())
}

/// `restore`'s result. Without `--json` only a dry run prints (on stdout);
/// a restore's own lines are its logs on stderr, as before.
pub fn restored(outcome: &RestoreOutcome, json: bool) -> anyhow::Result<()> {
    let skipped = |why: &str| serde_json::json!({"outcome": "skipped", "reason": why});
    let value = match outcome {
        RestoreOutcome::Restored(r) => {
            let mut v = serde_json::to_value(r)?;
            v["outcome"] = "restored".into();
            v
        }
        RestoreOutcome::Planned(p) => {
            if !json {
                if let Some(by) = &p.fenced_by {
                    println!(
                        "snapshot {} was written by a fenced writer ({by} had taken the lease over)",
                        p.snapshot
                    );
                }
                println!(
                    "would restore snapshot {} ({}, {} on base {}) to {}{}: {} objects, {} to download, db {}",
                    p.snapshot,
                    p.created
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    if p.deltas == 0 {
                        "no delta".to_string()
                    } else {
                        format!("{} deltas", p.deltas)
                    },
                    p.base,
                    p.target.display(),
                    if p.replaces {
                        " (replacing the database there)"
                    } else {
                        ""
                    },
                    p.objects,
                    indicatif::HumanBytes(p.download_bytes),
                    indicatif::HumanBytes(p.db_size)
                );
                return Ok(());
            }
            let mut v = serde_json::to_value(p)?;
            v["outcome"] = "dry-run".into();
            v
        }
        RestoreOutcome::SkippedDbExists => skipped("db-exists"),
        RestoreOutcome::SkippedNoReplica => skipped("no-replica"),
    };
    if json {
        println!("{}", serde_json::to_string(&value)?);
    }
    Ok(())
}

/// `verify`'s result for one snapshot.
pub fn verified(report: &RestoreReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!(
            "ok {} ({} objects, {} downloaded, image {})",
            report.snapshot,
            report.stats.objects,
            indicatif::HumanBytes(report.stats.bytes),
            indicatif::HumanBytes(report.stats.db_size)
        );
    }
    Ok(())
}

/// `verify --all`'s result, a line (or JSON row) per snapshot.
pub fn verified_all(
    results: &[(String, Result<RestoreReport, Error>)],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|(id, r)| match r {
                Ok(rep) => serde_json::json!({"snapshot": id, "ok": true, "report": rep}),
                Err(e) => {
                    serde_json::json!({"snapshot": id, "ok": false, "error": e.to_string()})
                }
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for (id, r) in results {
            match r {
                Ok(rep) => println!(
                    "ok     {id} (image {})",
                    indicatif::HumanBytes(rep.stats.db_size)
                ),
                Err(e) => println!("FAILED {id}: {e}"),
            }
        }
    }
    Ok(())
}

/// `prune`'s decisions and what was (or would be) deleted.
pub fn pruned(report: &PruneReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let verb = if report.dry_run {
        "would forget"
    } else {
        "forgot"
    };
    for d in &report.snapshots {
        let what = if d.keep {
            format!("keep    ({})", d.reasons.join(", "))
        } else if report.kept_as_base.contains(&d.id) {
            "keep    (base of a kept snapshot)".to_string()
        } else {
            "forget".to_string()
        };
        println!(
            "{}  {}  {what}",
            d.id,
            d.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    println!(
        "{verb} {} snapshot(s); {} {} unreferenced object(s), {} bytes; {} unreferenced object(s) younger than the grace period kept",
        report.forgotten.len(),
        if report.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        report.deleted_objects.len(),
        report.deleted_bytes,
        report.young_unreferenced
    );
    Ok(())
}

/// The restore's download bar: the engine's [`Progress`] drawn by
/// indicatif, counting stored bytes.
#[derive(Debug)]
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A byte bar on stderr if it is a terminal (never into a log file or a
/// pipe), else nothing.
pub fn download_bar() -> Arc<dyn Progress> {
    if !std::io::stderr().is_terminal() {
        return mailsafe::progress::none();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    Arc::new(Bar(bar))
}
