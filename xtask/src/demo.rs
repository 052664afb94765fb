//! `cargo xtask demo`: Docker containers calling 169.254.169.254 get their own roles through the eBPF
//! redirect (as root, with BTF and cgroup v2); elsewhere a clearly labelled mapping-file fallback.

mod container;
mod docker;
mod http;
mod mapping;

use std::path::Path;

use anyhow::{Context, Result, ensure};

use crate::{ebpf, repo, setup};

/// Runs the demo this machine can run; every process and change it makes is undone when it returns.
pub fn run(fallback: bool) -> Result<()> {
    let venv = setup::run()?;
    let why = if fallback {
        Some("--fallback was given".to_owned())
    } else {
        why_not_real()
    };
    let Some(why) = why else {
        ebpf::run()?;
        return docker::run(&venv, &build()?);
    };
    println!(
        "\n!!! The real demo (containers -> 169.254.169.254 -> eBPF redirect -> metadataproxy) cannot \
         run here:\n!!!   {why}\n!!! FALLBACK: the mapping-file demo on loopback (IP-only mode, no \
         containers, no eBPF)."
    );
    mapping::run(&venv, &build()?)
}

/// `cargo build -p metadataproxy` (with the eBPF object embedded when `build-ebpf` ran first).
fn build() -> Result<std::path::PathBuf> {
    repo::build_daemon()?;
    repo::daemon_bin()
}

/// Why this machine cannot run the real demo, or `None` when it can.
fn why_not_real() -> Option<String> {
    let euid = metadataproxy_tests::effective_uid();
    if euid != "0" {
        return Some(format!(
            "not root (effective uid {euid}): loading eBPF programs, a private dockerd and \
             `ip addr add 169.254.169.254/32 dev lo` need root (run `sudo -E cargo xtask demo`)"
        ));
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing): the eBPF redirect needs \
             CONFIG_DEBUG_INFO_BTF"
                .to_owned(),
        );
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
    {
        return Some(
            "no cgroup v2 hierarchy in /proc/mounts: the redirect attaches to a cgroup v2"
                .to_owned(),
        );
    }
    ["/usr/sbin/dockerd", "/usr/bin/docker", "/bin/busybox", "/sbin/ip"]
        .into_iter()
        .find(|tool| !Path::new(tool).exists())
        .map(|tool| {
            format!("{tool} is missing and apt-get could not install it (docker.io, busybox-static, iproute2)")
        })
}

/// The credentials document as served, with the secret key and session token masked.
fn masked(body: &str) -> Result<String> {
    let json: serde_json::Value = serde_json::from_str(body)
        .with_context(|| format!("credentials are not JSON: {body:?}"))?;
    let mut shown = body.to_owned();
    for key in ["SecretAccessKey", "Token"] {
        let secret = json[key]
            .as_str()
            .with_context(|| format!("credentials without {key}: {json}"))?;
        ensure!(!secret.is_empty(), "empty {key} in the credentials");
        shown = shown.replace(secret, &format!("****({} chars, masked)", secret.len()));
    }
    Ok(shown)
}

/// `PATH` for child processes (nothing else is inherited from this shell).
fn path_var() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned())
}
