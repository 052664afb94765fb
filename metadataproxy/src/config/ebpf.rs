//! The eBPF settings: whether the redirect is required, where it points, what it covers, its pins.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};

use super::reader::Reader;
use super::settings as s;

/// `EBPF`: whether connections to the metadata address are redirected by eBPF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EbpfMode {
    /// Load and attach the programs or refuse to start, saying why.
    Required,
    /// Try; when eBPF cannot be used, log exactly why and run in IP-only mode.
    Auto,
    /// IP-only mode: callers are identified by their address alone (Lyft's behaviour).
    Off,
}

/// `EBPF_ON_EXIT`: what a clean shutdown leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// Leave the pinned programs attached: callers' connections to the metadata address fail
    /// until a daemon is back (fail closed across restarts and upgrades).
    KeepBlocking,
    /// Detach the programs and remove the pins: callers reach the real metadata service again.
    Detach,
}

/// The validated eBPF settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfConfig {
    /// `EBPF`.
    pub mode: EbpfMode,
    /// `EBPF_CGROUPS`: cgroup v2 paths (relative to the cgroup2 mount, starting with `/`).
    pub cgroups: Vec<String>,
    /// `EBPF_REDIRECT_HOST`: also redirect host processes that are not in a container cgroup.
    pub redirect_host: bool,
    /// `EBPF_TARGET`: where IPv4 connections to 169.254.169.254:80 (and IPv6 ones to its
    /// IPv4-mapped form) are sent.
    pub target4: SocketAddrV4,
    /// `EBPF_TARGET6`: where IPv6 connections to `[fd00:ec2::254]:80` are sent (by default the
    /// IPv4-mapped form of `target4`); `None`: they are refused.
    pub target6: Option<SocketAddrV6>,
    /// The address the daemon makes local on `lo` at start when it is missing: the default
    /// target's ([`s::DEFAULT_EBPF_TARGET_IP`]), `None` when `EBPF_TARGET` is set.
    pub link_address: Option<Ipv4Addr>,
    /// `EBPF_MAP_SIZE`: entries of each connection map.
    pub map_size: u32,
    /// `EBPF_PIN_DIR`: where links and maps are pinned (on a bpffs).
    pub pin_dir: PathBuf,
    /// `EBPF_ON_EXIT`.
    pub on_exit: OnExit,
    /// `EBPF_OBJECT`: an eBPF object file to load instead of the one built into the binary.
    pub object: Option<PathBuf>,
    /// `EBPF_DIRECT_CALLERS`: peers whose connections without a kernel record (straight to the
    /// daemon) may still be identified by address while the redirect is attached.
    pub direct_callers: Vec<IpNet>,
}

fn mode(v: &str) -> Result<EbpfMode, String> {
    match v {
        "required" => Ok(EbpfMode::Required),
        "auto" => Ok(EbpfMode::Auto),
        "off" => Ok(EbpfMode::Off),
        _ => Err("must be `required`, `auto` or `off`".to_owned()),
    }
}

fn on_exit(v: &str) -> Result<OnExit, String> {
    match v {
        "keep-blocking" => Ok(OnExit::KeepBlocking),
        "detach" => Ok(OnExit::Detach),
        _ => Err("must be `keep-blocking` or `detach`".to_owned()),
    }
}

/// Comma-separated absolute cgroup paths without `.` or `..` segments.
pub(super) fn cgroup_paths(v: &str) -> Result<Vec<String>, String> {
    let paths: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if paths.is_empty() {
        return Err("names no cgroup (use `/` for the whole host)".to_owned());
    }
    for p in &paths {
        let bad = !p.starts_with('/') || p.split('/').any(|seg| seg == "." || seg == "..");
        if bad {
            return Err(format!(
                "`{p}` is not a cgroup path like `/` or `/system.slice`"
            ));
        }
    }
    Ok(paths)
}

/// Comma-separated addresses (a host each) or CIDRs; IPv4-mapped IPv6 forms are taken as IPv4,
/// as peer addresses are compared in that form.
pub(super) fn direct_callers(v: &str) -> Result<Vec<IpNet>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(|ip| IpNet::from(ip.to_canonical()))
                    .map_err(|_| {
                        format!(
                            "`{item}` is not an address or CIDR like `127.0.0.1`, `10.1.0.0/16` or `fd00::/8`"
                        )
                    })?,
            };
            Ok(canonical_net(net).trunc())
        })
        .collect()
}

