//! What the eBPF path needs from this machine, and moving this process into a test cgroup and back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use metadataproxy_privileged_tests::Cgroup;

/// Why this machine cannot run the redirect, or `None` when it can.
pub fn why_not() -> Option<String> {
    let euid = metadataproxy_tests::effective_uid();
    if euid != "0" {
        return Some(format!(
            "not root (effective uid {euid}): loading eBPF programs, test cgroups and making \
             169.254.169.254 local need root"
        ));
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing): the redirect needs \
             CONFIG_DEBUG_INFO_BTF"
                .to_owned(),
        );
    }
    if cgroup2_mount().is_none() {
        return Some(
            "no cgroup v2 mount in /proc/self/mountinfo: the redirect attaches to a cgroup v2"
                .to_owned(),
        );
    }
    None
}

fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
}

/// This whole process inside a cgroup (every thread moves: cgroup v2 moves thread groups); moved
/// back to where it was when dropped.
pub struct Inside {
    back: PathBuf,
}

impl Inside {
    pub fn enter(cgroup: &Cgroup) -> Result<Self> {
        let mount = cgroup2_mount().context("cgroup2 mount vanished")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let back = mount.join(own.trim_start_matches('/'));
        move_self(&cgroup.dir)?;
        Ok(Self { back })
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Err(e) = move_self(&self.back) {
            eprintln!("xtask: cannot move back to {}: {e:#}", self.back.display());
        }
    }
}

fn move_self(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("writing {}", procs.display()))
}
