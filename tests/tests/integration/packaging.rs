//! The deployment files under `deploy/` against the real tools and the real daemon: the systemd
//! unit passes `systemd-analyze verify`, the Kubernetes manifests pass `kubernetes-validate
//! --strict`, every variable they set is one of the daemon's settings and the daemon accepts their
//! values, and the systemd unit, the `DaemonSet` and the Dockerfile grant the same capabilities.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use metadataproxy_tests::{Daemon, NOWHERE, required_path};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every environment variable name in the README's configuration reference (itself kept equal to
/// the daemon's settings table by a unit test).
fn settings() -> Vec<String> {
    let readme = read("README.md");
    let table = readme
        .split("<!-- settings:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- settings:end -->").next())
        .expect("README has the settings markers");
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// `KEY=value` lines of an environment file (comments and blanks skipped).
fn env_file(rel: &str) -> BTreeMap<String, String> {
    read(rel)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{rel}: not KEY=value: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The values of `key=` lines in the `[Service]` section of the unit (all of them, in order).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// The capabilities the systemd unit grants, without the `CAP_` prefix, sorted.
fn unit_capabilities() -> Vec<String> {
    let unit = read("deploy/systemd/metadataproxy.service");
    let ambient = unit_values(&unit, "AmbientCapabilities");
    let bounding = unit_values(&unit, "CapabilityBoundingSet");
    assert_eq!(ambient, bounding, "ambient and bounding sets differ");
    assert_eq!(ambient.len(), 1, "one AmbientCapabilities line");
    let mut caps: Vec<String> = ambient[0]
        .split_whitespace()
        .map(|c| c.strip_prefix("CAP_").unwrap_or(c).to_owned())
        .collect();
    caps.sort();
    caps
}

/// The Kubernetes manifest as JSON documents (`PyYAML` from the test virtualenv parses it).
fn manifest_documents() -> Vec<serde_json::Value> {
    let python = required_path("METADATAPROXY_VENV").join("bin/python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(repo().join("deploy/kubernetes/metadataproxy.yaml"))
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

fn daemonset_container(docs: &[serde_json::Value]) -> serde_json::Value {
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    ds["spec"]["template"]["spec"]["containers"][0].clone()
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_without_a_warning() {
    let bin = required_path("METADATAPROXY_BIN");
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = read("deploy/systemd/metadataproxy.service").replace(
        "ExecStart=/usr/local/bin/metadataproxy",
        &format!("ExecStart={}", bin.display()),
    );
    assert!(unit.contains(&format!("ExecStart={}", bin.display())));
    let path = dir.path().join("metadataproxy.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // Unknown keys, bad values and missing executables are printed, not failed: none may appear.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("metadataproxy.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze complained:\n{stderr}"
    );
}

#[test]
fn a_mistake_in_a_unit_is_what_the_verify_test_would_catch() {
    // The check above relies on systemd-analyze naming the unit in its complaints: prove it does.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metadataproxy.service");
    let broken = read("deploy/systemd/metadataproxy.service")
        .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    std::fs::write(&path, broken).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("metadataproxy.service") && stderr.contains("NoNewPrivilege"),
        "systemd-analyze did not report the misspelt key:\n{stderr}"
    );
}

#[test]
fn the_kubernetes_manifests_validate_strictly_against_the_api_schemas() {
    let validate = required_path("METADATAPROXY_VENV").join("bin/kubernetes-validate");
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    for file in files {
        let out = Command::new(&validate)
            .args(["--strict", "-k", "1.30.0"])
            .arg(&file)
            .output()
            .expect("running kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "{}: {text}",
            file.display()
        );
        assert!(text.contains("passed"), "{}: {text}", file.display());
    }
}

#[test]
fn the_daemonset_runs_with_the_units_capabilities_host_pids_and_no_api_token() {
    let docs = manifest_documents();
    let container = daemonset_container(&docs);
    let sc = &container["securityContext"];
    let mut added: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().expect("string").to_owned())
        .collect();
    added.sort();
    assert_eq!(added, unit_capabilities());
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("ds");
    let pod = &ds["spec"]["template"]["spec"];
    // The eBPF program exempts the daemon by its host process id, and callers reach it on the node.
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| m["mountPath"].as_str().expect("mountPath"))
        .collect();
    for needed in ["/sys/fs/bpf", "/sys/fs/cgroup"] {
        assert!(mounts.contains(&needed), "{needed} not mounted: {mounts:?}");
    }
}

#[test]
fn the_dockerfile_documents_the_units_capabilities() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let mut caps: Vec<String> = dockerfile
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--cap-add")
        .map(|w| w[1].to_owned())
        .collect();
    caps.sort();
    assert_eq!(caps, unit_capabilities());
    for flag in ["--network host", "--pid host", "/sys/fs/bpf:/sys/fs/bpf"] {
        assert!(
            dockerfile.contains(flag),
            "Dockerfile run line lacks {flag}"
        );
    }
}

#[test]
fn every_variable_the_deploy_files_set_is_a_setting() {
    let known = settings();
    assert!(known.len() > 30, "settings table not found: {known:?}");
    let mut used: Vec<(String, &str)> = env_file("deploy/systemd/metadataproxy.env")
        .into_keys()
        .map(|k| (k, "deploy/systemd/metadataproxy.env"))
        .collect();
    let container = daemonset_container(&manifest_documents());
    for var in container["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("name").to_owned();
        // NODE_IP only feeds `$(NODE_IP)` in the other values.
        if name != "NODE_IP" {
            used.push((name, "deploy/kubernetes/metadataproxy.yaml"));
        }
    }
    for (name, file) in &used {
        assert!(
            known.contains(name),
            "{file} sets {name}, which is not a setting"
        );
    }
}

#[tokio::test]
async fn the_daemon_accepts_the_systemd_environment_file() {
    // Every value as shipped, but on loopback, with no upstream and without eBPF (this test is not
    // privileged; tests/privileged/tests/least_privilege.rs runs the redirect as the unit would).
    let mut builder = Daemon::builder();
    for (k, v) in env_file("deploy/systemd/metadataproxy.env") {
        builder = builder.env(&k, v);
    }
    let mut daemon = builder
        .env("HOST", "127.0.0.1")
        .without("PORT")
        .without("EBPF_TARGET")
        .env("METADATA_URL", NOWHERE)
        .env("EBPF", "off")
        .start()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(daemon.is_running(), "{}", daemon.logs());
}
