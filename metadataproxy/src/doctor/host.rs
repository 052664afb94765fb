//! The host checks of `doctor` (BTF, kernel version, cgroup v2, bpffs, capabilities): pure
//! functions of what the host's files say, read through [`System`] so tests can give any host;
//! `/proc` files are parsed by procfs.

use std::path::{Path, PathBuf};

use procfs::FromRead;
use procfs::process::{MountInfos, Status};

use super::{Finding, Verdict};
use crate::ebpf::compat::{OSRELEASE, PidMode, version};
use crate::ebpf::{BTF, cgroup2_mount, fs_type, missing_caps};

/// This process's pid namespace, as a link `pid:[<inode>]`.
const OWN_PIDNS: &str = "/proc/self/ns/pid";

/// The files the host checks read.
pub trait System {
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// The text of `path`.
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// The target of the symbolic link `path`.
    fn read_link(&self, path: &Path) -> std::io::Result<PathBuf>;
}

/// This machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealSystem;

impl System for RealSystem {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn read_link(&self, path: &Path) -> std::io::Result<PathBuf> {
        std::fs::read_link(path)
    }
}

/// How much the eBPF redirect matters under the configured `EBPF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `EBPF=required`: a missing piece stops the daemon (FAIL).
    Required,
    /// `EBPF=auto`: a missing piece means IP-only mode (warn).
    Wanted,
    /// `EBPF=off`: nothing is checked.
    NotNeeded,
}

impl Need {
    fn problem(self) -> Verdict {
        match self {
            Self::Required => Verdict::Fail,
            Self::Wanted | Self::NotNeeded => Verdict::Warn,
        }
    }

    fn skipped(self, name: &'static str) -> Option<Finding> {
        (self == Self::NotNeeded).then(|| Finding::ok(name, "not needed (EBPF=off)"))
    }
}

/// The kernel exposes BTF.
pub fn btf(sys: &dyn System, need: Need) -> Finding {
    const NAME: &str = "kernel BTF";
    if let Some(f) = need.skipped(NAME) {
        return f;
    }
    if sys.exists(Path::new(BTF)) {
        Finding::ok(NAME, format!("{BTF} present"))
    } else {
        Finding::new(
            NAME,
            need.problem(),
            format!("{BTF} is missing: the eBPF programs cannot be loaded"),
        )
        .fix("use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels are), or run with EBPF=off")
    }
}

/// The inode of a namespace link's target, `pid:[4026531836]`.
fn ns_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .split_once(":[")?
        .1
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The kernel is new enough for the programs the daemon loads where doctor runs: Linux 5.8 in
/// the host's pid namespace, 6.10 in a pid namespace of its own (see `ebpf::compat`).
pub fn kernel(sys: &dyn System, need: Need) -> Finding {
    const NAME: &str = "kernel version";
    if let Some(f) = need.skipped(NAME) {
        return f;
    }
    let release = match sys.read(Path::new(OSRELEASE)) {
        Ok(r) => r.trim().to_owned(),
        Err(e) => {
            return Finding::new(NAME, Verdict::Warn, format!("cannot read {OSRELEASE}: {e}"));
        }
    };
    let Some(inode) = sys
        .read_link(Path::new(OWN_PIDNS))
        .ok()
        .and_then(|l| ns_inode(&l))
    else {
        return Finding::new(
            NAME,
            Verdict::Warn,
            format!("Linux {release}; cannot read {OWN_PIDNS}, so which programs load is unknown"),
        )
        .fix("run doctor where /proc is mounted, as the daemon runs");
    };
    let mode = PidMode::of(inode);
    let (major, minor) = mode.min_kernel();
    let place = match mode {
        PidMode::Host => "in the host's pid namespace",
        PidMode::Namespace => "in a pid namespace of its own",
    };
    match version(&release) {
        None => Finding::new(
            NAME,
            Verdict::Warn,
            format!("cannot tell the version of kernel release {release:?}"),
        ),
        Some(v) if v >= (major, minor) => Finding::ok(
            NAME,
            format!("Linux {release}; run {place}, the daemon needs {major}.{minor} or later"),
        ),
        Some(_) => {
            let fix = match mode {
                PidMode::Host => {
                    "use Linux 5.8 or later (a distribution kernel with backports may load the programs anyway: the daemon's start decides, and says why it cannot)"
                }
                PidMode::Namespace => {
                    "run the daemon in the host's pid namespace (systemd, `docker run --pid host`, `hostPID: true`), where Linux 5.8 is enough, or use Linux 6.10 or later"
                }
            };
            Finding::new(
                NAME,
                need.problem(),
                format!(
                    "Linux {release} is older than {major}.{minor}: {}",
                    mode.needs()
                ),
            )
            .fix(fix)
        }
    }
}

