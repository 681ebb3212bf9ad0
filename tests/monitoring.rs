//! Checks the monitoring examples in `k8s-examples/monitoring/` offline,
//! against the real tools and the real binary:
//!
//! - `prometheusrule.yaml`'s rules pass `promtool check rules`, and its unit
//!   tests (`prometheusrule.test.yaml`: series over time, the alerts that
//!   must and must not fire) pass `promtool test rules`;
//! - every query of `grafana-dashboard.json` is valid PromQL (promtool
//!   checks them as recording rules);
//! - every `mailsafe_*` metric either file names is one that a running
//!   `mailsafe watch` exports on `/metrics`, so a renamed metric breaks this
//!   test instead of a team's dashboard.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s-examples/monitoring")
}

/// Runs promtool (installed by scripts/setup.sh from Debian's prometheus)
/// in `dir`; fails the test with its output unless it passes.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (run scripts/setup.sh: Debian package prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// YAML to JSON through PyYAML (as tests/k8s_manifests.rs does).
fn yaml_to_json(path: &Path) -> serde_json::Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("python3 with PyYAML");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every `mailsafe_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("mailsafe_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric names a running `mailsafe watch` exports.
fn exported_metrics() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA journal_mode=wal; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let port = common::free_port();
    let replica = format!("file://{}", dir.path().join("replica").display());
    let mut watch = common::mailsafe()
        .args(["watch", "--replica", &replica, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--db")
        .arg(&db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let got = std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(|mut s| {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                write!(
                    s,
                    "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .ok()?;
                let mut body = String::new();
                s.read_to_string(&mut body).ok()?;
                body.contains("mailsafe_").then_some(body)
            });
        if let Some(t) = got {
            break t;
        }
        assert!(watch.try_wait().unwrap().is_none(), "watch exited");
        assert!(Instant::now() < deadline, "watch's /metrics never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = watch.kill();
    let _ = watch.wait();
    text.lines()
        .filter(|l| l.starts_with("# TYPE "))
        .map(|l| l.split_whitespace().nth(2).unwrap().to_string())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let rule = yaml_to_json(&monitoring_dir().join("prometheusrule.yaml"));
    assert_eq!(rule["kind"], "PrometheusRule");
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_json::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        monitoring_dir().join("prometheusrule.test.yaml"),
        dir.path().join("prometheusrule.test.yaml"),
    )
    .unwrap();
    let checked = promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    promtool(dir.path(), &["test", "rules", "prometheusrule.test.yaml"]);
    // Every alert has a unit test that expects it to fire.
    let tests = std::fs::read_to_string(dir.path().join("prometheusrule.test.yaml")).unwrap();
    for r in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let name = r["alert"].as_str().unwrap();
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            )),
            "no test expects {name} to fire"
        );
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let text = std::fs::read_to_string(monitoring_dir().join("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut rules = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            rules.push(serde_json::json!({
                "record": format!("dashboard:panel{}:{}", p["id"], t["refId"].as_str().unwrap()),
                "expr": expr,
            }));
        }
    }
    assert!(rules.len() >= 10, "{} queries", rules.len());
    let dir = tempfile::tempdir().unwrap();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(dir.path().join("dashboard.yaml"), file.to_string()).unwrap();
    promtool(dir.path(), &["check", "rules", "dashboard.yaml"]);
}

#[test]
fn every_metric_in_the_examples_is_exported_by_watch() {
    let exported = exported_metrics();
    assert!(
        exported.contains("mailsafe_replication_lag_seconds"),
        "{exported:?}"
    );
    for file in ["prometheusrule.yaml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(monitoring_dir().join(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics watch does not export: {unknown:?}"
        );
    }
}
