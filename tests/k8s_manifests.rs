//! Checks the Kubernetes examples in `k8s-examples/` and the Dockerfile
//! offline, the way a cluster would see them:
//!
//! - every manifest, and the output of `kubectl kustomize` for every variant
//!   the kustomization offers, passes `kubernetes-validate --strict` (unknown
//!   fields rejected, every kind must have a schema);
//! - every container's args and env vars exist in the real binary's `--help`,
//!   so a renamed flag breaks this test instead of a user's pod;
//! - the pod lifecycle is the one that loses no mail: restore first, `watch`
//!   as a native sidecar, Recreate, a grace period above the shutdown
//!   timeouts, probes on the right paths and ports.
//!
//! YAML is turned into JSON by PyYAML (a dependency of kubernetes-validate,
//! which `scripts/setup.sh` installs), so the checks below work on
//! `serde_json::Value`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The manifests users apply directly.
const MANIFESTS: [&str; 4] = [
    "deployment.yaml",
    "single-container.yaml",
    "cronjob.yaml",
    "config-file.yaml",
];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s-examples")
}

/// Runs `kubernetes-validate --strict` on `path` (or on `stdin` when given,
/// with path `-`) and returns its combined output, failing the test when it
/// does not pass or when any resource could not be checked against a schema
/// (kubernetes-validate only warns about unknown kinds and exits 0).
fn validate_strict(path: &str, stdin: Option<&[u8]>) -> String {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.args(["--strict", path])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("kubernetes-validate not found: run scripts/setup.sh");
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict {path} failed:\n{text}"
    );
    assert!(
        !text.contains("Couldn't find schema"),
        "{path}: a resource was not checked against any schema:\n{text}"
    );
    text
}

/// Every YAML document of `path` (null documents dropped), as JSON.
fn load_yaml(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; \
             json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("python3 not found");
    assert!(
        out.status.success(),
        "cannot parse {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(docs) => docs,
        other => panic!(
            "{}: expected a list of documents, got {other}",
            path.display()
        ),
    }
}

fn name_of(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The pod template of a workload, if `doc` is one.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
            Some(&doc["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn str_list(v: &Value) -> Vec<String> {
    list(v)
        .iter()
        .map(|s| s.as_str().expect("expected a string").to_owned())
        .collect()
}

/// All containers of a pod spec: init containers (including sidecars) first.
fn containers(spec: &Value) -> Vec<&Value> {
    list(&spec["initContainers"])
        .iter()
        .chain(list(&spec["containers"]))
        .collect()
}

fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    containers(spec)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container named {name}"))
}

/// `--help` of one mailsafe subcommand, from the binary under test. The
/// environment is cleared of our variables so the help shows `[env: NAME=]`
/// without values.
fn help(subcommand: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailsafe"));
    cmd.args([subcommand, "--help"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("MAILSAFE_") || k.starts_with("MP_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "`mailsafe {subcommand} --help` failed: is `{subcommand}` a subcommand?\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of env var `name` as the container sets it directly, or through
/// a ConfigMap of the same file.
fn env_value(c: &Value, docs: &[Value], name: &str) -> Option<String> {
    for e in list(&c["env"]) {
        if e["name"] == name {
            return e["value"].as_str().map(str::to_owned);
        }
    }
    for from in list(&c["envFrom"]) {
        let Some(cm) = from["configMapRef"]["name"].as_str() else {
            continue;
        };
        let found = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm)
            .and_then(|d| d["data"][name].as_str());
        if let Some(v) = found {
            return Some(v.to_owned());
        }
    }
    None
}

fn duration_env(c: &Value, docs: &[Value], name: &str, default: &str) -> Duration {
    let v = env_value(c, docs, name).unwrap_or_else(|| default.to_owned());
    humantime::parse_duration(&v).unwrap_or_else(|e| panic!("{name}={v}: {e}"))
}

/// The value of `--flag=value` / `--flag value` in `args`.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&prefix) {
            Some(v.to_owned())
        } else if a == flag {
            args.get(i + 1).cloned()
        } else {
            None
        }
    })
}