/// `::ffff:a.b.c.d/96+n` as `a.b.c.d/n`.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .addr()
            .to_ipv4_mapped()
            .and_then(|v4| Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

fn target4(v: &str) -> Result<SocketAddrV4, String> {
    match v.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if !a.ip().is_unspecified() && a.port() != 0 => Ok(a),
        _ => Err(
            "must be an IPv4 address and port the daemon listens on, like `172.17.0.1:45001`"
                .to_owned(),
        ),
    }
}

fn target6(v: &str) -> Result<Option<SocketAddrV6>, String> {
    if v == "off" {
        return Ok(None);
    }
    match v.parse::<SocketAddr>() {
        Ok(SocketAddr::V6(a))
            if !a.ip().is_unspecified()
                && a.port() != 0
                && a.ip().to_ipv4_mapped().is_none_or(|ip| !ip.is_unspecified()) =>
        {
            Ok(Some(a))
        }
        _ => Err(
            "must be `off` or an IPv6 address and port, like `[::ffff:169.254.170.45]:45001` or `[fd00::1]:45001`"
                .to_owned(),
        ),
    }
}

/// The IPv4-mapped IPv6 form of `target` (`[::ffff:a.b.c.d]:port`).
pub fn mapped(target: SocketAddrV4) -> SocketAddrV6 {
    SocketAddrV6::new(target.ip().to_ipv6_mapped(), target.port(), 0, 0)
}

/// Reads the eBPF settings; `port` (when valid) gives the default targets' port.
pub(super) fn read(r: &mut Reader<'_>, port: Option<u16>) -> Option<EbpfConfig> {
    let mode = r.parse(s::EBPF, mode);
    let cgroups = r.parse(s::EBPF_CGROUPS, cgroup_paths);
    let redirect_host = r.boolean(s::EBPF_REDIRECT_HOST);
    let port = port.unwrap_or(0);
    // Unset: the link-local address every caller reaches (made local on `lo` by the daemon).
    let (target4, link_address) = match r.parse(s::EBPF_TARGET, target4) {
        Some(t) => (Some(t), None),
        None if r.has_errors_for(s::EBPF_TARGET) => (None, None),
        None => (
            Some(SocketAddrV4::new(s::DEFAULT_EBPF_TARGET_IP, port)),
            Some(s::DEFAULT_EBPF_TARGET_IP),
        ),
    };
    // Unset: the IPv4 target, IPv4-mapped (reached over IPv4 from every network namespace).
    let target6 = match r.parse(s::EBPF_TARGET6, target6) {
        Some(t) => Some(t),
        None if r.has_errors_for(s::EBPF_TARGET6) => None,
        None => target4.map(|t| Some(mapped(t))),
    };
    let map_size = r.parse(s::EBPF_MAP_SIZE, |v| match v.parse::<u32>() {
        Ok(n) if (64..=16_777_216).contains(&n) => Ok(n),
        _ => Err("must be a whole number between 64 and 16777216".to_owned()),
    });
    let pin_dir = r.parse(s::EBPF_PIN_DIR, |v| {
        let p = PathBuf::from(v);
        if p.is_absolute() && p.parent().is_some() {
            Ok(p)
        } else {
            Err(
                "must be an absolute path below a bpffs mount, like /sys/fs/bpf/metadataproxy"
                    .to_owned(),
            )
        }
    });
    let on_exit = r.parse(s::EBPF_ON_EXIT, on_exit);
    let object = r.optional(s::EBPF_OBJECT).map(PathBuf::from);
    let direct_callers = match r.parse(s::EBPF_DIRECT_CALLERS, direct_callers) {
        Some(nets) => Some(nets),
        None if r.has_errors_for(s::EBPF_DIRECT_CALLERS) => None,
        None => Some(Vec::new()),
    };
    Some(EbpfConfig {
        mode: mode?,
        cgroups: cgroups?,
        redirect_host,
        target4: target4?,
        target6: target6?,
        link_address,
        map_size: map_size?,
        pin_dir: pin_dir?,
        on_exit: on_exit?,
        object,
        direct_callers: direct_callers?,
    })
}
