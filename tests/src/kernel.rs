//! Machine state the eBPF tests need, each restored when its guard drops: 169.254.169.254 (and,
//! for `ECS_ENDPOINT` tests, 169.254.170.23 and `fd00:ec2::23`) made local with a stand-in behind
//! it (so a missed redirect is caught here instead of leaving the machine), and a private bpffs
//! for the daemon's pins.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;

use tempfile::TempDir;

use crate::Upstream;

/// The instance metadata address.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The container-credentials endpoint's address (EKS Pod Identity's), for `ECS_ENDPOINT`.
pub const ECS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 23);
/// The container-credentials endpoint's IPv6 address (`fd00:ec2::23`), what SDKs use on
/// IPv6-only hosts.
pub const ECS_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23);

/// Where every holder of 169.254.169.254 on `lo` takes its lock (see [`hold_metadata_address`]).
pub const METADATA_ADDRESS_LOCK: &str = "/tmp/metadataproxy-tests-169.254.169.254.lock";

/// Waits for, then holds, the machine-wide lock on 169.254.169.254 being a `lo` alias.
///
/// Only one test, demo or bench at a time may add and remove the address: if a second one removed
/// it while the first still relied on it, a caller's connection could leave the machine. Every
/// holder takes this lock for as long as it uses the address (the lock ends with the `File`).
pub fn hold_metadata_address() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(METADATA_ADDRESS_LOCK)
        .unwrap_or_else(|e| panic!("cannot open {METADATA_ADDRESS_LOCK}: {e}"));
    file.lock()
        .unwrap_or_else(|e| panic!("cannot lock {METADATA_ADDRESS_LOCK}: {e}"));
    file
}

/// Why this machine cannot hold an IPv6 address on `lo`, if it cannot (IPv6 disabled or absent).
pub fn ipv6_unavailable() -> Option<String> {
    match std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6") {
        Ok(v) if v.trim() == "0" => None,
        Ok(v) => Some(format!(
            "IPv6 is disabled on lo (net.ipv6.conf.lo.disable_ipv6 = {})",
            v.trim()
        )),
        Err(e) => Some(format!(
            "the kernel has no IPv6 (/proc/sys/net/ipv6/conf/lo/disable_ipv6: {e})"
        )),
    }
}

/// 169.254.169.254 on `lo`, answered by a recording stand-in serving *host* credentials (and
/// 169.254.170.23 and `fd00:ec2::23` likewise, with [`MetadataAddress::start_with_ecs`] and
/// [`MetadataAddress::start_with_ecs6`]).
#[derive(Debug)]
pub struct MetadataAddress {
    added: Vec<IpAddr>,
    /// The stand-in for the real IMDS: it must see no request from a container.
    pub standin: Upstream,
    /// The stand-in on 169.254.170.23:80, if asked for: it must see no request either.
    pub ecs_standin: Option<Upstream>,
    /// The stand-in on `[fd00:ec2::23]:80`, if asked for: it must see no request either.
    pub ecs6_standin: Option<Upstream>,
    /// Held until drop: no one else adds or removes the address meanwhile. The last field, so it
    /// is released only after the stand-in has stopped listening on the address.
    _lock: std::fs::File,
}

impl MetadataAddress {
    /// Makes the address local (unless it already is) and starts the stand-in on port 80.
    pub fn start() -> Self {
        Self::start_on(&[])
    }

    /// [`MetadataAddress::start`], and the same for the container-credentials endpoint
    /// 169.254.170.23 (under the same lock: one holder of both addresses at a time).
    pub fn start_with_ecs() -> Self {
        Self::start_on(&[IpAddr::V4(ECS_IP)])
    }

    /// [`MetadataAddress::start_with_ecs`], and the same for `fd00:ec2::23`; `None` (with the
    /// reason printed) when this machine has no IPv6.
    pub fn start_with_ecs6() -> Option<Self> {
        if let Some(why) = ipv6_unavailable() {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        Some(Self::start_on(&[IpAddr::V4(ECS_IP), IpAddr::V6(ECS_IP6)]))
    }

    fn start_on(ecs: &[IpAddr]) -> Self {
        let lock = hold_metadata_address();
        let mut added = Vec::new();
        let mut local = |ip: IpAddr| {
            if make_local(ip) {
                added.push(ip);
            }
            Upstream::start_on(SocketAddr::from((ip, 80)))
        };
        let standin = local(IpAddr::V4(METADATA_IP));
        let mut standin_on = |ip: IpAddr| ecs.contains(&ip).then(|| local(ip));
        let (v4, v6) = (
            standin_on(IpAddr::V4(ECS_IP)),
            standin_on(IpAddr::V6(ECS_IP6)),
        );
        Self {
            added,
            standin,
            ecs_standin: v4,
            ecs6_standin: v6,
            _lock: lock,
        }
    }
}

/// `ip/32` or `ip/128`.
fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}/32"),
        IpAddr::V6(ip) => format!("{ip}/128"),
    }
}

/// Adds `ip` as a host address to `lo` unless it is there already; whether it was added. Only
/// under the lock. An IPv6 address skips duplicate address detection, so it is usable at once.
fn make_local(ip: IpAddr) -> bool {
    let family = if ip.is_ipv6() { "-6" } else { "-4" };
    let shown = Command::new("ip")
        .args([family, "addr", "show", "dev", "lo"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    let prefix = host_prefix(ip);
    let listed = format!("{} {prefix} ", if ip.is_ipv6() { "inet6" } else { "inet" });
    if String::from_utf8_lossy(&shown.stdout).contains(&listed) {
        return false;
    }
    let mut add = Command::new("ip");
    add.args([family, "addr", "add", &prefix, "dev", "lo"]);
    if ip.is_ipv6() {
        add.arg("nodad");
    }
    let status = add
        .status()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(
        status.success(),
        "ip addr add {prefix} dev lo failed ({status})"
    );
    true
}

impl Drop for MetadataAddress {
    fn drop(&mut self) {
        for ip in &self.added {
            let _ = Command::new("ip")
                .args(["addr", "del", &host_prefix(*ip), "dev", "lo"])
                .status();
        }
    }
}

/// A bpffs mounted on a temporary folder, unmounted when dropped.
#[derive(Debug)]
pub struct BpfFs {
    dir: TempDir,
}

impl BpfFs {
    /// Mounts a new bpffs.
    pub fn mount() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mpd-bpffs-")
            .tempdir()
            .expect("temp dir for a bpffs");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .status()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(status.success(), "mount -t bpf failed ({status})");
        Self { dir }
    }

    /// A pin directory inside it, for `EBPF_PIN_DIR`.
    pub fn pin_dir(&self) -> String {
        self.dir.path().join("pins").display().to_string()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
