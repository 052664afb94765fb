//! The host checks against made-up hosts: each missing piece gives its precise message, and its
//! verdict follows `EBPF`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::host::{self, Need, System};
use super::{Finding, Report, Verdict};

const MOUNTINFO: &str = "\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
41 30 0:37 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
51 24 0:41 / /sys/fs/bpf rw - bpf bpf rw";

/// A real `/proc/self/status` (Linux 6.18, root), its `CapEff` left to fill in.
fn status(cap_eff: &str) -> String {
    format!(
        "Name:\tmetadataproxy\nUmask:\t0022\nState:\tR (running)\nTgid:\t7086\nNgid:\t0\n\
         Pid:\t7086\nPPid:\t7084\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
         FDSize:\t256\nGroups:\t \nNStgid:\t7086\nNSpid:\t7086\nNSpgid:\t7084\nNSsid:\t24918\n\
         Kthread:\t0\nVmPeak:\t    3060 kB\nVmSize:\t    3060 kB\nVmRSS:\t    1736 kB\n\
         Threads:\t1\nSigQ:\t0/96369\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
         SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\n\
         CapInh:\t0000000000000000\nCapPrm:\t{cap_eff}\nCapEff:\t{cap_eff}\n\
         CapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n\
         Speculation_Store_Bypass:\tvulnerable\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\n\
         voluntary_ctxt_switches:\t0\nnonvoluntary_ctxt_switches:\t1\n"
    )
}

/// The host's pid namespace as `/proc/self/ns/pid` shows it.
const HOST_PIDNS: &str = "pid:[4026531836]";
/// A container's.
const OWN_PIDNS: &str = "pid:[4026532571]";

/// A host made of a few files (and links).
#[derive(Debug, Default)]
struct FakeHost {
    files: HashMap<PathBuf, String>,
    links: HashMap<PathBuf, PathBuf>,
}

impl FakeHost {
    fn with(mut self, path: &str, text: &str) -> Self {
        self.files.insert(path.into(), text.into());
        self
    }

    fn link(mut self, path: &str, target: &str) -> Self {
        self.links.insert(path.into(), target.into());
        self
    }

    fn full() -> Self {
        Self::default()
            .with("/sys/kernel/btf/vmlinux", "")
            .with(
                "/proc/sys/kernel/osrelease",
                "6.1.119-129.201.amzn2023.x86_64\n",
            )
            .link("/proc/self/ns/pid", HOST_PIDNS)
            .with("/proc/self/mountinfo", MOUNTINFO)
            .with("/proc/self/status", &status("000001ffffffffff"))
            .with("/sys/fs/cgroup/unified", "")
    }
}

impl System for FakeHost {
    fn exists(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }

    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn read_link(&self, path: &Path) -> std::io::Result<PathBuf> {
        self.links
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

#[test]
fn role_files_are_parsed_as_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let mapping = dir.path().join("mapping.json");
    std::fs::write(&mapping, r#"{"10.0.0.2": "web"}"#).unwrap();
    std::fs::write(
        &policy,
        "{\"version\": 1,\n \"rules\": [{\"match\": {\"namespce\": \"x\"}, \"allow\": [\"*\"]}]}",
    )
    .unwrap();
    let env = std::collections::HashMap::from([
        ("ROLE_MAPPING_FILE", mapping.to_str().unwrap()),
        ("ROLE_POLICY_FILE", policy.to_str().unwrap()),
    ]);
    let config = crate::config::Config::load(["metadataproxy"], &env).unwrap();
    let found = crate::doctor::role_files(&config);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].verdict, Verdict::Ok, "{:?}", found[0]);
    assert!(found[0].detail.ends_with("1 entries"), "{:?}", found[0]);
    assert_eq!(found[1].name, "role policy");
    assert_eq!(found[1].verdict, Verdict::Fail);
    assert!(
        found[1]
            .detail
            .contains("is invalid at line 2, column 32: unknown field `namespce`"),
        "{:?}",
        found[1]
    );
    std::fs::write(
        &policy,
        r#"{"version": 1, "rules": [{"match": {}, "allow": ["*"]}]}"#,
    )
    .unwrap();
    let found = crate::doctor::role_files(&config);
    assert_eq!(found[1].verdict, Verdict::Ok);
    assert!(found[1].detail.ends_with("1 rules"), "{:?}", found[1]);
    let none: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let unset = crate::config::Config::load(["metadataproxy"], &none).unwrap();
    assert!(crate::doctor::role_files(&unset).is_empty());
}