fn http_probe(c: &Value, probe: &str) -> (String, Value) {
    let get = &c[probe]["httpGet"];
    assert!(
        get.is_object(),
        "container {} has no {probe} with httpGet",
        c["name"]
    );
    (
        get["path"].as_str().unwrap().to_owned(),
        get["port"].clone(),
    )
}

/// Resolves a probe or Service port (a number or a container port name) to
/// the container port number.
fn port_number(c: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().unwrap();
    list(&c["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("container {} has no port named {name}", c["name"]))["containerPort"]
        .as_u64()
        .unwrap()
}

fn listen_port(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    for file in MANIFESTS {
        let path = examples_dir().join(file);
        let text = validate_strict(path.to_str().unwrap(), None);
        for doc in load_yaml(&path) {
            let resource = format!(
                "passed for resource {}/{}",
                doc["kind"].as_str().unwrap().to_lowercase(),
                doc["metadata"]["name"].as_str().unwrap()
            );
            assert!(
                text.contains(&resource),
                "{file}: no `{resource}` in:\n{text}"
            );
        }
    }
}

/// Renders the kustomization as shipped, and once per commented-out
/// resource line enabled (the variants the README tells users to pick), and
/// validates each rendering.
#[test]
fn every_kustomize_variant_renders_and_validates() {
    let kustomization = std::fs::read_to_string(examples_dir().join("kustomization.yaml")).unwrap();
    let commented: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# - "))
        .filter(|r| r.ends_with(".yaml"))
        .collect();
    assert!(
        commented.contains(&"single-container.yaml") && commented.contains(&"cronjob.yaml"),
        "kustomization.yaml should offer single-container.yaml and cronjob.yaml"
    );

    let mut variants = vec![("as shipped".to_owned(), kustomization.clone())];
    for r in &commented {
        // single-container.yaml replaces deployment.yaml (same resource
        // names); cronjob.yaml comes on top of it.
        let mut k = kustomization.replace(&format!("# - {r}"), &format!("- {r}"));
        if *r == "single-container.yaml" {
            k = k.replace("  - deployment.yaml\n", "");
        }
        variants.push((format!("with {r}"), k));
    }

    for (label, k) in variants {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(examples_dir()).unwrap() {
            let p = entry.unwrap().path();
            // monitoring/ is no resource of the kustomization.
            if !p.is_file() {
                continue;
            }
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        std::fs::write(dir.path().join("kustomization.yaml"), &k).unwrap();
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir.path())
            .output()
            .expect("kubectl not found: run scripts/setup.sh");
        assert!(
            out.status.success(),
            "kubectl kustomize ({label}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout).unwrap();
        validate_strict("-", Some(rendered.as_bytes()));
        std::fs::write(dir.path().join("rendered.yaml"), &rendered).unwrap();
        let docs = load_yaml(&dir.path().join("rendered.yaml"));
        assert!(docs.iter().any(|d| d["kind"] == "Deployment"), "{label}");
        for d in &docs {
            assert_eq!(
                d["metadata"]["namespace"],
                "mailsafe",
                "{label}: {}",
                name_of(d)
            );
            if let Some(spec) = pod_spec(d) {
                for c in containers(spec) {
                    assert_eq!(
                        c["image"], "registry.example.com/mailsafe:0.1.0",
                        "{label}: the images: override must reach {}",
                        c["name"]
                    );
                }
            }
        }
    }
}

/// Every container runs the image's entrypoint (the mailsafe binary) with a
/// real subcommand, real flags and real env vars.
#[test]
fn container_args_and_env_match_the_cli() {
    for file in MANIFESTS {
        let docs = load_yaml(&examples_dir().join(file));
        // ConfigMap keys the file defines, and those some container uses.
        let mut defined = BTreeSet::new();
        let mut used = BTreeSet::new();
        // A ConfigMap mounted as files (a config file) is no environment.
        let mounted: BTreeSet<&str> = docs
            .iter()
            .filter_map(pod_spec)
            .flat_map(|spec| list(&spec["volumes"]))
            .filter_map(|v| v["configMap"]["name"].as_str())
            .collect();
        for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
            if mounted.contains(d["metadata"]["name"].as_str().unwrap()) {
                continue;
            }
            defined.extend(d["data"].as_object().unwrap().keys().cloned());
        }
        for d in &docs {
            let Some(spec) = pod_spec(d) else { continue };
            for c in containers(spec) {
                let what = format!("{file} {} container {}", name_of(d), c["name"]);
                assert!(
                    c["command"].is_null(),
                    "{what}: use args, the image's entrypoint is mailsafe"
                );
                let args = str_list(&c["args"]);
                let sub = args.first().unwrap_or_else(|| panic!("{what}: no args"));
                let help = help(sub);
                for a in &args[1..] {
                    if let Some(flag) = a.strip_prefix("--") {
                        let flag = flag.split('=').next().unwrap();
                        assert!(
                            help.contains(&format!("--{flag}")),
                            "{what}: `mailsafe {sub}` has no flag --{flag}"
                        );
                    }
                }
                for e in list(&c["env"]) {
                    let name = e["name"].as_str().unwrap();
                    if name.starts_with("MAILSAFE_") || name.starts_with("MP_") {
                        assert!(
                            help.contains(&format!("[env: {name}=")),
                            "{what}: `mailsafe {sub}` does not read {name}"
                        );
                    }
                }
                let cms: Vec<&str> = list(&c["envFrom"])
                    .iter()
                    .filter_map(|f| f["configMapRef"]["name"].as_str())
                    .collect();
                for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
                    if !cms.contains(&d["metadata"]["name"].as_str().unwrap()) {
                        continue;
                    }
                    for key in d["data"].as_object().unwrap().keys() {
                        if help.contains(&format!("[env: {key}=")) {
                            used.insert(key.clone());
                        }
                    }
                }
            }
        }
        for key in defined.difference(&used) {
            // AWS_* variables are read by the AWS SDK, not by our flags.
            assert!(
                key.starts_with("AWS_"),
                "{file}: ConfigMap key {key} is read by no container's subcommand"
            );
        }
    }
}

#[test]
fn sidecar_deployment_shuts_down_in_the_order_that_loses_no_mail() {
    let docs = load_yaml(&examples_dir().join("deployment.yaml"));
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let spec = pod_spec(deploy).unwrap();

    // Restore runs to completion first, then the sidecar starts.
    let init = list(&spec["initContainers"]);
    assert_eq!(init.len(), 2);
    let restore = &init[0];
    let restore_args = str_list(&restore["args"]);
    assert_eq!(restore_args[0], "restore");
    assert!(restore_args.contains(&"--if-db-not-exists".to_owned()));
    assert!(restore_args.contains(&"--if-replica-exists".to_owned()));
    assert!(!restore_args.contains(&"--force".to_owned()));
    assert!(
        restore["restartPolicy"].is_null(),
        "restore must be a plain init container"
    );

    let watch = &init[1];
    assert_eq!(str_list(&watch["args"])[0], "watch");
    assert_eq!(
        watch["restartPolicy"], "Always",
        "watch must be a native sidecar so it outlives the catcher"
    );

    let catcher = container(spec, "catcher");
    assert_eq!(list(&spec["containers"]).len(), 1);
    let catcher_args = str_list(&catcher["args"]);
    assert_eq!(catcher_args[0], "serve");
    assert!(
        flag_value(&catcher_args, "--replica").is_none()
            && env_value(catcher, &docs, "MAILSAFE_REPLICA").is_none(),
        "the catcher must not replicate too: one writer per prefix"
    );

    // All three see the same db on the same emptyDir.
    let db = env_value(catcher, &docs, "MP_DATABASE").expect("catcher db path");
    for c in [restore, watch] {
        assert_eq!(
            env_value(c, &docs, "MAILSAFE_DB").as_deref(),
            Some(db.as_str())
        );
    }
    let dir = Path::new(&db).parent().unwrap().to_str().unwrap();
    for c in [restore, watch, catcher] {
        let m = list(&c["volumeMounts"])
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{} does not mount {dir}", c["name"]));
        let vol = list(&spec["volumes"])
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        assert!(vol["emptyDir"].is_object(), "{dir} should be an emptyDir");
    }

    // The grace period covers the catcher's shutdown, then the final snapshot.
    let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap());
    let serve_timeout = duration_env(catcher, &docs, "MAILSAFE_SHUTDOWN_TIMEOUT", "25s");
    let watch_timeout = duration_env(watch, &docs, "MAILSAFE_SHUTDOWN_TIMEOUT", "25s");
    assert!(
        grace > serve_timeout + watch_timeout,
        "grace {grace:?} <= {serve_timeout:?} + {watch_timeout:?}"
    );

    // Probes: catcher /livez + /readyz on its HTTP port, sidecar /healthz on
    // the address `watch --listen` serves.
    let http = listen_port(&flag_value(&catcher_args, "--listen").unwrap());
    let (path, port) = http_probe(catcher, "readinessProbe");
    assert_eq!(
        (path.as_str(), port_number(catcher, &port)),
        ("/readyz", http)
    );
    let (path, port) = http_probe(catcher, "livenessProbe");
    assert_eq!(
        (path.as_str(), port_number(catcher, &port)),
        ("/livez", http)
    );
    let listen = flag_value(&str_list(&watch["args"]), "--listen")
        .or_else(|| env_value(watch, &docs, "MAILSAFE_LISTEN"))
        .expect("watch needs --listen for /healthz");
    let (path, port) = http_probe(watch, "livenessProbe");
    assert_eq!(
        (path.as_str(), port_number(watch, &port)),
        ("/healthz", listen_port(&listen))
    );

    // Credentials reach exactly the containers that talk to S3.
    for c in [restore, watch] {
        assert!(
            list(&c["envFrom"])
                .iter()
                .any(|f| f["secretRef"]["name"] == "mailsafe-s3"),
            "{} needs the S3 Secret",
            c["name"]
        );
    }
    assert!(
        catcher["envFrom"].is_null(),
        "the catcher needs no S3 access"
    );
    assert_non_root(spec);
    assert_service_reaches(&docs, catcher, &["smtp", "http"]);
}

