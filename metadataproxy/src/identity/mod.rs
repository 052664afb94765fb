//! Who is calling: the identity of a connection and the role assignment it maps to.
//!
//! Every source (mapping file, default role; later the eBPF cgroup table and the Docker index)
//! implements [`Identify`]; a [`Chain`] asks them in order.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// What the socket layer knows about one accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The caller's address as seen by `accept()`.
    pub peer: SocketAddr,
    /// Our address the caller connected to.
    pub local: SocketAddr,
}

/// The stable identity of a caller: what IMDSv2 tokens are bound to and what logs name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// Identified only by source IP address (mapping file, Docker IP lookup).
    Ip(IpAddr),
    /// Identified by the kernel: the cgroup v2 id recorded by the eBPF redirect.
    Cgroup(u64),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "ip:{ip}"),
            Self::Cgroup(id) => write!(f, "cgroup:{id}"),
        }
    }
}