#[test]
fn a_complete_host_passes() {
    let h = FakeHost::full();
    let pins = Path::new("/sys/fs/bpf/metadataproxy");
    for f in [
        host::btf(&h, Need::Required),
        host::kernel(&h, Need::Required),
        host::cgroup2(&h, Need::Required, &["/".to_owned()]),
        host::bpffs(&h, Need::Required, pins),
        host::capabilities(&h, Need::Required),
    ] {
        assert_eq!(f.verdict, Verdict::Ok, "{f:?}");
    }
    assert_eq!(
        host::bpffs(&h, Need::Required, pins).detail,
        "EBPF_PIN_DIR /sys/fs/bpf/metadataproxy is on a bpffs (nothing pinned yet)"
    );
}

#[test]
fn missing_btf_fails_when_required_and_warns_with_auto() {
    let h = FakeHost::default();
    let f = host::btf(&h, Need::Required);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(
        f.detail,
        "/sys/kernel/btf/vmlinux is missing: the eBPF programs cannot be loaded"
    );
    assert!(f.fix.is_some());
    assert_eq!(host::btf(&h, Need::Wanted).verdict, Verdict::Warn);
    assert_eq!(
        host::btf(&h, Need::NotNeeded),
        Finding::ok("kernel BTF", "not needed (EBPF=off)")
    );
}

#[test]
fn the_kernel_must_be_5_8_or_6_10_in_a_pid_namespace_of_its_own() {
    let kernel = |release: &str, pidns: &str, need| {
        let h = FakeHost::default()
            .with("/proc/sys/kernel/osrelease", release)
            .link("/proc/self/ns/pid", pidns);
        host::kernel(&h, need)
    };
    // Amazon Linux 2023, Ubuntu 24.04 (6.8): fine where the daemon runs with the host's pids.
    for release in ["6.1.119-129.201.amzn2023.x86_64", "6.8.0-1021-aws", "5.8.0"] {
        let f = kernel(release, HOST_PIDNS, Need::Required);
        assert_eq!(f.verdict, Verdict::Ok, "{f:?}");
    }
    assert_eq!(
        kernel("6.8.0-1021-aws", HOST_PIDNS, Need::Required).detail,
        "Linux 6.8.0-1021-aws; run in the host's pid namespace, the daemon needs 5.8 or later"
    );
    // The same kernels fail for a daemon in a pid namespace of its own, and say what to do.
    let f = kernel("6.8.0-1021-aws", OWN_PIDNS, Need::Required);
    assert_eq!(f.verdict, Verdict::Fail);
    assert!(
        f.detail.starts_with(
            "Linux 6.8.0-1021-aws is older than 6.10: the daemon runs in a pid namespace of its own"
        ),
        "{}",
        f.detail
    );
    assert!(f.fix.as_deref().is_some_and(|x| x.contains("--pid host")));
    assert_eq!(
        kernel("6.8.0", OWN_PIDNS, Need::Wanted).verdict,
        Verdict::Warn
    );
    assert_eq!(
        kernel("6.10.3", OWN_PIDNS, Need::Required).verdict,
        Verdict::Ok
    );
    // Too old for either.
    let f = kernel("5.4.0-1103-aws", HOST_PIDNS, Need::Required);
    assert_eq!(
        (f.verdict, f.detail.as_str()),
        (
            Verdict::Fail,
            "Linux 5.4.0-1103-aws is older than 5.8: the programs need Linux 5.8 or later"
        )
    );
    // What cannot be read is a warning, never a pass.
    let h = FakeHost::default().with("/proc/sys/kernel/osrelease", "6.1.0");
    assert_eq!(host::kernel(&h, Need::Required).verdict, Verdict::Warn);
    assert_eq!(
        kernel("6.1.0", HOST_PIDNS, Need::NotNeeded),
        Finding::ok("kernel version", "not needed (EBPF=off)")
    );
}

