//! Who a caller is, stably: the key its IMDSv2 tokens, connection limits and refusal-line budget
//! are bound to, and the name log lines give it. A leaf: found by identification, used by the
//! server, the IMDS API, the credential cache and logging alike; and what the kernel recorded of
//! a redirected connection's caller.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The caller of a redirected connection, as the kernel saw it at `connect()` (read from the
/// eBPF connection table at `accept()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRecord {
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// Process id (tgid) of the caller.
    pub pid: u32,
    /// Cookie of the caller's network namespace.
    pub netns_cookie: u64,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs, audit lines and refusal budgets name a caller by this text; operators grep for it.
    #[test]
    fn identities_are_named_by_kind_and_value() {
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(Identity::Cgroup(4242).to_string(), "cgroup:4242");
        assert_eq!(
            Identity::from_peer(peer("172.17.0.5:40000")).to_string(),
            "ip:172.17.0.5"
        );
        // A dual-stack socket's IPv4-mapped source is the IPv4 caller.
        assert_eq!(
            Identity::from_peer(peer("[::ffff:172.17.0.5]:40000")),
            Identity::Ip("172.17.0.5".parse().unwrap())
        );
        assert_eq!(
            Identity::from_peer(peer("[fd00::5]:40000")).to_string(),
            "ip:fd00::5"
        );
        // Every loopback source is one caller, whatever address it bound.
        for loopback in [
            "127.0.0.1:1",
            "127.9.8.7:2",
            "[::1]:3",
            "[::ffff:127.0.0.2]:4",
        ] {
            let id = Identity::from_peer(peer(loopback));
            assert_eq!(id, Identity::Loopback, "{loopback}");
            assert_eq!(id.to_string(), "ip:loopback");
        }
    }
}
