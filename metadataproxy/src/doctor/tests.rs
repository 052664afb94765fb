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

/// A host made of a few files.
#[derive(Debug, Default)]
struct FakeHost {
    files: HashMap<PathBuf, String>,
}

impl FakeHost {
    fn with(mut self, path: &str, text: &str) -> Self {
        self.files.insert(path.into(), text.into());
        self
    }

    fn full() -> Self {
        Self::default()
            .with("/sys/kernel/btf/vmlinux", "")
            .with("/proc/self/mountinfo", MOUNTINFO)
            .with("/proc/self/status", "CapEff:\t000001ffffffffff\n")
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
}

#[test]
fn a_complete_host_passes() {
    let h = FakeHost::full();
    let pins = Path::new("/sys/fs/bpf/metadataproxy");
    for f in [
        host::btf(&h, Need::Required),
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
    let h = FakeHost::default().with("/proc/self/status", "CapEff:\t0000008000001000\n");
    let f = host::capabilities(&h, Need::Required);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(f.detail, "effective 0x8000001000 lacks CAP_PERFMON");
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