#[test]
fn no_cgroup2_and_missing_ebpf_cgroups() {
    let h = FakeHost::default().with(
        "/proc/self/mountinfo",
        "24 1 254:0 / / rw - ext4 /dev/vda rw",
    );
    let f = host::cgroup2(&h, Need::Required, &["/".to_owned()]);
    assert_eq!(
        (f.verdict, f.detail.as_str()),
        (Verdict::Fail, "no cgroup2 mount in /proc/self/mountinfo")
    );
    let f = host::cgroup2(
        &FakeHost::full(),
        Need::Required,
        &["/".to_owned(), "/kubepods".to_owned()],
    );
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(
        f.detail,
        "mounted at /sys/fs/cgroup/unified, but EBPF_CGROUPS names /kubepods which does not exist there"
    );
}

#[test]
fn pin_dir_off_bpffs() {
    let f = host::bpffs(&FakeHost::full(), Need::Required, Path::new("/var/lib/mp"));
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(
        f.detail,
        "EBPF_PIN_DIR /var/lib/mp is not on a bpffs (it is on ext4)"
    );
}

#[test]
fn capabilities_name_what_is_missing() {
    // CAP_BPF (39) and CAP_NET_ADMIN (12) without CAP_PERFMON (38): the verifier refuses.
    let h = FakeHost::default().with("/proc/self/status", &status("0000008000001000"));
    let f = host::capabilities(&h, Need::Required);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(f.detail, "effective 0x8000001000 lacks CAP_PERFMON");
    // A status without its capability lines is an error, never "no capabilities" nor a pass.
    let h = FakeHost::default().with("/proc/self/status", "Name:\tmetadataproxy\n");
    let f = host::capabilities(&h, Need::Wanted);
    assert_eq!(f.verdict, Verdict::Warn);
    assert!(
        f.detail.starts_with("cannot parse /proc/self/status: "),
        "{}",
        f.detail
    );
    let f = host::capabilities(&FakeHost::default(), Need::Required);
    assert_eq!(
        (f.verdict, f.detail.as_str()),
        (
            Verdict::Fail,
            "cannot read /proc/self/status: entity not found"
        )
    );
}

#[test]
fn a_mount_table_procfs_cannot_parse_is_reported() {
    let h = FakeHost::default().with("/proc/self/mountinfo", "24 1 254:0 / /\n");
    let f = host::bpffs(&h, Need::Required, Path::new("/sys/fs/bpf"));
    assert_eq!(f.verdict, Verdict::Fail);
    assert!(
        f.detail.starts_with("cannot parse /proc/self/mountinfo: "),
        "{}",
        f.detail
    );
}

#[test]
fn report_aligns_and_counts() {
    let report = Report {
        findings: vec![
            Finding::ok("docker", "Docker 26 (API 1.45) at unix:///d"),
            Finding::new("sts", Verdict::Fail, "down").fix("start it"),
            Finding::new("bpffs", Verdict::Warn, "meh"),
        ],
    };
    assert!(report.failed());
    assert_eq!(
        report.to_string(),
        "ok    docker           Docker 26 (API 1.45) at unix:///d\n\
         FAIL  sts              down\n\
         \x20                      fix: start it\n\
         warn  bpffs            meh\n\
         1 failed, 1 warnings\n"
    );
}