/// config-file.yaml: one `watch --config` sidecar for two catchers' dbs,
/// two replicas each. The file the ConfigMap mounts is checked by the real
/// binary (`watch --check-config`, with the container's variables); its dbs
/// are exactly the catchers' and each is restored first.
#[test]
fn config_file_pod_backs_up_two_dbs_to_two_replicas_each() {
    let docs = load_yaml(&examples_dir().join("config-file.yaml"));
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let spec = pod_spec(deploy).unwrap();
    let watch = container(spec, "watch");
    assert_eq!(str_list(&watch["args"]), ["watch"]);
    assert_eq!(watch["restartPolicy"], "Always", "a native sidecar");

    // The config file as the sidecar sees it.
    let path = env_value(watch, &docs, "MAILSAFE_CONFIG").expect("MAILSAFE_CONFIG");
    let (dir, name) = path.rsplit_once('/').unwrap();
    let mount = list(&watch["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("watch does not mount {dir}"));
    let volume = list(&spec["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm = volume["configMap"]["name"].as_str().unwrap();
    let text = config_map_entry(&docs, cm, name);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(name);
    std::fs::write(&file, &text).unwrap();
    let listed = check_config(watch, &file);
    let pairs: Vec<Vec<&str>> = listed.lines().map(|l| l.split('\t').collect()).collect();
    let dbs: BTreeSet<&str> = pairs.iter().map(|p| p[0]).collect();
    assert_eq!(pairs.len(), 4, "two dbs x two replicas:\n{listed}");
    assert_eq!(dbs.len(), 2, "{listed}");
    for db in &dbs {
        let urls: BTreeSet<&str> = pairs.iter().filter(|p| p[0] == *db).map(|p| p[2]).collect();
        assert_eq!(urls.len(), 2, "{db}: two distinct replicas:\n{listed}");
    }

    // The dbs are the catchers', each restored by an init container first.
    let catchers: BTreeSet<String> = list(&spec["containers"])
        .iter()
        .map(|c| env_value(c, &docs, "MP_DATABASE").expect("catcher db"))
        .collect();
    assert_eq!(
        catchers.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        dbs
    );
    let init = list(&spec["initContainers"]);
    let restored: BTreeSet<String> = init
        .iter()
        .filter(|c| str_list(&c["args"])[0] == "restore")
        .map(|c| {
            let args = str_list(&c["args"]);
            assert!(args.contains(&"--if-db-not-exists".to_owned()));
            assert!(args.contains(&"--if-replica-exists".to_owned()));
            assert_eq!(
                env_value(c, &docs, "MAILSAFE_CONFIG").as_deref(),
                Some(path.as_str())
            );
            flag_value(&args, "--db").expect("restore --db")
        })
        .collect();
    assert_eq!(restored, catchers);
    assert_eq!(
        str_list(&init.last().unwrap()["args"])[0],
        "watch",
        "restores run before the sidecar starts"
    );

    let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap());
    let watch_timeout = duration_env(watch, &docs, "MAILSAFE_SHUTDOWN_TIMEOUT", "25s");
    for c in list(&spec["containers"]) {
        let serve_timeout = duration_env(c, &docs, "MAILSAFE_SHUTDOWN_TIMEOUT", "25s");
        assert!(grace > serve_timeout + watch_timeout);
    }
    let (path, port) = http_probe(watch, "livenessProbe");
    assert_eq!(path, "/healthz");
    assert_eq!(port_number(watch, &port), 9090);
    assert!(text.contains("listen: 0.0.0.0:9090"), "{text}");
    assert_non_root(spec);
}

/// The text of `key` in the ConfigMap named `cm`.
fn config_map_entry(docs: &[Value], cm: &str, key: &str) -> String {
    docs.iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm)
        .and_then(|d| d["data"][key].as_str())
        .unwrap_or_else(|| panic!("ConfigMap {cm} has no {key}"))
        .to_string()
}

/// `watch --check-config --config FILE` of the real binary with the
/// variables `watch` (a container) sets; its stdout (it must succeed).
fn check_config(watch: &Value, file: &Path) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailsafe"));
    cmd.args(["watch", "--check-config", "--config"]).arg(file);
    for e in list(&watch["env"]) {
        if let Some(v) = e["value"].as_str() {
            cmd.env(e["name"].as_str().unwrap(), v);
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// config-file.yaml's `mailsafe-dir.yml`: the same pod with one `dir`
/// entry instead of the list. With `/data` a temp dir holding the
/// catchers' two dbs (open in WAL mode, so their `-wal`/`-shm` files are
/// there too), the real binary's `--check-config` finds exactly the
/// catchers' dbs, each with the two replicas, every URL distinct and
/// ending in the db's file name.
#[test]
fn config_file_dir_variant_finds_the_catchers_dbs() {
    let docs = load_yaml(&examples_dir().join("config-file.yaml"));
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let spec = pod_spec(deploy).unwrap();
    let watch = container(spec, "watch");
    let text = config_map_entry(&docs, "mailsafe-config", "mailsafe-dir.yml");
    assert!(text.contains("- dir: /data\n"), "{text}");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let catchers: BTreeSet<PathBuf> = list(&spec["containers"])
        .iter()
        .map(|c| {
            let db = env_value(c, &docs, "MP_DATABASE").expect("catcher db");
            data.join(Path::new(&db).strip_prefix("/data").unwrap())
        })
        .collect();
    assert_eq!(catchers.len(), 2);
    let _open: Vec<rusqlite::Connection> = catchers
        .iter()
        .map(|p| {
            let c = rusqlite::Connection::open(p).unwrap();
            c.execute_batch(
                "PRAGMA journal_mode = wal; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
            )
            .unwrap();
            c
        })
        .collect();
    let file = tmp.path().join("mailsafe-dir.yml");
    let here = text.replace("- dir: /data\n", &format!("- dir: {}\n", data.display()));
    std::fs::write(&file, here).unwrap();
    let listed = check_config(watch, &file);
    // The entry's own lines name its pattern; the others are dbs found.
    let pairs: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split('\t').collect())
        .filter(|p: &Vec<&str>| !p[0].contains('*'))
        .collect();
    assert_eq!(pairs.len(), 4, "two dbs x two replicas:\n{listed}");
    let dbs: BTreeSet<PathBuf> = pairs.iter().map(|p| PathBuf::from(p[0])).collect();
    assert_eq!(dbs, catchers, "{listed}");
    let urls: BTreeSet<&str> = pairs.iter().map(|p| p[2]).collect();
    assert_eq!(urls.len(), 4, "every replica URL distinct:\n{listed}");
    for p in &pairs {
        let name = Path::new(p[0]).file_name().unwrap().to_str().unwrap();
        assert!(p[2].ends_with(&format!("/{name}")), "{listed}");
    }
}

#[test]
fn single_container_deployment_restores_and_flushes_itself() {
    let docs = load_yaml(&examples_dir().join("single-container.yaml"));
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let spec = pod_spec(deploy).unwrap();
    assert!(spec["initContainers"].is_null());
    let catcher = container(spec, "catcher");
    assert_eq!(str_list(&catcher["args"])[0], "serve");
    let replica = env_value(catcher, &docs, "MAILSAFE_REPLICA").expect("serve --replica");
    assert!(replica.starts_with("s3://"), "{replica}");
    let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap());
    let timeout = duration_env(catcher, &docs, "MAILSAFE_SHUTDOWN_TIMEOUT", "25s");
    assert!(
        grace > timeout,
        "grace {grace:?} <= shutdown timeout {timeout:?}"
    );
    let (path, _) = http_probe(catcher, "readinessProbe");
    assert_eq!(path, "/readyz");
    let (path, _) = http_probe(catcher, "livenessProbe");
    assert_eq!(path, "/livez");
    assert_non_root(spec);
    assert_service_reaches(&docs, catcher, &["smtp", "http"]);
}

#[test]
fn cronjobs_only_snapshot_a_db_they_can_see() {
    let docs = load_yaml(&examples_dir().join("cronjob.yaml"));
    let cronjobs: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "CronJob").collect();
    assert!(!cronjobs.is_empty());
    for cj in cronjobs {
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Forbid", "{}", name_of(cj));
        let spec = pod_spec(cj).unwrap();
        assert_non_root(spec);
        for c in containers(spec) {
            let args = str_list(&c["args"]);
            match args[0].as_str() {
                // Needs only the replica.
                "prune" => assert!(c["volumeMounts"].is_null()),
                "cron" | "snapshot" => {
                    assert!(
                        args.contains(&"--once".to_owned()) || args[0] == "snapshot",
                        "a CronJob pod runs one round and exits"
                    );
                    // The db must come from a volume another pod can also
                    // mount: never an emptyDir of its own.
                    let db = flag_value(&args, "--db").expect("--db");
                    let dir = Path::new(&db).parent().unwrap().to_str().unwrap();
                    let m = list(&c["volumeMounts"])
                        .iter()
                        .find(|m| m["mountPath"] == dir)
                        .expect("db directory is mounted");
                    let vol = list(&spec["volumes"])
                        .iter()
                        .find(|v| v["name"] == m["name"])
                        .unwrap();
                    let claim = vol["persistentVolumeClaim"]["claimName"]
                        .as_str()
                        .expect("a CronJob cannot see another pod's emptyDir: use a shared PVC");
                    let pvc = docs
                        .iter()
                        .find(|d| {
                            d["kind"] == "PersistentVolumeClaim" && d["metadata"]["name"] == claim
                        })
                        .expect("the claim is defined");
                    assert!(
                        str_list(&pvc["spec"]["accessModes"]).contains(&"ReadWriteMany".to_owned())
                    );
                    assert!(
                        spec["affinity"]["podAffinity"].is_object(),
                        "SQLite WAL locking is node-local: pin next to the catcher"
                    );
                    // A round cut short by SIGTERM ends (and says what it
                    // did not upload) before the kubelet's SIGKILL.
                    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                    let timeout = duration_env(c, &docs, "MAILSAFE_SHUTDOWN_TIMEOUT", "25s");
                    assert!(
                        timeout < Duration::from_secs(grace),
                        "{}: shutdown timeout {timeout:?} must end before the grace period {grace} s",
                        name_of(cj)
                    );
                }
                other => panic!("unexpected subcommand {other} in {}", name_of(cj)),
            }
        }
    }
}

#[test]
fn dockerfile_is_multistage_distroless_and_non_root() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage build expected");
    let runtime = froms.last().unwrap();
    assert!(
        runtime.contains("distroless") || runtime.contains("scratch"),
        "{runtime}"
    );
    // Everything after the last FROM is the runtime stage.
    let last_from = instructions
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .unwrap();
    let stage = &instructions[last_from..];
    let user = stage
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "USER {user}"
    );
    assert!(
        stage
            .iter()
            .any(|l| l.starts_with("ENTRYPOINT [") && l.contains("mailsafe")),
        "exec-form ENTRYPOINT running mailsafe (so it gets SIGTERM as PID 1)"
    );
    assert!(
        instructions
            .iter()
            .any(|l| l.contains("cargo build") && l.contains("--locked"))
    );
    // The build needs the SQLite flags from .cargo/config.toml, which
    // `COPY . .` brings only if .dockerignore does not exclude it.
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target")
    );
    assert!(!ignore.lines().any(|l| l.trim().starts_with(".cargo")));
}

fn assert_non_root(spec: &Value) {
    let sc = &spec["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_ne!(sc["runAsUser"], 0);
    for c in containers(spec) {
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{}",
            c["name"]
        );
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{}",
            c["name"]
        );
    }
}

/// A Service in `docs` selects the pod and forwards each named port to a
/// port the container really exposes.
fn assert_service_reaches(docs: &[Value], c: &Value, ports: &[&str]) {
    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("a Service");
    for name in ports {
        let p = list(&svc["spec"]["ports"])
            .iter()
            .find(|p| p["name"] == *name)
            .unwrap_or_else(|| panic!("Service has no {name} port"));
        port_number(c, &p["targetPort"]);
    }
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "Service selector {k} does not match the pod");
    }
}

/// The image builds with `cargo build --locked`: that fails when Cargo.lock
/// is out of date with the manifests, which no other build here notices
/// (they update the lock file silently).
#[test]
fn lock_file_is_current_for_the_locked_image_build() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        // `tree` resolves for this platform only, so it needs nothing that
        // is not already downloaded.
        .args(["tree", "--locked", "--offline", "--depth=0"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Cargo.lock needs an update, so the Dockerfile's --locked build would fail:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