/// This process's mount table.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// This process's status (its capabilities).
const STATUS: &str = "/proc/self/status";

/// The `/proc` file `path`, read through `sys` and parsed by procfs, or the finding saying why not.
fn proc_file<T: FromRead>(
    sys: &dyn System,
    path: &str,
    name: &'static str,
    need: Need,
) -> Result<T, Finding> {
    let text = sys.read(Path::new(path)).map_err(|e| {
        Finding::new(name, need.problem(), format!("cannot read {path}: {e}"))
            .fix("run doctor where /proc is mounted")
    })?;
    T::from_read(text.as_bytes())
        .map_err(|e| Finding::new(name, need.problem(), format!("cannot parse {path}: {e}")))
}

/// A cgroup v2 hierarchy is mounted, and every `EBPF_CGROUPS` path exists in it.
pub fn cgroup2(sys: &dyn System, need: Need, cgroups: &[String]) -> Finding {
    const NAME: &str = "cgroup v2";
    if let Some(f) = need.skipped(NAME) {
        return f;
    }
    let mounts: MountInfos = match proc_file(sys, MOUNTINFO, NAME, need) {
        Ok(m) => m,
        Err(f) => return f,
    };
    let Some(root) = cgroup2_mount(&mounts) else {
        return Finding::new(NAME, need.problem(), "no cgroup2 mount in /proc/self/mountinfo")
            .fix("mount it (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or boot with systemd.unified_cgroup_hierarchy=1");
    };
    let missing: Vec<&String> = cgroups
        .iter()
        .filter(|c| !sys.exists(&root.join(c.trim_start_matches('/'))))
        .collect();
    if missing.is_empty() {
        Finding::ok(
            NAME,
            format!(
                "mounted at {}; EBPF_CGROUPS {} present",
                root.display(),
                cgroups.join(",")
            ),
        )
    } else {
        let list: Vec<&str> = missing.iter().map(|c| c.as_str()).collect();
        Finding::new(
            NAME,
            need.problem(),
            format!(
                "mounted at {}, but EBPF_CGROUPS names {} which does not exist there",
                root.display(),
                list.join(",")
            ),
        )
        .fix("set EBPF_CGROUPS to cgroup v2 paths that exist (relative to the cgroup2 mount)")
    }
}

/// `EBPF_PIN_DIR` is on a bpffs.
pub fn bpffs(sys: &dyn System, need: Need, pin_dir: &Path) -> Finding {
    const NAME: &str = "bpffs";
    if let Some(f) = need.skipped(NAME) {
        return f;
    }
    let mounts: MountInfos = match proc_file(sys, MOUNTINFO, NAME, need) {
        Ok(m) => m,
        Err(f) => return f,
    };
    match fs_type(&mounts, pin_dir) {
        Some(fs) if fs == "bpf" => {
            let pinned = sys.exists(&pin_dir.join(metadataproxy_common::maps::SETTINGS));
            let state = if pinned {
                "a pinned redirect is there"
            } else {
                "nothing pinned yet"
            };
            Finding::ok(
                NAME,
                format!("EBPF_PIN_DIR {} is on a bpffs ({state})", pin_dir.display()),
            )
        }
        other => Finding::new(
            NAME,
            need.problem(),
            format!(
                "EBPF_PIN_DIR {} is not on a bpffs (it is on {})",
                pin_dir.display(),
                other.as_deref().unwrap_or("no known mount")
            ),
        )
        .fix("mount one (`mount -t bpf bpf /sys/fs/bpf`), or set EBPF_PIN_DIR to a directory on a bpffs"),
    }
}

/// The process has the capabilities loading and attaching the programs needs.
pub fn capabilities(sys: &dyn System, need: Need) -> Finding {
    const NAME: &str = "capabilities";
    if let Some(f) = need.skipped(NAME) {
        return f;
    }
    let caps = match proc_file::<Status>(sys, STATUS, NAME, need) {
        Ok(status) => status.capeff,
        Err(f) => return f,
    };
    let missing = missing_caps(caps);
    if missing.is_empty() {
        Finding::ok(
            NAME,
            format!("effective {caps:#x}: enough to load and attach the eBPF programs"),
        )
    } else {
        Finding::new(
            NAME,
            need.problem(),
            format!("effective {caps:#x} lacks {}", missing.join(", ")),
        )
        .fix("run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN and CAP_NET_ADMIN), e.g. systemd AmbientCapabilities=")
    }
}
