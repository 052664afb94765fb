//! The kernel side of identification: loads the eBPF redirect, pins it, and answers "who made this
//! connection?" at `accept()`.
//!
//! Fail closed: links and maps are pinned under `EBPF_PIN_DIR`, so the redirect outlives the
//! process. While no daemon listens, redirected connections are refused by the kernel (nothing
//! listens at the target) instead of reaching the real metadata service. A restarted daemon loads
//! its programs against the same pinned maps, attaches them, and atomically renames the new link
//! pins over the old ones (the old links detach when their last reference goes).
//!
//! Scope (`EBPF_REDIRECT_HOST`, default `false`): only containers' cgroups and cgroups the role
//! mapping names are redirected; other host processes keep their original destination (on EC2, the
//! real IMDS). How, and why it fails closed for new containers: see [`exempt`].
//!
//! Nothing else gets through either: connects to a metadata address that cannot be redirected
//! are refused, and an egress guard on the same cgroups drops every other packet addressed to one
//! ([`guard`] reports them); what never passes a cgroup hook (link-layer frames a container
//! writes) is refused when the host would forward it ([`forward_rules`]). The default target is
//! a link-local address on `lo` every caller reaches ([`link_addr`]).

mod cgroup_watch;
pub mod compat;
pub mod exempt;
pub mod forward_rules;
mod guard;
pub mod link_addr;
mod load;
mod netns;
mod pins;
mod preflight;
mod table;

