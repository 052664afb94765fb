//! Machine state the eBPF tests need, each restored when its guard drops: 169.254.169.254 (and,
//! for `ECS_ENDPOINT` tests, 169.254.170.23) made local with a stand-in behind it (so a missed
//! redirect is caught here instead of leaving the machine), and a private bpffs for the daemon's
//! pins.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use tempfile::TempDir;

use crate::Upstream;

/// The instance metadata address.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The container-credentials endpoint's address (EKS Pod Identity's), for `ECS_ENDPOINT`.
pub const ECS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 23);

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

/// 169.254.169.254 on `lo`, answered by a recording stand-in serving *host* credentials (and
/// 169.254.170.23 likewise, with [`MetadataAddress::start_with_ecs`]).
#[derive(Debug)]
pub struct MetadataAddress {
    added: Vec<Ipv4Addr>,
    /// The stand-in for the real IMDS: it must see no request from a container.
    pub standin: Upstream,
    /// The stand-in on 169.254.170.23:80, if asked for: it must see no request either.
    pub ecs_standin: Option<Upstream>,
    /// Held until drop: no one else adds or removes the address meanwhile. The last field, so it
    /// is released only after the stand-in has stopped listening on the address.
    _lock: std::fs::File,
}

impl MetadataAddress {
    /// Makes the address local (unless it already is) and starts the stand-in on port 80.
    pub fn start() -> Self {
        Self::start_on(false)
    }

    /// [`MetadataAddress::start`], and the same for the container-credentials endpoint
    /// 169.254.170.23 (under the same lock: one holder of both addresses at a time).
    pub fn start_with_ecs() -> Self {
        Self::start_on(true)
    }

    fn start_on(ecs: bool) -> Self {
        let lock = hold_metadata_address();
        let mut added = Vec::new();
        let mut local = |ip: Ipv4Addr| {
            if make_local(ip) {
                added.push(ip);
            }
            Upstream::start_on(SocketAddr::from((ip, 80)))
        };
        let standin = local(METADATA_IP);
        let ecs_standin = ecs.then(|| local(ECS_IP));
        Self {
            added,
            standin,
            ecs_standin,
            _lock: lock,
        }
    }
}

/// Adds `ip`/32 to `lo` unless it is there already; whether it was added. Only under the lock.
fn make_local(ip: Ipv4Addr) -> bool {
    let shown = Command::new("ip")
        .args(["-4", "addr", "show", "dev", "lo"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    if String::from_utf8_lossy(&shown.stdout).contains(&format!("{ip}/32")) {
        return false;
    }
    let status = Command::new("ip")
        .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .status()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(
        status.success(),
        "ip addr add {ip}/32 dev lo failed ({status})"
    );
    true
}

impl Drop for MetadataAddress {
    fn drop(&mut self) {
        for ip in &self.added {
            let _ = Command::new("ip")
                .args(["addr", "del", &format!("{ip}/32"), "dev", "lo"])
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
