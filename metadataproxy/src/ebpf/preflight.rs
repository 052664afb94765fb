//! Checks before loading (BTF, privileges, cgroup v2, bpffs), each failing with the exact reason;
//! `/proc/self` is read and parsed by procfs.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use procfs::ProcError;
use procfs::ProcessCGroups;
use procfs::process::{MountInfos, Process};

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
        let me = Process::myself().map_err(proc_error("/proc/self"))?;
        let caps = me.status().map_err(proc_error("/proc/self/status"))?.capeff;
        let missing = missing_caps(caps);
        if !missing.is_empty() {
            return Err(EbpfError::NotPrivileged {
                caps,
                missing: missing.join(", "),
            });
        }
        let mounts = me.mountinfo().map_err(proc_error("/proc/self/mountinfo"))?;
        let cgroup2 = cgroup2_mount(&mounts).ok_or(EbpfError::NoCgroup2)?;
        if fs_type(&mounts, pin_dir).as_deref() != Some("bpf") {
            return Err(EbpfError::NoBpffs(pin_dir.to_owned()));
        }
        let memberships = me.cgroups().map_err(proc_error("/proc/self/cgroup"))?;
        let path = current_cgroup(&memberships).unwrap_or_else(|| "/".to_owned());
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

/// Maps a procfs error on `path` to the loader's error.
fn proc_error(path: &'static str) -> impl Fn(ProcError) -> EbpfError {
    move |source| EbpfError::Proc {
        path: path.into(),
        source,
    }
}

/// Unescapes the octal escapes (`\040` for a space) the kernel writes in a mountinfo path.
///
/// procfs hands the mount point over as the kernel wrote it (upstream issue eminence/procfs#262),
/// so a pin directory whose path holds a space would otherwise match no mount.
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

/// The first cgroup2 mount point.
pub fn cgroup2_mount(mounts: &MountInfos) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| PathBuf::from(unescape(&m.mount_point.to_string_lossy())))
}

/// The type of the filesystem `path` is on (the longest mount point containing it; last wins).
pub fn fs_type(mounts: &MountInfos, path: &Path) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for m in mounts {
        let point = unescape(&m.mount_point.to_string_lossy());
        if path.starts_with(&point) && best.is_none_or(|(len, _)| point.len() >= len) {
            best = Some((point.len(), &m.fs_type));
        }
    }
    best.map(|(_, fs)| fs.to_owned())
}

/// The cgroup v2 path of a process (the `0::/path` line of `/proc/<pid>/cgroup`).
pub fn current_cgroup(cgroups: &ProcessCGroups) -> Option<String> {
    crate::cgroup::v2_path(cgroups).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use procfs::FromRead as _;
    use procfs::process::Status;

    use super::*;

    const MOUNTINFO: &str = "\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
41 30 0:37 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
50 24 0:40 / /tmp/my\\040pins rw - bpf bpf rw
51 24 0:41 / /sys/fs/bpf rw shared:12 master:1 - bpf bpf rw,mode=700";

    /// What procfs parses `text` into, as the kernel's file would be.
    fn parse<T: procfs::FromRead>(text: &str) -> T {
        T::from_read(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        assert_eq!(
            cgroup2_mount(&parse(MOUNTINFO)),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1_only = "24 1 254:0 / / rw - ext4 /dev/vda rw\n\
                       31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        assert_eq!(cgroup2_mount(&parse(v1_only)), None);
    }

    #[test]
    fn pin_dir_filesystem() {
        let mounts = parse(MOUNTINFO);
        assert_eq!(
            fs_type(&mounts, Path::new("/sys/fs/bpf/metadataproxy")).as_deref(),
            Some("bpf")
        );
        assert_eq!(
            fs_type(&mounts, Path::new("/tmp/my pins/x")).as_deref(),
            Some("bpf")
        );
        assert_eq!(
            fs_type(&mounts, Path::new("/sys/fs/bpfx")).as_deref(),
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
    }

    #[test]
    fn the_effective_set_of_this_process() {
        // What the checks read: procfs parses this process's real status file.
        let me = Process::myself().and_then(|p| p.status()).expect("status");
        let text = std::fs::read_to_string("/proc/self/status").expect("status text");
        let line = text.lines().find_map(|l| l.strip_prefix("CapEff:"));
        assert_eq!(
            Some(me.capeff),
            line.and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        );
        // A status without the line is refused, not read as "no capabilities".
        assert!(Status::from_read("Name:\tx\n".as_bytes()).is_err());
    }

    #[test]
    fn own_cgroup_line() {
        let cgroups = parse("12:memory:/x\n0::/system.slice/metadataproxy.service\n");
        assert_eq!(
            current_cgroup(&cgroups).as_deref(),
            Some("/system.slice/metadataproxy.service")
        );
        // cgroup v1 only: no v2 line; a named v1 hierarchy (`1:name=systemd:`) is not it either.
        assert_eq!(
            current_cgroup(&parse("1:name=systemd:/x\n4:memory:/x\n")),
            None
        );
    }
}