use std::net::{SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;

pub use exempt::{Classifier, Exempt, RedirectPolicy};
pub use guard::{Counts as GuardCounts, GuardStats};
pub use load::{Redirect, Started};
pub use preflight::{BTF, Host, cgroup2_mount, current_cgroup, fs_type, missing_caps};
pub use table::{ConnTable, monotonic_now};

/// Why the eBPF redirect cannot be set up (each variant says exactly what is missing).
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The kernel exposes no BTF, which the programs need to load.
    #[error(
        "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing): a kernel built with CONFIG_DEBUG_INFO_BTF is needed"
    )]
    NoBtf,
    /// The process lacks the privileges to load and attach programs.
    #[error(
        "not privileged enough to load eBPF programs: missing {missing} (run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or CAP_SYS_ADMIN and CAP_NET_ADMIN); effective capabilities {caps:#x}"
    )]
    NotPrivileged {
        /// The effective capability set.
        caps: u64,
        /// The needed capabilities it lacks, by name.
        missing: String,
    },
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup v2 (cgroup2) mount in /proc/self/mountinfo: the redirect attaches to cgroup v2"
    )]
    NoCgroup2,
    /// A cgroup named in `EBPF_CGROUPS` does not exist.
    #[error("EBPF_CGROUPS names {path}, which cannot be opened: {source}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// Why it cannot be opened.
        source: std::io::Error,
    },
    /// The pin directory is not on a bpffs.
    #[error(
        "{0} is not on a bpffs mount (mount one with `mount -t bpf bpf /sys/fs/bpf`, or set EBPF_PIN_DIR)"
    )]
    NoBpffs(PathBuf),
    /// The daemon was built without the eBPF object and `EBPF_OBJECT` is unset.
    #[error(
        "eBPF object not built: run `cargo xtask build-ebpf` and rebuild the daemon, or set EBPF_OBJECT (EBPF=off runs in IP-only mode)"
    )]
    NoObject,
    /// The eBPF object cannot be parsed (a corrupt `EBPF_OBJECT`).
    #[error("{0}")]
    Object(String),
    /// Reading a file the set-up needs failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of `/proc` the set-up needs cannot be read, or procfs cannot parse it.
    #[error("cannot read {path}: {source}")]
    Proc {
        /// The file.
        path: PathBuf,
        /// procfs's error.
        source: procfs::ProcError,
    },
    /// The kernel refused the object (the loader's and verifier's text is in the source).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// The kernel refused to load a program: too old for it, or the verifier disagrees.
    #[error("this kernel (Linux {release}) refused eBPF program {name}; {needs}: {source}")]
    Refused {
        /// The program.
        name: &'static str,
        /// The kernel's release.
        release: String,
        /// What the program needs from the kernel.
        needs: &'static str,
        /// The loader's and verifier's answer (boxed: it holds the verifier's log).
        source: Box<aya::programs::ProgramError>,
    },
    /// A program is missing from the object, or the kernel refused to attach it.
    #[error("eBPF program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// What went wrong.
        source: aya::programs::ProgramError,
    },
    /// A map is missing from the object or cannot be used.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// What went wrong.
        source: aya::maps::MapError,
    },
    /// The default target's address cannot be made local on `lo`.
    #[error("the redirect target: {0}")]
    LinkAddr(#[from] link_addr::LinkAddrError),
    /// The rules refusing to forward packets to the metadata addresses cannot be installed.
    #[error("refusing to forward to the metadata addresses: {0}")]
    ForwardRules(#[from] forward_rules::RulesError),
    /// Pinning a link, or replacing an older pin, failed.
    #[error("pinning {path}: {reason}")]
    Pin {
        /// The pin.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// What the redirect needs to know about the daemon.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where IPv4 callers (and IPv6 callers of the IPv4-mapped address) are sent.
    pub v4: SocketAddrV4,
    /// Where IPv6 callers are sent (`None`: their connects are refused).
    pub v6: Option<SocketAddrV6>,
    /// `ECS_ENDPOINT`: also redirect the container-credentials endpoint's addresses.
    pub ecs: bool,
    /// Send callers in the daemon's own network namespace to `127.0.0.1` on `v4`'s port instead
    /// (see [`own_netns_loopback`]).
    pub own_netns_loopback: bool,
}

impl Target {
    /// The targets `ebpf` names, for a daemon listening on `listen`; `ecs`: `ECS_ENDPOINT`.
    pub fn new(ebpf: &crate::config::EbpfConfig, listen: std::net::SocketAddr, ecs: bool) -> Self {
        Self {
            v4: ebpf.target4,
            v6: ebpf.target6,
            ecs,
            own_netns_loopback: own_netns_loopback(ebpf, listen),
        }
    }
}

/// Whether callers in the daemon's own network namespace go to `127.0.0.1:<target port>` rather
/// than to the default target: with the default target only (an `EBPF_TARGET` is followed as
/// given), and only when the daemon's listener `listen` accepts connections there. Loopback is
/// the one destination whose closed connections' ports Linux reuses at once (`tcp_tw_reuse=2`):
/// towards the link-local default target each port stays in `TIME_WAIT` for 60 s, and a host
/// opening more than a few hundred connections a second would run out of them. Callers in
/// other namespaces cannot reach the daemon on their own loopback, and keep the default target.
pub fn own_netns_loopback(ebpf: &crate::config::EbpfConfig, listen: std::net::SocketAddr) -> bool {
    let port = ebpf.target4.port();
    let accepts = listen.port() == port
        && match listen.ip() {
            std::net::IpAddr::V4(ip) => ip.is_unspecified() || ip == std::net::Ipv4Addr::LOCALHOST,
            std::net::IpAddr::V6(_) => false,
        };
    ebpf.link_address.is_some() && accepts
}

/// The redirect in force, with what identification needs from it.
#[derive(Debug)]
pub struct Kernel {
    /// The attached programs (apply `EBPF_ON_EXIT` with [`Kernel::shutdown`]).
    pub redirect: Redirect,
    /// The policy-routing rules installed (removed by [`Kernel::shutdown`] with `detach`).
    pub forward_rules: Vec<forward_rules::Rule>,
    /// Records of redirected connections, looked up at `accept()`.
    pub table: std::sync::Arc<ConnTable>,
    /// cgroup id → path.
    pub paths: std::sync::Arc<crate::cgroup::CgroupPaths>,
}

impl Kernel {
    /// Clean shutdown: keeps or removes the redirect and the forwarding rules as `EBPF_ON_EXIT`
    /// says.
    pub async fn shutdown(self) {
        let detach = self.redirect.on_exit() == crate::config::OnExit::Detach;
        self.redirect.shutdown();
        if detach {
            match forward_rules::remove(&self.forward_rules).await {
                Ok(removed) => tracing::info!(
                    removed,
                    "policy-routing rules refusing to forward to the metadata addresses removed"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot remove the policy-routing rules"),
            }
        }
    }
}

/// Sets up the redirect as `EBPF` says: `None` in IP-only mode (configured, or `auto` and unusable).
///
/// Redirected connections go to `target`; `policy` decides which cgroups stay redirected with
/// `EBPF_REDIRECT_HOST=false`; connection records older than `listening_since` are stale.
pub async fn start(
    ebpf: &crate::config::EbpfConfig,
    target: Target,
    policy: Box<dyn RedirectPolicy>,
    listening_since: std::time::Duration,
) -> Result<Option<Kernel>, EbpfError> {
    use crate::config::EbpfMode;
    if ebpf.mode == EbpfMode::Off {
        tracing::info!("EBPF=off: IP-only mode, callers are identified by their address alone");
        return Ok(None);
    }
    let attempt = match Host::check(&ebpf.pin_dir) {
        Ok(host) => attach(ebpf, target, &host, policy, listening_since).await,
        Err(e) => Err(e),
    };
    match attempt {
        Ok(kernel) => Ok(Some(kernel)),
        Err(e) if ebpf.mode == EbpfMode::Auto => {
            tracing::warn!(error = %e, "EBPF=auto: eBPF unusable, running in IP-only mode");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Makes the default target local (when it is the default), loads, attaches and pins.
async fn attach(
    ebpf: &crate::config::EbpfConfig,
    target: Target,
    host: &Host,
    policy: Box<dyn RedirectPolicy>,
    listening_since: std::time::Duration,
) -> Result<Kernel, EbpfError> {
    if let Some(addr) = ebpf.link_address {
        match link_addr::ensure(addr).await? {
            link_addr::Presence::Added => tracing::info!(
                address = %addr,
                "added the redirect target's address to lo (it stays there: while no daemon listens, redirected connections are refused)"
            ),
            link_addr::Presence::Present => {
                tracing::debug!(address = %addr, "the redirect target's address is on lo");
            }
        }
        link_addr::keep(addr)?;
    }
    let rules = forward_rules::wanted(target.ecs);
    let installed = forward_rules::install(&rules).await?;
    if installed.added.is_empty() {
        tracing::debug!(
            rules = installed.present,
            "the policy-routing rules refusing to forward to the metadata addresses are in place"
        );
    } else {
        let added: Vec<String> = installed.added.iter().map(ToString::to_string).collect();
        tracing::info!(
            added = ?added,
            "added policy-routing rules: packets to the metadata addresses that this host would forward (link-layer frames from containers, namespaces not redirected) are refused, its own pass; they stay after exit"
        );
    }
    if installed.no_ipv6 {
        tracing::info!("the kernel has no IPv6: no IPv6 policy-routing rules needed");
    }
    let stale = forward_rules::remove(&forward_rules::unwanted(target.ecs)).await?;
    if stale > 0 {
        tracing::info!(
            removed = stale,
            "removed the policy-routing rules of the container-credentials endpoint (ECS_ENDPOINT is off)"
        );
    }
    let Started {
        redirect,
        table,
        exempt,
        guard,
    } = Redirect::start(ebpf, host, &target, policy, listening_since)?;
    if !ebpf.redirect_host {
        exempt.spawn();
    }
    let paths = std::sync::Arc::new(crate::cgroup::CgroupPaths::new(host.cgroup2.clone()));
    guard.spawn(std::sync::Arc::clone(&paths));
    tracing::info!(
        target = %target.v4,
        target6 = ?target.v6,
        own_netns_target = ?target
            .own_netns_loopback
            .then(|| std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, target.v4.port())),
        ecs_endpoint = target.ecs,
        cgroups = ?ebpf.cgroups,
        daemon_cgroup = %host.own_cgroup.0,
        pins = %ebpf.pin_dir.display(),
        "eBPF redirect of 169.254.169.254:80 and egress guard attached"
    );
    Ok(Kernel {
        redirect,
        forward_rules: rules,
        table: std::sync::Arc::new(table),
        paths,
    })
}
