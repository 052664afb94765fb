//! Checks before loading (BTF, privileges, cgroup v2, bpffs), each failing with the exact reason.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::EbpfError;

/// Where the kernel exposes its BTF.
pub const BTF: &str = "/sys/kernel/btf/vmlinux";
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities loading and attaching the programs needs that `cap_eff` lacks (empty: none).
///
/// Verified on Linux 6.18: `CAP_BPF` + `CAP_NET_ADMIN` is refused by the verifier (`EACCES`);
/// `CAP_BPF` + `CAP_NET_ADMIN` + `CAP_PERFMON` works. `CAP_SYS_ADMIN` stands in for `CAP_BPF`
/// and `CAP_PERFMON`, not for `CAP_NET_ADMIN`: rtnetlink (the target's address on `lo`, the
/// forwarding rules) checks that one alone (`EPERM` with `CAP_SYS_ADMIN` only, verified).
pub fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    let has = |cap: u32| cap_eff & (1 << cap) != 0;
    [
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_PERFMON, "CAP_PERFMON"),
    ]
    .into_iter()
    .filter(|(cap, _)| !has(*cap) && (*cap == CAP_NET_ADMIN || !has(CAP_SYS_ADMIN)))
    .map(|(_, name)| name)
    .collect()
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text (0 when absent).
pub fn cap_eff(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// What the host offers the redirect.
#[derive(Debug, Clone)]
pub struct Host {
    /// Where cgroup v2 is mounted.
    pub cgroup2: PathBuf,
    /// The daemon's own cgroup v2 path and id (its connections are never redirected).
    pub own_cgroup: (String, u64),
}

impl Host {
    /// Checks everything the redirect needs, in the order a person would fix them.
    pub fn check(pin_dir: &Path) -> Result<Self, EbpfError> {
        if !Path::new(BTF).exists() {
            return Err(EbpfError::NoBtf);
        }
        let caps = cap_eff(&read("/proc/self/status")?);
        let missing = missing_caps(caps);
        if !missing.is_empty() {
            return Err(EbpfError::NotPrivileged {
                caps,
                missing: missing.join(", "),
            });
        }
        let mountinfo = read("/proc/self/mountinfo")?;
        let cgroup2 = cgroup2_mount(&mountinfo).ok_or(EbpfError::NoCgroup2)?;
        if fs_type(&mountinfo, pin_dir).as_deref() != Some("bpf") {
            return Err(EbpfError::NoBpffs(pin_dir.to_owned()));
        }
        let path = current_cgroup(&read("/proc/self/cgroup")?).unwrap_or_else(|| "/".to_owned());
        let dir = cgroup2.join(path.trim_start_matches('/'));
        let id = std::fs::metadata(&dir)
            .map_err(|source| EbpfError::Io {
                path: dir.clone(),
                source,
            })?
            .ino();
        Ok(Self {
            cgroup2,
            own_cgroup: (path, id),
        })
    }
}

fn read(path: &str) -> Result<String, EbpfError> {
    std::fs::read_to_string(path).map_err(|source| EbpfError::Io {
        path: path.into(),
        source,
    })
}

/// Unescapes the octal escapes (`\040` for a space) of a mountinfo path.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(c) = code {
            out.push(char::from(c));
            rest = &rest[i + 4..];
        } else {
            out.push('\\');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// (mount point, filesystem type) of every line of `/proc/self/mountinfo`.
fn mounts(mountinfo: &str) -> impl Iterator<Item = (String, &str)> {
    mountinfo.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let point = fields.nth(4)?;
        let mut after = line.split(" - ").nth(1)?.split(' ');
        Some((unescape(point), after.next()?))
    })
}

/// The first cgroup2 mount point.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mounts(mountinfo)
        .find(|(_, fs)| *fs == "cgroup2")
        .map(|(p, _)| PathBuf::from(p))
}

/// The type of the filesystem `path` is on (the longest mount point containing it; last wins).
pub fn fs_type(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for (point, fs) in mounts(mountinfo) {
        if path.starts_with(&point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), fs.to_owned()));
        }
    }
    best.map(|(_, fs)| fs)
}

/// The cgroup v2 path in `/proc/<pid>/cgroup` (the `0::/path` line).
pub fn current_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
41 30 0:37 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
50 24 0:40 / /tmp/my\\040pins rw - bpf bpf rw
51 24 0:41 / /sys/fs/bpf rw - bpf bpf rw";

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        assert_eq!(
            cgroup2_mount(MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn pin_dir_filesystem() {
        assert_eq!(
            fs_type(MOUNTINFO, Path::new("/sys/fs/bpf/metadataproxy")).as_deref(),
            Some("bpf")
        );
        assert_eq!(
            fs_type(MOUNTINFO, Path::new("/tmp/my pins/x")).as_deref(),
            Some("bpf")
        );
        assert_eq!(
            fs_type(MOUNTINFO, Path::new("/sys/fs/bpfx")).as_deref(),
            Some("ext4")
        );
    }

    #[test]
    fn capabilities_the_loader_needs() {
        let bit = |c: u32| 1u64 << c;
        assert!(missing_caps(bit(CAP_SYS_ADMIN) | bit(CAP_NET_ADMIN)).is_empty());
        assert_eq!(missing_caps(bit(CAP_SYS_ADMIN)), ["CAP_NET_ADMIN"]);
        assert!(missing_caps(bit(CAP_BPF) | bit(CAP_NET_ADMIN) | bit(CAP_PERFMON)).is_empty());
        assert_eq!(
            missing_caps(bit(CAP_BPF) | bit(CAP_NET_ADMIN)),
            ["CAP_PERFMON"]
        );
        assert_eq!(missing_caps(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert_eq!(
            cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            0x1ff_ffff_ffff
        );
        assert_eq!(cap_eff("Name:\tx\n"), 0);
    }

    #[test]
    fn own_cgroup_line() {
        let text = "12:memory:/x\n0::/system.slice/metadataproxy.service\n";
        assert_eq!(
            current_cgroup(text).as_deref(),
            Some("/system.slice/metadataproxy.service")
        );
    }
}
