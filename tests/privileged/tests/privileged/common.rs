//! The per-test world shared by the privileged tests and the benchmark.
#![allow(
    dead_code,
    reason = "the privileged tests and the benchmark each use a different part"
)]

use std::collections::BTreeMap;

use metadataproxy_privileged_tests::{Bpffs, Bridge, Cgroup, Daemon, Standin};
use metadataproxy_tests::free_port;

pub const IMDS: &str = "http://169.254.169.254";
pub const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

/// The per-test world: stand-in IMDS, a test cgroup tree, a private bpffs, a port.
pub struct World {
    // Field order is drop order: the daemon's cgroup before the root cgroup.
    pub daemon_cg: Cgroup,
    pub root: Cgroup,
    pub bpffs: Bpffs,
    pub standin: Standin,
    /// Network namespaces hang off it; their default route leads to the host, where the default
    /// redirect target (169.254.170.45 on `lo`) is.
    pub bridge: Bridge,
    pub port: u16,
    pub mapping: tempfile::NamedTempFile,
}

impl World {
    pub fn new(mapping: &serde_json::Value) -> Self {
        let standin = Standin::start();
        let root = Cgroup::new(&format!("/mp-test-{}", std::process::id()));
        let daemon_cg = root.child("daemon");
        let mapping_file = tempfile::NamedTempFile::new().expect("mapping file");
        std::fs::write(mapping_file.path(), mapping.to_string()).expect("write mapping");
        Self {
            daemon_cg,
            root,
            bpffs: Bpffs::new(),
            standin,
            bridge: Bridge::new(),
            port: free_port(),
            mapping: mapping_file,
        }
    }

    pub fn vars(&self) -> BTreeMap<String, String> {
        [
            ("HOST", "0.0.0.0".to_owned()),
            ("PORT", self.port.to_string()),
            ("MOCK_API", "true".to_owned()),
            ("METADATA_URL", "http://127.0.0.1:9".to_owned()),
            (
                "DEFAULT_ACCOUNT_ID",
                metadataproxy_tests::ACCOUNT.to_owned(),
            ),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9".to_owned()),
            ("AWS_ENDPOINT_URL_IAM", "http://127.0.0.1:9".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            (
                "ROLE_MAPPING_FILE",
                self.mapping.path().display().to_string(),
            ),
            ("EBPF", "required".to_owned()),
            ("EBPF_CGROUPS", self.root.rel.clone()),
            ("EBPF_PIN_DIR", self.bpffs.pin_dir().display().to_string()),
            ("LOG_LEVEL", "metadataproxy=debug".to_owned()),
            // Not under test here; its fixed default port must not tie tests to one another.
            ("ADMIN_LISTEN", "off".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    pub fn daemon(&self, extra: &[(&str, &str)]) -> Daemon {
        self.daemon_via("", extra)
    }

    /// [`World::daemon`], run through `wrapper` (e.g. `unshare --pid --fork`).
    pub fn daemon_via(&self, wrapper: &str, extra: &[(&str, &str)]) -> Daemon {
        let mut vars = self.vars();
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        Daemon::start_via(&self.daemon_cg, &vars, self.port, wrapper)
    }
}

/// Test cgroup paths are known before the world exists (they are named after the process).
pub fn rel(name: &str) -> String {
    format!("/mp-test-{}/{name}", std::process::id())
}

pub fn mapping_by_rel(pairs: &[(&str, &str)]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(name, role)| {
            (
                format!("cgroup:{}", rel(name)),
                serde_json::Value::from(*role),
            )
        })
        .collect();
    serde_json::Value::Object(map)
}
