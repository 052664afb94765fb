//! Who a caller is, stably: the key its IMDSv2 tokens, connection limits and refusal-line budget
//! are bound to, and the name log lines give it. A leaf: found by identification, used by the
//! server, the IMDS API, the credential cache and logging alike.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The stable identity of a caller: what IMDSv2 tokens and connection limits are bound to and
/// what logs name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// Identified only by source IP address (mapping file, Docker IP lookup).
    Ip(IpAddr),
    /// Any loopback source address (`127.0.0.0/8`, `::1`, their IPv4-mapped forms) without a
    /// kernel record: one caller, since any host process may bind any of them.
    Loopback,
    /// Identified by the kernel: the cgroup v2 id recorded by the eBPF redirect.
    Cgroup(u64),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "ip:{ip}"),
            Self::Loopback => f.write_str("ip:loopback"),
            Self::Cgroup(id) => write!(f, "cgroup:{id}"),
        }
    }
}

impl Identity {
    /// The identity of a connection known only by its source address: every loopback address
    /// is the same caller.
    pub fn from_peer(peer: SocketAddr) -> Self {
        match peer.ip().to_canonical() {
            ip if ip.is_loopback() => Self::Loopback,
            ip => Self::Ip(ip),
        }
    }
}
